//! The CA's HTTPS API over mutual TLS (see `wire::ca` for the endpoints).
//! Only station credentials may ask for, replace, revoke or look up packs
//! (and a station revokes only the device certificates it asked for);
//! CRLs and health are open to anyone who can reach the CA. The one place
//! where an issuance [`CaError`] becomes an HTTP status.

use std::sync::{Arc, Mutex};

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::issuance::{CaError, CaErrorKind, CertAuthority, Requester, SCOPE_ISSUING, SCOPE_ROOT};
use crate::pki::crl::Reason;
use crate::pki::role::Role;
use crate::pki::serial::Serial;
use crate::service::server::{ApiError, JsonBody, Peer};
use crate::store::ledger::RevokeTarget;
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
    ca: Arc<Mutex<CertAuthority>>,
    /// Signing threads per batch.
    threads: usize,
}

impl CaState {
    pub fn new(ca: CertAuthority, threads: usize) -> CaState {
        CaState {
            ca: Arc::new(Mutex::new(ca)),
            threads,
        }
    }

    /// Runs ledger and signing work off the async executor, one request at a time.
    async fn with_ca<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut CertAuthority, usize) -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let ca = self.ca.clone();
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            let mut ca = ca.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut ca, threads)
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
    async fn station(&self, peer: &Peer) -> Result<Requester, ApiError> {
        let name = peer.require(&[Role::Station])?.to_string();
        let serial = peer.serial.clone().unwrap_or_default();
        let revoked = self
            .with_ca(move |ca, _| Ok(ca.is_revoked(&serial)?))
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
        .with_state(state)
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
    let live = state.with_ca(move |ca, _| ca.lookup(&request.ids)).await?;
    Ok(Json(LookupResponse { live }))
}

fn der_crl(der: Vec<u8>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/pkix-crl")], der)
}

async fn crl(State(state): State<CaState>) -> Result<impl IntoResponse, ApiError> {
    Ok(der_crl(
        state.with_ca(|ca, _| Ok(ca.crl(SCOPE_ISSUING)?)).await?,
    ))
}

async fn root_crl(State(state): State<CaState>) -> Result<impl IntoResponse, ApiError> {
    Ok(der_crl(
        state.with_ca(|ca, _| Ok(ca.crl(SCOPE_ROOT)?)).await?,
    ))
}

async fn health(State(state): State<CaState>) -> Result<Json<Health>, ApiError> {
    state
        .with_ca(|ca, _| {
            let config = ca.config();
            Ok(Json(Health {
                status: "ok".into(),
                organization: config.organization.clone(),
                pen: config.pen,
                max_batch: config.max_batch,
            }))
        })
        .await
}
