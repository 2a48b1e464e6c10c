//! A retention policy written in Lua (`retention.lua`): for a written pack,
//! flag it (keep it, marked written), delete it (wipe its key), or keep it
//! as it is. The station adapts this to its own policy trait; this module
//! knows nothing of the station.
//!
//! The script defines `decide(pack)` returning `"flag"`, `"delete"` or
//! `"keep"`, and may define `checks`, a list of `{ pack = {...}, expect =
//! "..." }` that must all hold for the file to be accepted (the self-check).

use std::path::Path;

use mlua::{IntoLua, MultiValue, Value};

use super::sandbox::{HostApi, Limits, Script, ScriptError};

/// What a policy sees of a written pack (no key material, ever).
#[derive(Debug, Clone, Default)]
pub struct PackFacts {
    pub id: String,
    pub model: String,
    /// The device serial (from the id).
    pub serial: String,
    /// The certificate's serial number (hex).
    pub cert_serial: String,
    pub line: String,
    /// Unix seconds.
    pub written_at: i64,
    pub age_secs: i64,
    pub flagged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Flag,
    Delete,
    Keep,
}

impl Verdict {
    fn parse(text: &str) -> Option<Verdict> {
        match text {
            "flag" => Some(Verdict::Flag),
            "delete" => Some(Verdict::Delete),
            "keep" => Some(Verdict::Keep),
            _ => None,
        }
    }
}

pub struct RetentionScript {
    script: Script,
}

fn pack_table(lua: &mlua::Lua, p: &PackFacts) -> mlua::Result<Value> {
    let t = lua.create_table()?;
    t.raw_set("id", p.id.as_str())?;
    t.raw_set("model", p.model.as_str())?;
    t.raw_set("serial", p.serial.as_str())?;
    t.raw_set("cert_serial", p.cert_serial.as_str())?;
    t.raw_set("line", p.line.as_str())?;
    t.raw_set("written_at", p.written_at)?;
    t.raw_set("age_secs", p.age_secs)?;
    t.raw_set("age_days", p.age_secs as f64 / 86_400.0)?;
    t.raw_set("flagged", p.flagged)?;
    t.into_lua(lua)
}

fn verdict(results: MultiValue) -> Result<Verdict, String> {
    match results.into_iter().next().unwrap_or(Value::Nil) {
        Value::String(s) => {
            let text = s.to_string_lossy();
            Verdict::parse(&text).ok_or_else(|| {
                format!("returned {text:?}; expected \"flag\", \"delete\" or \"keep\"")
            })
        }
        other => Err(format!(
            "returned a {}; expected the string \"flag\", \"delete\" or \"keep\"",
            other.type_name()
        )),
    }
}

impl RetentionScript {
    /// Loads and self-checks a retention script. `models` is the factory's
    /// model table (`host.models` in the script).
    pub fn load(
        path: &Path,
        source: &[u8],
        models: serde_json::Value,
        limits: Limits,
    ) -> Result<RetentionScript, ScriptError> {
        let mut host = HostApi {
            role: "retention".into(),
            ..Default::default()
        };
        host.data.insert("models".into(), models);
        let script = Script::load(path, source, &host, limits)?;
        script.require_function(path, "retention", "decide(pack)")?;
        let policy = RetentionScript { script };
        policy.self_check()?;
        Ok(policy)
    }

    pub fn script(&self) -> &Script {
        &self.script
    }

    pub fn decide(&self, pack: &PackFacts) -> Result<Verdict, ScriptError> {
        self.script.call(
            "decide",
            |lua| Ok(MultiValue::from_iter([pack_table(lua, pack)?])),
            verdict,
        )
    }

    /// Runs the script's `checks` (if any): each `{ pack = {...}, expect = "..." }`.
    fn self_check(&self) -> Result<(), ScriptError> {
        let path = self.script.path();
        let checks = match self.script.global("checks") {
            Value::Nil => return Ok(()),
            Value::Table(t) => t,
            other => {
                return Err(ScriptError::new(
                    path,
                    format!(
                        "{}: checks must be a list of {{ pack = ..., expect = ... }}, not a {}",
                        path.display(),
                        other.type_name()
                    ),
                ))
            }
        };
        for (i, check) in checks.sequence_values::<mlua::Table>().enumerate() {
            let bad = |why: String| {
                ScriptError::new(
                    path,
                    format!("{}: self-check {} {why}", path.display(), i + 1),
                )
            };
            let check = check.map_err(|e| bad(format!("is not a table ({e})")))?;
            let pack: mlua::Table = check
                .raw_get("pack")
                .map_err(|_| bad("has no pack table".into()))?;
            let expect: String = check
                .raw_get("expect")
                .map_err(|_| bad("has no expect string".into()))?;
            let field = |k: &str| pack.raw_get::<Option<String>>(k).ok().flatten();
            let age_secs = match pack.raw_get::<Option<f64>>("age_days").ok().flatten() {
                Some(days) => (days * 86_400.0) as i64,
                None => pack
                    .raw_get::<Option<i64>>("age_secs")
                    .ok()
                    .flatten()
                    .unwrap_or(0),
            };
            let model = field("model").unwrap_or_default();
            let serial = field("serial").unwrap_or_else(|| "1".into());
            let facts = PackFacts {
                id: format!("{model}-{serial}"),
                model,
                serial,
                cert_serial: "01".into(),
                line: field("line").unwrap_or_else(|| "line-1".into()),
                written_at: 0,
                age_secs,
                flagged: pack
                    .raw_get::<Option<bool>>("flagged")
                    .ok()
                    .flatten()
                    .unwrap_or(false),
            };
            let got = self.decide(&facts)?;
            let want = Verdict::parse(&expect).ok_or_else(|| {
                bad(format!(
                    "expects {expect:?}, which is not flag, delete or keep"
                ))
            })?;
            if got != want {
                return Err(bad(format!(
                    "failed: model {} aged {} s{} gave {:?}, expected {expect}",
                    facts.model,
                    facts.age_secs,
                    if facts.flagged { " (flagged)" } else { "" },
                    got
                )));
            }
        }
        Ok(())
    }
}
