//! The reports an administrator reads (stock per model, the CA queue, one
//! device's story, the audit log, the day's progress per hour, what each line
//! did), built from the stock as the wire types of [`crate::wire::station`].
//! The CLI, the API and the console all answer from these.

use std::collections::BTreeMap;

use super::config::day_text;
use super::error::StationError;
use super::Station;
use crate::pki::id::DeviceId;
use crate::store::stock::{unix_text, PackState, QueueRow};
use crate::wire::station::{
    codes, AuditEntry, AuditPage, AuditPageQuery, AuditReport, DeviceReport, LineActivity,
    LineFailure, LinesReport, ModelStock, PackInfo, PlanEntry, ProgressReport, ProgressSeries,
    QueueItem, QueueReport, StockReport,
};

/// Entries on one page of the audit log.
pub const AUDIT_PAGE: i64 = 50;
/// Failures kept per line in the lines report.
const FAILURES_PER_LINE: usize = 5;

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

    /// Whether the audit chain verifies: (intact, entries, where it breaks).
    fn audit_integrity(&self) -> (bool, i64, Option<String>) {
        match crate::store::audit::verify(self.stock.connection()) {
            Ok(v) => (true, v.entries, None),
            Err(e) => (false, 0, Some(format!("{e:#}"))),
        }
    }

    pub fn audit_report(&self, last: i64) -> anyhow::Result<AuditReport> {
        let (intact, entries, problem) = self.audit_integrity();
        let last = crate::store::audit::tail(self.stock.connection(), last.clamp(1, 10_000))?
            .into_iter()
            .map(audit_entry)
            .collect();
        Ok(AuditReport {
            intact,
            entries,
            problem,
            last,
        })
    }

    /// One page of the audit log, newest first, filtered by action, user and id.
    pub fn audit_page(&self, query: &AuditPageQuery) -> anyhow::Result<AuditPage> {
        let (intact, entries, problem) = self.audit_integrity();
        fn given(s: &Option<String>) -> Option<&str> {
            s.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        let filter = crate::store::audit::Filter {
            action: given(&query.action),
            actor: given(&query.user),
            text: given(&query.id),
            before: query.before,
        };
        let mut page = crate::store::audit::page(self.stock.connection(), &filter, AUDIT_PAGE + 1)?;
        let next_before = if page.len() as i64 > AUDIT_PAGE {
            page.truncate(AUDIT_PAGE as usize);
            page.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage {
            intact,
            entries,
            problem,
            page: page.into_iter().map(audit_entry).collect(),
            next_before,
        })
    }

    /// Devices written per hour today, per model (with today's plan) and per line.
    pub fn progress_report(&self) -> anyhow::Result<ProgressReport> {
        let today = self.today();
        let (from, to) = self.config.day_bounds(today);
        let hours = ((to - from) / 3600) as usize;
        let now = crate::store::stock::now_unix();
        let hour_now = (from..to)
            .contains(&now)
            .then(|| ((now - from) / 3600) as usize);
        let series = |name: &str| ProgressSeries {
            name: name.to_string(),
            per_hour: vec![0; hours],
            ..Default::default()
        };
        let mut models: BTreeMap<String, ProgressSeries> = BTreeMap::new();
        let mut lines: BTreeMap<String, ProgressSeries> = BTreeMap::new();
        for (model, n) in self.stock.plan_counts(&day_text(today))? {
            if self.config.carries_certificate(&model) {
                models
                    .entry(model.clone())
                    .or_insert_with(|| series(&model))
                    .planned = n;
            }
        }
        for (model, line, hour, n) in self.stock.written_per_hour(from, to)? {
            let hour = hour.min(hours - 1);
            for s in [
                models
                    .entry(model.clone())
                    .or_insert_with(|| series(&model)),
                lines.entry(line.clone()).or_insert_with(|| series(&line)),
            ] {
                s.per_hour[hour] += n;
                s.written += n;
            }
        }
        Ok(ProgressReport {
            day: day_text(today),
            hours,
            hour_now,
            models: models.into_values().collect(),
            lines: lines.into_values().collect(),
        })
    }

    /// Each line that talked to the station today: the stock's counts of its
    /// packs and failures, with `seen` (what the serving station saw of it).
    pub fn lines_report(
        &self,
        seen: &BTreeMap<String, super::activity::LineSeen>,
    ) -> anyhow::Result<LinesReport> {
        let today = self.today();
        let (from, to) = self.config.day_bounds(today);
        let mut lines: BTreeMap<String, (LineActivity, i64)> = BTreeMap::new();
        let entry = |lines: &mut BTreeMap<String, (LineActivity, i64)>, name: &str| {
            lines.entry(name.to_string()).or_insert_with(|| {
                (
                    LineActivity {
                        line: name.to_string(),
                        ..Default::default()
                    },
                    0,
                )
            });
        };
        for c in self.stock.line_counts(from, to)? {
            entry(&mut lines, &c.line);
            let (a, last) = lines.get_mut(&c.line).expect("inserted");
            a.taken_today = c.taken;
            a.written_today = c.written;
            a.failed_today = c.failed;
            a.holding = c.holding;
            *last = (*last).max(c.last_at.unwrap_or(0));
        }
        for (name, s) in seen.iter().filter(|(_, s)| s.last >= from) {
            entry(&mut lines, name);
            let (a, last) = lines.get_mut(name).expect("inserted");
            a.refusals = s.refusals.clone();
            *last = (*last).max(s.last);
        }
        for f in self.stock.line_failures(from, to, 1000)? {
            entry(&mut lines, &f.line);
            let (a, _) = lines.get_mut(&f.line).expect("inserted");
            if a.failures.len() < FAILURES_PER_LINE {
                a.failures.push(LineFailure {
                    at: unix_text(f.at),
                    id: f.id,
                    serial: f.serial,
                    reason: f.reason,
                });
            }
        }
        Ok(LinesReport {
            day: day_text(today),
            lines: lines
                .into_values()
                .map(|(mut a, last)| {
                    a.last_seen = (last > 0).then(|| unix_text(last));
                    a
                })
                .collect(),
        })
    }
}

fn audit_entry(e: crate::store::audit::Entry) -> AuditEntry {
    AuditEntry {
        seq: e.seq,
        at: e.at,
        actor: e.actor,
        action: e.action,
        detail: e.detail,
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
