//! Keys at rest: AES-256-GCM under a key-encryption key (KEK) derived with
//! Argon2id from a passphrase that is never stored beside the data.
//!
//! The passphrase comes from `CERTLINE_PASSPHRASE` or a passphrase file, never
//! from the command line. A sealed blob is `nonce (12) || ciphertext || tag`;
//! callers bind what the blob belongs to (a device id and serial, a key's name)
//! as associated data, so a blob moved to another row fails to open.

use std::path::Path;

use anyhow::Context;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const PASSPHRASE_ENV: &str = "CERTLINE_PASSPHRASE";
const CHECK_PLAINTEXT: &[u8] = b"certline key-encryption key check";
const MIN_PASSPHRASE: usize = 8;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The Argon2id parameters and salt, plus a sealed check value that tells a
/// wrong passphrase apart from damaged data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdfParams {
    pub algorithm: String,
    pub salt: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub check: String,
}

pub struct Kek {
    key: LessSafeKey,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("wrong key-encryption passphrase (it does not open this directory's keys)")]
    WrongPassphrase,
    #[error("sealed data for {0} does not open: it was altered, moved from another record, or sealed under another passphrase")]
    Tampered(String),
}

impl Kek {
    /// A new KEK with fresh salt; the params are stored, the passphrase is not.
    pub fn create(passphrase: &str) -> anyhow::Result<(Kek, KdfParams)> {
        if passphrase.chars().count() < MIN_PASSPHRASE {
            anyhow::bail!(
                "the key-encryption passphrase must be at least {MIN_PASSPHRASE} characters"
            );
        }
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let mut params = KdfParams {
            algorithm: "argon2id-v19/aes-256-gcm".into(),
            salt: b64().encode(salt),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            check: String::new(),
        };
        let kek = Kek::derive(passphrase, &params)?;
        params.check = b64().encode(kek.seal(CHECK_PLAINTEXT, b"check"));
        Ok((kek, params))
    }

    /// The KEK for stored params, or `WrongPassphrase`.
    pub fn unlock(passphrase: &str, params: &KdfParams) -> anyhow::Result<Kek> {
        let kek = Kek::derive(passphrase, params)?;
        let check = b64()
            .decode(&params.check)
            .context("the KDF check value is not base64")?;
        match kek.open(&check, b"check", "check") {
            Ok(plain) if plain.as_slice() == CHECK_PLAINTEXT => Ok(kek),
            _ => Err(SealError::WrongPassphrase.into()),
        }
    }

    fn derive(passphrase: &str, params: &KdfParams) -> anyhow::Result<Kek> {
        if params.algorithm != "argon2id-v19/aes-256-gcm" {
            anyhow::bail!("unknown key-encryption scheme {:?}", params.algorithm);
        }
        let salt = b64()
            .decode(&params.salt)
            .context("the KDF salt is not base64")?;
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(
                params.memory_kib,
                params.iterations,
                params.parallelism,
                Some(32),
            )
            .map_err(|e| anyhow::anyhow!("bad KDF parameters: {e}"))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, key.as_mut())
            .map_err(|e| anyhow::anyhow!("key derivation failed: {e}"))?;
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_ref())
            .map_err(|_| anyhow::anyhow!("cannot build the AEAD key"))?;
        Ok(Kek {
            key: LessSafeKey::new(unbound),
        })
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random generator failed");
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("AES-GCM sealing cannot fail for in-memory buffers");
        out.extend_from_slice(&body);
        body.iter_mut().for_each(|b| *b = 0);
        out
    }

    /// Opens a sealed blob; `what` names it in the error.
    pub fn open(
        &self,
        sealed: &[u8],
        aad: &[u8],
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SealError::Tampered(what.to_string()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| SealError::Tampered(what.to_string()))?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| SealError::Tampered(what.to_string()))?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

/// The key-encryption passphrase: from `--passphrase-file` if given, else from
/// `CERTLINE_PASSPHRASE`. Never from the command line itself.
pub fn read_passphrase(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
        );
        let trimmed = text.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            anyhow::bail!("the passphrase file {} is empty", path.display());
        }
        return Ok(Zeroizing::new(trimmed.to_string()));
    }
    match std::env::var(PASSPHRASE_ENV) {
        Ok(value) if !value.is_empty() => Ok(Zeroizing::new(value)),
        _ => anyhow::bail!(
            "no key-encryption passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file FILE"
        ),
    }
}

pub fn encode(bytes: &[u8]) -> String {
    b64().encode(bytes)
}

pub fn decode(text: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    b64()
        .decode(text)
        .with_context(|| format!("{what} is not base64"))
}
