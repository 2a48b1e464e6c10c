//! Running a `certline` role as a child process, the one way the demo, the
//! benches and the black-box tests all do it: start it, wait until it says it
//! listens (and where), keep reading what it prints, and kill it on drop. Also
//! the random secret such a child is given. A primitive: it knows commands and
//! pipes, not roles.

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a start waits for the ready line by default: generous, for a slow
/// shared machine; the wait ends as soon as the line arrives.
pub const WAIT: Duration = Duration::from_secs(120);

/// Environment variables a child never inherits: each is given only what it needs.
const NOT_INHERITED: [&str; 6] = [
    "CERTLINE_LOG",
    crate::pki::seal::PASSPHRASE_ENV,
    crate::store::pg::PASSWORD_ENV,
    crate::pki::keystore::pkcs11::PIN_ENV,
    crate::command::ADMIN_PASSWORD_ENV,
    "CERTLINE_LINE_CREDENTIAL",
];

/// A command for the `certline` binary at `exe`, inheriting none of the
/// certline secrets or the log filter of this process.
pub fn certline(exe: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(exe);
    for name in NOT_INHERITED {
        cmd.env_remove(name);
    }
    cmd
}

/// A command for this same binary (the demo's and the benches' children).
pub fn this_certline() -> anyhow::Result<Command> {
    Ok(certline(
        std::env::current_exe().context("cannot find the certline binary")?,
    ))
}

/// This same binary with `passphrase` as its key-encryption passphrase.
pub fn this_certline_with(passphrase: &str) -> anyhow::Result<Command> {
    let mut cmd = this_certline()?;
    cmd.env(crate::pki::seal::PASSPHRASE_ENV, passphrase);
    Ok(cmd)
}

/// Runs a command to completion; its stdout if it succeeded, otherwise an
/// error with its stderr.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed: {}",
            describe(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `certline ARGS` for messages (the program's path and environment left out).
pub fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("certline {}", args.join(" "))
}

/// A fresh random secret (128 bits, hex): passphrases and passwords for a
/// demo's or a bench's children.
pub fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(hex::encode(bytes))
}

/// Where a child's stderr goes.
pub enum Stderr {
    /// To this process's stderr.
    Inherit,
    /// Appended to a log file (named in errors).
    File(PathBuf),
    /// Read line by line; wait for lines with [`Child::stderr_line`].
    Lines,
    /// Nowhere.
    Null,
}

/// How to start a child: see [`Child::spawn`].
pub struct Launch {
    cmd: Command,
    stderr: Stderr,
    echo: Option<String>,
    wait: Duration,
}

impl Launch {
    /// Where its stderr goes (default: inherited).
    pub fn stderr(mut self, stderr: Stderr) -> Launch {
        self.stderr = stderr;
        self
    }

    /// Copies every line the child prints (stdout, and stderr when read as
    /// lines) to this process's stderr, after `prefix`.
    pub fn echo(mut self, prefix: &str) -> Launch {
        self.echo = Some(prefix.to_string());
        self
    }

    /// How long to wait for the ready line (default [`WAIT`]).
    pub fn within(mut self, wait: Duration) -> Launch {
        self.wait = wait;
        self
    }

    /// Starts it and waits for a stdout line containing `marker`; what
    /// follows the marker on that line (its URL) becomes [`Child::url`].
    pub fn listening(self, marker: &str) -> anyhow::Result<Child> {
        let marker = marker.to_string();
        self.start(Some(Box::new(move |line: &str| {
            line.split(marker.as_str())
                .nth(1)
                .map(|r| r.trim().to_string())
        })))
    }

    /// Starts it and takes its first stdout line as its address (a device
    /// simulator prints its TCP address or pseudo-terminal path first).
    pub fn first_line(self) -> anyhow::Result<Child> {
        self.start(Some(Box::new(|line: &str| {
            let line = line.trim();
            (!line.is_empty()).then(|| line.to_string())
        })))
    }

    /// Starts it without waiting for anything.
    pub fn started(self) -> anyhow::Result<Child> {
        self.start(None)
    }

    #[allow(clippy::type_complexity)]
    fn start(
        mut self,
        ready: Option<Box<dyn Fn(&str) -> Option<String>>>,
    ) -> anyhow::Result<Child> {
        let what = describe(&self.cmd);
        let log = match &self.stderr {
            Stderr::File(path) => Some(path.clone()),
            _ => None,
        };
        let stderr_to = match &self.stderr {
            Stderr::Inherit => Stdio::inherit(),
            Stderr::Null => Stdio::null(),
            Stderr::Lines => Stdio::piped(),
            Stderr::File(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
        };
        let mut process = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(stderr_to)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdout = lines_of(process.stdout.take(), self.echo.clone());
        let stderr = lines_of(process.stderr.take(), self.echo.clone());
        let mut child = Child {
            process,
            url: String::new(),
            stdout,
            stderr,
            what,
        };
        let Some(ready) = ready else {
            return Ok(child);
        };
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(out) = child.stdout.as_ref() else {
                unreachable!("stdout is piped")
            };
            match out.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = ready(&line) {
                        child.url = url;
                        return Ok(child);
                    }
                }
                Err(e) => {
                    let status = match e {
                        std::sync::mpsc::RecvTimeoutError::Timeout => {
                            child.kill();
                            "did not say it was ready in time".to_string()
                        }
                        std::sync::mpsc::RecvTimeoutError::Disconnected => {
                            let status = child.process.wait()?;
                            format!("exited ({status}) before it was ready")
                        }
                    };
                    let mut message = format!("{} {status}", child.what);
                    if let Some(log) = log {
                        message.push_str(&format!("; see {}", log.display()));
                    }
                    if let Some(err) = child.stderr.as_ref() {
                        let said: Vec<String> = err.try_iter().collect();
                        if !said.is_empty() {
                            message.push_str(&format!(": {}", said.join("\n")));
                        }
                    }
                    anyhow::bail!(message);
                }
            }
        }
    }
}

/// Reads `pipe` line by line on a thread into a channel (echoing each line
/// after `echo` when given); the channel ends when the pipe closes.
fn lines_of(
    pipe: Option<impl std::io::Read + Send + 'static>,
    echo: Option<String>,
) -> Option<Receiver<String>> {
    let pipe = pipe?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(prefix) = &echo {
                eprintln!("{prefix} {line}");
            }
            // A receiver that is gone just means nobody listens any more:
            // keep draining so the child never blocks on a full pipe.
            let _ = tx.send(line);
        }
    });
    Some(rx)
}

/// A running child `certline`, killed (SIGKILL) and reaped when dropped.
/// Derefs to the [`std::process::Child`] for its stdin, id and exit status.
pub struct Child {
    process: std::process::Child,
    /// What followed the ready marker on its ready line (its URL or address).
    pub url: String,
    stdout: Option<Receiver<String>>,
    stderr: Option<Receiver<String>>,
    what: String,
}

impl Child {
    /// How to start `cmd` (stdout is always read; stdin as `cmd` says).
    pub fn spawn(cmd: Command) -> Launch {
        Launch {
            cmd,
            stderr: Stderr::Inherit,
            echo: None,
            wait: WAIT,
        }
    }

    /// The next stdout line for which `wanted` holds (lines before it are
    /// skipped), waiting at most `wait`.
    pub fn stdout_line(
        &self,
        wait: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        next_line(self.stdout.as_ref(), wait, wanted)
            .with_context(|| format!("{}: stdout", self.what))
    }

    /// The next stderr line for which `wanted` holds ([`Stderr::Lines`] only).
    pub fn stderr_line(
        &self,
        wait: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        next_line(self.stderr.as_ref(), wait, wanted)
            .with_context(|| format!("{}: stderr", self.what))
    }

    /// SIGKILL (no clean-up of any kind), then reaps it.
    pub fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.process.id().to_string())
            .status()
            .context("cannot run kill")?;
        anyhow::ensure!(
            status.success(),
            "kill -{name} {} failed",
            self.process.id()
        );
        Ok(())
    }

    /// Waits (polling) up to `wait` for it to exit by itself.
    pub fn exited_within(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = self.process.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn next_line(
    lines: Option<&Receiver<String>>,
    wait: Duration,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let lines = lines.context("not read as lines")?;
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                anyhow::bail!("no such line within {wait:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the process closed it without such a line")
            }
        }
    }
}

impl Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.process
    }
}

impl DerefMut for Child {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.process
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn waits_for_the_marker_and_keeps_reading() {
        let child = Child::spawn(sh(
            "echo starting; echo 'x listening on https://127.0.0.1:9 '; echo after; exec sleep 30",
        ))
        .listening("listening on ")
        .unwrap();
        assert_eq!(child.url, "https://127.0.0.1:9");
        let after = child.stdout_line(WAIT, |l| l.contains("after")).unwrap();
        assert_eq!(after, "after");
    }

    #[test]
    fn exiting_before_ready_is_an_error_with_its_stderr() {
        let err = Child::spawn(sh("echo broken >&2; exit 3"))
            .stderr(Stderr::Lines)
            .listening("listening on ")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("exited") && err.contains("broken"), "{err}");
    }

    #[test]
    fn killed_on_drop() {
        let child = Child::spawn(sh("echo ready; exec sleep 30"))
            .first_line()
            .unwrap();
        assert_eq!(child.url, "ready");
        let pid = child.id();
        drop(child);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!alive, "pid {pid} still runs");
    }

    #[test]
    fn secrets_differ() {
        assert_ne!(random_secret().unwrap(), random_secret().unwrap());
        assert_eq!(random_secret().unwrap().len(), 32);
    }
}
