//! One scan, every step: identify the device on the link, take its pack from
//! the station, write it through the model's plugin (write, read back,
//! fingerprint, proof of possession in one plugin session), commit the
//! results to the outbox and deliver them. Every step has a timeout; every
//! failure becomes one operator [`Report`] (worded in `stop.rs`).
//!
//! For a model whose devices generate their own key (`keygen = "device"` in
//! the factory's `factory.toml`), the take is replaced by: the device
//! generates a key and answers a CSR (checked here: signature, algorithm),
//! the station has the CA sign it; the write then installs the certificate
//! for the key the device holds, and the proof of possession with a fresh
//! challenge shows the device holds that key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::config::LineConfig;
use super::outbox::{Flushed, Interrupted, Outbox, Outcome};
use super::stop::{stop, take_refusal, write_failure, Stop};
use super::workflow::{LineHost, Report, Status, Workflow};
use crate::link::{self, DeviceLink};
use crate::pki::credential::Credential;
use crate::pki::id::DeviceId;
use crate::pki::pack::Pack;
use crate::pki::profile::{KeyAlgorithm, Keygen};
use crate::pki::role::Role;
use crate::plugin::folder::PluginFolder;
use crate::plugin::{Limits, PluginEngine, Precheck, WriteJob};
use crate::script::factory::FactoryConfig;
use crate::service::client::{ClientError, ServiceClient};
use crate::wire::station::{self as api, SignRequest, TakeRequest, TakeResponse};
use base64::Engine;

/// Everything built from one configuration. A reload builds a new one and
/// swaps it in only if it built.
pub struct Setup {
    pub config: LineConfig,
    pub client: ServiceClient,
    link_tls: Arc<rustls::ClientConfig>,
    pub plugins: Arc<PluginFolder>,
    /// The line's name in its credential.
    pub credential_name: String,
    /// Models whose devices generate their own key, with the key algorithm
    /// of their profile (from the factory's `factory.toml`).
    pub device_keygen: BTreeMap<String, KeyAlgorithm>,
}

/// The device-keygen models of the factory the line's scripts belong to.
fn device_keygen_models(config: &LineConfig) -> anyhow::Result<BTreeMap<String, KeyAlgorithm>> {
    let Some(file) = &config.factory_file else {
        return Ok(BTreeMap::new());
    };
    Ok(FactoryConfig::read(file)?
        .models
        .into_iter()
        .filter(|(_, m)| m.certificate && m.keygen == Keygen::Device)
        .map(|(code, m)| (code, m.profile.key))
        .collect())
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
        let device_keygen = device_keygen_models(&config)?;
        for model in device_keygen.keys() {
            if let Some(Err(refusal)) = plugins
                .for_model(model)
                .map(|p| p.check_device_keygen(model))
            {
                tracing::warn!(target: "certline::line", "refused for model {model}: {refusal}");
            }
        }
        Ok(Setup {
            client,
            link_tls,
            plugins,
            credential_name: cred.name().to_string(),
            config,
            device_keygen,
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

    /// Finishes the writes an earlier run of the line started and never
    /// recorded (it stopped between the device's answer and the outbox): asks
    /// the device on the cable whether it holds the certificate and can use
    /// its key, and commits "written" if so, "failed" otherwise (the station
    /// then revokes it and stocks a fresh one; scanning the device again
    /// writes that). Returns each write with what was decided, in words.
    pub fn resume(&self) -> Vec<(Interrupted, Vec<Outcome>)> {
        let pending = match self.delivery.outbox.lock().unwrap().interrupted() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot read interrupted writes from the outbox: {e:#}");
                return Vec::new();
            }
        };
        let steps = Steps {
            setup: &self.setup,
            delivery: &self.delivery,
        };
        let mut done = Vec::new();
        for w in pending {
            let results = match steps.check_interrupted(&w) {
                Ok(fingerprint) => vec![
                    Outcome::Received,
                    Outcome::Written {
                        fingerprint,
                        fields: w.fields.clone(),
                    },
                ],
                Err(why) => vec![Outcome::Failed {
                    reason: format!(
                        "the line stopped during the write and cannot confirm it: {why}"
                    ),
                }],
            };
            if let Err(e) = self
                .delivery
                .outbox
                .lock()
                .unwrap()
                .push(&w.id, &w.serial, &results)
            {
                tracing::error!(id = %w.id, serial = %w.serial, "cannot keep the result on the line: {e:#}");
                continue;
            }
            done.push((w, results));
        }
        done
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

impl LineHost for Steps<'_> {
    fn provision(
        &mut self,
        scan: &str,
        id: &DeviceId,
        fields: &BTreeMap<String, String>,
    ) -> Report {
        let started = Instant::now();
        let mut report = Report::refused(scan, Some(&id.to_string()), "", String::new(), "");
        match self.run(id, fields, &mut report) {
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
    fn run(
        &self,
        id: &DeviceId,
        fields: &BTreeMap<String, String>,
        report: &mut Report,
    ) -> Result<(), Stop> {
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
        if self.setup.device_keygen.contains_key(id.model()) {
            plugin.check_device_keygen(id.model()).map_err(|refusal| {
                stop(
                    Status::Refused,
                    "plugin_too_old",
                    format!("{refusal}; nothing was written"),
                    "set the device aside and call the line engineer (the plugin for this model needs a newer interface)",
                )
            })?;
        }

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
        let result = self.with_device(id, fields, plugin.as_ref(), &mut device, report, &mut step);
        device.close();
        result
    }

    fn with_device(
        &self,
        id: &DeviceId,
        fields: &BTreeMap<String, String>,
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

        // 3. Its pack from the station; or, for a key born in the device,
        // the device's CSR signed through the station.
        let pack = match self.setup.device_keygen.get(id.model()) {
            None => self.take(id)?,
            Some(algorithm) => {
                let csr = plugin.generate_key(device, id, *algorithm).map_err(|e| {
                    let mut s = write_failure(&e, id);
                    if s.status == Status::Failed {
                        // Nothing was signed: nothing to report to the station.
                        s.status = Status::Refused;
                        s.message = format!(
                            "the device did not give a usable key request: {}; nothing was signed or written",
                            s.message
                        );
                    }
                    s
                })?;
                step(report, "keygen");
                self.sign(id, &csr)?
            }
        };
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
        // Noted before the device sees the pack: a line that dies before the
        // results are committed finds the write on restart (`resume`).
        if let Err(e) = self.delivery.outbox.lock().unwrap().begin_write(
            &id.to_string(),
            &pack.serial,
            job.cert_der(),
            fields,
        ) {
            tracing::error!(%id, serial = %pack.serial, "cannot note the write on the line: {e:#}");
        }
        let written = plugin.write(device, &job, Precheck::Skip);
        step(report, "write");
        crate::failpoint::point("line", "line-written-before-outbox");

        // 5. The results: committed on the line, then delivered in order.
        match written {
            Ok(w) => {
                let fingerprint = w.read_back.fingerprint.unwrap_or_default();
                report.fingerprint = Some(fingerprint.clone());
                let kept = self.deliver(
                    id,
                    &pack.serial,
                    &[
                        Outcome::Received,
                        Outcome::Written {
                            fingerprint,
                            fields: fields.clone(),
                        },
                    ],
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

    /// Has the station get the device's CSR signed by the CA; a dropped
    /// keep-alive connection gets one immediate retry (the station answers
    /// it by superseding what the first attempt signed).
    fn sign(&self, id: &DeviceId, csr: &[u8]) -> Result<TakeResponse, Stop> {
        let request = SignRequest {
            id: id.to_string(),
            csr: base64::engine::general_purpose::STANDARD.encode(csr),
        };
        let client = &self.setup.client;
        let rt = &self.delivery.rt;
        let mut answer: Result<TakeResponse, ClientError> =
            rt.block_on(client.post(api::SIGN, &request));
        if matches!(answer, Err(ClientError::Unreachable { .. })) {
            answer = rt.block_on(client.post(api::SIGN, &request));
        }
        answer.map_err(|e| take_refusal(&e, id, client.base()))
    }

    /// Whether the device on the cable holds the interrupted write's
    /// certificate and can use its key; its fingerprint if so, else why not.
    fn check_interrupted(&self, w: &Interrupted) -> Result<String, String> {
        let id = DeviceId::parse(&w.id).map_err(|e| e.to_string())?;
        let der = crate::pki::pem_blocks(&w.certificate, "CERTIFICATE")
            .ok()
            .and_then(|mut b| (!b.is_empty()).then(|| b.remove(0)))
            .ok_or("the outbox holds no readable certificate for it")?;
        let plugin = self.setup.plugins.for_model(id.model()).ok_or_else(|| {
            format!(
                "no device plugin for model {} to ask the device",
                id.model()
            )
        })?;
        let config = &self.setup.config;
        let mut device: Box<dyn DeviceLink> = Box::new(
            link::connect(
                &config.device,
                self.setup.link_tls.clone(),
                config.connect_timeout,
            )
            .map_err(|e| format!("cannot reach the device ({e:#})"))?,
        );
        let checked = plugin.verify(&mut device, &id, &der);
        device.close();
        let held = checked.map_err(|e| e.to_string())?;
        Ok(held.fingerprint.unwrap_or_default())
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
        crate::failpoint::point("line", "line-outbox-before-delivery");
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
        key_pem: pack.key_pem.clone().unwrap_or_default(),
    };
    // No key: a certificate for the key the device generated itself.
    let job = match &pack.key_pem {
        Some(_) => WriteJob::new(&p)?,
        None => WriteJob::for_device_key(&p)?,
    };
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
