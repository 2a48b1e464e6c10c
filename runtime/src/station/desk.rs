//! The station's policy: who may take which pack, what a report may do, when
//! a hand-out times out, what retention does, what an administrator may
//! discard or rework. Every state change goes through
//! [`crate::store::stock::apply`], which holds the lifecycle itself.

use std::path::Path;

use axum::http::StatusCode;
use time::Date;
use zeroize::Zeroizing;

use super::config::{day_text, StationConfig};
use super::retention::{BuiltinPolicy, Decision, RetentionPolicy, WrittenPack};
use crate::pki::credential::Credential;
use crate::pki::id::DeviceId;
use crate::pki::seal::Kek;
use crate::service::server::ApiError;
use crate::store::stock::{
    apply, now_unix, unix_text, Event, EventContext, PackRow, PackState, QueueRow, Stock,
};
use crate::wire::station::{
    codes, AuditEntry, AuditReport, DeviceReport, DiscardReport, ModelStock, PackInfo, PlanEntry,
    QueueItem, QueueReport, ReportResponse, ReworkReport, StockReport, TakeResponse,
};

/// A refusal (with its HTTP status and stable code) or a real failure.
#[derive(Debug, thiserror::Error)]
pub enum StationError {
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StationError {
    pub fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        StationError::Refused {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> Option<&'static str> {
        match self {
            StationError::Refused { code, .. } => Some(code),
            StationError::Internal(_) => None,
        }
    }
}

impl From<rusqlite::Error> for StationError {
    fn from(err: rusqlite::Error) -> Self {
        StationError::Internal(err.into())
    }
}

impl From<StationError> for ApiError {
    fn from(err: StationError) -> ApiError {
        match err {
            StationError::Refused {
                status,
                code,
                message,
            } => ApiError::new(status, code, message),
            StationError::Internal(err) => ApiError::internal(err),
        }
    }
}

fn conflict(code: &'static str, message: impl Into<String>) -> StationError {
    StationError::refused(StatusCode::CONFLICT, code, message)
}

fn not_found(code: &'static str, message: impl Into<String>) -> StationError {
    StationError::refused(StatusCode::NOT_FOUND, code, message)
}

fn bad_request(message: impl Into<String>) -> StationError {
    StationError::refused(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
}

/// The associated data a pack's sealed key is bound to.
pub fn pack_aad(id: &str, serial: &str) -> Vec<u8> {
    format!("certline station pack\0{id}\0{serial}").into_bytes()
}

/// Test hook for crash tests: with `CERTLINE_STATION_PAUSE_AT=<point>` the
/// process says so on stderr and stops at that point until it is killed.
pub fn pause_point(point: &str) {
    if std::env::var("CERTLINE_STATION_PAUSE_AT").is_ok_and(|p| p == point) {
        eprintln!("station paused at {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

pub struct Station {
    pub config: StationConfig,
    pub stock: Stock,
    kek: Option<std::sync::Arc<Kek>>,
    policy: Box<dyn RetentionPolicy>,
    today_override: Option<Date>,
}

/// What an opened station directory gives.
pub struct Opened {
    pub station: Station,
    pub credential: Option<Credential>,
}

impl Station {
    /// Opens a station directory. With a passphrase the keys are unlocked
    /// first (a wrong one stops before the stock is touched); without one the
    /// station can do everything that needs no key (reports, discard, rework).
    pub fn open(dir: &Path, passphrase: Option<&str>) -> anyhow::Result<Opened> {
        let config = super::dir::read_config(dir)?;
        let (kek, credential) = match passphrase {
            Some(p) => {
                let (kek, cred) = super::dir::unlock(dir, p)?;
                (Some(std::sync::Arc::new(kek)), Some(cred))
            }
            None => (None, None),
        };
        let stock = super::dir::open_stock(dir)?;
        let policy: Box<dyn RetentionPolicy> = match &config.retention.script {
            Some(script) => Box::new(super::retention::ScriptedPolicy::open(
                &dir.join(script),
                &config,
            )?),
            None => Box::new(BuiltinPolicy::new(config.retention.clone())),
        };
        Ok(Opened {
            station: Station {
                config,
                stock,
                kek,
                policy,
                today_override: None,
            },
            credential,
        })
    }

    /// Replaces the retention policy (the scripted policy plugs in here).
    pub fn set_retention_policy(&mut self, policy: Box<dyn RetentionPolicy>) {
        self.policy = policy;
    }

    pub fn retention_policy_name(&self) -> String {
        self.policy.name()
    }

    /// Pretend today is `day` (demos and tests).
    pub fn set_today(&mut self, day: Option<Date>) {
        self.today_override = day;
    }

    pub fn today(&self) -> Date {
        self.today_override.unwrap_or_else(|| self.config.today())
    }

    /// The key-encryption key (shared, so sealing can run outside the lock).
    pub fn kek(&self) -> anyhow::Result<std::sync::Arc<Kek>> {
        self.kek
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the station was opened without its passphrase"))
    }

    fn open_key(&self, pack: &PackRow) -> anyhow::Result<Zeroizing<String>> {
        let kek = self.kek()?;
        let sealed = pack
            .sealed_key
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("pack {} holds no key", pack.serial))?;
        let plain = kek.open(
            sealed,
            &pack_aad(&pack.id, &pack.serial),
            &format!("the key of {} (serial {})", pack.id, pack.serial),
        )?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| anyhow::anyhow!("the key of {} is not PEM text", pack.id))?;
        Ok(Zeroizing::new(text))
    }

    fn quarantine(&mut self, pack: &PackRow, why: &str) -> anyhow::Result<()> {
        tracing::error!(id = %pack.id, serial = %pack.serial, "quarantined: {why}");
        let tx = self.stock.transaction()?;
        apply(
            &tx,
            pack,
            Event::Quarantine,
            &EventContext {
                actor: "station",
                at: now_unix(),
                reason: Some(why),
                ..Default::default()
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Opens every stocked key once; rows that do not open are quarantined.
    pub fn verify_stock(&mut self) -> anyhow::Result<usize> {
        let mut quarantined = 0;
        for pack in self.stock.packs_in_state(PackState::Stocked)? {
            if let Err(err) = self.open_key(&pack) {
                self.quarantine(&pack, &format!("{err:#}"))?;
                quarantined += 1;
            }
        }
        Ok(quarantined)
    }

    // ---- line API ----

    pub fn take(&mut self, line: &str, id_text: &str) -> Result<TakeResponse, StationError> {
        let id = DeviceId::parse(id_text).map_err(|e| bad_request(e.to_string()))?;
        let id_text = id.to_string();
        match self.config.model(id.model()) {
            None => {
                return Err(not_found(
                    codes::UNKNOWN_MODEL,
                    format!(
                        "model code {} is not configured at this station; {id_text} cannot get a certificate here",
                        id.model()
                    ),
                ))
            }
            Some(model) if !model.certificate => {
                return Err(conflict(
                    codes::NO_CERTIFICATE_MODEL,
                    format!(
                        "model {} is built without a certificate; do not provision {id_text}",
                        id.model()
                    ),
                ))
            }
            Some(_) => {}
        }
        let plan = self.stock.plan_entry(&id_text)?.ok_or_else(|| {
            not_found(
                codes::NOT_IN_PLAN,
                format!("{id_text} is in no production plan at this station"),
            )
        })?;
        if plan.discarded {
            return Err(conflict(
                codes::DISCARDED,
                format!("the leftover pack of {id_text} was discarded by an administrator; re-plan it to build it"),
            ));
        }
        let today = day_text(self.today());
        if plan.day != today && !plan.rework {
            return Err(conflict(
                codes::NOT_PLANNED_TODAY,
                format!(
                    "{id_text} is planned for {}, not for today ({today})",
                    plan.day
                ),
            ));
        }
        let Some(pack) = self.stock.live_pack(&id_text)? else {
            let waiting = self
                .stock
                .queue_of(&id_text)?
                .into_iter()
                .find(|q| q.kind == "replace");
            return Err(match waiting {
                Some(item) => conflict(
                    codes::REPLACEMENT_PENDING,
                    format!(
                        "the certificate of {id_text} was revoked ({}); its replacement is waiting for the CA since {}{}",
                        item.reason,
                        unix_text(item.queued_at),
                        item.last_error
                            .map(|e| format!(" (last try: {e})"))
                            .unwrap_or_default()
                    ),
                ),
                None => not_found(
                    codes::NOT_IN_STOCK,
                    format!("{id_text} is planned for {} but its pack has not been fetched yet (certline station fetch)", plan.day),
                ),
            });
        };
        let now = now_unix();
        match pack.state {
            PackState::Stocked => {
                let key = match self.open_key(&pack) {
                    Ok(key) => key,
                    Err(err) => {
                        self.quarantine(&pack, &format!("{err:#}"))?;
                        return Err(conflict(
                            codes::QUARANTINED,
                            format!("the stored pack of {id_text} does not decrypt ({err:#}); it was quarantined and a replacement is queued"),
                        ));
                    }
                };
                let due = now + self.config.handout_timeout_secs as i64;
                let actor = format!("line:{line}");
                let tx = self.stock.transaction()?;
                apply(
                    &tx,
                    &pack,
                    Event::Take,
                    &EventContext {
                        actor: &actor,
                        at: now,
                        line: Some(line),
                        due_at: Some(due),
                        ..Default::default()
                    },
                )?;
                tx.commit()?;
                self.take_response(&pack, key, now, due, false)
            }
            PackState::HandedOut if pack.line.as_deref() == Some(line) => {
                // The same line asking again (its answer was lost): same pack.
                let key = self.open_key(&pack)?;
                self.stock.audit(
                    &format!("line:{line}"),
                    "take_again",
                    &serde_json::json!({"id": pack.id, "serial": pack.serial}),
                )?;
                let (taken, due) = (pack.taken_at.unwrap_or(now), pack.due_at.unwrap_or(now));
                self.take_response(&pack, key, taken, due, true)
            }
            PackState::HandedOut | PackState::Received => {
                let holder = pack.line.clone().unwrap_or_default();
                if holder == line {
                    Err(conflict(
                        codes::WRONG_STATE,
                        format!("the device already received the pack of {id_text} (serial {}); report written or failed", pack.serial),
                    ))
                } else {
                    Err(conflict(
                        codes::HANDED_OUT_ELSEWHERE,
                        format!(
                            "the pack of {id_text} is handed out to line {holder} since {}; it is that line's until it reports a result or the hand-out times out at {}",
                            pack.taken_at.map(unix_text).unwrap_or_default(),
                            pack.due_at.map(unix_text).unwrap_or_default()
                        ),
                    ))
                }
            }
            PackState::Written | PackState::Flagged | PackState::Deleted => Err(conflict(
                codes::ALREADY_WRITTEN,
                format!(
                    "{id_text} already has its certificate (serial {}) written by line {} at {}; an administrator can authorise a rework",
                    pack.serial,
                    pack.line.clone().unwrap_or_default(),
                    pack.written_at.map(unix_text).unwrap_or_default()
                ),
            )),
            other => Err(StationError::Internal(anyhow::anyhow!(
                "live pack {} in state {other}",
                pack.serial
            ))),
        }
    }

    fn take_response(
        &self,
        pack: &PackRow,
        key_pem: Zeroizing<String>,
        taken: i64,
        due: i64,
        again: bool,
    ) -> Result<TakeResponse, StationError> {
        let (root_pem, issuing_pem) = self.stock.chain(pack.chain_id)?;
        Ok(TakeResponse {
            id: pack.id.clone(),
            serial: pack.serial.clone(),
            fingerprint: pack.fingerprint.clone(),
            root_pem,
            chain_pem: format!("{}{}", pack.cert_pem, issuing_pem),
            key_pem,
            taken_at: unix_text(taken),
            result_due: unix_text(due),
            again,
        })
    }

    /// The pack a report names, checked to be this line's.
    fn reported_pack(&self, line: &str, id: &str, serial: &str) -> Result<PackRow, StationError> {
        let id = DeviceId::parse(id)
            .map_err(|e| bad_request(e.to_string()))?
            .to_string();
        let serial = serial.trim().to_ascii_lowercase();
        let pack = self.stock.pack_by_serial(&serial)?.ok_or_else(|| {
            not_found(
                codes::UNKNOWN_PACK,
                format!("no pack with serial {serial} at this station (for {id})"),
            )
        })?;
        if pack.id != id {
            return Err(not_found(
                codes::UNKNOWN_PACK,
                format!("serial {serial} is the pack of {}, not of {id}", pack.id),
            ));
        }
        match pack.line.as_deref() {
            None => Err(conflict(
                codes::WRONG_STATE,
                format!("the pack {serial} of {id} is {} and was never taken", pack.state),
            )),
            Some(holder) if holder != line => Err(StationError::refused(
                StatusCode::FORBIDDEN,
                codes::NOT_YOUR_PACK,
                format!("the pack {serial} of {id} was taken by line {holder}, not by {line}; only that line reports its result"),
            )),
            Some(_) => Ok(pack),
        }
    }

    fn revoked_message(pack: &PackRow) -> String {
        format!(
            "the pack {} of {} was revoked at {} ({}); take {} again for its replacement",
            pack.serial,
            pack.id,
            pack.ended_at.map(unix_text).unwrap_or_default(),
            pack.end_reason.clone().unwrap_or_default(),
            pack.id
        )
    }

    pub fn received(
        &mut self,
        line: &str,
        id: &str,
        serial: &str,
    ) -> Result<ReportResponse, StationError> {
        let pack = self.reported_pack(line, id, serial)?;
        match pack.state {
            PackState::HandedOut => {
                let tx = self.stock.transaction()?;
                let to = apply(
                    &tx,
                    &pack,
                    Event::Received,
                    &EventContext {
                        actor: &format!("line:{line}"),
                        at: now_unix(),
                        ..Default::default()
                    },
                )?;
                tx.commit()?;
                Ok(report(&pack, to, None))
            }
            PackState::Received => Err(conflict(
                codes::DUPLICATE_REPORT,
                format!(
                    "received was already reported for the pack {} of {}",
                    pack.serial, pack.id
                ),
            )),
            PackState::Revoked => Err(conflict(codes::WRONG_STATE, Self::revoked_message(&pack))),
            state => Err(conflict(
                codes::WRONG_STATE,
                format!(
                    "the pack {} of {} is {state}; 'received' comes before written",
                    pack.serial, pack.id
                ),
            )),
        }
    }

    pub fn written(
        &mut self,
        line: &str,
        id: &str,
        serial: &str,
        fingerprint: &str,
    ) -> Result<ReportResponse, StationError> {
        let pack = self.reported_pack(line, id, serial)?;
        match pack.state {
            PackState::HandedOut | PackState::Received => {}
            state if state.is_written() => {
                return Err(conflict(
                    codes::DUPLICATE_REPORT,
                    format!(
                        "written was already reported for the pack {} of {}",
                        pack.serial, pack.id
                    ),
                ))
            }
            PackState::Revoked => {
                return Err(conflict(
                    codes::WRONG_STATE,
                    format!(
                        "{}; the device now holds a revoked certificate",
                        Self::revoked_message(&pack)
                    ),
                ))
            }
            state => {
                return Err(conflict(
                    codes::WRONG_STATE,
                    format!("the pack {} of {} is {state}", pack.serial, pack.id),
                ))
            }
        }
        let readback = fingerprint.trim().replace(':', "").to_ascii_lowercase();
        if readback != pack.fingerprint {
            return Err(conflict(
                codes::FINGERPRINT_MISMATCH,
                format!(
                    "the device of {} holds certificate {readback}, not the handed-out {}; report the write as failed",
                    pack.id, pack.fingerprint
                ),
            ));
        }
        let now = now_unix();
        let decision = self.policy.decide(&WrittenPack {
            id: &pack.id,
            model: &pack.model,
            serial: &pack.serial,
            line,
            written_at: now,
            age_secs: 0,
            flagged: false,
        });
        let decision = decision.unwrap_or_else(|err| {
            tracing::error!(id = %pack.id, "retention policy failed, the pack stays written: {err:#}");
            Decision::Keep
        });
        let actor = format!("line:{line}");
        let tx = self.stock.transaction()?;
        let mut state = apply(
            &tx,
            &pack,
            Event::Written,
            &EventContext {
                actor: &actor,
                at: now,
                readback: Some(&readback),
                ..Default::default()
            },
        )?;
        let written = PackRow {
            state,
            line: Some(line.to_string()),
            ..pack.clone()
        };
        state = retain(&*self.policy, &tx, &written, decision, now)?;
        Stock::mark_plan(&tx, &pack.id, false, false)?;
        tx.commit()?;
        if state == PackState::Deleted {
            self.after_delete();
        }
        Ok(report(&pack, state, None))
    }

    /// After key bytes were deleted: fold the WAL so no copy of them stays.
    fn after_delete(&self) {
        pause_point("retention-before-checkpoint");
        if let Err(err) = self.stock.checkpoint() {
            tracing::warn!(
                "WAL checkpoint after a retention delete did not complete (retried later): {err:#}"
            );
        }
    }

    pub fn failed(
        &mut self,
        line: &str,
        id: &str,
        serial: &str,
        reason: &str,
    ) -> Result<ReportResponse, StationError> {
        let pack = self.reported_pack(line, id, serial)?;
        match pack.state {
            PackState::HandedOut | PackState::Received => {}
            PackState::Revoked
                if pack
                    .end_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("failed")) =>
            {
                return Err(conflict(
                    codes::DUPLICATE_REPORT,
                    format!("failed was already reported for the pack {} of {}", pack.serial, pack.id),
                ))
            }
            PackState::Revoked => return Err(conflict(codes::WRONG_STATE, Self::revoked_message(&pack))),
            state if state.is_written() => {
                return Err(conflict(
                    codes::WRONG_STATE,
                    format!("the pack {} of {} was reported written; an administrator can authorise a rework", pack.serial, pack.id),
                ))
            }
            state => {
                return Err(conflict(
                    codes::WRONG_STATE,
                    format!("the pack {} of {} is {state}", pack.serial, pack.id),
                ))
            }
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(bad_request("a failure report needs a reason"));
        }
        let tx = self.stock.transaction()?;
        let to = apply(
            &tx,
            &pack,
            Event::Failed,
            &EventContext {
                actor: &format!("line:{line}"),
                at: now_unix(),
                reason: Some(reason),
                ..Default::default()
            },
        )?;
        tx.commit()?;
        Ok(report(&pack, to, Some("queued".into())))
    }

    // ---- housekeeping ----

    /// Hand-outs with no result in time: revoked and replaced. Returns how many.
    pub fn sweep_timeouts(&mut self) -> anyhow::Result<usize> {
        let now = now_unix();
        let overdue = self.stock.overdue(now)?;
        if overdue.is_empty() {
            return Ok(0);
        }
        let tx = self.stock.transaction()?;
        for pack in &overdue {
            let why = format!(
                "no result from line {} within {} s",
                pack.line.clone().unwrap_or_default(),
                self.config.handout_timeout_secs
            );
            apply(
                &tx,
                pack,
                Event::TimedOut,
                &EventContext {
                    actor: "station",
                    at: now,
                    reason: Some(&why),
                    ..Default::default()
                },
            )?;
        }
        tx.commit()?;
        Ok(overdue.len())
    }

    /// Retention for packs still `written` (a policy error, a crash) and the
    /// age rule for flagged packs; then a checkpoint if anything was deleted.
    pub fn sweep_retention(&mut self) -> anyhow::Result<usize> {
        let now = now_unix();
        let mut changed = 0;
        let mut deleted = false;
        for state in [PackState::Written, PackState::Flagged] {
            for pack in self.stock.packs_in_state(state)? {
                let written_at = pack.written_at.unwrap_or(now);
                let decision = self.policy.decide(&WrittenPack {
                    id: &pack.id,
                    model: &pack.model,
                    serial: &pack.serial,
                    line: pack.line.as_deref().unwrap_or(""),
                    written_at,
                    age_secs: now - written_at,
                    flagged: state == PackState::Flagged,
                });
                let decision = match decision {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::error!(id = %pack.id, "retention policy failed: {err:#}");
                        continue;
                    }
                };
                let tx = self.stock.transaction()?;
                let to = retain(&*self.policy, &tx, &pack, decision, now)?;
                tx.commit()?;
                if to != pack.state {
                    changed += 1;
                    deleted |= to == PackState::Deleted;
                }
            }
        }
        if deleted {
            self.after_delete();
        }
        Ok(changed)
    }

    pub fn checkpoint(&self) -> anyhow::Result<()> {
        self.stock.checkpoint()
    }

    // ---- admin ----

    pub fn discard(
        &mut self,
        actor: &str,
        model: &str,
        day: Option<&str>,
    ) -> Result<DiscardReport, StationError> {
        crate::pki::id::check_model(model).map_err(bad_request)?;
        if let Some(day) = day {
            super::config::parse_day(day).map_err(bad_request)?;
        }
        let packs = self.stock.stocked_of_model(model, day)?;
        if packs.is_empty() {
            return Err(not_found(
                codes::NOT_FOUND,
                format!(
                    "no stocked packs of model {model}{} to discard",
                    day.map(|d| format!(" planned for {d}")).unwrap_or_default()
                ),
            ));
        }
        let now = now_unix();
        let tx = self.stock.transaction()?;
        for pack in &packs {
            apply(
                &tx,
                pack,
                Event::Discard,
                &EventContext {
                    actor,
                    at: now,
                    reason: Some("leftover discarded by an administrator"),
                    ..Default::default()
                },
            )?;
            Stock::mark_plan(&tx, &pack.id, true, false)?;
        }
        tx.commit()?;
        Ok(DiscardReport {
            model: model.to_string(),
            discarded: packs.iter().map(|p| p.id.clone()).collect(),
            revocations_queued: packs.len(),
        })
    }

    pub fn rework(
        &mut self,
        actor: &str,
        id: &str,
        reason: &str,
    ) -> Result<ReworkReport, StationError> {
        let id = DeviceId::parse(id)
            .map_err(|e| bad_request(e.to_string()))?
            .to_string();
        if reason.trim().is_empty() {
            return Err(bad_request(
                "a rework needs a reason (e.g. \"board replaced in service\")",
            ));
        }
        if self.stock.plan_entry(&id)?.is_none() {
            return Err(not_found(
                codes::NOT_IN_PLAN,
                format!("{id} is in no plan at this station; import a plan that lists it first"),
            ));
        }
        let pack = self.stock.live_pack(&id)?.ok_or_else(|| {
            not_found(
                codes::NOT_FOUND,
                format!("{id} has no certificate written at this station"),
            )
        })?;
        if !pack.state.is_written() {
            return Err(conflict(
                codes::WRONG_STATE,
                format!(
                    "{id}'s pack {} is {}, not written; a rework is for written devices",
                    pack.serial, pack.state
                ),
            ));
        }
        let tx = self.stock.transaction()?;
        apply(
            &tx,
            &pack,
            Event::Rework,
            &EventContext {
                actor,
                at: now_unix(),
                reason: Some(reason.trim()),
                ..Default::default()
            },
        )?;
        Stock::mark_plan(&tx, &id, false, true)?;
        tx.commit()?;
        Ok(ReworkReport {
            id,
            revoked_serial: pack.serial,
            replacement: "queued".into(),
        })
    }

    pub fn stock_report(&self) -> anyhow::Result<StockReport> {
        use std::collections::BTreeMap;
        let today = self.today();
        let mut models: BTreeMap<String, ModelStock> = BTreeMap::new();
        let entry = |models: &mut BTreeMap<String, ModelStock>, model: &str| {
            models
                .entry(model.to_string())
                .or_insert_with(|| ModelStock {
                    model: model.to_string(),
                    certificate: self.config.carries_certificate(model),
                    ..Default::default()
                })
                .model
                .clone()
        };
        for model in self.config.models.keys() {
            entry(&mut models, model);
        }
        for (model, n) in self.stock.plan_counts(&day_text(today))? {
            entry(&mut models, &model);
            models.get_mut(&model).expect("inserted").planned_today = n;
        }
        for (model, state, n) in self.stock.state_counts()? {
            entry(&mut models, &model);
            let m = models.get_mut(&model).expect("inserted");
            match state {
                PackState::Stocked => m.in_stock += n,
                PackState::HandedOut | PackState::Received => m.handed_out += n,
                PackState::Quarantined => m.quarantined += n,
                PackState::Discarded => m.discarded += n,
                _ => {}
            }
        }
        let (from, to) = self.config.day_bounds(today);
        for (model, used, failed, replaced) in self.stock.day_counts(from, to)? {
            entry(&mut models, &model);
            let m = models.get_mut(&model).expect("inserted");
            m.used_today = used;
            m.failed_today = failed;
            m.replaced_today = replaced;
        }
        let queue = self.stock.queue()?;
        for item in &queue {
            entry(&mut models, &item.model);
            models
                .get_mut(&item.model)
                .expect("inserted")
                .waiting_for_ca += 1;
        }
        Ok(StockReport {
            day: day_text(today),
            models: models.into_values().collect(),
            waiting_for_ca: queue.len(),
        })
    }

    pub fn queue_report(&self) -> anyhow::Result<QueueReport> {
        Ok(QueueReport {
            items: self.stock.queue()?.into_iter().map(queue_item).collect(),
        })
    }

    pub fn device_report(&self, id: &str) -> Result<DeviceReport, StationError> {
        let id = DeviceId::parse(id)
            .map_err(|e| bad_request(e.to_string()))?
            .to_string();
        let plan = self.stock.plan_entry(&id)?.map(|p| PlanEntry {
            day: p.day,
            model: p.model,
            serial: p.serial,
            source: p.source,
            row: p.row,
            discarded: p.discarded,
            rework: p.rework,
        });
        let packs: Vec<PackInfo> = self
            .stock
            .packs_of(&id)?
            .into_iter()
            .map(|p| PackInfo {
                serial: p.serial,
                fingerprint: p.fingerprint,
                state: p.state.as_str().to_string(),
                stocked_at: unix_text(p.stocked_at),
                replaces: p.replaces,
                line: p.line,
                taken_at: p.taken_at.map(unix_text),
                written_at: p.written_at.map(unix_text),
                ended_at: p.ended_at.map(unix_text),
                end_reason: p.end_reason,
                key_held: p.sealed_key.is_some(),
            })
            .collect();
        if plan.is_none() && packs.is_empty() {
            return Err(not_found(
                codes::NOT_FOUND,
                format!("the station knows nothing of {id}"),
            ));
        }
        Ok(DeviceReport {
            waiting_for_ca: self
                .stock
                .queue_of(&id)?
                .into_iter()
                .map(queue_item)
                .collect(),
            id,
            plan,
            packs,
        })
    }

    pub fn audit_report(&self, last: i64) -> anyhow::Result<AuditReport> {
        let (intact, entries, problem) = match crate::store::audit::verify(self.stock.connection())
        {
            Ok(v) => (true, v.entries, None),
            Err(e) => (false, 0, Some(format!("{e:#}"))),
        };
        let last = crate::store::audit::tail(self.stock.connection(), last.clamp(1, 10_000))?
            .into_iter()
            .map(|e| AuditEntry {
                seq: e.seq,
                at: e.at,
                actor: e.actor,
                action: e.action,
                detail: e.detail,
            })
            .collect();
        Ok(AuditReport {
            intact,
            entries,
            problem,
            last,
        })
    }
}

/// Applies a retention decision inside `tx`; returns the new state.
fn retain(
    policy: &dyn RetentionPolicy,
    tx: &rusqlite::Transaction<'_>,
    pack: &PackRow,
    decision: Decision,
    now: i64,
) -> anyhow::Result<PackState> {
    let event = match decision {
        Decision::Flag if pack.state == PackState::Written => Event::Flag,
        Decision::Delete => Event::Delete,
        _ => return Ok(pack.state),
    };
    let name = policy.name();
    apply(
        tx,
        pack,
        event,
        &EventContext {
            actor: "station",
            at: now,
            reason: Some(&name),
            ..Default::default()
        },
    )
}

fn report(pack: &PackRow, state: PackState, replacement: Option<String>) -> ReportResponse {
    ReportResponse {
        id: pack.id.clone(),
        serial: pack.serial.clone(),
        state: state.as_str().to_string(),
        replacement,
    }
}

pub fn queue_item(q: QueueRow) -> QueueItem {
    QueueItem {
        seq: q.seq,
        kind: q.kind,
        id: q.id,
        serial: q.serial,
        reason: q.reason,
        queued_at: unix_text(q.queued_at),
        attempts: q.attempts,
        last_error: q.last_error,
    }
}
