//! The station's HTTPS API: one definition shared by the station server, the
//! line terminal and the admin client.
//!
//! Line endpoints (mTLS, line credentials only):
//! `POST /v1/take` hands out the pack for one device id;
//! `POST /v1/received`, `/v1/written`, `/v1/failed` report what became of it.
//!
//! Admin endpoints (any TLS client, behind the admin login): `POST /v1/admin/login`
//! returns a session token that the others take as `Authorization: Bearer <token>`.
//!
//! Every refusal is an [`super::ErrorBody`] whose `code` is one of [`codes`].

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const TAKE: &str = "/v1/take";
pub const RECEIVED: &str = "/v1/received";
pub const WRITTEN: &str = "/v1/written";
pub const FAILED: &str = "/v1/failed";
pub const HEALTH: &str = "/v1/health";

pub const ADMIN_LOGIN: &str = "/v1/admin/login";
pub const ADMIN_LOGOUT: &str = "/v1/admin/logout";
pub const ADMIN_STOCK: &str = "/v1/admin/stock";
pub const ADMIN_DISCARD: &str = "/v1/admin/discard";
pub const ADMIN_AUDIT: &str = "/v1/admin/audit";
pub const ADMIN_REWORK: &str = "/v1/admin/rework";
pub const ADMIN_QUEUE: &str = "/v1/admin/queue";
/// Makes every waiting CA item due now (answers a [`QueueReport`]).
pub const ADMIN_RETRY: &str = "/v1/admin/queue/retry";
pub const ADMIN_DEVICE: &str = "/v1/admin/device";

/// The stable refusal codes of the station API, for lines and admin clients.
pub mod codes {
    /// The id is malformed, or the request body is not what the endpoint takes.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The id is in no plan at all.
    pub const NOT_IN_PLAN: &str = "not_in_plan";
    /// The id is planned, but for another day (and no rework was authorised).
    pub const NOT_PLANNED_TODAY: &str = "not_planned_today";
    /// The model code is not in the station's configuration.
    pub const UNKNOWN_MODEL: &str = "unknown_model";
    /// The model is built without a certificate.
    pub const NO_CERTIFICATE_MODEL: &str = "no_certificate_model";
    /// Planned, but its pack has not been fetched yet.
    pub const NOT_IN_STOCK: &str = "not_in_stock";
    /// Its previous pack was revoked; the replacement waits for the CA.
    pub const REPLACEMENT_PENDING: &str = "replacement_pending";
    /// The id's leftover pack was discarded by an administrator.
    pub const DISCARDED: &str = "discarded";
    /// The id's certificate is already written into its device.
    pub const ALREADY_WRITTEN: &str = "already_written";
    /// The pack is handed out to another line.
    pub const HANDED_OUT_ELSEWHERE: &str = "handed_out_elsewhere";
    /// The stored pack failed to decrypt (altered or moved); it was quarantined.
    pub const QUARANTINED: &str = "quarantined";
    /// A report names a serial that is no pack of this id.
    pub const UNKNOWN_PACK: &str = "unknown_pack";
    /// A report comes from a line that did not take the pack.
    pub const NOT_YOUR_PACK: &str = "not_your_pack";
    /// The same report again.
    pub const DUPLICATE_REPORT: &str = "duplicate_report";
    /// A report that does not fit the pack's state (e.g. written after failed).
    pub const WRONG_STATE: &str = "wrong_state";
    /// The fingerprint read back is not the handed-out certificate's.
    pub const FINGERPRINT_MISMATCH: &str = "fingerprint_mismatch";
    /// Admin: no session, an expired one, or a wrong user or password.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// Admin: too many failed logins; try again later.
    pub const LOCKED_OUT: &str = "locked_out";
    /// Admin: nothing matched (no such device, no leftovers of that model).
    pub const NOT_FOUND: &str = "not_found";
    /// The client certificate may not do this (a revoked line, a report on
    /// another line's pack).
    pub const FORBIDDEN: &str = "forbidden";
    /// Lines are refused: the station knows no fresh CRL of the CA, so it
    /// cannot tell a revoked line credential from a good one.
    pub const NO_FRESH_CRL: &str = "no_fresh_crl";
    /// Too many failed logins from this address; wait and try again.
    pub const RATE_LIMITED: &str = "rate_limited";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeRequest {
    /// `<model>-<serial>` as scanned from the rating plate.
    pub id: String,
}

/// The pack for one device, handed to the line that took it.
#[derive(Clone, Serialize, Deserialize)]
pub struct TakeResponse {
    pub id: String,
    /// Certificate serial (hex); every later report names it.
    pub serial: String,
    /// SHA-256 of the device certificate's DER (hex), to compare with the read-back.
    pub fingerprint: String,
    pub root_pem: String,
    /// Device certificate then issuing CA.
    pub chain_pem: String,
    /// PKCS#8 PEM of the device's private key.
    pub key_pem: Zeroizing<String>,
    pub taken_at: String,
    /// A pack with no result by then is revoked and replaced.
    pub result_due: String,
    /// True when this line had already taken this pack (a retry after a lost answer).
    #[serde(default)]
    pub again: bool,
}

impl std::fmt::Debug for TakeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakeResponse")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivedRequest {
    pub id: String,
    pub serial: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrittenRequest {
    pub id: String,
    pub serial: String,
    /// Fingerprint of the certificate the line read back from the device.
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedRequest {
    pub id: String,
    pub serial: String,
    pub reason: String,
}

/// Where a pack is in its lifecycle at the station (see `store::stock`,
/// which holds the transition table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl PackState {
    pub const ALL: [PackState; 9] = [
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
        Self::ALL.iter().copied().find(|s| s.as_str() == text)
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

/// Work for the CA waiting durably at the station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// Revoke the certificate and obtain a fresh pack for the id (one CA call).
    Replace,
    /// Revoke the certificate only.
    Revoke,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Replace => "replace",
            QueueKind::Revoke => "revoke",
        }
    }

    pub fn parse(text: &str) -> Option<QueueKind> {
        [QueueKind::Replace, QueueKind::Revoke]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for QueueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a report did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportResponse {
    pub id: String,
    pub serial: String,
    /// The pack's state now: received, flagged, deleted, written or revoked.
    pub state: PackState,
    /// For a failure: the replacement, if the CA already gave one ("stocked"),
    /// or "queued" while the CA is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// "ok", or "no_fresh_crl" while the station refuses lines because it
    /// knows no fresh CRL of the CA.
    pub status: String,
    pub station: String,
    pub day: String,
    pub crl: CrlHealth,
}

/// What the station knows of the CA's CRL (it checks line credentials against it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CrlHealth {
    /// Whether a verified CRL whose nextUpdate has not passed is known:
    /// without one, lines are refused.
    pub fresh: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub this_update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_update: Option<String>,
    /// Revoked serials the CRL lists.
    pub revoked: usize,
    /// Why the last refresh failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---- admin ----

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub user: String,
    /// Send as `Authorization: Bearer <token>`.
    pub token: Zeroizing<String>,
    pub expires_at: String,
}

/// Stock per model code, as the admin sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockReport {
    /// The station's working day the "today" figures refer to.
    pub day: String,
    pub models: Vec<ModelStock>,
    /// Revocations and replacements waiting for the CA.
    pub waiting_for_ca: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelStock {
    pub model: String,
    /// Whether the station's configuration gives this model a certificate.
    pub certificate: bool,
    /// Ids in today's plan.
    pub planned_today: usize,
    /// Packs waiting in stock (any day).
    pub in_stock: usize,
    /// Packs handed out (or received by the device) with no result yet.
    pub handed_out: usize,
    /// Certificates written into devices today.
    pub used_today: usize,
    /// Packs that failed or timed out today (revoked).
    pub failed_today: usize,
    /// Replacement packs stocked today.
    pub replaced_today: usize,
    /// Packs that failed to decrypt and are kept out of use.
    pub quarantined: usize,
    /// Leftover packs discarded by an administrator.
    pub discarded: usize,
    /// Revocations and replacements for this model waiting for the CA.
    pub waiting_for_ca: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscardRequest {
    pub model: String,
    /// Only the leftovers planned for this day (YYYY-MM-DD); all stocked packs of the model if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiscardReport {
    pub model: String,
    pub discarded: Vec<String>,
    /// Revocations now waiting for the CA (sent by the serving station).
    pub revocations_queued: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReworkRequest {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReworkReport {
    pub id: String,
    /// The written certificate that is revoked.
    pub revoked_serial: String,
    /// "queued": the fresh pack comes as soon as the CA answers.
    pub replacement: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditReport {
    /// Whether the hash chain verifies, and if not, where it breaks.
    pub intact: bool,
    pub entries: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub last: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueReport {
    pub items: Vec<QueueItem>,
}

/// One piece of CA work waiting durably at the station.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueItem {
    pub seq: i64,
    pub kind: QueueKind,
    pub id: String,
    pub serial: String,
    pub reason: String,
    pub queued_at: String,
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Everything the station knows about one device id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceReport {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanEntry>,
    /// Every pack this id ever had, oldest first.
    pub packs: Vec<PackInfo>,
    pub waiting_for_ca: Vec<QueueItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanEntry {
    pub day: String,
    pub model: String,
    pub serial: String,
    pub source: String,
    pub row: i64,
    pub discarded: bool,
    pub rework: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackInfo {
    pub serial: String,
    pub fingerprint: String,
    pub state: PackState,
    pub stocked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Whether the sealed key is still in the stock.
    pub key_held: bool,
}

// ---- `--json` reports of the station's commands ----

/// `station init --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitReport {
    pub dir: std::path::PathBuf,
    pub name: String,
    pub ca_url: String,
    pub admin_user: String,
    pub models: Vec<String>,
    pub models_without_certificate: Vec<String>,
}

/// What a plan import changed in the stored plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlanChange {
    pub added: usize,
    pub kept: usize,
    pub removed: usize,
}

/// `station plan import --json` (and the drop folder's log).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub file: String,
    pub ids: usize,
    /// Ids per day and model.
    pub days: std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>,
    #[serde(flatten)]
    pub change: PlanChange,
    /// Models kept in the plan that the fetch skips (no certificate).
    pub notes: Vec<String>,
}

/// One planned device id (one row of the stored plan), as
/// `station plan show --ids --json` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// `station plan show --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanShowReport {
    pub day: String,
    /// Ids per model.
    pub models: std::collections::BTreeMap<String, usize>,
    /// Every id, with `--ids` (else null).
    pub rows: Option<Vec<PlanRow>>,
}

/// What a fetch did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FetchReport {
    pub days: Vec<String>,
    /// Ids planned on those days for models with a certificate.
    pub planned: usize,
    /// Ids that already had a pack (or a replacement on its way).
    pub already_in_stock: usize,
    /// Packs fetched by this run.
    pub fetched: usize,
    /// Of those, ids whose earlier certificate (lost before it reached the
    /// stock) was revoked by the CA in the same step.
    pub superseded_unknown: usize,
    pub chunks: usize,
    pub notes: Vec<String>,
}

/// What one pass over the CA queue did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueueRun {
    pub done: usize,
    pub failed: usize,
    pub waiting: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// `station fetch --json`: the queue pass first, then the fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchCommandReport {
    pub fetch: FetchReport,
    pub queue: QueueRun,
}

/// `station admin user-add --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserAdded {
    pub added: String,
}

/// `POST /v1/admin/logout`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedOut {
    pub logged_out: bool,
}

/// `GET /v1/admin/audit?last=N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(default = "AuditQuery::default_last")]
    pub last: i64,
}

impl AuditQuery {
    fn default_last() -> i64 {
        20
    }
}

/// `GET /v1/admin/device?id=MODEL-SERIAL`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceQuery {
    pub id: String,
}

// ---- the console's reports (built by the same station code as the API's) ----

/// Devices written per hour of the station's day: the plan's progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgressReport {
    pub day: String,
    /// Hours in the day (the length of every `per_hour`).
    pub hours: usize,
    /// The hour of the day now (0-based), or None when `day` is not today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour_now: Option<usize>,
    /// Per model code: planned today and written per hour.
    pub models: Vec<ProgressSeries>,
    /// Per line: written per hour (planned is 0: plans are per model).
    pub lines: Vec<ProgressSeries>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgressSeries {
    pub name: String,
    pub planned: usize,
    pub written: usize,
    pub per_hour: Vec<usize>,
}

/// Each line that talked to the station today.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinesReport {
    pub day: String,
    pub lines: Vec<LineActivity>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LineActivity {
    pub line: String,
    /// The last request of the line this station served (or the last pack
    /// event, when it has not served the line since it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    pub taken_today: usize,
    pub written_today: usize,
    pub failed_today: usize,
    /// Packs it holds now with no result yet.
    pub holding: usize,
    /// Its newest refusals since the station started, newest first.
    pub refusals: Vec<LineRefusal>,
    /// Its newest failed packs today, newest first.
    pub failures: Vec<LineFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineRefusal {
    pub at: String,
    /// What the line asked about (a scanned id).
    pub id: String,
    /// One of [`codes`].
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineFailure {
    pub at: String,
    pub id: String,
    pub serial: String,
    pub reason: String,
}

/// A page of the audit log, newest first, filtered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPageQuery {
    /// The action exactly (`discard`, `login_failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Part of the actor (a user name, a line name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Part of the entry's detail (a device id, a serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Entries before this sequence number (the next page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    /// The whole chain's integrity, as in [`AuditReport`].
    pub intact: bool,
    pub entries: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Newest first.
    pub page: Vec<AuditEntry>,
    /// `before` for the next (older) page, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}
