//! `certline device-sim`: runs one reference device on TCP or a pseudo-terminal.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{Device, Faults, Protocol, SessionEnd};
use crate::link::{self, ByteStream, DeviceLink};
use crate::pki::credential::Credential;
use crate::pki::id::DeviceId;

/// How often a pty device looks for a line on the other end (a pseudo-terminal
/// with nobody there cannot be waited on: it reports a hang-up at once).
const LINE_POLL: Duration = Duration::from_millis(5);
/// How long a line has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("transport").required(true).args(["listen", "pty", "report_to"]))]
pub struct DeviceSimArgs {
    /// The device's folder: nvram/ (id, link credential) and flash/ (identity).
    #[arg(long)]
    pub dir: PathBuf,
    /// Model code, as on the rating plate (e.g. 3012).
    #[arg(long)]
    pub model: String,
    /// Serial number, as on the rating plate (e.g. 123456).
    #[arg(long)]
    pub serial: String,
    /// Listen on this TCP address (port 0 picks one); prints the bound address.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Listen on a new pseudo-terminal (a serial link); prints its path.
    #[arg(long)]
    pub pty: bool,
    /// Install this device-link credential into NVRAM (made by `certline ca
    /// enroll --role device-link`); without it, the one already in NVRAM is used.
    #[arg(long)]
    pub credential: Option<PathBuf>,
    /// Wire protocol [default: xml with --listen, tlv with --pty].
    #[arg(long, value_enum, conflicts_with = "exec")]
    pub protocol: Option<Protocol>,
    /// Speak a protocol of your own: run CMD (with `sh -c`) for every link
    /// session, its stdin and stdout being the link's plain bytes (after
    /// TLS); the simulator keeps NVRAM, flash and the secure element and
    /// serves them on the Unix socket `$CERTLINE_DEVICE_SOCKET` (JSON lines:
    /// id, identity, check, store, sign, log; see plugins/README.md).
    /// Fault knobs that work here: --fail-write, --corrupt-readback,
    /// --report-id, --delay-ms.
    #[arg(long, value_name = "CMD", conflicts_with_all = ["bad_crc", "garble", "drop_after_received", "drop_after_keygen"])]
    pub exec: Option<String>,
    /// Serve one link session, then exit.
    #[arg(long)]
    pub once: bool,
    /// Fault: refuse every write after "received", with this reason.
    #[arg(long, value_name = "REASON")]
    pub fail_write: Option<String>,
    /// Fault: drop the link right after reporting "received".
    #[arg(long)]
    pub drop_after_received: bool,
    /// Fault: report a wrong certificate fingerprint on read-back.
    #[arg(long)]
    pub corrupt_readback: bool,
    /// Fault: wait this many milliseconds before every answer.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Fault: claim this id when asked (NVRAM keeps the real one).
    #[arg(long, value_name = "ID")]
    pub report_id: Option<String>,
    /// Fault: send this many frames with a wrong CRC (tlv only).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bad_crc: u32,
    /// Fault: answer the first request of every session with garbage.
    #[arg(long)]
    pub garble: bool,
    /// A device with a secure element (DIR/secure/): it generates its own key
    /// when asked (generate-key, `keygen = "device"`) and answers a CSR; the
    /// key never appears in flash or on the link.
    #[arg(long)]
    pub keygen: bool,
    /// Fault (with --keygen): answer a CSR for a throwaway key, keep another,
    /// and install whatever certificate comes (its proof of possession fails).
    #[arg(long, requires = "keygen")]
    pub csr_for_other_key: bool,
    /// Fault (with --keygen): generate the key, then drop the link instead
    /// of answering its CSR.
    #[arg(long, requires = "keygen")]
    pub drop_after_keygen: bool,
    /// Instead of serving a line: connect to the remote-management center at
    /// this URL with the identity in flash, ask for the device's status, send a
    /// report (naming --report-id if given: an impersonation attempt), print the
    /// answers and exit.
    #[arg(long, value_name = "URL")]
    pub report_to: Option<String>,
    /// The counter reading to report (with --report-to).
    #[arg(long, default_value_t = 0)]
    pub counter: u64,
    /// Print as JSON (where it listens, or the center's answers).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DeviceSimArgs) -> anyhow::Result<()> {
    let id = DeviceId::new(&args.model, &args.serial)?;
    let device = Device::open(&args.dir, &id)?;
    if let Some(cred) = &args.credential {
        device.install_link_credential(cred)?;
    }
    let cred_path = Device::link_credential_path(&args.dir);
    if !cred_path.exists() {
        anyhow::bail!(
            "device {id} has no link credential in {}; give one with --credential",
            cred_path.display()
        );
    }
    let cred = Credential::load(&cred_path)?;
    if let Some(url) = &args.report_to {
        let claimed = args.report_id.clone().unwrap_or_else(|| id.to_string());
        let answer = super::report::report_to_center(&device, &cred, url, &claimed, args.counter)?;
        return crate::command::emit(args.json, &answer, || answer.print(&id));
    }
    let tls = link::device_config(&cred)?;
    let protocol = args.protocol.unwrap_or(if args.pty {
        Protocol::Tlv
    } else {
        Protocol::Xml
    });
    if args.exec.is_some() && args.bad_crc > 0 {
        anyhow::bail!("--bad-crc is a knob of the built-in tlv protocol, not of an --exec program");
    }
    if args.bad_crc > 0 && protocol != Protocol::Tlv {
        anyhow::bail!("--bad-crc needs the tlv protocol (frames with a CRC)");
    }
    let faults = Faults {
        fail_write: args.fail_write.clone(),
        drop_after_received: args.drop_after_received,
        corrupt_readback: args.corrupt_readback,
        delay: Duration::from_millis(args.delay_ms),
        report_id: args.report_id.clone(),
        bad_crc: args.bad_crc,
        garble: args.garble,
        csr_for_other_key: args.csr_for_other_key,
        drop_after_keygen: args.drop_after_keygen,
    };
    let device = device.with_keygen(args.keygen, &faults);
    let mut bad_crc = faults.bad_crc;
    let say = |e: &str| eprintln!("device-sim {id}: {}", crate::text::printable(e));
    let mut events = say;

    let announce = |key: &str, value: &str| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            let v = serde_json::json!({ key: value, "device_id": id.to_string(), "protocol": protocol });
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{value}")?;
        }
        out.flush()?;
        Ok(())
    };

    if let Some(addr) = &args.listen {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        announce("listen", &listener.local_addr()?.to_string())?;
        for conn in listener.incoming() {
            let sock = match conn {
                Ok(s) => s,
                Err(e) => {
                    events(&format!("accept failed: {e}"));
                    continue;
                }
            };
            let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = sock.set_nodelay(true);
            let mut link =
                match link::accept(Box::new(sock), peer.clone(), tls.clone(), HANDSHAKE_TIMEOUT) {
                    Ok(l) => l,
                    Err(e) => {
                        events(&format!("refused a link from {peer}: {e:#}"));
                        continue;
                    }
                };
            events(&format!("link from {}", link.describe()));
            let end = match &args.exec {
                Some(cmd) => super::exec::serve(&device, &mut link, cmd, &faults, &say),
                None => device.serve(&mut link, protocol, &faults, &mut bad_crc, &mut events),
            };
            match end {
                SessionEnd::Closed => link.close(),
                // Dropping the socket without close_notify: a pulled cable.
                SessionEnd::Dropped => link.abort(),
            }
            if args.once {
                break;
            }
        }
        return Ok(());
    }

    // A pseudo-terminal stands in for the serial port. The simulator keeps the
    // controlling side and closes its copy of the device side, so that a line
    // hanging up shows here as end of input.
    let (master, slave) = serialport::TTYPort::pair().context("cannot create a pseudo-terminal")?;
    let path = serialport::SerialPort::name(&slave).context("the pseudo-terminal has no path")?;
    drop(slave);
    announce("pty", &path)?;
    let port = || -> anyhow::Result<link::SerialStream> {
        let fd = master
            .try_clone_native()
            .context("cannot use the pseudo-terminal")?;
        Ok(link::SerialStream(fd))
    };
    loop {
        // Nobody on the other end yet: reads fail at once; wait for a line.
        if !line_present(&mut port()?) {
            std::thread::sleep(LINE_POLL);
            continue;
        }
        let mut link = match link::accept(
            Box::new(port()?),
            path.clone(),
            tls.clone(),
            HANDSHAKE_TIMEOUT,
        ) {
            Ok(l) => l,
            Err(e) => {
                // A line that hung up right after its previous session is no
                // news; anything else is.
                if line_present(&mut port()?) {
                    events(&format!("refused a link on {path}: {e:#}"));
                }
                std::thread::sleep(LINE_POLL);
                continue;
            }
        };
        events(&format!("link from {}", link.describe()));
        let end = match &args.exec {
            Some(cmd) => super::exec::serve(&device, &mut link, cmd, &faults, &say),
            None => device.serve(&mut link, protocol, &faults, &mut bad_crc, &mut events),
        };
        match end {
            SessionEnd::Closed => link.close(),
            SessionEnd::Dropped => {
                // A serial line cannot be hung up from this side and reopened
                // at the same path: the device goes away instead.
                link.abort();
                events("link dropped; exiting");
                return Ok(());
            }
        }
        if args.once {
            return Ok(());
        }
    }
}

/// Whether someone holds the other end of the pseudo-terminal: with nobody
/// there, a read fails at once (hang-up) instead of timing out.
fn line_present(sock: &mut link::SerialStream) -> bool {
    let _ = ByteStream::set_timeout(sock, Duration::from_millis(1));
    let mut probe = [0u8; 0];
    !matches!(std::io::Read::read(sock, &mut probe), Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
}
