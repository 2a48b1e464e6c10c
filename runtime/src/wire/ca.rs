//! The CA's HTTPS API.
//!
//! `POST /v1/packs` (station): issue one pack per id, all or nothing.
//! `POST /v1/replace` (station): a fresh pack for one id, revoking the one it replaces.
//! `POST /v1/csr` (station): a certificate for one id whose device generated
//! its key and proved it with a PKCS#10 request (`keygen = "device"`); the
//! certificate is built from the id, never from the request's names.
//! `POST /v1/revoke` (station): revoke by serial or device id.
//! `POST /v1/lookup` (station): the live certificate of each id, to resume safely.
//! `GET /v1/crl`, `GET /v1/crl/root` (anyone, no client certificate needed): DER CRLs
//! (the issuing CA's base CRL, the root's).
//! `GET /v1/crl/p/<YYYY-MM>` (anyone): a partition of the issuing CA's CRL
//! (device certificates issued that month, when ca.toml has a `crl_url`).
//! `GET /v1/crls` (anyone): [`CrlIndex`], every CRL served with its number.
//! `GET /v1/health` (anyone).
//!
//! Every refusal is an [`super::ErrorBody`] whose `code` is one of [`codes`].
//! The `--json` reports of `certline ca …` are typed here too ([`LedgerCount`],
//! [`CertRecord`], [`InitReport`], [`Enrolled`], [`WrittenPack`], [`Revoked`]),
//! so that whoever reads them back deserializes, never indexes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::pki::crl::Reason;
use crate::pki::pack::Pack;
use crate::pki::profile::CertProfile;

pub const PACKS: &str = "/v1/packs";
pub const REPLACE: &str = "/v1/replace";
pub const CSR: &str = "/v1/csr";
pub const REVOKE: &str = "/v1/revoke";
pub const LOOKUP: &str = "/v1/lookup";
pub const CRL: &str = "/v1/crl";
pub const ROOT_CRL: &str = "/v1/crl/root";
/// `GET /v1/crl/p/<partition>`: the route, and [`crl_partition_path`] for one partition.
pub const CRL_PARTITION: &str = "/v1/crl/p/{partition}";
pub const CRLS: &str = "/v1/crls";

/// The path of one partition's CRL.
pub fn crl_partition_path(partition: &str) -> String {
    format!("/v1/crl/p/{partition}")
}
pub const HEALTH: &str = "/v1/health";

/// The stable refusal codes of the CA API: the CA sends them, the station
/// matches them. One definition each.
pub mod codes {
    /// The request body, an id, a serial or a batch is not what the endpoint takes.
    pub const BAD_REQUEST: &str = "bad_request";
    /// A certificate profile (the request's or the CA's configured one) cannot be
    /// signed: its `not_after` is not later than the certificate's `not_before`.
    pub const BAD_PROFILE: &str = "bad_profile";
    /// The device id already has a valid certificate and the request does not
    /// name it as the one replaced.
    pub const ALREADY_CERTIFIED: &str = "already_certified";
    /// `replaces` names a certificate that is not the id's valid one.
    pub const REPLACE_MISMATCH: &str = "replace_mismatch";
    /// Another request is issuing a certificate for the device id right now
    /// (its reservation is in the ledger); ask again once it has finished.
    pub const BEING_ISSUED: &str = "being_issued";
    /// The certificate to revoke is revoked already.
    pub const ALREADY_REVOKED: &str = "already_revoked";
    /// No certificate with that serial is in the ledger.
    pub const UNKNOWN_SERIAL: &str = "unknown_serial";
    /// The device id has no valid certificate (to revoke or replace).
    pub const NO_VALID_CERTIFICATE: &str = "no_valid_certificate";
    /// A station asked to revoke a service credential: only the CA's operator
    /// (`certline ca revoke --dir`) revokes those.
    pub const NOT_A_DEVICE_CERTIFICATE: &str = "not_a_device_certificate";
    /// A station asked to revoke or replace a device certificate that another
    /// requester (another station, or the CA's operator) asked for.
    pub const NOT_YOUR_CERTIFICATE: &str = "not_your_certificate";
    /// The caller's credential is not one this endpoint serves, or it was revoked.
    pub const FORBIDDEN: &str = "forbidden";
    /// A device's certificate signing request cannot be signed: not a DER
    /// PKCS#10 request, over 16 KiB, a signature that does not verify with
    /// its key, or a key that is not the model profile's algorithm.
    pub const BAD_CSR: &str = "bad_csr";
    /// No CRL is published under that name (a partition is `YYYY-MM`, and
    /// exists once a certificate was issued in that month).
    pub const NO_SUCH_CRL: &str = "no_such_crl";
    /// The CA failed (a disk, the signer): nothing was issued.
    pub const INTERNAL: &str = "internal";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub items: Vec<BatchItem>,
    /// Certificate profile per model code; a model not named here gets the
    /// CA's configured profile for it (or the default profile).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, CertProfile>,
}

impl BatchRequest {
    /// A batch of fresh certificates (nothing replaced) under the CA's profiles.
    pub fn for_ids<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> BatchRequest {
        BatchRequest {
            items: ids
                .into_iter()
                .map(|id| BatchItem {
                    id: id.as_ref().to_string(),
                    replaces: None,
                })
                .collect(),
            profiles: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// `<model>-<serial>`; checked by the CA so that an error can name the item.
    pub id: String,
    /// Serial (hex) of the id's valid certificate that this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    pub id: String,
    pub replaces: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<CertProfile>,
}

/// Issued packs; the root and issuing CA are sent once for the whole batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackBatch {
    pub root_pem: String,
    pub issuing_pem: String,
    pub packs: Vec<IssuedPack>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct IssuedPack {
    pub id: String,
    pub serial: String,
    pub fingerprint: String,
    pub cert_pem: String,
    /// PKCS#8 PEM of the device's private key.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedPack")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl PackBatch {
    /// The pack as a device receives it: root, device chain, key.
    pub fn pack(&self, issued: &IssuedPack) -> Pack {
        Pack {
            root_pem: self.root_pem.clone(),
            chain_pem: format!("{}{}", issued.cert_pem, self.issuing_pem),
            key_pem: issued.key_pem.clone(),
        }
    }
}

/// `POST /v1/csr`: sign the key of one device that generated it itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// `<model>-<serial>`: the only source of the certificate's names.
    pub id: String,
    /// The device's PKCS#10 request, DER in standard base64.
    pub csr: String,
    /// Serial (hex) of the id's valid certificate that this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// The model's profile, as in a batch; absent means the CA's configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<CertProfile>,
}

/// The answer to a [`CsrRequest`]: a certificate and its chain, no key (the
/// device holds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCert {
    pub id: String,
    pub serial: String,
    pub fingerprint: String,
    pub cert_pem: String,
    pub issuing_pem: String,
    pub root_pem: String,
}

impl SignedCert {
    /// The device chain: the certificate then the issuing CA.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.issuing_pem)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub reason: Reason,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub serial: String,
    pub subject: String,
    pub revoked_at: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupResponse {
    /// Only the ids that have a valid certificate.
    pub live: Vec<LiveCert>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveCert {
    pub id: String,
    pub serial: String,
    pub fingerprint: Option<String>,
}

/// What kind of certificate a ledger row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// A device identity (`<model>-<serial>`).
    Device,
    /// A service credential (`<role>:<name>`).
    Service,
}

impl CertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Device => "device",
            CertKind::Service => "service",
        }
    }

    pub fn parse(text: &str) -> Option<CertKind> {
        match text {
            "device" => Some(CertKind::Device),
            "service" => Some(CertKind::Service),
            _ => None,
        }
    }
}

/// Where a certificate is in its life: `reserved → valid → revoked`, or
/// `reserved → revoked` when its issuance never completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// Serial and id recorded; not (yet) signed and delivered.
    Reserved,
    Valid,
    Revoked,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Reserved => "reserved",
            CertStatus::Valid => "valid",
            CertStatus::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<CertStatus> {
        match text {
            "reserved" => Some(CertStatus::Reserved),
            "valid" => Some(CertStatus::Valid),
            "revoked" => Some(CertStatus::Revoked),
            _ => None,
        }
    }
}

/// One certificate in the ledger, as `ca status --id ID --json` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub serial: String,
    /// The device id, or `<role>:<name>` for a service credential.
    pub subject: String,
    pub kind: CertKind,
    pub status: CertStatus,
    /// Who asked: `station:<name>`, `ca issue`, `ca enroll`, `ca init`.
    pub requester: String,
    pub requested_at: String,
    pub issued_at: Option<String>,
    pub fingerprint: Option<String>,
    pub replaces: Option<String>,
    pub revoked_at: Option<String>,
    pub reason: Option<String>,
    /// Who revoked it (none for rows from before the ledger kept it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

/// One state a certificate entered, as `ca show --json` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub status: CertStatus,
    pub at: String,
    /// Who made the change, where the ledger knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// For a revocation: the RFC 5280 reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `ca show --json`: one certificate, its state history and its PEM (none
/// for a certificate issued before the ledger kept certificates; `note` says so).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertShow {
    #[serde(flatten)]
    pub record: CertRecord,
    pub history: Vec<StateChange>,
    pub pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One row of `ca export` (CSV columns in this order, or one JSON object a line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRow {
    /// The device id, or `<role>:<name>` for a service credential.
    pub id: String,
    pub kind: CertKind,
    pub serial: String,
    pub fingerprint: Option<String>,
    pub status: CertStatus,
    pub requested_at: String,
    pub issued_at: Option<String>,
    pub revoked_at: Option<String>,
    pub requester: String,
    pub reason: Option<String>,
    pub revoked_by: Option<String>,
}

/// One line of `ca status --json` (an array of these): how many certificates
/// of a kind are in a status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCount {
    pub kind: CertKind,
    pub status: CertStatus,
    pub count: u64,
}

/// `ca init --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitReport {
    pub dir: PathBuf,
    pub organization: String,
    pub pen: u32,
    pub root_fingerprint: String,
    pub issuing_fingerprint: String,
    pub listen: String,
}

/// `ca enroll --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    pub role: String,
    pub name: String,
    pub serial: String,
    pub out: PathBuf,
}

/// One pack folder written by `ca issue` or `ca request` (`--json`: an array).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrittenPack {
    pub id: String,
    pub serial: String,
    pub fingerprint: String,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub organization: String,
    pub pen: u32,
    pub max_batch: usize,
    /// Seconds a committed revocation may wait for the CRL that lists it (`crl_max_delay`).
    #[serde(default)]
    pub crl_max_delay: f64,
    /// The number of the issuing CA's CRL being served.
    #[serde(default)]
    pub crl_number: u64,
}

/// `GET /v1/crls`, and `crls.json` beside `crl_url` on the public listener:
/// every CRL the CA serves, so that a client that needs them all (the
/// center) fetches only those whose number changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CrlIndex {
    /// A committed revocation is not on its CRL yet: it will be within
    /// `crl_max_delay` seconds (ask again then).
    pub pending: bool,
    pub crl_max_delay: f64,
    pub crls: Vec<CrlIndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrlIndexEntry {
    /// `issuing` (the base CRL), `issuing:<YYYY-MM>` (a partition) or `root`.
    pub scope: String,
    pub number: u64,
    /// Where the CA's HTTPS API serves it.
    pub path: String,
    /// Where the public listener serves it (ca.toml's `crl_url` and beside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}
