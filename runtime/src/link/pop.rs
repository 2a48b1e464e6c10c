//! Proof of possession: a device signs the host's challenge (behind a fixed
//! context, see `certline_device_protocol::pop_message`) with the key in its
//! flash, and the host checks the signature against the certificate it wrote.

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, UnparsedPublicKey};
use certline_device_protocol::pop_message;
use x509_parser::prelude::*;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

/// Signs `challenge` with a PKCS#8 key (ECDSA P-256/P-384: DER signature; Ed25519).
pub fn sign(key_pkcs8: &[u8], challenge: &[u8]) -> anyhow::Result<Vec<u8>> {
    let msg = pop_message(challenge);
    let rng = SystemRandom::new();
    for alg in [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    ] {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, key_pkcs8) {
            let sig = pair
                .sign(&rng, &msg)
                .map_err(|_| anyhow::anyhow!("signing failed"))?;
            return Ok(sig.as_ref().to_vec());
        }
    }
    if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key_pkcs8) {
        return Ok(pair.sign(&msg).as_ref().to_vec());
    }
    anyhow::bail!("the key is not a PKCS#8 ECDSA P-256/P-384 or Ed25519 key")
}

/// Checks that `sig` is the signature of `challenge` by the key of `cert_der`.
pub fn verify(cert_der: &[u8], challenge: &[u8], sig: &[u8]) -> anyhow::Result<()> {
    let (_, cert) = X509Certificate::from_der(cert_der).context("not an X.509 certificate")?;
    let spki = cert.public_key();
    let alg_oid = spki.algorithm.algorithm.to_id_string();
    let alg: &'static dyn signature::VerificationAlgorithm = if alg_oid == OID_ED25519 {
        &signature::ED25519
    } else if alg_oid == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .unwrap_or_default();
        match curve.as_str() {
            OID_P256 => &signature::ECDSA_P256_SHA256_ASN1,
            OID_P384 => &signature::ECDSA_P384_SHA384_ASN1,
            other => anyhow::bail!("unsupported EC curve {other:?} in the device certificate"),
        }
    } else {
        anyhow::bail!("unsupported key algorithm {alg_oid} in the device certificate")
    };
    UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(&pop_message(challenge), sig)
        .map_err(|_| {
            anyhow::anyhow!("the signature does not verify against the device certificate's key")
        })
}
