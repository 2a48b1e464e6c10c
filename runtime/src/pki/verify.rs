//! Chain verification with webpki, independent of the code (rcgen) that made
//! the certificates: a pack is good when its device certificate chains to its
//! root for client authentication and names a well-formed device identity.

use rustls_pki_types::{CertificateDer, UnixTime};

use super::identity::{device_identity, DeviceIdentity};
use super::pack::Pack;
use super::pem_blocks;

/// Verifies `cert` (with `intermediates`) up to `root` for TLS client use.
pub fn verify_client_chain(
    cert: &[u8],
    intermediates: &[Vec<u8>],
    root: &[u8],
) -> anyhow::Result<()> {
    let root = CertificateDer::from(root);
    let anchor = webpki::anchor_from_trusted_cert(&root)
        .map_err(|e| anyhow::anyhow!("the root is not a usable trust anchor: {e:?}"))?;
    let cert = CertificateDer::from(cert);
    let end_entity = webpki::EndEntityCert::try_from(&cert)
        .map_err(|e| anyhow::anyhow!("the device certificate cannot be parsed: {e:?}"))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| anyhow::anyhow!("the device certificate does not chain to the root: {e:?}"))?;
    Ok(())
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
