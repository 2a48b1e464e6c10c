//! rustls configurations from certline credentials (aws-lc-rs everywhere).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::pki::credential::Credential;

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

/// A client that presents `cred` and trusts only `cred`'s root.
pub fn client_config(cred: &Credential) -> anyhow::Result<Arc<ClientConfig>> {
    identity_client_config(cred.chain.clone(), cred.key(), &cred.root)
        .map_err(|e| anyhow::anyhow!("credential {}: {e:#}", cred.name()))
}

/// A client that presents any certificate chain and key (a device presenting
/// its identity to the center) and trusts only `root`.
pub fn identity_client_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    root: &CertificateDer<'static>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(root)?, provider()).build()?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("the certificate and key are unusable for a client: {e}"))?;
    Ok(Arc::new(config))
}

/// A client without a certificate of its own (fetching a CRL) that trusts `root`.
pub fn anonymous_client_config(
    root: &CertificateDer<'static>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(root)?, provider()).build()?;
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(verifier)
            .with_no_client_auth(),
    ))
}
