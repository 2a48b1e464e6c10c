//! The line API: who may take which pack, and what a report (received,
//! written, failed) does. The sweeps beside it are in [`super::sweeps`].
//! Every state change goes through [`crate::store::stock::apply`].

use rusqlite::Transaction;
use zeroize::Zeroizing;

use super::config::day_text;
use super::error::{Kind, StationError};
use super::failpoint::point;
use super::retention::Decision;
use super::sweeps::{decide_within, retain, WRITTEN_DECISION_WAIT};
use super::Station;
use crate::pki::id::DeviceId;
use crate::pki::profile::Keygen;
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
        let id = self.admit(id_text, Keygen::Ca)?;
        let id_text = id.to_string();
        let plan_day = self
            .stock
            .plan_entry(&id_text)?
            .map(|p| p.day)
            .unwrap_or_default();
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
                    format!("{id_text} is planned for {plan_day} but its pack has not been fetched yet (certline station fetch)"),
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
                let due = self.result_due(now);
                let tx = self.stock.transaction()?;
                take(&tx, &pack, line, now, due)?;
                tx.commit()?;
                point("take-after-commit");
                self.take_response(&pack, Some(key), now, due, false)
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
                self.take_response(&pack, Some(key), taken, due, true)
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
            PackState::Written | PackState::Flagged | PackState::Deleted => {
                Err(already_written(&pack))
            }
            other => Err(StationError::Internal(anyhow::anyhow!(
                "live pack {} in state {other}",
                pack.serial
            ))),
        }
    }

    /// The checks every hand-out starts with, for a take (`keygen` ca) or a
    /// signing (`keygen` device): a good id of a configured model with a
    /// certificate whose keys are born where the caller expects, planned
    /// for today (or authorised for rework), not discarded.
    pub(super) fn admit(&self, id_text: &str, keygen: Keygen) -> Result<DeviceId, StationError> {
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
            Some(model) if model.keygen != keygen => {
                return Err(match model.keygen {
                    Keygen::Device => conflict(
                        codes::DEVICE_KEYGEN_MODEL,
                        format!(
                            "model {} generates its keys in the device (keygen = \"device\" at this station): the line sends the device's CSR, it takes no pack; set keygen = \"device\" for {} in the line's factory.toml",
                            id.model(), id.model()
                        ),
                    ),
                    Keygen::Ca => conflict(
                        codes::CA_KEYGEN_MODEL,
                        format!(
                            "model {} gets its keys from the CA (keygen = \"ca\" at this station): the line takes its pack, it sends no CSR; set keygen = \"ca\" for {} in the line's factory.toml",
                            id.model(), id.model()
                        ),
                    ),
                });
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
                match keygen {
                    Keygen::Ca => format!(
                        "the leftover pack of {id_text} (model {}) was discarded by an administrator; re-plan it to build it",
                        id.model()
                    ),
                    Keygen::Device => format!(
                        "{id_text} of model {} was discarded by an administrator (station admin discard); nothing was signed; re-plan it to build it",
                        id.model()
                    ),
                },
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
        Ok(id)
    }

    /// When the result of a hand-out at `now` is due.
    pub(super) fn result_due(&self, now: i64) -> i64 {
        now + self.config.handout_timeout_secs as i64
    }

    pub(super) fn take_response(
        &self,
        pack: &PackRow,
        key_pem: Option<Zeroizing<String>>,
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
        fields: &std::collections::BTreeMap<String, String>,
    ) -> Result<ReportResponse, StationError> {
        crate::wire::station::check_report_fields(fields)
            .map_err(|e| StationError::bad_request(format!("the report's fields: {e}")))?;
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
                fields: Some(fields),
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
}

fn report(pack: &PackRow, state: PackState, replacement: Option<String>) -> ReportResponse {
    ReportResponse {
        id: pack.id.clone(),
        serial: pack.serial.clone(),
        state,
        replacement,
    }
}

/// The take of `pack` by `line` at `now`, its result due at `due`, in the
/// caller's transaction: every hand-out (a stocked pack taken, a device's
/// certificate just signed) goes through here.
pub(super) fn take(
    tx: &Transaction<'_>,
    pack: &PackRow,
    line: &str,
    now: i64,
    due: i64,
) -> anyhow::Result<PackState> {
    apply(
        tx,
        pack,
        Event::Take,
        &EventContext {
            actor: &format!("line:{line}"),
            at: now,
            line: Some(line),
            due_at: Some(due),
            ..Default::default()
        },
    )
}

/// The refusal for an id whose certificate is already in its device.
pub(super) fn already_written(pack: &PackRow) -> StationError {
    conflict(
        codes::ALREADY_WRITTEN,
        format!(
            "{} already has its certificate (serial {}) written by line {} at {}; an administrator can authorise a rework",
            pack.id,
            pack.serial,
            pack.line.clone().unwrap_or_default(),
            pack.written_at.map(unix_text).unwrap_or_default()
        ),
    )
}
