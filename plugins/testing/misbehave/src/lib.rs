//! Test plugin for model BAD1: speaks the XML protocol, but its `write-pack`
//! misbehaves when the pack's serial says so, so that tests can check the host
//! survives each case and serves the next write:
//!
//! - serial `TRAP…`: panics (a wasm trap);
//! - serial `SPIN…`: loops forever (the fuel budget must stop it);
//! - serial `HOG…`: allocates without bound (the memory cap must stop it);
//! - serial `MALFORM…`: answers `ok` without the device having received anything
//!   (a malformed answer: no `received` reported);
//! - anything else: writes the pack like acme-imaging.

use certline_device_protocol::xml::XmlEndpoint;
use certline_plugin_sdk::{self as sdk, Error, Identity, Link, Pack, PluginInfo};

struct Misbehave;

fn endpoint(link: &Link) -> XmlEndpoint<sdk::LinkTransport<'_>> {
    XmlEndpoint::new(sdk::LinkTransport(link))
}

impl sdk::Guest for Misbehave {
    fn info() -> PluginInfo {
        sdk::info("misbehave", env!("CARGO_PKG_VERSION"), &["BAD1"])
    }

    fn read_identity(link: &Link) -> Result<Identity, Error> {
        sdk::read_identity(endpoint(link))
    }

    fn write_pack(link: &Link, pack: Pack) -> Result<(), Error> {
        // A panic says what and where through host.log before the trap.
        sdk::install_panic_hook();
        let serial = pack.device_id.split_once('-').map_or("", |(_, s)| s);
        if serial.starts_with("TRAP") {
            panic!("misbehave: deliberate trap for {}", pack.device_id);
        }
        if serial.starts_with("SPIN") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if serial.starts_with("HOG") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
            }
        }
        if serial.starts_with("MALFORM") {
            return Ok(());
        }
        sdk::write_pack(endpoint(link), pack)
    }

    fn prove_possession(link: &Link, challenge: Vec<u8>) -> Result<Vec<u8>, Error> {
        sdk::prove_possession(endpoint(link), &challenge)
    }
}

sdk::export_plugin!(Misbehave with_types_in certline_plugin_sdk);
