//! The station's sweeps: hand-outs with no result in time, packs held by a
//! line that was lost, and retention (the policy asked without the station
//! held, the decisions applied with it). Every state change goes through
//! [`crate::store::stock::apply`].

use std::sync::Arc;

use super::failpoint::point;
use super::retention::{Decision, RetentionPolicy, WrittenPack};
use super::Station;
use crate::store::stock::{apply, now_unix, Event, EventContext, PackRow, PackState};

impl Station {
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
            now: self.retention_now(),
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

    /// After key bytes were deleted: fold the WAL so no copy of them stays.
    pub(super) fn after_delete(&self) {
        point("retention-before-checkpoint");
        if let Err(err) = self.stock.checkpoint() {
            tracing::warn!(
                "WAL checkpoint after a retention delete did not complete (retried later): {err:#}"
            );
        }
    }
}

/// Packs waiting for a retention decision, and the policy that decides.
pub struct RetentionSweep {
    policy: Arc<dyn RetentionPolicy>,
    packs: Vec<PackRow>,
    now: i64,
}

/// The policy's decisions, to apply with [`Station::apply_retention`].
pub struct Decided {
    policy: Arc<dyn RetentionPolicy>,
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
pub(super) const WRITTEN_DECISION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks the policy about a just-written pack on a thread of its own and
/// waits at most `wait`: a stuck script never holds the lines up for longer.
pub(super) fn decide_within(
    policy: &Arc<dyn RetentionPolicy>,
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
pub(super) fn retain(
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
