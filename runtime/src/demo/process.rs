//! Running roles as child `certline` processes for the demo.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// How to start this same binary, with the demo's passphrase.
pub struct Certline {
    exe: PathBuf,
    passphrase: String,
}

impl Certline {
    /// Uses `CERTLINE_PASSPHRASE` if set; otherwise makes one for this demo
    /// and keeps it in `DIR/passphrase` (0600), so the state can be reopened.
    pub fn new(dir: &Path) -> anyhow::Result<Certline> {
        let passphrase = match std::env::var(crate::pki::seal::PASSPHRASE_ENV) {
            Ok(p) if !p.is_empty() => p,
            _ => {
                let mut bytes = [0u8; 18];
                aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
                let p = crate::pki::seal::encode(&bytes);
                crate::pki::pack::write_private_file(&dir.join("passphrase"), p.as_bytes())?;
                p
            }
        };
        Ok(Certline {
            exe: std::env::current_exe().context("cannot find the certline binary")?,
            passphrase,
        })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .env(crate::pki::seal::PASSPHRASE_ENV, &self.passphrase);
        cmd
    }

    /// Runs a command to completion; its output is kept unless it fails.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(args)
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
}

/// A long-running role; stopped when dropped.
pub struct Service {
    child: Child,
    pub url: String,
}

impl Service {
    /// Starts `args` and waits for the line that announces its URL.
    pub fn start(certline: &Certline, args: &[&str], marker: &str) -> anyhow::Result<Service> {
        let mut child = certline
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
                        "certline {} exited ({status}) before it was ready",
                        args.join(" ")
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
