//! The CA's configuration (`DIR/ca.toml`): who the vendor is, how big a batch
//! may be, how long a CRL lives, and the certificate profile of each model.
//! Read and checked here, used by issuance and by the directory code alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use zeroize::Zeroizing;

use crate::pki::profile::CertProfile;
use crate::store::ledger::Location;
use crate::store::pg;

/// The SQLite ledger's file in the CA directory (the default ledger).
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
    /// Where the ledger lives when it is not the directory's `ledger.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerConfig>,
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
            target: pg::Target::parse(&self.url, password)?,
            lease: std::time::Duration::from_secs(u64::from(self.lease_seconds.max(3))),
        })
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

impl CaConfig {
    /// A fresh configuration with the defaults for everything not given.
    pub fn new(organization: &str, pen: u32, max_batch: usize) -> CaConfig {
        CaConfig {
            organization: organization.to_string(),
            pen,
            max_batch,
            listen: default_listen(),
            crl_validity_hours: default_crl_hours(),
            default_profile: CertProfile::default(),
            models: BTreeMap::new(),
            ledger: None,
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

    /// How long a published CRL is valid.
    pub fn crl_validity(&self) -> time::Duration {
        time::Duration::hours(i64::from(self.crl_validity_hours.max(1)))
    }
}
