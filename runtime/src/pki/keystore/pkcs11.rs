//! The PKCS#11 key store (an HSM, SoftHSM2 in tests), through `cryptoki`.
//!
//! The CA's key pairs are generated inside the token (private halves
//! sensitive and not extractable) and found again by label; the CA records
//! only the labels, and the public keys in its certificates. One login (a
//! PKCS#11 login holds for every session of the process), then a pool of
//! sessions so that signing threads do not queue on one.
//!
//! Everything that can be wrong with a token is said at start, naming what
//! was wrong: a module that is not a PKCS#11 library, a token label that is
//! not there, a wrong or locked PIN (tried once: certline never retries a
//! PIN, so it cannot lock a token by itself), a key that is missing, of
//! another type or curve, or extractable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::{CaKey, CaKeyAlgorithm, Signer};

/// Where the token's user PIN comes from when no `--pin-file` is given.
pub const PIN_ENV: &str = "CERTLINE_PKCS11_PIN";

/// The PIN from `--pin-file` (first line) or `CERTLINE_PKCS11_PIN`; never the command line.
pub fn read_pin(pin_file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    let pin = match pin_file {
        Some(path) => {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the PIN file {}: {e}", path.display())
            })?);
            Zeroizing::new(text.lines().next().unwrap_or_default().to_string())
        }
        None => Zeroizing::new(std::env::var(PIN_ENV).map_err(|_| {
            anyhow::anyhow!(
                "the CA's keys are in a PKCS#11 token: give its user PIN in {PIN_ENV} or with --pin-file (never on the command line)"
            )
        })?),
    };
    anyhow::ensure!(!pin.is_empty(), "the token's PIN is empty");
    Ok(pin)
}

fn ec_params(algorithm: CaKeyAlgorithm) -> Vec<u8> {
    match algorithm {
        // OID 1.2.840.10045.3.1.7 (prime256v1)
        CaKeyAlgorithm::P256 => vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        // OID 1.3.132.0.34 (secp384r1)
        CaKeyAlgorithm::P384 => vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
    }
}

fn rv(err: &CkError) -> Option<RvError> {
    match err {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// One context per module per process: C_Initialize may run only once.
fn context(module: &Path) -> anyhow::Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    if !module.exists() {
        anyhow::bail!(
            "PKCS#11 module {} does not exist (SoftHSM2's is /usr/lib/softhsm/libsofthsm2.so)",
            module.display()
        );
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a PKCS#11 library (it does not load as one: {e})",
            module.display()
        )
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => anyhow::bail!(
            "PKCS#11 module {} failed to initialise: {e}",
            module.display()
        ),
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// An open, logged-in token.
pub struct Token {
    module: PathBuf,
    label: String,
    ctx: Pkcs11,
    slot: Slot,
    /// Kept open for the life of the token: the login lives as long as one session does.
    login: Mutex<Session>,
}

impl Token {
    /// Finds the token labelled `label` in `module` and logs in once with `pin`.
    pub fn open(module: &Path, label: &str, pin: &str) -> anyhow::Result<Arc<Token>> {
        let ctx = context(module)?;
        let mut present = Vec::new();
        let mut found = None;
        for slot in ctx.get_slots_with_token().map_err(|e| {
            anyhow::anyhow!(
                "PKCS#11 module {}: cannot list its slots: {e}",
                module.display()
            )
        })? {
            let info = ctx.get_token_info(slot)?;
            let name = info.label().trim().to_string();
            if name == label {
                found = Some((slot, info));
                break;
            }
            present.push(name);
        }
        let Some((slot, info)) = found else {
            anyhow::bail!(
                "no token labelled {label:?} in PKCS#11 module {} (tokens present: {}); is it plugged in, or is the label wrong?",
                module.display(),
                if present.is_empty() { "none".to_string() } else { present.join(", ") }
            );
        };
        if info.user_pin_locked() {
            anyhow::bail!(
                "token {label:?}: its user PIN is locked (too many wrong PINs); its security officer must unlock it. certline did not try a PIN"
            );
        }
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| anyhow::anyhow!("token {label:?}: cannot open a session: {e}"))?;
        let pin = AuthPin::from(pin.to_string());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => {}
            Err(e) if rv(&e) == Some(RvError::PinIncorrect) => anyhow::bail!(
                "token {label:?}: wrong PIN (refused by the token; certline tries a PIN once and never retries, so that it cannot lock the token)"
            ),
            Err(e) if rv(&e) == Some(RvError::PinLocked) => anyhow::bail!(
                "token {label:?}: its user PIN is locked; its security officer must unlock it"
            ),
            Err(e) => anyhow::bail!("token {label:?}: login failed: {e}"),
        }
        Ok(Arc::new(Token {
            module: module.to_path_buf(),
            label: label.to_string(),
            ctx,
            slot,
            login: Mutex::new(session),
        }))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn module(&self) -> &Path {
        &self.module
    }

    fn with_session<T>(
        &self,
        work: impl FnOnce(&Session) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let session = self.login.lock().unwrap_or_else(|p| p.into_inner());
        work(&session)
    }

    fn find(
        &self,
        session: &Session,
        class: ObjectClass,
        label: &str,
    ) -> anyhow::Result<Vec<ObjectHandle>> {
        session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| {
                anyhow::anyhow!("token {:?}: cannot search for {label:?}: {e}", self.label)
            })
    }

    /// Generates a key pair labelled `label` inside the token: the private
    /// half sensitive, not extractable, for signing only. Refuses a label in use.
    pub fn generate(
        self: &Arc<Self>,
        label: &str,
        algorithm: CaKeyAlgorithm,
        sessions: usize,
    ) -> anyhow::Result<CaKey> {
        self.with_session(|session| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                if !self.find(session, class, label)?.is_empty() {
                    anyhow::bail!(
                        "token {:?} already holds a key labelled {label:?}; a new CA gets new keys (delete the old ones, or use another token)",
                        self.label
                    );
                }
            }
            let id = label.as_bytes().to_vec();
            let public = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(ec_params(algorithm)),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id),
            ];
            session
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(|e| anyhow::anyhow!("token {:?}: cannot generate the {} key {label:?}: {e}", self.label, algorithm.name()))?;
            Ok(())
        })?;
        self.key(label, algorithm, sessions)
    }

    /// The key pair labelled `label`, checked: a private key of the right type
    /// and curve, not extractable, with its public half beside it.
    pub fn key(
        self: &Arc<Self>,
        label: &str,
        algorithm: CaKeyAlgorithm,
        sessions: usize,
    ) -> anyhow::Result<CaKey> {
        let token = &self.label;
        let (private, point) = self.with_session(|session| {
            let found = self.find(session, ObjectClass::PRIVATE_KEY, label)?;
            let private = match found.as_slice() {
                [] => anyhow::bail!("token {token:?} holds no private key labelled {label:?} (the CA's {} key)", algorithm.name()),
                [one] => *one,
                _ => anyhow::bail!("token {token:?} holds {} private keys labelled {label:?}; the CA needs exactly one", found.len()),
            };
            let attributes = session
                .get_attributes(private, &[AttributeType::KeyType, AttributeType::EcParams, AttributeType::Extractable, AttributeType::Sign])
                .map_err(|e| anyhow::anyhow!("token {token:?}: cannot read key {label:?}: {e}"))?;
            let mut key_type = None;
            let mut params = None;
            for attribute in attributes {
                match attribute {
                    Attribute::KeyType(t) => key_type = Some(t),
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::Extractable(true) => anyhow::bail!(
                        "token {token:?}: key {label:?} is extractable; the CA signs only with keys that cannot leave the token"
                    ),
                    Attribute::Sign(false) => anyhow::bail!("token {token:?}: key {label:?} may not sign"),
                    _ => {}
                }
            }
            match key_type {
                Some(t) if t == KeyType::EC => {}
                Some(t) => anyhow::bail!(
                    "token {token:?}: key {label:?} is a {t} key; the CA's key must be {}",
                    algorithm.name()
                ),
                None => anyhow::bail!("token {token:?}: key {label:?} has no key type"),
            }
            if params.as_deref() != Some(ec_params(algorithm).as_slice()) {
                anyhow::bail!(
                    "token {token:?}: key {label:?} is an EC key on another curve; the CA's key must be {}",
                    algorithm.name()
                );
            }
            let public = match self.find(session, ObjectClass::PUBLIC_KEY, label)?.as_slice() {
                [one] => *one,
                _ => anyhow::bail!("token {token:?} holds no single public key labelled {label:?} beside its private key"),
            };
            let point = session
                .get_attributes(public, &[AttributeType::EcPoint])
                .map_err(|e| anyhow::anyhow!("token {token:?}: cannot read the public key {label:?}: {e}"))?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| anyhow::anyhow!("token {token:?}: public key {label:?} has no EC point"))?;
            Ok((private, unwrap_octet_string(point, algorithm.point_len())))
        })?;
        let mut pool = Vec::with_capacity(sessions.max(1));
        for _ in 0..sessions.max(1) {
            pool.push(Mutex::new(self.ctx.open_ro_session(self.slot).map_err(
                |e| anyhow::anyhow!("token {token:?}: cannot open a signing session: {e}"),
            )?));
        }
        Ok(CaKey::new(TokenKey {
            token: self.clone(),
            label: label.to_string(),
            algorithm,
            handle: private,
            public: point,
            sessions: pool,
            next: AtomicUsize::new(0),
        }))
    }

    /// Deletes the key pair labelled `label` (the bench's throw-away keys).
    pub fn destroy(&self, label: &str) -> anyhow::Result<()> {
        self.with_session(|session| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                for handle in self.find(session, class, label)? {
                    session.destroy_object(handle)?;
                }
            }
            Ok(())
        })
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point (most tokens), or the
/// bare point (a few); takes the point, `point_len` bytes.
fn unwrap_octet_string(value: Vec<u8>, point_len: usize) -> Vec<u8> {
    if value.len() == point_len {
        return value;
    }
    match value.as_slice() {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest.to_vec(),
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest.to_vec(),
        _ => value,
    }
}

/// One CA key in a token, signing on a pool of sessions.
struct TokenKey {
    token: Arc<Token>,
    label: String,
    algorithm: CaKeyAlgorithm,
    handle: ObjectHandle,
    public: Vec<u8>,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl TokenKey {
    /// A free session if there is one, else the next in turn.
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        for session in &self.sessions {
            if let Ok(guard) = session.try_lock() {
                return guard;
            }
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        self.sessions[at].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Signer for TokenKey {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm.rcgen()
    }

    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        use aws_lc_rs::digest;
        let (hash, width) = match self.algorithm {
            CaKeyAlgorithm::P256 => (digest::digest(&digest::SHA256, message), 32),
            CaKeyAlgorithm::P384 => (digest::digest(&digest::SHA384, message), 48),
        };
        let raw = self
            .session()
            .sign(&Mechanism::Ecdsa, self.handle, hash.as_ref())
            .map_err(|e| {
                let gone = matches!(
                    rv(&e),
                    Some(
                        RvError::DeviceRemoved
                            | RvError::TokenNotPresent
                            | RvError::SessionHandleInvalid
                            | RvError::SessionClosed
                            | RvError::DeviceError
                            | RvError::ObjectHandleInvalid
                            | RvError::KeyHandleInvalid
                            | RvError::UserNotLoggedIn
                    )
                );
                if gone {
                    anyhow::anyhow!(
                        "PKCS#11 token {:?} ({}) cannot sign with key {:?}: {e}; is the token still present?",
                        self.token.label(),
                        self.token.module().display(),
                        self.label
                    )
                } else {
                    anyhow::anyhow!(
                        "PKCS#11 token {:?}: signing with key {:?} failed: {e}",
                        self.token.label(),
                        self.label
                    )
                }
            })?;
        anyhow::ensure!(
            raw.len() == 2 * width,
            "PKCS#11 token {:?}: key {:?} returned a {}-byte signature, not the {} bytes of r||s",
            self.token.label(),
            self.label,
            raw.len(),
            2 * width
        );
        Ok(ecdsa_der(&raw[..width], &raw[width..]))
    }
}

/// PKCS#11 ECDSA gives raw r||s; X.509 wants `SEQUENCE { INTEGER r, INTEGER s }`.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_bigint_bytes(r, true);
            writer.next().write_bigint_bytes(s, true);
        })
    })
}

/// The raw rate of the token: signatures of a SHA-256 hash with `key`'s
/// token through `threads` sessions (the yardstick `ca bench` compares with).
pub fn raw_sign_rate(key: &CaKey, count: usize, threads: usize) -> anyhow::Result<f64> {
    let message = [0x5au8; 400];
    let start = std::time::Instant::now();
    let per = count.div_ceil(threads.max(1));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    for _ in 0..per {
                        key.sign(&message)?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    Ok((per * threads.max(1)) as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn raw_signatures_become_der_integers() {
        let der = super::ecdsa_der(&[0x80, 1], &[0, 0, 5]);
        // r gets a leading zero (it would read negative), s loses its leading zeros.
        assert_eq!(
            der,
            vec![0x30, 0x08, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x01, 0x05]
        );
    }

    #[test]
    fn ec_points_come_out_of_their_octet_string() {
        let point = vec![4u8; 65];
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(super::unwrap_octet_string(wrapped, 65), point);
        let mut bare = vec![4u8, 63];
        bare.extend_from_slice(&[7u8; 63]);
        assert_eq!(super::unwrap_octet_string(bare.clone(), 65), bare);
    }
}
