//! The glue from a [`ClientSide`] protocol to the world's exports, written
//! once for every interface version: each SDK crate (`sdk` for 0.2.0,
//! `sdk/since_v0.1.0` for 0.1.0) includes this file next to its own WIT
//! bindings, so `crate::Link`, `crate::Error`, `crate::Pack`... are that
//! version's types. What a version adds (0.2.0's `generate-key`) stays in
//! its own crate, and reaches [`protocol_plugin!`] through the crate's
//! `__version_exports!` macro.

use certline_device_protocol::{client, ClientSide, LinkFailure, Transport};

use crate::{host, Error, Identity, Link, LinkError, Pack, PluginInfo, Stage};

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

pub(crate) fn to_error(e: certline_device_protocol::Error) -> Error {
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

/// `write-pack` over `c`, reporting `received` to the host when the device
/// does. Since 0.2.0 a pack may carry no key: it installs the certificate
/// for the key the device generated itself.
pub fn write_pack(mut c: impl ClientSide, pack: Pack) -> Result<(), Error> {
    let pack = certline_device_protocol::Pack {
        device_id: pack.device_id,
        root_pem: pack.root_pem,
        chain_pem: pack.chain_pem,
        // A `string` in 0.1.0, an `option<string>` since 0.2.0.
        key_pem: pack.key_pem.into(),
    };
    client::write_pack(&mut c, pack, || host::report(Stage::Received)).map_err(to_error)
}

/// `prove-possession` over `c`.
pub fn prove_possession(mut c: impl ClientSide, challenge: &[u8]) -> Result<Vec<u8>, Error> {
    client::prove_possession(&mut c, challenge).map_err(to_error)
}

/// Defines and exports a plugin whose whole behaviour is one protocol for some
/// model codes. The endpoint is built once per session, over
/// [`SessionLink`](crate::SessionLink) (the link of whichever call runs),
/// and kept for the session's later calls: a protocol with a greeting or
/// sequence numbers says its `HELLO` once per session, not once per call. A
/// panic is logged with its location through `host.log` before the plugin
/// traps.
///
/// ```ignore
/// certline_plugin_sdk::protocol_plugin!(Imaging, "acme-imaging", ["3012"], |link| {
///     XmlEndpoint::new(link)
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

            $crate::__version_exports!();
        }

        $crate::export_plugin!($ty with_types_in $crate);
    };
}
