//! The certificate primitive: device identities, the CA hierarchy, service
//! credentials, packs, CRLs and the sealing of keys at rest.
//!
//! Nothing here knows about roles, storage or transport: callers hand in what
//! must be signed and get DER/PEM back.

pub mod authority;
pub mod credential;
pub mod crl;
pub mod csr;
pub mod device_cert;
pub mod id;
pub mod identity;
pub mod keys;
pub mod keystore;
pub mod pack;
pub mod profile;
pub mod role;
pub mod seal;
pub mod serial;
pub mod urls;
pub mod verify;

use aws_lc_rs::digest;

/// SHA-256 of a certificate's DER, lower-case hex: the fingerprint used in the
/// ledger, the stock, and the line's read-back comparison.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der))
}

/// PEM-encode one DER blob with the given label.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Every PEM block in `text` with the given label, in order.
pub fn pem_blocks(text: &str, label: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let blocks = pem::parse_many(text).map_err(|e| anyhow::anyhow!("not valid PEM: {e}"))?;
    Ok(blocks
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(|p| p.into_contents())
        .collect())
}
