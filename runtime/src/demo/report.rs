//! The end of the demo's day: every written device talks to the center, the
//! CA's ledger and the station's stock are read back through their own
//! commands, and the summary (per-model table, center decisions, invariant
//! checks) is built from what the roles say, not from what the demo meant
//! to do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::floor::ScanResult;
use super::process::Certline;
use super::{path, progress, Planned, DISCONTINUED, IMPERSONATOR, PLAN, REWORKED, STRAY};
use crate::pki::pack::Pack;
use crate::pki::verify::verify_pack;
use crate::wire::ca::{CertRecord, CertStatus, LedgerCount};
use crate::wire::center::{CenterAnswer, Verdict};
use crate::wire::station::{AuditReport, DeviceReport, ModelStock, PackState, StockReport};

/// Ids whose identity a line wrote (and verified), in scan order.
pub fn written_ids(scans: &[ScanResult]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    scans
        .iter()
        .filter(|s| s.status == "ok")
        .filter_map(|s| s.id.clone())
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// One device's conversation with the center.
#[derive(Debug, Clone, Serialize)]
pub struct CenterRow {
    pub id: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    pub reason: String,
    pub reported_as: String,
    pub report_accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_refused: Option<String>,
    /// The verdict the demo's day should lead to (from the scenario table).
    pub expected: Verdict,
}

/// A verdict as its wire code (`no_contract`), as the summary shows it.
fn code(v: Verdict) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Every written device (and the stray one, which holds no identity)
/// connects to the center with its flash and reports a counter; one reports
/// as another device.
pub fn connect_all(
    certline: &Certline,
    url: &str,
    devices: &Path,
    written: &[String],
) -> anyhow::Result<Vec<CenterRow>> {
    let mut ids: Vec<String> = written.to_vec();
    ids.push(STRAY.to_string());
    let rows = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(id) = ids.get(i) else { break };
                let row = connect_one(certline, url, devices, id, i as u64);
                rows.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, row));
            });
        }
    });
    let mut rows = rows.into_inner().unwrap_or_else(|p| p.into_inner());
    rows.sort_by_key(|(i, _)| *i);
    let rows = rows
        .into_iter()
        .map(|(_, r)| r)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for r in &rows {
        progress(&format!(
            "     {:<12} {:<12} {:<18} {}",
            r.id,
            code(r.verdict),
            r.contract.as_deref().unwrap_or("-"),
            match &r.report_refused {
                None => format!("report as {}: accepted", r.reported_as),
                Some(why) => format!("report as {}: REFUSED ({why})", r.reported_as),
            }
        ));
    }
    Ok(rows)
}

fn connect_one(
    certline: &Certline,
    url: &str,
    devices: &Path,
    id: &str,
    n: u64,
) -> anyhow::Result<CenterRow> {
    let (model, serial) = id.split_once('-').unwrap_or((id, ""));
    let counter = (1000 + n * 137).to_string();
    let dir = devices.join(id);
    let mut args = vec![
        "device-sim",
        "--dir",
        path(&dir),
        "--model",
        model,
        "--serial",
        serial,
        "--report-to",
        url,
        "--counter",
        &counter,
        "--json",
    ];
    if id == IMPERSONATOR.0 {
        args.extend(["--report-id", IMPERSONATOR.1]);
    }
    let answer: CenterAnswer = certline.json(&args)?;
    Ok(CenterRow {
        id: id.to_string(),
        verdict: answer.decision.verdict,
        contract: answer.decision.contract,
        reason: answer.decision.reason,
        reported_as: answer.reported_as,
        report_accepted: answer.report_accepted,
        report_refused: answer.report_refused,
        expected: super::expected_verdict(id),
    })
}

/// What the CA's ledger and the station's stock say about every planned id.
pub struct Gathered {
    /// id → the CA's certificate history (`ca status --id`).
    pub ledger: BTreeMap<String, Vec<CertRecord>>,
    /// id → the station's report (`station admin device`).
    pub station: BTreeMap<String, DeviceReport>,
    /// `ca status --json`.
    pub ca_counts: Vec<LedgerCount>,
    pub ca_audit_intact: Result<(), String>,
    /// `station admin audit --last 1 --json`, or why it could not be read.
    pub station_audit: Result<AuditReport, String>,
}

pub fn gather(certline: &Certline, ca_dir: &Path, st: &Path) -> anyhow::Result<Gathered> {
    let ids: Vec<String> = PLAN
        .iter()
        .filter(|p| p.certificate)
        .flat_map(Planned::ids)
        .collect();
    let ledger = std::sync::Mutex::new(BTreeMap::new());
    let station = std::sync::Mutex::new(BTreeMap::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(id) = ids.get(i) else { break };
                // An id the CA never issued for has no history (an error).
                let history: Vec<CertRecord> = certline
                    .json(&["ca", "status", "--dir", path(ca_dir), "--id", id, "--json"])
                    .unwrap_or_default();
                ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), history);
                match certline.json::<DeviceReport>(&[
                    "station",
                    "admin",
                    "device",
                    "--dir",
                    path(st),
                    "--id",
                    id,
                    "--json",
                ]) {
                    Ok(v) => {
                        station
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id.clone(), v);
                    }
                    Err(e) => errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{e:#}")),
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().unwrap_or_default().into_iter().next() {
        anyhow::bail!("cannot read the station's view of a device: {e}");
    }
    let ca_counts = certline.json(&["ca", "status", "--dir", path(ca_dir), "--json"])?;
    let ca_audit_intact = certline
        .run(&["ca", "audit", "verify", "--dir", path(ca_dir)])
        .map(|_| ())
        .map_err(|e| format!("{e:#}"));
    let station_audit = certline
        .json(&[
            "station",
            "admin",
            "audit",
            "--dir",
            path(st),
            "--last",
            "1",
            "--json",
        ])
        .map_err(|e| format!("{e:#}"));
    Ok(Gathered {
        ledger: ledger.into_inner().unwrap_or_default(),
        station: station.into_inner().unwrap_or_default(),
        ca_counts,
        ca_audit_intact,
        station_audit,
    })
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ModelRow {
    pub model: String,
    pub certificate: bool,
    /// Where its keys were born: "ca" (packs fetched ahead) or "device"
    /// (each device's CSR signed on the line).
    pub keygen: String,
    pub planned: u64,
    pub fetched: u64,
    pub written: u64,
    pub failed: u64,
    pub reissued: u64,
    pub revoked: u64,
    pub discarded: u64,
    pub in_stock: u64,
    /// Retention: written packs kept, flagged (for rework).
    pub flagged: u64,
    /// Retention: written packs whose key was wiped.
    pub deleted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CenterTally {
    pub devices: usize,
    pub contract: usize,
    pub no_contract: usize,
    pub revoked: usize,
    pub unknown: usize,
    pub unverifiable: usize,
    pub reports_accepted: usize,
    pub reports_refused: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub dir: String,
    pub day: String,
    pub wall_seconds: f64,
    /// The example factory's scripts the station and lines were given.
    pub scripts: Option<String>,
    /// Line name → the workflow it ran (the built-in parser or line.lua).
    pub line_workflows: BTreeMap<String, String>,
    pub models: Vec<ModelRow>,
    pub totals: ModelRow,
    pub scans: ScanTally,
    pub center: CenterTally,
    pub center_devices: Vec<CenterRow>,
    pub checks: Vec<Check>,
    pub ca_ledger: Vec<LedgerCount>,
    pub scan_log: Vec<ScanResult>,
    /// Commands to talk to the center yourself with a written device's flash.
    pub try_center: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ScanTally {
    pub total: usize,
    pub ok: usize,
    pub refused: usize,
    pub failed: usize,
    /// Operator-line codes and how often each came.
    pub codes: BTreeMap<String, usize>,
}

fn model_of(id: &str) -> &str {
    id.split_once('-').map(|(m, _)| m).unwrap_or(id)
}

/// A model's line of a stock report (all zero if the model is not in it).
fn stock_of(stock: &StockReport, model: &str) -> ModelStock {
    stock
        .models
        .iter()
        .find(|m| m.model == model)
        .cloned()
        .unwrap_or_default()
}

impl Summary {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        dir: &Path,
        day: &str,
        scripts: Option<&Path>,
        after_fetch: &StockReport,
        stock: &StockReport,
        scans: &[ScanResult],
        center: &[CenterRow],
        g: &Gathered,
        ca_root: &Path,
        devices: &Path,
        started: Instant,
    ) -> anyhow::Result<Summary> {
        let written = written_ids(scans);
        let mut models = Vec::new();
        for p in PLAN {
            let ids: BTreeSet<String> = p.ids().into_iter().collect();
            let mut row = ModelRow {
                model: p.model.to_string(),
                certificate: p.certificate,
                keygen: if p.device_keygen { "device" } else { "ca" }.to_string(),
                planned: p.count as u64,
                fetched: stock_of(after_fetch, p.model).in_stock as u64,
                discarded: stock_of(stock, p.model).discarded as u64,
                in_stock: stock_of(stock, p.model).in_stock as u64,
                ..Default::default()
            };
            for s in scans {
                if s.id.as_deref().map(model_of) == Some(p.model) {
                    match s.status.as_str() {
                        "ok" => row.written += 1,
                        "failed" => row.failed += 1,
                        _ => {}
                    }
                }
            }
            for id in &ids {
                for cert in g.ledger.get(id).into_iter().flatten() {
                    if cert.status == CertStatus::Revoked {
                        row.revoked += 1;
                    }
                    if cert.replaces.is_some() {
                        row.reissued += 1;
                    }
                }
                if let Some(report) = g.station.get(id) {
                    for pack in &report.packs {
                        match pack.state {
                            PackState::Flagged => row.flagged += 1,
                            PackState::Deleted => row.deleted += 1,
                            _ => {}
                        }
                    }
                }
            }
            models.push(row);
        }
        let mut totals = ModelRow {
            model: "total".into(),
            certificate: true,
            ..Default::default()
        };
        for r in &models {
            totals.planned += r.planned;
            totals.fetched += r.fetched;
            totals.written += r.written;
            totals.failed += r.failed;
            totals.reissued += r.reissued;
            totals.revoked += r.revoked;
            totals.discarded += r.discarded;
            totals.in_stock += r.in_stock;
            totals.flagged += r.flagged;
            totals.deleted += r.deleted;
        }

        let mut tally = ScanTally {
            total: scans.len(),
            ..Default::default()
        };
        for s in scans {
            match s.status.as_str() {
                "ok" => tally.ok += 1,
                "refused" => tally.refused += 1,
                _ => tally.failed += 1,
            }
            *tally.codes.entry(s.code.clone()).or_default() += 1;
        }
        let mut ct = CenterTally {
            devices: center.len(),
            ..Default::default()
        };
        for r in center {
            match r.verdict {
                Verdict::Contract => ct.contract += 1,
                Verdict::NoContract => ct.no_contract += 1,
                Verdict::Revoked => ct.revoked += 1,
                Verdict::Unknown => ct.unknown += 1,
                Verdict::Unverifiable => ct.unverifiable += 1,
            }
            if r.report_accepted {
                ct.reports_accepted += 1;
            } else {
                ct.reports_refused += 1;
            }
        }

        let checks = checks(scans, center, g, &written, ca_root, devices, stock);
        Ok(Summary {
            ok: checks.iter().all(|c| c.ok),
            dir: dir.display().to_string(),
            day: day.to_string(),
            wall_seconds: started.elapsed().as_secs_f64(),
            scripts: scripts.map(|s| s.display().to_string()),
            line_workflows: scans
                .iter()
                .map(|s| (s.line.clone(), s.workflow.clone()))
                .collect(),
            models,
            totals,
            scans: tally,
            center: ct,
            center_devices: center.to_vec(),
            checks,
            ca_ledger: g.ca_counts.clone(),
            scan_log: scans.to_vec(),
            try_center: try_center(dir),
        })
    }

    pub fn print(&self) {
        println!();
        println!(
            "certline demo: one factory day ({}), {:.1} s",
            self.day, self.wall_seconds
        );
        println!();
        println!(
            "  {:<6} {:>7} {:>7} {:>7} {:>6} {:>9} {:>7} {:>9} {:>8}",
            "model",
            "planned",
            "fetched",
            "written",
            "failed",
            "re-issued",
            "revoked",
            "discarded",
            "in stock"
        );
        for r in self.models.iter().chain(std::iter::once(&self.totals)) {
            if r.model == "total" {
                println!("  {}", "-".repeat(79));
            }
            println!(
                "  {:<6} {:>7} {:>7} {:>7} {:>6} {:>9} {:>7} {:>9} {:>8}{}",
                r.model,
                r.planned,
                r.fetched,
                r.written,
                r.failed,
                r.reissued,
                r.revoked,
                r.discarded,
                r.in_stock,
                if !r.certificate {
                    "   (no certificate)"
                } else if r.keygen == "device" {
                    "   (keys born in the device)"
                } else {
                    ""
                }
            );
        }
        println!();
        let codes: Vec<String> = self
            .scans
            .codes
            .iter()
            .filter(|(c, _)| c.as_str() != "written")
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        println!(
            "  scans      {} ({} OK, {} refused, {} failed): {}",
            self.scans.total,
            self.scans.ok,
            self.scans.refused,
            self.scans.failed,
            codes.join(", ")
        );
        println!(
            "  retention  {} written pack(s) flagged (kept for rework), {} deleted (key wiped){}",
            self.totals.flagged,
            self.totals.deleted,
            match &self.scripts {
                Some(_) => " by retention.lua",
                None => " by the built-in policy",
            }
        );
        let workflows: Vec<String> = self
            .line_workflows
            .iter()
            .map(|(l, w)| format!("{l}: {w}"))
            .collect();
        println!("  workflow   {}", workflows.join("; "));
        let c = &self.center;
        println!(
            "  center     {} device(s) connected: {} contract, {} no contract, {} revoked, {} unknown{}",
            c.devices,
            c.contract,
            c.no_contract,
            c.revoked,
            c.unknown,
            if c.unverifiable > 0 {
                format!(", {} unverifiable", c.unverifiable)
            } else {
                String::new()
            }
        );
        let refused: Vec<String> = self
            .center_devices
            .iter()
            .filter(|r| !r.report_accepted)
            .map(|r| {
                if r.reported_as != r.id {
                    format!("{} claimed to be {} (impersonation)", r.id, r.reported_as)
                } else {
                    format!("{} ({})", r.id, code(r.verdict))
                }
            })
            .collect();
        println!(
            "             reports: {} accepted, {} refused: {}",
            c.reports_accepted,
            c.reports_refused,
            refused.join("; ")
        );
        println!();
        println!("  checks");
        for check in &self.checks {
            println!(
                "    {}  {} — {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            );
        }
        println!();
        println!("  talk to the center yourself with a device's flash:");
        for line in &self.try_center {
            println!("    {line}");
        }
        println!();
        println!("  state left in {}", self.dir);
        println!("  (ca/, station/, lines/, devices/<id>/flash, center/, logs/; summary.json)");
    }
}

/// A device's identity as the device keeps it: root and chain in its
/// flash, the key in its flash or (keys born in the device) in its secure
/// element.
fn read_flash(device: &Path) -> anyhow::Result<Pack> {
    let flash = device.join("flash");
    if flash.join(crate::pki::pack::KEY_FILE).exists() {
        return Pack::read_dir(&flash);
    }
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
    };
    Ok(Pack {
        root_pem: read(flash.join(crate::pki::pack::ROOT_FILE))?,
        chain_pem: read(flash.join(crate::pki::pack::CHAIN_FILE))?,
        key_pem: zeroize::Zeroizing::new(read(device.join("secure").join("key.pem"))?),
    })
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// For each written device of a device-keygen model: no key in its flash,
/// its flash certificate is for the key in its secure element (the key
/// signs, the certificate verifies), the station holds no key for it, and
/// the key's bytes are in no file of the CA or the station (databases,
/// WAL, logs included).
fn device_keygen_check(written: &[String], g: &Gathered, devices: &Path) -> Check {
    let models: Vec<&str> = PLAN
        .iter()
        .filter(|p| p.device_keygen)
        .map(|p| p.model)
        .collect();
    let ids: Vec<&String> = written
        .iter()
        .filter(|id| models.contains(&model_of(id)))
        .collect();
    let root = devices.parent().unwrap_or(Path::new("."));
    let mut haystack: Vec<(std::path::PathBuf, Vec<u8>)> = Vec::new();
    for sub in ["ca", "station"] {
        for f in files_under(&root.join(sub)) {
            if let Ok(bytes) = std::fs::read(&f) {
                haystack.push((f, bytes));
            }
        }
    }
    let mut problems = Vec::new();
    for id in &ids {
        let device = devices.join(id);
        if device
            .join("flash")
            .join(crate::pki::pack::KEY_FILE)
            .exists()
        {
            problems.push(format!("{id}: a key is in its flash"));
        }
        let verdict = (|| -> anyhow::Result<Vec<u8>> {
            let pack = read_flash(&device)?;
            let key = pack.key_pkcs8_der()?;
            let cert = pack.device_cert_der()?;
            let sig = crate::link::pop::sign(&key, b"demo-check")?;
            crate::link::pop::verify(&cert, b"demo-check", &sig)?;
            Ok(key.to_vec())
        })();
        let key = match verdict {
            Ok(key) => key,
            Err(e) => {
                problems.push(format!("{id}: flash certificate and secure element: {e:#}"));
                continue;
            }
        };
        if let Some(report) = g.station.get(id.as_str()) {
            if report.packs.iter().any(|p| p.key_held) {
                problems.push(format!("{id}: the station holds a key for it"));
            }
        }
        let pem_body: String = crate::pki::to_pem("PRIVATE KEY", &key)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for (file, bytes) in &haystack {
            let found = bytes.windows(key.len()).any(|w| w == key.as_slice())
                || bytes
                    .windows(pem_body.len().min(40))
                    .any(|w| w == &pem_body.as_bytes()[..pem_body.len().min(40)]);
            if found {
                problems.push(format!("{id}: its key is in {}", file.display()));
            }
        }
    }
    check(
        "keys born in the device never existed at the CA or the station",
        problems,
        format!(
            "{} device(s) of model(s) {}: flash certificate matches the secure element's key; the key is in no file of the CA or the station",
            ids.len(),
            models.join(" ")
        ),
    )
}

fn check(name: &str, problems: Vec<String>, fine: String) -> Check {
    Check {
        name: name.to_string(),
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            fine
        } else {
            problems.join("; ")
        },
    }
}

fn checks(
    scans: &[ScanResult],
    center: &[CenterRow],
    g: &Gathered,
    written: &[String],
    ca_root: &Path,
    devices: &Path,
    stock: &StockReport,
) -> Vec<Check> {
    let mut out = Vec::new();

    // Every scan ended the way the day's script said it would.
    let problems: Vec<String> = scans
        .iter()
        .filter(|s| s.status != s.expected)
        .map(|s| {
            format!(
                "{} on {}: expected {}, got {} {} ({})",
                s.scan, s.line, s.expected, s.status, s.code, s.message
            )
        })
        .collect();
    out.push(check(
        "every scan ended as expected",
        problems,
        format!("{} scans", scans.len()),
    ));

    // Every written device's flash verifies to the CA's root and names its own id.
    let root = std::fs::read_to_string(ca_root.join("root.pem")).unwrap_or_default();
    let root_der = crate::pki::pem_blocks(&root, "CERTIFICATE").unwrap_or_default();
    let mut problems = Vec::new();
    let mut flash_fp = BTreeMap::new();
    for id in written {
        let verdict = (|| -> anyhow::Result<String> {
            let pack = read_flash(&devices.join(id))?;
            let identity = verify_pack(&pack)?;
            anyhow::ensure!(
                identity.id.to_string() == *id,
                "the flash holds {}",
                identity.id
            );
            let pack_root = crate::pki::pem_blocks(&pack.root_pem, "CERTIFICATE")?;
            anyhow::ensure!(
                !root_der.is_empty() && pack_root.first() == root_der.first(),
                "root.pem in the flash is not the CA's root"
            );
            pack.fingerprint()
        })();
        match verdict {
            Ok(fp) => {
                flash_fp.insert(id.clone(), fp);
            }
            Err(e) => problems.push(format!("{id}: {e:#}")),
        }
    }
    out.push(check(
        "every written device's flash verifies to the root and holds its own id",
        problems,
        format!("{} devices", written.len()),
    ));

    // Keys born in the device: never at the CA or the station, and each such
    // device's flash certificate is for the key in its secure element.
    out.push(device_keygen_check(written, g, devices));

    // No id has two valid certificates (the CA's ledger).
    let problems: Vec<String> = g
        .ledger
        .iter()
        .filter_map(|(id, h)| {
            let valid = h.iter().filter(|c| c.status == CertStatus::Valid).count();
            (valid > 1).then(|| format!("{id} has {valid} valid certificates"))
        })
        .collect();
    out.push(check(
        "no id has two valid certificates",
        problems,
        format!("{} planned ids in the CA's ledger", g.ledger.len()),
    ));

    // Stock and ledger agree: the station's live pack is the CA's valid certificate.
    let mut problems = Vec::new();
    for (id, history) in &g.ledger {
        let valid: BTreeSet<&str> = history
            .iter()
            .filter(|c| c.status == CertStatus::Valid)
            .map(|c| c.serial.as_str())
            .collect();
        let report = g.station.get(id);
        let live: BTreeSet<&str> = report
            .into_iter()
            .flat_map(|r| &r.packs)
            .filter(|p| p.state.is_live())
            .map(|p| p.serial.as_str())
            .collect();
        if valid != live {
            problems.push(format!("{id}: CA valid {valid:?}, station live {live:?}"));
        }
        let waiting = report.map(|r| r.waiting_for_ca.len()).unwrap_or(0);
        if waiting > 0 {
            problems.push(format!("{id}: {waiting} item(s) still wait for the CA"));
        }
    }
    out.push(check(
        "stock and ledger agree",
        problems,
        format!(
            "{} ids: the station's live pack is the CA's one valid certificate",
            g.ledger.len()
        ),
    ));

    // Each written device holds its id's valid certificate, except the reworked one.
    let mut problems = Vec::new();
    for (id, fp) in &flash_fp {
        let status = g
            .ledger
            .get(id)
            .and_then(|h| {
                h.iter()
                    .find(|c| c.fingerprint.as_deref() == Some(fp.as_str()))
            })
            .map(|c| c.status.as_str())
            .unwrap_or("not in the ledger");
        let want = if id == REWORKED { "revoked" } else { "valid" };
        if status != want {
            problems.push(format!(
                "{id}: the flash's certificate is {status}, expected {want}"
            ));
        }
    }
    out.push(check(
        "every device holds its id's valid certificate (the reworked one a revoked one)",
        problems,
        format!("{} devices", flash_fp.len()),
    ));

    // Retention: no written pack is left merely "written".
    let mut problems = Vec::new();
    for id in written {
        let packs = g.station.get(id).map(|r| r.packs.as_slice()).unwrap_or(&[]);
        if packs
            .iter()
            .any(|p| matches!(p.state, PackState::Written | PackState::Received))
        {
            problems.push(format!("{id}: a written pack was not flagged or deleted"));
        }
        for p in packs {
            if p.state == PackState::Deleted && p.key_held {
                problems.push(format!("{id}: a deleted pack still holds its key"));
            }
        }
    }
    out.push(check(
        "retention applied to every written pack",
        problems,
        "flagged or deleted, keys of deleted packs wiped".into(),
    ));

    // The discontinued model's leftovers: none in stock, every discarded one revoked.
    let mut problems = Vec::new();
    let left = stock_of(stock, DISCONTINUED).in_stock;
    if left > 0 {
        problems.push(format!("{left} {DISCONTINUED} pack(s) still in stock"));
    }
    let mut discarded = 0;
    for (id, report) in &g.station {
        if model_of(id) != DISCONTINUED {
            continue;
        }
        for p in &report.packs {
            if p.state == PackState::Discarded {
                discarded += 1;
                let serial = &p.serial;
                let revoked = g.ledger.get(id).is_some_and(|h| {
                    h.iter()
                        .any(|c| c.serial == *serial && c.status == CertStatus::Revoked)
                });
                if !revoked {
                    problems.push(format!(
                        "{id}: discarded pack {serial} is not revoked at the CA"
                    ));
                }
            }
        }
    }
    if discarded == 0 {
        problems.push(format!("no {DISCONTINUED} pack was discarded"));
    }
    out.push(check(
        "leftovers of the discontinued model discarded and revoked",
        problems,
        format!("{discarded} pack(s) of {DISCONTINUED}"),
    ));

    // The center told every device what the day should have led to.
    let mut problems = Vec::new();
    for r in center {
        if r.verdict != r.expected {
            problems.push(format!(
                "{}: {} ({}), expected {}",
                r.id,
                code(r.verdict),
                r.reason,
                code(r.expected)
            ));
        }
        let impersonating = r.reported_as != r.id;
        let report_ok =
            if impersonating || matches!(r.expected, Verdict::Revoked | Verdict::Unknown) {
                !r.report_accepted
            } else {
                r.report_accepted
            };
        if !report_ok {
            problems.push(format!(
                "{}: report as {} {}",
                r.id,
                r.reported_as,
                if r.report_accepted {
                    "accepted"
                } else {
                    "refused"
                }
            ));
        }
    }
    if !center
        .iter()
        .any(|r| r.reported_as != r.id && !r.report_accepted)
    {
        problems.push("no impersonation attempt was refused".into());
    }
    out.push(check(
        "the center's decisions match the day",
        problems,
        format!(
            "{} devices; the revoked, the stray and the impersonator were refused",
            center.len()
        ),
    ));

    // The audit logs' hash chains.
    let mut problems = Vec::new();
    if let Err(e) = &g.ca_audit_intact {
        problems.push(format!("CA: {e}"));
    }
    match &g.station_audit {
        Err(e) => problems.push(format!("station: {}", serde_json::json!({ "error": e }))),
        Ok(a) if !a.intact => problems.push(format!(
            "station: {}",
            serde_json::to_value(a).unwrap_or_default()
        )),
        Ok(_) => {}
    }
    out.push(check(
        "audit logs intact",
        problems,
        "CA and station hash chains verify".into(),
    ));
    out
}

/// The center started again on the demo's state (CRLs from the file the demo
/// wrote), and `openssl s_client` speaking as a written device.
fn try_center(dir: &Path) -> Vec<String> {
    let d = dir.display();
    let flash = format!("{d}/devices/3012-000001/flash");
    vec![
        format!(
            "certline center --dir {d}/center --listen 127.0.0.1:8445 --contracts {d}/center/contracts.csv --crl-file {d}/center/crl.pem &"
        ),
        format!(
            "printf 'GET /v1/status HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:8445 -CAfile {d}/ca/root.pem -cert {flash}/chain.pem -cert_chain {flash}/chain.pem -key {flash}/key.pem"
        ),
    ]
}
