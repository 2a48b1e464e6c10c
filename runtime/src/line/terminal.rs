//! One scan, every step: identify the device on the link, take its pack from
//! the station, write it through the model's plugin (write, read back,
//! fingerprint, proof of possession in one plugin session), commit the
//! results to the outbox and deliver them. Every step has a timeout; every
//! failure becomes one operator [`Report`].

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use zeroize::Zeroizing;

use super::config::LineConfig;
use super::outbox::{Flushed, Outbox, Outcome};
use super::workflow::{LineHost, Report, Status, Workflow};
use crate::link::{self, DeviceLink};
use crate::pki::credential::Credential;
use crate::pki::id::DeviceId;
use crate::pki::pack::Pack;
use crate::pki::role::Role;
use crate::plugin::folder::PluginFolder;
use crate::plugin::{Fault, Limits, OpError, PluginEngine, Precheck, WriteJob};
use crate::service::client::{ClientError, ServiceClient};
use crate::wire::station::{self as api, codes, TakeRequest, TakeResponse};

/// Everything built from one configuration. A reload builds a new one and
/// swaps it in only if it built.
pub struct Setup {
    pub config: LineConfig,
    pub client: ServiceClient,
    link_tls: Arc<rustls::ClientConfig>,
    pub plugins: Arc<PluginFolder>,
    /// The line's name in its credential.
    pub credential_name: String,
}

impl Setup {
    /// Builds and checks. The plugin folder of `previous` is kept when the
    /// folder and the time limit are the same (no recompiling).
    pub fn build(config: LineConfig, previous: Option<&Setup>) -> anyhow::Result<Setup> {
        let cred = Credential::load(&config.credential)?;
        if cred.role() != Role::Line {
            anyhow::bail!(
                "credential {} is a {} credential ({}); a line needs a line credential (certline ca enroll --role line)",
                config.credential.display(),
                cred.role(),
                cred.name()
            );
        }
        let client = ServiceClient::new(
            &config.station_url,
            &cred,
            Role::Station,
            config.station_timeout,
        )?;
        let link_tls = link::line_config(&cred)?;
        let plugins = match previous {
            Some(p)
                if p.config.plugin_dir == config.plugin_dir
                    && p.config.write_timeout == config.write_timeout =>
            {
                p.plugins.clone()
            }
            _ => {
                let engine = PluginEngine::new(Limits {
                    deadline: config.write_timeout,
                    ..Limits::default()
                })?;
                let folder = PluginFolder::open(&config.plugin_dir, engine)?;
                folder.watch()?;
                folder
            }
        };
        Ok(Setup {
            client,
            link_tls,
            plugins,
            credential_name: cred.name().to_string(),
            config,
        })
    }

    /// The model codes served, in order.
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .plugins
            .status()
            .into_iter()
            .flat_map(|p| p.models)
            .collect();
        models.sort();
        models
    }
}

/// The outbox and how to reach the station, shared with the retry thread.
pub struct Delivery {
    pub outbox: Mutex<Outbox>,
    pub client: RwLock<ServiceClient>,
    pub rt: tokio::runtime::Runtime,
}

impl Delivery {
    pub fn flush(&self) -> anyhow::Result<Flushed> {
        let client = self.client.read().unwrap().clone();
        self.outbox.lock().unwrap().flush(&client, &self.rt)
    }
}

/// Running totals for the shift (since the line started).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Shift {
    pub ok: u64,
    pub refused: u64,
    pub failed: u64,
}

impl Shift {
    pub fn count(&mut self, status: Status) {
        match status {
            Status::Ok => self.ok += 1,
            Status::Refused => self.refused += 1,
            Status::Failed => self.failed += 1,
        }
    }
}

/// The line: its current setup and workflow, the outbox, the shift count.
pub struct Terminal {
    pub setup: Setup,
    pub workflow: Box<dyn Workflow>,
    pub delivery: Arc<Delivery>,
    pub shift: Shift,
}

impl Terminal {
    /// One scan through the workflow; counts it for the shift.
    pub fn handle_scan(&mut self, scan: &str) -> Report {
        let started = Instant::now();
        let mut steps = Steps {
            setup: &self.setup,
            delivery: &self.delivery,
        };
        let mut report = self.workflow.on_scan(scan, &mut steps);
        if report.ms == 0.0 {
            report.ms = ms(started);
        }
        self.shift.count(report.status);
        report
    }

    /// Swaps in a new setup and workflow (already built and checked).
    pub fn replace(&mut self, setup: Setup, workflow: Box<dyn Workflow>) {
        *self.delivery.client.write().unwrap() = setup.client.clone();
        self.setup = setup;
        self.workflow = workflow;
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The host side of one scan.
struct Steps<'a> {
    setup: &'a Setup,
    delivery: &'a Delivery,
}

/// A step that failed, as the operator sees it.
struct Stop {
    status: Status,
    code: &'static str,
    message: String,
    next: String,
}

fn stop(status: Status, code: &'static str, message: String, next: &str) -> Stop {
    Stop {
        status,
        code,
        message,
        next: next.to_string(),
    }
}

impl LineHost for Steps<'_> {
    fn provision(&mut self, scan: &str, id: &DeviceId) -> Report {
        let started = Instant::now();
        let mut report = Report::refused(scan, Some(&id.to_string()), "", String::new(), "");
        match self.run(id, &mut report) {
            Ok(()) => {}
            Err(s) => {
                report.status = s.status;
                report.code = s.code.to_string();
                report.message = s.message;
                report.next = s.next;
            }
        }
        report.ms = ms(started);
        report
    }
}

impl Steps<'_> {
    fn run(&self, id: &DeviceId, report: &mut Report) -> Result<(), Stop> {
        let config = &self.setup.config;
        let mut at = Instant::now();
        let mut step = |report: &mut Report, name: &str| {
            report.steps.push((name.to_string(), ms(at)));
            at = Instant::now();
        };

        // 1. A plugin for the model, before anything else is touched.
        let plugin = self.setup.plugins.for_model(id.model()).ok_or_else(|| {
            stop(
                Status::Refused,
                "no_plugin",
                format!(
                    "this line has no device plugin for model {}; nothing was written",
                    id.model()
                ),
                "check the model code on the plate; if it is right, ask the line engineer to install the plugin for it",
            )
        })?;

        // 2. The device on the link, and who it says it is.
        let mut device: Box<dyn DeviceLink> = match link::connect(
            &config.device,
            self.setup.link_tls.clone(),
            config.connect_timeout,
        ) {
            Ok(l) => Box::new(l),
            Err(e) => {
                return Err(stop(
                    Status::Refused,
                    "device_unreachable",
                    format!("cannot reach the device ({e:#}); nothing was written"),
                    "check the cable and that the device is switched on, then scan it again",
                ))
            }
        };
        step(report, "connect");
        let result = self.with_device(id, plugin.as_ref(), &mut device, report, &mut step);
        device.close();
        result
    }

    fn with_device(
        &self,
        id: &DeviceId,
        plugin: &crate::plugin::Plugin,
        device: &mut Box<dyn DeviceLink>,
        report: &mut Report,
        step: &mut dyn FnMut(&mut Report, &str),
    ) -> Result<(), Stop> {
        let held = plugin.read_identity(device).map_err(|e| {
            let mut s = write_failure(&e, id);
            s.status = Status::Refused;
            s.message = format!(
                "the device did not say who it is: {}; nothing was written",
                s.message
            );
            s
        })?;
        step(report, "identify");
        if held.device_id != id.to_string() {
            return Err(stop(
                Status::Refused,
                "wrong_device",
                format!(
                    "the device on the cable says it is {}, but the scanned plate says {id}; nothing was written",
                    held.device_id
                ),
                "connect the device whose plate you scanned, or scan the plate of the device on the cable",
            ));
        }

        // 3. Its pack from the station.
        let pack = self.take(id)?;
        tracing::info!(target: "certline::line", %id, serial = %pack.serial, again = pack.again, "pack taken; writing it to the device");
        report.serial = Some(pack.serial.clone());
        step(report, "take");

        // 4. Write, read back, compare, prove possession: one plugin session.
        let job = match checked_job(&pack, id) {
            Ok(job) => job,
            Err(e) => {
                let reason = format!("the station handed out a pack the line cannot use: {e:#}");
                self.deliver(
                    id,
                    &pack.serial,
                    &[Outcome::Failed {
                        reason: reason.clone(),
                    }],
                    report,
                );
                return Err(stop(
                    Status::Failed,
                    "bad_pack",
                    format!("{reason}; nothing was written"),
                    "scan the device again for a fresh certificate; if it happens again, call the station administrator",
                ));
            }
        };
        let written = plugin.write(device, &job, Precheck::Skip);
        step(report, "write");

        // 5. The results: committed on the line, then delivered in order.
        match written {
            Ok(w) => {
                let fingerprint = w.read_back.fingerprint.unwrap_or_default();
                report.fingerprint = Some(fingerprint.clone());
                let kept = self.deliver(
                    id,
                    &pack.serial,
                    &[Outcome::Received, Outcome::Written { fingerprint }],
                    report,
                );
                step(report, "report");
                report.status = Status::Ok;
                report.code = "written".into();
                if kept {
                    report.message = format!(
                        "certificate {} written and verified; the station cannot be reached, so the result is kept on this line and sent when it is back",
                        short(&pack.serial)
                    );
                    report.next = "take the device off and connect the next one; tell the shift lead the station is down".into();
                } else {
                    report.message = format!(
                        "certificate {} written and verified; the station has the result",
                        short(&pack.serial)
                    );
                    report.next = "take the device off and connect the next one".into();
                }
                Ok(())
            }
            Err(e) => {
                let reason = e.to_string();
                let mut results = Vec::new();
                if e.received {
                    results.push(Outcome::Received);
                }
                results.push(Outcome::Failed { reason });
                self.deliver(id, &pack.serial, &results, report);
                step(report, "report");
                Err(write_failure(&e, id))
            }
        }
    }

    /// Takes the pack; a dropped keep-alive connection (the station
    /// restarted) gets one immediate retry, which the station answers with
    /// the same pack.
    fn take(&self, id: &DeviceId) -> Result<TakeResponse, Stop> {
        let request = TakeRequest { id: id.to_string() };
        let client = &self.setup.client;
        let rt = &self.delivery.rt;
        let mut answer: Result<TakeResponse, ClientError> =
            rt.block_on(client.post(api::TAKE, &request));
        if matches!(answer, Err(ClientError::Unreachable { .. })) {
            answer = rt.block_on(client.post(api::TAKE, &request));
        }
        answer.map_err(|e| take_refusal(&e, id, client.base()))
    }

    /// Commits `results` to the outbox and delivers everything waiting.
    /// Returns whether the results are kept for later (station unreachable).
    fn deliver(
        &self,
        id: &DeviceId,
        serial: &str,
        results: &[Outcome],
        report: &mut Report,
    ) -> bool {
        let mut outbox = self.delivery.outbox.lock().unwrap();
        if let Err(e) = outbox.push(&id.to_string(), serial, results) {
            // The line's own disk failed: deliver directly as a last resort.
            tracing::error!(%id, serial, "cannot keep the result on the line: {e:#}");
        }
        let client = self.delivery.client.read().unwrap().clone();
        let kept = match outbox.flush(&client, &self.delivery.rt) {
            Ok(f) => {
                for (item, why) in &f.refused {
                    tracing::error!(id = %item.id, serial = %item.serial, "result not accepted by the station: {why}");
                }
                f.stopped.is_some()
            }
            Err(e) => {
                tracing::error!("cannot deliver results: {e:#}");
                true
            }
        };
        report.result = Some(if kept { "kept" } else { "delivered" }.into());
        kept
    }
}

fn short(serial: &str) -> &str {
    &serial[..serial.len().min(12)]
}

fn checked_job(pack: &TakeResponse, id: &DeviceId) -> anyhow::Result<WriteJob> {
    let p = Pack {
        root_pem: pack.root_pem.clone(),
        chain_pem: pack.chain_pem.clone(),
        key_pem: Zeroizing::new(pack.key_pem.to_string()),
    };
    let job = WriteJob::new(&p)?;
    if job.device_id != *id {
        anyhow::bail!("its certificate names {}, not {id}", job.device_id);
    }
    if job.fingerprint != pack.fingerprint {
        anyhow::bail!(
            "its certificate is not the one the station says it is (fingerprint differs)"
        );
    }
    Ok(job)
}

fn take_refusal(e: &ClientError, id: &DeviceId, url: &str) -> Stop {
    let model = id.model();
    let refused = |code, message: String, next: &str| stop(Status::Refused, code, message, next);
    match e {
        ClientError::Unreachable { reason, .. } => refused(
            "station_unreachable",
            format!("the station at {url} cannot be reached ({reason}); nothing was written"),
            "leave the device connected; scan it again when the station is back (tell the shift lead)",
        ),
        ClientError::Garbage { reason, .. } => refused(
            "station_error",
            format!("the station gave an answer the line cannot read ({reason}); nothing was written"),
            "scan the device again; if it repeats, call the station administrator",
        ),
        ClientError::Refused { code, message, .. } => match code.as_str() {
            codes::NOT_IN_PLAN => refused(
                "not_in_plan",
                format!("{id} is not in the production plan; nothing was written"),
                "check the plate; set the device aside and ask the shift lead",
            ),
            codes::NOT_PLANNED_TODAY => refused(
                "not_planned_today",
                format!("{id} is planned for another day, not today; nothing was written"),
                "set the device aside and ask the shift lead (the station administrator can authorise it)",
            ),
            codes::UNKNOWN_MODEL => refused(
                "unknown_model",
                format!("the station does not know model {model}; nothing was written"),
                "check the model code on the plate; if it is right, ask the station administrator to add the model",
            ),
            codes::NO_CERTIFICATE_MODEL => refused(
                "no_certificate_model",
                format!("model {model} is built without a certificate; nothing to write"),
                "take the device off and connect the next one",
            ),
            codes::NOT_IN_STOCK => refused(
                "not_in_stock",
                format!("the station has no certificate for {id} yet (not fetched); nothing was written"),
                "set the device aside and ask the station administrator to run today's fetch",
            ),
            codes::REPLACEMENT_PENDING => refused(
                "replacement_pending",
                format!("the fresh certificate for {id} is still on its way from the CA; nothing was written"),
                "wait a minute, then scan the device again",
            ),
            codes::ALREADY_WRITTEN => refused(
                "already_written",
                format!("{id} already has its certificate (written earlier); nothing was changed"),
                "take the device off and connect the next one; if it must be written again, ask the station administrator for a rework",
            ),
            codes::HANDED_OUT_ELSEWHERE => refused(
                "handed_out_elsewhere",
                format!("{id} is being written on another line; nothing was written"),
                "check the plate; if it is right, let the other line finish first",
            ),
            codes::DISCARDED => refused(
                "discarded",
                format!("the certificate for {id} was discarded by the station administrator; nothing was written"),
                "set the device aside and ask the station administrator",
            ),
            codes::QUARANTINED => refused(
                "quarantined",
                format!("the station's stored certificate for {id} is damaged and kept out of use; nothing was written"),
                "set the device aside and ask the station administrator",
            ),
            codes::WRONG_STATE => refused(
                "wrong_state",
                format!("the station has a result pending for {id} ({message}); nothing was written"),
                "wait a minute, then scan the device again",
            ),
            _ => refused(
                "station_refused",
                format!("the station refused {id}: {message} ({code}); nothing was written"),
                "set the device aside and call the station administrator",
            ),
        },
    }
}

/// A failed device operation in an operator's words.
fn write_failure(e: &OpError, id: &DeviceId) -> Stop {
    let failed = |code, message: String, next: &str| stop(Status::Failed, code, message, next);
    let retry = "scan the device again to write a fresh certificate; if it fails again, set it aside for repair";
    match &e.fault {
        Fault::Link { failure, .. } => match failure {
            link::LinkFailure::Timeout => failed(
                "device_timeout",
                format!("the device stopped answering during the write ({e})"),
                "check the cable and the device, then scan it again to write a fresh certificate",
            ),
            _ => failed(
                "link_dropped",
                format!("the connection to the device dropped during the write ({e})"),
                "check the cable, then scan the device again to write a fresh certificate",
            ),
        },
        Fault::Device { reason, .. } => failed(
            "device_refused",
            format!("the device refused the write: {reason}"),
            retry,
        ),
        Fault::Protocol { detail, .. } => failed(
            "device_protocol",
            format!("the device answered something its plugin cannot understand: {detail}"),
            retry,
        ),
        Fault::WrongDevice { found, .. } => failed(
            "wrong_device",
            format!("the device on the cable says it is {found}, but the plate says {id}"),
            "connect the device whose plate you scanned, or scan the plate of the device on the cable",
        ),
        Fault::ReadBack { detail } => failed(
            "readback_mismatch",
            format!("the device did not keep the certificate correctly: {detail}"),
            retry,
        ),
        Fault::Possession { detail } => failed(
            "possession_failed",
            format!("the device could not prove it holds the new key: {detail}"),
            retry,
        ),
        Fault::Trap { .. }
        | Fault::OutOfFuel { .. }
        | Fault::Memory { .. }
        | Fault::Malformed { .. }
        | Fault::Host(_) => failed(
            "plugin_fault",
            format!("the device plugin failed: {e}"),
            &format!(
                "set the device aside and call the line engineer (the plugin for model {} needs fixing)",
                id.model()
            ),
        ),
    }
}

/// Builds the terminal for `config` (credential, station client, plugins,
/// workflow, outbox).
pub fn open(config: LineConfig) -> anyhow::Result<Terminal> {
    let setup = Setup::build(config, None)?;
    let outbox = Outbox::open(&setup.config.state_dir)?;
    let workflow = super::workflow::from_config(&setup.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the network runtime")?;
    let delivery = Arc::new(Delivery {
        outbox: Mutex::new(outbox),
        client: RwLock::new(setup.client.clone()),
        rt,
    });
    Ok(Terminal {
        setup,
        workflow,
        delivery,
        shift: Shift::default(),
    })
}
