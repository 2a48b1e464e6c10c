//! PKCS#10 certificate signing requests from devices that generate their own
//! key (`keygen = "device"`): parse one (RustCrypto `x509-cert`, no ASN.1 by
//! hand), check its size, its key algorithm (P-256, P-384, Ed25519) and its
//! signature, which is the device's proof that it holds the new private key.
//!
//! What a request *says* (subject, SANs, requested extensions such as
//! CA:TRUE) is never used for a certificate: the CA builds every certificate
//! from the device id alone ([`super::device_cert`]). Only the public key
//! leaves this file, as a [`CsrKey`] that rcgen signs over.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use x509_cert::der::{Decode, Encode};
use x509_cert::request::CertReq;
use x509_cert::spki::ObjectIdentifier;

use super::profile::KeyAlgorithm;

/// The largest request accepted, in bytes of DER. A real one is a few hundred.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// Why a request was refused; each message names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is empty")]
    Empty,
    #[error("the CSR is {len} bytes, more than the limit of {MAX_CSR_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("the CSR is not a DER-encoded PKCS#10 request: {0}")]
    NotDer(String),
    #[error("the CSR's key is {0}; a device key must be P-256, P-384 or Ed25519")]
    UnsupportedKey(String),
    #[error("the CSR is signed with {signed}, which does not go with its {key} key")]
    SignatureAlgorithm { signed: String, key: &'static str },
    #[error("the CSR's signature does not verify with the key it carries (no proof that the device holds that key)")]
    BadSignature,
    #[error("the CSR's key is {got}, but this model's profile asks for {expected}")]
    WrongAlgorithm {
        expected: &'static str,
        got: &'static str,
    },
}

/// The public key of a verified request: what the certificate certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrKey {
    algorithm: KeyAlgorithm,
    /// The subjectPublicKey bits: an uncompressed EC point or 32 Ed25519 bytes.
    public: Vec<u8>,
}

impl CsrKey {
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn public_key(&self) -> &[u8] {
        &self.public
    }
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.algorithm {
            KeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A parsed request whose signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    pub key: CsrKey,
    /// The whole request, for a front door that reads what it asks for (EST
    /// takes the id from it); never used to build a certificate.
    pub request: CertReq,
}

/// Parses `der` and verifies its signature with the key it carries.
pub fn verify(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge { len: der.len() });
    }
    let request = CertReq::from_der(der).map_err(|e| CsrError::NotDer(e.to_string()))?;
    let spki = &request.info.public_key;
    let public = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| CsrError::UnsupportedKey("a public key with unused bits".into()))?
        .to_vec();
    let algorithm = key_algorithm(spki)?;
    let expected_len = match algorithm {
        KeyAlgorithm::P256 => 65,
        KeyAlgorithm::P384 => 97,
        KeyAlgorithm::Ed25519 => 32,
    };
    if public.len() != expected_len || (algorithm != KeyAlgorithm::Ed25519 && public[0] != 4) {
        return Err(CsrError::UnsupportedKey(format!(
            "a {} key of {} bytes (expected an uncompressed {expected_len}-byte key)",
            algorithm.name(),
            public.len()
        )));
    }
    let verification: &'static dyn signature::VerificationAlgorithm =
        match (algorithm, request.algorithm.oid) {
            (KeyAlgorithm::P256, OID_ECDSA_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyAlgorithm::P384, OID_ECDSA_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
            (KeyAlgorithm::Ed25519, OID_ED25519) => &signature::ED25519,
            (key, signed) => {
                return Err(CsrError::SignatureAlgorithm {
                    signed: signed.to_string(),
                    key: key.name(),
                })
            }
        };
    let signed = request
        .info
        .to_der()
        .map_err(|e| CsrError::NotDer(e.to_string()))?;
    let sig = request.signature.as_bytes().ok_or(CsrError::BadSignature)?;
    UnparsedPublicKey::new(verification, &public)
        .verify(&signed, sig)
        .map_err(|_| CsrError::BadSignature)?;
    Ok(VerifiedCsr {
        key: CsrKey { algorithm, public },
        request,
    })
}

/// [`verify`], and the key must be of the model's algorithm.
pub fn verify_for(der: &[u8], expected: KeyAlgorithm) -> Result<VerifiedCsr, CsrError> {
    let verified = verify(der)?;
    if verified.key.algorithm != expected {
        return Err(CsrError::WrongAlgorithm {
            expected: expected.name(),
            got: verified.key.algorithm.name(),
        });
    }
    Ok(verified)
}

fn key_algorithm(
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Result<KeyAlgorithm, CsrError> {
    let oid = spki.algorithm.oid;
    if oid == OID_ED25519 {
        return Ok(KeyAlgorithm::Ed25519);
    }
    if oid != OID_EC_PUBLIC_KEY {
        return Err(CsrError::UnsupportedKey(format!("algorithm {oid}")));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    match curve {
        Some(OID_P256) => Ok(KeyAlgorithm::P256),
        Some(OID_P384) => Ok(KeyAlgorithm::P384),
        Some(other) => Err(CsrError::UnsupportedKey(format!("EC curve {other}"))),
        None => Err(CsrError::UnsupportedKey(
            "an EC key without a named curve".into(),
        )),
    }
}

/// A fresh key of `algorithm` and a CSR for it naming `common_name`: what a
/// device that generates its own key does (the simulator, tests).
pub fn generate(
    algorithm: KeyAlgorithm,
    common_name: &str,
) -> anyhow::Result<(zeroize::Zeroizing<Vec<u8>>, Vec<u8>)> {
    let key = super::keys::DeviceKey::generate(algorithm)?;
    let pkcs8 = zeroize::Zeroizing::new(key.pkcs8_der().to_vec());
    let csr = request_for(&pkcs8, common_name, |_| {})?;
    Ok((pkcs8, csr))
}

/// A CSR signed by the PKCS#8 key `key_pkcs8`, subject `CN=common_name`;
/// `edit` may add to what it asks for (tests ask for what must be ignored).
pub fn request_for(
    key_pkcs8: &[u8],
    common_name: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> anyhow::Result<Vec<u8>> {
    let key = super::keys::signing_key_from_pkcs8(key_pkcs8)?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    edit(&mut params);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| anyhow::anyhow!("cannot build a CSR: {e}"))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(algorithm: KeyAlgorithm) -> Vec<u8> {
        generate(algorithm, "3012-000001").unwrap().1
    }

    #[test]
    fn each_device_algorithm_verifies_and_is_named() {
        for algorithm in [
            KeyAlgorithm::P256,
            KeyAlgorithm::P384,
            KeyAlgorithm::Ed25519,
        ] {
            let verified = verify_for(&csr(algorithm), algorithm).unwrap();
            assert_eq!(verified.key.algorithm(), algorithm);
        }
    }

    #[test]
    fn a_signature_that_does_not_verify_is_refused() {
        let mut der = csr(KeyAlgorithm::P256);
        // The signature is the last field: flip a bit inside it.
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let err = verify(&der).unwrap_err();
        assert!(
            matches!(err, CsrError::BadSignature | CsrError::NotDer(_)),
            "{err}"
        );
        // Change the signed part instead (a byte of the public key): the
        // DER stays valid and only the signature check can catch it.
        let mut der = csr(KeyAlgorithm::Ed25519);
        let verified = verify(&der).unwrap();
        let key = verified.key.public_key().to_vec();
        let at = der
            .windows(key.len())
            .position(|w| w == key.as_slice())
            .unwrap();
        der[at + 5] ^= 0x40;
        assert_eq!(verify(&der).unwrap_err(), CsrError::BadSignature);
    }

    #[test]
    fn a_key_of_another_algorithm_than_the_models_is_refused() {
        let err = verify_for(&csr(KeyAlgorithm::P384), KeyAlgorithm::P256).unwrap_err();
        assert_eq!(
            err,
            CsrError::WrongAlgorithm {
                expected: "p256",
                got: "p384"
            }
        );
        assert!(err.to_string().contains("asks for p256"), "{err}");
    }

    #[test]
    fn too_large_empty_and_not_der_are_refused_by_name() {
        let big = vec![0x30; MAX_CSR_BYTES + 1];
        assert!(
            matches!(verify(&big), Err(CsrError::TooLarge { len }) if len == MAX_CSR_BYTES + 1)
        );
        assert_eq!(verify(&[]).unwrap_err(), CsrError::Empty);
        let err = verify(b"-----BEGIN CERTIFICATE REQUEST-----").unwrap_err();
        assert!(matches!(err, CsrError::NotDer(_)), "{err}");
        assert!(err.to_string().contains("not a DER"), "{err}");
        // Trailing bytes after the request are not DER either.
        let mut der = csr(KeyAlgorithm::P256);
        der.push(0);
        assert!(matches!(verify(&der), Err(CsrError::NotDer(_))));
    }

    #[test]
    fn a_key_on_another_curve_is_refused() {
        let der = csr(KeyAlgorithm::P256);
        let p256 = OID_P256.as_bytes();
        let at = der.windows(p256.len()).position(|w| w == p256).unwrap();
        let mut der = der;
        der[at + p256.len() - 1] ^= 0x01; // 1.2.840.10045.3.1.6: another curve
        let err = verify(&der).unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err}");
    }
}
