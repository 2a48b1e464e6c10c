//! What an administrator may change: discard the leftovers of a model (its
//! stocked packs, their certificates revoked; for a model whose keys are born
//! in the device, its planned ids not signed yet), authorise the rework of a written device
//! (revoked and a fresh pack fetched), add another administrator. Who the
//! administrator is, is [`super::login`]'s job.

use super::error::StationError;
use super::failpoint::point;
use super::Station;
use crate::pki::id::DeviceId;
use crate::pki::profile::Keygen;
use crate::store::audit;
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
        let unsigned = self.unsigned_of_model(model, day)?;
        let planned_for = day.map(|d| format!(" planned for {d}")).unwrap_or_default();
        if packs.is_empty() && unsigned.is_empty() {
            return Err(StationError::not_found(
                codes::NOT_FOUND,
                if self.generates_in_device(model) {
                    format!(
                        "nothing of model {model}{planned_for} to discard: its keys are born in the device (keygen = \"device\") and every planned id is signed or discarded already"
                    )
                } else {
                    format!("no stocked packs of model {model}{planned_for} to discard")
                },
            ));
        }
        let now = now_unix();
        let reason = "leftover discarded by an administrator";
        let tx = self.stock.transaction()?;
        for pack in &packs {
            apply(
                &tx,
                pack,
                Event::Discard,
                &EventContext {
                    actor,
                    at: now,
                    reason: Some(reason),
                    ..Default::default()
                },
            )?;
            Stock::mark_plan(&tx, &pack.id, true, false)?;
        }
        for id in &unsigned {
            // Never signed: nothing to revoke, only the plan is marked.
            Stock::mark_plan(&tx, id, true, false)?;
            audit::append(
                &tx,
                actor,
                "discard",
                &serde_json::json!({"id": id, "model": model, "signed": false, "reason": reason}),
            )?;
        }
        tx.commit()?;
        point("discard-after-commit");
        Ok(DiscardReport {
            model: model.to_string(),
            discarded: packs.iter().map(|p| p.id.clone()).chain(unsigned).collect(),
            revocations_queued: packs.len(),
        })
    }

    fn generates_in_device(&self, model: &str) -> bool {
        self.config.model(model).is_some() && self.config.keygen(model) == Keygen::Device
    }

    /// The leftovers of a model whose keys are born in the device: its
    /// planned ids (of `day` when given) with no live certificate, not
    /// discarded yet. Any other model has none (its leftovers are packs).
    fn unsigned_of_model(&self, model: &str, day: Option<&str>) -> anyhow::Result<Vec<String>> {
        if !self.generates_in_device(model) {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        for row in self.stock.plan_of_model(model, day)? {
            if !row.discarded && self.stock.live_pack(&row.id)?.is_none() {
                ids.push(row.id);
            }
        }
        Ok(ids)
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
