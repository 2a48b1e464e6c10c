//! The CA's HTTPS API over mutual TLS (see `wire::ca` for the endpoints),
//! and its optional plain-HTTP public listener ([`public_router`]), which
//! serves the CRLs and CA certificates at the paths of ca.toml's `crl_url`
//! and `ca_issuers_url` and nothing else.
//! Only station credentials may ask for, replace, revoke or look up packs
//! (and a station revokes only the device certificates it asked for);
//! CRLs and health are open to anyone who can reach the CA. The one place
//! where an issuance [`CaError`] becomes an HTTP status.
//!
//! Locking: writes (packs, replace, revoke) take the issuance lock one at a
//! time. Reads never queue behind them: the station check and lookups use a
//! ledger connection of their own (WAL readers do not wait for the writer),
//! CRLs are served from the publisher's copy in memory (`publish.rs`), and
//! health from what was read at start.

use std::sync::{Arc, Mutex};

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::config::Published;
use super::issuance::{
    self, CaError, CaErrorKind, CertAuthority, Requester, SCOPE_ISSUING, SCOPE_ROOT,
};
use super::publish::Publisher;
use crate::pki::crl::Reason;
use crate::pki::role::Role;
use crate::pki::serial::Serial;
use crate::service::server::{ApiError, JsonBody, Peer};
use crate::store::ledger::{Ledger, RevokeTarget};
use crate::wire::ca::{
    self as api, codes, BatchItem, BatchRequest, CsrRequest, Health, LookupRequest, LookupResponse,
    PackBatch, ReplaceRequest, RevokeRequest, Revoked, SignedCert,
};

/// The HTTP face of an issuance refusal: its kind picks the status, its code travels as is.
fn api_error(err: CaError) -> ApiError {
    let status = match err.kind() {
        CaErrorKind::Invalid => StatusCode::BAD_REQUEST,
        CaErrorKind::Conflict => StatusCode::CONFLICT,
        CaErrorKind::NotFound => StatusCode::NOT_FOUND,
        CaErrorKind::Forbidden => StatusCode::FORBIDDEN,
        CaErrorKind::Internal => {
            return match err {
                CaError::Internal(err) => ApiError::internal(err),
                refused => ApiError::internal(anyhow::anyhow!("{refused}")),
            }
        }
    };
    ApiError::new(status, err.code(), err.to_string())
}

#[derive(Clone)]
pub struct CaState {
    /// The issuance lock: one write at a time.
    ca: Arc<Mutex<CertAuthority>>,
    /// A ledger connection for reads, beside the issuance lock.
    reader: Arc<Mutex<Ledger>>,
    publisher: Arc<Publisher>,
    /// What `/v1/health` says besides the CRL number (fixed while serving).
    health: Arc<Health>,
    /// Signing threads per batch.
    threads: usize,
}

impl CaState {
    /// The serving state; starts the CRL publisher (`crl_max_delay` from the CA's configuration).
    pub fn new(ca: CertAuthority, threads: usize) -> anyhow::Result<CaState> {
        let config = ca.config();
        let publisher = Publisher::start(
            ca.shared_pki(),
            ca.ledger(),
            ca.clock().clone(),
            config.crl_validity(),
            config.crl_max_delay(),
        )?;
        let health = Health {
            status: "ok".into(),
            organization: config.organization.clone(),
            pen: config.pen,
            max_batch: config.max_batch,
            crl_max_delay: config.crl_max_delay().as_secs_f64(),
            crl_number: 0,
        };
        Ok(CaState {
            reader: Arc::new(Mutex::new(ca.ledger().reopen()?)),
            ca: Arc::new(Mutex::new(ca)),
            publisher: Arc::new(publisher),
            health: Arc::new(health),
            threads,
        })
    }

    /// Runs a read on the reader connection, off the async executor; never
    /// waits for the issuance lock.
    async fn with_reader<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Ledger, &Publisher) -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let reader = self.reader.clone();
        let publisher = self.publisher.clone();
        tokio::task::spawn_blocking(move || {
            let reader = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&reader, &publisher)
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("worker failed: {e}")))?
        .map_err(api_error)
    }

    /// Runs ledger and signing work off the async executor, one request at a
    /// time; a write that may have revoked something wakes the publisher.
    pub(super) async fn with_ca<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut CertAuthority, usize) -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let ca = self.ca.clone();
        let threads = self.threads;
        let publisher = self.publisher.clone();
        tokio::task::spawn_blocking(move || {
            let mut ca = ca.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = work(&mut ca, threads);
            publisher.notify();
            result
        })
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("worker failed: {e}")))?
        .map_err(api_error)
    }

    /// Every `every`, revokes what crashed peers on a shared ledger left
    /// reserved (see [`CertAuthority::sweep_orphans`]); runs until the server stops.
    pub async fn sweep_orphans(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.with_ca(|ca, _| Ok(ca.sweep_orphans()?)).await {
                tracing::warn!(
                    "sweeping a stopped peer's reservations failed: {}",
                    err.message
                );
            }
        }
    }

    /// A station whose own credential has not been revoked.
    pub(super) async fn station(&self, peer: &Peer) -> Result<Requester, ApiError> {
        let name = peer.require(&[Role::Station])?.to_string();
        let serial = peer.serial.clone().unwrap_or_default();
        let revoked = self
            .with_reader(move |ledger, _| Ok(issuance::is_revoked(ledger, &serial)?))
            .await?;
        if revoked {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                format!("the credential of station {name} has been revoked"),
            ));
        }
        Ok(Requester::Station(name))
    }
}

/// The plain-HTTP public listener: each CRL and CA certificate at its URL's
/// path (see [`crate::ca::config::CaConfig::public_paths`]), nothing else
/// (any other path is a 404). Refused when ca.toml names no public URL.
pub fn public_router(state: CaState) -> anyhow::Result<Router> {
    let (paths, root, issuing) = {
        let ca = state.ca.lock().unwrap_or_else(|p| p.into_inner());
        let pki = ca.pki();
        (
            ca.config().public_paths(),
            axum::body::Bytes::copy_from_slice(pki.root_der()),
            axum::body::Bytes::copy_from_slice(pki.issuing_der()),
        )
    };
    if paths.is_empty() {
        anyhow::bail!(
            "--public-listen: ca.toml names no crl_url or ca_issuers_url, so there is nothing to publish (set them with `ca init --crl-url/--ca-issuers-url` or in ca.toml)"
        );
    }
    let mut router = Router::new();
    for (path, what) in paths {
        let cert = match what {
            Published::RootCert => Some(root.clone()),
            Published::IssuingCert => Some(issuing.clone()),
            Published::IssuingCrl | Published::RootCrl => None,
        };
        router = router.route(
            &path,
            get(move |State(state): State<CaState>| published(state, what, cert)),
        );
    }
    Ok(router.with_state(state))
}

/// One public path: a CA certificate (fixed while serving), or a CRL from the
/// publisher's copy in memory, as `/v1/crl` serves it.
async fn published(
    state: CaState,
    what: Published,
    cert: Option<axum::body::Bytes>,
) -> Result<axum::response::Response, ApiError> {
    if let Some(der) = cert {
        return Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response());
    }
    let scope = match what {
        Published::RootCrl => SCOPE_ROOT,
        _ => SCOPE_ISSUING,
    };
    Ok(served_crl(&state, scope).await?.into_response())
}

pub fn router(state: CaState) -> Router {
    Router::new()
        .route(api::PACKS, post(packs))
        .route(api::REPLACE, post(replace))
        .route(api::CSR, post(sign_csr))
        .route(api::REVOKE, post(revoke))
        .route(api::LOOKUP, post(lookup))
        .route(api::CRL, get(crl))
        .route(api::ROOT_CRL, get(root_crl))
        .route(api::HEALTH, get(health))
        // A 10,000-id batch is about 300 KB of JSON; leave room, refuse floods.
        .layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(state.clone())
        // RFC 7030 under /.well-known/est/: a second front door to the same issuance.
        .merge(super::est::router(state))
}

async fn packs(
    State(state): State<CaState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<BatchRequest>,
) -> Result<Json<PackBatch>, ApiError> {
    let requester = state.station(&peer).await?;
    let count = request.items.len();
    let batch = state
        .with_ca(move |ca, threads| ca.issue_batch(&request, &requester, threads))
        .await?;
    tracing::info!(count, peer = %peer.addr, "issued a batch");
    Ok(Json(batch))
}

async fn replace(
    State(state): State<CaState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<ReplaceRequest>,
) -> Result<Json<PackBatch>, ApiError> {
    let requester = state.station(&peer).await?;
    let mut batch = BatchRequest {
        items: vec![BatchItem {
            id: request.id.clone(),
            replaces: Some(request.replaces),
        }],
        profiles: Default::default(),
    };
    if let (Some(profile), Some((model, _))) = (request.profile, request.id.split_once('-')) {
        batch.profiles.insert(model.to_string(), profile);
    }
    Ok(Json(
        state
            .with_ca(move |ca, _| ca.issue_batch(&batch, &requester, 1))
            .await?,
    ))
}

async fn sign_csr(
    State(state): State<CaState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<CsrRequest>,
) -> Result<Json<SignedCert>, ApiError> {
    let requester = state.station(&peer).await?;
    Ok(Json(
        state
            .with_ca(move |ca, _| ca.sign_csr(&request, &requester))
            .await?,
    ))
}

async fn revoke(
    State(state): State<CaState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let requester = state.station(&peer).await?;
    let target = revoke_target(request.serial.as_deref(), request.id.as_deref())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e))?;
    let reason: Reason = request.reason;
    Ok(Json(
        state
            .with_ca(move |ca, _| ca.revoke(&target, reason, &requester))
            .await?,
    ))
}

/// Exactly one of a serial or a device id.
pub fn revoke_target(serial: Option<&str>, id: Option<&str>) -> Result<RevokeTarget, String> {
    match (serial, id) {
        (Some(serial), None) => Ok(RevokeTarget::Serial(Serial::from_hex(serial)?)),
        (None, Some(id)) => {
            crate::pki::id::DeviceId::parse(id).map_err(|e| e.to_string())?;
            Ok(RevokeTarget::DeviceId(id.to_string()))
        }
        _ => Err("name exactly one of a serial or a device id to revoke".into()),
    }
}

async fn lookup(
    State(state): State<CaState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<LookupRequest>,
) -> Result<Json<LookupResponse>, ApiError> {
    state.station(&peer).await?;
    let live = state
        .with_reader(move |ledger, _| issuance::lookup(ledger, &request.ids))
        .await?;
    Ok(Json(LookupResponse { live }))
}

/// The publisher's copy of a scope's CRL, after taking a newer one that
/// another process (`ca revoke`, `ca crl --now`) stored in the ledger.
async fn served_crl(state: &CaState, scope: &'static str) -> Result<impl IntoResponse, ApiError> {
    let der = state
        .with_reader(move |ledger, publisher| {
            publisher.catch_up(ledger)?;
            Ok(publisher.crl(scope).der)
        })
        .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/pkix-crl")],
        axum::body::Bytes::from_owner(der),
    ))
}

async fn crl(State(state): State<CaState>) -> Result<impl IntoResponse, ApiError> {
    served_crl(&state, SCOPE_ISSUING).await
}

async fn root_crl(State(state): State<CaState>) -> Result<impl IntoResponse, ApiError> {
    served_crl(&state, SCOPE_ROOT).await
}

async fn health(State(state): State<CaState>) -> Json<Health> {
    Json(Health {
        crl_number: state.publisher.crl(SCOPE_ISSUING).number,
        ..(*state.health).clone()
    })
}
