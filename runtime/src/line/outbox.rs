//! The line's outbox: every result for the station is committed here first
//! (SQLite, WAL, synchronous=FULL, in the line's state folder) and then
//! delivered in order. A result the station cannot take now (it is down or
//! restarting) stays, and is delivered before any later result when the station
//! is back, also after a restart of the line. No key material is ever stored:
//! a result names the id, the certificate serial and the fingerprint (and a
//! written one the scan's own fields, such as a lot number).
//!
//! A write in progress is kept too ([`Outbox::begin_write`]): if the line dies
//! between the device's "written" and the results' commit, the restarted line
//! finds the interrupted write ([`Outbox::interrupted`]), asks the device what
//! it holds, and commits the results then ([`Outbox::push`] ends the write).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use rusqlite::{params, Connection};
use serde::Serialize;

use crate::service::client::{ClientError, ServiceClient};
use crate::store::db;
use crate::wire::station::{
    self as api, codes, FailedRequest, ReceivedRequest, ReportResponse, WrittenRequest,
};

pub const FILE: &str = "outbox.db";

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('received', 'written', 'failed')),
    id TEXT NOT NULL,
    serial TEXT NOT NULL,
    detail TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE delivered (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    serial TEXT NOT NULL,
    detail TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    delivered_at TEXT NOT NULL,
    answer TEXT NOT NULL
);
",
    "
CREATE TABLE writing (
    serial TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    certificate TEXT NOT NULL,
    started_at TEXT NOT NULL
);
",
    // The factory's own fields of a written result (JSON, a lot number...).
    "
ALTER TABLE outbox ADD COLUMN fields TEXT;
ALTER TABLE delivered ADD COLUMN fields TEXT;
ALTER TABLE writing ADD COLUMN fields TEXT;
",
];

/// A write that started and whose results were never committed (the line
/// stopped in between).
#[derive(Debug, Clone, Serialize)]
pub struct Interrupted {
    pub id: String,
    pub serial: String,
    /// The certificate that was being written: its fingerprint and PEM
    /// (public; the key is never kept here).
    pub fingerprint: String,
    pub certificate: String,
    pub started_at: String,
    /// The fields the scan came with, reported with the result.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// What a result says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Outcome {
    /// The device reported it received the pack.
    Received,
    /// Written, read back with this fingerprint, possession proved; with
    /// the factory's own fields of the scan (a lot number...).
    Written {
        fingerprint: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        fields: BTreeMap<String, String>,
    },
    /// The write failed, for this reason.
    Failed { reason: String },
}

impl Outcome {
    fn kind(&self) -> &'static str {
        match self {
            Outcome::Received => "received",
            Outcome::Written { .. } => "written",
            Outcome::Failed { .. } => "failed",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Outcome::Received => "",
            Outcome::Written { fingerprint, .. } => fingerprint,
            Outcome::Failed { reason } => reason,
        }
    }

    /// The fields column: JSON, or NULL when there are none.
    fn fields_text(&self) -> Option<String> {
        match self {
            Outcome::Written { fields, .. } if !fields.is_empty() => {
                Some(serde_json::to_string(fields).expect("a map of strings"))
            }
            _ => None,
        }
    }

    fn from_row(kind: &str, detail: String, fields: Option<String>) -> anyhow::Result<Outcome> {
        Ok(match kind {
            "received" => Outcome::Received,
            "written" => Outcome::Written {
                fingerprint: detail,
                fields: read_fields(fields)?,
            },
            "failed" => Outcome::Failed { reason: detail },
            other => anyhow::bail!("outbox holds an unknown result kind {other:?}"),
        })
    }
}

fn read_fields(text: Option<String>) -> anyhow::Result<BTreeMap<String, String>> {
    match text {
        None => Ok(BTreeMap::new()),
        Some(t) => serde_json::from_str(&t).context("the outbox holds fields that are not JSON"),
    }
}

/// One result waiting for the station.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub seq: i64,
    pub id: String,
    pub serial: String,
    #[serde(flatten)]
    pub result: Outcome,
    pub queued_at: String,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Item {
    /// "received", "written" or "failed".
    pub fn result_kind(&self) -> &'static str {
        self.result.kind()
    }
}

/// How one delivery round went.
#[derive(Debug, Default, Serialize)]
pub struct Flushed {
    /// Delivered now, in order, with the station's answer.
    pub delivered: Vec<(Item, String)>,
    /// Results the station will never take (it answered with a refusal
    /// other than "already have it"): dropped from the outbox, kept in
    /// `delivered` with the refusal, and named here.
    pub refused: Vec<(Item, String)>,
    /// Why delivery stopped early (the station is unreachable), if it did.
    pub stopped: Option<String>,
    /// Results still waiting.
    pub left: usize,
}

pub struct Outbox {
    conn: Connection,
}

impl Outbox {
    /// Opens (creating) the outbox in `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Outbox> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state folder {}", state_dir.display()))?;
        let conn = db::open(&state_dir.join(FILE), true, MIGRATIONS)?;
        Ok(Outbox { conn })
    }

    /// Notes that the write of `serial` (the certificate `cert_der`, for a
    /// scan with `fields`) is starting, before the device sees it.
    pub fn begin_write(
        &mut self,
        id: &str,
        serial: &str,
        cert_der: &[u8],
        fields: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let fields =
            (!fields.is_empty()).then(|| serde_json::to_string(fields).expect("a map of strings"));
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO writing (serial, id, fingerprint, certificate, started_at, fields) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                serial,
                id,
                crate::pki::fingerprint(cert_der),
                crate::pki::to_pem("CERTIFICATE", cert_der),
                db::now_text(),
                fields
            ])
            .context("cannot note the write in the outbox")?;
        Ok(())
    }

    /// Writes that started and never got their results, oldest first.
    pub fn interrupted(&self) -> anyhow::Result<Vec<Interrupted>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, serial, fingerprint, certificate, started_at, fields FROM writing ORDER BY started_at, serial",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                Interrupted {
                    id: r.get(0)?,
                    serial: r.get(1)?,
                    fingerprint: r.get(2)?,
                    certificate: r.get(3)?,
                    started_at: r.get(4)?,
                    fields: BTreeMap::new(),
                },
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut writes = Vec::new();
        for row in rows {
            let (mut w, fields) = row?;
            w.fields = read_fields(fields)?;
            writes.push(w);
        }
        Ok(writes)
    }

    /// Commits `results` for one pack, in order, in one transaction; the
    /// pack's write (if one was noted) ends in the same transaction.
    pub fn push(&mut self, id: &str, serial: &str, results: &[Outcome]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        let now = db::now_text();
        for r in results {
            tx.prepare_cached(
                "INSERT INTO outbox (kind, id, serial, detail, queued_at, fields) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![r.kind(), id, serial, r.detail(), now, r.fields_text()])?;
        }
        tx.prepare_cached("DELETE FROM writing WHERE serial = ?1")?
            .execute([serial])?;
        tx.commit()
            .context("cannot commit a result to the outbox")?;
        Ok(())
    }

    /// Everything waiting, oldest first.
    pub fn pending(&self) -> anyhow::Result<Vec<Item>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, id, serial, detail, queued_at, attempts, last_error, fields FROM outbox ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })?;
        let mut items = Vec::new();
        for row in rows {
            let (seq, kind, id, serial, detail, queued_at, attempts, last_error, fields) = row?;
            items.push(Item {
                seq,
                id,
                serial,
                result: Outcome::from_row(&kind, detail, fields)?,
                queued_at,
                attempts,
                last_error,
            });
        }
        Ok(items)
    }

    pub fn pending_count(&self) -> anyhow::Result<usize> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM outbox")?
            .query_row([], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// The last `n` delivered results, newest last.
    pub fn delivered(&self, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, kind, id, serial, detail, queued_at, delivered_at, answer, fields FROM delivered ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([n as i64], |r| {
            let fields: Option<String> = r.get(8)?;
            let mut row = serde_json::json!({
                "seq": r.get::<_, i64>(0)?,
                "kind": r.get::<_, String>(1)?,
                "id": r.get::<_, String>(2)?,
                "serial": r.get::<_, String>(3)?,
                "detail": r.get::<_, String>(4)?,
                "queued_at": r.get::<_, String>(5)?,
                "delivered_at": r.get::<_, String>(6)?,
                "answer": r.get::<_, String>(7)?,
            });
            if let Some(fields) =
                fields.and_then(|f| serde_json::from_str::<serde_json::Value>(&f).ok())
            {
                row["fields"] = fields;
            }
            Ok(row)
        })?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn settle(&mut self, done: &[(i64, String)]) -> anyhow::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let now = db::now_text();
        for (seq, answer) in done {
            tx.prepare_cached(
                "INSERT INTO delivered (seq, kind, id, serial, detail, queued_at, delivered_at, answer, fields)
                 SELECT seq, kind, id, serial, detail, queued_at, ?2, ?3, fields FROM outbox WHERE seq = ?1",
            )?
            .execute(params![seq, now, answer])?;
            tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
                .execute([seq])?;
        }
        tx.commit()
            .context("cannot record delivered results in the outbox")?;
        Ok(())
    }

    fn note_attempt(&mut self, seq: i64, error: &str) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            )?
            .execute(params![seq, error])?;
        Ok(())
    }

    /// Delivers everything waiting, in order, stopping at the first result the
    /// station cannot take now. A dropped keep-alive connection (the station
    /// restarted) gets one immediate retry.
    pub fn flush(
        &mut self,
        client: &ServiceClient,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Flushed> {
        let mut flushed = Flushed::default();
        let mut done: Vec<(i64, String)> = Vec::new();
        for item in self.pending()? {
            let mut answer = rt.block_on(send(client, &item));
            if matches!(answer, Err(ClientError::Unreachable { .. })) {
                answer = rt.block_on(send(client, &item));
            }
            match answer {
                Ok(r) => {
                    // The station has it; a crash here delivers it again
                    // after a restart, and the station answers "duplicate".
                    crate::failpoint::point("line", "line-delivered-before-settle");
                    let text = format!("state {}", r.state);
                    done.push((item.seq, text.clone()));
                    flushed.delivered.push((item, text));
                }
                Err(ClientError::Refused { code, .. }) if code == codes::DUPLICATE_REPORT => {
                    // It arrived before; only its answer was lost.
                    let text = "already recorded".to_string();
                    done.push((item.seq, text.clone()));
                    flushed.delivered.push((item, text));
                }
                Err(ClientError::Refused { code, message, .. }) => {
                    let text = format!("refused ({code}): {message}");
                    tracing::error!(id = %item.id, serial = %item.serial, kind = item.result.kind(), "the station refused a result: {text}");
                    done.push((item.seq, text.clone()));
                    flushed.refused.push((item, text));
                }
                Err(e) => {
                    let text = e.to_string();
                    self.note_attempt(item.seq, &text)?;
                    flushed.stopped = Some(text);
                    break;
                }
            }
        }
        self.settle(&done)?;
        flushed.left = self.pending_count()?;
        Ok(flushed)
    }
}

async fn send(client: &ServiceClient, item: &Item) -> Result<ReportResponse, ClientError> {
    let (id, serial) = (item.id.clone(), item.serial.clone());
    match &item.result {
        Outcome::Received => {
            client
                .post(api::RECEIVED, &ReceivedRequest { id, serial })
                .await
        }
        Outcome::Written {
            fingerprint,
            fields,
        } => {
            client
                .post(
                    api::WRITTEN,
                    &WrittenRequest {
                        id,
                        serial,
                        fingerprint: fingerprint.clone(),
                        fields: fields.clone(),
                    },
                )
                .await
        }
        Outcome::Failed { reason } => {
            client
                .post(
                    api::FAILED,
                    &FailedRequest {
                        id,
                        serial,
                        reason: reason.clone(),
                    },
                )
                .await
        }
    }
}
