//! rustls configurations from certline credentials (aws-lc-rs everywhere), and
//! the verifier every certline client uses to check, inside the handshake and
//! so before it sends a byte, that the server it reached holds the role it
//! meant to reach.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::pki::credential::Credential;
use crate::pki::role::{role_of, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every peer must present a certificate from our root.
    Required,
    /// A peer may connect without one (for CRL and health); a certificate it
    /// does present must still verify.
    Optional,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(root: &CertificateDer<'static>) -> anyhow::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    store
        .add(root.clone())
        .map_err(|e| anyhow::anyhow!("the root certificate is not a usable trust anchor: {e}"))?;
    Ok(Arc::new(store))
}

pub fn server_config(cred: &Credential, auth: ClientAuth) -> anyhow::Result<Arc<ServerConfig>> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots(&cred.root)?, provider());
    let verifier = match auth {
        ClientAuth::Required => builder.build()?,
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cred.chain.clone(), cred.key())
        .map_err(|e| anyhow::anyhow!("credential {} is unusable for a server: {e}", cred.name()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server presented a credential of another role than the client meant to reach.
#[derive(thiserror::Error)]
#[error("the server presented {found}; expected a {expect} credential (refused before sending anything)")]
pub struct WrongRole {
    pub expect: Role,
    pub found: String,
}

/// rustls shows the error inside its own with `{:?}`: the sentence, not the fields.
impl std::fmt::Debug for WrongRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// How the chain of the peer is checked before its role.
#[derive(Debug)]
enum ChainCheck {
    /// A certline service: chain to our root, serverAuth, the host name.
    Service(Arc<WebPkiServerVerifier>),
    /// The device end of the device link: every device of a vendor shares one
    /// link credential (clientAuth only, no host names), so its chain is
    /// checked as a client certificate's and its name not at all.
    DeviceLink(Arc<dyn ClientCertVerifier>),
}

/// Checks the server's certificate and then that it carries `expect`'s role
/// (the SAN URI `urn:certline:role:<role>:<name>`). A failure ends the
/// handshake, so the client has sent nothing but its hello.
#[derive(Debug)]
pub struct RoleVerifier {
    chain: ChainCheck,
    expect: Role,
}

impl RoleVerifier {
    /// For a client of a certline service of role `expect` under `root`.
    pub fn service(root: &CertificateDer<'static>, expect: Role) -> anyhow::Result<Arc<Self>> {
        let webpki =
            WebPkiServerVerifier::builder_with_provider(roots(root)?, provider()).build()?;
        Ok(Arc::new(RoleVerifier {
            chain: ChainCheck::Service(webpki),
            expect,
        }))
    }

    /// For the line's end of the device link: the peer holds a device-link credential.
    pub fn device_link(root: &CertificateDer<'static>) -> anyhow::Result<Arc<Self>> {
        let webpki =
            WebPkiClientVerifier::builder_with_provider(roots(root)?, provider()).build()?;
        Ok(Arc::new(RoleVerifier {
            chain: ChainCheck::DeviceLink(webpki),
            expect: Role::DeviceLink,
        }))
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.chain {
            ChainCheck::Service(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
            }
            ChainCheck::DeviceLink(v) => {
                v.verify_client_cert(end_entity, intermediates, now)?;
            }
        }
        match role_of(end_entity) {
            Some((role, _)) if role == self.expect => Ok(ServerCertVerified::assertion()),
            found => {
                let found = match found {
                    Some((role, name)) => format!("a {role} credential ({name})"),
                    None => "a certificate that is no certline service credential".to_string(),
                };
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(WrongRole {
                        expect: self.expect,
                        found,
                    })),
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.chain {
            ChainCheck::Service(v) => v.verify_tls12_signature(message, cert, dss),
            ChainCheck::DeviceLink(v) => v.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match &self.chain {
            ChainCheck::Service(v) => v.verify_tls13_signature(message, cert, dss),
            ChainCheck::DeviceLink(v) => v.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        match &self.chain {
            ChainCheck::Service(v) => v.supported_verify_schemes(),
            ChainCheck::DeviceLink(v) => v.supported_verify_schemes(),
        }
    }
}

/// A client that presents `cred`, trusts only `cred`'s root and talks only
/// to a server holding a credential of role `expect`.
pub fn client_config(cred: &Credential, expect: Role) -> anyhow::Result<Arc<ClientConfig>> {
    identity_client_config(cred.chain.clone(), cred.key(), &cred.root, expect)
        .map_err(|e| anyhow::anyhow!("credential {}: {e:#}", cred.name()))
}

/// A client that presents any certificate chain and key (a device presenting
/// its identity to the center), trusts only `root` and talks only to a
/// server of role `expect`.
pub fn identity_client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    root: &CertificateDer<'static>,
    expect: Role,
) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(RoleVerifier::service(root, expect)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("the certificate and key are unusable for a client: {e}"))?;
    Ok(Arc::new(config))
}

/// A client without a certificate of its own (fetching a CRL, an admin
/// logging in) that trusts `root` and talks only to a server of role `expect`.
pub fn anonymous_client_config(
    root: &CertificateDer<'static>,
    expect: Role,
) -> anyhow::Result<Arc<ClientConfig>> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(RoleVerifier::service(root, expect)?)
            .with_no_client_auth(),
    ))
}
