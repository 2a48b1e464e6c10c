//! Retention: what becomes of a pack once its certificate is written into the
//! device. One replaceable piece behind [`RetentionPolicy`]: the built-in
//! policy reads the station configuration; a scripted (Lua) policy can take
//! its place without the station changing.

use super::config::{RetentionAction, RetentionConfig};
use crate::script::retention::{PackFacts, RetentionScript, Verdict};
use crate::script::{Limits, ScriptFile};

/// What the policy sees of a written pack.
#[derive(Debug, Clone)]
pub struct WrittenPack<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub serial: &'a str,
    /// The line that wrote it.
    pub line: &'a str,
    /// Unix seconds.
    pub written_at: i64,
    /// Seconds since it was written.
    pub age_secs: i64,
    /// True when the pack is already flagged (the periodic age check).
    pub flagged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep the pack, marked written with time and line.
    Flag,
    /// Wipe the key bytes from the database file and its WAL.
    Delete,
    /// Leave it as it is (for a flagged pack: not old enough yet).
    Keep,
}

pub trait RetentionPolicy: Send + Sync {
    /// A short name for the audit log and reports.
    fn name(&self) -> String;
    /// Decides for one pack. An error leaves the pack as it is; the station
    /// retries later and logs the error.
    fn decide(&self, pack: &WrittenPack<'_>) -> anyhow::Result<Decision>;
}

/// The policy from `[retention]` in station.toml: flag or delete per model,
/// and optionally delete flagged packs after some days.
pub struct BuiltinPolicy {
    config: RetentionConfig,
}

impl BuiltinPolicy {
    pub fn new(config: RetentionConfig) -> BuiltinPolicy {
        BuiltinPolicy { config }
    }
}

impl RetentionPolicy for BuiltinPolicy {
    fn name(&self) -> String {
        "built-in (station.toml [retention])".into()
    }

    fn decide(&self, pack: &WrittenPack<'_>) -> anyhow::Result<Decision> {
        let action = self
            .config
            .models
            .get(pack.model)
            .copied()
            .unwrap_or(self.config.default);
        if pack.flagged {
            return Ok(match self.config.delete_flagged_after_days {
                Some(days) if pack.age_secs >= i64::from(days) * 24 * 3600 => Decision::Delete,
                _ if action == RetentionAction::Delete => Decision::Delete,
                _ => Decision::Keep,
            });
        }
        Ok(match action {
            RetentionAction::Flag => Decision::Flag,
            RetentionAction::Delete => Decision::Delete,
        })
    }
}

/// The policy from a Lua script (`[retention] script` in station.toml),
/// reloaded when the file changes; an edit that does not load keeps the
/// previous version deciding.
pub struct ScriptedPolicy {
    file: std::sync::Arc<ScriptFile<RetentionScript>>,
}

impl ScriptedPolicy {
    /// Loads the script (refusing to start with one that does not load) and
    /// watches it.
    pub fn open(
        path: &std::path::Path,
        config: &super::config::StationConfig,
    ) -> anyhow::Result<Self> {
        let models = serde_json::to_value(&config.models)?;
        let file = ScriptFile::open(path, move |path, source| {
            RetentionScript::load(path, source, models.clone(), Limits::default())
        })
        .map_err(|e| anyhow::anyhow!("retention script refused: {e}"))?;
        if let Err(e) = file.watch() {
            tracing::warn!(
                "retention script {} will not reload on changes: {e:#}",
                path.display()
            );
        }
        Ok(ScriptedPolicy { file })
    }

    pub fn file(&self) -> &ScriptFile<RetentionScript> {
        &self.file
    }
}

impl RetentionPolicy for ScriptedPolicy {
    fn name(&self) -> String {
        format!(
            "script {} (version {})",
            self.file.path().display(),
            self.file.version()
        )
    }

    fn decide(&self, pack: &WrittenPack<'_>) -> anyhow::Result<Decision> {
        let facts = PackFacts {
            id: pack.id.to_string(),
            model: pack.model.to_string(),
            serial: pack
                .id
                .split_once('-')
                .map_or(pack.id, |(_, serial)| serial)
                .to_string(),
            cert_serial: pack.serial.to_string(),
            line: pack.line.to_string(),
            written_at: pack.written_at,
            age_secs: pack.age_secs,
            flagged: pack.flagged,
        };
        Ok(match self.file.current().decide(&facts)? {
            Verdict::Flag => Decision::Flag,
            Verdict::Delete => Decision::Delete,
            Verdict::Keep => Decision::Keep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(model: &str, age_secs: i64, flagged: bool) -> WrittenPack<'_> {
        WrittenPack {
            id: "X-1",
            model,
            serial: "00",
            line: "l",
            written_at: 0,
            age_secs,
            flagged,
        }
    }

    #[test]
    fn per_model_and_per_age() {
        let mut config = RetentionConfig::default();
        config.models.insert("DEL".into(), RetentionAction::Delete);
        config.delete_flagged_after_days = Some(30);
        let policy = BuiltinPolicy::new(config);
        assert_eq!(
            policy.decide(&pack("KEEP", 0, false)).unwrap(),
            Decision::Flag
        );
        assert_eq!(
            policy.decide(&pack("DEL", 0, false)).unwrap(),
            Decision::Delete
        );
        assert_eq!(
            policy.decide(&pack("KEEP", 3600, true)).unwrap(),
            Decision::Keep
        );
        assert_eq!(
            policy.decide(&pack("KEEP", 31 * 24 * 3600, true)).unwrap(),
            Decision::Delete
        );
    }
}
