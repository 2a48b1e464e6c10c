//! The center's decision about one connecting device, in one place.

use time::OffsetDateTime;

use super::contracts::Contracts;
use super::crl::{CrlState, Status};
use crate::pki::identity::device_identity;
use crate::pki::verify::verify_client_chain;
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
/// chains to `root`), empty when it presented nothing. The chain is verified
/// without CRLs; each of its certificates is then looked up in the
/// revocation set (one hash probe each, no CRL decoded here).
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
    if crl.is_empty() {
        let why = crl.error.as_deref().unwrap_or("not fetched yet");
        return named(decision(
            Verdict::Unverifiable,
            format!("no CRL from the CA ({why}); failing closed"),
        ));
    }
    if let Err(e) = verify_client_chain(leaf, intermediates, root) {
        return named(decision(Verdict::Unknown, format!("{e:#}")));
    }
    if !policy.allow_stale_crl && crl.is_stale(now) {
        let when = crl
            .next_update
            .map(crate::store::db::time_text)
            .unwrap_or_default();
        return named(decision(
            Verdict::Unverifiable,
            format!(
                "the CRL expired at {when} and no fresh one could be fetched ({}); failing closed",
                crl.error.as_deref().unwrap_or("no error recorded")
            ),
        ));
    }
    // Every certificate below the root, leaf first (as webpki's chain depth).
    for cert in std::iter::once(leaf).chain(intermediates) {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
            return named(decision(
                Verdict::Unknown,
                "a certificate of the chain does not parse",
            ));
        };
        if parsed.subject() == parsed.issuer() {
            continue;
        }
        match crl.status(parsed.issuer().as_raw(), parsed.raw_serial()) {
            Status::Good => {}
            Status::Revoked { serial_hex, reason } => {
                return named(decision(
                    Verdict::Revoked,
                    format!("certificate {serial_hex} was revoked ({reason})"),
                ));
            }
            Status::NoCrl => {
                return named(decision(
                    Verdict::Unverifiable,
                    format!(
                        "no CRL of {} is held, so the status of certificate {} is unknown; failing closed",
                        parsed.issuer(),
                        hex::encode(parsed.raw_serial())
                    ),
                ));
            }
        }
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
