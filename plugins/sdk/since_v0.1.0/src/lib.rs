//! The SDK for plugins that stay on the frozen `certline:device@0.1.0` (no
//! `generate-key`: the CA makes every key). New plugins use
//! `certline-plugin-sdk` (0.2.0). A plugin depends on this crate under the
//! SDK's name, so its source does not change:
//! `certline-plugin-sdk = { path = "…/sdk/since_v0.1.0", package = "certline-plugin-sdk-v0-1" }`.
//!
//! What a certline device plugin is built on: the bindings of the
//! `certline:device@0.1.0` WIT world (from its frozen text in the repository's
//! `wit/since_v0.1.0/`, so a plugin built with this SDK means exactly what a
//! host of that version expects) and the glue that turns a [`ClientSide`]
//! protocol into the world's exports.
//!
//! A plugin implements [`Guest`] in a few lines by handing each call to
//! [`read_identity`], [`write_pack`] and [`prove_possession`] with its protocol
//! endpoint, and exports itself with `export_plugin!(MyPlugin with_types_in
//! certline_plugin_sdk)`.

wit_bindgen::generate!({
    path: "../../../wit/since_v0.1.0",
    world: "plugin",
    pub_export_macro: true,
    export_macro_name: "export_plugin",
    default_bindings_module: "certline_plugin_sdk",
});

// The glue, the session state and the panic hook of the 0.2.0 SDK (one
// file each for both versions), over this version's bindings.
#[path = "../../src/glue.rs"]
mod glue;
#[path = "../../src/session.rs"]
mod session;
pub use glue::{info, prove_possession, read_identity, write_pack, LinkTransport};
pub use session::{install_panic_hook, lend, SessionLink};

pub use certline::device::host::{self, Level, Link, LinkError, Stage};
pub use certline_device_protocol::ClientSide as ClientSideEndpoint;
pub use exports::certline::device::device::{Error, Guest, Identity, Pack, PluginInfo};

/// 0.1.0 adds nothing to [`protocol_plugin!`]'s exports.
#[doc(hidden)]
#[macro_export]
macro_rules! __version_exports {
    () => {};
}
