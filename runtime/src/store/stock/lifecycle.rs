//! The pack lifecycle, here and only here: [`Event::next`] is the whole
//! transition table and [`apply`] the only code that changes a pack's state,
//! always in the caller's transaction together with its audit entry and, when
//! the event needs the CA (a revocation, a replacement), the queue item. The
//! queries that read packs live beside it.
//!
//! ```text
//! stocked ──take──► handed_out ──received──► received ──written──► written ─► flagged | deleted
//!    │                   │                      │                               (retention)
//!    │                   └──failed / timed out──┴──► revoked  (+ queued: replace)
//!    ├──discard──► discarded (+ queued: revoke)
//!    └──quarantine──► quarantined (+ queued: replace)
//! written | flagged | deleted ──rework──► revoked (+ queued: replace)
//! ```
//!
//! A partial unique index keeps at most one live pack per device id. (One
//! job, the state machine and the rows it moves; its tests make it longer
//! than 600 lines.)

use rusqlite::{params, OptionalExtension, Transaction};

use super::{now_unix, PackState, QueueKind, Stock};
use crate::pki::crl::Reason;
use crate::store::audit;

/// SQL condition: the pack ended as a failure (failed, timed out, its line lost).
pub(super) const FAILED: &str =
    "(end_reason LIKE 'failed%' OR end_reason LIKE 'timed_out%' OR end_reason LIKE 'line_lost%')";

/// What can happen to a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Take,
    Received,
    Written,
    /// Retention: keep the pack, marked written.
    Flag,
    /// Retention: the key bytes are wiped; the certificate and fingerprint stay.
    Delete,
    Failed,
    /// Handed out with no result within the configured time.
    TimedOut,
    /// Handed out to a line that was lost (its credential revoked).
    LineLost,
    Discard,
    /// The sealed key did not open (altered or moved row).
    Quarantine,
    /// An administrator authorised re-provisioning of a written device.
    Rework,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Take => "take",
            Event::Received => "received",
            Event::Written => "written",
            Event::Flag => "flag",
            Event::Delete => "delete",
            Event::Failed => "failed",
            Event::TimedOut => "timed_out",
            Event::LineLost => "line_lost",
            Event::Discard => "discard",
            Event::Quarantine => "quarantine",
            Event::Rework => "rework",
        }
    }

    /// The transition table: the state a pack in `from` goes to on this event,
    /// or None when the event does not apply there.
    pub fn next(self, from: PackState) -> Option<PackState> {
        use PackState as S;
        Some(match (self, from) {
            (Event::Take, S::Stocked) => S::HandedOut,
            (Event::Received, S::HandedOut) => S::Received,
            (Event::Written, S::HandedOut | S::Received) => S::Written,
            (Event::Flag, S::Written) => S::Flagged,
            (Event::Delete, S::Written | S::Flagged) => S::Deleted,
            (Event::Failed | Event::TimedOut | Event::LineLost, S::HandedOut | S::Received) => {
                S::Revoked
            }
            (Event::Discard, S::Stocked) => S::Discarded,
            (Event::Quarantine, S::Stocked) => S::Quarantined,
            (Event::Rework, S::Written | S::Flagged | S::Deleted) => S::Revoked,
            _ => return None,
        })
    }

    /// The CA work the event leaves behind, with the revocation reason.
    pub fn ca_work(self) -> Option<(QueueKind, Reason)> {
        match self {
            Event::Failed | Event::TimedOut | Event::LineLost | Event::Rework => {
                Some((QueueKind::Replace, Reason::Superseded))
            }
            Event::Quarantine => Some((QueueKind::Replace, Reason::KeyCompromise)),
            Event::Discard => Some((QueueKind::Revoke, Reason::CessationOfOperation)),
            _ => None,
        }
    }

    /// Whether the sealed key is wiped from the stock by this event (the key
    /// of a revoked or discarded certificate has no further use).
    fn wipes_key(self) -> bool {
        matches!(
            self,
            Event::Delete
                | Event::Failed
                | Event::TimedOut
                | Event::LineLost
                | Event::Discard
                | Event::Rework
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("pack {serial} of {id} is {from}; '{event}' does not apply to a {from} pack")]
    Transition {
        id: String,
        serial: String,
        from: PackState,
        event: &'static str,
    },
    #[error("pack {serial} of {id} changed state while this was being done; try again")]
    Raced { id: String, serial: String },
    #[error("device id {id} is already planned for {other_day} ({other_source} row {other_row}); a serial is built once, so re-import {other_day}'s plan without it to move it")]
    PlannedElsewhere {
        /// Index of the offending row in the rows handed to [`Stock::import_plan`].
        index: usize,
        id: String,
        other_day: String,
        other_source: String,
        other_row: i64,
    },
}

/// A pack row as stored.
#[derive(Debug, Clone)]
pub struct PackRow {
    pub pack_id: i64,
    pub id: String,
    pub model: String,
    pub serial: String,
    pub fingerprint: String,
    pub cert_pem: String,
    pub chain_id: i64,
    pub sealed_key: Option<Vec<u8>>,
    pub state: PackState,
    pub replaces: Option<String>,
    pub stocked_at: i64,
    pub line: Option<String>,
    pub taken_at: Option<i64>,
    pub due_at: Option<i64>,
    pub received_at: Option<i64>,
    pub written_at: Option<i64>,
    pub readback: Option<String>,
    pub retained_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    /// Signed for a key the device generated (its CSR): never a sealed key.
    pub device_key: bool,
}

const PACK_COLUMNS: &str = "pack_id, id, model, serial, fingerprint, cert_pem, chain_id, sealed_key, state, replaces, stocked_at, line, taken_at, due_at, received_at, written_at, readback, retained_at, ended_at, end_reason, device_key";

fn pack_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PackRow> {
    let state: String = r.get(8)?;
    Ok(PackRow {
        pack_id: r.get(0)?,
        id: r.get(1)?,
        model: r.get(2)?,
        serial: r.get(3)?,
        fingerprint: r.get(4)?,
        cert_pem: r.get(5)?,
        chain_id: r.get(6)?,
        sealed_key: r.get(7)?,
        state: PackState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                8,
                rusqlite::types::Type::Text,
                format!("unknown pack state {state:?}").into(),
            )
        })?,
        replaces: r.get(9)?,
        stocked_at: r.get(10)?,
        line: r.get(11)?,
        taken_at: r.get(12)?,
        due_at: r.get(13)?,
        received_at: r.get(14)?,
        written_at: r.get(15)?,
        readback: r.get(16)?,
        retained_at: r.get(17)?,
        ended_at: r.get(18)?,
        end_reason: r.get(19)?,
        device_key: r.get(20)?,
    })
}

/// What an event carries besides itself.
#[derive(Debug, Clone, Default)]
pub struct EventContext<'a> {
    /// Who did it (`line:<name>`, `admin:<user>`, `station`).
    pub actor: &'a str,
    pub at: i64,
    /// Take: the line that takes it.
    pub line: Option<&'a str>,
    /// Take: when a result is due.
    pub due_at: Option<i64>,
    /// Written: the fingerprint read back.
    pub readback: Option<&'a str>,
    /// Failed, timed out, discard, quarantine, rework: why.
    pub reason: Option<&'a str>,
    /// Written: the factory's own fields the line reported with it (a lot
    /// number...), recorded in the audit entry.
    pub fields: Option<&'a std::collections::BTreeMap<String, String>>,
}

/// Moves one pack along the lifecycle, in the caller's transaction: checks the
/// transition table, updates the row (only if nobody changed it meanwhile),
/// queues the CA work the event needs, and writes the audit entry.
pub fn apply(
    tx: &Transaction<'_>,
    pack: &PackRow,
    event: Event,
    ctx: &EventContext<'_>,
) -> anyhow::Result<PackState> {
    let to = event
        .next(pack.state)
        .ok_or_else(|| StockError::Transition {
            id: pack.id.clone(),
            serial: pack.serial.clone(),
            from: pack.state,
            event: event.name(),
        })?;
    let (sql, values): (&str, Vec<rusqlite::types::Value>) = {
        use rusqlite::types::Value as V;
        let opt_text = |s: Option<&str>| s.map(|s| V::Text(s.to_string())).unwrap_or(V::Null);
        match event {
            Event::Take => (
                "line = ?4, taken_at = ?5, due_at = ?6",
                vec![
                    opt_text(ctx.line),
                    V::Integer(ctx.at),
                    ctx.due_at.map(V::Integer).unwrap_or(V::Null),
                ],
            ),
            Event::Received => ("received_at = ?4", vec![V::Integer(ctx.at)]),
            Event::Written => (
                "written_at = ?4, readback = ?5",
                vec![V::Integer(ctx.at), opt_text(ctx.readback)],
            ),
            Event::Flag | Event::Delete => ("retained_at = ?4", vec![V::Integer(ctx.at)]),
            Event::Failed
            | Event::TimedOut
            | Event::LineLost
            | Event::Discard
            | Event::Quarantine
            | Event::Rework => (
                "ended_at = ?4, end_reason = ?5",
                vec![
                    V::Integer(ctx.at),
                    V::Text(format!(
                        "{}{}",
                        event.name(),
                        ctx.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    )),
                ],
            ),
        }
    };
    let wipe = if event.wipes_key() {
        ", sealed_key = NULL"
    } else {
        ""
    };
    let statement =
        format!("UPDATE packs SET state = ?2, {sql}{wipe} WHERE pack_id = ?1 AND state = ?3");
    let mut all: Vec<rusqlite::types::Value> = vec![
        pack.pack_id.into(),
        to.as_str().to_string().into(),
        pack.state.as_str().to_string().into(),
    ];
    all.extend(values);
    let changed = tx
        .prepare_cached(&statement)?
        .execute(rusqlite::params_from_iter(all))?;
    if changed != 1 {
        return Err(StockError::Raced {
            id: pack.id.clone(),
            serial: pack.serial.clone(),
        }
        .into());
    }
    let mut detail = serde_json::json!({
        "id": pack.id,
        "serial": pack.serial,
        "fingerprint": pack.fingerprint,
        "from": pack.state.as_str(),
        "to": to.as_str(),
    });
    if let Some(line) = ctx.line.or(pack.line.as_deref()) {
        detail["line"] = line.into();
    }
    if let Some(readback) = ctx.readback {
        detail["readback"] = readback.into();
    }
    if let Some(reason) = ctx.reason {
        detail["reason"] = reason.into();
    }
    if let Some(fields) = ctx.fields.filter(|f| !f.is_empty()) {
        detail["fields"] = serde_json::json!(fields);
    }
    if let Some((kind, reason)) = event.ca_work().map(|(kind, reason)| match kind {
        // No replacement is made ahead for a key the device holds: its next
        // CSR is the replacement. The certificate is only revoked.
        QueueKind::Replace if pack.device_key => (QueueKind::Revoke, reason),
        _ => (kind, reason),
    }) {
        tx.prepare_cached(
            "INSERT INTO ca_queue (kind, id, model, serial, reason, queued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![kind.as_str(), pack.id, pack.model, pack.serial, reason.name(), ctx.at])?;
        detail["queued"] = kind.as_str().into();
    }
    audit::append(tx, ctx.actor, event.name(), &detail)?;
    Ok(to)
}

/// A pack as it arrives from the CA, its key already sealed; or, for a key
/// the device generated, no key at all (`sealed_key` none, `device_key`).
pub struct NewPack {
    pub id: String,
    pub model: String,
    pub serial: String,
    pub fingerprint: String,
    pub cert_pem: String,
    pub sealed_key: Option<Vec<u8>>,
    pub replaces: Option<String>,
    pub device_key: bool,
}

impl Stock {
    // ---- packs ----

    /// The pack with `serial`, read inside the caller's transaction.
    pub fn pack_in(tx: &Transaction<'_>, serial: &str) -> anyhow::Result<PackRow> {
        Ok(tx
            .prepare_cached(&format!(
                "SELECT {PACK_COLUMNS} FROM packs WHERE serial = ?1"
            ))?
            .query_row([serial], pack_row)?)
    }

    pub fn pack_by_serial(&self, serial: &str) -> anyhow::Result<Option<PackRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {PACK_COLUMNS} FROM packs WHERE serial = ?1"
            ))?
            .query_row([serial], pack_row)
            .optional()?)
    }

    /// The id's live pack, if it has one.
    pub fn live_pack(&self, id: &str) -> anyhow::Result<Option<PackRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {PACK_COLUMNS} FROM packs WHERE id = ?1 AND state IN ('stocked', 'handed_out', 'received', 'written', 'flagged', 'deleted')"
            ))?
            .query_row([id], pack_row)
            .optional()?)
    }

    /// Every pack the id ever had, oldest first.
    pub fn packs_of(&self, id: &str) -> anyhow::Result<Vec<PackRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PACK_COLUMNS} FROM packs WHERE id = ?1 ORDER BY pack_id"
        ))?;
        let rows = stmt.query_map([id], pack_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn packs_in_state(&self, state: PackState) -> anyhow::Result<Vec<PackRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PACK_COLUMNS} FROM packs WHERE state = ?1 ORDER BY pack_id"
        ))?;
        let rows = stmt.query_map([state.as_str()], pack_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Handed-out (or received) packs whose result was due before `now`.
    pub fn overdue(&self, now: i64) -> anyhow::Result<Vec<PackRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PACK_COLUMNS} FROM packs WHERE state IN ('handed_out', 'received') AND due_at < ?1 ORDER BY pack_id"
        ))?;
        let rows = stmt.query_map([now], pack_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Packs handed out to `line` (or received) with no result yet.
    pub fn held_by(&self, line: &str) -> anyhow::Result<Vec<PackRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PACK_COLUMNS} FROM packs WHERE state IN ('handed_out', 'received') AND line = ?1 ORDER BY pack_id"
        ))?;
        let rows = stmt.query_map([line], pack_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The ids among `ids` that have a live pack or CA work waiting.
    pub fn covered_ids(&self, ids: &[String]) -> anyhow::Result<std::collections::HashSet<String>> {
        let mut covered = std::collections::HashSet::new();
        let mut live = self.conn.prepare_cached(
            "SELECT 1 FROM packs WHERE id = ?1 AND state IN ('stocked', 'handed_out', 'received', 'written', 'flagged', 'deleted')",
        )?;
        let mut queued = self
            .conn
            .prepare_cached("SELECT 1 FROM ca_queue WHERE id = ?1 AND kind = 'replace'")?;
        for id in ids {
            if live.exists([id])? || queued.exists([id])? {
                covered.insert(id.clone());
            }
        }
        Ok(covered)
    }

    /// The root and issuing CA PEMs of a pack's chain.
    pub fn chain(&self, chain_id: i64) -> anyhow::Result<(String, String)> {
        Ok(self
            .conn
            .prepare_cached("SELECT root_pem, issuing_pem FROM chains WHERE chain_id = ?1")?
            .query_row([chain_id], |r| Ok((r.get(0)?, r.get(1)?)))?)
    }

    /// Stores freshly issued packs (one transaction, one audit entry).
    pub fn stock_packs(
        tx: &Transaction<'_>,
        root_pem: &str,
        issuing_pem: &str,
        packs: &[NewPack],
        actor: &str,
        action: &str,
    ) -> anyhow::Result<()> {
        tx.execute(
            "INSERT OR IGNORE INTO chains (root_pem, issuing_pem) VALUES (?1, ?2)",
            params![root_pem, issuing_pem],
        )?;
        let chain_id: i64 = tx.query_row(
            "SELECT chain_id FROM chains WHERE root_pem = ?1 AND issuing_pem = ?2",
            params![root_pem, issuing_pem],
            |r| r.get(0),
        )?;
        let now = now_unix();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO packs (id, model, serial, fingerprint, cert_pem, chain_id, sealed_key, state, replaces, stocked_at, device_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'stocked', ?8, ?9, ?10)",
            )?;
            for pack in packs {
                insert
                    .execute(params![
                        pack.id,
                        pack.model,
                        pack.serial,
                        pack.fingerprint,
                        pack.cert_pem,
                        chain_id,
                        pack.sealed_key,
                        pack.replaces,
                        now,
                        pack.device_key
                    ])
                    .map_err(|e| anyhow::anyhow!("cannot stock the pack of {}: {e}", pack.id))?;
            }
        }
        audit::append(
            tx,
            actor,
            action,
            &serde_json::json!({
                "count": packs.len(),
                "packs": packs.iter().map(|p| serde_json::json!({
                    "id": p.id, "serial": p.serial, "fingerprint": p.fingerprint, "replaces": p.replaces,
                })).collect::<Vec<_>>(),
            }),
        )?;
        Ok(())
    }

    /// Counts per (model, state).
    pub fn state_counts(&self) -> anyhow::Result<Vec<(String, PackState, usize)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT model, state, COUNT(*) FROM packs GROUP BY model, state")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (model, state, n) = row?;
            if let Some(state) = PackState::parse(&state) {
                out.push((model, state, n as usize));
            }
        }
        Ok(out)
    }

    /// Per model, within [from, to): certificates signed for keys that
    /// devices generated (their CSRs).
    pub fn signed_counts(&self, from: i64, to: i64) -> anyhow::Result<Vec<(String, usize)>> {
        let mut stmt = self.conn.prepare(
            "SELECT model, COUNT(*) FROM packs
             WHERE device_key = 1 AND stocked_at >= ?1 AND stocked_at < ?2 GROUP BY model",
        )?;
        let rows = stmt.query_map([from, to], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Per model, within [from, to): written into devices, failed or timed
    /// out, replacement packs stocked.
    pub fn day_counts(
        &self,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<(String, usize, usize, usize)>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT model,
                SUM(CASE WHEN written_at >= ?1 AND written_at < ?2 THEN 1 ELSE 0 END),
                SUM(CASE WHEN ended_at >= ?1 AND ended_at < ?2 AND {FAILED} THEN 1 ELSE 0 END),
                SUM(CASE WHEN replaces IS NOT NULL AND stocked_at >= ?1 AND stocked_at < ?2 THEN 1 ELSE 0 END)
             FROM packs GROUP BY model",
        ))?;
        let rows = stmt.query_map([from, to], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as usize,
                r.get::<_, i64>(2)? as usize,
                r.get::<_, i64>(3)? as usize,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stocked packs of a model (optionally only those planned for `day`).
    pub fn stocked_of_model(&self, model: &str, day: Option<&str>) -> anyhow::Result<Vec<PackRow>> {
        let columns = PACK_COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {columns} FROM packs p LEFT JOIN plan ON plan.id = p.id
             WHERE p.state = 'stocked' AND p.model = ?1 AND (?2 IS NULL OR plan.day = ?2) ORDER BY p.pack_id"
        ))?;
        let rows = stmt.query_map(params![model, day], pack_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_table_matches_the_design() {
        use PackState as S;
        assert_eq!(Event::Take.next(S::Stocked), Some(S::HandedOut));
        assert_eq!(Event::Take.next(S::HandedOut), None);
        assert_eq!(Event::Received.next(S::HandedOut), Some(S::Received));
        assert_eq!(Event::Received.next(S::Received), None);
        assert_eq!(Event::Written.next(S::Received), Some(S::Written));
        assert_eq!(Event::Written.next(S::HandedOut), Some(S::Written));
        assert_eq!(Event::Written.next(S::Stocked), None);
        assert_eq!(Event::Flag.next(S::Written), Some(S::Flagged));
        assert_eq!(Event::Delete.next(S::Flagged), Some(S::Deleted));
        assert_eq!(Event::Failed.next(S::Received), Some(S::Revoked));
        assert_eq!(Event::Failed.next(S::Written), None);
        assert_eq!(Event::TimedOut.next(S::HandedOut), Some(S::Revoked));
        assert_eq!(Event::Discard.next(S::Stocked), Some(S::Discarded));
        assert_eq!(Event::Discard.next(S::HandedOut), None);
        assert_eq!(Event::Rework.next(S::Deleted), Some(S::Revoked));
        assert_eq!(Event::Rework.next(S::Stocked), None);
        for state in PackState::ALL {
            assert_eq!(PackState::parse(state.as_str()), Some(state));
        }
    }

    fn stocked(stock: &mut Stock, id: &str, serial: &str) -> PackRow {
        let tx = stock.transaction().unwrap();
        Stock::stock_packs(
            &tx,
            "root",
            "issuing",
            &[NewPack {
                id: id.into(),
                model: id.split('-').next().unwrap().into(),
                serial: serial.into(),
                fingerprint: "fp".into(),
                cert_pem: "cert".into(),
                sealed_key: Some(vec![1, 2, 3]),
                replaces: None,
                device_key: false,
            }],
            "test",
            "fetch",
        )
        .unwrap();
        tx.commit().unwrap();
        stock.pack_by_serial(serial).unwrap().unwrap()
    }

    #[test]
    fn apply_moves_wipes_queues_and_audits() {
        let tmp = tempfile::tempdir().unwrap();
        let mut stock = Stock::open(&tmp.path().join("s.db"), true).unwrap();
        let pack = stocked(&mut stock, "A1-1", "01");
        let ctx = EventContext {
            actor: "line:l1",
            at: 100,
            line: Some("l1"),
            due_at: Some(200),
            ..Default::default()
        };
        let tx = stock.transaction().unwrap();
        assert_eq!(
            apply(&tx, &pack, Event::Take, &ctx).unwrap(),
            PackState::HandedOut
        );
        tx.commit().unwrap();
        let pack = stock.pack_by_serial("01").unwrap().unwrap();
        assert_eq!(pack.line.as_deref(), Some("l1"));
        // A stale view of the row cannot move it twice.
        let stale = PackRow {
            state: PackState::Stocked,
            ..pack.clone()
        };
        let tx = stock.transaction().unwrap();
        assert!(apply(&tx, &stale, Event::Take, &ctx).is_err());
        drop(tx);
        let tx = stock.transaction().unwrap();
        apply(
            &tx,
            &pack,
            Event::Failed,
            &EventContext {
                reason: Some("crc"),
                ..ctx.clone()
            },
        )
        .unwrap();
        tx.commit().unwrap();
        let pack = stock.pack_by_serial("01").unwrap().unwrap();
        assert_eq!(pack.state, PackState::Revoked);
        assert!(pack.sealed_key.is_none());
        let queue = stock.queue().unwrap();
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].kind, QueueKind::Replace);
        assert_eq!(audit::verify(stock.connection()).unwrap().entries, 3);
        // A second live pack for the same id is impossible while one is live.
        let _again = stocked(&mut stock, "A1-1", "02");
        let tx = stock.transaction().unwrap();
        let third = Stock::stock_packs(
            &tx,
            "root",
            "issuing",
            &[NewPack {
                id: "A1-1".into(),
                model: "A1".into(),
                serial: "03".into(),
                fingerprint: "fp".into(),
                cert_pem: "cert".into(),
                sealed_key: Some(vec![1]),
                replaces: None,
                device_key: false,
            }],
            "test",
            "fetch",
        );
        assert!(third.is_err());
    }
}
