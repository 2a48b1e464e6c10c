//! The ledger on a PostgreSQL server, for several CA processes on one ledger.
//! Same schema intent as the SQLite ledger; what one process guaranteed with
//! its mutex, the database guarantees here across processes:
//!
//! - one live certificate per device id and unique serials are constraints
//!   (a partial unique index and the primary key), never check-then-insert;
//! - every write transaction starts by locking the audit chain's head row
//!   (`audit_head … FOR UPDATE`): writers queue there, each appends to the
//!   head the previous one committed, so the chain stays one chain, and
//!   checks made after that lock (a replacement's "is this the valid one")
//!   see every earlier writer's commit;
//! - CRL numbers come from one `UPDATE … RETURNING`, strictly increasing
//!   across processes; a CRL is stored only over an older one, and its
//!   revocations are read after its number was taken, so the newest stored
//!   CRL lists every revocation committed before it was numbered;
//! - every reservation carries its owner, a CA process with a lease in
//!   `ca_leases` that a heartbeat thread renews; only reservations whose
//!   owner's lease has expired are ever abandoned by another process.
//!
//! Leases are timed by the database server's clock (`now()`), so CA machines
//! whose clocks disagree still agree on whose lease is over. A lost
//! connection is re-made on the next call; the call that found it lost fails
//! with an error that names the database.

use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use postgres::error::SqlState;
use postgres::{Row, Transaction};
use time::OffsetDateTime;

use super::{
    check_replaces, crl_scope, issue_detail, reserve_detail, revoked_entry, CrlStatus, Export,
    Ledger, LedgerError, LedgerStore, Reservation, CRL_SCOPE_ISSUING,
};
use crate::pki::crl::{Reason, RevokedEntry};
use crate::pki::serial::Serial;
use crate::store::audit;
use crate::store::db::time_text;
use crate::store::pg::{self, Db, Target};
use crate::wire::ca::{CertKind, CertRecord, CertStatus, LedgerCount};

const SCHEMA_V1: &str = "
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE FUNCTION certline_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION certline_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION certline_audit_append_only();
-- The chain's head: the one row every writer locks first.
CREATE TABLE audit_head (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE certs (
    row_id BIGINT GENERATED ALWAYS AS IDENTITY,
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
    audit_seq BIGINT NOT NULL,
    owner TEXT NOT NULL,
    der BYTEA,
    revoked_by TEXT,
    revoked_seq BIGINT
);
CREATE UNIQUE INDEX one_live_cert_per_device ON certs(subject)
    WHERE kind = 'device' AND status IN ('reserved', 'valid');
CREATE INDEX certs_by_subject ON certs(subject);
CREATE INDEX certs_reserved ON certs(owner) WHERE status = 'reserved';
-- What the CRL publisher reads: the revocations after the ones it listed, in order.
CREATE INDEX certs_revoked ON certs(revoked_seq, serial) WHERE status = 'revoked';
CREATE INDEX certs_by_issued_at ON certs(issued_at);
CREATE INDEX certs_by_revoked_at ON certs(revoked_at);
CREATE TABLE crl_state (
    scope TEXT PRIMARY KEY,
    number BIGINT NOT NULL,
    published BIGINT,
    der BYTEA,
    next_update TEXT,
    covers BIGINT
);
-- How many revoking transactions were committed: each stamps its rows with
-- its number (certs.revoked_seq), each CRL records the count it covers.
CREATE TABLE crl_pending (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    revocations BIGINT NOT NULL
);
INSERT INTO crl_pending (revocations) VALUES (0);
-- What a migration noted about rows it could not fill in (copied by migrate-ledger).
CREATE TABLE ledger_notes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE ca_leases (
    owner TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
-- The CA this ledger belongs to (its root's fingerprint), set by the first CA.
CREATE TABLE ca_identity (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    root_fingerprint TEXT NOT NULL
);
";

/// As the SQLite ledger's schema 4 (issue 17): a replacement revokes the
/// certificate it replaces when the new one is committed; a device id may
/// have one valid certificate and one reservation at once.
const SCHEMA_V2: &str = "
DROP INDEX one_live_cert_per_device;
CREATE UNIQUE INDEX one_valid_cert_per_device ON certs(subject)
    WHERE kind = 'device' AND status = 'valid';
CREATE UNIQUE INDEX one_reservation_per_device ON certs(subject)
    WHERE kind = 'device' AND status = 'reserved';
";

/// Partitioned CRLs (issue 15): the CRL partition of each certificate (its
/// issuance month; NULL: the base CRL), and an index that lists one
/// partition's revocations without reading any other's.
const SCHEMA_V3: &str = "
ALTER TABLE certs ADD COLUMN crl_partition TEXT;
CREATE INDEX certs_revoked_by_partition ON certs(crl_partition, serial) WHERE status = 'revoked';
";

fn migrations() -> Vec<&'static str> {
    vec![SCHEMA_V1, SCHEMA_V2, SCHEMA_V3]
}

const RECORD_COLUMNS: &str = "serial, subject, kind, status, requester, requested_at, issued_at, fingerprint, replaces, revoked_at, reason, revoked_by";

fn record(row: &Row) -> anyhow::Result<CertRecord> {
    let kind: String = row.get(2);
    let status: String = row.get(3);
    Ok(CertRecord {
        serial: row.get(0),
        subject: row.get(1),
        kind: CertKind::parse(&kind)
            .ok_or_else(|| anyhow::anyhow!("unexpected kind {kind:?} in the ledger"))?,
        status: CertStatus::parse(&status)
            .ok_or_else(|| anyhow::anyhow!("unexpected status {status:?} in the ledger"))?,
        requester: row.get(4),
        requested_at: row.get(5),
        issued_at: row.get(6),
        fingerprint: row.get(7),
        replaces: row.get(8),
        revoked_at: row.get(9),
        reason: row.get(10),
        revoked_by: row.get(11),
    })
}

/// This process as a reservation owner: host, pid and a random tag.
fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let tag = Serial::random().to_hex();
    format!("{host}:{}:{}", std::process::id(), &tag[..8])
}

pub struct PgLedger {
    target: Target,
    db: Mutex<Option<Db>>,
    owner: String,
    lease: Duration,
    /// Serials this process failed to abandon (the database was away): retried first.
    pending_abandon: Mutex<Vec<String>>,
    /// Dropping it stops the lease heartbeat (None: a second handle of the
    /// same process, which renews nothing).
    _heartbeat: Option<mpsc::Sender<()>>,
}

/// Registers the CRL partition of each reservation (a `crl_state` row
/// without DER, number 0) inside the reserving transaction: a partition
/// whose first certificate is being signed gets a CRL at the next
/// publication, so its CDP never points at nothing.
fn register_crl_partitions(w: &mut Write<'_>, items: &[Reservation]) -> anyhow::Result<()> {
    let mut scopes: Vec<String> = items
        .iter()
        .filter_map(|i| i.crl_partition.as_deref())
        .map(|p| crl_scope(Some(p)))
        .collect();
    scopes.dedup();
    for scope in scopes {
        w.tx.execute(
            "INSERT INTO crl_state (scope, number) VALUES ($1, 0) ON CONFLICT (scope) DO NOTHING",
            &[&scope],
        )?;
    }
    Ok(())
}

/// One write transaction, holding the audit chain's head row.
struct Write<'a> {
    tx: Transaction<'a>,
    head: (i64, String),
}

impl<'a> Write<'a> {
    fn begin(db: &'a mut Db) -> Result<Write<'a>, postgres::Error> {
        let mut tx = db.client().transaction()?;
        let row = tx.query_one("SELECT seq, hash FROM audit_head WHERE one FOR UPDATE", &[])?;
        Ok(Write {
            tx,
            head: (row.get(0), row.get(1)),
        })
    }

    fn audit(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<i64> {
        let head = (self.head.0 > 0).then(|| self.head.clone());
        let entry = audit::next_entry(head, actor, action, detail);
        self.tx
            .execute(
                "INSERT INTO audit (seq, at, actor, action, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&entry.seq, &entry.at, &actor, &action, &entry.detail, &entry.prev_hash, &entry.hash],
            )
            .context("cannot write the audit log")?;
        self.head = (entry.seq, entry.hash);
        Ok(entry.seq)
    }

    /// The number the rows this transaction revokes are stamped with.
    fn revocation_seq(&mut self) -> anyhow::Result<i64> {
        Ok(self
            .tx
            .query_one("SELECT revocations + 1 FROM crl_pending WHERE one", &[])?
            .get(0))
    }

    /// Counts this transaction as one revoking transaction if it revoked rows.
    fn count_revocations(&mut self, rows: u64) -> anyhow::Result<()> {
        if rows > 0 {
            self.tx.execute(
                "UPDATE crl_pending SET revocations = revocations + 1 WHERE one",
                &[],
            )?;
        }
        Ok(())
    }

    /// Revokes reservations still reserved, as the CA (cessationOfOperation).
    fn abandon(&mut self, serials: &[String], now: &str) -> anyhow::Result<usize> {
        let seq = self.revocation_seq()?;
        let count = self.tx.execute(
            "UPDATE certs SET status = 'revoked', revoked_at = $2, reason = $3, revoked_by = 'ca', revoked_seq = $4
             WHERE serial = ANY($1) AND status = 'reserved'",
            &[&serials, &now, &Reason::CessationOfOperation.name(), &seq],
        )?;
        self.count_revocations(count)?;
        Ok(count as usize)
    }

    fn commit(mut self) -> Result<(), postgres::Error> {
        self.tx.execute(
            "UPDATE audit_head SET seq = $1, hash = $2 WHERE one",
            &[&self.head.0, &self.head.1],
        )?;
        self.tx.commit()
    }
}

/// Why one write transaction did not commit.
enum Attempt<F> {
    /// The connection was found lost when the transaction began: nothing
    /// was written, and the work is handed back to be tried again.
    Lost(postgres::Error, F),
    Failed(anyhow::Error),
}

/// One try of a write transaction on `db`.
fn attempt<T, F: FnOnce(&mut Write<'_>) -> anyhow::Result<T>>(
    db: &mut Db,
    work: F,
) -> Result<T, Attempt<F>> {
    let mut write = match Write::begin(db) {
        Ok(write) => write,
        Err(err) if pg::is_connection_lost(&err) => return Err(Attempt::Lost(err, work)),
        Err(err) => return Err(Attempt::Failed(err.into())),
    };
    let out = work(&mut write).map_err(Attempt::Failed)?;
    write.commit().map_err(|e| Attempt::Failed(e.into()))?;
    Ok(out)
}

/// Renews this process's lease every third of it until the ledger is dropped.
fn heartbeat(target: Target, owner: String, lease: Duration, stop: mpsc::Receiver<()>) {
    let seconds = lease.as_secs_f64();
    let mut db: Option<Db> = None;
    loop {
        match stop.recv_timeout(lease / 3) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if db.as_mut().is_none_or(|d| d.client().is_closed()) {
            db = target.connect().ok();
        }
        let Some(conn) = db.as_mut() else { continue };
        let renewed = conn.client().execute(
            "INSERT INTO ca_leases (owner, expires_at) VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at",
            &[&owner, &seconds],
        );
        if let Err(err) = renewed {
            tracing::warn!("cannot renew this CA's lease on {}: {err}", target.shown);
            db = None;
        }
    }
}

impl PgLedger {
    /// Connects, migrates, and takes a lease for this process (renewed until drop).
    pub fn open(target: Target, lease: Duration) -> anyhow::Result<PgLedger> {
        let mut db = target.connect()?;
        pg::migrate(&mut db, &target, "ledger", &migrations(), "certs")?;
        let owner = owner_name();
        let lease = lease.max(Duration::from_secs(3));
        db.client()
            .execute(
                "INSERT INTO ca_leases (owner, expires_at) VALUES ($1, now() + make_interval(secs => $2))",
                &[&owner, &lease.as_secs_f64()],
            )
            .map_err(|e| target.explain(&e))?;
        let (stop, stopped) = mpsc::channel();
        {
            let (target, owner) = (target.clone(), owner.clone());
            std::thread::Builder::new()
                .name("ledger-lease".into())
                .spawn(move || heartbeat(target, owner, lease, stopped))?;
        }
        Ok(PgLedger {
            target,
            db: Mutex::new(Some(db)),
            owner,
            lease,
            pending_abandon: Mutex::new(Vec::new()),
            _heartbeat: Some(stop),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The connection, re-made if the last one was lost.
    fn db(&self) -> anyhow::Result<DbGuard<'_>> {
        let mut guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_mut().is_none_or(|d| d.client().is_closed()) {
            *guard = None;
            *guard = Some(self.target.connect()?);
        }
        Ok(DbGuard(guard))
    }

    fn explain(&self, err: postgres::Error) -> anyhow::Error {
        self.target.explain(&err)
    }

    /// Runs `work` in one write transaction (holding the audit head) and commits.
    /// A connection found dead when the transaction begins (the database was
    /// restarted since the last call) is made again once: nothing was written.
    fn write<T, F: FnOnce(&mut Write<'_>) -> anyhow::Result<T>>(
        &self,
        work: F,
    ) -> anyhow::Result<T> {
        let mut guard = self.db()?;
        let result = match attempt(guard.get(), work) {
            Err(Attempt::Lost(_, work)) => {
                *guard.0 = None;
                drop(guard);
                guard = self.db()?;
                attempt(guard.get(), work)
            }
            other => other,
        };
        result.map_err(|failed| {
            let err = match failed {
                Attempt::Lost(err, _) => err.into(),
                Attempt::Failed(err) => err,
            };
            self.failed(&mut guard, err)
        })
    }

    /// Runs a read; a read that found the connection lost is tried once more
    /// on a new one (a read changes nothing, so trying again is safe).
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>> {
        let mut guard = self.db()?;
        let result = match guard.get().client().query(sql, params) {
            Err(err) if pg::is_connection_lost(&err) => {
                drop(guard);
                *self.db.lock().unwrap_or_else(|p| p.into_inner()) = None;
                guard = self.db()?;
                guard.get().client().query(sql, params)
            }
            other => other,
        };
        result.map_err(|err| self.failed(&mut guard, err.into()))
    }

    /// What a failed statement means; a lost connection is dropped, to be
    /// re-made by the next call. A collision stays a `postgres::Error`: the
    /// caller names it better (which certificate it collided with).
    fn failed(&self, guard: &mut DbGuard<'_>, err: anyhow::Error) -> anyhow::Error {
        match err.downcast::<postgres::Error>() {
            Ok(pg) if pg.code() == Some(&SqlState::UNIQUE_VIOLATION) => pg.into(),
            Ok(err) => {
                if pg::is_connection_lost(&err) {
                    *guard.0 = None;
                }
                self.explain(err)
            }
            Err(other) => other,
        }
    }

    /// Whether the ledger has no certificate yet (a new CA's ledger must be empty).
    pub fn is_empty(&self) -> anyhow::Result<bool> {
        let rows = self.query("SELECT 1 FROM certs LIMIT 1", &[])?;
        let audit = self.query("SELECT 1 FROM audit LIMIT 1", &[])?;
        Ok(rows.is_empty() && audit.is_empty())
    }

    /// Copies a whole ledger into this one, which must be empty, in one
    /// transaction. Reservations keep no owner that could renew them, so the
    /// first CA to start on this ledger abandons them.
    pub fn import(&mut self, export: &Export) -> anyhow::Result<()> {
        if !self.is_empty()? {
            anyhow::bail!(
                "the ledger database {} already holds a ledger; migrate into an empty database",
                self.target.shown
            );
        }
        self.write(|w| {
            for e in &export.audit {
                w.tx.execute(
                    "INSERT INTO audit (seq, at, actor, action, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&e.seq, &e.at, &e.actor, &e.action, &e.detail, &e.prev_hash, &e.hash],
                )?;
                w.head = (e.seq, e.hash.clone());
            }
            for c in &export.certs {
                let r = &c.record;
                w.tx.execute(
                    &format!("INSERT INTO certs ({RECORD_COLUMNS}, audit_seq, owner, der, revoked_seq, crl_partition) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'migrated', $14, $15, $16)"),
                    &[&r.serial, &r.subject, &r.kind.as_str(), &r.status.as_str(), &r.requester, &r.requested_at,
                      &r.issued_at, &r.fingerprint, &r.replaces, &r.revoked_at, &r.reason, &r.revoked_by,
                      &c.audit_seq, &c.der, &c.revoked_seq, &c.crl_partition],
                )?;
            }
            for crl in &export.crls {
                let number = crl.number as i64;
                let published = crl.der.as_ref().map(|_| number);
                let covers = crl.covers.map(|c| c as i64);
                w.tx.execute(
                    "INSERT INTO crl_state (scope, number, published, der, next_update, covers) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&crl.scope, &number, &published, &crl.der, &crl.next_update, &covers],
                )?;
            }
            w.tx.execute(
                "UPDATE crl_pending SET revocations = $1 WHERE one",
                &[&(export.revocations as i64)],
            )?;
            for note in &export.notes {
                w.tx.execute("INSERT INTO ledger_notes (note) VALUES ($1)", &[note])?;
            }
            Ok(())
        })
    }

    /// Abandons first what an earlier call could not (the database was away).
    fn flush_pending(&self) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut *self.pending_abandon.lock().unwrap());
        if pending.is_empty() {
            return Ok(());
        }
        let why = "a failed batch's reservations, abandoned once the ledger database was back";
        // The one time the ledger reads the clock: the failed call's own time is long past.
        if let Err(err) = self.abandon(&pending, why, OffsetDateTime::now_utc()) {
            self.pending_abandon.lock().unwrap().extend(pending);
            return Err(err);
        }
        Ok(())
    }

    fn abandon(&self, serials: &[String], why: &str, now: OffsetDateTime) -> anyhow::Result<usize> {
        if serials.is_empty() {
            return Ok(0);
        }
        let now = time_text(now);
        self.write(|w| {
            w.audit(
                "ca",
                "abandon",
                &serde_json::json!({"why": why, "serials": serials}),
            )?;
            w.abandon(serials, &now)
        })
    }
}

impl LedgerStore for PgLedger {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// Records that this ledger belongs to the CA with this root; refuses a
    /// ledger that already belongs to another CA.
    fn bind_root(&mut self, root_fingerprint: &str) -> anyhow::Result<()> {
        let mut db = self.db()?;
        let row = db
            .get()
            .client()
            .query_one(
                "WITH added AS (INSERT INTO ca_identity (root_fingerprint) VALUES ($1) ON CONFLICT (one) DO NOTHING RETURNING root_fingerprint)
                 SELECT root_fingerprint FROM added UNION ALL SELECT root_fingerprint FROM ca_identity LIMIT 1",
                &[&root_fingerprint],
            )
            .map_err(|e| self.explain(e))?;
        let bound: String = row.get(0);
        if bound != root_fingerprint {
            anyhow::bail!(
                "the ledger database {} belongs to another CA (root sha256 {bound}), not to this one (root sha256 {root_fingerprint})",
                self.target.shown
            );
        }
        Ok(())
    }

    fn by_serial(&self, serial: &str) -> anyhow::Result<Option<CertRecord>> {
        self.query(
            &format!("SELECT {RECORD_COLUMNS} FROM certs WHERE serial = $1"),
            &[&serial],
        )?
        .first()
        .map(record)
        .transpose()
    }

    fn live_device_cert(&self, id: &str) -> anyhow::Result<Option<CertRecord>> {
        self.query(
            &format!("SELECT {RECORD_COLUMNS} FROM certs WHERE subject = $1 AND kind = 'device' AND status IN ('reserved', 'valid') ORDER BY status = 'valid' DESC LIMIT 1"),
            &[&id],
        )?
        .first()
        .map(record)
        .transpose()
    }

    fn history(&self, subject: &str) -> anyhow::Result<Vec<CertRecord>> {
        self.query(
            &format!("SELECT {RECORD_COLUMNS} FROM certs WHERE subject = $1 ORDER BY requested_at, row_id"),
            &[&subject],
        )?
        .iter()
        .map(record)
        .collect()
    }

    fn der(&self, serial: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .query("SELECT der FROM certs WHERE serial = $1", &[&serial])?
            .first()
            .and_then(|r| r.get(0)))
    }

    fn latest(&self, subject: &str) -> anyhow::Result<Option<CertRecord>> {
        self.query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM certs WHERE subject = $1
                 ORDER BY status IN ('reserved', 'valid') DESC, requested_at DESC, row_id DESC LIMIT 1"
            ),
            &[&subject],
        )?
        .first()
        .map(record)
        .transpose()
    }

    fn changed_since(&self, since: OffsetDateTime) -> anyhow::Result<Vec<CertRecord>> {
        self.query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM certs WHERE issued_at >= $1 OR revoked_at >= $1
                 ORDER BY COALESCE(issued_at, revoked_at), row_id"
            ),
            &[&time_text(since)],
        )?
        .iter()
        .map(record)
        .collect()
    }

    fn notes(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .query("SELECT note FROM ledger_notes ORDER BY id", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Another connection, owned by this same process (its reservations,
    /// its lease): a handle for readers and the CRL publisher.
    fn reopen(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger::new(PgLedger {
            target: self.target.clone(),
            db: Mutex::new(Some(self.target.connect()?)),
            owner: self.owner.clone(),
            lease: self.lease,
            pending_abandon: Mutex::new(Vec::new()),
            _heartbeat: None,
        }))
    }

    fn reserve(
        &mut self,
        items: &[Reservation],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<i64> {
        self.flush_pending()?;
        let now = time_text(now);
        let result = self.write(|w| {
            // After the head lock: every other writer has committed or waits,
            // so no valid certificate can appear meanwhile.
            let subjects: Vec<&str> = items
                .iter()
                .filter(|i| i.kind == CertKind::Device)
                .map(|i| i.subject.as_str())
                .collect();
            let valid: std::collections::HashMap<String, String> = w
                .tx
                .query(
                    "SELECT subject, serial FROM certs WHERE subject = ANY($1) AND kind = 'device' AND status = 'valid'",
                    &[&subjects],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for item in items.iter().filter(|i| i.kind == CertKind::Device) {
                check_replaces(item, valid.get(&item.subject).cloned())?;
            }
            let detail = reserve_detail(items);
            let seq = w.audit(requester, "reserve", &detail)?;
            let serials: Vec<String> = items.iter().map(|i| i.serial.to_hex()).collect();
            let subjects: Vec<&str> = items.iter().map(|i| i.subject.as_str()).collect();
            let kinds: Vec<&str> = items.iter().map(|i| i.kind.as_str()).collect();
            let replaces: Vec<Option<String>> = items
                .iter()
                .map(|i| i.replaces.as_ref().map(Serial::to_hex))
                .collect();
            let partitions: Vec<Option<String>> =
                items.iter().map(|i| i.crl_partition.clone()).collect();
            // One statement for the whole batch; the constraints refuse a
            // second live certificate or a reused serial.
            w.tx.execute(
                "INSERT INTO certs (serial, subject, kind, status, requester, requested_at, replaces, audit_seq, owner, crl_partition)
                 SELECT s, sub, k, 'reserved', $4, $5, r, $6, $7, p
                 FROM unnest($1::text[], $2::text[], $3::text[], $8::text[], $9::text[]) AS t(s, sub, k, r, p)",
                &[&serials, &subjects, &kinds, &requester, &now, &seq, &self.owner, &replaces, &partitions],
            )?;
            register_crl_partitions(w, items)?;
            Ok(seq)
        });
        match result {
            Err(err) => {
                let unique = err
                    .downcast_ref::<postgres::Error>()
                    .and_then(|e| e.code())
                    .is_some_and(|c| *c == SqlState::UNIQUE_VIOLATION);
                if unique {
                    for item in items.iter().filter(|i| i.kind == CertKind::Device) {
                        let reserved = self.query(
                            "SELECT serial FROM certs WHERE subject = $1 AND kind = 'device' AND status = 'reserved'",
                            &[&item.subject],
                        )?;
                        if let Some(row) = reserved.first() {
                            return Err(LedgerError::BeingIssued {
                                id: item.subject.clone(),
                                serial: row.get(0),
                            }
                            .into());
                        }
                    }
                }
                Err(match err.downcast::<postgres::Error>() {
                    Ok(pg) => self.explain(pg),
                    Err(other) => other,
                })
            }
            ok => ok,
        }
    }

    fn commit_issued(
        &mut self,
        issued: &[(Serial, Vec<u8>)],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<()> {
        let (fingerprints, detail) = issue_detail(issued);
        let now = time_text(now);
        self.write(|w| {
            w.audit(
                requester,
                "issue",
                &detail,
            )?;
            let serials: Vec<String> = issued.iter().map(|(s, _)| s.to_hex()).collect();
            // The replaced certificates first: one valid certificate per id.
            let seq = w.revocation_seq()?;
            let replaced = w.tx.execute(
                "UPDATE certs SET status = 'revoked', revoked_at = $2, reason = $3, revoked_by = $4, revoked_seq = $5
                 WHERE status = 'valid' AND serial IN
                     (SELECT replaces FROM certs WHERE serial = ANY($1) AND status = 'reserved' AND replaces IS NOT NULL)",
                &[&serials, &now, &Reason::Superseded.name(), &requester, &seq],
            )?;
            w.count_revocations(replaced)?;
            let ders: Vec<&[u8]> = issued.iter().map(|(_, der)| der.as_slice()).collect();
            let updated = w.tx.execute(
                "UPDATE certs SET status = 'valid', issued_at = $4, fingerprint = t.fp, der = t.der
                 FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t(s, fp, der)
                 WHERE certs.serial = t.s AND certs.status = 'reserved'",
                &[&serials, &fingerprints, &ders, &now],
            )?;
            if updated as usize != issued.len() {
                anyhow::bail!(
                    "{} of {} serials were no longer reserved when their certificates were committed (this CA's lease lapsed and a peer abandoned them?)",
                    issued.len() - updated as usize,
                    issued.len()
                );
            }
            Ok(())
        })
    }

    /// Revokes the named reservations (a failed batch). Should the database
    /// be away, they are remembered and abandoned at the next write.
    fn abandon_reserved(
        &mut self,
        only: Option<&[Serial]>,
        why: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<usize> {
        let serials: Vec<String> = match only {
            Some(list) => list.iter().map(Serial::to_hex).collect(),
            None => self
                .query(
                    "SELECT serial FROM certs WHERE status = 'reserved' AND owner = $1",
                    &[&self.owner],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        };
        let result = self.abandon(&serials, why, now);
        if result.is_err() && only.is_some() {
            self.pending_abandon.lock().unwrap().extend(serials);
        }
        result
    }

    /// Revokes the reservations of CA processes whose lease has expired
    /// (never a live peer's, never this process's own). Returns how many.
    fn abandon_orphans(&mut self, why: &str, now: OffsetDateTime) -> anyhow::Result<usize> {
        self.flush_pending()?;
        let orphans: Vec<String> = self
            .query(
                "SELECT serial FROM certs c WHERE status = 'reserved' AND owner <> $1
                 AND NOT EXISTS (SELECT 1 FROM ca_leases l WHERE l.owner = c.owner AND l.expires_at > now())",
                &[&self.owner],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Leases long expired and owning nothing are of no more use.
        self.query(
            "DELETE FROM ca_leases l WHERE expires_at < now() - interval '1 day'
             AND NOT EXISTS (SELECT 1 FROM certs c WHERE c.owner = l.owner AND c.status = 'reserved')",
            &[],
        )?;
        if orphans.is_empty() {
            return Ok(0);
        }
        let now = time_text(now);
        // Checked again under the head lock: an owner may have renewed meanwhile.
        self.write(|w| {
            let gone: Vec<String> = w
                .tx
                .query(
                    "SELECT serial FROM certs c WHERE serial = ANY($1) AND status = 'reserved'
                     AND NOT EXISTS (SELECT 1 FROM ca_leases l WHERE l.owner = c.owner AND l.expires_at > now())",
                    &[&orphans],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if gone.is_empty() {
                return Ok(0);
            }
            w.audit(
                "ca",
                "abandon",
                &serde_json::json!({"why": why, "serials": gone}),
            )?;
            w.abandon(&gone, &now)
        })
    }

    fn revoke(
        &mut self,
        found: &CertRecord,
        reason: Reason,
        actor: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<CertRecord> {
        self.flush_pending()?;
        let now = time_text(now);
        self.write(|w| {
            w.audit(
                actor,
                "revoke",
                &serde_json::json!({"serial": found.serial, "subject": found.subject, "reason": reason.name()}),
            )?;
            let seq = w.revocation_seq()?;
            let changed = w.tx.execute(
                "UPDATE certs SET status = 'revoked', revoked_at = $2, reason = $3, revoked_by = $4, revoked_seq = $5 WHERE serial = $1 AND status <> 'revoked'",
                &[&found.serial, &now, &reason.name(), &actor, &seq],
            )?;
            if changed != 1 {
                return Err(LedgerError::AlreadyRevoked {
                    serial: found.serial.clone(),
                    reason: String::new(),
                }
                .into());
            }
            w.count_revocations(1)
        })?;
        Ok(self.by_serial(&found.serial)?.expect("just updated"))
    }

    /// Read through the partial index `certs_revoked`, in revoking order.
    /// Every writer holds the audit head, so a transaction stamped with a
    /// lower number committed before any with a higher one: a reader that saw
    /// the count reach `upto` sees every row up to it.
    fn revoked_between(&self, after: Option<u64>, upto: u64) -> anyhow::Result<Vec<RevokedEntry>> {
        let after = after.map_or(-1, |a| a as i64);
        self.query(
            "SELECT serial, revoked_at, reason FROM certs
             WHERE status = 'revoked' AND revoked_seq > $1 AND revoked_seq <= $2
             ORDER BY revoked_seq, serial",
            &[&after, &(upto as i64)],
        )?
        .iter()
        .map(|row| revoked_entry(row.get(0), row.get(1), row.get(2)))
        .collect()
    }

    fn revocations(&self) -> anyhow::Result<u64> {
        Ok(
            self.query("SELECT revocations FROM crl_pending WHERE one", &[])?[0].get::<_, i64>(0)
                as u64,
        )
    }

    fn revoked_partitions_between(
        &self,
        after: Option<u64>,
        upto: u64,
    ) -> anyhow::Result<Vec<Option<String>>> {
        let after = after.map_or(-1, |a| a as i64);
        Ok(self
            .query(
                "SELECT DISTINCT crl_partition FROM certs
                 WHERE status = 'revoked' AND revoked_seq > $1 AND revoked_seq <= $2",
                &[&after, &(upto as i64)],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    /// Through `certs_revoked_by_partition` (`= $1`, or `IS NULL` for the
    /// base: both are index conditions, where `IS NOT DISTINCT FROM` is not).
    fn revoked_in_partition(&self, partition: Option<&str>) -> anyhow::Result<Vec<RevokedEntry>> {
        let rows = match partition {
            Some(p) => self.query(
                "SELECT serial, revoked_at, reason FROM certs
                 WHERE status = 'revoked' AND crl_partition = $1 ORDER BY serial",
                &[&p],
            )?,
            None => self.query(
                "SELECT serial, revoked_at, reason FROM certs
                 WHERE status = 'revoked' AND crl_partition IS NULL ORDER BY serial",
                &[],
            )?,
        };
        rows.iter()
            .map(|row| revoked_entry(row.get(0), row.get(1), row.get(2)))
            .collect()
    }

    fn issuing_crl_scopes(&self) -> anyhow::Result<Vec<(String, Option<CrlStatus>)>> {
        Ok(self
            .query(
                "SELECT scope, published, covers FROM crl_state
                 WHERE scope = $1 OR scope LIKE $1 || ':%' ORDER BY scope",
                &[&CRL_SCOPE_ISSUING],
            )?
            .iter()
            .map(|row| {
                let status = row.get::<_, Option<i64>>(1).map(|published| CrlStatus {
                    number: published as u64,
                    covers: row.get::<_, Option<i64>>(2).map(|c| c as u64),
                });
                (row.get(0), status)
            })
            .collect())
    }

    fn set_crl_covers(&mut self, scopes: &[String], covers: u64) -> anyhow::Result<()> {
        let covers = covers as i64;
        self.query(
            "UPDATE crl_state SET covers = $2
             WHERE scope = ANY($1) AND der IS NOT NULL AND (covers IS NULL OR covers < $2)",
            &[&scopes, &covers],
        )?;
        Ok(())
    }

    fn fill_revoked_for_bench(
        &mut self,
        model: &str,
        count: usize,
        at: OffsetDateTime,
        partitions: &[String],
    ) -> anyhow::Result<()> {
        let at = time_text(at);
        let serials: Vec<String> = (0..count).map(|_| Serial::random().to_hex()).collect();
        let subjects: Vec<String> = (0..count).map(|n| format!("{model}-{n:08}")).collect();
        let partitions: Vec<Option<String>> = (0..count)
            .map(|n| (!partitions.is_empty()).then(|| partitions[n % partitions.len()].clone()))
            .collect();
        self.write(|w| {
            let revoked_seq = w.revocation_seq()?;
            let seq = w.audit(
                "ca bench",
                "bench-fill",
                &serde_json::json!({"revoked": count, "model": model}),
            )?;
            let rows = w.tx.execute(
                "INSERT INTO certs (serial, subject, kind, status, requester, requested_at, issued_at, revoked_at, reason, audit_seq, revoked_seq, owner, crl_partition)
                 SELECT s, sub, 'device', 'revoked', 'ca bench', $3, $3, $3, $4, $5, $6, 'ca bench', p
                 FROM unnest($1::text[], $2::text[], $7::text[]) AS t(s, sub, p)",
                &[&serials, &subjects, &at, &Reason::Superseded.name(), &seq, &revoked_seq, &partitions],
            )?;
            w.count_revocations(rows)
        })
    }

    /// The next CRL number of a scope: one atomic statement, so numbers
    /// strictly increase across every process on this database.
    fn next_crl_number(&mut self, scope: &str) -> anyhow::Result<u64> {
        let rows = self.query(
            "INSERT INTO crl_state (scope, number) VALUES ($1, 1)
             ON CONFLICT (scope) DO UPDATE SET number = crl_state.number + 1
             RETURNING number",
            &[&scope],
        )?;
        Ok(rows[0].get::<_, i64>(0) as u64)
    }

    /// Stores a CRL unless a newer one (a higher number, taken later, so
    /// listing at least as much) is stored already.
    fn store_crl(
        &mut self,
        scope: &str,
        number: u64,
        der: &[u8],
        next_update: &str,
        covers: u64,
    ) -> anyhow::Result<()> {
        let (number, covers) = (number as i64, covers as i64);
        self.write(|w| {
            w.audit(
                "ca",
                "crl",
                &serde_json::json!({"scope": scope, "number": number}),
            )?;
            w.tx.execute(
                "UPDATE crl_state SET der = $2, next_update = $3, published = $4, covers = $5
                 WHERE scope = $1 AND (published IS NULL OR published < $4)",
                &[&scope, &der, &next_update, &number, &covers],
            )?;
            Ok(())
        })
    }

    fn crl_status(&self, scope: &str) -> anyhow::Result<Option<CrlStatus>> {
        Ok(self
            .query(
                "SELECT published, covers FROM crl_state WHERE scope = $1 AND der IS NOT NULL",
                &[&scope],
            )?
            .first()
            .map(|r| CrlStatus {
                number: r.get::<_, i64>(0) as u64,
                covers: r.get::<_, Option<i64>>(1).map(|c| c as u64),
            }))
    }

    fn current_crl(&self, scope: &str) -> anyhow::Result<Option<(u64, Vec<u8>, String)>> {
        Ok(self
            .query(
                "SELECT published, der, next_update FROM crl_state WHERE scope = $1 AND der IS NOT NULL",
                &[&scope],
            )?
            .first()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2))))
    }

    fn audit_only(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<i64> {
        self.write(|w| w.audit(actor, action, detail))
    }

    fn max_audit_seq(&self) -> anyhow::Result<i64> {
        Ok(self.query("SELECT COALESCE(MAX(audit_seq), 0) FROM certs", &[])?[0].get(0))
    }

    fn counts(&self) -> anyhow::Result<Vec<LedgerCount>> {
        self.query(
            "SELECT kind, status, COUNT(*) FROM certs GROUP BY kind, status ORDER BY kind, status",
            &[],
        )?
        .iter()
        .map(|r| {
            let kind: String = r.get(0);
            let status: String = r.get(1);
            Ok(LedgerCount {
                kind: CertKind::parse(&kind)
                    .ok_or_else(|| anyhow::anyhow!("unexpected kind {kind:?}"))?,
                status: CertStatus::parse(&status)
                    .ok_or_else(|| anyhow::anyhow!("unexpected status {status:?}"))?,
                count: r.get::<_, i64>(2) as u64,
            })
        })
        .collect()
    }

    /// Walks the whole audit chain (in pages, so a long log is not held in memory at once).
    fn verify_audit(&self) -> anyhow::Result<audit::Verified> {
        let mut check = audit::ChainCheck::default();
        let mut after = 0i64;
        loop {
            let rows = self.query(
                "SELECT seq, at, actor, action, detail, prev_hash, hash FROM audit WHERE seq > $1 ORDER BY seq LIMIT 5000",
                &[&after],
            )?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let entry = audit::StoredEntry {
                    seq: row.get(0),
                    at: row.get(1),
                    actor: row.get(2),
                    action: row.get(3),
                    detail: row.get(4),
                    prev_hash: row.get(5),
                    hash: row.get(6),
                };
                check.next(&entry)?;
                after = entry.seq;
            }
        }
        let verified = check.finish();
        let head: String = self.query("SELECT hash FROM audit_head WHERE one", &[])?[0].get(0);
        if head != verified.head {
            anyhow::bail!(
                "the audit chain's recorded head {head} is not its last entry's hash {}: entries were cut from its end",
                verified.head
            );
        }
        Ok(verified)
    }

    fn audit_tail(&self, limit: i64) -> anyhow::Result<Vec<audit::Entry>> {
        let mut entries: Vec<audit::Entry> = self
            .query(
                "SELECT seq, at, actor, action, detail, hash FROM audit ORDER BY seq DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| audit::Entry {
                seq: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                detail: audit::parse_detail(r.get(4)),
                hash: r.get(5),
            })
            .collect();
        entries.reverse();
        Ok(entries)
    }
}

struct DbGuard<'a>(MutexGuard<'a, Option<Db>>);

impl DbGuard<'_> {
    fn get(&mut self) -> &mut Db {
        self.0.as_mut().expect("connected")
    }
}
