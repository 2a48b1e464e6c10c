//! The CA's configuration (`DIR/ca.toml`): who the vendor is, how big a batch
//! may be, how long a CRL lives, and the certificate profile of each model.
//! Read and checked here, used by issuance and by the directory code alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use zeroize::Zeroizing;

use crate::pki::keystore::KeyStoreConfig;
use crate::pki::profile::CertProfile;
use crate::pki::urls::{self, IssuerUrls};
use crate::store::ledger::Location;
use crate::store::pg;

/// The SQLite ledger's file in the CA directory (the default ledger).
pub const LEDGER_FILE: &str = "ledger.db";
/// The file name of the root's CRL, published beside `crl_url`.
pub const ROOT_CRL_FILE: &str = "root.crl";
/// The file name of the root's certificate, published beside `ca_issuers_url`.
pub const ROOT_CERT_FILE: &str = "root.crt";

/// What the public listener publishes at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    IssuingCrl,
    RootCrl,
    IssuingCert,
    RootCert,
}

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
    /// The public URL of the issuing CA's CRL, exactly as device certificates
    /// and service credentials carry it (CRL Distribution Point). The root's
    /// CRL is published beside it as `root.crl` (the issuing CA's certificate
    /// names that one). Served by `ca serve --public-listen` at its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_url: Option<String>,
    /// The public URL of the issuing CA's certificate (DER), exactly as
    /// certificates carry it (Authority Information Access, caIssuers). The
    /// root's certificate is published beside it as `root.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_issuers_url: Option<String>,
    /// Where the root and issuing keys are: sealed files (the default) or a PKCS#11 token.
    #[serde(default, skip_serializing_if = "KeyStoreConfig::is_sealed")]
    pub keystore: KeyStoreConfig,
    /// At most how long (seconds) a committed revocation waits for the CRL
    /// that lists it: the publisher signs at most once per this delay, and
    /// no request ever waits for it (`ca crl --now` publishes at once).
    #[serde(default = "default_crl_max_delay")]
    pub crl_max_delay: f64,
    /// Profile for models that neither the request nor `models` names.
    #[serde(default)]
    pub default_profile: CertProfile,
    /// Per model code profiles.
    #[serde(default)]
    pub models: BTreeMap<String, CertProfile>,
    /// Where the ledger lives when it is not the directory's `ledger.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerConfig>,
    /// The EST front door (`/.well-known/est/`, see `est.rs`); written only
    /// when it differs from the default.
    #[serde(default, skip_serializing_if = "EstConfig::is_default")]
    pub est: EstConfig,
}

/// `[ledger]`: a PostgreSQL ledger shared by several CA processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `postgres://user@host:port/database` (no password in it).
    pub url: String,
    /// A file holding the database password (else `CERTLINE_LEDGER_PASSWORD`);
    /// a relative path is taken from the CA directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// How long a CA process that stopped renewing keeps its reservations
    /// from its peers (seconds).
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u32,
}

fn default_lease_seconds() -> u32 {
    30
}

impl LedgerConfig {
    pub fn new(url: &str, password_file: Option<PathBuf>) -> LedgerConfig {
        LedgerConfig {
            url: url.to_string(),
            password_file,
            lease_seconds: default_lease_seconds(),
        }
    }

    /// Where the ledger is, with its password from the file or the environment.
    pub fn location(&self, dir: &Path) -> anyhow::Result<Location> {
        let password = match &self.password_file {
            Some(file) => {
                let file = dir.join(file);
                let text = std::fs::read_to_string(&file).with_context(|| {
                    format!("cannot read the ledger password file {}", file.display())
                })?;
                Some(Zeroizing::new(
                    text.trim_end_matches(['\r', '\n']).to_string(),
                ))
            }
            None => std::env::var(pg::PASSWORD_ENV).ok().map(Zeroizing::new),
        };
        Ok(Location::Postgres {
            target: Box::new(pg::Target::parse(&self.url, password)?),
            lease: std::time::Duration::from_secs(u64::from(self.lease_seconds.max(3))),
        })
    }
}

/// `[est]` in `ca.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstConfig {
    /// Whether `cacerts` and `csrattrs` answer a client without a certificate
    /// (RFC 7030 §4.1.1 allows it; off unless the operator says so).
    #[serde(default)]
    pub public: bool,
}

impl EstConfig {
    fn is_default(&self) -> bool {
        !self.public
    }
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
fn default_crl_max_delay() -> f64 {
    1.0
}

impl CaConfig {
    /// A fresh configuration with the defaults for everything not given.
    pub fn new(organization: &str, pen: u32, max_batch: usize) -> CaConfig {
        CaConfig {
            organization: organization.to_string(),
            pen,
            max_batch,
            listen: default_listen(),
            crl_validity_hours: default_crl_hours(),
            crl_url: None,
            ca_issuers_url: None,
            keystore: KeyStoreConfig::Sealed,
            crl_max_delay: default_crl_max_delay(),
            default_profile: CertProfile::default(),
            models: BTreeMap::new(),
            ledger: None,
            est: EstConfig::default(),
        }
    }

    /// Reads and checks `path`; errors name the file and, for a profile, the model.
    pub fn load(path: &Path, now: OffsetDateTime) -> anyhow::Result<CaConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: CaConfig =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        config
            .check(now)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Every profile must resolve and sign a certificate that is valid at
    /// `now` (a `not_after` in the past is refused here, not at signing time).
    pub fn check(&self, now: OffsetDateTime) -> Result<(), String> {
        let mut paths: Vec<(&str, String)> = Vec::new();
        for (key, url, root_file) in [
            ("crl_url", &self.crl_url, ROOT_CRL_FILE),
            ("ca_issuers_url", &self.ca_issuers_url, ROOT_CERT_FILE),
        ] {
            let Some(url) = url else { continue };
            urls::check_url(key, url)?;
            if urls::sibling(url, root_file) == *url {
                return Err(format!(
                    "{key} {url:?} ends in {root_file}, the name the root's copy is published under beside it; name the issuing CA's file otherwise"
                ));
            }
            paths.push((key, urls::path_of(url)));
            paths.push((key, urls::path_of(&urls::sibling(url, root_file))));
        }
        for (index, (key, path)) in paths.iter().enumerate() {
            if let Some((other, _)) = paths[index + 1..].iter().find(|(_, p)| p == path) {
                return Err(format!(
                    "{key} and {other} are published at the same path {path}; give them different file names"
                ));
            }
        }
        if !(0.0..=86_400.0).contains(&self.crl_max_delay) {
            return Err(format!(
                "crl_max_delay = {}: give the seconds a revocation may wait for its CRL, from 0 to 86400",
                self.crl_max_delay
            ));
        }
        for (model, profile) in std::iter::once(("default_profile", &self.default_profile))
            .chain(self.models.iter().map(|(m, p)| (m.as_str(), p)))
        {
            profile
                .resolve()
                .and_then(|resolved| resolved.check_lifetime(now))
                .map_err(|e| format!("profile {model}: {e}"))?;
        }
        Ok(())
    }

    /// The configured profile of a model (or the default profile).
    pub fn profile(&self, model: &str) -> &CertProfile {
        self.models.get(model).unwrap_or(&self.default_profile)
    }

    /// Where the ledger of the CA in `dir` lives: `[ledger]`, or `DIR/ledger.db`.
    pub fn ledger_location(&self, dir: &Path) -> anyhow::Result<Location> {
        match &self.ledger {
            Some(ledger) => ledger.location(dir),
            None => Ok(Location::Sqlite(dir.join(LEDGER_FILE))),
        }
    }

    /// What certificates signed by the issuing CA name as their issuer's CRL and certificate.
    pub fn issued_urls(&self) -> IssuerUrls {
        IssuerUrls {
            crl: self.crl_url.clone(),
            ca_issuers: self.ca_issuers_url.clone(),
        }
    }

    /// What the issuing CA's certificate names: the root's CRL and certificate,
    /// published beside the issuing CA's.
    pub fn root_urls(&self) -> IssuerUrls {
        IssuerUrls {
            crl: self
                .crl_url
                .as_ref()
                .map(|u| urls::sibling(u, ROOT_CRL_FILE)),
            ca_issuers: self
                .ca_issuers_url
                .as_ref()
                .map(|u| urls::sibling(u, ROOT_CERT_FILE)),
        }
    }

    /// What the public listener serves, by path: each configured URL and its root sibling.
    pub fn public_paths(&self) -> Vec<(String, Published)> {
        let issued = self.issued_urls();
        let root = self.root_urls();
        [
            (issued.crl, Published::IssuingCrl),
            (root.crl, Published::RootCrl),
            (issued.ca_issuers, Published::IssuingCert),
            (root.ca_issuers, Published::RootCert),
        ]
        .into_iter()
        .filter_map(|(url, what)| url.map(|u| (urls::path_of(&u), what)))
        .collect()
    }

    /// At most how long a committed revocation waits for its CRL.
    pub fn crl_max_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.crl_max_delay.clamp(0.0, 86_400.0))
    }

    /// How long a published CRL is valid.
    pub fn crl_validity(&self) -> time::Duration {
        time::Duration::hours(i64::from(self.crl_validity_hours.max(1)))
    }
}
