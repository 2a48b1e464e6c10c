//! A line workflow written in Lua (`line.lua`): barcode parsing and the
//! steps for one scan. The line adapts this to its own workflow trait; this
//! module knows nothing of the line.
//!
//! The script defines:
//! - `parse(raw)`: the scanned text in, a table `{ model = ..., serial = ... }`
//!   (or `{ id = "MODEL-SERIAL" }`, plus optional `format` and `symbology`,
//!   plus any fields of the factory's own, such as `lot = "L42"`, which reach
//!   the host as [`Parsed::fields`] for the audit) out, or `nil, "why not"`
//!   for a code that is not a device, or `nil, "why not", "code"` to refuse
//!   with a refusal code of the line (`qc_failed`, see
//!   [`crate::wire::line::codes`]) and its advice;
//! - optionally `workflow(scan)`: the parsed scan (with `raw`, `line` and
//!   `model_info`) in, a list of steps out: `"provision"`, `{ step =
//!   "confirm", prompt = ... }`, `{ step = "message", text = ... }`, `{ step
//!   = "refuse", code = ..., message = ..., next = ... }`. Without it every
//!   parsed scan is provisioned;
//! - optionally `checks`: `{ { scan = ..., id = ... }, { scan = ...,
//!   refused = true } }`, run at load (the self-check); a check may also
//!   name the `steps` ("message,provision") and the refusal `code` it expects.
//!
//! The host checks what comes back: the id must be a well-formed device id
//! whatever the script says, and the steps must make sense.

use std::collections::BTreeMap;
use std::path::Path;

use mlua::{MultiValue, Table, Value};

use super::sandbox::{HostApi, Limits, Script, ScriptError};
use crate::pki::id::DeviceId;

/// A scan the script recognised as a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub id: DeviceId,
    /// The script's name for the barcode format ("plate", "check-sheet", ...).
    pub format: Option<String>,
    /// The AIM symbology identifier, if the scan carried one ("]C1", ...).
    pub symbology: Option<String>,
    /// Fields the script returned beyond the ones above (a lot number, a
    /// test station...), as text: the line reports them with the device's
    /// result and hands them to `workflow(scan)`.
    pub fields: BTreeMap<String, String>,
}

/// The fields of `parse`'s table the host reads itself; every other field is
/// one of [`Parsed::fields`].
const KNOWN_FIELDS: [&str; 5] = ["id", "model", "serial", "format", "symbology"];
/// At most this many extra fields, each name and value at most
/// [`MAX_FIELD_TEXT`] bytes: the bounds of a report to the station, which
/// records them (`wire::station::check_report_fields` is the whole rule).
pub use crate::wire::station::{MAX_FIELD_TEXT, MAX_REPORT_FIELDS as MAX_FIELDS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    Device(Parsed),
    /// Not a device id; the script's reason.
    NotADevice(String),
    /// The script refused the scan with a refusal code of its own
    /// (`nil, why, code`), e.g. a check sheet whose QC says the device failed.
    Refused {
        code: String,
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum Step {
    /// Ask the operator to confirm before provisioning.
    Confirm { prompt: String },
    /// Show the operator a message.
    Message { text: String },
    /// Take the pack, write it, verify it, report it (all done by the host).
    Provision,
    /// Refuse the scan without touching the device or the station.
    Refuse {
        code: String,
        message: String,
        next: String,
    },
}

pub struct LineScript {
    script: Script,
}

fn text_field(t: &Table, k: &str) -> Result<Option<String>, String> {
    match t.raw_get::<Value>(k).unwrap_or(Value::Nil) {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_string_lossy())),
        Value::Integer(i) => Ok(Some(i.to_string())),
        other => Err(format!(
            "gave {k} as a {}; expected a string",
            other.type_name()
        )),
    }
}

/// The fields of `parse`'s table beyond [`KNOWN_FIELDS`], as text.
fn extra_fields(t: &Table) -> Result<BTreeMap<String, String>, String> {
    let mut fields = BTreeMap::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| format!("returned a table that cannot be read: {e}"))?;
        let key = match k {
            Value::String(s) => s.to_string_lossy(),
            other => {
                return Err(format!(
                    "returned a table with a {} key; fields are named (lot = ...)",
                    other.type_name()
                ))
            }
        };
        if KNOWN_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let text = match v {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(i) => i.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "gave field {key} as a {}; extra fields are text, numbers or booleans",
                    other.type_name()
                ))
            }
        };
        if key.len() > MAX_FIELD_TEXT || text.len() > MAX_FIELD_TEXT {
            return Err(format!(
                "gave field {} longer than {MAX_FIELD_TEXT} bytes",
                crate::text::excerpt(&key, 40)
            ));
        }
        fields.insert(key, text);
    }
    if fields.len() > MAX_FIELDS {
        return Err(format!(
            "returned {} extra fields; at most {MAX_FIELDS}",
            fields.len()
        ));
    }
    // What the station will take in a report, checked now: before the
    // device is written, not when the result is refused afterwards.
    crate::wire::station::check_report_fields(&fields).map_err(|e| format!("returned {e}"))?;
    Ok(fields)
}

fn read_parse(results: MultiValue) -> Result<ParseOutcome, String> {
    let mut it = results.into_iter();
    let first = it.next().unwrap_or(Value::Nil);
    let second = it.next().unwrap_or(Value::Nil);
    let third = it.next().unwrap_or(Value::Nil);
    let t = match first {
        Value::Table(t) => t,
        Value::Nil | Value::Boolean(false) => {
            let why = match second {
                Value::String(s) => s.to_string_lossy(),
                _ => "the script did not recognise this code".to_string(),
            };
            return match third {
                Value::Nil => Ok(ParseOutcome::NotADevice(why)),
                Value::String(code) => {
                    let code = code.to_string_lossy();
                    if !code_ok(&code) {
                        return Err(format!(
                            "returned nil, a reason and the code {code:?}; a code is 1-40 of a-z 0-9 _"
                        ));
                    }
                    Ok(ParseOutcome::Refused { code, why })
                }
                other => Err(format!(
                    "returned nil, a reason and a {}; the third value is a refusal code (a string)",
                    other.type_name()
                )),
            };
        }
        other => {
            return Err(format!(
            "returned a {}; expected a table {{ model = ..., serial = ... }} or nil and a reason",
            other.type_name()
        ))
        }
    };
    let id = match (
        text_field(&t, "id")?,
        text_field(&t, "model")?,
        text_field(&t, "serial")?,
    ) {
        (_, Some(model), Some(serial)) => DeviceId::new(&model, &serial),
        (Some(id), _, _) => DeviceId::parse(&id),
        _ => return Err("returned a table without id, or model and serial".into()),
    };
    match id {
        Ok(id) => Ok(ParseOutcome::Device(Parsed {
            id,
            format: text_field(&t, "format")?,
            symbology: text_field(&t, "symbology")?,
            fields: extra_fields(&t)?,
        })),
        // The script parsed something that is not a device id: the scan is
        // refused, with the host's reason.
        Err(e) => Ok(ParseOutcome::NotADevice(format!(
            "the script's result: {e}"
        ))),
    }
}

fn code_ok(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn read_steps(results: MultiValue) -> Result<Vec<Step>, String> {
    let list = match results.into_iter().next().unwrap_or(Value::Nil) {
        Value::Nil => return Ok(vec![Step::Provision]),
        Value::Table(t) => t,
        other => {
            return Err(format!(
                "returned a {}; expected a list of steps",
                other.type_name()
            ))
        }
    };
    let mut steps = Vec::new();
    for (i, item) in list.sequence_values::<Value>().enumerate() {
        let n = i + 1;
        let item = item.map_err(|e| format!("step {n}: {e}"))?;
        let (kind, t) = match &item {
            Value::String(s) => (s.to_string_lossy(), None),
            Value::Table(t) => match text_field(t, "step").map_err(|e| format!("step {n} {e}"))? {
                Some(kind) => (kind, Some(t)),
                None => return Err(format!("returned step {n} without a step = \"...\" field")),
            },
            other => {
                return Err(format!(
                    "returned step {n} as a {}; expected a string or a table",
                    other.type_name()
                ))
            }
        };
        let get = |k: &str| -> Result<String, String> {
            let value = match t {
                Some(t) => text_field(t, k).map_err(|e| format!("step {n} ({kind}) {e}"))?,
                None => None,
            };
            value.ok_or_else(|| format!("returned step {n} ({kind}) without {k}"))
        };
        steps.push(match kind.as_str() {
            "provision" => Step::Provision,
            "confirm" => Step::Confirm {
                prompt: get("prompt")?,
            },
            "message" => Step::Message { text: get("text")? },
            "refuse" => {
                let code = get("code")?;
                if !code_ok(&code) {
                    return Err(format!(
                        "returned step {n} (refuse) with code {code:?}; a code is 1-40 of a-z 0-9 _"
                    ));
                }
                Step::Refuse {
                    message: get("message")?,
                    next: get("next").unwrap_or_else(|_| crate::wire::line::advice(&code).into()),
                    code,
                }
            }
            other => {
                return Err(format!(
                    "returned step {n} {other:?}; steps are provision, confirm, message, refuse"
                ))
            }
        });
    }
    let provisions = steps.iter().filter(|s| **s == Step::Provision).count();
    let refuses = steps
        .iter()
        .filter(|s| matches!(s, Step::Refuse { .. }))
        .count();
    if provisions + refuses != 1 {
        return Err(format!(
            "returned {provisions} provision and {refuses} refuse steps; exactly one of them is needed"
        ));
    }
    if let Some(last) = steps.last() {
        if !matches!(last, Step::Provision | Step::Refuse { .. }) {
            return Err("returned steps after provision or refuse; those must come last".into());
        }
    }
    Ok(steps)
}

impl LineScript {
    /// Loads and self-checks a line script. `line` is the line's name and
    /// `models` the factory's model table (`host.line`, `host.models`).
    pub fn load(
        path: &Path,
        source: &[u8],
        line: &str,
        models: serde_json::Value,
        limits: Limits,
    ) -> Result<LineScript, ScriptError> {
        let mut host = HostApi {
            role: "line".into(),
            ..Default::default()
        };
        host.data.insert("line".into(), line.into());
        host.data.insert("models".into(), models);
        let script = Script::load(path, source, &host, limits)?;
        script.require_function(path, "line", "parse(raw)")?;
        let line = LineScript { script };
        line.self_check()?;
        Ok(line)
    }

    pub fn script(&self) -> &Script {
        &self.script
    }

    pub fn parse(&self, raw: &str) -> Result<ParseOutcome, ScriptError> {
        self.script.call(
            "parse",
            |lua| {
                Ok(MultiValue::from_iter([Value::String(
                    lua.create_string(raw)?,
                )]))
            },
            read_parse,
        )
    }

    /// The steps for a parsed scan (just provision when the script has no
    /// `workflow`).
    pub fn workflow(&self, raw: &str, parsed: &Parsed) -> Result<Vec<Step>, ScriptError> {
        if self.script.function("workflow").is_none() {
            return Ok(vec![Step::Provision]);
        }
        self.script.call(
            "workflow",
            |lua| {
                let t = lua.create_table()?;
                t.raw_set("id", parsed.id.to_string())?;
                t.raw_set("model", parsed.id.model())?;
                t.raw_set("serial", parsed.id.serial())?;
                t.raw_set("raw", raw)?;
                t.raw_set("format", parsed.format.clone())?;
                t.raw_set("symbology", parsed.symbology.clone())?;
                for (k, v) in &parsed.fields {
                    // The host's own fields win over a script's same-named one.
                    if t.raw_get::<Value>(k.as_str())?.is_nil() {
                        t.raw_set(k.as_str(), v.as_str())?;
                    }
                }
                Ok(MultiValue::from_iter([Value::Table(t)]))
            },
            read_steps,
        )
    }

    /// Parse, then the steps: the whole script part of one scan.
    pub fn on_scan(&self, raw: &str) -> Result<(ParseOutcome, Vec<Step>), ScriptError> {
        match self.parse(raw)? {
            ParseOutcome::Device(p) => {
                let steps = self.workflow(raw, &p)?;
                Ok((ParseOutcome::Device(p), steps))
            }
            other => Ok((other, Vec::new())),
        }
    }

    fn self_check(&self) -> Result<(), ScriptError> {
        let path = self.script.path();
        let checks = match self.script.global("checks") {
            Value::Nil => return Ok(()),
            Value::Table(t) => t,
            other => {
                return Err(ScriptError::new(
                    path,
                    format!(
                        "{}: checks must be a list of {{ scan = ..., id = ... }}, not a {}",
                        path.display(),
                        other.type_name()
                    ),
                ))
            }
        };
        for (i, check) in checks.sequence_values::<Table>().enumerate() {
            let bad = |why: String| {
                ScriptError::new(
                    path,
                    format!("{}: self-check {} {why}", path.display(), i + 1),
                )
            };
            let check = check.map_err(|e| bad(format!("is not a table ({e})")))?;
            let scan = text_field(&check, "scan")
                .map_err(&bad)?
                .ok_or_else(|| bad("has no scan".into()))?;
            let want_id = text_field(&check, "id").map_err(&bad)?;
            let (outcome, steps) = self.on_scan(&scan)?;
            if let Some(want) = text_field(&check, "code").map_err(&bad)? {
                let got = match &outcome {
                    ParseOutcome::Refused { code, .. } => code.as_str(),
                    ParseOutcome::NotADevice(_) => crate::wire::line::codes::MALFORMED_BARCODE,
                    ParseOutcome::Device(_) => steps
                        .iter()
                        .find_map(|s| match s {
                            Step::Refuse { code, .. } => Some(code.as_str()),
                            _ => None,
                        })
                        .unwrap_or("(none: provisioned)"),
                };
                if got != want {
                    return Err(bad(format!(
                        "failed: {scan:?} was refused with code {got}, expected {want}"
                    )));
                }
            }
            match (outcome, want_id) {
                (ParseOutcome::Device(p), Some(want)) if p.id.to_string() == want => {}
                (ParseOutcome::Device(p), Some(want)) => {
                    return Err(bad(format!(
                        "failed: {scan:?} parsed as {}, expected {want}",
                        p.id
                    )))
                }
                (ParseOutcome::Device(p), None) => {
                    return Err(bad(format!(
                        "failed: {scan:?} parsed as {}, expected it to be refused",
                        p.id
                    )))
                }
                (ParseOutcome::NotADevice(why), Some(want)) => {
                    return Err(bad(format!(
                        "failed: {scan:?} was refused ({why}), expected {want}"
                    )))
                }
                (ParseOutcome::NotADevice(_), None) => {}
                (ParseOutcome::Refused { code, why }, Some(want)) => {
                    return Err(bad(format!(
                        "failed: {scan:?} was refused ({code}: {why}), expected {want}"
                    )))
                }
                (ParseOutcome::Refused { .. }, None) => {}
            }
            if let Ok(Some(want)) = text_field(&check, "steps") {
                let got: Vec<String> = steps
                    .iter()
                    .map(|s| match s {
                        Step::Confirm { .. } => "confirm",
                        Step::Message { .. } => "message",
                        Step::Provision => "provision",
                        Step::Refuse { .. } => "refuse",
                    })
                    .map(String::from)
                    .collect();
                if got.join(",") != want {
                    return Err(bad(format!(
                        "failed: {scan:?} gave steps {}, expected {want}",
                        got.join(",")
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The line script file name in a script folder.
pub const LINE_FILE: &str = "line.lua";

/// Opens `dir/line.lua` as a reloading script for the line `line`; the
/// models come from `dir/factory.toml` (read again at every reload).
pub fn open_folder(
    dir: &Path,
    line: &str,
    limits: Limits,
) -> Result<std::sync::Arc<super::ScriptFile<LineScript>>, ScriptError> {
    let folder = dir.to_path_buf();
    let line = line.to_string();
    super::ScriptFile::open(&dir.join(LINE_FILE), move |path, source| {
        let models = super::factory::folder_models(&folder)
            .map_err(|e| ScriptError::new(path, format!("{e:#}")))?;
        LineScript::load(path, source, &line, models, limits)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(fields: &str) -> Result<ParseOutcome, String> {
        let source = format!("function parse(raw) return {{ id = raw, {fields} }} end");
        let script = LineScript::load(
            Path::new("line.lua"),
            source.as_bytes(),
            "line-1",
            serde_json::json!({}),
            Limits::default(),
        )
        .map_err(|e| e.to_string())?;
        script.parse("3012-000001").map_err(|e| e.to_string())
    }

    /// Extra fields reach the host as text; what a report to the station
    /// cannot carry is refused at the scan, naming the field, before any
    /// device is written.
    #[test]
    fn extra_fields_are_text_and_bounded_like_a_report() {
        match parse_with("lot = \"L42\", bay = 7, ok = true").unwrap() {
            ParseOutcome::Device(p) => {
                assert_eq!(p.fields["lot"], "L42");
                assert_eq!(p.fields["bay"], "7");
                assert_eq!(p.fields["ok"], "true");
                assert!(!p.fields.contains_key("id"));
            }
            other => panic!("{other:?}"),
        }
        let many: Vec<String> = (0..17).map(|i| format!("f{i} = \"x\"")).collect();
        let long = format!("lot = \"{}\"", "L".repeat(201));
        for (fields, says) in [
            ("lot = { 1 }", "gave field lot as a table"),
            ("lot = print", "gave field lot as a function"),
            (
                many.join(", ").as_str(),
                "returned 17 extra fields; at most 16",
            ),
            (long.as_str(), "gave field lot longer than 200 bytes"),
            ("[\"lot number\"] = \"L42\"", "field name \"lot number\""),
            (
                "lot = \"L4\\n2\"",
                "field lot: its value holds control characters",
            ),
        ] {
            let err = parse_with(fields).unwrap_err();
            assert!(err.contains(says), "{fields}: {err}");
        }
    }
}
