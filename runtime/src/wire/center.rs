//! The remote-management center's API, spoken by devices with their identity
//! certificate as the TLS client certificate.
//!
//! `GET /v1/status`: the center's decision about the connecting device.
//! `POST /v1/report`: a device report (e.g. a billing counter); refused when
//! it names another id than the certificate's (an impersonation attempt).
//! `GET /v1/health`: the center's CRL and contract-list state.

use serde::{Deserialize, Serialize};

pub const STATUS: &str = "/v1/status";
pub const REPORT: &str = "/v1/report";
pub const HEALTH: &str = "/v1/health";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A genuine device under an active maintenance contract.
    Contract,
    /// A genuine device without an active contract.
    NoContract,
    /// The certificate has been revoked.
    Revoked,
    /// No device identity: no certificate, or one that names no device.
    Unknown,
    /// The revocation status cannot be established (no CRL, or a stale one):
    /// the center fails closed.
    Unverifiable,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Contract => "contract",
            Verdict::NoContract => "no contract",
            Verdict::Revoked => "revoked",
            Verdict::Unknown => "unknown",
            Verdict::Unverifiable => "unverifiable",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The device id read from the certificate's SAN (agreeing with its subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Certificate serial (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The contract reference, for `contract`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Why, in words.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The id the device says it is; must be the certificate's id.
    pub id: String,
    /// A counter reading, e.g. pages printed or kWh metered.
    pub counter: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportReceipt {
    pub accepted: bool,
    pub decision: Decision,
}

/// What `certline device-sim --report-to ... --json` prints: the center's
/// decision about the device and what became of its report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CenterAnswer {
    /// The center's decision about this device.
    pub decision: Decision,
    /// The id the report named.
    pub reported_as: String,
    pub report_accepted: bool,
    /// The center's reason for refusing the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_refused: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub contracts: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contracts_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_next_update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_error: Option<String>,
}
