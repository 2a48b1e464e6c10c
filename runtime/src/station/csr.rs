//! The station's half of keys born in the device (`keygen = "device"` for a
//! model): a line sends the CSR its device generated (`POST /v1/sign`); the
//! station checks that the id may be signed today (the same admission as a
//! take), forwards the request to the CA (`/v1/csr`, a batch of one; the
//! station never signs on its own), checks the answer certifies the device's
//! key for that id, and records it as a pack handed out to the line, with no
//! key: what follows (received, written, failed, timeout, retention,
//! rework) is the lifecycle every pack has. Such a model's stock is its
//! planned ids; nothing is fetched for it ahead.
//!
//! A device that generates a new key while its previous certificate is still
//! handed out (its line never reported) gets the re-issue path: the CA
//! revokes the old certificate in the same step as it signs the new one. A
//! valid certificate the station does not hold as live (its answer was lost
//! to a crash, or its revocation still waits in the queue) is superseded the
//! same way. The station lock is never held across the CA call.

use std::time::Duration;

use base64::Engine;

use super::error::{Kind, StationError};
use super::failpoint::point;
use super::fetch::{blocking, CaLink, Shared};
use super::handout::{already_written, take};
use super::Station;
use crate::pki::csr;
use crate::pki::id::DeviceId;
use crate::pki::profile::{CertProfile, Keygen};
use crate::service::client::ClientError;
use crate::store::stock::{
    apply, now_unix, Event, EventContext, NewPack, PackRow, PackState, Stock,
};
use crate::wire::ca::{self as ca_api, CsrRequest, LookupRequest, LookupResponse, SignedCert};
use crate::wire::station::{codes, SignRequest, TakeResponse};

/// How long the station waits for the CA to sign one request.
const CA_WAIT: Duration = Duration::from_secs(10);

/// What a signing needs from the stock before the CA is asked.
pub struct Prepared {
    id: DeviceId,
    profile: CertProfile,
    /// The id's certificate the new one replaces (its previous signing,
    /// never reported), revoked by the CA in the same step.
    superseded: Option<PackRow>,
}

fn bad_csr(message: String) -> StationError {
    StationError::refused(Kind::BadRequest, codes::BAD_CSR, message)
}

fn ca_unreachable(why: impl std::fmt::Display) -> StationError {
    StationError::refused(
        Kind::Unavailable,
        codes::CA_UNREACHABLE,
        format!("CA unreachable, retry: {why}; nothing was signed and nothing changed, scan the device again"),
    )
}

/// `POST /v1/sign`: the whole path, the lock taken only around the stock.
pub async fn sign(
    shared: &Shared,
    ca: &CaLink,
    line: &str,
    request: SignRequest,
) -> Result<TakeResponse, StationError> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(request.csr.trim())
        .map_err(|e| bad_csr(format!("the CSR for {} is not base64: {e}", request.id)))?;
    let line_name = line.to_string();
    let id_text = request.id.clone();
    let prepared = blocking(shared, move |s| s.prepare_sign(&line_name, &id_text))
        .await
        .map_err(StationError::Internal)??;
    let key = csr::verify_for(&der, prepared.profile.key)
        .map_err(|e| bad_csr(format!("the CSR of {}: {e}", prepared.id)))?
        .key;

    let mut ask = CsrRequest {
        id: prepared.id.to_string(),
        csr: request.csr.trim().to_string(),
        replaces: prepared.superseded.as_ref().map(|p| p.serial.clone()),
        profile: Some(prepared.profile.clone()),
    };
    let mut answer = ask_ca(ca, &ask).await;
    if matches!(&answer, Err(e) if e.code() == Some(ca_api::codes::ALREADY_CERTIFIED)) {
        // A valid certificate the station does not hold as live: supersede it.
        if let Some(serial) = unknown_live(shared, ca, &prepared.id).await? {
            ask.replaces = Some(serial);
            answer = ask_ca(ca, &ask).await;
        }
    }
    let signed = answer.map_err(|e| match e {
        ClientError::Unreachable { .. } | ClientError::Garbage { .. } => ca_unreachable(&e),
        ClientError::Refused { status, .. } if status >= 500 => ca_unreachable(&e),
        ClientError::Refused { ref code, .. } if code == ca_api::codes::BAD_CSR => {
            bad_csr(e.to_string())
        }
        other => StationError::conflict(
            codes::CA_REFUSED,
            format!("the CA refused to sign for {}: {other}", prepared.id),
        ),
    })?;
    check_answer(&signed, &prepared.id, &key)?;
    point("sign-after-ca");
    let line_name = line.to_string();
    let replaced = ask.replaces.clone();
    let response = blocking(shared, move |s| {
        s.record_signed(&line_name, prepared, signed, replaced)
    })
    .await
    .map_err(StationError::Internal)??;
    point("sign-after-commit");
    Ok(response)
}

async fn ask_ca(ca: &CaLink, ask: &CsrRequest) -> Result<SignedCert, ClientError> {
    match tokio::time::timeout(CA_WAIT, ca.client().post(ca_api::CSR, ask)).await {
        Ok(answer) => answer,
        Err(_) => Err(ClientError::Unreachable {
            url: ca.url().to_string(),
            reason: format!("no answer within {} s", CA_WAIT.as_secs()),
        }),
    }
}

/// The serial of `id`'s valid certificate at the CA when the station holds
/// no live pack with it (so superseding it takes nothing from a device).
async fn unknown_live(
    shared: &Shared,
    ca: &CaLink,
    id: &DeviceId,
) -> Result<Option<String>, StationError> {
    let lookup = LookupRequest {
        ids: vec![id.to_string()],
    };
    let live: LookupResponse =
        match tokio::time::timeout(CA_WAIT, ca.client().post(ca_api::LOOKUP, &lookup)).await {
            Ok(Ok(live)) => live,
            Ok(Err(e)) => return Err(ca_unreachable(e)),
            Err(_) => return Err(ca_unreachable("no answer to the lookup")),
        };
    let Some(cert) = live.live.into_iter().next() else {
        return Ok(None);
    };
    let serial = cert.serial.to_ascii_lowercase();
    let known = serial.clone();
    let live_here = blocking(shared, move |s| {
        s.stock
            .pack_by_serial(&known)
            .map(|p| p.is_some_and(|p| p.state.is_live()))
    })
    .await
    .map_err(StationError::Internal)??;
    Ok((!live_here).then_some(serial))
}

/// The CA's answer certifies the device's own key, for this id.
fn check_answer(signed: &SignedCert, id: &DeviceId, key: &csr::CsrKey) -> Result<(), StationError> {
    let bad = |why: String| {
        StationError::Internal(anyhow::anyhow!(
            "the CA's certificate for {id} is not usable: {why}"
        ))
    };
    let der = crate::pki::pem_blocks(&signed.cert_pem, "CERTIFICATE")
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| bad("no certificate".into()))?;
    let identity = crate::pki::identity::device_identity(&der).map_err(|e| bad(e.to_string()))?;
    if identity.id != *id {
        return Err(bad(format!("it names {}", identity.id)));
    }
    if crate::pki::fingerprint(&der) != signed.fingerprint {
        return Err(bad("its fingerprint is not the one the CA sent".into()));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key() {
        return Err(bad("it certifies another key than the device's CSR".into()));
    }
    Ok(())
}

impl Station {
    /// Whether `id` may be signed for `line` now, and what it replaces.
    pub fn prepare_sign(&mut self, line: &str, id_text: &str) -> Result<Prepared, StationError> {
        let id = self.admit(id_text, Keygen::Device)?;
        let profile = self
            .config
            .model(id.model())
            .map(|m| m.profile.clone())
            .unwrap_or_default();
        let superseded = match self.stock.live_pack(&id.to_string())? {
            None => None,
            Some(pack) => match pack.state {
                PackState::HandedOut | PackState::Received => {
                    let holder = pack.line.clone().unwrap_or_default();
                    if holder != line {
                        return Err(StationError::conflict(
                            codes::HANDED_OUT_ELSEWHERE,
                            format!(
                                "the certificate of {id} (serial {}) is handed out to line {holder}; it is that line's until it reports a result or the hand-out times out",
                                pack.serial
                            ),
                        ));
                    }
                    Some(pack)
                }
                PackState::Written | PackState::Flagged | PackState::Deleted => {
                    return Err(already_written(&pack))
                }
                PackState::Stocked => {
                    return Err(StationError::conflict(
                        codes::WRONG_STATE,
                        format!(
                            "{id} has a pack with a CA-generated key in stock (serial {}), from before its model was switched to keygen = \"device\"; discard the model's leftovers (station admin discard) first",
                            pack.serial
                        ),
                    ))
                }
                other => {
                    return Err(StationError::Internal(anyhow::anyhow!(
                        "live pack {} in state {other}",
                        pack.serial
                    )))
                }
            },
        };
        Ok(Prepared {
            id,
            profile,
            superseded,
        })
    }

    /// Stores the CA's certificate as a pack handed out to `line`, in one
    /// transaction with the end of the one it superseded.
    pub fn record_signed(
        &mut self,
        line: &str,
        prepared: Prepared,
        signed: SignedCert,
        replaced: Option<String>,
    ) -> Result<TakeResponse, StationError> {
        let now = now_unix();
        let due = self.result_due(now);
        let actor = format!("line:{line}");
        let tx = self.stock.transaction()?;
        if let Some(old) = &prepared.superseded {
            // The CA revoked it in the same step as it signed the new one;
            // the queued revocation it leaves finds it revoked already.
            apply(
                &tx,
                old,
                Event::Failed,
                &EventContext {
                    actor: &actor,
                    at: now,
                    reason: Some(
                        "the device generated a new key; superseded by its new certificate",
                    ),
                    ..Default::default()
                },
            )?;
        }
        Stock::stock_packs(
            &tx,
            &signed.root_pem,
            &signed.issuing_pem,
            &[NewPack {
                id: signed.id.clone(),
                model: prepared.id.model().to_string(),
                serial: signed.serial.to_ascii_lowercase(),
                fingerprint: signed.fingerprint.clone(),
                cert_pem: signed.cert_pem.clone(),
                sealed_key: None,
                replaces: replaced,
                device_key: true,
            }],
            &actor,
            "sign",
        )?;
        let pack = Stock::pack_in(&tx, &signed.serial.to_ascii_lowercase())?;
        take(&tx, &pack, line, now, due)?;
        tx.commit()?;
        self.take_response(&pack, None, now, due, false)
    }
}
