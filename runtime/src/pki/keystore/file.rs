//! The sealed-file key store: CA keys as PKCS#8 in memory, signed with
//! aws-lc-rs. The CA directory seals the PKCS#8 under its passphrase
//! (`keys.json`); this file only makes and uses the keys.

use zeroize::Zeroizing;

use super::{CaKey, CaKeyAlgorithm, Signer};

struct FileKey(rcgen::KeyPair);

impl Signer for FileKey {
    fn public_key(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&self.0)
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }

    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        rcgen::SigningKey::sign(&self.0, message)
            .map_err(|e| anyhow::anyhow!("signing failed: {e}"))
    }
}

/// A new key and its PKCS#8 DER (wiped on drop), for the caller to seal.
pub fn generate(algorithm: CaKeyAlgorithm) -> anyhow::Result<(CaKey, Zeroizing<Vec<u8>>)> {
    let pair = rcgen::KeyPair::generate_for(algorithm.rcgen())?;
    let pkcs8 = Zeroizing::new(pair.serialize_der());
    Ok((CaKey::new(FileKey(pair)), pkcs8))
}

/// A key from its (unsealed) PKCS#8 DER.
pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<CaKey> {
    Ok(CaKey::new(FileKey(
        crate::pki::keys::signing_key_from_pkcs8(der)?,
    )))
}
