//! The ledger in a SQLite file beside the CA (`DIR/ledger.db`): the embedded
//! default, for one CA process. Its mutex serializes every request, so the
//! partial unique index and the single writer are all the guarantees need.
//!
//! The database and its `-wal`/`-shm` files are private to the CA's user (0600).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use time::OffsetDateTime;

use super::{LedgerError, LedgerStore, Reservation};
use crate::pki::crl::{Reason, RevokedEntry};
use crate::pki::serial::Serial;
use crate::store::{audit, db};
use crate::wire::ca::{CertKind, CertRecord, CertStatus, LedgerCount};

const SCHEMA_V1: &str = "
CREATE TABLE certs (
    serial TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('device', 'service')),
    status TEXT NOT NULL CHECK (status IN ('reserved', 'valid', 'revoked')),
    requester TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    issued_at TEXT,
    fingerprint TEXT,
    replaces TEXT,
    revoked_at TEXT,
    reason TEXT,
    audit_seq INTEGER NOT NULL
);
CREATE UNIQUE INDEX one_live_cert_per_device ON certs(subject)
    WHERE kind = 'device' AND status IN ('reserved', 'valid');
CREATE INDEX certs_by_subject ON certs(subject);
CREATE TABLE crl_state (
    scope TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    der BLOB,
    next_update TEXT
);
";

pub fn migrations() -> Vec<&'static str> {
    vec![audit::SCHEMA, SCHEMA_V1]
}

fn self_live(tx: &rusqlite::Transaction<'_>, subject: &str) -> anyhow::Result<Option<String>> {
    Ok(tx
        .query_row(
            "SELECT serial FROM certs WHERE subject = ?1 AND kind = 'device' AND status IN ('reserved', 'valid')",
            [subject],
            |r| r.get(0),
        )
        .optional()?)
}

pub struct SqliteLedger {
    conn: Connection,
}

const RECORD_COLUMNS: &str = "serial, subject, kind, status, requester, requested_at, issued_at, fingerprint, replaces, revoked_at, reason";

/// A text column that must be one of an enum's names (the schema's CHECKs keep it so).
fn column<T>(
    row: &rusqlite::Row<'_>,
    index: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unexpected value {text:?} in the ledger").into(),
        )
    })
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        serial: row.get(0)?,
        subject: row.get(1)?,
        kind: column(row, 2, CertKind::parse)?,
        status: column(row, 3, CertStatus::parse)?,
        requester: row.get(4)?,
        requested_at: row.get(5)?,
        issued_at: row.get(6)?,
        fingerprint: row.get(7)?,
        replaces: row.get(8)?,
        revoked_at: row.get(9)?,
        reason: row.get(10)?,
    })
}

/// Makes the ledger and its WAL files readable by the CA's user only. A new
/// database is created 0600 before SQLite opens it (SQLite gives `-wal` and
/// `-shm` the mode of the database file); an older one is tightened.
fn keep_private(path: &Path, create: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if create && !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    }
    let mut names = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        names.push(name.into());
    }
    for name in names {
        match std::fs::metadata(&name) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", name.display()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

impl SqliteLedger {
    pub fn open(path: &Path, create: bool) -> anyhow::Result<SqliteLedger> {
        if create || path.exists() {
            keep_private(path, create)?;
        }
        let conn = db::open(path, create, &migrations())?;
        // The WAL and shared-memory files exist now: make sure of them too.
        keep_private(path, false)?;
        Ok(SqliteLedger { conn })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Everything in the ledger, for copying it into another store.
    pub fn export(&self) -> anyhow::Result<super::Export> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RECORD_COLUMNS}, audit_seq FROM certs ORDER BY rowid"
        ))?;
        let certs = stmt
            .query_map([], |r| Ok((record(r)?, r.get::<_, i64>(11)?)))?
            .collect::<Result<_, _>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT seq, at, actor, action, detail, prev_hash, hash FROM audit ORDER BY seq",
        )?;
        let audit = stmt
            .query_map([], |r| {
                Ok(audit::StoredEntry {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    detail: r.get(4)?,
                    prev_hash: r.get(5)?,
                    hash: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut stmt = self
            .conn
            .prepare("SELECT scope, number, der, next_update FROM crl_state ORDER BY scope")?;
        let crls = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(super::Export { certs, audit, crls })
    }
}

impl LedgerStore for SqliteLedger {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn by_serial(&self, serial: &str) -> anyhow::Result<Option<CertRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM certs WHERE serial = ?1"),
                [serial],
                record,
            )
            .optional()?)
    }

    /// The reserved or valid certificate of a device id, if any.
    fn live_device_cert(&self, id: &str) -> anyhow::Result<Option<CertRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM certs WHERE subject = ?1 AND kind = 'device' AND status IN ('reserved', 'valid')"
                ),
                [id],
                record,
            )
            .optional()?)
    }

    /// Every certificate ever recorded for a subject, oldest first.
    fn history(&self, subject: &str) -> anyhow::Result<Vec<CertRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM certs WHERE subject = ?1 ORDER BY requested_at, rowid"
        ))?;
        let rows = stmt.query_map([subject], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records serials and ids before signing, revoking (superseded) the
    /// certificates that the reservations replace, all in one transaction with
    /// its audit entry.
    fn reserve(
        &mut self,
        items: &[Reservation],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<i64> {
        #[derive(Serialize)]
        struct Reserved<'a> {
            serial: String,
            subject: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            replaces: Option<String>,
        }
        let tx = self.conn.transaction()?;
        let now = db::time_text(now);
        // Only replacements need a look first; for the rest the partial unique
        // index refuses a second live certificate, and the error path below
        // names the certificate it collided with.
        for item in items {
            let Some(named) = &item.replaces else {
                continue;
            };
            let live: Option<String> = tx
                .prepare_cached(
                    "SELECT serial FROM certs WHERE subject = ?1 AND kind = 'device' AND status IN ('reserved', 'valid')",
                )?
                .query_row([&item.subject], |r| r.get(0))
                .optional()?;
            if live.as_deref() != Some(named.to_hex().as_str()) {
                return Err(LedgerError::ReplaceMismatch {
                    id: item.subject.clone(),
                    named: named.to_hex(),
                    actual: live
                        .map(|s| format!("its valid one is {s}"))
                        .unwrap_or_else(|| "it has none".into()),
                }
                .into());
            }
            tx.prepare_cached(
                "UPDATE certs SET status = 'revoked', revoked_at = ?2, reason = ?3 WHERE serial = ?1",
            )?
            .execute(params![named.to_hex(), now, Reason::Superseded.name()])?;
        }
        let detail = serde_json::json!({
            "count": items.len(),
            "certs": items.iter().map(|i| Reserved {
                serial: i.serial.to_hex(),
                subject: &i.subject,
                replaces: i.replaces.as_ref().map(Serial::to_hex),
            }).collect::<Vec<_>>(),
        });
        let seq = audit::append(&tx, requester, "reserve", &detail)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO certs (serial, subject, kind, status, requester, requested_at, replaces, audit_seq)
                 VALUES (?1, ?2, ?3, 'reserved', ?4, ?5, ?6, ?7)",
            )?;
            for item in items {
                let inserted = insert.execute(params![
                    item.serial.to_hex(),
                    item.subject,
                    item.kind.as_str(),
                    requester,
                    now,
                    item.replaces.as_ref().map(Serial::to_hex),
                    seq
                ]);
                if let Err(err) = inserted {
                    let is_unique = matches!(
                        &err,
                        rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation
                    );
                    if is_unique && item.kind == CertKind::Device {
                        if let Some(live) = self_live(&tx, &item.subject)? {
                            return Err(LedgerError::AlreadyCertified {
                                id: item.subject.clone(),
                                serial: live,
                            }
                            .into());
                        }
                    }
                    return Err(err.into());
                }
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    /// Marks reserved certificates as issued, with their fingerprints and DER.
    fn commit_issued(
        &mut self,
        issued: &[(Serial, String)],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Issued<'a> {
            serial: String,
            fingerprint: &'a str,
        }
        let tx = self.conn.transaction()?;
        let now = db::time_text(now);
        audit::append(
            &tx,
            requester,
            "issue",
            &serde_json::json!({
                "count": issued.len(),
                "certs": issued.iter().map(|(s, fp)| Issued { serial: s.to_hex(), fingerprint: fp }).collect::<Vec<_>>(),
            }),
        )?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE certs SET status = 'valid', issued_at = ?2, fingerprint = ?3
                 WHERE serial = ?1 AND status = 'reserved'",
            )?;
            for (serial, fingerprint) in issued {
                if update.execute(params![serial.to_hex(), now, fingerprint])? != 1 {
                    anyhow::bail!(
                        "serial {serial} was not reserved when its certificate was committed"
                    );
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Revokes reservations that were never completed (a failed batch, or a
    /// crash between reserve and commit found at start-up). Returns how many.
    fn abandon_reserved(
        &mut self,
        only: Option<&[Serial]>,
        why: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<usize> {
        let tx = self.conn.transaction()?;
        let serials: Vec<String> = match only {
            Some(list) => list.iter().map(Serial::to_hex).collect(),
            None => {
                let mut stmt = tx.prepare("SELECT serial FROM certs WHERE status = 'reserved'")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            }
        };
        if serials.is_empty() {
            return Ok(0);
        }
        audit::append(
            &tx,
            "ca",
            "abandon",
            &serde_json::json!({"why": why, "serials": serials}),
        )?;
        let now = db::time_text(now);
        let mut count = 0;
        {
            let mut update = tx.prepare_cached(
                "UPDATE certs SET status = 'revoked', revoked_at = ?2, reason = ?3 WHERE serial = ?1 AND status = 'reserved'",
            )?;
            for serial in &serials {
                count +=
                    update.execute(params![serial, now, Reason::CessationOfOperation.name()])?;
            }
        }
        tx.commit()?;
        Ok(count)
    }

    /// Revokes one certificate found by [`Self::find_revocable`], with its audit entry.
    fn revoke(
        &mut self,
        found: &CertRecord,
        reason: Reason,
        actor: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<CertRecord> {
        let tx = self.conn.transaction()?;
        audit::append(
            &tx,
            actor,
            "revoke",
            &serde_json::json!({"serial": found.serial, "subject": found.subject, "reason": reason.name()}),
        )?;
        let changed = tx.execute(
            "UPDATE certs SET status = 'revoked', revoked_at = ?2, reason = ?3 WHERE serial = ?1 AND status != 'revoked'",
            params![found.serial, db::time_text(now), reason.name()],
        )?;
        if changed != 1 {
            return Err(LedgerError::AlreadyRevoked {
                serial: found.serial.clone(),
                reason: String::new(),
            }
            .into());
        }
        tx.commit()?;
        Ok(self.by_serial(&found.serial)?.expect("just updated"))
    }

    /// Every revoked certificate: a CRL never drops a serial once listed, since
    /// certline certificates do not expire.
    fn revoked_entries(&self) -> anyhow::Result<Vec<RevokedEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT serial, revoked_at, reason FROM certs WHERE status = 'revoked' ORDER BY revoked_at, serial",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (serial, at, reason) = row?;
            out.push(RevokedEntry {
                serial: Serial::from_hex(&serial).map_err(anyhow::Error::msg)?,
                revoked_at: db::parse_time(&at)?,
                reason: Reason::parse(&reason).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Takes the next CRL number of a scope (strictly increasing, never reused).
    fn next_crl_number(&mut self, scope: &str) -> anyhow::Result<u64> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO crl_state (scope, number) VALUES (?1, 1)
             ON CONFLICT(scope) DO UPDATE SET number = number + 1",
            [scope],
        )?;
        let number: i64 = tx.query_row(
            "SELECT number FROM crl_state WHERE scope = ?1",
            [scope],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(number as u64)
    }

    fn store_crl(
        &mut self,
        scope: &str,
        number: u64,
        der: &[u8],
        next_update: &str,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        audit::append(
            &tx,
            "ca",
            "crl",
            &serde_json::json!({"scope": scope, "number": number}),
        )?;
        tx.execute(
            "UPDATE crl_state SET der = ?2, next_update = ?3 WHERE scope = ?1 AND number = ?4",
            params![scope, der, next_update, number as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The last CRL published for a scope: (number, DER, next update).
    fn current_crl(&self, scope: &str) -> anyhow::Result<Option<(u64, Vec<u8>, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT number, der, next_update FROM crl_state WHERE scope = ?1 AND der IS NOT NULL",
                [scope],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Audit sequence numbers that ledger rows point at but the log lacks:
    /// the tail of the log was cut.
    fn max_audit_seq(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(audit_seq), 0) FROM certs", [], |r| {
                r.get(0)
            })?)
    }

    /// How many certificates of each kind are in each status.
    fn counts(&self) -> anyhow::Result<Vec<LedgerCount>> {
        let mut stmt = self.conn.prepare(
            "SELECT kind, status, COUNT(*) FROM certs GROUP BY kind, status ORDER BY kind, status",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(LedgerCount {
                kind: column(r, 0, CertKind::parse)?,
                status: column(r, 1, CertStatus::parse)?,
                count: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One process owns a SQLite ledger: at its start every reservation is an orphan.
    fn abandon_orphans(&mut self, why: &str, now: OffsetDateTime) -> anyhow::Result<usize> {
        self.abandon_reserved(None, why, now)
    }

    fn verify_audit(&self) -> anyhow::Result<audit::Verified> {
        audit::verify(&self.conn)
    }

    fn audit_tail(&self, limit: i64) -> anyhow::Result<Vec<audit::Entry>> {
        audit::tail(&self.conn, limit)
    }
}
