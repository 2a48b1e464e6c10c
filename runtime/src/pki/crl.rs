//! Revocation entries and reasons, as the ledger keeps them and CRLs carry them.

use serde::{Deserialize, Serialize};

use super::serial::Serial;

/// RFC 5280 5.3.1 reason codes that a certline CA uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    #[default]
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    /// Replaced by a fresh certificate (a failed write, a rework).
    Superseded,
    /// Taken out of service: discarded leftovers, abandoned issuance.
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::CaCompromise => "ca-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
            Reason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(text, true).ok()
    }

    pub fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate as a CRL lists it.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    pub serial: Serial,
    pub revoked_at: time::OffsetDateTime,
    pub reason: Reason,
}

/// The serials (lower-case hex) a DER CRL lists.
pub fn listed_serials(der: &[u8]) -> anyhow::Result<std::collections::HashSet<String>> {
    let (_, crl) = x509_parser::parse_x509_crl(der)
        .map_err(|e| anyhow::anyhow!("the CRL does not parse: {e}"))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect())
}
