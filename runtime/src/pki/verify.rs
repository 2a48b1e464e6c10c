//! Chain verification with webpki, independent of the code (rcgen) that made
//! the certificates: a pack is good when its device certificate chains to its
//! root for client authentication and names a well-formed device identity.

use rustls_pki_types::{CertificateDer, UnixTime};

use super::identity::{device_identity, DeviceIdentity};
use super::pack::Pack;
use super::pem_blocks;

/// Why a chain did not verify, sorted for the decisions callers make on it.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the certificate has been revoked")]
    Revoked,
    #[error("the CRL is past its next update: revocation status is unknown")]
    CrlExpired,
    #[error("{0}")]
    Invalid(String),
}

/// Revocation data for a verification: DER CRLs covering every certificate of
/// the chain, and whether a CRL past its nextUpdate fails the check.
pub struct Revocation<'a> {
    pub crls: &'a [Vec<u8>],
    pub enforce_next_update: bool,
}

/// Verifies `cert` (with `intermediates`) up to `root` for TLS client use.
pub fn verify_client_chain(
    cert: &[u8],
    intermediates: &[Vec<u8>],
    root: &[u8],
) -> anyhow::Result<()> {
    Ok(verify_client_chain_at(cert, intermediates, root, None)?)
}

/// As [`verify_client_chain`], and with `revocation`, checks every certificate
/// of the chain against the CRLs (whose signatures webpki verifies too).
pub fn verify_client_chain_at(
    cert: &[u8],
    intermediates: &[Vec<u8>],
    root: &[u8],
    revocation: Option<Revocation<'_>>,
) -> Result<(), ChainError> {
    let invalid = |what: &str, e: webpki::Error| ChainError::Invalid(format!("{what}: {e:?}"));
    let root = CertificateDer::from(root);
    let anchor = webpki::anchor_from_trusted_cert(&root)
        .map_err(|e| invalid("the root is not a usable trust anchor", e))?;
    let cert = CertificateDer::from(cert);
    let end_entity = webpki::EndEntityCert::try_from(&cert)
        .map_err(|e| invalid("the certificate cannot be parsed", e))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let crls = match &revocation {
        Some(r) => r
            .crls
            .iter()
            .map(|der| {
                webpki::OwnedCertRevocationList::from_der(der)
                    .map(webpki::CertRevocationList::from)
                    .map_err(|e| invalid("a CRL cannot be parsed", e))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let options = match &revocation {
        Some(r) => Some(
            webpki::RevocationOptionsBuilder::new(&crl_refs)
                .map_err(|_| ChainError::Invalid("no CRL to check revocation against".into()))?
                .with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .with_expiration_policy(if r.enforce_next_update {
                    webpki::ExpirationPolicy::Enforce
                } else {
                    webpki::ExpirationPolicy::Ignore
                })
                .build(),
        ),
        None => None,
    };
    match end_entity.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        options,
        None,
    ) {
        Ok(_) => Ok(()),
        Err(webpki::Error::CertRevoked) => Err(ChainError::Revoked),
        Err(webpki::Error::CrlExpired { .. }) => Err(ChainError::CrlExpired),
        Err(e) => Err(invalid("the certificate does not chain to the root", e)),
    }
}

/// Verifies a pack's chain to its root and returns the identity it carries.
pub fn verify_pack(pack: &Pack) -> anyhow::Result<DeviceIdentity> {
    let chain = pem_blocks(&pack.chain_pem, "CERTIFICATE")?;
    let root = pem_blocks(&pack.root_pem, "CERTIFICATE")?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("root.pem holds no certificate"))?;
    let (device, intermediates) = chain
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("chain.pem holds no certificate"))?;
    verify_client_chain(device, intermediates, &root)?;
    device_identity(device)
}
