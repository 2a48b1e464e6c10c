//! The station directory.
//!
//! ```text
//! DIR/station.toml     configuration (written last by init: its presence means "initialised")
//! DIR/credential.pem   the station's certificate chain and the root (its key is sealed)
//! DIR/root.pem         the CA root: what admin clients (--root) and lines trust
//! DIR/keys.json        the KDF parameters and the sealed credential key (0600)
//! DIR/stock.db         plans, packs (keys sealed), CA queue, users, audit log (SQLite)
//! DIR/plans/           drop folder watched by `station serve`
//! DIR/fetch.lock       held by whoever fetches, so two fetches never overlap
//! DIR/ca-crl.der       the CA's last verified CRL (see `crl.rs`)
//! ```
//!
//! The directory and its folders are the owner's only (0700), and so is
//! every file the station writes (0600).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::config::{ModelConfig, StationConfig};
use crate::pki::credential::Credential;
use crate::pki::pack::write_private_file;
use crate::pki::profile::Keygen;
use crate::pki::role::Role;
use crate::pki::seal::{self, KdfParams, Kek};
use crate::pki::{pem_blocks, to_pem};
use crate::store::stock::Stock;

pub const CONFIG_FILE: &str = "station.toml";
pub const CREDENTIAL_FILE: &str = "credential.pem";
pub const ROOT_FILE: &str = "root.pem";
pub const KEYS_FILE: &str = "keys.json";
pub const STOCK_FILE: &str = "stock.db";
pub const PLANS_DIR: &str = "plans";
pub const LOCK_FILE: &str = "fetch.lock";

const CREDENTIAL_AAD: &[u8] = b"certline station credential key";

#[derive(Serialize, Deserialize)]
struct SealedKeys {
    kdf: KdfParams,
    credential: String,
}

pub struct InitOptions {
    pub ca_url: String,
    pub credential: PathBuf,
    pub admin_user: String,
    pub models: Vec<String>,
    pub models_without_certificate: Vec<String>,
    /// Models (also in `models`) whose devices generate their own key.
    pub models_device_keygen: Vec<String>,
    pub retention: super::config::RetentionAction,
    pub chunk_size: Option<usize>,
    pub handout_timeout_secs: Option<u64>,
}

pub use crate::wire::station::InitReport;

/// Creates a station in `dir` (missing or empty), with its first administrator.
pub fn init(
    dir: &Path,
    options: &InitOptions,
    passphrase: &str,
    admin_password: &str,
) -> anyhow::Result<InitReport> {
    if dir.join(CONFIG_FILE).exists() {
        anyhow::bail!(
            "{} is already an initialised station (it has {CONFIG_FILE}); refusing to overwrite its stock",
            dir.display()
        );
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        anyhow::bail!(
            "{} is not empty; a station is created in a new or empty directory",
            dir.display()
        );
    }
    let credential = Credential::load(&options.credential)?;
    if credential.role() != Role::Station {
        anyhow::bail!(
            "{} is a {} credential ({}); a station needs one from `certline ca enroll --role station`",
            options.credential.display(),
            credential.role(),
            credential.name()
        );
    }
    super::login::check_new_user(&options.admin_user, admin_password)?;
    let mut config = StationConfig::new(credential.name(), &options.ca_url);
    if let Some(chunk) = options.chunk_size {
        config.chunk_size = chunk;
    }
    if let Some(timeout) = options.handout_timeout_secs {
        config.handout_timeout_secs = timeout;
    }
    config.retention.default = options.retention;
    for (list, certificate) in [
        (&options.models, true),
        (&options.models_without_certificate, false),
    ] {
        for model in list {
            if config.models.contains_key(model) {
                anyhow::bail!("model {model} is named twice");
            }
            config.models.insert(
                model.clone(),
                ModelConfig {
                    certificate,
                    profile: Default::default(),
                    keygen: Default::default(),
                },
            );
        }
    }
    for model in &options.models_device_keygen {
        match config.models.get_mut(model) {
            Some(m) if m.certificate => m.keygen = Keygen::Device,
            _ => anyhow::bail!(
                "--device-keygen-model {model}: name it with --model too (a model with a certificate)"
            ),
        }
    }
    config.validate().map_err(anyhow::Error::msg)?;

    std::fs::create_dir_all(dir.join(PLANS_DIR))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    owner_only_dir(dir)?;
    owner_only_dir(&dir.join(PLANS_DIR))?;
    let (kek, kdf) = Kek::create(passphrase)?;
    let mut chain_pem = String::new();
    for cert in credential
        .chain
        .iter()
        .chain(std::iter::once(&credential.root))
    {
        chain_pem.push_str(&to_pem("CERTIFICATE", cert));
    }
    write_private_file(&dir.join(CREDENTIAL_FILE), chain_pem.as_bytes())?;
    write_private_file(
        &dir.join(ROOT_FILE),
        to_pem("CERTIFICATE", &credential.root).as_bytes(),
    )?;
    let key_pem = credential.to_pem();
    let key = pem_blocks(&key_pem, "PRIVATE KEY")?
        .pop()
        .context("the credential has no key")?;
    let sealed = SealedKeys {
        kdf,
        credential: seal::encode(&kek.seal(&key, CREDENTIAL_AAD)),
    };
    write_private_file(
        &dir.join(KEYS_FILE),
        serde_json::to_string_pretty(&sealed)?.as_bytes(),
    )?;
    let mut stock = Stock::open(&dir.join(STOCK_FILE), true)?;
    let phc = super::login::hash_password(admin_password)?;
    stock.add_user(&options.admin_user, &phc, "station init")?;
    stock.audit(
        "station init",
        "init",
        &serde_json::json!({"station": config.name, "ca": config.ca_url, "models": config.models.keys().collect::<Vec<_>>()}),
    )?;
    // Written last: a directory with station.toml is a complete station.
    write_private_file(
        &dir.join(CONFIG_FILE),
        toml::to_string_pretty(&config)?.as_bytes(),
    )?;
    Ok(InitReport {
        dir: dir.to_path_buf(),
        name: config.name.clone(),
        ca_url: config.ca_url.clone(),
        admin_user: options.admin_user.clone(),
        models: options.models.clone(),
        models_without_certificate: options.models_without_certificate.clone(),
    })
}

pub fn read_config(dir: &Path) -> anyhow::Result<StationConfig> {
    if !dir.exists() {
        anyhow::bail!(
            "station directory {} does not exist; create one with `certline station init --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        anyhow::bail!(
            "{} is not an initialised station directory (no {CONFIG_FILE}); create one with `certline station init`",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: StationConfig =
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(config)
}

/// Unlocks the key-encryption key and the station credential. A wrong
/// passphrase stops here, before the stock is opened, so nothing is written.
pub fn unlock(dir: &Path, passphrase: &str) -> anyhow::Result<(Kek, Credential)> {
    let keys_path = dir.join(KEYS_FILE);
    let text = std::fs::read_to_string(&keys_path)
        .with_context(|| format!("cannot read {}", keys_path.display()))?;
    let sealed: SealedKeys = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged", keys_path.display()))?;
    let kek = Kek::unlock(passphrase, &sealed.kdf).with_context(|| {
        format!(
            "station {}: refusing to start; the stock was not touched",
            dir.display()
        )
    })?;
    let key = kek.open(
        &seal::decode(&sealed.credential, "the sealed credential key")?,
        CREDENTIAL_AAD,
        "the station credential key",
    )?;
    let chain_text = std::fs::read_to_string(dir.join(CREDENTIAL_FILE))
        .with_context(|| format!("cannot read {}", dir.join(CREDENTIAL_FILE).display()))?;
    let mut certs = pem_blocks(&chain_text, "CERTIFICATE")?;
    let root = certs.pop().context("credential.pem holds no root")?;
    let credential = Credential::new(certs, root, Zeroizing::new(key.to_vec()))?;
    Ok((kek, credential))
}

/// Sets a folder the station made to 0700.
fn owner_only_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {} to its owner", dir.display()))
}

pub fn open_stock(dir: &Path) -> anyhow::Result<Stock> {
    Stock::open(&dir.join(STOCK_FILE), false)
}

/// Holds `DIR/fetch.lock` while alive: two fetches (a `station fetch` and a
/// serving station's scheduled one) never run at once.
pub struct FetchLock {
    _file: std::fs::File,
}

pub fn lock_fetch(dir: &Path) -> anyhow::Result<FetchLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(FetchLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another fetch is running on {} (it holds {}); wait for it to finish",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
        }
    }
}
