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

use certline_device_protocol::{client, ClientSide, LinkFailure, Transport};

// The same session state and panic hook as the 0.2.0 SDK (one file for both).
#[path = "../../src/session.rs"]
mod session;
pub use session::{install_panic_hook, lend, SessionLink};

pub use certline::device::host::{self, Level, Link, LinkError, Stage};
pub use certline_device_protocol::ClientSide as ClientSideEndpoint;
pub use exports::certline::device::device::{Error, Guest, Identity, Pack, PluginInfo};

/// The host's link resource as a protocol transport.
pub struct LinkTransport<'a>(pub &'a Link);

impl Transport for LinkTransport<'_> {
    fn read(&mut self, max: usize, timeout_ms: u32) -> Result<Vec<u8>, LinkFailure> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        self.0.read(max, timeout_ms).map_err(from_link_error)
    }

    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure> {
        self.0.write(data).map_err(from_link_error)
    }
}

fn from_link_error(e: LinkError) -> LinkFailure {
    match e {
        LinkError::Timeout => LinkFailure::Timeout,
        LinkError::Closed => LinkFailure::Closed,
        LinkError::Io(m) => LinkFailure::Io(m),
    }
}

fn to_error(e: certline_device_protocol::Error) -> Error {
    use certline_device_protocol::Error as P;
    match e {
        P::Link(LinkFailure::Timeout) => Error::Link(LinkError::Timeout),
        P::Link(LinkFailure::Closed) => Error::Link(LinkError::Closed),
        P::Link(LinkFailure::Io(m)) => Error::Link(LinkError::Io(m)),
        P::Protocol(m) => Error::Protocol(m),
        P::Device(m) => Error::Device(m),
    }
}

/// The plugin's info record.
pub fn info(name: &str, version: &str, models: &[&str]) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        models: models.iter().map(|m| m.to_string()).collect(),
    }
}

/// `read-identity` over `c`.
pub fn read_identity(mut c: impl ClientSide) -> Result<Identity, Error> {
    let id = client::read_identity(&mut c).map_err(to_error)?;
    Ok(Identity {
        device_id: id.device_id,
        fingerprint: id.fingerprint,
    })
}

/// `write-pack` over `c`, reporting `received` to the host when the device does.
pub fn write_pack(mut c: impl ClientSide, pack: Pack) -> Result<(), Error> {
    let pack = certline_device_protocol::Pack {
        device_id: pack.device_id,
        root_pem: pack.root_pem,
        chain_pem: pack.chain_pem,
        key_pem: Some(pack.key_pem),
    };
    client::write_pack(&mut c, pack, || host::report(Stage::Received)).map_err(to_error)
}

/// `prove-possession` over `c`.
pub fn prove_possession(mut c: impl ClientSide, challenge: &[u8]) -> Result<Vec<u8>, Error> {
    client::prove_possession(&mut c, challenge).map_err(to_error)
}

/// Defines and exports a plugin whose whole behaviour is one protocol for some
/// model codes; the endpoint lives for the session (over [`SessionLink`]) and
/// a panic is logged with its location, as in the 0.2.0 SDK:
///
/// ```ignore
/// certline_plugin_sdk::protocol_plugin!(Meter, "acme-meter", ["A123"], |link| {
///     TlvEndpoint::new(link)
/// });
/// ```
#[macro_export]
macro_rules! protocol_plugin {
    ($ty:ident, $name:expr, [$($model:expr),+ $(,)?], |$link:ident| $endpoint:expr) => {
        struct $ty;

        impl $ty {
            /// Runs `f` on this session's endpoint (built on first use),
            /// with `link` lent to it for this call.
            fn with_endpoint<R>(
                link: &$crate::Link,
                f: impl FnOnce(&mut dyn $crate::ClientSideEndpoint) -> R,
            ) -> R {
                ::std::thread_local! {
                    static ENDPOINT: ::std::cell::RefCell<
                        Option<Box<dyn $crate::ClientSideEndpoint>>,
                    > = const { ::std::cell::RefCell::new(None) };
                }
                $crate::install_panic_hook();
                $crate::lend(link, || {
                    ENDPOINT.with(|e| {
                        let mut e = e.borrow_mut();
                        let endpoint = e.get_or_insert_with(|| {
                            #[allow(unused_variables)]
                            let $link = $crate::SessionLink;
                            Box::new($endpoint)
                        });
                        f(&mut **endpoint)
                    })
                })
            }
        }

        impl $crate::Guest for $ty {
            fn info() -> $crate::PluginInfo {
                $crate::install_panic_hook();
                $crate::info($name, env!("CARGO_PKG_VERSION"), &[$($model),+])
            }

            fn read_identity(link: &$crate::Link) -> Result<$crate::Identity, $crate::Error> {
                Self::with_endpoint(link, |c| $crate::read_identity(c))
            }

            fn write_pack(link: &$crate::Link, pack: $crate::Pack) -> Result<(), $crate::Error> {
                Self::with_endpoint(link, |c| $crate::write_pack(c, pack))
            }

            fn prove_possession(
                link: &$crate::Link,
                challenge: Vec<u8>,
            ) -> Result<Vec<u8>, $crate::Error> {
                Self::with_endpoint(link, |c| $crate::prove_possession(c, &challenge))
            }
        }

        $crate::export_plugin!($ty with_types_in $crate);
    };
}
