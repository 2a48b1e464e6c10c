//! `device-sim --exec CMD`: a device whose protocol is a vendor's own
//! program. The simulator keeps everything a device's hardware does (the
//! TLS link with its device-link credential, NVRAM with the id, flash, the
//! secure element that signs with the flash key); the program only speaks
//! the protocol:
//!
//! - its **stdin** is what the line (the plugin) sends, its **stdout** goes
//!   back to the line, both plain bytes after TLS; its stderr is the
//!   simulator's log. One program runs per link session: the line closing
//!   the link closes stdin, the program ending closes the link.
//! - the **chip**: a Unix socket at `$CERTLINE_DEVICE_SOCKET`, one JSON
//!   object a line each way. Requests (`op`) and answers (`ok`, then the
//!   fields, or `ok: false` and `error`):
//!
//!   | request | answer |
//!   |---|---|
//!   | `{"op":"id"}` | `{"ok":true,"id":"3012-000001"}` |
//!   | `{"op":"identity"}` | `{"ok":true,"id":...,"fingerprint":"<sha256 hex>"\|null}` |
//!   | `{"op":"check","pack":P}` | `{"ok":true}`: P is for this device and hangs together (say "received" now) |
//!   | `{"op":"store","pack":P}` | `{"ok":true,"fingerprint":...}`: checked and written to flash atomically |
//!   | `{"op":"sign","challenge":"<hex>"}` | `{"ok":true,"signature":"<hex>"}`: proof of possession with the flash key |
//!   | `{"op":"generate-key","algorithm":"p256"}` | `{"ok":true,"csr":"<hex DER>"}`: a key born in the secure element (`--keygen`; p256, p384, ed25519) |
//!   | `{"op":"log","message":"..."}` | `{"ok":true}` |
//!
//!   where P is `{"device_id","root_pem","chain_pem","key_pem"}`, the pack as
//!   the plugin's `write-pack` got it (`key_pem` absent or null for a key the
//!   secure element generated). `$CERTLINE_DEVICE_ID` holds the id too.
//!
//! The built-in protocols (`--protocol xml|tlv`) are users of the same chip:
//! [`Chip`] is what both they and the socket call.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::{Device, Faults, SessionEnd, IDLE_TIMEOUT};
use crate::link::{DeviceLink, LinkFailure};

/// How long a line read waits before the pump looks at the program's output.
const PUMP_TICK: Duration = Duration::from_millis(5);
/// How long a program may take to exit once the line closed its stdin.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Longest request line on the chip socket.
const MAX_CHIP_LINE: usize = 256 * 1024;

/// What the device's hardware does for whichever protocol runs on it: the
/// same calls for the built-in protocols and for `--exec` programs.
pub struct Chip<'a> {
    pub device: &'a Device,
    pub faults: &'a Faults,
}

impl Chip<'_> {
    /// The id the device says it has (the `report_id` fault knob lies).
    pub fn id(&self) -> String {
        self.faults
            .report_id
            .clone()
            .unwrap_or_else(|| self.device.id().to_string())
    }

    pub fn identity(&self) -> Result<certline_device_protocol::Identity, String> {
        self.device.identity(self.faults)
    }

    /// Checks a pack as firmware does before saying "received".
    pub fn check(&self, pack: &certline_device_protocol::Pack) -> Result<(), String> {
        self.device.check_pack(pack).map(|_| ())
    }

    /// Checks and writes a pack into flash (the `fail_write` knob refuses).
    /// A pack without a key installs the certificate for the key the secure
    /// element generated (`generate_key`).
    pub fn store(&self, pack: &certline_device_protocol::Pack) -> Result<String, String> {
        let parsed = self.device.check_pack(pack)?;
        if let Some(reason) = &self.faults.fail_write {
            return Err(reason.clone());
        }
        self.device
            .write_flash(&parsed, pack.key_pem.is_none())
            .map_err(|e| format!("flash write failed: {e:#}"))?;
        parsed.fingerprint().map_err(|e| format!("{e:#}"))
    }

    /// Generates a key in the secure element (with `--keygen`) and returns
    /// its CSR (DER).
    pub fn generate_key(
        &self,
        request: &certline_device_protocol::KeyRequest,
    ) -> Result<Vec<u8>, String> {
        self.device.generate_key(request, self.faults)
    }

    pub fn sign(&self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        self.device.sign(challenge)
    }
}

#[derive(Deserialize)]
struct WirePack {
    device_id: String,
    root_pem: String,
    chain_pem: String,
    /// Absent for a device that generated its own key.
    #[serde(default)]
    key_pem: Option<String>,
}

impl From<WirePack> for certline_device_protocol::Pack {
    fn from(p: WirePack) -> Self {
        certline_device_protocol::Pack {
            device_id: p.device_id,
            root_pem: p.root_pem,
            chain_pem: p.chain_pem,
            key_pem: p.key_pem,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum ChipRequest {
    Id,
    Identity,
    Check {
        pack: WirePack,
    },
    Store {
        pack: WirePack,
    },
    Sign {
        challenge: String,
    },
    #[serde(rename = "generate-key")]
    GenerateKey {
        algorithm: String,
    },
    Log {
        message: String,
    },
}

/// One chip request line in, one answer out.
fn answer(chip: &Chip<'_>, line: &str, log: &dyn Fn(&str)) -> serde_json::Value {
    let fail = |e: String| json!({ "ok": false, "error": e });
    let request: ChipRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return fail(format!(
                "cannot read this chip request ({e}); ops: id, identity, check, store, sign, generate-key, log"
            ))
        }
    };
    std::thread::sleep(chip.faults.delay);
    match request {
        ChipRequest::Id => json!({ "ok": true, "id": chip.id() }),
        ChipRequest::Identity => match chip.identity() {
            Ok(i) => json!({ "ok": true, "id": i.device_id, "fingerprint": i.fingerprint }),
            Err(e) => fail(e),
        },
        ChipRequest::Check { pack } => match chip.check(&pack.into()) {
            Ok(()) => json!({ "ok": true }),
            Err(e) => {
                log(&format!("pack refused: {e}"));
                fail(e)
            }
        },
        ChipRequest::Store { pack } => match chip.store(&pack.into()) {
            Ok(fingerprint) => {
                log(&format!("written: {fingerprint}"));
                json!({ "ok": true, "fingerprint": fingerprint })
            }
            Err(e) => {
                log(&format!("write failed: {e}"));
                fail(e)
            }
        },
        ChipRequest::Sign { challenge } => match hex::decode(&challenge) {
            Ok(c) => match chip.sign(&c) {
                Ok(sig) => json!({ "ok": true, "signature": hex::encode(sig) }),
                Err(e) => fail(e),
            },
            Err(e) => fail(format!("challenge is not hex: {e}")),
        },
        ChipRequest::GenerateKey { algorithm } => {
            let request = certline_device_protocol::KeyRequest {
                device_id: chip.device.id().to_string(),
                algorithm,
            };
            match chip.generate_key(&request) {
                Ok(csr) => json!({ "ok": true, "csr": hex::encode(csr) }),
                Err(e) => fail(e),
            }
        }
        ChipRequest::Log { message } => {
            log(&format!("program: {message}"));
            json!({ "ok": true })
        }
    }
}

/// Serves chip requests on `listener` until `done`.
fn serve_chip(listener: &UnixListener, chip: &Chip<'_>, done: &AtomicBool, log: &dyn Fn(&str)) {
    let _ = listener.set_nonblocking(true);
    while !done.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(PUMP_TICK);
                continue;
            }
            Err(e) => {
                log(&format!("chip socket: {e}"));
                return;
            }
        };
        serve_chip_client(stream, chip, done, log);
    }
}

fn serve_chip_client(stream: UnixStream, chip: &Chip<'_>, done: &AtomicBool, log: &dyn Fn(&str)) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !done.load(Ordering::SeqCst) {
        match reader
            .by_ref()
            .take((MAX_CHIP_LINE - line.len()) as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                let reply = answer(chip, text.trim(), log);
                if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
            Ok(_) if line.len() > MAX_CHIP_LINE => {
                let _ = writeln!(
                    out,
                    "{}",
                    json!({ "ok": false, "error": format!("request longer than {MAX_CHIP_LINE} bytes") })
                );
                return;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Runs `cmd` (through `sh -c`) for one link session, with the link's bytes
/// on its stdin and stdout and the chip on `$CERTLINE_DEVICE_SOCKET`.
pub fn serve(
    device: &Device,
    link: &mut dyn DeviceLink,
    cmd: &str,
    faults: &Faults,
    log: &(dyn Fn(&str) + Sync),
) -> SessionEnd {
    let chip = Chip { device, faults };
    let sockdir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            log(&format!("cannot make the chip socket's folder: {e}"));
            return SessionEnd::Closed;
        }
    };
    let socket = sockdir.path().join("chip.sock");
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("cannot open the chip socket: {e}"));
            return SessionEnd::Closed;
        }
    };
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("CERTLINE_DEVICE_ID", device.id().to_string())
        .env("CERTLINE_DEVICE_SOCKET", &socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            log(&format!("cannot start {cmd:?}: {e}"));
            return SessionEnd::Closed;
        }
    };
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| serve_chip(&listener, &chip, &done, log));
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        s.spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut last = Instant::now();
        loop {
            // The program's answers to the line.
            let mut ended = false;
            loop {
                match rx.try_recv() {
                    Ok(bytes) => {
                        last = Instant::now();
                        if let Err(e) = link.write(&bytes) {
                            log(&format!("link: {e}"));
                            ended = true;
                            break;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    // The program closed its stdout (it ended).
                    Err(mpsc::TryRecvError::Disconnected) => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                break;
            }
            // The line's requests to the program.
            match link.read(64 * 1024, PUMP_TICK) {
                Ok(bytes) => {
                    last = Instant::now();
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&bytes).and_then(|()| w.flush()).is_err() {
                            stdin = None;
                        }
                    }
                }
                Err(LinkFailure::Timeout) if last.elapsed() < IDLE_TIMEOUT => {}
                Err(_) => {
                    // The line hung up (or went quiet): end of input for the program.
                    stdin = None;
                    break;
                }
            }
        }
        drop(stdin.take());
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        log(&format!("{cmd:?} ended: {status}"));
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(PUMP_TICK),
                _ => {
                    log(&format!(
                        "{cmd:?} did not end within {} s of the line closing; stopped",
                        EXIT_GRACE.as_secs()
                    ));
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    SessionEnd::Closed
}
