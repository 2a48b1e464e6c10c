//! The CA's configuration (`DIR/ca.toml`): who the vendor is, how big a batch
//! may be, how long a CRL lives, and the certificate profile of each model.
//! Read and checked here, used by issuance and by the directory code alike.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pki::profile::CertProfile;

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
    /// The EST front door (`/.well-known/est/`, see `est.rs`); written only
    /// when it differs from the default.
    #[serde(default, skip_serializing_if = "EstConfig::is_default")]
    pub est: EstConfig,
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
            crl_max_delay: default_crl_max_delay(),
            default_profile: CertProfile::default(),
            models: BTreeMap::new(),
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

    /// At most how long a committed revocation waits for its CRL.
    pub fn crl_max_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.crl_max_delay.clamp(0.0, 86_400.0))
    }

    /// How long a published CRL is valid.
    pub fn crl_validity(&self) -> time::Duration {
        time::Duration::hours(i64::from(self.crl_validity_hours.max(1)))
    }
}
