//! The ledger in a SQLite file beside the CA (`DIR/ledger.db`): the embedded
//! default, for one CA process. Its mutex serializes every request, so the
//! partial unique index and the single writer are all the guarantees need;
//! readers and the CRL publisher use connections of their own (WAL: readers
//! never wait for the writer), and every write transaction takes the write
//! lock first.
//!
//! The database and its `-wal`/`-shm` files are private to the CA's user (0600).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::{
    check_replaces, crl_scope, issue_detail, reserve_detail, revoked_entry, CrlStatus, Export,
    ExportedCert, ExportedCrl, Ledger, LedgerError, LedgerStore, Reservation, CRL_SCOPE_ISSUING,
};
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

/// Revocation at fleet scale (issue 15). Every transaction that revokes
/// counts up `crl_pending.revocations` by one and stamps the rows it revoked
/// with the new count (`revoked_seq`); each stored CRL records the count it
/// covers. So "is the CRL behind the ledger?" is two single-row reads, and
/// the publisher reads only the revocations after the ones it already
/// listed, through a partial index, in order (no scan of valid rows, no
/// sort). Rows revoked before this migration get sequence 0.
const SCHEMA_V2: &str = "
ALTER TABLE certs ADD COLUMN revoked_seq INTEGER;
UPDATE certs SET revoked_seq = 0 WHERE status = 'revoked';
CREATE INDEX certs_revoked ON certs(revoked_seq, serial) WHERE status = 'revoked';
CREATE TABLE crl_pending (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    revocations INTEGER NOT NULL
);
INSERT INTO crl_pending (one, revocations) VALUES (1, 0);
ALTER TABLE crl_state ADD COLUMN covers INTEGER;
";

/// Schema 3: the ledger keeps the DER of every certificate it signs and who
/// revoked it. Rows from before have neither: the migration fills nothing in
/// (it cannot: the CA never kept them) and leaves a note saying how many rows
/// that is, which `ca show` and `ca export` repeat for such a row.
const SCHEMA_V3: &str = "
ALTER TABLE certs ADD COLUMN der BLOB;
ALTER TABLE certs ADD COLUMN revoked_by TEXT;
CREATE INDEX certs_by_issued_at ON certs(issued_at);
CREATE INDEX certs_by_revoked_at ON certs(revoked_at);
CREATE TABLE ledger_notes (
    id INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
INSERT INTO ledger_notes (note)
    SELECT 'schema 3 (the ledger keeps each certificate''s DER) found ' || COUNT(*) ||
           ' certificate(s) issued before it: their DER was never kept and stays missing; serial, fingerprint and states are kept'
    FROM certs WHERE issued_at IS NOT NULL HAVING COUNT(*) > 0;
";

/// Schema 4 (issue 17): a replacement revokes the certificate it replaces
/// when the new one is committed, not when it is reserved, so a device keeps
/// a valid certificate through a failed signing. A device id may then have a
/// valid certificate and a reservation at once: one of each, never two.
const SCHEMA_V4: &str = "
DROP INDEX one_live_cert_per_device;
CREATE UNIQUE INDEX one_valid_cert_per_device ON certs(subject)
    WHERE kind = 'device' AND status = 'valid';
CREATE UNIQUE INDEX one_reservation_per_device ON certs(subject)
    WHERE kind = 'device' AND status = 'reserved';
";

/// Schema 5: partitioned CRLs (issue 15). A device certificate signed while
/// ca.toml has a `crl_url` belongs to the CRL partition of its issuance month
/// (`crl_partition`, e.g. `2026-12`; its CDP names that partition's URL);
/// service credentials and rows from before stay in the base CRL (NULL). A
/// partition's CRL is read through `certs_revoked_by_partition`: a
/// publication reads its own partition, never the whole history. Each
/// partition's CRL is a `crl_state` row (scope `issuing:<partition>`),
/// registered (without DER) by the reservation that first uses it.
const SCHEMA_V5: &str = "
ALTER TABLE certs ADD COLUMN crl_partition TEXT;
CREATE INDEX certs_revoked_by_partition ON certs(crl_partition, serial) WHERE status = 'revoked';
";

pub fn migrations() -> Vec<&'static str> {
    vec![
        audit::SCHEMA,
        SCHEMA_V1,
        SCHEMA_V2,
        SCHEMA_V3,
        SCHEMA_V4,
        SCHEMA_V5,
    ]
}

/// The sequence number the rows a transaction revokes are stamped with.
fn revocation_seq(tx: &rusqlite::Transaction<'_>) -> anyhow::Result<i64> {
    Ok(tx
        .prepare_cached("SELECT revocations + 1 FROM crl_pending")?
        .query_row([], |r| r.get(0))?)
}

/// Counts a transaction that revoked `rows` rows (stamped with
/// [`revocation_seq`]), inside that transaction.
fn count_revocations(tx: &rusqlite::Transaction<'_>, rows: usize) -> anyhow::Result<()> {
    if rows > 0 {
        tx.prepare_cached("UPDATE crl_pending SET revocations = revocations + 1")?
            .execute([])?;
    }
    Ok(())
}

/// Registers the CRL partition of each reservation (a `crl_state` row
/// without DER, number 0), inside the reserving transaction: a partition
/// whose first certificate is being signed gets a CRL at the next
/// publication, empty or not, so its CDP never points at nothing.
fn register_crl_partitions(
    tx: &rusqlite::Transaction<'_>,
    items: &[Reservation],
) -> anyhow::Result<()> {
    let mut last: Option<&str> = None;
    for partition in items.iter().filter_map(|i| i.crl_partition.as_deref()) {
        if last == Some(partition) {
            continue;
        }
        last = Some(partition);
        tx.prepare_cached("INSERT OR IGNORE INTO crl_state (scope, number) VALUES (?1, 0)")?
            .execute([crl_scope(Some(partition))])?;
    }
    Ok(())
}

/// The reservation a device id has, if any (another request is issuing it).
fn reservation_of(tx: &rusqlite::Transaction<'_>, subject: &str) -> anyhow::Result<Option<String>> {
    Ok(tx
        .query_row(
            "SELECT serial FROM certs WHERE subject = ?1 AND kind = 'device' AND status = 'reserved'",
            [subject],
            |r| r.get(0),
        )
        .optional()?)
}

pub struct SqliteLedger {
    conn: Connection,
}

const RECORD_COLUMNS: &str = "serial, subject, kind, status, requester, requested_at, issued_at, fingerprint, replaces, revoked_at, reason, revoked_by";

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
        revoked_by: row.get(11)?,
    })
}

/// The CRL entries of rows of (serial, revoked_at, reason).
fn revoked_rows(mut rows: rusqlite::Rows<'_>) -> anyhow::Result<Vec<RevokedEntry>> {
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(revoked_entry(
            &r.get::<_, String>(0)?,
            &r.get::<_, String>(1)?,
            &r.get::<_, String>(2)?,
        )?);
    }
    Ok(out)
}

impl SqliteLedger {
    /// Opens (creating if `create`) the ledger; [`db::open`] keeps the
    /// file and its `-wal`/`-shm` private to the CA's user (0600).
    pub fn open(path: &Path, create: bool) -> anyhow::Result<SqliteLedger> {
        let conn = db::open(path, create, &migrations())?;
        Ok(SqliteLedger { conn })
    }

    /// A second connection to the same database.
    fn open_again(&self) -> anyhow::Result<SqliteLedger> {
        let path = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the ledger has no file to open again"))?;
        SqliteLedger::open(Path::new(path), false)
    }

    /// A write transaction that takes the write lock at once (IMMEDIATE):
    /// the CRL publisher writes through a connection of its own, and a
    /// deferred transaction that read before writing would fail with "database
    /// is locked" instead of waiting (the busy timeout) when the other wrote
    /// in between.
    fn write(&mut self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Everything in the ledger, for copying it into another store.
    pub fn export(&self) -> anyhow::Result<Export> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RECORD_COLUMNS}, audit_seq, der, revoked_seq, crl_partition FROM certs ORDER BY rowid"
        ))?;
        let certs = stmt
            .query_map([], |r| {
                Ok(ExportedCert {
                    record: record(r)?,
                    audit_seq: r.get(12)?,
                    der: r.get(13)?,
                    revoked_seq: r.get(14)?,
                    crl_partition: r.get(15)?,
                })
            })?
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
        let mut stmt = self.conn.prepare(
            "SELECT scope, number, der, next_update, covers FROM crl_state ORDER BY scope",
        )?;
        let crls = stmt
            .query_map([], |r| {
                Ok(ExportedCrl {
                    scope: r.get(0)?,
                    number: r.get::<_, i64>(1)? as u64,
                    der: r.get(2)?,
                    next_update: r.get(3)?,
                    covers: r.get::<_, Option<i64>>(4)?.map(|c| c as u64),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Export {
            certs,
            audit,
            crls,
            revocations: self.revocations()?,
            notes: self.notes()?,
        })
    }
}

impl LedgerStore for SqliteLedger {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn reopen(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger::new(self.open_again()?))
    }

    /// The publisher's connection writes only CRLs and their audit entries,
    /// public data, so a superseded CRL's pages are freed without being
    /// overwritten (`secure_delete` off for this connection alone; every
    /// other connection keeps it on).
    fn reopen_for_crls(&self) -> anyhow::Result<Ledger> {
        let ledger = self.open_again()?;
        ledger.conn.execute_batch("PRAGMA secure_delete=OFF;")?;
        Ok(Ledger::new(ledger))
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

    fn live_device_cert(&self, id: &str) -> anyhow::Result<Option<CertRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM certs WHERE subject = ?1 AND kind = 'device' AND status IN ('reserved', 'valid')
                     ORDER BY status = 'valid' DESC LIMIT 1"
                ),
                [id],
                record,
            )
            .optional()?)
    }

    /// The DER of a certificate, if the ledger kept it (see [`NO_DER_NOTE`]).
    fn der(&self, serial: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT der FROM certs WHERE serial = ?1", [serial], |r| {
                r.get(0)
            })
            .optional()?
            .flatten())
    }

    /// The newest certificate recorded for a subject: its live one if it has one.
    fn latest(&self, subject: &str) -> anyhow::Result<Option<CertRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM certs WHERE subject = ?1
                     ORDER BY status IN ('reserved', 'valid') DESC, requested_at DESC, rowid DESC LIMIT 1"
                ),
                [subject],
                record,
            )
            .optional()?)
    }

    /// Every certificate issued or revoked at or after `since` (either
    /// counts), oldest event first: what an auditor's export lists.
    fn changed_since(&self, since: OffsetDateTime) -> anyhow::Result<Vec<CertRecord>> {
        let since = db::time_text(since);
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM certs WHERE issued_at >= ?1 OR revoked_at >= ?1
             ORDER BY COALESCE(issued_at, revoked_at), rowid"
        ))?;
        let rows = stmt.query_map([since], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What migrations noted about rows they could not fill in.
    fn notes(&self) -> anyhow::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT note FROM ledger_notes ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every certificate ever recorded for a subject, oldest first.
    fn history(&self, subject: &str) -> anyhow::Result<Vec<CertRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM certs WHERE subject = ?1 ORDER BY requested_at, rowid"
        ))?;
        let rows = stmt.query_map([subject], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn reserve(
        &mut self,
        items: &[Reservation],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<i64> {
        let tx = self.write()?;
        let now = db::time_text(now);
        // Under the write lock: no valid certificate can appear meanwhile.
        for item in items.iter().filter(|i| i.kind == CertKind::Device) {
            let valid: Option<String> = tx
                .prepare_cached(
                    "SELECT serial FROM certs WHERE subject = ?1 AND kind = 'device' AND status = 'valid'",
                )?
                .query_row([&item.subject], |r| r.get(0))
                .optional()?;
            check_replaces(item, valid)?;
        }
        let detail = reserve_detail(items);
        let audit_seq = audit::append(&tx, requester, "reserve", &detail)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO certs (serial, subject, kind, status, requester, requested_at, replaces, audit_seq, crl_partition)
                 VALUES (?1, ?2, ?3, 'reserved', ?4, ?5, ?6, ?7, ?8)",
            )?;
            for item in items {
                let inserted = insert.execute(params![
                    item.serial.to_hex(),
                    item.subject,
                    item.kind.as_str(),
                    requester,
                    now,
                    item.replaces.as_ref().map(Serial::to_hex),
                    audit_seq,
                    item.crl_partition
                ]);
                if let Err(err) = inserted {
                    let is_unique = matches!(
                        &err,
                        rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation
                    );
                    if is_unique && item.kind == CertKind::Device {
                        if let Some(serial) = reservation_of(&tx, &item.subject)? {
                            return Err(LedgerError::BeingIssued {
                                id: item.subject.clone(),
                                serial,
                            }
                            .into());
                        }
                    }
                    return Err(err.into());
                }
            }
        }
        register_crl_partitions(&tx, items)?;
        tx.commit()?;
        Ok(audit_seq)
    }

    /// Marks reserved certificates as issued, keeping each one's DER (its
    /// fingerprint is computed here, from that DER).
    fn commit_issued(
        &mut self,
        issued: &[(Serial, Vec<u8>)],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<()> {
        let (fingerprints, detail) = issue_detail(issued);
        let tx = self.write()?;
        let now = db::time_text(now);
        audit::append(&tx, requester, "issue", &detail)?;
        let seq = revocation_seq(&tx)?;
        let mut replaced = 0;
        {
            // The replaced certificate first: one valid certificate per id.
            let mut supersede = tx.prepare_cached(
                "UPDATE certs SET status = 'revoked', revoked_at = ?2, reason = ?3, revoked_by = ?4, revoked_seq = ?5
                 WHERE serial = (SELECT replaces FROM certs WHERE serial = ?1 AND status = 'reserved') AND status = 'valid'",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE certs SET status = 'valid', issued_at = ?2, fingerprint = ?3, der = ?4
                 WHERE serial = ?1 AND status = 'reserved'",
            )?;
            for ((serial, der), fingerprint) in issued.iter().zip(&fingerprints) {
                replaced += supersede.execute(params![
                    serial.to_hex(),
                    now,
                    Reason::Superseded.name(),
                    requester,
                    seq
                ])?;
                if update.execute(params![serial.to_hex(), now, fingerprint, der])? != 1 {
                    anyhow::bail!(
                        "serial {serial} was not reserved when its certificate was committed"
                    );
                }
            }
        }
        count_revocations(&tx, replaced)?;
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
        let tx = self.write()?;
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
        let seq = revocation_seq(&tx)?;
        let mut count = 0;
        {
            let mut update = tx.prepare_cached(
                "UPDATE certs SET status = 'revoked', revoked_at = ?2, reason = ?3, revoked_by = 'ca', revoked_seq = ?4 WHERE serial = ?1 AND status = 'reserved'",
            )?;
            for serial in &serials {
                count += update.execute(params![
                    serial,
                    now,
                    Reason::CessationOfOperation.name(),
                    seq
                ])?;
            }
        }
        count_revocations(&tx, count)?;
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
        let tx = self.write()?;
        audit::append(
            &tx,
            actor,
            "revoke",
            &serde_json::json!({"serial": found.serial, "subject": found.subject, "reason": reason.name()}),
        )?;
        let seq = revocation_seq(&tx)?;
        let changed = tx.execute(
            "UPDATE certs SET status = 'revoked', revoked_at = ?2, reason = ?3, revoked_by = ?4, revoked_seq = ?5 WHERE serial = ?1 AND status != 'revoked'",
            params![found.serial, db::time_text(now), reason.name(), actor, seq],
        )?;
        if changed != 1 {
            return Err(LedgerError::AlreadyRevoked {
                serial: found.serial.clone(),
                reason: String::new(),
            }
            .into());
        }
        count_revocations(&tx, 1)?;
        tx.commit()?;
        Ok(self.by_serial(&found.serial)?.expect("just updated"))
    }

    /// The certificates revoked by the revoking transactions after number
    /// `after` (None: from the first) up to number `upto` ([`Self::revocations`]),
    /// oldest first: what a publisher that listed up to `after` adds. Read
    /// through the partial index `certs_revoked`: no scan of valid rows, no sort.
    fn revoked_between(&self, after: Option<u64>, upto: u64) -> anyhow::Result<Vec<RevokedEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT serial, revoked_at, reason FROM certs INDEXED BY certs_revoked
             WHERE status = 'revoked' AND revoked_seq > ?1 AND revoked_seq <= ?2
             ORDER BY revoked_seq, serial",
        )?;
        let after = after.map_or(-1, |a| a as i64);
        let entries = revoked_rows(stmt.query(params![after, upto as i64])?)?;
        Ok(entries)
    }

    /// The CRL partitions (None: the base CRL) of the certificates revoked
    /// by the revoking transactions after number `after` (None: from the
    /// first) up to number `upto`: the partitions a publisher that covered
    /// `after` must sign again. Read through `certs_revoked`.
    fn revoked_partitions_between(
        &self,
        after: Option<u64>,
        upto: u64,
    ) -> anyhow::Result<Vec<Option<String>>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT crl_partition FROM certs INDEXED BY certs_revoked
             WHERE status = 'revoked' AND revoked_seq > ?1 AND revoked_seq <= ?2",
        )?;
        let after = after.map_or(-1, |a| a as i64);
        let rows = stmt.query_map(params![after, upto as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every revoked certificate of one CRL partition (None: the base CRL),
    /// through `certs_revoked_by_partition`: what that partition's CRL lists,
    /// read without touching any other partition's rows.
    fn revoked_in_partition(&self, partition: Option<&str>) -> anyhow::Result<Vec<RevokedEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT serial, revoked_at, reason FROM certs INDEXED BY certs_revoked_by_partition
             WHERE status = 'revoked' AND crl_partition IS ?1 ORDER BY serial",
        )?;
        let entries = revoked_rows(stmt.query(params![partition])?)?;
        Ok(entries)
    }

    /// Every scope of the issuing CA's CRLs (the base and each registered
    /// partition), with what its stored CRL covers (None: registered, never
    /// published).
    fn issuing_crl_scopes(&self) -> anyhow::Result<Vec<(String, Option<CrlStatus>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT scope, number, covers, der IS NOT NULL FROM crl_state
             WHERE scope = ?1 OR scope LIKE ?1 || ':%' ORDER BY scope",
        )?;
        let rows = stmt.query_map([CRL_SCOPE_ISSUING], |r| {
            let status = CrlStatus {
                number: r.get::<_, i64>(1)? as u64,
                covers: r.get::<_, Option<i64>>(2)?.map(|c| c as u64),
            };
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(3)?.then_some(status),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that the stored CRLs of `scopes` cover the ledger's
    /// revocations up to `covers` (a publisher found none of theirs since).
    fn set_crl_covers(&mut self, scopes: &[String], covers: u64) -> anyhow::Result<()> {
        let tx = self.write()?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE crl_state SET covers = ?2 WHERE scope = ?1 AND der IS NOT NULL AND (covers IS NULL OR covers < ?2)",
            )?;
            for scope in scopes {
                update.execute(params![scope, covers as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Fills the ledger with `count` revoked device certificates that were
    /// never signed (random serials, ids `<model>-<n>`), in one transaction
    /// with one audit entry: how `ca bench --revoked N` gives a CA years of
    /// revocations before it measures anything through the API. With
    /// `partitions`, row n belongs to CRL partition `partitions[n % len]`
    /// (years of issuance months), as a CA with `crl_url` would have them.
    fn fill_revoked_for_bench(
        &mut self,
        model: &str,
        count: usize,
        at: OffsetDateTime,
        partitions: &[String],
    ) -> anyhow::Result<()> {
        let tx = self.write()?;
        let revoked_seq = revocation_seq(&tx)?;
        let seq = audit::append(
            &tx,
            "ca bench",
            "bench-fill",
            &serde_json::json!({"revoked": count, "model": model}),
        )?;
        let at = db::time_text(at);
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO certs (serial, subject, kind, status, requester, requested_at, issued_at, revoked_at, reason, audit_seq, revoked_seq, crl_partition)
                 VALUES (?1, ?2, 'device', 'revoked', 'ca bench', ?3, ?3, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for n in 0..count {
                let partition = (!partitions.is_empty()).then(|| &partitions[n % partitions.len()]);
                insert.execute(params![
                    Serial::random().to_hex(),
                    format!("{model}-{n:08}"),
                    at,
                    Reason::Superseded.name(),
                    seq,
                    revoked_seq,
                    partition
                ])?;
            }
        }
        count_revocations(&tx, count)?;
        tx.commit()?;
        Ok(())
    }

    /// Takes the next CRL number of a scope (strictly increasing, never reused).
    fn next_crl_number(&mut self, scope: &str) -> anyhow::Result<u64> {
        let tx = self.write()?;
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

    /// How many revoking transactions the ledger has committed, ever (see
    /// [`CrlStatus::covers`]; each stamped the rows it revoked with its number).
    fn revocations(&self) -> anyhow::Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT revocations FROM crl_pending")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The number and coverage of the last CRL stored for a scope (no bytes read).
    fn crl_status(&self, scope: &str) -> anyhow::Result<Option<CrlStatus>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT number, covers FROM crl_state WHERE scope = ?1 AND der IS NOT NULL",
            )?
            .query_row([scope], |r| {
                Ok(CrlStatus {
                    number: r.get::<_, i64>(0)? as u64,
                    covers: r.get::<_, Option<i64>>(1)?.map(|c| c as u64),
                })
            })
            .optional()?)
    }

    /// Stores a signed CRL with the revocation count it was built from.
    fn store_crl(
        &mut self,
        scope: &str,
        number: u64,
        der: &[u8],
        next_update: &str,
        covers: u64,
    ) -> anyhow::Result<()> {
        let tx = self.write()?;
        audit::append(
            &tx,
            "ca",
            "crl",
            &serde_json::json!({"scope": scope, "number": number}),
        )?;
        // A publisher that took a higher number meanwhile stores its own
        // (it read the revocations after taking it, so it lists as much).
        tx.execute(
            "UPDATE crl_state SET der = ?2, next_update = ?3, covers = ?5 WHERE scope = ?1 AND number = ?4",
            params![scope, der, next_update, number as i64, covers as i64],
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

    /// An audit entry on its own, for a refusal that changes nothing else.
    fn audit_only(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<i64> {
        let tx = self.write()?;
        let seq = audit::append(&tx, actor, action, detail)?;
        tx.commit()?;
        Ok(seq)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ledger::states;

    #[test]
    fn rows_from_before_schema_3_keep_no_der_and_the_migration_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let now = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        {
            // A ledger as schema 2 left it, with one issued certificate.
            let conn = db::open(&path, true, &migrations()[..3]).unwrap();
            conn.execute(
                "INSERT INTO certs (serial, subject, kind, status, requester, requested_at, issued_at, fingerprint, audit_seq)
                 VALUES ('0a', '3012-1', 'device', 'valid', 'ca issue', ?1, ?1, 'ff', 0)",
                [db::time_text(now)],
            )
            .unwrap();
        }
        let mut ledger = SqliteLedger::open(&path, false).unwrap();
        assert_eq!(ledger.der("0a").unwrap(), None);
        let notes = ledger.notes().unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("1 certificate(s)") && notes[0].contains("DER"));
        let old = ledger.by_serial("0a").unwrap().unwrap();
        let states: Vec<_> = states(&old).iter().map(|s| s.status).collect();
        assert_eq!(states, [CertStatus::Reserved, CertStatus::Valid]);

        // From schema 3 on, every certificate is kept.
        let serial = Serial::random();
        let item = Reservation {
            serial: serial.clone(),
            subject: "3012-2".into(),
            kind: CertKind::Device,
            replaces: None,
            crl_partition: None,
        };
        ledger.reserve(&[item], "test", now).unwrap();
        ledger
            .commit_issued(&[(serial.clone(), vec![0x30, 0x00])], "test", now)
            .unwrap();
        assert_eq!(
            ledger.der(&serial.to_hex()).unwrap(),
            Some(vec![0x30, 0x00])
        );
        let exported = ledger.changed_since(now - time::Duration::days(1)).unwrap();
        assert_eq!(exported.len(), 2);
    }

    /// Issue 17: the replaced certificate stays valid until the new one is
    /// committed; meanwhile no second request may reserve the id.
    #[test]
    fn a_replacement_revokes_the_old_certificate_only_when_the_new_is_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ledger = SqliteLedger::open(&tmp.path().join("l.db"), true).unwrap();
        let now = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        let item = |replaces: Option<&Serial>| Reservation {
            serial: Serial::random(),
            subject: "3012-1".into(),
            kind: CertKind::Device,
            replaces: replaces.cloned(),
            crl_partition: None,
        };
        let first = item(None);
        let old = first.serial.clone();
        ledger.reserve(&[first], "st", now).unwrap();
        ledger
            .commit_issued(&[(old.clone(), vec![0x30, 0x00])], "st", now)
            .unwrap();
        let status =
            |l: &SqliteLedger, s: &Serial| l.by_serial(&s.to_hex()).unwrap().unwrap().status;

        // A replacement whose signing fails: the old one was never touched.
        let failed = item(Some(&old));
        let failed_serial = failed.serial.clone();
        ledger.reserve(&[failed], "st", now).unwrap();
        assert_eq!(status(&ledger, &old), CertStatus::Valid);
        // While it is reserved, neither another replacement nor a fresh request gets the id.
        let err = ledger.reserve(&[item(Some(&old))], "st", now).unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(LedgerError::BeingIssued { .. })),
            "{err}"
        );
        let err = ledger.reserve(&[item(None)], "st", now).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref(),
                Some(LedgerError::AlreadyCertified { .. })
            ),
            "{err}"
        );
        ledger
            .abandon_reserved(
                Some(std::slice::from_ref(&failed_serial)),
                "signing failed",
                now,
            )
            .unwrap();
        assert_eq!(status(&ledger, &old), CertStatus::Valid);
        assert_eq!(status(&ledger, &failed_serial), CertStatus::Revoked);
        let before = ledger.revocations().unwrap();

        // A replacement that is committed revokes the old one, counted for the CRL.
        let good = item(Some(&old));
        let new = good.serial.clone();
        ledger.reserve(&[good], "st", now).unwrap();
        ledger
            .commit_issued(&[(new.clone(), vec![0x30, 0x00])], "st", now)
            .unwrap();
        let old_row = ledger.by_serial(&old.to_hex()).unwrap().unwrap();
        assert_eq!(old_row.status, CertStatus::Revoked);
        assert_eq!(old_row.reason.as_deref(), Some("superseded"));
        assert_eq!(status(&ledger, &new), CertStatus::Valid);
        assert_eq!(ledger.revocations().unwrap(), before + 1);
        let listed = ledger.revoked_between(Some(before), before + 1).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].serial, old);
        assert_eq!(
            ledger.live_device_cert("3012-1").unwrap().unwrap().serial,
            new.to_hex()
        );
    }

    #[test]
    fn a_fresh_ledger_has_no_migration_note() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&tmp.path().join("l.db"), true).unwrap();
        assert!(ledger.notes().unwrap().is_empty());
    }
}
