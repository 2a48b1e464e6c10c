//! Running roles as child `certline` processes for the demo: one-shot
//! commands, long-running services, line terminals fed through their stdin
//! scanner, and device simulators on a "cable".

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long the demo waits for any one thing a child should say.
pub const WAIT: Duration = Duration::from_secs(120);

/// How to start this same binary, with the demo's passphrase and admin password.
pub struct Certline {
    exe: PathBuf,
    passphrase: String,
    admin_password: String,
    logs: PathBuf,
}

/// A fresh random secret, printable.
fn secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 18];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(crate::pki::seal::encode(&bytes))
}

impl Certline {
    /// Uses `CERTLINE_PASSPHRASE` if set; otherwise makes one for this demo
    /// and keeps it in `DIR/passphrase` (0600), so the state can be reopened.
    /// The station's admin password is made the same way (`DIR/admin-password`).
    /// Children's logs go to `DIR/logs/`.
    pub fn new(dir: &Path) -> anyhow::Result<Certline> {
        let passphrase = match std::env::var(crate::pki::seal::PASSPHRASE_ENV) {
            Ok(p) if !p.is_empty() => p,
            _ => {
                let p = secret()?;
                crate::pki::pack::write_private_file(&dir.join("passphrase"), p.as_bytes())?;
                p
            }
        };
        let admin_password = secret()?;
        crate::pki::pack::write_private_file(
            &dir.join("admin-password"),
            admin_password.as_bytes(),
        )?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        Ok(Certline {
            exe: std::env::current_exe().context("cannot find the certline binary")?,
            passphrase,
            admin_password,
            logs,
        })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .env(crate::pki::seal::PASSPHRASE_ENV, &self.passphrase)
            .env(crate::station::admin::PASSWORD_ENV, &self.admin_password)
            .env_remove("CERTLINE_LOG");
        cmd
    }

    /// A log file for a child's stderr.
    pub fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let file = self.logs.join(format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .with_context(|| format!("cannot open {}", file.display()))
    }

    /// Runs a command to completion; its stdout is returned, its stderr kept
    /// for the error if it fails.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start certline {}", args.join(" ")))?;
        if !out.status.success() {
            anyhow::bail!(
                "certline {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command with `--json` already among `args` and parses its report.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = self.run(args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("certline {}: not JSON: {out}", args.join(" ")))
    }

    /// Runs a command, showing each stderr line that contains `marker` as
    /// progress (prefixed with `prefix`); returns its stdout.
    pub fn run_with_progress(
        &self,
        args: &[&str],
        marker: &str,
        prefix: &str,
    ) -> anyhow::Result<String> {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start certline {}", args.join(" ")))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s);
            s
        });
        let mut errors = Vec::new();
        for line in BufReader::new(child.stderr.take().context("no stderr")?)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(marker) {
                eprintln!("{prefix}{line}");
            } else {
                errors.push(line);
            }
        }
        let status = child.wait()?;
        let out = reader.join().unwrap_or_default();
        if !status.success() {
            anyhow::bail!("certline {} failed: {}", args.join(" "), errors.join("\n"));
        }
        Ok(out)
    }
}

/// A long-running role; stopped when dropped.
pub struct Service {
    child: Child,
    pub url: String,
}

impl Service {
    /// Starts `args` (stderr to `DIR/logs/<log>.log`) and waits for the line
    /// that announces its URL.
    pub fn start(
        certline: &Certline,
        args: &[&str],
        marker: &str,
        log: &str,
    ) -> anyhow::Result<Service> {
        let mut child = certline
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(certline.log(log)?)
            .spawn()
            .with_context(|| format!("cannot start certline {}", args.join(" ")))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split(marker).nth(1) {
                        break rest.trim().to_string();
                    }
                }
                _ => {
                    let status = child.wait()?;
                    anyhow::bail!(
                        "certline {} exited ({status}) before it was ready; see {}",
                        args.join(" "),
                        certline.logs.join(format!("{log}.log")).display()
                    );
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Service { child, url })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `certline line --json` whose scanner is its stdin (a keyboard
/// wedge): the demo types the scans, and reads the operator lines back.
pub struct LineProc {
    child: Child,
    /// The workflow the line said it runs (built-in parser or a script).
    pub workflow: String,
    stdin: Option<ChildStdin>,
    events: Receiver<serde_json::Value>,
}

impl LineProc {
    pub fn start(certline: &Certline, config: &Path, log: &str) -> anyhow::Result<LineProc> {
        let config = config
            .to_str()
            .context("the line configuration path is not UTF-8")?;
        let mut child = certline
            .command(&["line", "--json", "--config", config])
            .env("CERTLINE_LOG", "certline::line=info,warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(certline.log(log)?)
            .spawn()
            .context("cannot start certline line")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        let mut line = LineProc {
            child,
            workflow: String::new(),
            stdin,
            events,
        };
        let ready = line
            .event("ready")
            .with_context(|| format!("the line did not start; see logs/{log}.log"))?;
        line.workflow = ready["workflow"].as_str().unwrap_or("?").to_string();
        Ok(line)
    }

    /// The next event of kind `kind` (others before it are skipped).
    pub fn event(&self, kind: &str) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["event"] == kind => return Ok(v),
                Ok(_) => {}
                Err(_) => anyhow::bail!("no {kind:?} event from the line"),
            }
        }
    }

    /// Types one scan (as a keyboard-wedge scanner does: the code, then Enter)
    /// and returns the operator line for it.
    pub fn scan(&mut self, code: &str) -> anyhow::Result<serde_json::Value> {
        let stdin = self.stdin.as_mut().context("the scanner is closed")?;
        writeln!(stdin, "{code}")?;
        stdin.flush()?;
        self.event("device")
    }

    /// Ends the shift: closes the scanner and waits for the line to exit.
    pub fn finish(mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LineProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device simulator serving a line (on TCP or a new pseudo-terminal);
/// taken off the cable (killed) when dropped.
pub struct DeviceSim {
    child: Child,
    /// Where it listens: a TCP address or the pseudo-terminal's path.
    pub addr: String,
}

impl DeviceSim {
    /// `cable`: a TCP address to listen on, or None for a pseudo-terminal.
    pub fn start(
        certline: &Certline,
        dir: &Path,
        id: &str,
        link_credential: &Path,
        cable: Option<&str>,
        faults: &[&str],
    ) -> anyhow::Result<DeviceSim> {
        let (model, serial) = id.split_once('-').context("a device id is MODEL-SERIAL")?;
        let mut args = vec![
            "device-sim",
            "--model",
            model,
            "--serial",
            serial,
            "--dir",
            super::path(dir),
            "--credential",
            super::path(link_credential),
        ];
        match cable {
            Some(addr) => args.extend(["--listen", addr]),
            None => args.push("--pty"),
        }
        args.extend_from_slice(faults);
        let mut child = certline
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(certline.log(&format!("device-{id}"))?)
            .spawn()
            .context("cannot start certline device-sim")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let addr = line.trim().to_string();
        if addr.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("device-sim {id} did not start; see logs/device-{id}.log");
        }
        Ok(DeviceSim { child, addr })
    }
}

impl Drop for DeviceSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
