//! The line's workflow: what a scanned code means and what the line does
//! with it. This is the one replaceable piece of the line: the built-in
//! [`PlateWorkflow`] reads `<model>-<serial>` from the rating plate and
//! provisions that device; a factory's Lua workflow (issue 7) implements
//! [`Workflow`] and takes its place through [`from_config`], without touching
//! the scanner, the station connection, the plugins or the outbox.
//!
//! A workflow never touches keys, the station or the device link itself: it
//! asks the [`LineHost`] to provision a device id, or to refuse a scan.

use std::collections::BTreeMap;

use serde::Serialize;

use super::config::LineConfig;
use crate::pki::id::DeviceId;
use crate::wire::line::{advice, codes};

/// How a scan ended, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The identity is in the device, verified, and the station knows (or will).
    Ok,
    /// Nothing was written: the scan, the device or the station said no first.
    Refused,
    /// A write was attempted and did not succeed; the station revokes that
    /// certificate and prepares a fresh one.
    Failed,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Refused => "REFUSED",
            Status::Failed => "FAILED",
        }
    }
}

/// One operator line: the device, OK or the reason, and what to do next.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The code as scanned.
    pub scan: String,
    /// The device id, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub status: Status,
    /// A stable machine code: `written`, `malformed_barcode`, `wrong_device`, ...
    pub code: String,
    /// What happened, in an operator's words.
    pub message: String,
    /// What to do next.
    pub next: String,
    /// The certificate's serial (hex), once a pack was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// For a device result: "delivered" to the station, or "kept" on the line
    /// until the station is back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Milliseconds per step (connect, identify, take, write, report).
    pub steps: Vec<(String, f64)>,
    /// Milliseconds from the scan to the result committed (and delivered).
    pub ms: f64,
    /// Fields the line script's `parse` returned beyond the device id (a lot
    /// number...), reported with the result for the factory's audit.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

impl Report {
    pub fn refused(scan: &str, id: Option<&str>, code: &str, message: String, next: &str) -> Self {
        Report {
            scan: scan.to_string(),
            id: id.map(str::to_string),
            status: Status::Refused,
            code: code.to_string(),
            message,
            next: next.to_string(),
            serial: None,
            fingerprint: None,
            result: None,
            steps: Vec::new(),
            ms: 0.0,
            fields: BTreeMap::new(),
        }
    }
}

/// What the line offers a workflow.
pub trait LineHost {
    /// Runs every step for the device on the link, which must be `id`:
    /// identify, take the pack, write, verify, report. Never panics; every
    /// failure comes back as a [`Report`].
    /// `fields` are the factory's own fields of the scan (what the line
    /// script's `parse` returned beyond the id), reported to the station
    /// with the written result for its audit.
    fn provision(&mut self, scan: &str, id: &DeviceId, fields: &BTreeMap<String, String>)
        -> Report;
    /// Refuses a scan without touching the device or the station.
    fn refuse(&mut self, scan: &str, code: &str, message: String, next: &str) -> Report {
        Report::refused(scan, None, code, message, next)
    }
}

/// The replaceable piece: barcode parsing and the per-scan workflow.
pub trait Workflow: Send {
    /// Names the workflow in logs and in the line's status ("built-in", a script path).
    fn name(&self) -> String;
    /// Handles one scan (already cleaned by the scanner: AIM prefix stripped,
    /// trimmed, debounced).
    fn on_scan(&mut self, scan: &str, host: &mut dyn LineHost) -> Report;
    /// The script that serves (file, version, hash, a refused edit), if
    /// the workflow is a script.
    fn script(&self) -> Option<crate::script::ScriptStatus> {
        None
    }
    /// Asks to be told of every reload of the workflow's script, at once
    /// (the line announces accepted and refused edits to the operator).
    fn on_reload(&self, _listener: crate::script::file::Listener) {}
}

/// The built-in workflow: the scan is the rating plate's `<model>-<serial>`.
#[derive(Debug, Default)]
pub struct PlateWorkflow;

impl Workflow for PlateWorkflow {
    fn name(&self) -> String {
        "built-in MODEL-SERIAL parser".into()
    }

    fn on_scan(&mut self, scan: &str, host: &mut dyn LineHost) -> Report {
        match DeviceId::parse(scan) {
            Ok(id) => host.provision(scan, &id, &BTreeMap::new()),
            Err(e) => host.refuse(
                scan,
                codes::MALFORMED_BARCODE,
                format!("this barcode is not a device id: {e}"),
                "scan the barcode on the device's rating plate (MODEL-SERIAL) again",
            ),
        }
    }
}

/// The workflow a configuration asks for: the factory's Lua workflow
/// (`line.lua` in `[scripts] dir`, hot-reloaded) when a script folder is
/// set, the built-in one otherwise.
pub fn from_config(config: &LineConfig) -> anyhow::Result<Box<dyn Workflow>> {
    match &config.script_dir {
        Some(dir) => Ok(Box::new(LuaWorkflow::open(dir, &config.name)?)),
        None => Ok(Box::new(PlateWorkflow)),
    }
}

/// How long a confirmation (the same code scanned again) is waited for.
const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// The factory's workflow from `line.lua` (see scripts/README.md). A
/// `confirm` step is answered by scanning the same code again.
pub struct LuaWorkflow {
    file: std::sync::Arc<crate::script::ScriptFile<crate::script::line::LineScript>>,
    /// A scan waiting for its confirming rescan.
    pending: Option<(String, std::time::Instant)>,
    /// The refusal already shown to the operator.
    shown_refusal: Option<String>,
}

impl LuaWorkflow {
    pub fn open(dir: &std::path::Path, line: &str) -> anyhow::Result<LuaWorkflow> {
        let file = crate::script::line::open_folder(dir, line, crate::script::Limits::default())
            .map_err(|e| anyhow::anyhow!("line script refused: {e}"))?;
        file.watch()?;
        Ok(LuaWorkflow {
            file,
            pending: None,
            shown_refusal: None,
        })
    }
}

impl Workflow for LuaWorkflow {
    fn name(&self) -> String {
        format!(
            "script {} (version {})",
            self.file.path().display(),
            self.file.version()
        )
    }

    fn script(&self) -> Option<crate::script::ScriptStatus> {
        Some(self.file.status())
    }

    fn on_reload(&self, listener: crate::script::file::Listener) {
        self.file.on_reload(listener);
    }

    fn on_scan(&mut self, scan: &str, host: &mut dyn LineHost) -> Report {
        use crate::script::line::{ParseOutcome, Step};
        // A refused edit is shown once, with the next scan.
        let mut note = String::new();
        if let Some(r) = self.file.refused() {
            if self.shown_refusal.as_deref() != Some(r.message.as_str()) {
                note = format!(
                    " [line.lua edit refused, previous version running: {}]",
                    r.message
                );
                self.shown_refusal = Some(r.message);
            }
        }
        let with_note = |mut report: Report| {
            report.message.push_str(&note);
            report
        };
        let (outcome, steps) = match self.file.current().on_scan(scan) {
            Ok(v) => v,
            Err(e) => {
                return with_note(host.refuse(
                    scan,
                    codes::SCRIPT_ERROR,
                    format!("the line script failed on this scan: {}", e.message),
                    advice(codes::SCRIPT_ERROR),
                ))
            }
        };
        let parsed = match outcome {
            ParseOutcome::Device(p) => p,
            ParseOutcome::NotADevice(why) => {
                return with_note(host.refuse(
                    scan,
                    codes::MALFORMED_BARCODE,
                    why,
                    advice(codes::MALFORMED_BARCODE),
                ))
            }
            ParseOutcome::Refused { code, why } => {
                return with_note(host.refuse(scan, &code, why, advice(&code)))
            }
        };
        let fields = parsed.fields.clone();
        let with_note = |report: Report| {
            let mut report = with_note(report);
            report.fields = fields.clone();
            report
        };
        let confirmed = self
            .pending
            .take()
            .is_some_and(|(s, at)| s == scan && at.elapsed() < CONFIRM_WITHIN);
        let mut messages = Vec::new();
        for step in steps {
            match step {
                Step::Message { text } => messages.push(text),
                Step::Confirm { prompt } if !confirmed => {
                    self.pending = Some((scan.to_string(), std::time::Instant::now()));
                    return with_note(host.refuse(
                        scan,
                        codes::CONFIRM,
                        format!(
                                "{prompt}{}",
                                messages
                                    .iter()
                                    .map(|m| format!(" ({m})"))
                                    .collect::<String>()
                            ),
                        advice(codes::CONFIRM),
                    ));
                }
                Step::Confirm { .. } => {}
                Step::Refuse {
                    code,
                    message,
                    next,
                } => return with_note(host.refuse(scan, &code, message, &next)),
                Step::Provision => {
                    let mut report = host.provision(scan, &parsed.id, &parsed.fields);
                    for m in &messages {
                        report.message.push_str(&format!(" ({m})"));
                    }
                    return with_note(report);
                }
            }
        }
        with_note(host.refuse(
            scan,
            codes::SCRIPT_ERROR,
            "the line script gave no provision or refuse step".into(),
            "tell the line engineer",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the workflow asked for.
    #[derive(Default)]
    struct Recorder {
        provisioned: Vec<String>,
    }

    impl LineHost for Recorder {
        fn provision(
            &mut self,
            scan: &str,
            id: &DeviceId,
            _fields: &BTreeMap<String, String>,
        ) -> Report {
            self.provisioned.push(id.to_string());
            Report::refused(scan, Some(&id.to_string()), "test", String::new(), "")
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// The built-in parser, on any scan: provisions exactly the id the
        /// scan spells (a valid MODEL-SERIAL) or refuses it as a malformed
        /// barcode with a message; it never panics.
        #[test]
        fn the_built_in_parser_provisions_only_what_the_plate_says(
            scan in "\\PC{0,40}|[A-Z0-9]{1,9}-[A-Z0-9]{1,21}"
        ) {
            let mut host = Recorder::default();
            let report = PlateWorkflow.on_scan(&scan, &mut host);
            match DeviceId::parse(&scan) {
                Ok(id) => {
                    proptest::prop_assert_eq!(&host.provisioned, &vec![id.to_string()]);
                    proptest::prop_assert_eq!(id.to_string(), scan);
                }
                Err(_) => {
                    proptest::prop_assert!(host.provisioned.is_empty());
                    proptest::prop_assert_eq!(report.code.as_str(), "malformed_barcode");
                    proptest::prop_assert!(report.message.contains("not a device id"));
                }
            }
        }
    }
}
