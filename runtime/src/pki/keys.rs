//! Key generation for device identities.
//!
//! Keys are generated straight with aws-lc-rs and handed to rcgen only as public
//! key bytes: rcgen's `KeyPair::generate_for` parses every new key back, which
//! halves the generation rate, and the device key never signs anything here.

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING,
};
use zeroize::Zeroizing;

use super::profile::KeyAlgorithm;

/// A freshly generated device key: the PKCS#8 private key (wiped on drop) and
/// the raw public key that goes into the certificate.
pub struct DeviceKey {
    pkcs8: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
}

impl DeviceKey {
    pub fn generate(algorithm: KeyAlgorithm) -> anyhow::Result<Self> {
        let failed = |_| anyhow::anyhow!("generating a {} key failed", algorithm.name());
        let (pkcs8, public, rcgen_alg) = match algorithm {
            KeyAlgorithm::P256 | KeyAlgorithm::P384 => {
                let (alg, rcgen_alg) = if algorithm == KeyAlgorithm::P256 {
                    (
                        &ECDSA_P256_SHA256_ASN1_SIGNING,
                        &rcgen::PKCS_ECDSA_P256_SHA256,
                    )
                } else {
                    (
                        &ECDSA_P384_SHA384_ASN1_SIGNING,
                        &rcgen::PKCS_ECDSA_P384_SHA384,
                    )
                };
                let pair = EcdsaKeyPair::generate(alg).map_err(failed)?;
                let pkcs8 = pair.to_pkcs8v1().map_err(failed)?;
                (
                    pkcs8.as_ref().to_vec(),
                    pair.public_key().as_ref().to_vec(),
                    rcgen_alg,
                )
            }
            KeyAlgorithm::Ed25519 => {
                let pair = Ed25519KeyPair::generate().map_err(failed)?;
                let pkcs8 = pair.to_pkcs8v1().map_err(failed)?;
                (
                    pkcs8.as_ref().to_vec(),
                    pair.public_key().as_ref().to_vec(),
                    &rcgen::PKCS_ED25519,
                )
            }
        };
        Ok(DeviceKey {
            pkcs8: Zeroizing::new(pkcs8),
            public,
            algorithm: rcgen_alg,
        })
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(super::to_pem("PRIVATE KEY", &self.pkcs8))
    }
}

impl rcgen::PublicKeyData for DeviceKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

/// A signing key of the CA (root, issuing, service TLS) from its PKCS#8 DER.
pub fn signing_key_from_pkcs8(der: &[u8]) -> anyhow::Result<rcgen::KeyPair> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der);
    rcgen::KeyPair::try_from(&der).map_err(|e| anyhow::anyhow!("unusable signing key: {e}"))
}

/// The yardstick for issuance: one P-256 key generation plus one signature,
/// nothing else. The bench compares the CA's pack rate against this.
pub fn raw_keygen_and_sign(signer: &EcdsaKeyPair, message: &[u8]) -> anyhow::Result<usize> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    let signature = signer
        .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
        .map_err(|_| anyhow::anyhow!("signing failed"))?;
    Ok(pair.public_key().as_ref().len() + signature.as_ref().len())
}
