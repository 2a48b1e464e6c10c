//! The CA's issuance ledger: every certificate it ever signed (device
//! identities and service credentials), who asked, when, and its status;
//! one interface ([`LedgerStore`]) with two stores: a SQLite file beside the
//! CA ([`sqlite`], the default, one CA process) and a PostgreSQL database
//! ([`postgres`], several CA processes on one ledger).
//!
//! Issuance is two transactions: `reserve` records serial and id (and the
//! audit entry) before anything is signed, `commit_issued` records the signed
//! certificate and revokes the one it replaces. A crash in between leaves
//! `reserved` rows that `abandon_orphans` revokes (at the next start, or once
//! the crashed process's lease ran out), so no certificate can exist that the
//! ledger does not know, and a device whose replacement failed keeps its old
//! certificate. Unique constraints keep one valid certificate and one
//! reservation per device id.
//! (The whole cycle, and what a crash between any two steps leaves, is in
//! `runtime/src/ca/ISSUANCE-CYCLE.md`.)
//!
//! The ledger never reads the clock for what it records: every state change
//! takes the time it happens at from its caller (leases of the PostgreSQL
//! store run on the database server's clock).

use std::path::PathBuf;
use std::time::Duration;

use time::OffsetDateTime;

use crate::pki::crl::{Reason, RevokedEntry};
use crate::pki::serial::Serial;
use crate::store::{audit, pg};
pub use crate::wire::ca::{CertKind, CertRecord, CertStatus, ExportRow, LedgerCount, StateChange};

pub mod postgres;
pub mod sqlite;

pub use postgres::PgLedger;
pub use sqlite::SqliteLedger;

/// What `ca show` says of a certificate issued before the ledger kept DER.
pub const NO_DER_NOTE: &str =
    "issued before the ledger kept certificates (schema 3): only its serial, fingerprint and states are known";

/// What the last CRL of a scope covers, without its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlStatus {
    pub number: u64,
    /// The ledger's revocation count when it was signed (None: from before the count existed).
    pub covers: Option<u64>,
}

pub struct Reservation {
    pub serial: Serial,
    /// The device id, or `<role>:<name>` for a service credential.
    pub subject: String,
    pub kind: CertKind,
    /// The live certificate of the same device id that this one replaces.
    pub replaces: Option<Serial>,
    /// The CRL partition whose URL the certificate's CDP will name (None: the base CRL).
    pub crl_partition: Option<String>,
}

/// The `crl_state` scope of the issuing CA's base CRL, and the prefix of its
/// partitions' scopes (issue 15: with a `crl_url`, a device certificate
/// belongs to the CRL partition of its issuance month, e.g. `2026-12`, whose
/// CRL is scope `issuing:2026-12`; service credentials and certificates from
/// before partitions stay in the base CRL).
pub const CRL_SCOPE_ISSUING: &str = "issuing";

/// The `crl_state` scope of a partition of the issuing CA's CRL (None: the base CRL).
pub fn crl_scope(partition: Option<&str>) -> String {
    match partition {
        Some(p) => format!("{CRL_SCOPE_ISSUING}:{p}"),
        None => CRL_SCOPE_ISSUING.to_string(),
    }
}

/// The partition a `crl_state` scope of the issuing CA names: Some(None) for the base CRL.
pub fn crl_partition_of_scope(scope: &str) -> Option<Option<&str>> {
    if scope == CRL_SCOPE_ISSUING {
        return Some(None);
    }
    scope
        .strip_prefix(CRL_SCOPE_ISSUING)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(Some)
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("device {id} already has a valid certificate (serial {serial}); name it as the one replaced to get a new one")]
    AlreadyCertified { id: String, serial: String },
    #[error(
        "device {id}: the certificate to replace, {named}, is not its valid certificate ({actual})"
    )]
    ReplaceMismatch {
        id: String,
        named: String,
        actual: String,
    },
    #[error("device {id} has a certificate being issued right now (serial {serial}); ask again once that request has finished")]
    BeingIssued { id: String, serial: String },
    #[error("no certificate with serial {0} in the ledger")]
    UnknownSerial(String),
    #[error("device {0} has no valid certificate to revoke")]
    NoLiveCert(String),
    #[error("certificate {serial} is already revoked ({reason})")]
    AlreadyRevoked { serial: String, reason: String },
}

/// The `reserve` audit entry's detail (the same in every store).
fn reserve_detail(items: &[Reservation]) -> serde_json::Value {
    #[derive(serde::Serialize)]
    struct Reserved<'a> {
        serial: String,
        subject: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    }
    serde_json::json!({
        "count": items.len(),
        "certs": items.iter().map(|i| Reserved {
            serial: i.serial.to_hex(),
            subject: &i.subject,
            replaces: i.replaces.as_ref().map(Serial::to_hex),
        }).collect::<Vec<_>>(),
    })
}

/// Each issued certificate's fingerprint (from its DER), and the `issue`
/// audit entry's detail (the same in every store).
fn issue_detail(issued: &[(Serial, Vec<u8>)]) -> (Vec<String>, serde_json::Value) {
    let fingerprints: Vec<String> = issued
        .iter()
        .map(|(_, der)| crate::pki::fingerprint(der))
        .collect();
    let certs: Vec<serde_json::Value> = issued
        .iter()
        .zip(&fingerprints)
        .map(|((serial, _), fp)| serde_json::json!({"serial": serial.to_hex(), "fingerprint": fp}))
        .collect();
    let detail = serde_json::json!({"count": issued.len(), "certs": certs});
    (fingerprints, detail)
}

/// A revoked certificate as a CRL lists it, from a ledger row's serial,
/// revocation time and reason (text in both stores).
fn revoked_entry(serial: &str, revoked_at: &str, reason: &str) -> anyhow::Result<RevokedEntry> {
    Ok(RevokedEntry {
        serial: Serial::from_hex(serial).map_err(anyhow::Error::msg)?,
        revoked_at: crate::store::db::parse_time(revoked_at)?,
        reason: Reason::parse(reason).unwrap_or_default(),
    })
}

/// Whether a device reservation may be made, given the id's valid
/// certificate: none unless the item replaces it, and then exactly it.
fn check_replaces(item: &Reservation, valid: Option<String>) -> Result<(), LedgerError> {
    match (&item.replaces, valid) {
        (None, None) => Ok(()),
        (None, Some(serial)) => Err(LedgerError::AlreadyCertified {
            id: item.subject.clone(),
            serial,
        }),
        (Some(named), valid) if valid.as_deref() == Some(named.to_hex().as_str()) => Ok(()),
        (Some(named), valid) => Err(LedgerError::ReplaceMismatch {
            id: item.subject.clone(),
            named: named.to_hex(),
            actual: valid
                .map(|s| format!("its valid one is {s}"))
                .unwrap_or_else(|| "it has none".into()),
        }),
    }
}

pub enum RevokeTarget {
    Serial(Serial),
    DeviceId(String),
}

/// One certificate row as `ca migrate-ledger` copies it.
pub struct ExportedCert {
    pub record: CertRecord,
    /// The audit entry that reserved it.
    pub audit_seq: i64,
    /// Its DER (None for a certificate issued before the ledger kept it).
    pub der: Option<Vec<u8>>,
    /// The revoking transaction's number (see [`LedgerStore::revocations`]).
    pub revoked_seq: Option<i64>,
    /// Its CRL partition (None: the base CRL).
    pub crl_partition: Option<String>,
}

/// One scope's CRL state as `ca migrate-ledger` copies it.
pub struct ExportedCrl {
    pub scope: String,
    pub number: u64,
    pub der: Option<Vec<u8>>,
    pub next_update: Option<String>,
    pub covers: Option<u64>,
}

/// A whole ledger as `ca migrate-ledger` copies it from one store to another.
pub struct Export {
    /// Every certificate row in the order it was recorded.
    pub certs: Vec<ExportedCert>,
    /// The audit log, in sequence order, exactly as stored (its hashes unchanged).
    pub audit: Vec<audit::StoredEntry>,
    pub crls: Vec<ExportedCrl>,
    /// How many revoking transactions the ledger had committed.
    pub revocations: u64,
    /// What migrations noted (see [`LedgerStore::notes`]).
    pub notes: Vec<String>,
}

/// What a ledger store does; [`Ledger`] holds one.
pub trait LedgerStore: Send {
    /// `sqlite` or `postgres`, for reports.
    fn kind(&self) -> &'static str;

    /// Whether other CA processes may write to this ledger at the same time.
    fn is_shared(&self) -> bool {
        false
    }

    /// Ties the ledger to the CA whose root has this fingerprint, refusing
    /// one that belongs to another CA (a shared database could be pointed at
    /// by mistake; a SQLite ledger sits in its CA's own directory).
    fn bind_root(&mut self, _root_fingerprint: &str) -> anyhow::Result<()> {
        Ok(())
    }

    fn by_serial(&self, serial: &str) -> anyhow::Result<Option<CertRecord>>;

    /// The valid certificate of a device id, else its reservation, if any.
    fn live_device_cert(&self, id: &str) -> anyhow::Result<Option<CertRecord>>;

    /// Every certificate ever recorded for a subject, oldest first.
    fn history(&self, subject: &str) -> anyhow::Result<Vec<CertRecord>>;

    /// The DER of a certificate, if the ledger kept it (see [`NO_DER_NOTE`]).
    fn der(&self, serial: &str) -> anyhow::Result<Option<Vec<u8>>>;

    /// The newest certificate recorded for a subject: its live one if it has one.
    fn latest(&self, subject: &str) -> anyhow::Result<Option<CertRecord>>;

    /// Every certificate issued or revoked at or after `since` (either
    /// counts), oldest event first: what an auditor's export lists.
    fn changed_since(&self, since: OffsetDateTime) -> anyhow::Result<Vec<CertRecord>>;

    /// What migrations noted about rows they could not fill in.
    fn notes(&self) -> anyhow::Result<Vec<String>>;

    /// A second handle on the same ledger: readers and the CRL publisher use
    /// their own, so they never wait for the issuance lock.
    fn reopen(&self) -> anyhow::Result<Ledger>;

    /// A second handle for the CRL publisher, which writes only CRLs and
    /// their audit entries (public data).
    fn reopen_for_crls(&self) -> anyhow::Result<Ledger> {
        self.reopen()
    }

    /// Records serials and ids before signing, all in one transaction with
    /// its audit entry; returns the audit entry's sequence number. Refuses a
    /// device id that has a valid certificate the item does not name as
    /// replaced, a replacement that names another one, and a device id with
    /// a reservation already (another request is issuing it). The replaced
    /// certificates stay valid until [`Self::commit_issued`].
    fn reserve(
        &mut self,
        items: &[Reservation],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<i64>;

    /// Marks reserved certificates as issued, keeping each one's DER (its
    /// fingerprint is computed from that DER), and revokes (superseded) the
    /// certificates they replace, in one transaction.
    fn commit_issued(
        &mut self,
        issued: &[(Serial, Vec<u8>)],
        requester: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<()>;

    /// Revokes reservations that were never completed (a failed batch: `only`
    /// its serials). Returns how many.
    fn abandon_reserved(
        &mut self,
        only: Option<&[Serial]>,
        why: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<usize>;

    /// Revokes the reservations no live CA process owns any more: a crashed
    /// one's (SQLite: every reservation, at start; PostgreSQL: those whose
    /// owner's lease expired, never a live peer's). Returns how many.
    fn abandon_orphans(&mut self, why: &str, now: OffsetDateTime) -> anyhow::Result<usize>;

    /// The certificate a revocation names, if it can be revoked: by serial
    /// (any kind), or the valid certificate of a device id.
    fn find_revocable(&self, target: &RevokeTarget) -> anyhow::Result<CertRecord> {
        let found = match target {
            RevokeTarget::Serial(serial) => self
                .by_serial(&serial.to_hex())?
                .ok_or_else(|| LedgerError::UnknownSerial(serial.to_hex()))?,
            RevokeTarget::DeviceId(id) => self
                .live_device_cert(id)?
                .ok_or_else(|| LedgerError::NoLiveCert(id.clone()))?,
        };
        if found.status == CertStatus::Revoked {
            return Err(LedgerError::AlreadyRevoked {
                serial: found.serial,
                reason: found.reason.unwrap_or_default(),
            }
            .into());
        }
        Ok(found)
    }

    /// Revokes one certificate found by [`Self::find_revocable`], with its audit entry.
    fn revoke(
        &mut self,
        found: &CertRecord,
        reason: Reason,
        actor: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<CertRecord>;

    /// Every revoked certificate: a CRL never drops a serial once listed, since
    /// certline certificates do not expire.
    fn revoked_entries(&self) -> anyhow::Result<Vec<RevokedEntry>> {
        self.revoked_between(None, self.revocations()?)
    }

    /// The certificates revoked by the revoking transactions after number
    /// `after` (None: from the first) up to number `upto` ([`Self::revocations`]),
    /// oldest first: what a publisher that listed up to `after` adds.
    fn revoked_between(&self, after: Option<u64>, upto: u64) -> anyhow::Result<Vec<RevokedEntry>>;

    /// How many revoking transactions the ledger has committed, ever (see
    /// [`CrlStatus::covers`]; each stamped the rows it revoked with its number).
    fn revocations(&self) -> anyhow::Result<u64>;

    /// The CRL partitions (None: the base) of the certificates revoked by
    /// the revoking transactions after number `after` (None: from the first)
    /// up to number `upto`: the partitions a publisher that covered `after`
    /// must sign again. Read through the index of revocations.
    fn revoked_partitions_between(
        &self,
        after: Option<u64>,
        upto: u64,
    ) -> anyhow::Result<Vec<Option<String>>>;

    /// Every revoked certificate of one CRL partition (None: the base CRL),
    /// through an index on the partition: what that partition's CRL lists,
    /// read without touching any other partition's rows.
    fn revoked_in_partition(&self, partition: Option<&str>) -> anyhow::Result<Vec<RevokedEntry>>;

    /// Every scope of the issuing CA's CRLs (the base and each registered
    /// partition, see [`CRL_SCOPE_ISSUING`]), with what its stored CRL
    /// covers (None: registered, never published).
    fn issuing_crl_scopes(&self) -> anyhow::Result<Vec<(String, Option<CrlStatus>)>>;

    /// Records that the stored CRLs of `scopes` cover the ledger's
    /// revocations up to `covers` (a publisher found none of theirs since).
    fn set_crl_covers(&mut self, scopes: &[String], covers: u64) -> anyhow::Result<()>;

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
    ) -> anyhow::Result<()>;

    /// Takes the next CRL number of a scope (strictly increasing, never reused).
    fn next_crl_number(&mut self, scope: &str) -> anyhow::Result<u64>;

    /// The number and coverage of the last CRL stored for a scope (no bytes read).
    fn crl_status(&self, scope: &str) -> anyhow::Result<Option<CrlStatus>>;

    /// Stores a signed CRL with the revocation count it was built from,
    /// unless a CRL with a higher number is stored already.
    fn store_crl(
        &mut self,
        scope: &str,
        number: u64,
        der: &[u8],
        next_update: &str,
        covers: u64,
    ) -> anyhow::Result<()>;

    /// The last CRL published for a scope: (number, DER, next update).
    fn current_crl(&self, scope: &str) -> anyhow::Result<Option<(u64, Vec<u8>, String)>>;

    /// An audit entry on its own, for a refusal that changes nothing else.
    fn audit_only(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<i64>;

    /// The highest audit sequence number a ledger row points at.
    fn max_audit_seq(&self) -> anyhow::Result<i64>;

    /// How many certificates of each kind are in each status.
    fn counts(&self) -> anyhow::Result<Vec<LedgerCount>>;

    /// Walks the whole audit chain; the error names the first entry that is wrong.
    fn verify_audit(&self) -> anyhow::Result<audit::Verified>;

    /// The newest `limit` audit entries, oldest first.
    fn audit_tail(&self, limit: i64) -> anyhow::Result<Vec<audit::Entry>>;
}

/// The states a certificate went through, from its row: reserved (by its
/// requester), valid when issued, revoked (by whom, why) if it was.
pub fn states(record: &CertRecord) -> Vec<StateChange> {
    let mut out = vec![StateChange {
        status: CertStatus::Reserved,
        at: record.requested_at.clone(),
        by: Some(record.requester.clone()),
        reason: None,
    }];
    if let Some(at) = &record.issued_at {
        out.push(StateChange {
            status: CertStatus::Valid,
            at: at.clone(),
            by: Some(record.requester.clone()),
            reason: None,
        });
    }
    if let Some(at) = &record.revoked_at {
        out.push(StateChange {
            status: CertStatus::Revoked,
            at: at.clone(),
            by: record.revoked_by.clone(),
            reason: record.reason.clone(),
        });
    }
    out
}

impl From<CertRecord> for ExportRow {
    fn from(r: CertRecord) -> ExportRow {
        ExportRow {
            id: r.subject,
            kind: r.kind,
            serial: r.serial,
            fingerprint: r.fingerprint,
            status: r.status,
            requested_at: r.requested_at,
            issued_at: r.issued_at,
            revoked_at: r.revoked_at,
            requester: r.requester,
            reason: r.reason,
            revoked_by: r.revoked_by,
        }
    }
}

/// Where a ledger lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// A SQLite file (the CA directory's `ledger.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL database; `lease` is how long a CA process that stops
    /// renewing keeps its reservations from its peers.
    Postgres {
        target: Box<pg::Target>,
        lease: Duration,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres { target, .. } => write!(f, "postgres {}", target.shown),
        }
    }
}

/// The ledger a CA uses: one store behind [`LedgerStore`].
pub struct Ledger(Box<dyn LedgerStore>);

impl Ledger {
    pub fn new(store: impl LedgerStore + 'static) -> Ledger {
        Ledger(Box::new(store))
    }

    /// Opens (creating if `create`, for SQLite) the ledger and brings its schema up to date.
    pub fn open(location: &Location, create: bool) -> anyhow::Result<Ledger> {
        Ok(match location {
            Location::Sqlite(path) => Ledger(Box::new(SqliteLedger::open(path, create)?)),
            Location::Postgres { target, lease } => {
                Ledger(Box::new(PgLedger::open((**target).clone(), *lease)?))
            }
        })
    }

    /// Verifies the audit chain and that no ledger row points past its end.
    pub fn verify(&self) -> anyhow::Result<audit::Verified> {
        let verified = self.verify_audit()?;
        let referenced = self.max_audit_seq()?;
        if referenced > verified.entries {
            anyhow::bail!(
                "the audit log ends at entry {} but the ledger refers to entry {referenced}: entries were cut from its end",
                verified.entries
            );
        }
        Ok(verified)
    }
}

impl std::ops::Deref for Ledger {
    type Target = dyn LedgerStore;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::ops::DerefMut for Ledger {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.0
    }
}
