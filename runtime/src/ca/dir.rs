//! The CA directory: configuration, certificates, sealed keys, ledger.
//!
//! ```text
//! DIR/ca.toml      configuration (written last by init: its presence means "initialised")
//! DIR/root.pem     root CA certificate
//! DIR/issuing.pem  issuing CA certificate
//! DIR/tls.pem      the CA server's own certificate chain (its key is sealed)
//! DIR/keys.json    the TLS key and (sealed key store) the root and issuing
//!                  keys, sealed under the KEK (0600); with a PKCS#11 key
//!                  store the root and issuing keys are in the token, and
//!                  ca.toml's [keystore] names it and their labels
//! DIR/ledger.db    issuance ledger and audit log (SQLite; or `[ledger] url` in
//!                  ca.toml names a PostgreSQL database shared by several CAs)
//! ```

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::config::{CaConfig, LedgerConfig};
use super::issuance::{CertAuthority, Clock, Requester};
use crate::pki::authority::Authority;
use crate::pki::credential::Credential;
use crate::pki::keystore::pkcs11::Token;
use crate::pki::keystore::{self, CaKey, CaKeyAlgorithm, KeyStoreConfig};
use crate::pki::pack::write_private_file;
use crate::pki::role::Role;
use crate::pki::seal::{self, KdfParams, Kek};
use crate::pki::{pem_blocks, to_pem};
use crate::store::ledger::Ledger;
use crate::wire::ca::InitReport;

pub const CONFIG_FILE: &str = "ca.toml";
pub const ROOT_FILE: &str = "root.pem";
pub const ISSUING_FILE: &str = "issuing.pem";
pub const TLS_FILE: &str = "tls.pem";
pub const KEYS_FILE: &str = "keys.json";
pub use super::config::LEDGER_FILE;

/// Makes the CA directory the CA user's alone (0700).
fn keep_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct SealedKeys {
    kdf: KdfParams,
    /// The root and issuing keys, with the sealed key store only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuing: Option<String>,
    tls: String,
}

/// The labels `ca init --pkcs11-module` gives the CA's keys in the token.
pub const ROOT_KEY_LABEL: &str = "certline-root";
pub const ISSUING_KEY_LABEL: &str = "certline-issuing";

/// Signing sessions per token key: one per core, so a batch signs on every core.
pub fn signing_sessions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(2)
}

/// Where `ca init` makes the CA's keys.
pub enum NewKeys {
    /// In software, sealed into keys.json.
    Sealed,
    /// In a PKCS#11 token, logged in with the PIN.
    Pkcs11 {
        module: std::path::PathBuf,
        token: String,
        pin: Zeroizing<String>,
    },
}

pub struct InitOptions {
    pub organization: String,
    pub pen: u32,
    pub hosts: Vec<String>,
    pub max_batch: usize,
    /// A PostgreSQL ledger instead of `DIR/ledger.db`.
    pub ledger: Option<LedgerConfig>,
    /// `crl_url` and `ca_issuers_url` of ca.toml (checked here).
    pub crl_url: Option<String>,
    pub ca_issuers_url: Option<String>,
    pub keys: NewKeys,
}

/// Creates a CA in `dir` (which must be missing or empty).
pub fn init(
    dir: &Path,
    options: &InitOptions,
    passphrase: &str,
    clock: Clock,
) -> anyhow::Result<InitReport> {
    if dir.join(CONFIG_FILE).exists() {
        anyhow::bail!(
            "{} is already an initialised CA (it has {CONFIG_FILE}); refusing to overwrite its keys",
            dir.display()
        );
    }
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if entries.next().is_some() {
            anyhow::bail!(
                "{} is not empty; a CA is created in a new or empty directory",
                dir.display()
            );
        }
    }
    if options.organization.trim().is_empty() {
        anyhow::bail!("--org must not be empty");
    }
    if options.max_batch == 0 {
        anyhow::bail!("--max-batch must be at least 1");
    }
    let mut config = CaConfig::new(&options.organization, options.pen, options.max_batch);
    config.crl_url = options.crl_url.clone();
    config.ca_issuers_url = options.ca_issuers_url.clone();
    config.ledger = options.ledger.clone();
    config.check(clock.now()).map_err(anyhow::Error::msg)?;
    // A token that is missing or refuses the PIN stops init before anything is written.
    let token = match &options.keys {
        NewKeys::Sealed => None,
        NewKeys::Pkcs11 { module, token, pin } => Some(Token::open(module, token, pin)?),
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // An existing empty folder keeps its mode otherwise.
    keep_private(dir)?;

    let (kek, kdf) = Kek::create(passphrase)?;
    let (root_key, issuing_key, sealed_ca_keys) = match (&options.keys, token) {
        (NewKeys::Sealed, _) | (_, None) => {
            let (root, root_pkcs8) = keystore::file::generate(CaKeyAlgorithm::P384)?;
            let (issuing, issuing_pkcs8) = keystore::file::generate(CaKeyAlgorithm::P256)?;
            let sealed = (
                seal::encode(&kek.seal(&root_pkcs8, b"root")),
                seal::encode(&kek.seal(&issuing_pkcs8, b"issuing")),
            );
            (root, issuing, Some(sealed))
        }
        (NewKeys::Pkcs11 { module, .. }, Some(token)) => {
            let root = token.generate(ROOT_KEY_LABEL, CaKeyAlgorithm::P384, 1)?;
            let issuing =
                token.generate(ISSUING_KEY_LABEL, CaKeyAlgorithm::P256, signing_sessions())?;
            config.keystore = KeyStoreConfig::Pkcs11 {
                module: module.clone(),
                token: token.label().to_string(),
                root_label: ROOT_KEY_LABEL.into(),
                issuing_label: ISSUING_KEY_LABEL.into(),
            };
            (root, issuing, None)
        }
    };
    let authority = Authority::create(
        &options.organization,
        options.pen,
        &config.root_urls(),
        root_key,
        issuing_key,
        clock.now(),
    )?;
    let mut ledger = Ledger::open(&config.ledger_location(dir)?, true)?;
    ledger.bind_root(&crate::pki::fingerprint(authority.root_der()))?;
    std::fs::write(dir.join(ROOT_FILE), authority.root_pem())?;
    std::fs::write(dir.join(ISSUING_FILE), authority.issuing_pem())?;
    let mut ca = CertAuthority::new(authority, ledger, config.clone(), clock);

    // The CA's own HTTPS server credential, recorded in its ledger like any other.
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    hosts.extend(options.hosts.iter().cloned());
    let tls = ca.enroll(Role::Ca, "ca", &hosts, &Requester::operator("ca init"))?;
    let mut tls_pem = String::new();
    for cert in &tls.chain {
        tls_pem.push_str(&to_pem("CERTIFICATE", cert));
    }
    std::fs::write(dir.join(TLS_FILE), tls_pem)?;
    let tls_key = credential_key(&tls)?;
    let (root, issuing) = sealed_ca_keys.unzip();
    let sealed = SealedKeys {
        root,
        issuing,
        tls: seal::encode(&kek.seal(&tls_key, b"tls")),
        kdf,
    };
    write_private_file(
        &dir.join(KEYS_FILE),
        serde_json::to_string_pretty(&sealed)?.as_bytes(),
    )?;
    ca.publish_crls()?;
    // Written last: a directory with ca.toml is a complete CA.
    std::fs::write(dir.join(CONFIG_FILE), toml::to_string_pretty(&config)?)?;
    Ok(InitReport {
        dir: dir.to_path_buf(),
        organization: config.organization,
        pen: config.pen,
        root_fingerprint: crate::pki::fingerprint(ca.pki().root_der()),
        issuing_fingerprint: crate::pki::fingerprint(ca.pki().issuing_der()),
        listen: config.listen,
    })
}

fn credential_key(cred: &Credential) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let pem = cred.to_pem();
    let mut keys = pem_blocks(&pem, "PRIVATE KEY")?;
    Ok(Zeroizing::new(
        keys.pop().context("credential without key")?,
    ))
}

/// An opened CA: its authority (keys unsealed in memory), ledger and TLS credential.
pub struct OpenCa {
    pub ca: CertAuthority,
    pub tls: Credential,
}

/// The configuration of an initialised CA directory, checked at `clock`'s now.
pub fn read_config(dir: &Path, clock: &Clock) -> anyhow::Result<CaConfig> {
    check_initialised(dir)?;
    CaConfig::load(&dir.join(CONFIG_FILE), clock.now())
}

/// Refuses a directory that is missing or holds no initialised CA, saying how to make one.
pub fn check_initialised(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        anyhow::bail!(
            "CA directory {} does not exist; create one with `certline ca init --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        anyhow::bail!(
            "{} is not an initialised CA directory (no {CONFIG_FILE}); create one with `certline ca init`",
            dir.display()
        );
    }
    Ok(())
}

/// Opens a CA directory: unseals the keys (or opens the token, with the PIN
/// from `pin_file` or the environment), revokes reservations a crash left
/// (reserve without commit) and republishes the CRLs if they miss any
/// committed revocation (a crash before publishing).
pub fn open(
    dir: &Path,
    passphrase: &str,
    pin_file: Option<&Path>,
    clock: Clock,
) -> anyhow::Result<OpenCa> {
    let config = read_config(dir, &clock)?;
    keep_private(dir)?;
    let keys_text = std::fs::read_to_string(dir.join(KEYS_FILE))
        .with_context(|| format!("cannot read {}", dir.join(KEYS_FILE).display()))?;
    let sealed: SealedKeys = serde_json::from_str(&keys_text).context("keys.json is damaged")?;
    let kek = Kek::unlock(passphrase, &sealed.kdf)?;
    let open = |text: &str, name: &str| -> anyhow::Result<Zeroizing<Vec<u8>>> {
        Ok(kek.open(&seal::decode(text, name)?, name.as_bytes(), name)?)
    };
    let (root_key, issuing_key) = match &config.keystore {
        KeyStoreConfig::Sealed => {
            let sealed_key = |text: &Option<String>, name: &str| -> anyhow::Result<CaKey> {
                let text = text.as_deref().with_context(|| {
                    format!("keys.json holds no {name} key, and ca.toml names no other key store")
                })?;
                keystore::file::from_pkcs8(&open(text, name)?)
            };
            (
                sealed_key(&sealed.root, "root")?,
                sealed_key(&sealed.issuing, "issuing")?,
            )
        }
        KeyStoreConfig::Pkcs11 {
            module,
            token,
            root_label,
            issuing_label,
        } => {
            let pin = keystore::pkcs11::read_pin(pin_file)?;
            let token = Token::open(module, token, &pin)?;
            (
                token.key(root_label, CaKeyAlgorithm::P384, 1)?,
                token.key(issuing_label, CaKeyAlgorithm::P256, signing_sessions())?,
            )
        }
    };
    let read_cert = |file: &str| -> anyhow::Result<Vec<u8>> {
        let text = std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("cannot read {file}"))?;
        pem_blocks(&text, "CERTIFICATE")?
            .into_iter()
            .next()
            .with_context(|| format!("{file} holds no certificate"))
    };
    let root_der = read_cert(ROOT_FILE)?;
    let root_fingerprint = crate::pki::fingerprint(&root_der);
    let issuing_der = read_cert(ISSUING_FILE)?;
    let authority = Authority::load(
        &config.organization,
        config.pen,
        root_der.clone(),
        issuing_der,
        root_key,
        issuing_key,
    )?;
    let tls_chain = pem_blocks(&std::fs::read_to_string(dir.join(TLS_FILE))?, "CERTIFICATE")?;
    let tls = Credential::new(tls_chain, root_der, open(&sealed.tls, "tls")?)?;
    let mut ledger = Ledger::open(&config.ledger_location(dir)?, false)?;
    ledger.bind_root(&root_fingerprint)?;
    let abandoned =
        ledger.abandon_orphans("reserved before a crash and never delivered", clock.now())?;
    let mut ca = CertAuthority::new(authority, ledger, config, clock);
    if abandoned > 0 {
        tracing::warn!(
            "revoked {abandoned} certificate(s) reserved before a crash and never delivered"
        );
    }
    // Every committed revocation (those just made included) must be on the
    // very next CRL anyone fetches.
    if ca.publish_if_behind()? {
        tracing::warn!("published fresh CRLs: the last ones missed a committed revocation");
    }
    Ok(OpenCa { ca, tls })
}

/// The ledger of an initialised CA directory, opened without unsealing
/// anything (for reading: status, audit).
pub fn open_ledger(dir: &Path) -> anyhow::Result<Ledger> {
    let config = read_config(dir, &Clock::system())?;
    let mut ledger = Ledger::open(&config.ledger_location(dir)?, false)?;
    if ledger.is_shared() {
        ledger.bind_root(&crate::pki::fingerprint(&root_der(dir)?))?;
    }
    Ok(ledger)
}

/// The root certificate of a CA directory, without unsealing anything.
pub fn root_der(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(dir.join(ROOT_FILE))
        .with_context(|| format!("cannot read {}", dir.join(ROOT_FILE).display()))?;
    pem_blocks(&text, "CERTIFICATE")?
        .into_iter()
        .next()
        .context("root.pem holds no certificate")
}
