//! What an administrator may change: discard the leftover packs of a model
//! (their certificates revoked), authorise the rework of a written device
//! (revoked and a fresh pack fetched), add another administrator. Who the
//! administrator is, is [`super::login`]'s job.

use super::error::StationError;
use super::failpoint::point;
use super::Station;
use crate::pki::id::DeviceId;
use crate::store::stock::{apply, now_unix, Event, EventContext, Stock};
use crate::wire::station::{codes, DiscardReport, ReworkReport};

/// The environment variable that carries the admin password.
pub const PASSWORD_ENV: &str = crate::command::ADMIN_PASSWORD_ENV;
/// The environment variable that carries a new administrator's password (`admin user-add`).
pub const NEW_PASSWORD_ENV: &str = "CERTLINE_NEW_ADMIN_PASSWORD";

impl Station {
    pub fn discard(
        &mut self,
        actor: &str,
        model: &str,
        day: Option<&str>,
    ) -> Result<DiscardReport, StationError> {
        crate::pki::id::check_model(model).map_err(StationError::bad_request)?;
        if let Some(day) = day {
            super::config::parse_day(day).map_err(StationError::bad_request)?;
        }
        let packs = self.stock.stocked_of_model(model, day)?;
        if packs.is_empty() {
            return Err(StationError::not_found(
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
        point("discard-after-commit");
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
            .map_err(|e| StationError::bad_request(e.to_string()))?
            .to_string();
        if reason.trim().is_empty() {
            return Err(StationError::bad_request(
                "a rework needs a reason (e.g. \"board replaced in service\")",
            ));
        }
        if self.stock.plan_entry(&id)?.is_none() {
            return Err(StationError::not_found(
                codes::NOT_IN_PLAN,
                format!("{id} is in no plan at this station; import a plan that lists it first"),
            ));
        }
        let pack = self.stock.live_pack(&id)?.ok_or_else(|| {
            StationError::not_found(
                codes::NOT_FOUND,
                format!("{id} has no certificate written at this station"),
            )
        })?;
        if !pack.state.is_written() {
            return Err(StationError::conflict(
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
        point("rework-after-commit");
        Ok(ReworkReport {
            id,
            revoked_serial: pack.serial,
            replacement: "queued".into(),
        })
    }

    /// Adds an administrator (the password already checked and hashed).
    pub fn add_user(&mut self, actor: &str, name: &str, phc: &str) -> anyhow::Result<()> {
        self.stock.add_user(name, phc, actor)
    }
}
