//! Test plugin for model EVIL: speaks the XML protocol, but attacks the host
//! when the pack's serial says so, so that tests can check that each attack
//! fails that one device within its deadline, with a clear error, and that the
//! next device writes:
//!
//! - serial `FLOOD…`: writes 1 MiB to the link per call, forever;
//! - serial `ZERO…`: reads with `max` 0 and with a zero timeout, forever;
//! - serial `BIGID…`: reports `received`, then answers the host's read-back
//!   with a 100 MB identity;
//! - serial `HOLD…`: keeps the `link` it was lent past the end of its call;
//! - serial `REPORT…`: calls `report(received)` a thousand times;
//! - serial `LOUD…`: refuses with a 4 MiB reason full of terminal escapes;
//! - anything else: writes the pack like acme-imaging.

use std::sync::atomic::{AtomicBool, Ordering};

use certline_device_protocol::xml::XmlEndpoint;
use certline_plugin_sdk::{self as sdk, host, Error, Identity, Link, Pack, PluginInfo, Stage};

struct Hostile;

/// Set by a `BIGID` write: the next identity answer is huge.
static HUGE_IDENTITY: AtomicBool = AtomicBool::new(false);

fn endpoint(link: &Link) -> XmlEndpoint<sdk::LinkTransport<'_>> {
    XmlEndpoint::new(sdk::LinkTransport(link))
}

impl sdk::Guest for Hostile {
    fn info() -> PluginInfo {
        sdk::info("hostile", env!("CARGO_PKG_VERSION"), &["EVIL"])
    }

    fn read_identity(link: &Link) -> Result<Identity, Error> {
        if HUGE_IDENTITY.load(Ordering::SeqCst) {
            return Ok(Identity {
                device_id: "EVIL-".to_string() + &"9".repeat(100 << 20),
                fingerprint: None,
            });
        }
        sdk::read_identity(endpoint(link))
    }

    fn write_pack(link: &Link, pack: Pack) -> Result<(), Error> {
        let serial = pack.device_id.split_once('-').map_or("", |(_, s)| s);
        if serial.starts_with("FLOOD") {
            let chunk = vec![b'<'; 1 << 20];
            loop {
                let _ = std::hint::black_box(link.write(&chunk));
            }
        }
        if serial.starts_with("ZERO") {
            loop {
                let _ = std::hint::black_box(link.read(0, 0));
                let _ = std::hint::black_box(link.read(4096, 0));
            }
        }
        if serial.starts_with("BIGID") {
            host::report(Stage::Received);
            HUGE_IDENTITY.store(true, Ordering::SeqCst);
            return Ok(());
        }
        if serial.starts_with("HOLD") {
            // Takes the handle out of the borrow the host lent, so it is
            // never given back when the call returns.
            let kept = link.take_handle();
            std::hint::black_box(kept);
            return Ok(());
        }
        if serial.starts_with("REPORT") {
            for _ in 0..1000 {
                host::report(Stage::Received);
            }
            return Ok(());
        }
        if serial.starts_with("LOUD") {
            let mut reason = String::from("\x1b]0;owned\x07\x1b[31m");
            while reason.len() < 4 << 20 {
                reason.push_str("\x1b[2J refused ");
            }
            return Err(Error::Device(reason));
        }
        sdk::write_pack(endpoint(link), pack)
    }

    fn prove_possession(link: &Link, challenge: Vec<u8>) -> Result<Vec<u8>, Error> {
        sdk::prove_possession(endpoint(link), &challenge)
    }
}

sdk::export_plugin!(Hostile with_types_in certline_plugin_sdk);
