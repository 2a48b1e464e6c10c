//! The line's workflow: what a scanned code means and what the line does
//! with it. This is the one replaceable piece of the line: the built-in
//! [`PlateWorkflow`] reads `<model>-<serial>` from the rating plate and
//! provisions that device; a factory's Lua workflow (issue 7) implements
//! [`Workflow`] and takes its place through [`from_config`], without touching
//! the scanner, the station connection, the plugins or the outbox.
//!
//! A workflow never touches keys, the station or the device link itself: it
//! asks the [`LineHost`] to provision a device id, or to refuse a scan.

use serde::Serialize;

use super::config::LineConfig;
use crate::pki::id::DeviceId;

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
        }
    }
}

/// What the line offers a workflow.
pub trait LineHost {
    /// Runs every step for the device on the link, which must be `id`:
    /// identify, take the pack, write, verify, report. Never panics; every
    /// failure comes back as a [`Report`].
    fn provision(&mut self, scan: &str, id: &DeviceId) -> Report;
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
            Ok(id) => host.provision(scan, &id),
            Err(e) => host.refuse(
                scan,
                "malformed_barcode",
                format!("this barcode is not a device id: {e}"),
                "scan the barcode on the device's rating plate (MODEL-SERIAL) again",
            ),
        }
    }
}

/// The workflow a configuration asks for. Today that is always the built-in
/// one; the scripting issue returns the factory's Lua workflow from here when
/// `[scripts] dir` is set.
pub fn from_config(config: &LineConfig) -> anyhow::Result<Box<dyn Workflow>> {
    if let Some(dir) = &config.script_dir {
        tracing::info!(
            scripts = %dir.display(),
            "script folder configured; this build runs the built-in MODEL-SERIAL workflow"
        );
    }
    Ok(Box::new(PlateWorkflow))
}
