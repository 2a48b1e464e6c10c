//! The center's decision about one connecting device, in one place.

use time::OffsetDateTime;

use super::contracts::Contracts;
use super::crl::CrlState;
use crate::pki::identity::device_identity;
use crate::pki::verify::{verify_client_chain_at, ChainError, Revocation};
use crate::wire::center::{Decision, Verdict};

pub struct Policy {
    /// Accept a CRL past its nextUpdate (fail open). Off by default.
    pub allow_stale_crl: bool,
}

fn decision(verdict: Verdict, reason: impl Into<String>) -> Decision {
    Decision {
        verdict,
        id: None,
        serial: None,
        contract: None,
        reason: reason.into(),
    }
}

/// `chain` is what the device presented (leaf first; the TLS layer verified it
/// chains to `root`), empty when it presented nothing.
pub fn decide(
    chain: &[Vec<u8>],
    root: &[u8],
    crl: &CrlState,
    contracts: &Contracts,
    policy: &Policy,
    now: OffsetDateTime,
) -> Decision {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return decision(
            Verdict::Unknown,
            "no client certificate: a device must connect with its identity certificate",
        );
    };
    let identity = match device_identity(leaf) {
        Ok(identity) => identity,
        Err(e) => return decision(Verdict::Unknown, format!("not a device identity: {e:#}")),
    };
    let named = |mut d: Decision| {
        d.id = Some(identity.id.to_string());
        d.serial = Some(identity.serial_hex.clone());
        d
    };
    if crl.crls.is_empty() {
        let why = crl.error.as_deref().unwrap_or("not fetched yet");
        return named(decision(
            Verdict::Unverifiable,
            format!("no CRL from the CA ({why}); failing closed"),
        ));
    }
    let revocation = Revocation {
        crls: &crl.crls,
        enforce_next_update: !policy.allow_stale_crl,
    };
    match verify_client_chain_at(leaf, intermediates, root, Some(revocation)) {
        Ok(()) => {}
        Err(ChainError::Revoked) => {
            let reason = crl
                .reason_for(&identity.serial_hex)
                .unwrap_or_else(|| "unspecified".into());
            return named(decision(
                Verdict::Revoked,
                format!("certificate {} was revoked ({reason})", identity.serial_hex),
            ));
        }
        Err(ChainError::CrlExpired) => {
            let when = crl
                .next_update
                .map(crate::store::db::time_text)
                .unwrap_or_default();
            return named(decision(
                Verdict::Unverifiable,
                format!("the CRL expired at {when} and no fresh one could be fetched ({}); failing closed", crl.error.as_deref().unwrap_or("no error recorded")),
            ));
        }
        Err(ChainError::Invalid(e)) => return named(decision(Verdict::Unknown, e)),
    }
    match contracts.find(&identity.id, now.date()) {
        Some(contract) => {
            let mut d = named(decision(
                Verdict::Contract,
                format!("under contract {}", contract.reference),
            ));
            d.contract = Some(contract.reference.clone());
            d
        }
        None => named(decision(
            Verdict::NoContract,
            "no active maintenance contract for this device",
        )),
    }
}
