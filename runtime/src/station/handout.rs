//! The line API and the sweeps: who may take which pack, what a report
//! (received, written, failed) does, when a hand-out times out, what
//! retention does with written packs. Every state change goes through
//! [`crate::store::stock::apply`].

use zeroize::Zeroizing;

use super::config::day_text;
use super::error::{Kind, StationError};
use super::failpoint::point;
use super::retention::{Decision, RetentionPolicy, WrittenPack};
use super::Station;
use crate::pki::id::DeviceId;
use crate::store::stock::{
    apply, now_unix, unix_text, Event, EventContext, PackRow, PackState, QueueKind, Stock,
};
use crate::wire::station::{codes, ReportResponse, TakeResponse};

fn conflict(code: &'static str, message: impl Into<String>) -> StationError {
    StationError::conflict(code, message)
}

fn not_found(code: &'static str, message: impl Into<String>) -> StationError {
    StationError::not_found(code, message)
}

fn bad_request(message: impl Into<String>) -> StationError {
    StationError::bad_request(message)
}

impl Station {
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
                .find(|q| q.kind == QueueKind::Replace);
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
                point("take-after-commit");
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
                Kind::Forbidden,
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
                point("received-after-commit");
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
        let decision = decide_within(&self.policy, &pack, line, now, WRITTEN_DECISION_WAIT);
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
        point("written-after-commit");
        if state == PackState::Deleted {
            self.after_delete();
        }
        Ok(report(&pack, state, None))
    }

    /// After key bytes were deleted: fold the WAL so no copy of them stays.
    fn after_delete(&self) {
        point("retention-before-checkpoint");
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
        point("failed-after-commit");
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
        point("timeout-after-commit");
        Ok(overdue.len())
    }

    /// A line the station learned is lost (its credential revoked): the packs
    /// it holds with no result are revoked and replaced at once, as if their
    /// time had run out. Returns how many.
    pub fn line_lost(&mut self, line: &str, why: &str) -> anyhow::Result<usize> {
        let held = self.stock.held_by(line)?;
        if held.is_empty() {
            return Ok(0);
        }
        let now = now_unix();
        let tx = self.stock.transaction()?;
        for pack in &held {
            apply(
                &tx,
                pack,
                Event::LineLost,
                &EventContext {
                    actor: "station",
                    at: now,
                    reason: Some(why),
                    ..Default::default()
                },
            )?;
        }
        tx.commit()?;
        point("timeout-after-commit");
        Ok(held.len())
    }

    /// What a retention sweep asks the policy about: packs still `written`
    /// (a policy error, a crash) and flagged ones (the age rule). The policy
    /// comes along so that it can decide without the station being held.
    pub fn retention_candidates(&self) -> anyhow::Result<RetentionSweep> {
        let mut packs = self.stock.packs_in_state(PackState::Written)?;
        packs.extend(self.stock.packs_in_state(PackState::Flagged)?);
        Ok(RetentionSweep {
            policy: self.policy.clone(),
            packs,
            now: now_unix(),
        })
    }

    /// Applies what the policy decided (packs that changed meanwhile are left
    /// alone), then a checkpoint if anything was deleted. Returns how many changed.
    pub fn apply_retention(&mut self, decided: Decided) -> anyhow::Result<usize> {
        let mut changed = 0;
        let mut deleted = false;
        for (pack, decision) in decided.decisions {
            let Some(current) = self.stock.pack_by_serial(&pack.serial)? else {
                continue;
            };
            if current.state != pack.state {
                continue;
            }
            let tx = self.stock.transaction()?;
            let to = retain(&*decided.policy, &tx, &current, decision, decided.now)?;
            tx.commit()?;
            if to != current.state {
                changed += 1;
                deleted |= to == PackState::Deleted;
            }
        }
        if deleted {
            self.after_delete();
        }
        Ok(changed)
    }

    /// The whole retention sweep in one call, holding the station throughout
    /// (commands that own the station alone; `serve` decides off the lock).
    pub fn sweep_retention(&mut self) -> anyhow::Result<usize> {
        let decided = self.retention_candidates()?.decide();
        self.apply_retention(decided)
    }
}

/// Packs waiting for a retention decision, and the policy that decides.
pub struct RetentionSweep {
    policy: std::sync::Arc<dyn RetentionPolicy>,
    packs: Vec<PackRow>,
    now: i64,
}

/// The policy's decisions, to apply with [`Station::apply_retention`].
pub struct Decided {
    policy: std::sync::Arc<dyn RetentionPolicy>,
    decisions: Vec<(PackRow, Decision)>,
    now: i64,
}

impl RetentionSweep {
    /// Asks the policy about each pack; needs no station (a slow or stuck
    /// script holds up only this sweep). A failed decision leaves the pack
    /// as it is until the next sweep.
    pub fn decide(self) -> Decided {
        let now = self.now;
        let mut decisions = Vec::new();
        for pack in self.packs {
            let written_at = pack.written_at.unwrap_or(now);
            let decision = self.policy.decide(&WrittenPack {
                id: &pack.id,
                model: &pack.model,
                serial: &pack.serial,
                line: pack.line.as_deref().unwrap_or(""),
                written_at,
                age_secs: now - written_at,
                flagged: pack.state == PackState::Flagged,
            });
            match decision {
                Ok(d) => decisions.push((pack, d)),
                Err(err) => tracing::error!(id = %pack.id, "retention policy failed: {err:#}"),
            }
        }
        Decided {
            policy: self.policy,
            decisions,
            now,
        }
    }
}

/// How long a written report waits for the retention policy (the station is
/// held meanwhile); a policy that takes longer leaves the pack `written`, and
/// the next retention sweep decides it.
const WRITTEN_DECISION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks the policy about a just-written pack on a thread of its own and
/// waits at most `wait`: a stuck script never holds the lines up for longer.
fn decide_within(
    policy: &std::sync::Arc<dyn RetentionPolicy>,
    pack: &PackRow,
    line: &str,
    now: i64,
    wait: std::time::Duration,
) -> anyhow::Result<Decision> {
    let (policy, id, model, serial, line) = (
        policy.clone(),
        pack.id.clone(),
        pack.model.clone(),
        pack.serial.clone(),
        line.to_string(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("retention-decide".into())
        .spawn(move || {
            let _ = tx.send(policy.decide(&WrittenPack {
                id: &id,
                model: &model,
                serial: &serial,
                line: &line,
                written_at: now,
                age_secs: 0,
                flagged: false,
            }));
        })?;
    rx.recv_timeout(wait).unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the retention policy did not answer within {} s; the next sweep retries",
            wait.as_secs()
        ))
    })
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
        state,
        replacement,
    }
}
