//! Running roles as child `certline` processes for the demo: one-shot
//! commands, long-running services, line terminals fed through their stdin
//! scanner, and device simulators on a "cable".

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::child::{random_secret, run_ok, Child, Stderr, WAIT};

/// How to start this same binary, with the demo's passphrase and admin password.
pub struct Certline {
    exe: PathBuf,
    passphrase: String,
    admin_password: String,
    logs: PathBuf,
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
                let p = random_secret()?;
                crate::pki::pack::write_private_file(&dir.join("passphrase"), p.as_bytes())?;
                p
            }
        };
        let admin_password = random_secret()?;
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

    /// A command for `certline ARGS`, given only the secrets its role needs:
    /// the passphrase for the CA's and the station's own commands, the admin
    /// password for `station init` (the first administrator) and `station
    /// admin`; a line, a device or the center gets neither.
    pub fn command(&self, args: &[&str]) -> Command {
        let (passphrase, admin_password) = secrets_for(args);
        let mut cmd = crate::child::certline(&self.exe);
        cmd.args(args);
        if passphrase {
            cmd.env(crate::pki::seal::PASSPHRASE_ENV, &self.passphrase);
        }
        if admin_password {
            cmd.env(crate::command::ADMIN_PASSWORD_ENV, &self.admin_password);
        }
        cmd
    }

    /// The log file for a child's stderr (`DIR/logs/NAME.log`).
    pub fn log(&self, name: &str) -> Stderr {
        Stderr::File(self.logs.join(format!("{name}.log")))
    }

    /// Runs a command to completion; its stdout is returned, its stderr kept
    /// for the error if it fails.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(&mut self.command(args))
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

/// Which secrets `certline ARGS` needs: (the passphrase, the admin password).
fn secrets_for(args: &[&str]) -> (bool, bool) {
    match (args.first().copied(), args.get(1).copied()) {
        (Some("ca"), _) => (true, false),
        (Some("station"), Some("init")) => (true, true),
        (Some("station"), Some("admin")) => (false, true),
        (Some("station"), _) => (true, false),
        _ => (false, false),
    }
}

/// A long-running role (its stderr in `DIR/logs/<log>.log`), started once it
/// printed the line with `marker` and its URL; stopped when dropped.
pub fn service(
    certline: &Certline,
    args: &[&str],
    marker: &str,
    log: &str,
) -> anyhow::Result<Child> {
    let mut cmd = certline.command(args);
    cmd.stdin(Stdio::null());
    Child::spawn(cmd)
        .stderr(certline.log(log))
        .listening(marker)
}

/// A running `certline line --json` whose scanner is its stdin (a keyboard
/// wedge): the demo types the scans, and reads the operator lines back.
pub struct LineProc {
    child: Child,
    /// The workflow the line said it runs (built-in parser or a script).
    pub workflow: String,
    stdin: Option<ChildStdin>,
}

impl LineProc {
    pub fn start(certline: &Certline, config: &Path, log: &str) -> anyhow::Result<LineProc> {
        let config = config
            .to_str()
            .context("the line configuration path is not UTF-8")?;
        let mut cmd = certline.command(&["line", "--json", "--config", config]);
        cmd.env("CERTLINE_LOG", "certline::line=info,warn")
            .stdin(Stdio::piped());
        let mut child = Child::spawn(cmd).stderr(certline.log(log)).started()?;
        let stdin = child.stdin.take();
        let mut line = LineProc {
            child,
            workflow: String::new(),
            stdin,
        };
        let ready = line
            .event("ready")
            .with_context(|| format!("the line did not start; see logs/{log}.log"))?;
        line.workflow = ready["workflow"].as_str().unwrap_or("?").to_string();
        Ok(line)
    }

    /// The next event of kind `kind` (others before it are skipped).
    pub fn event(&self, kind: &str) -> anyhow::Result<serde_json::Value> {
        let line = self
            .child
            .stdout_line(WAIT, |line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["event"] == kind)
            })
            .with_context(|| format!("no {kind:?} event from the line"))?;
        Ok(serde_json::from_str(&line)?)
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
        self.child.exited_within(Duration::from_secs(10));
    }
}

/// A device simulator serving a line (on TCP or a new pseudo-terminal),
/// printing where it listens; taken off the cable (killed) when dropped.
pub struct DeviceSim {
    _child: Child,
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
        let mut cmd = certline.command(&args);
        cmd.stdin(Stdio::null());
        let child = Child::spawn(cmd)
            .stderr(certline.log(&format!("device-{id}")))
            .first_line()
            .with_context(|| format!("device-sim {id} did not start"))?;
        Ok(DeviceSim {
            addr: child.url.clone(),
            _child: child,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::secrets_for;

    #[test]
    fn each_child_gets_only_the_secrets_its_role_needs() {
        assert_eq!(secrets_for(&["ca", "serve", "--dir", "x"]), (true, false));
        assert_eq!(
            secrets_for(&["station", "init", "--dir", "x"]),
            (true, true)
        );
        assert_eq!(secrets_for(&["station", "serve"]), (true, false));
        assert_eq!(secrets_for(&["station", "admin", "stock"]), (false, true));
        for role in ["line", "device-sim", "center"] {
            assert_eq!(secrets_for(&[role, "--dir", "x"]), (false, false));
        }
    }
}
