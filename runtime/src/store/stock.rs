//! The station's stock: production plans, packs (keys sealed by the caller),
//! the durable queue of work for the CA, admin users and sessions, and the
//! audit log, in one SQLite file opened the one safe way ([`super::db::open`]).
//!
//! The pack lifecycle lives here and only here: [`Event::next`] is the whole
//! transition table and [`apply`] the only code that changes a pack's state,
//! always in the caller's transaction together with its audit entry and, when
//! the event needs the CA (a revocation, a replacement), the queue item.
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
//! A partial unique index keeps at most one live pack per device id.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::{audit, db};
use crate::pki::crl::Reason;

const SCHEMA_V1: &str = "
CREATE TABLE plan (
    id TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL,
    source TEXT NOT NULL,
    row INTEGER NOT NULL,
    imported_at INTEGER NOT NULL,
    discarded INTEGER NOT NULL DEFAULT 0,
    rework INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX plan_by_day ON plan(day, model);
CREATE TABLE chains (
    chain_id INTEGER PRIMARY KEY,
    root_pem TEXT NOT NULL,
    issuing_pem TEXT NOT NULL,
    UNIQUE (root_pem, issuing_pem)
);
CREATE TABLE packs (
    pack_id INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    chain_id INTEGER NOT NULL REFERENCES chains(chain_id),
    sealed_key BLOB,
    state TEXT NOT NULL CHECK (state IN ('stocked', 'handed_out', 'received', 'written',
        'flagged', 'deleted', 'revoked', 'discarded', 'quarantined')),
    replaces TEXT,
    stocked_at INTEGER NOT NULL,
    line TEXT,
    taken_at INTEGER,
    due_at INTEGER,
    received_at INTEGER,
    written_at INTEGER,
    readback TEXT,
    retained_at INTEGER,
    ended_at INTEGER,
    end_reason TEXT
);
CREATE UNIQUE INDEX one_live_pack_per_id ON packs(id)
    WHERE state IN ('stocked', 'handed_out', 'received', 'written', 'flagged', 'deleted');
CREATE INDEX packs_by_state ON packs(state, model);
CREATE INDEX packs_by_id ON packs(id);
CREATE TABLE ca_queue (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('replace', 'revoke')),
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL,
    reason TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_try_at INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX one_queue_item_per_serial ON ca_queue(serial);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    phc TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
";

pub fn migrations() -> Vec<&'static str> {
    vec![audit::SCHEMA, SCHEMA_V1]
}

/// Seconds since the Unix epoch: how the stock stores every time.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 UTC text of a stored time.
pub fn unix_text(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .map(db::time_text)
        .unwrap_or_else(|_| at.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackState {
    Stocked,
    HandedOut,
    Received,
    Written,
    Flagged,
    Deleted,
    Revoked,
    Discarded,
    Quarantined,
}

pub const ALL_STATES: [PackState; 9] = [
    PackState::Stocked,
    PackState::HandedOut,
    PackState::Received,
    PackState::Written,
    PackState::Flagged,
    PackState::Deleted,
    PackState::Revoked,
    PackState::Discarded,
    PackState::Quarantined,
];

impl PackState {
    pub fn as_str(self) -> &'static str {
        match self {
            PackState::Stocked => "stocked",
            PackState::HandedOut => "handed_out",
            PackState::Received => "received",
            PackState::Written => "written",
            PackState::Flagged => "flagged",
            PackState::Deleted => "deleted",
            PackState::Revoked => "revoked",
            PackState::Discarded => "discarded",
            PackState::Quarantined => "quarantined",
        }
    }

    pub fn parse(text: &str) -> Option<PackState> {
        ALL_STATES.iter().copied().find(|s| s.as_str() == text)
    }

    /// Whether the pack's certificate is the id's one valid certificate as far
    /// as the station is concerned (at most one live pack per id).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            PackState::Stocked
                | PackState::HandedOut
                | PackState::Received
                | PackState::Written
                | PackState::Flagged
                | PackState::Deleted
        )
    }

    /// In a device: written, whatever the retention did afterwards.
    pub fn is_written(self) -> bool {
        matches!(
            self,
            PackState::Written | PackState::Flagged | PackState::Deleted
        )
    }
}

impl std::fmt::Display for PackState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// Handed out with no result within the configured time (or the line was lost).
    TimedOut,
    Discard,
    /// The sealed key did not open (altered or moved row).
    Quarantine,
    /// An administrator authorised re-provisioning of a written device.
    Rework,
}

/// Work for the CA that an event leaves in the durable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Revoke the certificate and obtain a fresh pack for the id (one CA call).
    Replace,
    Revoke,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Replace => "replace",
            QueueKind::Revoke => "revoke",
        }
    }
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
            (Event::Failed | Event::TimedOut, S::HandedOut | S::Received) => S::Revoked,
            (Event::Discard, S::Stocked) => S::Discarded,
            (Event::Quarantine, S::Stocked) => S::Quarantined,
            (Event::Rework, S::Written | S::Flagged | S::Deleted) => S::Revoked,
            _ => return None,
        })
    }

    /// The CA work the event leaves behind, with the revocation reason.
    pub fn ca_work(self) -> Option<(QueueKind, Reason)> {
        match self {
            Event::Failed | Event::TimedOut | Event::Rework => {
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
            Event::Delete | Event::Failed | Event::TimedOut | Event::Discard | Event::Rework
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
}

const PACK_COLUMNS: &str = "pack_id, id, model, serial, fingerprint, cert_pem, chain_id, sealed_key, state, replaces, stocked_at, line, taken_at, due_at, received_at, written_at, readback, retained_at, ended_at, end_reason";

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
    if let Some((kind, reason)) = event.ca_work() {
        tx.prepare_cached(
            "INSERT INTO ca_queue (kind, id, model, serial, reason, queued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![kind.as_str(), pack.id, pack.model, pack.serial, reason.name(), ctx.at])?;
        detail["queued"] = kind.as_str().into();
    }
    audit::append(tx, ctx.actor, event.name(), &detail)?;
    Ok(to)
}

/// A pack as it arrives from the CA, its key already sealed.
pub struct NewPack {
    pub id: String,
    pub model: String,
    pub serial: String,
    pub fingerprint: String,
    pub cert_pem: String,
    pub sealed_key: Vec<u8>,
    pub replaces: Option<String>,
}

/// One production-plan row (one device id) as stored.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub id: String,
    pub day: String,
    pub model: String,
    pub serial: String,
    pub source: String,
    pub row: i64,
    pub discarded: bool,
    pub rework: bool,
}

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

/// What a plan import changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanChange {
    pub added: usize,
    pub kept: usize,
    pub removed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    pub seq: i64,
    pub kind: String,
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
        kind: r.get(1)?,
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

#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub phc: String,
    pub failures: i64,
    pub locked_until: i64,
}

pub struct Stock {
    conn: Connection,
}

impl Stock {
    pub fn open(path: &Path, create: bool) -> anyhow::Result<Stock> {
        let conn = db::open(path, create, &migrations())?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Stock { conn })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn transaction(&mut self) -> anyhow::Result<Transaction<'_>> {
        Ok(self.conn.transaction()?)
    }

    /// Folds the WAL into the database file and truncates it, so deleted key
    /// bytes (zeroed in place by `secure_delete`) leave no older copy behind.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        db::checkpoint_truncate(&self.conn)
    }

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

    pub fn plan_counts(&self, day: &str) -> anyhow::Result<Vec<(String, usize)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT model, COUNT(*) FROM plan WHERE day = ?1 GROUP BY model")?;
        let rows = stmt.query_map([day], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- packs ----

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
                "INSERT INTO packs (id, model, serial, fingerprint, cert_pem, chain_id, sealed_key, state, replaces, stocked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'stocked', ?8, ?9)",
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
                        now
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

    /// Per model, within [from, to): written into devices, failed or timed
    /// out, replacement packs stocked.
    pub fn day_counts(
        &self,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Vec<(String, usize, usize, usize)>> {
        let mut stmt = self.conn.prepare(
            "SELECT model,
                SUM(CASE WHEN written_at >= ?1 AND written_at < ?2 THEN 1 ELSE 0 END),
                SUM(CASE WHEN ended_at >= ?1 AND ended_at < ?2 AND (end_reason LIKE 'failed%' OR end_reason LIKE 'timed_out%') THEN 1 ELSE 0 END),
                SUM(CASE WHEN replaces IS NOT NULL AND stocked_at >= ?1 AND stocked_at < ?2 THEN 1 ELSE 0 END)
             FROM packs GROUP BY model",
        )?;
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
        detail["kind"] = item.kind.clone().into();
        detail["id"] = item.id.clone().into();
        detail["serial"] = item.serial.clone().into();
        let action = match item.kind.as_str() {
            "replace" => "replaced",
            _ => "revoked",
        };
        audit::append(tx, actor, action, &detail)?;
        Ok(())
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

    // ---- users and sessions ----

    pub fn user(&self, name: &str) -> anyhow::Result<Option<UserRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, phc, failures, locked_until FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok(UserRow {
                        name: r.get(0)?,
                        phc: r.get(1)?,
                        failures: r.get(2)?,
                        locked_until: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn user_count(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
    }

    pub fn add_user(&mut self, name: &str, phc: &str, actor: &str) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO users (name, phc, created_at) VALUES (?1, ?2, ?3)",
            params![name, phc, now_unix()],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                anyhow::anyhow!("admin user {name:?} already exists")
            }
            other => other.into(),
        })?;
        audit::append(&tx, actor, "user_add", &serde_json::json!({"user": name}))?;
        tx.commit()?;
        Ok(())
    }

    /// Records a login attempt's outcome (with its audit entry).
    pub fn record_login(
        &mut self,
        name: &str,
        ok: bool,
        failures: i64,
        locked_until: i64,
        from: &str,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE users SET failures = ?2, locked_until = ?3 WHERE name = ?1",
            params![name, failures, locked_until],
        )?;
        let action = if ok {
            "login"
        } else if locked_until > now_unix() {
            "login_locked"
        } else {
            "login_failed"
        };
        audit::append(
            &tx,
            &format!("admin:{name}"),
            action,
            &serde_json::json!({"from": from, "failures": failures}),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A login attempt for a user that does not exist (audited, nothing else).
    pub fn record_unknown_login(&mut self, name: &str, from: &str) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        audit::append(
            &tx,
            "admin:?",
            "login_failed",
            &serde_json::json!({"user": name, "from": from, "unknown_user": true}),
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn create_session(
        &mut self,
        token_hash: &str,
        user: &str,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE expires_at < ?1", [now_unix()])?;
        self.conn.execute(
            "INSERT INTO sessions (token_hash, user, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, user, now_unix(), expires_at],
        )?;
        Ok(())
    }

    /// The user and expiry of a session.
    pub fn session(&self, token_hash: &str) -> anyhow::Result<Option<(String, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT user, expires_at FROM sessions WHERE token_hash = ?1",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn end_session(&mut self, token_hash: &str) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
        Ok(())
    }

    /// Appends an audit entry on its own (for actions that change nothing else).
    pub fn audit(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        audit::append(&tx, actor, action, detail)?;
        tx.commit()?;
        Ok(())
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
        for state in ALL_STATES {
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
                sealed_key: vec![1, 2, 3],
                replaces: None,
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
        assert_eq!(queue[0].kind, "replace");
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
                sealed_key: vec![1],
                replaces: None,
            }],
            "test",
            "fetch",
        );
        assert!(third.is_err());
    }
}
