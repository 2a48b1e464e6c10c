//! `certline line --config FILE`: the line's main loop. Scans, configuration
//! changes and the end of input arrive as events on one channel and are
//! handled one at a time; a retry thread delivers kept results while the
//! station is away.
//!
//! Configuration reload, WezTerm style: on a change of the file, build the new
//! setup completely (credential, station client, plugins, scanner, workflow),
//! and only if everything built, swap it in for the next scan. A broken edit is
//! refused with the error; the previous configuration keeps running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use serde::Serialize;
use serde_json::json;

use super::config::LineConfig;
use super::outbox::{Flushed, Outcome};
use super::terminal::{self, Delivery, Setup, Shift, Terminal};
use super::workflow::Report;
use crate::plugin::folder::PluginStatus;
use crate::scanner::{Debounce, ScanEvent, Scanner};
use crate::script::{Reload, ScriptStatus};
use crate::text::{printable, printable_json};

/// How often the main loop looks whether the plugin folder reloaded.
const PLUGIN_POLL: Duration = Duration::from_millis(250);

/// How long the config file must be quiet before a reload.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);

enum Event {
    Scan(crate::scanner::Scan),
    ScannerEnded(String),
    ConfigChanged,
    /// The workflow's script was reloaded (or an edit refused).
    Script(ScriptStatus, Reload),
}

/// What the running line serves (its script and plugins), kept in the state
/// folder for `certline line status`; rewritten at start and at every reload.
pub const SERVING_FILE: &str = "serving.json";

/// The content of [`SERVING_FILE`].
#[derive(Debug, Serialize)]
pub struct Serving {
    pub line: String,
    /// The process that wrote it.
    pub pid: u32,
    /// Unix seconds.
    pub at: i64,
    /// The workflow: "built-in ..." or the script.
    pub workflow: String,
    pub script: Option<ScriptStatus>,
    pub plugins: Vec<PluginStatus>,
    /// Plugin files not served (or not in their newest version), and why.
    pub refused_plugins: std::collections::BTreeMap<PathBuf, String>,
}

fn write_serving(terminal: &Terminal) {
    let setup = &terminal.setup;
    let serving = Serving {
        line: setup.config.name.clone(),
        pid: std::process::id(),
        at: time::OffsetDateTime::now_utc().unix_timestamp(),
        workflow: terminal.workflow.name(),
        script: terminal.workflow.script(),
        plugins: setup.plugins.status(),
        refused_plugins: setup.plugins.refused(),
    };
    let path = setup.config.state_dir.join(SERVING_FILE);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec_pretty(&serving)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(std::fs::write(&tmp, bytes)?))
        .and_then(|()| Ok(std::fs::rename(&tmp, &path)?));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), "cannot record what the line serves: {e:#}");
    }
}

/// Sends the workflow's script reloads to the main loop, to be announced at once.
fn listen(workflow: &dyn super::workflow::Workflow, tx: &Sender<Event>) {
    let tx = std::sync::Mutex::new(tx.clone());
    workflow.on_reload(Box::new(move |status, what| {
        let _ = tx
            .lock()
            .unwrap()
            .send(Event::Script(status.clone(), what.clone()));
    }));
}

/// A script reload in the operator's words: `line.lua version N now serving`.
fn script_reload_line(status: &ScriptStatus, what: &Reload) -> (&'static str, String) {
    let name = status
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| status.file.display().to_string());
    let v = status.version;
    match what {
        Reload::Loaded { .. } => ("script_reloaded", format!("{name} version {v} now serving")),
        Reload::Refused(why) => (
            "script_refused",
            format!("{name} edit refused, version {v} keeps serving: {why}"),
        ),
        Reload::Unchanged => (
            "script_reloaded",
            format!("{name} is back to version {v}, which serves (the refused edit was undone)"),
        ),
    }
}

/// The plugins served, in one line.
fn plugins_line(plugins: &[PluginStatus]) -> String {
    if plugins.is_empty() {
        return "no plugins serving".into();
    }
    let list: Vec<String> = plugins
        .iter()
        .map(|p| {
            format!(
                "{} {} ({}, models {})",
                p.name,
                p.version,
                p.file.display(),
                p.models.join(" ")
            )
        })
        .collect();
    format!("plugins now serving: {}", list.join("; "))
}

/// Where operator lines go: stdout, as text or one JSON object a line. Every
/// line is also a structured log event (tracing) for the factory's systems.
/// Whatever came from outside (the scan, a device's or plugin's answer, a
/// script's message) passes [`printable`] on its way out, so a barcode
/// cannot send escape sequences to the operator's terminal.
#[derive(Clone, Copy)]
pub struct Console {
    pub json: bool,
}

impl Console {
    /// An event that is not a device result (ready, reload, delivery, end).
    pub fn say(&self, event: &str, text: &str, extra: serde_json::Value) {
        let text = printable(text);
        tracing::info!(target: "certline::line", event, "{text}");
        let mut out = std::io::stdout().lock();
        if self.json {
            let mut v = json!({ "event": event, "message": text });
            if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
                obj.extend(more);
            }
            printable_json(&mut v);
            let _ = writeln!(out, "{v}");
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }

    /// The operator line of one device.
    pub fn report(&self, report: &Report, shift: &Shift) {
        let report = &printable_report(report);
        let who = report.id.as_deref().unwrap_or(&report.scan);
        match report.status {
            super::workflow::Status::Ok => tracing::info!(
                target: "certline::line",
                event = "device",
                id = who,
                status = report.status.word(),
                code = %report.code,
                fields = %serde_json::to_string(&report.fields).unwrap_or_default(),
                serial = report.serial.as_deref().unwrap_or(""),
                result = report.result.as_deref().unwrap_or(""),
                ms = report.ms,
                "{}", report.message
            ),
            _ => tracing::warn!(
                target: "certline::line",
                event = "device",
                id = who,
                status = report.status.word(),
                code = %report.code,
                fields = %serde_json::to_string(&report.fields).unwrap_or_default(),
                serial = report.serial.as_deref().unwrap_or(""),
                result = report.result.as_deref().unwrap_or(""),
                ms = report.ms,
                "{}", report.message
            ),
        }
        let mut out = std::io::stdout().lock();
        if self.json {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("event".into(), "device".into());
                obj.insert(
                    "shift".into(),
                    serde_json::to_value(shift).unwrap_or_default(),
                );
            }
            printable_json(&mut v);
            let _ = writeln!(out, "{v}");
        } else {
            let _ = writeln!(
                out,
                "{who}: {} - {}. Next: {}. [shift: {} OK, {} refused, {} failed]",
                report.status.word(),
                report.message,
                report.next,
                shift.ok,
                shift.refused,
                shift.failed
            );
        }
        let _ = out.flush();
    }

    /// Says what a delivery round did, if it did anything.
    pub fn flushed(&self, f: &Flushed) {
        if !f.delivered.is_empty() {
            let ids: Vec<String> = f
                .delivered
                .iter()
                .map(|(i, _)| format!("{} {}", i.id, i.result_kind()))
                .collect();
            self.say(
                "delivered",
                &format!(
                    "sent {} kept result(s) to the station ({}); {} still waiting",
                    f.delivered.len(),
                    ids.join(", "),
                    f.left
                ),
                json!({ "delivered": f.delivered.len(), "left": f.left, "results": ids }),
            );
        }
        for (item, why) in &f.refused {
            self.say(
                "result_refused",
                &format!(
                    "the station did not accept the {} result of {} (certificate {}): {why}; tell the station administrator",
                    item.result_kind(),
                    item.id,
                    item.serial
                ),
                json!({ "id": item.id, "serial": item.serial, "answer": why }),
            );
        }
    }
}

/// A device line with every text field made [`printable`].
fn printable_report(report: &Report) -> Report {
    let p = |s: &str| printable(s).into_owned();
    let po = |s: &Option<String>| s.as_deref().map(p);
    Report {
        scan: p(&report.scan),
        id: po(&report.id),
        status: report.status,
        code: p(&report.code),
        message: p(&report.message),
        next: p(&report.next),
        serial: po(&report.serial),
        fingerprint: po(&report.fingerprint),
        result: po(&report.result),
        steps: report.steps.iter().map(|(n, ms)| (p(n), *ms)).collect(),
        ms: report.ms,
        fields: report.fields.iter().map(|(k, v)| (p(k), p(v))).collect(),
    }
}

fn watch_config(file: &Path, tx: Sender<Event>) -> anyhow::Result<impl Drop> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = file.file_name().map(|n| n.to_os_string());
    let mut debouncer = new_debouncer(RELOAD_DEBOUNCE, None, move |result: DebounceEventResult| {
        let relevant = match result {
            Ok(events) => events.iter().any(|e| {
                matches!(
                    e.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                ) && e
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
            }),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(Event::ConfigChanged);
        }
    })
    .context("cannot start watching the line configuration")?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    Ok(debouncer)
}

fn start_scanner(config: &LineConfig, tx: &Sender<Event>) -> anyhow::Result<Scanner> {
    let tx = tx.clone();
    Scanner::start(&config.scanner, move |e| {
        let _ = tx.send(match e {
            ScanEvent::Scan(s) => Event::Scan(s),
            ScanEvent::Ended(why) => Event::ScannerEnded(why),
        });
    })
}

fn ready_line(setup: &Setup, workflow: &str) -> (String, serde_json::Value) {
    let c = &setup.config;
    let models = setup.models();
    (
        format!(
            "line {} ready: station {}, device {}, scanner {}, models {}, workflow: {workflow}",
            c.name,
            c.station_url,
            c.device,
            c.scanner,
            if models.is_empty() {
                "(none)".to_string()
            } else {
                models.join(" ")
            }
        ),
        json!({
            "line": c.name,
            "station": c.station_url,
            "device": c.device.to_string(),
            "scanner": c.scanner.to_string(),
            "models": models,
            "workflow": workflow,
        }),
    )
}

pub fn run(file: &Path, json_out: bool) -> anyhow::Result<()> {
    let console = Console { json: json_out };
    let config = LineConfig::load(file)?;
    let mut terminal = terminal::open(config)?;
    for (plugin, why) in terminal.setup.plugins.refused() {
        console.say(
            "plugin_refused",
            &format!("plugin {} not used: {why}", plugin.display()),
            json!({ "plugin": plugin }),
        );
    }
    let (tx, rx) = channel();
    let mut scanner = start_scanner(&terminal.setup.config, &tx)?;
    let _watcher = watch_config(file, tx.clone())?;
    let mut last_text = std::fs::read(file).unwrap_or_default();

    let (text, extra) = ready_line(&terminal.setup, &terminal.workflow.name());
    listen(terminal.workflow.as_ref(), &tx);
    write_serving(&terminal);
    let mut plugin_generation = terminal.setup.plugins.generation();
    console.say("ready", &text, extra);

    // Writes an earlier run started and never recorded (it was stopped
    // between the device's answer and the outbox).
    for (w, results) in terminal.resume() {
        let (kind, text) = match results.last() {
            Some(Outcome::Written { .. }) => (
                "written",
                format!(
                    "the line had stopped during the write of {}; the device holds certificate {} and proved it can use its key: recorded as written",
                    w.id, w.serial
                ),
            ),
            Some(Outcome::Failed { reason }) => (
                "failed",
                format!(
                    "the line had stopped during the write of {} (certificate {}); recorded as failed: {reason}. Scan the device again to write a fresh certificate",
                    w.id, w.serial
                ),
            ),
            _ => ("received", format!("the write of {} was resumed", w.id)),
        };
        console.say(
            "resumed",
            &text,
            json!({ "id": w.id, "serial": w.serial, "result": kind }),
        );
    }

    // Results kept from before (a station outage, a restart of the line).
    let waiting = terminal.delivery.outbox.lock().unwrap().pending_count()?;
    if waiting > 0 {
        console.say(
            "kept",
            &format!(
                "{waiting} result(s) from before are waiting for the station; sending them now"
            ),
            json!({ "waiting": waiting }),
        );
    }
    let retry_ms = Arc::new(AtomicU64::new(
        terminal.setup.config.retry.as_millis() as u64
    ));
    let stopping = Arc::new(AtomicBool::new(false));
    let retry_thread = spawn_retry(
        terminal.delivery.clone(),
        retry_ms.clone(),
        stopping.clone(),
        console,
    );
    if waiting > 0 {
        report_flush(&console, terminal.delivery.flush());
    }

    let mut debounce = Debounce::new(terminal.setup.config.debounce);
    let end = loop {
        let event = match rx.recv_timeout(PLUGIN_POLL) {
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // The plugin folder reloads on its own thread; say what
                // serves now once it changed.
                let generation = terminal.setup.plugins.generation();
                if generation != plugin_generation {
                    plugin_generation = generation;
                    write_serving(&terminal);
                    let status = terminal.setup.plugins.status();
                    let refused = terminal.setup.plugins.refused();
                    console.say(
                        "plugins_reloaded",
                        &plugins_line(&status),
                        json!({ "plugins": status, "refused": refused }),
                    );
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break "all inputs closed".to_string();
            }
        };
        match event {
            Event::Script(status, what) => {
                let (event, text) = script_reload_line(&status, &what);
                write_serving(&terminal);
                console.say(
                    event,
                    &text,
                    json!({ "script": status.file, "version": status.version, "sha256": status.sha256,
                            "refused": status.refused.as_ref().map(|r| &r.message) }),
                );
            }
            Event::Scan(scan) => {
                if !debounce.accept(&scan) {
                    tracing::info!(target: "certline::line", code = %printable(&scan.code), "double trigger ignored (same code within the debounce time)");
                    continue;
                }
                let report = terminal.handle_scan(&scan.code);
                console.report(&report, &terminal.shift);
            }
            Event::ScannerEnded(why) => break why,
            Event::ConfigChanged => {
                let text = std::fs::read(file).unwrap_or_default();
                if text == last_text {
                    continue;
                }
                last_text = text;
                match reload(file, &terminal, &tx) {
                    Ok((setup, workflow, new_scanner)) => {
                        if let Some(s) = new_scanner {
                            scanner = s;
                        }
                        debounce.set_window(setup.config.debounce);
                        retry_ms.store(setup.config.retry.as_millis() as u64, Ordering::SeqCst);
                        let (text, extra) = ready_line(&setup, &workflow.name());
                        listen(workflow.as_ref(), &tx);
                        terminal.replace(setup, workflow);
                        write_serving(&terminal);
                        plugin_generation = terminal.setup.plugins.generation();
                        console.say("reloaded", &format!("configuration reloaded; {text}"), extra);
                    }
                    Err(e) => console.say(
                        "reload_refused",
                        &format!(
                            "configuration change refused, the previous configuration stays in use: {e:#}"
                        ),
                        json!({ "error": format!("{e:#}") }),
                    ),
                }
            }
        }
    };
    drop(scanner);
    stopping.store(true, Ordering::SeqCst);
    let _ = retry_thread.join();
    let last = terminal.delivery.flush();
    report_flush(&console, last);
    let left = terminal.delivery.outbox.lock().unwrap().pending_count()?;
    let s = terminal.shift;
    console.say(
        "end",
        &format!(
            "line {} stopping ({end}): shift {} OK, {} refused, {} failed; {left} result(s) kept for the station",
            terminal.setup.config.name, s.ok, s.refused, s.failed
        ),
        json!({ "shift": s, "kept": left }),
    );
    Ok(())
}

fn report_flush(console: &Console, result: anyhow::Result<Flushed>) {
    match result {
        Ok(f) => console.flushed(&f),
        Err(e) => console.say(
            "outbox_error",
            &format!("cannot deliver kept results: {e:#}"),
            json!({}),
        ),
    }
}

/// Retries kept results every `retry_ms` while any are waiting.
fn spawn_retry(
    delivery: Arc<Delivery>,
    retry_ms: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    console: Console,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut slept = 0u64;
        while !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            slept += 50;
            if slept < retry_ms.load(Ordering::SeqCst) {
                continue;
            }
            slept = 0;
            let waiting = delivery.outbox.lock().unwrap().pending_count().unwrap_or(0);
            if waiting > 0 {
                report_flush(&console, delivery.flush());
            }
        }
    })
}

type Reloaded = (Setup, Box<dyn super::workflow::Workflow>, Option<Scanner>);

/// Builds everything the new file asks for; nothing is swapped here.
fn reload(file: &Path, terminal: &Terminal, tx: &Sender<Event>) -> anyhow::Result<Reloaded> {
    let config = LineConfig::load(file)?;
    let old = &terminal.setup.config;
    if config.state_dir != old.state_dir {
        anyhow::bail!(
            "state_dir changed from {} to {}: the outbox cannot move while the line runs; restart the line to move it",
            old.state_dir.display(),
            config.state_dir.display()
        );
    }
    let scanner_changed = config.scanner != old.scanner;
    let setup = Setup::build(config, Some(&terminal.setup))?;
    let workflow = super::workflow::from_config(&setup.config)?;
    let scanner = if scanner_changed {
        Some(start_scanner(&setup.config, tx)?)
    } else {
        None
    };
    Ok((setup, workflow, scanner))
}

/// `certline line status`: what waits in the outbox and what was delivered.
pub fn status(file: &Path, json_out: bool, last: usize) -> anyhow::Result<()> {
    let config = LineConfig::load(file)?;
    let state: PathBuf = config.state_dir.clone();
    if !state.join(super::outbox::FILE).exists() {
        anyhow::bail!(
            "line {} has no outbox yet in {} (it has never run)",
            config.name,
            state.display()
        );
    }
    let outbox = super::outbox::Outbox::open(&state)?;
    let pending = outbox.pending()?;
    let delivered = outbox.delivered(last)?;
    let serving = read_serving(&state);
    let value = json!({
        "line": config.name,
        "outbox": state.join(super::outbox::FILE),
        "waiting": pending,
        "delivered": delivered,
        "serving": serving,
    });
    crate::command::emit(json_out, &value, || {
        println!(
            "line {}: {} result(s) waiting for the station",
            config.name,
            pending.len()
        );
        print_serving(&serving);
        for i in &pending {
            println!(
                "  #{} {} {} certificate {} (queued {}, {} attempt(s){})",
                i.seq,
                i.id,
                i.result_kind(),
                i.serial,
                i.queued_at,
                i.attempts,
                i.last_error
                    .as_deref()
                    .map(|e| format!(", last: {}", printable(e)))
                    .unwrap_or_default()
            );
        }
        println!("last {} delivered:", delivered.len());
        for d in &delivered {
            println!(
                "  #{} {} {} certificate {}: {}",
                d["seq"],
                d["id"].as_str().unwrap_or(""),
                d["kind"].as_str().unwrap_or(""),
                d["serial"].as_str().unwrap_or(""),
                printable(d["answer"].as_str().unwrap_or(""))
            );
        }
    })
}

/// [`SERVING_FILE`] as the last run wrote it, with whether that run is still
/// going (`running`); null if the line never wrote one.
fn read_serving(state: &Path) -> serde_json::Value {
    let Ok(bytes) = std::fs::read(state.join(SERVING_FILE)) else {
        return serde_json::Value::Null;
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return serde_json::Value::Null;
    };
    let running = v["pid"]
        .as_u64()
        .and_then(|p| i32::try_from(p).ok())
        // Signal 0 only asks whether the process exists.
        .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
    v["running"] = running.into();
    v
}

fn print_serving(serving: &serde_json::Value) {
    if serving.is_null() {
        println!("serving: unknown (this line has not run since it learnt to say)");
        return;
    }
    let when = if serving["running"] == true {
        "serving now"
    } else {
        "served when the line last ran"
    };
    println!(
        "{when}: workflow {}",
        printable(serving["workflow"].as_str().unwrap_or("?"))
    );
    if let Some(script) = serving["script"].as_object() {
        println!(
            "  script {} version {} (sha256 {})",
            printable(script.get("file").and_then(|f| f.as_str()).unwrap_or("?")),
            script.get("version").cloned().unwrap_or_default(),
            script.get("sha256").and_then(|f| f.as_str()).unwrap_or("?")
        );
        if let Some(why) = script.get("refused").and_then(|r| r["message"].as_str()) {
            println!("  its newest edit was refused: {}", printable(why));
        }
    }
    for p in serving["plugins"].as_array().into_iter().flatten() {
        println!(
            "  plugin {} version {} ({}, interface {}, models {})",
            printable(p["name"].as_str().unwrap_or("?")),
            printable(p["version"].as_str().unwrap_or("?")),
            printable(p["file"].as_str().unwrap_or("?")),
            p["interface"].as_str().unwrap_or("?"),
            p["models"]
                .as_array()
                .map(|m| m
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        );
    }
    if let Some(refused) = serving["refused_plugins"].as_object() {
        for (file, why) in refused {
            println!(
                "  plugin file {} not served: {}",
                printable(file),
                printable(why.as_str().unwrap_or("?"))
            );
        }
    }
}
