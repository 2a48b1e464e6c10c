//! The reports an administrator reads (stock per model, the CA queue, one
//! device's story, the audit log), built from the stock as the wire types of
//! [`crate::wire::station`].

use std::collections::BTreeMap;

use super::config::day_text;
use super::error::StationError;
use super::Station;
use crate::pki::id::DeviceId;
use crate::store::stock::{unix_text, PackState, QueueRow};
use crate::wire::station::{
    codes, AuditEntry, AuditReport, DeviceReport, ModelStock, PackInfo, PlanEntry, QueueItem,
    QueueReport, StockReport,
};

impl Station {
    pub fn stock_report(&self) -> anyhow::Result<StockReport> {
        let today = self.today();
        let mut models: BTreeMap<String, ModelStock> = BTreeMap::new();
        let entry = |models: &mut BTreeMap<String, ModelStock>, model: &str| {
            models
                .entry(model.to_string())
                .or_insert_with(|| ModelStock {
                    model: model.to_string(),
                    certificate: self.config.carries_certificate(model),
                    keygen: self.config.keygen(model),
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
        for (model, n) in self.stock.signed_counts(from, to)? {
            entry(&mut models, &model);
            models.get_mut(&model).expect("inserted").signed_today = n;
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
            .map_err(|e| StationError::bad_request(e.to_string()))?
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
                state: p.state,
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
            return Err(StationError::not_found(
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

pub(crate) fn queue_item(q: QueueRow) -> QueueItem {
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
