//! Read-only counts over one working day for the admin's progress views:
//! devices written per hour (per model and line), and what each line did.

use rusqlite::params;

use super::lifecycle::FAILED;
use super::Stock;

/// What one line did within a day, from its packs.
#[derive(Debug, Clone, Default)]
pub struct LineCounts {
    pub line: String,
    pub taken: usize,
    pub written: usize,
    pub failed: usize,
    /// Packs it holds now with no result yet.
    pub holding: usize,
    /// The newest take, write or end of its packs within the day.
    pub last_at: Option<i64>,
}

/// One pack of a line that ended as a failure.
#[derive(Debug, Clone)]
pub struct LineFailure {
    pub line: String,
    pub id: String,
    pub serial: String,
    pub at: i64,
    pub reason: String,
}

impl Stock {
    /// (model, line, hour since `from`, packs written) for packs written in [from, to).
    pub fn written_per_hour(
        &self,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<(String, String, usize, usize)>> {
        let mut stmt = self.conn.prepare(
            "SELECT model, COALESCE(line, ''), (written_at - ?1) / 3600 AS hour, COUNT(*)
             FROM packs WHERE written_at >= ?1 AND written_at < ?2
             GROUP BY model, line, hour ORDER BY model, line, hour",
        )?;
        let rows = stmt.query_map([from, to], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as usize,
                r.get::<_, i64>(3)? as usize,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Per line that took a pack in [from, to) or holds one now.
    pub fn line_counts(&self, from: i64, to: i64) -> anyhow::Result<Vec<LineCounts>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT line,
                SUM(CASE WHEN taken_at >= ?1 AND taken_at < ?2 THEN 1 ELSE 0 END),
                SUM(CASE WHEN written_at >= ?1 AND written_at < ?2 THEN 1 ELSE 0 END),
                SUM(CASE WHEN ended_at >= ?1 AND ended_at < ?2 AND {FAILED} THEN 1 ELSE 0 END),
                SUM(CASE WHEN state IN ('handed_out', 'received') THEN 1 ELSE 0 END),
                MAX(MAX(COALESCE(taken_at, 0), COALESCE(written_at, 0),
                        CASE WHEN ended_at < ?2 THEN COALESCE(ended_at, 0) ELSE 0 END))
             FROM packs WHERE line IS NOT NULL
               AND ((taken_at >= ?1 AND taken_at < ?2) OR state IN ('handed_out', 'received'))
             GROUP BY line ORDER BY line"
        ))?;
        let rows = stmt.query_map([from, to], |r| {
            let last: i64 = r.get(5)?;
            Ok(LineCounts {
                line: r.get(0)?,
                taken: r.get::<_, i64>(1)? as usize,
                written: r.get::<_, i64>(2)? as usize,
                failed: r.get::<_, i64>(3)? as usize,
                holding: r.get::<_, i64>(4)? as usize,
                last_at: (last > 0).then_some(last),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest `limit` failures within [from, to), newest first.
    pub fn line_failures(
        &self,
        from: i64,
        to: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<LineFailure>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT line, id, serial, ended_at, COALESCE(end_reason, '') FROM packs
             WHERE line IS NOT NULL AND ended_at >= ?1 AND ended_at < ?2 AND {FAILED}
             ORDER BY ended_at DESC, pack_id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![from, to, limit], |r| {
            Ok(LineFailure {
                line: r.get(0)?,
                id: r.get(1)?,
                serial: r.get(2)?,
                at: r.get(3)?,
                reason: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
