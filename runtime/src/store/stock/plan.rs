//! Production plans as stored: one row per device id, replaced per day by
//! an import (all rows or none), with the discard and rework marks an
//! administrator sets.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{now_unix, PlanChange, PlanRow, Stock, StockError};
use crate::store::audit;

fn plan_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PlanRow> {
    Ok(PlanRow {
        id: r.get(0)?,
        day: r.get(1)?,
        model: r.get(2)?,
        serial: r.get(3)?,
        source: r.get(4)?,
        row: r.get(5)?,
        discarded: r.get::<_, i64>(6)? != 0,
        rework: r.get::<_, i64>(7)? != 0,
    })
}

const PLAN_COLUMNS: &str = "id, day, model, serial, source, row, discarded, rework";

impl Stock {
    // ---- plan ----

    /// Replaces the plan of every day that `rows` names by `rows`, in one
    /// transaction: rows already planned stay as they were (their discard and
    /// rework marks too), new ones are added, the others are dropped from the
    /// plan (packs are never touched). An id planned for a day that this
    /// import does not replace is refused.
    pub fn import_plan(
        &mut self,
        rows: &[PlanRow],
        actor: &str,
        source: &str,
    ) -> anyhow::Result<PlanChange> {
        let tx = self.conn.transaction()?;
        let days: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.day.as_str()).collect();
        // The import's mark: rows of its days not marked with it are dropped.
        // Monotonic even for two imports within one second.
        let last: Option<i64> =
            tx.query_row("SELECT MAX(imported_at) FROM plan", [], |r| r.get(0))?;
        let now = now_unix().max(last.unwrap_or(0) + 1);
        let mut change = PlanChange::default();
        {
            let mut other = tx.prepare_cached("SELECT day, source, row FROM plan WHERE id = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO plan (id, day, model, serial, source, row, imported_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut mark = tx.prepare_cached("UPDATE plan SET imported_at = ?2 WHERE id = ?1")?;
            for (index, row) in rows.iter().enumerate() {
                let existing: Option<(String, String, i64)> = other
                    .query_row([&row.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                match existing {
                    Some((day, _, _)) if day == row.day => {
                        mark.execute(params![row.id, now])?;
                        change.kept += 1;
                    }
                    Some((day, other_source, other_row)) if !days.contains(day.as_str()) => {
                        return Err(StockError::PlannedElsewhere {
                            index,
                            id: row.id.clone(),
                            other_day: day,
                            other_source,
                            other_row,
                        }
                        .into());
                    }
                    Some(_) => {
                        // Moved between two days this import replaces.
                        tx.execute(
                            "UPDATE plan SET day = ?2, source = ?3, row = ?4, imported_at = ?5, discarded = 0 WHERE id = ?1",
                            params![row.id, row.day, row.source, row.row, now],
                        )?;
                        change.added += 1;
                    }
                    None => {
                        insert.execute(params![
                            row.id, row.day, row.model, row.serial, row.source, row.row, now
                        ])?;
                        change.added += 1;
                    }
                }
            }
            let mut remove =
                tx.prepare_cached("DELETE FROM plan WHERE day = ?1 AND imported_at <> ?2")?;
            for day in &days {
                change.removed += remove.execute(params![day, now])?;
            }
        }
        audit::append(
            &tx,
            actor,
            "plan_import",
            &serde_json::json!({
                "source": source,
                "days": days,
                "rows": rows.len(),
                "added": change.added,
                "kept": change.kept,
                "removed": change.removed,
            }),
        )?;
        tx.commit()?;
        Ok(change)
    }

    pub fn plan_entry(&self, id: &str) -> anyhow::Result<Option<PlanRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {PLAN_COLUMNS} FROM plan WHERE id = ?1"))?
            .query_row([id], plan_row)
            .optional()?)
    }

    /// The plan rows of the days from `first` to `last` (inclusive, YYYY-MM-DD).
    pub fn plan_between(&self, first: &str, last: &str) -> anyhow::Result<Vec<PlanRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PLAN_COLUMNS} FROM plan WHERE day >= ?1 AND day <= ?2 ORDER BY day, model, id"
        ))?;
        let rows = stmt.query_map([first, last], plan_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The plan rows of a model (only those of `day` when given), by id.
    pub fn plan_of_model(&self, model: &str, day: Option<&str>) -> anyhow::Result<Vec<PlanRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PLAN_COLUMNS} FROM plan WHERE model = ?1 AND (?2 IS NULL OR day = ?2) ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![model, day], plan_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn plan_counts(&self, day: &str) -> anyhow::Result<Vec<(String, usize)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT model, COUNT(*) FROM plan WHERE day = ?1 GROUP BY model")?;
        let rows = stmt.query_map([day], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- plan marks ----

    /// Marks plan rows (discard, rework) in the caller's transaction.
    pub fn mark_plan(
        tx: &Transaction<'_>,
        id: &str,
        discarded: bool,
        rework: bool,
    ) -> anyhow::Result<()> {
        tx.prepare_cached("UPDATE plan SET discarded = ?2, rework = ?3 WHERE id = ?1")?
            .execute(params![id, discarded as i64, rework as i64])?;
        Ok(())
    }
}
