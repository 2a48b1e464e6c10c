//! The durable queue of work for the CA (revocations and replacements),
//! filled by [`super::apply`] in the same transaction as the state change
//! that needs it, and emptied by the station's CA link.

use rusqlite::{params, Transaction};

use super::{QueueKind, Stock};
use crate::pki::crl::Reason;
use crate::store::audit;

#[derive(Debug, Clone)]
pub struct QueueRow {
    pub seq: i64,
    pub kind: QueueKind,
    pub id: String,
    pub model: String,
    pub serial: String,
    pub reason: String,
    pub queued_at: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_try_at: i64,
}

fn queue_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueRow> {
    Ok(QueueRow {
        seq: r.get(0)?,
        kind: {
            let kind: String = r.get(1)?;
            QueueKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    format!("unknown queue kind {kind:?}").into(),
                )
            })?
        },
        id: r.get(2)?,
        model: r.get(3)?,
        serial: r.get(4)?,
        reason: r.get(5)?,
        queued_at: r.get(6)?,
        attempts: r.get(7)?,
        last_error: r.get(8)?,
        next_try_at: r.get(9)?,
    })
}

const QUEUE_COLUMNS: &str =
    "seq, kind, id, model, serial, reason, queued_at, attempts, last_error, next_try_at";

impl Stock {
    // ---- CA queue ----

    pub fn queue(&self) -> anyhow::Result<Vec<QueueRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {QUEUE_COLUMNS} FROM ca_queue ORDER BY seq"
        ))?;
        let rows = stmt.query_map([], queue_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn queue_of(&self, id: &str) -> anyhow::Result<Vec<QueueRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {QUEUE_COLUMNS} FROM ca_queue WHERE id = ?1 ORDER BY seq"
        ))?;
        let rows = stmt.query_map([id], queue_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Items whose next try is due.
    pub fn queue_due(&self, now: i64) -> anyhow::Result<Vec<QueueRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {QUEUE_COLUMNS} FROM ca_queue WHERE next_try_at <= ?1 ORDER BY seq"
        ))?;
        let rows = stmt.query_map([now], queue_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a failed attempt; the item waits until `next_try_at`.
    pub fn queue_attempt_failed(
        &mut self,
        seq: i64,
        error: &str,
        next_try_at: i64,
    ) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE ca_queue SET attempts = attempts + 1, last_error = ?2, next_try_at = ?3 WHERE seq = ?1",
            params![seq, error, next_try_at],
        )?;
        Ok(())
    }

    /// Makes every waiting item due now (an operator asked to retry).
    pub fn queue_retry_now(&mut self) -> anyhow::Result<()> {
        self.conn
            .execute("UPDATE ca_queue SET next_try_at = 0", [])?;
        Ok(())
    }

    /// Makes every waiting item due now because `actor` asked, with an audit
    /// entry naming how many items wait.
    pub fn queue_retry_by(&mut self, actor: &str) -> anyhow::Result<usize> {
        let tx = self.conn.transaction()?;
        let waiting = tx.execute("UPDATE ca_queue SET next_try_at = 0", [])?;
        crate::store::audit::append(
            &tx,
            actor,
            "queue_retry",
            &serde_json::json!({"waiting": waiting}),
        )?;
        tx.commit()?;
        Ok(waiting)
    }

    /// Removes a finished item, in the caller's transaction, with its audit entry.
    pub fn queue_done(
        tx: &Transaction<'_>,
        item: &QueueRow,
        actor: &str,
        detail: serde_json::Value,
    ) -> anyhow::Result<()> {
        let removed = tx.execute("DELETE FROM ca_queue WHERE seq = ?1", [item.seq])?;
        if removed != 1 {
            anyhow::bail!("queue item {} was already done", item.seq);
        }
        let mut detail = detail;
        detail["kind"] = item.kind.as_str().into();
        detail["id"] = item.id.clone().into();
        detail["serial"] = item.serial.clone().into();
        let action = match item.kind {
            QueueKind::Replace => "replaced",
            QueueKind::Revoke => "revoked",
        };
        audit::append(tx, actor, action, &detail)?;
        Ok(())
    }

    /// Whether the stock has ever held a pack with this certificate serial.
    pub fn knows_serial(tx: &Transaction<'_>, serial: &str) -> anyhow::Result<bool> {
        Ok(tx
            .prepare_cached("SELECT 1 FROM packs WHERE serial = ?1")?
            .exists([serial])?)
    }

    /// Queues the revocation of a certificate the CA holds valid for `id`
    /// but the stock never received (an interrupted fetch), in the caller's
    /// transaction, with its audit entry. Returns 0 when it is queued already.
    pub fn queue_orphan(
        tx: &Transaction<'_>,
        id: &str,
        model: &str,
        serial: &str,
        reason: Reason,
        at: i64,
    ) -> anyhow::Result<usize> {
        let added = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO ca_queue (kind, id, model, serial, reason, queued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                QueueKind::Revoke.as_str(),
                id,
                model,
                serial,
                reason.name(),
                at
            ])?;
        if added == 1 {
            audit::append(
                tx,
                "station",
                "orphan",
                &serde_json::json!({"id": id, "serial": serial, "queued": QueueKind::Revoke.as_str()}),
            )?;
        }
        Ok(added)
    }
}
