//! The append-only audit log, hash-chained: each entry's hash covers the
//! previous entry's hash, so an edited or deleted entry breaks the chain and
//! `verify` names the first entry where it breaks.
//!
//! Entries are written inside the caller's transaction: if the audit entry
//! cannot be written, the state change it describes does not happen either.

use aws_lc_rs::digest;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// Schema for a database that carries an audit log (include in a migration).
pub const SCHEMA: &str = "
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub detail: serde_json::Value,
    pub hash: String,
}

fn entry_hash(prev: &str, seq: i64, at: &str, actor: &str, action: &str, detail: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    // Length-prefixed fields, so no two different entries hash alike.
    for field in [prev, &seq.to_string(), at, actor, action, detail] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field.as_bytes());
    }
    hex::encode(ctx.finish())
}

/// The entry that follows `head` (its sequence number and hash, `None` for an
/// empty log): what any store writes, so every store's chain is the same chain.
pub struct NextEntry {
    pub seq: i64,
    pub at: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

pub fn next_entry(
    head: Option<(i64, String)>,
    actor: &str,
    action: &str,
    detail: &serde_json::Value,
) -> NextEntry {
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let at = super::db::now_text();
    let detail = detail.to_string();
    let hash = entry_hash(&prev_hash, seq, &at, actor, action, &detail);
    NextEntry {
        seq,
        at,
        detail,
        prev_hash,
        hash,
    }
}

/// Appends one entry in the caller's transaction and returns its sequence number.
pub fn append(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    detail: &serde_json::Value,
) -> anyhow::Result<i64> {
    let last: Option<(i64, String)> = tx
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let entry = next_entry(last, actor, action, detail);
    tx.prepare_cached(
        "INSERT INTO audit (seq, at, actor, action, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            entry.seq,
            entry.at,
            actor,
            action,
            entry.detail,
            entry.prev_hash,
            entry.hash
        ])
    })
    .map_err(|e| anyhow::anyhow!("cannot write the audit log: {e}"))?;
    Ok(entry.seq)
}

/// What a verification found: the number of entries and the head hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    pub entries: i64,
    pub head: String,
}

/// One stored entry, as a verification reads it.
pub struct StoredEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Checks entries fed in sequence order; the error names the first entry that is wrong.
pub struct ChainCheck {
    expected_seq: i64,
    prev: String,
}

impl Default for ChainCheck {
    fn default() -> Self {
        ChainCheck {
            expected_seq: 1,
            prev: GENESIS.to_string(),
        }
    }
}

impl ChainCheck {
    pub fn next(&mut self, e: &StoredEntry) -> anyhow::Result<()> {
        let seq = e.seq;
        let expected_seq = self.expected_seq;
        if seq != expected_seq {
            anyhow::bail!(
                "audit entry {expected_seq} is missing (the log jumps from {} to {seq}): an entry was deleted",
                expected_seq - 1
            );
        }
        if e.prev_hash != self.prev {
            anyhow::bail!(
                "audit entry {seq} does not chain to entry {}: an entry was deleted or replaced",
                seq - 1
            );
        }
        if entry_hash(&self.prev, seq, &e.at, &e.actor, &e.action, &e.detail) != e.hash {
            anyhow::bail!(
                "audit entry {seq} ({} at {}) was edited: its hash does not match its content",
                e.action,
                e.at
            );
        }
        self.prev = e.hash.clone();
        self.expected_seq += 1;
        Ok(())
    }

    pub fn finish(self) -> Verified {
        Verified {
            entries: self.expected_seq - 1,
            head: self.prev,
        }
    }
}

/// Walks the whole chain; the error names the first entry that is wrong.
pub fn verify(conn: &Connection) -> anyhow::Result<Verified> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, detail, prev_hash, hash FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut check = ChainCheck::default();
    while let Some(row) = rows.next()? {
        check.next(&StoredEntry {
            seq: row.get(0)?,
            at: row.get(1)?,
            actor: row.get(2)?,
            action: row.get(3)?,
            detail: row.get(4)?,
            prev_hash: row.get(5)?,
            hash: row.get(6)?,
        })?;
    }
    Ok(check.finish())
}

/// An entry's stored detail as JSON (kept as a string if it is not JSON).
pub fn parse_detail(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

/// What a page of the audit log is filtered by (each field optional).
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// The action exactly (`discard`, `login_failed`, ...).
    pub action: Option<&'a str>,
    /// Part of the actor (`admin:alice`, `line-1`).
    pub actor: Option<&'a str>,
    /// Part of the detail's text (a device id, a serial).
    pub text: Option<&'a str>,
    /// Only entries before this sequence number (the next page).
    pub before: Option<i64>,
}

/// Up to `limit` entries that match `filter`, newest first.
pub fn page(conn: &Connection, filter: &Filter<'_>, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let like = |s: Option<&str>| {
        s.map(|s| {
            format!(
                "%{}%",
                s.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        })
    };
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, detail, hash FROM audit
         WHERE (?1 IS NULL OR action = ?1)
           AND (?2 IS NULL OR actor LIKE ?2 ESCAPE '\\')
           AND (?3 IS NULL OR detail LIKE ?3 ESCAPE '\\')
           AND (?4 IS NULL OR seq < ?4)
         ORDER BY seq DESC LIMIT ?5",
    )?;
    let entries = stmt
        .query_map(
            params![
                filter.action,
                like(filter.actor),
                like(filter.text),
                filter.before,
                limit
            ],
            entry,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries)
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let detail: String = r.get(4)?;
    Ok(Entry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        hash: r.get(5)?,
    })
}

/// The newest `limit` entries, oldest first.
pub fn tail(conn: &Connection, limit: i64) -> anyhow::Result<Vec<Entry>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, detail, hash FROM audit ORDER BY seq DESC LIMIT ?1",
    )?;
    let mut entries = stmt
        .query_map([limit], entry)?
        .collect::<Result<Vec<_>, _>>()?;
    entries.reverse();
    Ok(entries)
}
