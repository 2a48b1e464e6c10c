//! Issuance: what a request may ask for, who may revoke what, and the order
//! in which the ledger and the signer are used so that no device id ever has
//! two valid certificates and no signed certificate is unknown to the ledger
//! (reserve → sign → commit; see `ISSUANCE-CYCLE.md` beside this file for
//! what a crash between any two steps leaves and who cleans it up). A
//! revocation commits its row and the ledger's revocation count and returns:
//! CRLs are signed off the request path (`publish.rs`).
//!
//! No transport here: refusals are a [`CaError`] with a kind and a stable
//! code from [`crate::wire::ca::codes`]; `serve.rs` maps them onto HTTP. The
//! time comes from the [`Clock`] the CA is built with, read once per operation
//! and handed down to the ledger and the signer.
//!
//! One job in one file although it passes 600 lines: the cycle's steps, the
//! checks before them and the refusals they raise are read together, since
//! the order of the checks and of the ledger and signer calls is the guarantee.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::config::CaConfig;
use crate::pki::authority::Authority;
use crate::pki::credential::Credential;
use crate::pki::crl::Reason;
use crate::pki::id::{check_model, DeviceId};
use crate::pki::keys::DeviceKey;
use crate::pki::profile::ResolvedProfile;
use crate::pki::role::{check_name, Role};
use crate::pki::serial::Serial;
use crate::pki::{fingerprint, to_pem};
use crate::store::ledger::{
    CertKind, CertRecord, CertStatus, Ledger, LedgerError, Reservation, RevokeTarget,
};
use crate::wire::ca::{codes, BatchRequest, IssuedPack, LiveCert, PackBatch, Revoked};

pub const SCOPE_ISSUING: &str = "issuing";
pub const SCOPE_ROOT: &str = "root";

/// Where the CA's time comes from: the system clock, or a fixed instant.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(OffsetDateTime::now_utc))
    }

    pub fn fixed(at: OffsetDateTime) -> Clock {
        Clock(Arc::new(move || at))
    }

    /// Now, in whole seconds (what certificates, CRLs and the ledger record).
    pub fn now(&self) -> OffsetDateTime {
        let now = (self.0)();
        now.replace_nanosecond(0).unwrap_or(now)
    }
}

/// What kind of refusal a [`CaError`] is; the transport decides what it means on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaErrorKind {
    /// The request itself is wrong (a bad id, batch or profile).
    Invalid,
    /// The request collides with the ledger's state (a second live certificate, …).
    Conflict,
    /// What the request names is not in the ledger.
    NotFound,
    /// The requester may not do this to that certificate.
    Forbidden,
    /// The CA failed; nothing the requester can fix.
    Internal,
}

/// Why the CA refused or failed, with a stable code from [`codes`].
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{message}")]
    Refused {
        kind: CaErrorKind,
        code: &'static str,
        message: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl CaError {
    pub(super) fn refused(
        kind: CaErrorKind,
        code: &'static str,
        message: impl Into<String>,
    ) -> CaError {
        CaError::Refused {
            kind,
            code,
            message: message.into(),
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> CaError {
        CaError::refused(CaErrorKind::Invalid, codes::BAD_REQUEST, message)
    }

    pub fn kind(&self) -> CaErrorKind {
        match self {
            CaError::Refused { kind, .. } => *kind,
            CaError::Internal(_) => CaErrorKind::Internal,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            CaError::Refused { code, .. } => code,
            CaError::Internal(_) => codes::INTERNAL,
        }
    }

    /// Sorts ledger refusals (expected) from real failures.
    fn from_ledger(err: anyhow::Error) -> CaError {
        match err.downcast::<LedgerError>() {
            Ok(refusal) => {
                let message = refusal.to_string();
                let (kind, code) = match refusal {
                    LedgerError::AlreadyCertified { .. } => {
                        (CaErrorKind::Conflict, codes::ALREADY_CERTIFIED)
                    }
                    LedgerError::ReplaceMismatch { .. } => {
                        (CaErrorKind::Conflict, codes::REPLACE_MISMATCH)
                    }
                    LedgerError::AlreadyRevoked { .. } => {
                        (CaErrorKind::Conflict, codes::ALREADY_REVOKED)
                    }
                    LedgerError::UnknownSerial(_) => (CaErrorKind::NotFound, codes::UNKNOWN_SERIAL),
                    LedgerError::NoLiveCert(_) => {
                        (CaErrorKind::NotFound, codes::NO_VALID_CERTIFICATE)
                    }
                };
                CaError::refused(kind, code, message)
            }
            Err(other) => CaError::Internal(other),
        }
    }
}

/// Who asks the CA for something. A station may revoke and replace only the
/// device certificates it asked for itself; the CA's operator (the command
/// line, holding the CA directory and its passphrase) may revoke anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// The operator, named by the command (`ca issue`, `ca revoke`, …).
    Operator(String),
    /// A station, by the name in its credential.
    Station(String),
    /// A device renewing its own identity over EST, by the id its current
    /// identity certificate names (`simplereenroll`).
    Device(String),
}

impl Requester {
    pub fn operator(command: &str) -> Requester {
        Requester::Operator(command.to_string())
    }

    /// As the ledger and the audit log record it: `station:<name>` or the command.
    pub fn name(&self) -> String {
        match self {
            Requester::Operator(command) => command.clone(),
            Requester::Station(name) => format!("station:{name}"),
            Requester::Device(id) => format!("device:{id}"),
        }
    }

    /// Refuses what a station may not touch: a service credential, or a
    /// device certificate another requester asked for.
    fn may_touch(&self, cert: &CertRecord, doing: &str) -> Result<(), CaError> {
        match self {
            Requester::Operator(_) => return Ok(()),
            Requester::Station(_) => {}
            Requester::Device(id) => {
                if cert.kind == CertKind::Device && &cert.subject == id {
                    return Ok(());
                }
                return Err(CaError::refused(
                    CaErrorKind::Forbidden,
                    codes::NOT_YOUR_CERTIFICATE,
                    format!(
                        "certificate {} of {} is not the identity of device {id}; a device may {doing} only its own",
                        cert.serial, cert.subject
                    ),
                ));
            }
        }
        if cert.kind != CertKind::Device {
            return Err(CaError::refused(
                CaErrorKind::Forbidden,
                codes::NOT_A_DEVICE_CERTIFICATE,
                format!(
                    "certificate {} is the service credential of {}; a station may {doing} device certificates only (the CA's operator revokes credentials with `certline ca revoke --dir`)",
                    cert.serial, cert.subject
                ),
            ));
        }
        let me = self.name();
        if cert.requester != me {
            return Err(CaError::refused(
                CaErrorKind::Forbidden,
                codes::NOT_YOUR_CERTIFICATE,
                format!(
                    "certificate {} of {} was asked for by {}, not by {me}; a station may {doing} only the certificates it asked for",
                    cert.serial, cert.subject, cert.requester
                ),
            ));
        }
        Ok(())
    }
}

/// The CA's crash points, in cycle order (see [`crate::failpoint`] and
/// `ISSUANCE-CYCLE.md`); the crash matrix in `tests/ca.rs` kills the CA at each.
pub const FAIL_POINTS: &[&str] = &[
    "ca-after-reserve",
    "ca-after-sign",
    "ca-after-commit",
    "ca-revoke-before-crl",
];

fn crash_point(name: &'static str) {
    crate::failpoint::point("ca", name)
}

pub struct CertAuthority {
    /// Shared with the CRL publisher thread, which signs with it too.
    pki: Arc<Authority>,
    ledger: Ledger,
    config: CaConfig,
    clock: Clock,
}

/// One signed device certificate before it is committed, with its private
/// key (`K`) when the CA generated it, `()` when the device holds it.
pub(super) struct Signed<K> {
    pub(super) serial: Serial,
    pub(super) id: String,
    pub(super) der: Vec<u8>,
    pub(super) key: K,
}

/// A checked batch item: its id, the certificate it replaces, its profile.
pub(super) type Item = (DeviceId, Option<Serial>, ResolvedProfile);

impl CertAuthority {
    pub fn new(
        mut pki: Authority,
        ledger: Ledger,
        config: CaConfig,
        clock: Clock,
    ) -> CertAuthority {
        pki.set_issued_urls(config.issued_urls());
        CertAuthority {
            pki: Arc::new(pki),
            ledger,
            config,
            clock,
        }
    }

    pub fn pki(&self) -> &Authority {
        &self.pki
    }

    /// The signer, for a thread that signs beside this one (the CRL publisher).
    pub fn shared_pki(&self) -> Arc<Authority> {
        self.pki.clone()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Checks a batch and resolves each item's profile, naming the first bad
    /// item; every profile must give certificates valid after `not_before`.
    pub(super) fn validate(
        &self,
        request: &BatchRequest,
        not_before: OffsetDateTime,
    ) -> Result<Vec<Item>, CaError> {
        let items = &request.items;
        if items.is_empty() {
            return Err(CaError::invalid(
                "the batch is empty: name at least one device id",
            ));
        }
        if items.len() > self.config.max_batch {
            return Err(CaError::invalid(format!(
                "the batch has {} ids, more than this CA's maximum of {} per request; split it",
                items.len(),
                self.config.max_batch
            )));
        }
        let bad_profile = |model: &str, e: String| {
            CaError::refused(
                CaErrorKind::Invalid,
                codes::BAD_PROFILE,
                format!("profile for model {model}: {e}"),
            )
        };
        let mut profiles: BTreeMap<&str, ResolvedProfile> = BTreeMap::new();
        for (model, profile) in &request.profiles {
            check_model(model).map_err(|e| CaError::invalid(format!("profiles: {e}")))?;
            let resolved = profile
                .resolve()
                .map_err(|e| CaError::invalid(format!("profile for model {model}: {e}")))?;
            resolved
                .check_lifetime(not_before)
                .map_err(|e| bad_profile(model, e))?;
            profiles.insert(model, resolved);
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let number = index + 1;
            let id = DeviceId::parse(&item.id)
                .map_err(|e| CaError::invalid(format!("item {number}: {e}")))?;
            if let Some(first) = seen.insert(item.id.as_str(), number) {
                return Err(CaError::invalid(format!(
                    "device id {} appears twice in the batch (items {first} and {number}); a device gets one certificate",
                    item.id
                )));
            }
            let replaces = match &item.replaces {
                None => None,
                Some(text) => Some(
                    Serial::from_hex(text)
                        .map_err(|e| CaError::invalid(format!("item {number}: replaces: {e}")))?,
                ),
            };
            let profile = match profiles.get(id.model()) {
                Some(profile) => profile.clone(),
                None => {
                    // The configured profiles were checked at load; the clock
                    // may have passed a configured not_after since.
                    let resolved = self.config.profile(id.model()).resolve().map_err(|e| {
                        CaError::Internal(anyhow::anyhow!(
                            "configured profile for {}: {e}",
                            id.model()
                        ))
                    })?;
                    resolved.check_lifetime(not_before).map_err(|e| {
                        bad_profile(id.model(), format!("(configured in ca.toml) {e}"))
                    })?;
                    resolved
                }
            };
            out.push((id, replaces, profile));
        }
        Ok(out)
    }

    /// Issues one pack per item, all or nothing. Keys are generated and signed
    /// on `threads` threads; serials and ids are in the ledger before the first
    /// signature, and a failure revokes the reservations it leaves.
    pub fn issue_batch(
        &mut self,
        request: &BatchRequest,
        requester: &Requester,
        threads: usize,
    ) -> Result<PackBatch, CaError> {
        let now = self.clock.now();
        let items = self.validate(request, now)?;
        let issued = self.issue_items(&items, requester, now, |pki, items, reservations| {
            sign_all(pki, items, reservations, threads, now)
        })?;
        let packs = issued
            .into_iter()
            .map(|(s, fp)| IssuedPack {
                id: s.id,
                serial: s.serial.to_hex(),
                fingerprint: fp,
                cert_pem: to_pem("CERTIFICATE", &s.der),
                key_pem: s.key,
            })
            .collect();
        Ok(PackBatch {
            root_pem: self.pki.root_pem().to_string(),
            issuing_pem: self.pki.issuing_pem().to_string(),
            packs,
        })
    }

    /// The cycle for checked items, whoever made the keys: reserve, `sign`
    /// (given the signer, the items and their reservations), commit, publish.
    /// Returns each signed certificate with its fingerprint, in item order.
    pub(super) fn issue_items<K>(
        &mut self,
        items: &[Item],
        requester: &Requester,
        now: OffsetDateTime,
        sign: impl FnOnce(&Authority, &[Item], &[Reservation]) -> anyhow::Result<Vec<Signed<K>>>,
    ) -> Result<Vec<(Signed<K>, String)>, CaError> {
        // A station replaces only what it asked for (the replaced one is revoked).
        for (_, replaces, _) in items {
            if let Some(serial) = replaces {
                if let Some(old) = self.ledger.by_serial(&serial.to_hex())? {
                    requester.may_touch(&old, "replace")?;
                }
            }
        }
        let who = requester.name();
        let reservations: Vec<Reservation> = items
            .iter()
            .map(|(id, replaces, _)| Reservation {
                serial: Serial::random(),
                subject: id.to_string(),
                kind: CertKind::Device,
                replaces: replaces.clone(),
            })
            .collect();
        // 1. reserve
        self.ledger
            .reserve(&reservations, &who, now)
            .map_err(CaError::from_ledger)?;
        let serials = || -> Vec<Serial> { reservations.iter().map(|r| r.serial.clone()).collect() };
        crash_point("ca-after-reserve");

        // 2. sign
        let signed = match sign(&self.pki, items, &reservations) {
            Ok(signed) => signed,
            Err(err) => {
                self.ledger.abandon_reserved(
                    Some(&serials()),
                    &format!("signing failed: {err:#}"),
                    self.clock.now(),
                )?;
                // The publisher (or the next start) lists what was abandoned.
                return Err(CaError::Internal(err));
            }
        };
        crash_point("ca-after-sign");

        // 3. commit
        let committed: Vec<(Serial, Vec<u8>)> = signed
            .iter()
            .map(|s| (s.serial.clone(), s.der.clone()))
            .collect();
        if let Err(err) = self
            .ledger
            .commit_issued(&committed, &who, self.clock.now())
        {
            let _ = self.ledger.abandon_reserved(
                Some(&serials()),
                &format!("commit failed: {err:#}"),
                self.clock.now(),
            );
            return Err(CaError::Internal(err));
        }
        crash_point("ca-after-commit");

        // A replacement revoked the certificate it replaces (in `reserve`,
        // which counted it): the publisher lists it within `crl_max_delay`.
        Ok(signed
            .into_iter()
            .map(|s| {
                let fp = fingerprint(&s.der);
                (s, fp)
            })
            .collect())
    }

    /// A service credential for a station, line, center, device link or the CA itself.
    pub fn enroll(
        &mut self,
        role: Role,
        name: &str,
        hosts: &[String],
        requester: &Requester,
    ) -> anyhow::Result<Credential> {
        check_name(name).map_err(anyhow::Error::msg)?;
        let now = self.clock.now();
        let who = requester.name();
        let serial = Serial::random();
        self.ledger.reserve(
            &[Reservation {
                serial: serial.clone(),
                subject: format!("{}:{name}", role.name()),
                kind: CertKind::Service,
                replaces: None,
            }],
            &who,
            now,
        )?;
        let key = DeviceKey::generate(crate::pki::profile::KeyAlgorithm::P256)?;
        let der = self
            .pki
            .sign_service(role, name, hosts, &serial, &key, now)?;
        self.ledger
            .commit_issued(&[(serial, der.clone())], &who, now)?;
        Credential::new(
            vec![der, self.pki.issuing_der().to_vec()],
            self.pki.root_der().to_vec(),
            Zeroizing::new(key.pkcs8_der().to_vec()),
        )
    }

    /// Revokes one certificate (commit, with the ledger's revocation count);
    /// the CRL that lists it is signed off the request path (`publish.rs`).
    /// A station may revoke only device certificates it asked for.
    pub fn revoke(
        &mut self,
        target: &RevokeTarget,
        reason: Reason,
        requester: &Requester,
    ) -> Result<Revoked, CaError> {
        let found = self
            .ledger
            .find_revocable(target)
            .map_err(CaError::from_ledger)?;
        requester.may_touch(&found, "revoke")?;
        let record = self
            .ledger
            .revoke(&found, reason, &requester.name(), self.clock.now())
            .map_err(CaError::from_ledger)?;
        crash_point("ca-revoke-before-crl");
        Ok(Revoked {
            serial: record.serial,
            subject: record.subject,
            revoked_at: record.revoked_at.unwrap_or_default(),
            reason: record.reason.unwrap_or_default(),
        })
    }

    /// The live certificate of each id that has one.
    pub fn lookup(&self, ids: &[String]) -> Result<Vec<LiveCert>, CaError> {
        lookup(&self.ledger, ids)
    }

    /// Signs and stores fresh CRLs for both scopes, each with the next number.
    pub fn publish_crls(&mut self) -> anyhow::Result<()> {
        self.publish_crls_valid_for(self.config.crl_validity())
    }

    /// As [`Self::publish_crls`], with a nextUpdate `validity` from now.
    pub fn publish_crls_valid_for(&mut self, validity: time::Duration) -> anyhow::Result<()> {
        super::publish::publish(&self.pki, &mut self.ledger, self.clock.now(), validity)
    }

    /// Publishes fresh CRLs if the current ones miss a revocation the ledger
    /// has committed (a crash between a revocation's commit and its CRL, or
    /// abandoned reservations), or if there are none. Returns whether it did.
    /// Two single-row reads when nothing is missing, whatever the CRL's size.
    pub fn publish_if_behind(&mut self) -> anyhow::Result<bool> {
        let behind = super::publish::is_behind(&self.ledger)?;
        if behind {
            self.publish_crls()?;
        }
        Ok(behind)
    }

    /// On a ledger shared with other CA processes: revokes the reservations
    /// of processes whose lease ran out (a crashed peer's batch) and
    /// publishes CRLs that list them. Returns how many.
    pub fn sweep_orphans(&mut self) -> anyhow::Result<usize> {
        if !self.ledger.is_shared() {
            return Ok(0);
        }
        let abandoned = self.ledger.abandon_orphans(
            "reserved by a CA process whose lease ran out, never delivered",
            self.clock.now(),
        )?;
        if abandoned > 0 {
            tracing::warn!(
                "revoked {abandoned} certificate(s) reserved by a CA process that stopped"
            );
            self.publish_crls()?;
        }
        Ok(abandoned)
    }

    /// The current CRL of a scope, re-published once half its validity is gone.
    pub fn crl(&mut self, scope: &str) -> anyhow::Result<Vec<u8>> {
        if let Some((_, der, next_update)) = self.ledger.current_crl(scope)? {
            let next = crate::store::db::parse_time(&next_update)?;
            if next - self.clock.now() > self.config.crl_validity() / 2 {
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

    /// Writes an audit entry for a request the CA refused (nothing else
    /// changes): who asked, what, and why it was refused.
    pub fn record_refusal(
        &mut self,
        requester: &Requester,
        action: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<()> {
        self.ledger
            .audit_only(&requester.name(), action, detail)
            .map(|_| ())
    }

    /// Whether a serial (hex) is revoked in this CA's ledger.
    pub fn is_revoked(&self, serial: &str) -> anyhow::Result<bool> {
        is_revoked(&self.ledger, serial)
    }
}

/// Generates a key and signs a certificate for each item, on `threads`
/// threads for a large batch. Only the signer crosses threads; the ledger
/// stays on the caller's.
fn sign_all(
    pki: &Authority,
    items: &[Item],
    reservations: &[Reservation],
    threads: usize,
    not_before: OffsetDateTime,
) -> anyhow::Result<Vec<Signed<Zeroizing<String>>>> {
    let sign_one = |((id, _, profile), reservation): (&Item, &Reservation)| {
        let key = DeviceKey::generate(profile.key)?;
        let der = pki.sign_device(id, profile, &reservation.serial, &key, not_before)?;
        Ok(Signed {
            serial: reservation.serial.clone(),
            id: id.to_string(),
            der,
            key: key.pkcs8_pem(),
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

/// The live certificate of each id that has one (any ledger connection: the
/// server answers lookups on a reader of its own, beside the issuance lock).
pub fn lookup(ledger: &Ledger, ids: &[String]) -> Result<Vec<LiveCert>, CaError> {
    let mut live = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        DeviceId::parse(id).map_err(|e| CaError::invalid(format!("id {}: {e}", index + 1)))?;
        if let Some(record) = ledger.live_device_cert(id)? {
            live.push(LiveCert {
                id: id.clone(),
                serial: record.serial,
                fingerprint: record.fingerprint,
            });
        }
    }
    Ok(live)
}

/// Whether a serial (hex) is revoked in a ledger (any connection).
pub fn is_revoked(ledger: &Ledger, serial: &str) -> anyhow::Result<bool> {
    Ok(ledger
        .by_serial(serial)?
        .is_some_and(|r| r.status == CertStatus::Revoked))
}
