//! Where the CA's signing keys (root and issuing) live, behind one interface:
//! sealed files ([`file`], the embedded default: PKCS#8 sealed under the
//! passphrase in the CA directory) or a PKCS#11 token ([`pkcs11`], an HSM:
//! the keys are generated inside it and never leave it).
//!
//! Every CA signature (device certificates, service credentials, CRLs, the
//! issuing CA's certificate) is made through a [`CaKey`], which rcgen signs
//! with as a remote key. rcgen's error for a failed remote signature carries
//! no text, so the store's own message is kept per thread and recovered by
//! [`explain`].

pub mod file;
pub mod pkcs11;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One signing key of the CA, wherever it lives. Signatures are DER (X.509's form).
pub trait Signer: Send + Sync {
    /// The raw public key (an uncompressed EC point), as rcgen puts it in a SubjectPublicKeyInfo.
    fn public_key(&self) -> &[u8];
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm;
    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>>;
}

/// A CA signing key, cheap to clone, usable from every signing thread.
#[derive(Clone)]
pub struct CaKey(Arc<dyn Signer>);

impl CaKey {
    pub fn new(signer: impl Signer + 'static) -> CaKey {
        CaKey(Arc::new(signer))
    }

    /// Signs with the key, the store's error as is.
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.0.sign(message)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(message).map_err(|e| {
            LAST_ERROR.with(|last| *last.borrow_mut() = Some(format!("{e:#}")));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// An rcgen error as an error that says what went wrong: for a failed
/// signature, what the key store said.
pub fn explain(err: rcgen::Error) -> anyhow::Error {
    if let rcgen::Error::RemoteKeyError = err {
        if let Some(message) = LAST_ERROR.with(|last| last.borrow_mut().take()) {
            return anyhow::Error::new(SignFailed(message));
        }
    }
    anyhow::anyhow!("{err}")
}

/// A signature the key store could not make (a token removed, logged out, failing).
#[derive(Debug, thiserror::Error)]
#[error("the CA's key store could not sign: {0}")]
pub struct SignFailed(pub String);

/// Where ca.toml says the CA's keys are: `[keystore] kind = "sealed"` (the
/// default, also when the table is absent) or `kind = "pkcs11"` with the
/// module, the token's label and the keys' labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyStoreConfig {
    /// PKCS#8 in `keys.json`, sealed under the CA's passphrase.
    #[default]
    Sealed,
    /// Keys generated inside a PKCS#11 token, found by label.
    Pkcs11 {
        /// The PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so).
        module: PathBuf,
        /// The token's label.
        token: String,
        /// Label of the root CA's key pair (P-384).
        root_label: String,
        /// Label of the issuing CA's key pair (P-256).
        issuing_label: String,
    },
}

impl KeyStoreConfig {
    pub fn is_sealed(&self) -> bool {
        matches!(self, KeyStoreConfig::Sealed)
    }
}

/// The curve and hash of a CA key: the root is P-384, the issuing CA P-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKeyAlgorithm {
    P256,
    P384,
}

impl CaKeyAlgorithm {
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            CaKeyAlgorithm::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// Bytes of an uncompressed point on the curve.
    pub fn point_len(self) -> usize {
        match self {
            CaKeyAlgorithm::P256 => 65,
            CaKeyAlgorithm::P384 => 97,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CaKeyAlgorithm::P256 => "EC P-256",
            CaKeyAlgorithm::P384 => "EC P-384",
        }
    }
}
