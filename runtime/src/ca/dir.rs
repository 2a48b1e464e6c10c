//! The CA directory: configuration, certificates, sealed keys, ledger.
//!
//! ```text
//! DIR/ca.toml      configuration (written last by init: its presence means "initialised")
//! DIR/root.pem     root CA certificate
//! DIR/issuing.pem  issuing CA certificate
//! DIR/tls.pem      the CA server's own certificate chain (its key is sealed)
//! DIR/keys.json    the root, issuing and TLS keys, sealed under the KEK (0600)
//! DIR/ledger.db    issuance ledger and audit log (SQLite)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::authority::CertAuthority;
use crate::pki::authority::{Authority, CaKeys};
use crate::pki::credential::Credential;
use crate::pki::pack::write_private_file;
use crate::pki::profile::CertProfile;
use crate::pki::role::Role;
use crate::pki::seal::{self, KdfParams, Kek};
use crate::pki::{pem_blocks, to_pem};
use crate::store::ledger::Ledger;

pub const CONFIG_FILE: &str = "ca.toml";
pub const ROOT_FILE: &str = "root.pem";
pub const ISSUING_FILE: &str = "issuing.pem";
pub const TLS_FILE: &str = "tls.pem";
pub const KEYS_FILE: &str = "keys.json";
pub const LEDGER_FILE: &str = "ledger.db";

/// The documentation enterprise number (RFC 5612), the default PEN.
pub const DEFAULT_PEN: u32 = 32473;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    pub organization: String,
    pub pen: u32,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// How long a published CRL is valid (nextUpdate - thisUpdate).
    #[serde(default = "default_crl_hours")]
    pub crl_validity_hours: u32,
    /// Profile for models that neither the request nor `models` names.
    #[serde(default)]
    pub default_profile: CertProfile,
    /// Per model code profiles.
    #[serde(default)]
    pub models: BTreeMap<String, CertProfile>,
}

fn default_max_batch() -> usize {
    10_000
}
fn default_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_crl_hours() -> u32 {
    24 * 7
}

#[derive(Serialize, Deserialize)]
struct SealedKeys {
    kdf: KdfParams,
    root: String,
    issuing: String,
    tls: String,
}

pub struct InitOptions {
    pub organization: String,
    pub pen: u32,
    pub hosts: Vec<String>,
    pub max_batch: usize,
}

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub dir: PathBuf,
    pub organization: String,
    pub pen: u32,
    pub root_fingerprint: String,
    pub issuing_fingerprint: String,
    pub listen: String,
}

/// Creates a CA in `dir` (which must be missing or empty).
pub fn init(dir: &Path, options: &InitOptions, passphrase: &str) -> anyhow::Result<InitReport> {
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
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let (kek, kdf) = Kek::create(passphrase)?;
    let (authority, keys) = Authority::create(&options.organization, options.pen)?;
    let config = CaConfig {
        organization: options.organization.clone(),
        pen: options.pen,
        max_batch: options.max_batch,
        listen: default_listen(),
        crl_validity_hours: default_crl_hours(),
        default_profile: CertProfile::default(),
        models: BTreeMap::new(),
    };
    std::fs::write(dir.join(ROOT_FILE), authority.root_pem())?;
    std::fs::write(dir.join(ISSUING_FILE), authority.issuing_pem())?;
    let ledger = Ledger::open(&dir.join(LEDGER_FILE), true)?;
    let mut ca = CertAuthority::new(authority, ledger, config.clone());

    // The CA's own HTTPS server credential, recorded in its ledger like any other.
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    hosts.extend(options.hosts.iter().cloned());
    let tls = ca.enroll(Role::Ca, "ca", &hosts, "ca init")?;
    let mut tls_pem = String::new();
    for cert in &tls.chain {
        tls_pem.push_str(&to_pem("CERTIFICATE", cert));
    }
    std::fs::write(dir.join(TLS_FILE), tls_pem)?;
    let tls_key = credential_key(&tls)?;
    let sealed = SealedKeys {
        root: seal::encode(&kek.seal(&keys.root, b"root")),
        issuing: seal::encode(&kek.seal(&keys.issuing, b"issuing")),
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

pub fn read_config(dir: &Path) -> anyhow::Result<CaConfig> {
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
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let config: CaConfig =
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    for (model, profile) in std::iter::once(("default_profile", &config.default_profile))
        .chain(config.models.iter().map(|(m, p)| (m.as_str(), p)))
    {
        profile
            .resolve()
            .map_err(|e| anyhow::anyhow!("{}: profile {model}: {e}", path.display()))?;
    }
    Ok(config)
}

pub fn open(dir: &Path, passphrase: &str) -> anyhow::Result<OpenCa> {
    let config = read_config(dir)?;
    let keys_text = std::fs::read_to_string(dir.join(KEYS_FILE))
        .with_context(|| format!("cannot read {}", dir.join(KEYS_FILE).display()))?;
    let sealed: SealedKeys = serde_json::from_str(&keys_text).context("keys.json is damaged")?;
    let kek = Kek::unlock(passphrase, &sealed.kdf)?;
    let open = |text: &str, name: &str| -> anyhow::Result<Zeroizing<Vec<u8>>> {
        Ok(kek.open(&seal::decode(text, name)?, name.as_bytes(), name)?)
    };
    let keys = CaKeys {
        root: open(&sealed.root, "root")?,
        issuing: open(&sealed.issuing, "issuing")?,
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
    let issuing_der = read_cert(ISSUING_FILE)?;
    let authority = Authority::load(
        &config.organization,
        config.pen,
        root_der.clone(),
        issuing_der,
        &keys,
    )?;
    let tls_chain = pem_blocks(&std::fs::read_to_string(dir.join(TLS_FILE))?, "CERTIFICATE")?;
    let tls = Credential::new(tls_chain, root_der, open(&sealed.tls, "tls")?)?;
    let mut ledger = Ledger::open(&dir.join(LEDGER_FILE), false)?;
    let abandoned = ledger.abandon_reserved(None, "reserved before a crash and never delivered")?;
    let mut ca = CertAuthority::new(authority, ledger, config);
    if abandoned > 0 {
        tracing::warn!(
            "revoked {abandoned} certificate(s) reserved before a crash and never delivered"
        );
        // Their serials must be on the very next CRL anyone fetches.
        ca.publish_crls()?;
    }
    Ok(OpenCa { ca, tls })
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
