//! Issuance policy: what a request may ask for, and the order in which the
//! ledger and the signer are used so that no device id ever has two valid
//! certificates and no signed certificate is unknown to the ledger.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use zeroize::Zeroizing;

use super::dir::CaConfig;
use crate::pki::authority::Authority;
use crate::pki::credential::Credential;
use crate::pki::crl::Reason;
use crate::pki::id::{check_model, DeviceId};
use crate::pki::keys::DeviceKey;
use crate::pki::profile::{CertProfile, ResolvedProfile};
use crate::pki::role::{check_name, Role};
use crate::pki::serial::Serial;
use crate::pki::{fingerprint, to_pem};
use crate::service::server::ApiError;
use crate::store::ledger::{CertKind, Ledger, LedgerError, Reservation, RevokeTarget};
use crate::wire::ca::{BatchRequest, IssuedPack, LiveCert, PackBatch, Revoked};

pub const SCOPE_ISSUING: &str = "issuing";
pub const SCOPE_ROOT: &str = "root";

/// Why the CA refused or failed; maps onto an HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl CaError {
    /// Sorts ledger refusals (expected) from real failures.
    fn from_ledger(err: anyhow::Error) -> CaError {
        match err.downcast::<LedgerError>() {
            Ok(refusal) => {
                let message = refusal.to_string();
                match refusal {
                    LedgerError::AlreadyCertified { .. } => CaError::Conflict {
                        code: "already_certified",
                        message,
                    },
                    LedgerError::ReplaceMismatch { .. } => CaError::Conflict {
                        code: "replace_mismatch",
                        message,
                    },
                    LedgerError::AlreadyRevoked { .. } => CaError::Conflict {
                        code: "already_revoked",
                        message,
                    },
                    LedgerError::UnknownSerial(_) => CaError::NotFound {
                        code: "unknown_serial",
                        message,
                    },
                    LedgerError::NoLiveCert(_) => CaError::NotFound {
                        code: "no_valid_certificate",
                        message,
                    },
                }
            }
            Err(other) => CaError::Internal(other),
        }
    }
}

impl From<CaError> for ApiError {
    fn from(err: CaError) -> ApiError {
        match err {
            CaError::BadRequest(message) => ApiError::bad_request(message),
            CaError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            CaError::NotFound { code, message } => {
                ApiError::new(StatusCode::NOT_FOUND, code, message)
            }
            CaError::Internal(err) => ApiError::internal(err),
        }
    }
}

pub struct CertAuthority {
    pki: Authority,
    ledger: Ledger,
    config: CaConfig,
}

/// One signed device certificate before it is committed.
struct Signed {
    serial: Serial,
    id: String,
    der: Vec<u8>,
    key_pem: Zeroizing<String>,
}

impl CertAuthority {
    pub fn new(pki: Authority, ledger: Ledger, config: CaConfig) -> CertAuthority {
        CertAuthority {
            pki,
            ledger,
            config,
        }
    }

    pub fn pki(&self) -> &Authority {
        &self.pki
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Checks a batch and resolves each item's profile, naming the first bad item.
    fn validate(
        &self,
        request: &BatchRequest,
    ) -> Result<Vec<(DeviceId, Option<Serial>, ResolvedProfile)>, CaError> {
        let items = &request.items;
        if items.is_empty() {
            return Err(CaError::BadRequest(
                "the batch is empty: name at least one device id".into(),
            ));
        }
        if items.len() > self.config.max_batch {
            return Err(CaError::BadRequest(format!(
                "the batch has {} ids, more than this CA's maximum of {} per request; split it",
                items.len(),
                self.config.max_batch
            )));
        }
        let mut profiles: BTreeMap<&str, ResolvedProfile> = BTreeMap::new();
        for (model, profile) in &request.profiles {
            check_model(model).map_err(|e| CaError::BadRequest(format!("profiles: {e}")))?;
            let resolved = profile
                .resolve()
                .map_err(|e| CaError::BadRequest(format!("profile for model {model}: {e}")))?;
            profiles.insert(model, resolved);
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let number = index + 1;
            let id = DeviceId::parse(&item.id)
                .map_err(|e| CaError::BadRequest(format!("item {number}: {e}")))?;
            if let Some(first) = seen.insert(item.id.as_str(), number) {
                return Err(CaError::BadRequest(format!(
                    "device id {} appears twice in the batch (items {first} and {number}); a device gets one certificate",
                    item.id
                )));
            }
            let replaces =
                match &item.replaces {
                    None => None,
                    Some(text) => Some(Serial::from_hex(text).map_err(|e| {
                        CaError::BadRequest(format!("item {number}: replaces: {e}"))
                    })?),
                };
            let profile = match profiles.get(id.model()) {
                Some(profile) => profile.clone(),
                None => self.configured_profile(id.model()).resolve().map_err(|e| {
                    CaError::Internal(anyhow::anyhow!(
                        "configured profile for {}: {e}",
                        id.model()
                    ))
                })?,
            };
            out.push((id, replaces, profile));
        }
        Ok(out)
    }

    fn configured_profile(&self, model: &str) -> &CertProfile {
        self.config
            .models
            .get(model)
            .unwrap_or(&self.config.default_profile)
    }

    /// Issues one pack per item, all or nothing. Keys are generated and signed
    /// on `threads` threads; serials and ids are in the ledger before the first
    /// signature, and a failure revokes the reservations it leaves.
    pub fn issue_batch(
        &mut self,
        request: &BatchRequest,
        requester: &str,
        threads: usize,
    ) -> Result<PackBatch, CaError> {
        let items = self.validate(request)?;
        let reservations: Vec<Reservation> = items
            .iter()
            .map(|(id, replaces, _)| Reservation {
                serial: Serial::random(),
                subject: id.to_string(),
                kind: CertKind::Device,
                replaces: replaces.clone(),
            })
            .collect();
        self.ledger
            .reserve(&reservations, requester)
            .map_err(CaError::from_ledger)?;

        let signed = match self.sign_all(&items, &reservations, threads) {
            Ok(signed) => signed,
            Err(err) => {
                let serials: Vec<Serial> = reservations.iter().map(|r| r.serial.clone()).collect();
                self.ledger
                    .abandon_reserved(Some(&serials), &format!("signing failed: {err:#}"))?;
                return Err(CaError::Internal(err));
            }
        };
        let committed: Vec<(Serial, String)> = signed
            .iter()
            .map(|s| (s.serial.clone(), fingerprint(&s.der)))
            .collect();
        if let Err(err) = self.ledger.commit_issued(&committed, requester) {
            let serials: Vec<Serial> = reservations.iter().map(|r| r.serial.clone()).collect();
            let _ = self
                .ledger
                .abandon_reserved(Some(&serials), &format!("commit failed: {err:#}"));
            return Err(CaError::Internal(err));
        }
        // A replacement revoked the certificate it replaces (in `reserve`):
        // the CRL must say so now, not when the cached one is half expired.
        if reservations.iter().any(|r| r.replaces.is_some()) {
            self.publish_crls().map_err(CaError::Internal)?;
        }
        let packs = signed
            .into_iter()
            .zip(committed)
            .map(|(s, (_, fp))| IssuedPack {
                id: s.id,
                serial: s.serial.to_hex(),
                fingerprint: fp,
                cert_pem: to_pem("CERTIFICATE", &s.der),
                key_pem: s.key_pem,
            })
            .collect();
        Ok(PackBatch {
            root_pem: self.pki.root_pem().to_string(),
            issuing_pem: self.pki.issuing_pem().to_string(),
            packs,
        })
    }

    fn sign_all(
        &self,
        items: &[(DeviceId, Option<Serial>, ResolvedProfile)],
        reservations: &[Reservation],
        threads: usize,
    ) -> anyhow::Result<Vec<Signed>> {
        let not_before = time::OffsetDateTime::now_utc().replace_nanosecond(0)?;
        // Only the signer crosses threads; the ledger stays on this one.
        let pki = &self.pki;
        let sign_one = |((id, _, profile), reservation): (
            &(DeviceId, Option<Serial>, ResolvedProfile),
            &Reservation,
        )| {
            let key = DeviceKey::generate(profile.key)?;
            let der = pki.sign_device(id, profile, &reservation.serial, &key, not_before)?;
            Ok(Signed {
                serial: reservation.serial.clone(),
                id: id.to_string(),
                der,
                key_pem: key.pkcs8_pem(),
            })
        };
        let threads = threads.clamp(1, 64);
        if threads == 1 || items.len() < 64 {
            return items.iter().zip(reservations).map(sign_one).collect();
        }
        let chunk = items.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = items
                .chunks(chunk)
                .zip(reservations.chunks(chunk))
                .map(|(items, reservations)| {
                    scope.spawn(move || {
                        items
                            .iter()
                            .zip(reservations)
                            .map(sign_one)
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(items.len());
            for worker in workers {
                all.extend(
                    worker
                        .join()
                        .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??,
                );
            }
            Ok(all)
        })
    }

    /// A service credential for a station, line, center, device link or the CA itself.
    pub fn enroll(
        &mut self,
        role: Role,
        name: &str,
        hosts: &[String],
        requester: &str,
    ) -> anyhow::Result<Credential> {
        check_name(name).map_err(anyhow::Error::msg)?;
        let serial = Serial::random();
        self.ledger.reserve(
            &[Reservation {
                serial: serial.clone(),
                subject: format!("{}:{name}", role.name()),
                kind: CertKind::Service,
                replaces: None,
            }],
            requester,
        )?;
        let key = DeviceKey::generate(crate::pki::profile::KeyAlgorithm::P256)?;
        let der = self.pki.sign_service(role, name, hosts, &serial, &key)?;
        self.ledger
            .commit_issued(&[(serial, fingerprint(&der))], requester)?;
        Credential::new(
            vec![der, self.pki.issuing_der().to_vec()],
            self.pki.root_der().to_vec(),
            Zeroizing::new(key.pkcs8_der().to_vec()),
        )
    }

    pub fn revoke(
        &mut self,
        target: &RevokeTarget,
        reason: Reason,
        actor: &str,
    ) -> Result<Revoked, CaError> {
        let record = self
            .ledger
            .revoke(target, reason, actor)
            .map_err(CaError::from_ledger)?;
        self.publish_crls()?;
        Ok(Revoked {
            serial: record.serial,
            subject: record.subject,
            revoked_at: record.revoked_at.unwrap_or_default(),
            reason: record.reason.unwrap_or_default(),
        })
    }

    /// The live certificate of each id that has one.
    pub fn lookup(&self, ids: &[String]) -> Result<Vec<LiveCert>, CaError> {
        let mut live = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            DeviceId::parse(id)
                .map_err(|e| CaError::BadRequest(format!("id {}: {e}", index + 1)))?;
            if let Some(record) = self.ledger.live_device_cert(id)? {
                live.push(LiveCert {
                    id: id.clone(),
                    serial: record.serial,
                    fingerprint: record.fingerprint,
                });
            }
        }
        Ok(live)
    }

    fn crl_validity(&self) -> time::Duration {
        time::Duration::hours(i64::from(self.config.crl_validity_hours.max(1)))
    }

    /// Signs and stores fresh CRLs for both scopes, each with the next number.
    pub fn publish_crls(&mut self) -> anyhow::Result<()> {
        self.publish_crls_valid_for(self.crl_validity())
    }

    /// As [`Self::publish_crls`], with a nextUpdate `validity` from now.
    pub fn publish_crls_valid_for(&mut self, validity: time::Duration) -> anyhow::Result<()> {
        let revoked = self.ledger.revoked_entries()?;
        let next_update = crate::store::db::time_text(time::OffsetDateTime::now_utc() + validity);
        let number = self.ledger.next_crl_number(SCOPE_ISSUING)?;
        let der = self.pki.issuing_crl(number, &revoked, validity)?;
        self.ledger
            .store_crl(SCOPE_ISSUING, number, &der, &next_update)?;
        // Nothing revokes the issuing CA yet, so the root's list stays empty.
        let number = self.ledger.next_crl_number(SCOPE_ROOT)?;
        let der = self.pki.root_crl(number, &[], validity)?;
        self.ledger
            .store_crl(SCOPE_ROOT, number, &der, &next_update)?;
        Ok(())
    }

    /// The current CRL of a scope, re-published once half its validity is gone.
    pub fn crl(&mut self, scope: &str) -> anyhow::Result<Vec<u8>> {
        if let Some((_, der, next_update)) = self.ledger.current_crl(scope)? {
            let next = crate::store::db::parse_time(&next_update)?;
            if next - time::OffsetDateTime::now_utc() > self.crl_validity() / 2 {
                return Ok(der);
            }
        }
        self.publish_crls()?;
        let (_, der, _) = self
            .ledger
            .current_crl(scope)?
            .ok_or_else(|| anyhow::anyhow!("no CRL for {scope}"))?;
        Ok(der)
    }

    /// Whether a serial (hex) is revoked in this CA's ledger.
    pub fn is_revoked(&self, serial: &str) -> anyhow::Result<bool> {
        Ok(self
            .ledger
            .by_serial(serial)?
            .is_some_and(|r| r.status == "revoked"))
    }
}
