//! What a certline device plugin is built on: the bindings of the
//! `certline:device@0.2.0` WIT world (from its frozen text in the repository's
//! `wit/since_v0.2.0/`, so a plugin built with this SDK means exactly what a
//! host of that version expects) and the glue that turns a [`ClientSide`]
//! protocol into the world's exports.
//!
//! A plugin implements [`Guest`] in a few lines by handing each call to
//! [`read_identity`], [`write_pack`], [`prove_possession`] and (since 0.2.0,
//! for devices that generate their own key) [`generate_key`] with its
//! protocol endpoint, and exports itself with `export_plugin!(MyPlugin
//! with_types_in certline_plugin_sdk)`; [`protocol_plugin!`] does all of it.
//! Plugins that stay on 0.1.0 use `sdk/since_v0.1.0` (crate
//! `certline-plugin-sdk-v0-1`).

wit_bindgen::generate!({
    path: "../../wit/since_v0.2.0",
    world: "plugin",
    pub_export_macro: true,
    export_macro_name: "export_plugin",
    default_bindings_module: "certline_plugin_sdk",
});

use certline_device_protocol::{client, ClientSide};

mod glue;
mod session;
pub use glue::{info, prove_possession, read_identity, write_pack, LinkTransport};
pub use session::{install_panic_hook, lend, SessionLink};

pub use certline::device::host::{self, Level, Link, LinkError, Stage};
pub use certline_device_protocol::ClientSide as ClientSideEndpoint;
pub use exports::certline::device::device::{
    Error, Guest, Identity, KeyAlgorithm, KeyRequest, Pack, PluginInfo,
};

/// `generate-key` over `c` (since 0.2.0): the device generates a key of the
/// requested algorithm in its own protected store and answers its CSR (DER),
/// which the host checks.
pub fn generate_key(mut c: impl ClientSide, request: KeyRequest) -> Result<Vec<u8>, Error> {
    let algorithm = match request.algorithm {
        KeyAlgorithm::P256 => "p256",
        KeyAlgorithm::P384 => "p384",
        KeyAlgorithm::Ed25519 => "ed25519",
    };
    let request = certline_device_protocol::KeyRequest {
        device_id: request.device_id,
        algorithm: algorithm.to_string(),
    };
    client::generate_key(&mut c, request).map_err(glue::to_error)
}

/// The exports 0.2.0 adds to [`protocol_plugin!`]'s (`generate-key`).
#[doc(hidden)]
#[macro_export]
macro_rules! __version_exports {
    () => {
        fn generate_key(
            link: &$crate::Link,
            request: $crate::KeyRequest,
        ) -> Result<Vec<u8>, $crate::Error> {
            Self::with_endpoint(link, |c| $crate::generate_key(c, request))
        }
    };
}
