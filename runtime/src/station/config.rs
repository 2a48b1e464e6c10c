//! The station's configuration (`DIR/station.toml`): which model codes carry a
//! certificate and with which profile, the retention policy, fetch and
//! hand-out timing, the working days, the admin login rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, UtcOffset};

use crate::pki::id::check_model;
use crate::pki::profile::{CertProfile, Keygen};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// The station's name (from its credential).
    pub name: String,
    /// The CA's URL.
    pub ca_url: String,
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Ids per batch request to the CA.
    #[serde(default = "default_chunk")]
    pub chunk_size: usize,
    /// Seconds a line has to report a result for a pack it took; after that the
    /// pack's certificate is revoked and replaced.
    #[serde(default = "default_handout_timeout")]
    pub handout_timeout_secs: u64,
    /// Local time (HH:MM) at which a serving station fetches the next working
    /// day(s); absent: fetch only on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_at: Option<String>,
    /// How many working days ahead a fetch without --day covers (besides today).
    #[serde(default = "default_days_ahead")]
    pub days_ahead: u32,
    /// Working days, as mon tue wed thu fri sat sun.
    #[serde(default = "default_working_days")]
    pub working_days: Vec<String>,
    /// The factory's offset from UTC ("+01:00"); defines the station's day.
    #[serde(default = "default_offset")]
    pub utc_offset: String,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// How many ids one plan file may hold (checked before any id is made).
    #[serde(default)]
    pub plan: PlanLimits,
    /// Model codes the factory builds. Every model in a plan must be listed.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Whether devices of this model get an identity certificate.
    #[serde(default = "yes")]
    pub certificate: bool,
    #[serde(default)]
    pub profile: CertProfile,
    /// Where the device's key is born: `ca` (a pack with the key, fetched
    /// ahead) or `device` (the device sends a CSR when it is on the line).
    #[serde(default)]
    pub keygen: Keygen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RetentionAction {
    /// Keep the pack, marked written with time and line.
    #[default]
    Flag,
    /// Wipe the key bytes (file and WAL); the certificate fingerprint stays in the audit log.
    Delete,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// What happens to a pack once written.
    #[serde(default)]
    pub default: RetentionAction,
    /// Per model code.
    #[serde(default)]
    pub models: BTreeMap<String, RetentionAction>,
    /// Flagged packs older than this many days are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_flagged_after_days: Option<u32>,
    /// A Lua retention policy (see scripts/README.md) that decides instead of
    /// the fields above; relative to the station folder; hot-reloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Failed logins in a row before the user is locked out.
    #[serde(default = "default_max_failures")]
    pub max_failures: i64,
    #[serde(default = "default_lockout")]
    pub lockout_secs: i64,
    #[serde(default = "default_session")]
    pub session_secs: i64,
    /// Failed logins from one peer address within `peer_window_secs` before
    /// that address is refused (whatever user it names).
    #[serde(default = "default_max_failures_per_peer")]
    pub max_failures_per_peer: u32,
    #[serde(default = "default_peer_window")]
    pub peer_window_secs: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Most device ids one plan file may hold, all days together.
    #[serde(default = "default_max_ids_per_plan")]
    pub max_ids_per_plan: u64,
    /// Most device ids one plan file may hold for one day.
    #[serde(default = "default_max_ids_per_day")]
    pub max_ids_per_day: u64,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_ids_per_plan: default_max_ids_per_plan(),
            max_ids_per_day: default_max_ids_per_day(),
        }
    }
}

fn default_max_ids_per_plan() -> u64 {
    200_000
}
fn default_max_ids_per_day() -> u64 {
    100_000
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            max_failures: default_max_failures(),
            lockout_secs: default_lockout(),
            session_secs: default_session(),
            max_failures_per_peer: default_max_failures_per_peer(),
            peer_window_secs: default_peer_window(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:8444".into()
}
fn default_chunk() -> usize {
    1000
}
fn default_handout_timeout() -> u64 {
    30 * 60
}
fn default_days_ahead() -> u32 {
    1
}
fn default_working_days() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri"]
        .into_iter()
        .map(String::from)
        .collect()
}
fn default_offset() -> String {
    "+00:00".into()
}
fn default_max_failures_per_peer() -> u32 {
    20
}
fn default_peer_window() -> i64 {
    60
}
fn default_max_failures() -> i64 {
    5
}
fn default_lockout() -> i64 {
    15 * 60
}
fn default_session() -> i64 {
    60 * 60
}

const WEEKDAYS: [(&str, time::Weekday); 7] = [
    ("mon", time::Weekday::Monday),
    ("tue", time::Weekday::Tuesday),
    ("wed", time::Weekday::Wednesday),
    ("thu", time::Weekday::Thursday),
    ("fri", time::Weekday::Friday),
    ("sat", time::Weekday::Saturday),
    ("sun", time::Weekday::Sunday),
];

pub use crate::day::{day_text, parse_day, DAY_FORMAT};

impl StationConfig {
    pub fn new(name: &str, ca_url: &str) -> StationConfig {
        StationConfig {
            name: name.to_string(),
            ca_url: ca_url.to_string(),
            listen: default_listen(),
            chunk_size: default_chunk(),
            handout_timeout_secs: default_handout_timeout(),
            fetch_at: None,
            days_ahead: default_days_ahead(),
            working_days: default_working_days(),
            utc_offset: default_offset(),
            retention: RetentionConfig::default(),
            admin: AdminConfig::default(),
            plan: PlanLimits::default(),
            models: BTreeMap::new(),
        }
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.ca_url.starts_with("https://") {
            return Err(format!("ca_url {:?} must start with https://", self.ca_url));
        }
        if self.plan.max_ids_per_plan == 0 || self.plan.max_ids_per_day == 0 {
            return Err("plan.max_ids_per_plan and plan.max_ids_per_day must be at least 1".into());
        }
        if self.chunk_size == 0 || self.chunk_size > 10_000 {
            return Err(format!(
                "chunk_size {} must be between 1 and 10000",
                self.chunk_size
            ));
        }
        if self.handout_timeout_secs == 0 {
            return Err("handout_timeout_secs must be at least 1".into());
        }
        if let Some(at) = &self.fetch_at {
            parse_clock(at).map_err(|e| format!("fetch_at: {e}"))?;
        }
        for day in &self.working_days {
            if !WEEKDAYS.iter().any(|(name, _)| name == day) {
                return Err(format!(
                    "working_days: {day:?} is not one of mon tue wed thu fri sat sun"
                ));
            }
        }
        if self.working_days.is_empty() {
            return Err("working_days must name at least one day".into());
        }
        self.offset().map_err(|e| format!("utc_offset: {e}"))?;
        for (model, config) in &self.models {
            check_model(model).map_err(|e| format!("models: {e}"))?;
            config
                .profile
                .resolve()
                .map_err(|e| format!("models.{model}.profile: {e}"))?;
        }
        for model in self.retention.models.keys() {
            check_model(model).map_err(|e| format!("retention.models: {e}"))?;
        }
        if self.admin.max_failures < 1 || self.admin.lockout_secs < 1 || self.admin.session_secs < 1
        {
            return Err(
                "admin: max_failures, lockout_secs and session_secs must be at least 1".into(),
            );
        }
        Ok(())
    }

    pub fn offset(&self) -> Result<UtcOffset, String> {
        let format =
            time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
        UtcOffset::parse(&self.utc_offset, format)
            .map_err(|e| format!("{:?} is not an offset like +01:00 ({e})", self.utc_offset))
    }

    fn offset_or_utc(&self) -> UtcOffset {
        self.offset().unwrap_or(UtcOffset::UTC)
    }

    /// The station's day now.
    pub fn today(&self) -> Date {
        OffsetDateTime::now_utc()
            .to_offset(self.offset_or_utc())
            .date()
    }

    /// [start, end) of a day in Unix seconds.
    pub fn day_bounds(&self, day: Date) -> (i64, i64) {
        let start = day.midnight().assume_offset(self.offset_or_utc());
        let start = start.unix_timestamp();
        (start, start + 24 * 3600)
    }

    pub fn is_working_day(&self, day: Date) -> bool {
        WEEKDAYS
            .iter()
            .any(|(name, wd)| *wd == day.weekday() && self.working_days.iter().any(|w| w == name))
    }

    /// The next `n` working days after `day`.
    pub fn next_working_days(&self, day: Date, n: u32) -> Vec<Date> {
        let mut out = Vec::new();
        let mut d = day;
        while out.len() < n as usize {
            d = match d.next_day() {
                Some(next) => next,
                None => break,
            };
            if self.is_working_day(d) {
                out.push(d);
            }
        }
        out
    }

    /// The model's configuration, if the station knows the model.
    pub fn model(&self, model: &str) -> Option<&ModelConfig> {
        self.models.get(model)
    }

    pub fn carries_certificate(&self, model: &str) -> bool {
        self.models.get(model).is_some_and(|m| m.certificate)
    }

    /// Where the keys of a model's devices are born (`ca` for an unknown model).
    pub fn keygen(&self, model: &str) -> Keygen {
        self.models.get(model).map(|m| m.keygen).unwrap_or_default()
    }

    /// Minutes after midnight for the scheduled fetch.
    pub fn fetch_minute(&self) -> Option<u32> {
        self.fetch_at.as_deref().and_then(|t| parse_clock(t).ok())
    }
}

fn parse_clock(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time of day as HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_days_skip_the_weekend() {
        let config = StationConfig::new("s", "https://127.0.0.1:1");
        let friday = parse_day("2030-01-18").unwrap();
        assert_eq!(friday.weekday(), time::Weekday::Friday);
        let next = config.next_working_days(friday, 2);
        assert_eq!(
            next.iter().map(|d| day_text(*d)).collect::<Vec<_>>(),
            ["2030-01-21", "2030-01-22"]
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = StationConfig::new("s", "https://127.0.0.1:1");
        config.utc_offset = "nine".into();
        assert!(config.validate().unwrap_err().starts_with("utc_offset"));
        let mut config = StationConfig::new("s", "https://127.0.0.1:1");
        config.fetch_at = Some("25:00".into());
        assert!(config.validate().unwrap_err().starts_with("fetch_at"));
        let mut config = StationConfig::new("s", "https://127.0.0.1:1");
        config.models.insert(
            "bad model".into(),
            ModelConfig {
                certificate: true,
                profile: Default::default(),
                keygen: Default::default(),
            },
        );
        assert!(config.validate().unwrap_err().starts_with("models"));
    }
}
