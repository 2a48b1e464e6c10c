//! The station's HTTPS API over TLS (see `wire::station` for the endpoints):
//! the only place where the station's refusals become HTTP statuses.
//!
//! Line endpoints take a line credential (mTLS) that the CA's CRL does not
//! list, and only while a fresh CRL is known; admin endpoints take a session
//! token from the admin login, with or without a client certificate. The
//! admin's console in a browser ([`super::console`]) is mounted beside them
//! and answers from the same station code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Notify;
use zeroize::Zeroizing;

use super::crl::CrlCache;
use super::error::{Kind, StationError};
use super::fetch::{blocking, Shared};
use super::login::PeerLimit;
use super::Station;
use crate::pki::role::Role;
use crate::service::server::{ApiError, JsonBody, Peer};
use crate::wire::station::{
    self as api, codes, AuditQuery, AuditReport, DeviceQuery, DeviceReport, DiscardReport,
    DiscardRequest, FailedRequest, Health, LoggedOut, LoginRequest, LoginResponse, QueueReport,
    ReceivedRequest, ReportResponse, ReworkReport, ReworkRequest, SignRequest, StockReport,
    TakeRequest, TakeResponse, WrittenRequest,
};

/// The HTTP status of each kind of refusal.
fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::BadRequest => StatusCode::BAD_REQUEST,
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::TooMany => StatusCode::TOO_MANY_REQUESTS,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<StationError> for ApiError {
    fn from(err: StationError) -> ApiError {
        match err {
            StationError::Refused {
                kind,
                code,
                message,
            } => ApiError::new(status(kind), code, message),
            StationError::Internal(err) => ApiError::internal(err),
        }
    }
}

#[derive(Clone)]
pub struct ServeState {
    pub shared: Shared,
    /// Wakes the background loop (a failure queued CA work, say).
    pub wake: Arc<Notify>,
    /// The CA's CRL: line credentials it lists are refused.
    pub crl: Arc<CrlCache>,
    /// How often the background loop fetches the CA's CRL.
    pub crl_refresh: Duration,
    /// Failed admin logins per peer address.
    pub logins: Arc<PeerLimit>,
    /// Line credentials seen (serial → line name): a line the CRL newly
    /// lists is known by name, so the packs it holds can be revoked at once.
    pub lines_seen: Arc<Mutex<HashMap<String, String>>>,
    /// The station directory (drop folder, fetch lock).
    pub dir: PathBuf,
    /// When each line was last served and its newest refusals.
    pub activity: Arc<super::activity::LineLog>,
    /// The CA, for forwarding devices' CSRs (`/v1/sign`); none in a state
    /// built without one (which then refuses to sign: CA unreachable).
    pub ca: Option<super::fetch::CaLink>,
}

impl ServeState {
    pub fn new(shared: Shared, crl: Arc<CrlCache>, dir: PathBuf) -> ServeState {
        let logins = {
            let station = shared.lock().unwrap_or_else(|p| p.into_inner());
            PeerLimit::new(&station.config.admin)
        };
        ServeState {
            shared,
            wake: Arc::new(Notify::new()),
            crl,
            crl_refresh: Duration::from_secs(60),
            logins: Arc::new(logins),
            lines_seen: Arc::new(Mutex::new(HashMap::new())),
            dir,
            activity: Arc::new(super::activity::LineLog::default()),
            ca: None,
        }
    }

    /// The serving state of a station directory: the kept CRL loaded, then
    /// refreshed from the CA once (bounded in time; with the CA down the kept
    /// one serves while it is fresh).
    pub async fn open(
        shared: Shared,
        dir: &std::path::Path,
        credential: &crate::pki::credential::Credential,
        ca: &super::fetch::CaLink,
    ) -> anyhow::Result<ServeState> {
        let crl = Arc::new(CrlCache::open(dir, credential)?);
        let mut state = ServeState::new(shared, crl, dir.to_path_buf());
        state.ca = Some(ca.clone());
        super::background::refresh_crl(&state, ca).await;
        Ok(state)
    }

    /// The name of the line on the other end, refused unless it presents a
    /// line credential that the CA's (fresh) CRL does not list.
    fn line_of(&self, peer: &Peer) -> Result<String, ApiError> {
        let name = peer.require(&[Role::Line])?.to_string();
        self.crl.check_line(&name, peer.serial.as_deref())?;
        if let Some(serial) = &peer.serial {
            let mut seen = self.lines_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() < 100_000 {
                seen.entry(serial.clone()).or_insert_with(|| name.clone());
            }
        }
        Ok(name)
    }

    /// Notes what became of a line's request (for the lines report).
    fn seen<T>(&self, line: &str, id: &str, result: &Result<T, ApiError>) {
        let refusal = result
            .as_ref()
            .err()
            .map(|e| (id, e.code, e.message.as_str()));
        self.activity.record(line, refusal);
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Station) -> Result<T, StationError> + Send + 'static,
    ) -> Result<T, ApiError> {
        blocking(&self.shared, work)
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::from)
    }

    /// The admin user behind the request's bearer token.
    async fn admin(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let token = bearer(headers)?;
        self.run(move |s| super::login::authenticate(&s.stock, &token))
            .await
    }

    /// The admin login's password check, in three steps so that Argon2 runs
    /// without the station held: a login flood slows no line. Past the
    /// per-address limit of failed logins, an address is refused before
    /// anything is hashed or written. Every outcome is audited (with lockout).
    pub(super) async fn check_password(
        &self,
        peer: &Peer,
        user: &str,
        password: Zeroizing<String>,
    ) -> Result<(), ApiError> {
        let ip = peer.addr.ip();
        self.logins.check(ip)?;
        let from = peer.addr.to_string();
        let name = user.to_string();
        let attempt = self
            .run(move |s| super::login::begin(&s.stock, &name, &from))
            .await?;
        let checked = tokio::task::spawn_blocking(move || attempt.check(&password))
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("the password check failed: {e}")))?;
        let outcome = self
            .run(move |s| {
                let config = s.config.admin.clone();
                super::login::finish(&mut s.stock, &config, checked)
            })
            .await;
        if let Err(err) = &outcome {
            if matches!(
                err.status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ) {
                self.logins.failed(ip);
            }
        }
        outcome
    }

    /// The admin login: the password checked, then a session opened
    /// (its token and expiry).
    pub(super) async fn login(
        &self,
        peer: &Peer,
        user: String,
        password: Zeroizing<String>,
    ) -> Result<(Zeroizing<String>, i64), ApiError> {
        self.check_password(peer, &user, password).await?;
        self.run(move |s| {
            let config = s.config.admin.clone();
            super::login::open_session(&mut s.stock, &config, &user)
        })
        .await
    }
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                codes::UNAUTHORIZED,
                "no admin session: log in (POST /v1/admin/login) and send Authorization: Bearer <token>",
            )
        })
}

/// A query string's parameters, or a refusal naming what was wrong.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError::bad_request(format!(
            "the query is not what this endpoint takes: {}",
            e.body_text()
        ))
    })
}

pub fn router(state: ServeState) -> Router {
    Router::new()
        .route(api::TAKE, post(take))
        .route(api::SIGN, post(sign))
        .route(api::RECEIVED, post(received))
        .route(api::WRITTEN, post(written))
        .route(api::FAILED, post(failed))
        .route(api::HEALTH, get(health))
        .route(api::ADMIN_LOGIN, post(login))
        .route(api::ADMIN_LOGOUT, post(logout))
        .route(api::ADMIN_STOCK, get(stock))
        .route(api::ADMIN_DISCARD, post(discard))
        .route(api::ADMIN_AUDIT, get(audit))
        .route(api::ADMIN_REWORK, post(rework))
        .route(api::ADMIN_QUEUE, get(queue))
        .route(api::ADMIN_RETRY, post(retry))
        .route(api::ADMIN_DEVICE, get(device))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state.clone())
        .merge(super::console::router(state))
}

async fn take(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<TakeRequest>,
) -> Result<Json<TakeResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    let id = request.id.clone();
    let result = state
        .run({
            let line = line.clone();
            move |s| s.take(&line, &request.id)
        })
        .await;
    state.seen(&line, &id, &result);
    if matches!(&result, Err(e) if e.code == codes::QUARANTINED) {
        state.wake.notify_one();
    }
    Ok(Json(result?))
}

async fn sign(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<SignRequest>,
) -> Result<Json<TakeResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    let Some(ca) = state.ca.clone() else {
        return Err(StationError::refused(
            super::error::Kind::Unavailable,
            codes::CA_UNREACHABLE,
            "CA unreachable, retry: this station serves without a CA connection",
        )
        .into());
    };
    let id = request.id.clone();
    let signed = super::csr::sign(&state.shared, &ca, &line, request)
        .await
        .map_err(ApiError::from);
    state.seen(&line, &id, &signed);
    if signed.is_ok() {
        // A superseded certificate leaves a revocation in the queue.
        state.wake.notify_one();
    }
    Ok(Json(signed?))
}

async fn received(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(r): JsonBody<ReceivedRequest>,
) -> Result<Json<ReportResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    let id = r.id.clone();
    let result = state
        .run({
            let line = line.clone();
            move |s| s.received(&line, &r.id, &r.serial)
        })
        .await;
    state.seen(&line, &id, &result);
    Ok(Json(result?))
}

async fn written(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(r): JsonBody<WrittenRequest>,
) -> Result<Json<ReportResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    let id = r.id.clone();
    let result = state
        .run({
            let line = line.clone();
            move |s| s.written(&line, &r.id, &r.serial, &r.fingerprint, &r.fields)
        })
        .await;
    state.seen(&line, &id, &result);
    Ok(Json(result?))
}

async fn failed(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(r): JsonBody<FailedRequest>,
) -> Result<Json<ReportResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    let id = r.id.clone();
    let result = state
        .run({
            let line = line.clone();
            move |s| s.failed(&line, &r.id, &r.serial, &r.reason)
        })
        .await;
    state.seen(&line, &id, &result);
    let response = result?;
    state.wake.notify_one();
    Ok(Json(response))
}

async fn health(State(state): State<ServeState>) -> Result<Json<Health>, ApiError> {
    let crl = state.crl.health();
    state
        .run(move |s| {
            Ok(Json(Health {
                status: if crl.fresh { "ok" } else { codes::NO_FRESH_CRL }.into(),
                station: s.config.name.clone(),
                day: super::config::day_text(s.today()),
                crl,
            }))
        })
        .await
}

/// The admin login ([`ServeState::login`]).
async fn login(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let (token, expires) = state
        .login(&peer, request.user.clone(), request.password)
        .await?;
    Ok(Json(LoginResponse {
        user: request.user,
        token,
        expires_at: crate::store::stock::unix_text(expires),
    }))
}

async fn logout(
    State(state): State<ServeState>,
    headers: HeaderMap,
) -> Result<Json<LoggedOut>, ApiError> {
    state.admin(&headers).await?;
    let token = bearer(&headers)?;
    state
        .run(move |s| Ok(super::login::logout(&mut s.stock, &token)?))
        .await?;
    Ok(Json(LoggedOut { logged_out: true }))
}

async fn stock(
    State(state): State<ServeState>,
    headers: HeaderMap,
) -> Result<Json<StockReport>, ApiError> {
    state.admin(&headers).await?;
    Ok(Json(state.run(|s| Ok(s.stock_report()?)).await?))
}

async fn discard(
    State(state): State<ServeState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<DiscardRequest>,
) -> Result<Json<DiscardReport>, ApiError> {
    let user = state.admin(&headers).await?;
    let report = state
        .run(move |s| {
            s.discard(
                &format!("admin:{user}"),
                &request.model,
                request.day.as_deref(),
            )
        })
        .await?;
    state.wake.notify_one();
    Ok(Json(report))
}

async fn audit(
    State(state): State<ServeState>,
    headers: HeaderMap,
    params: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditReport>, ApiError> {
    state.admin(&headers).await?;
    let AuditQuery { last } = query(params)?;
    Ok(Json(state.run(move |s| Ok(s.audit_report(last)?)).await?))
}

async fn rework(
    State(state): State<ServeState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ReworkRequest>,
) -> Result<Json<ReworkReport>, ApiError> {
    let user = state.admin(&headers).await?;
    let report = state
        .run(move |s| s.rework(&format!("admin:{user}"), &request.id, &request.reason))
        .await?;
    state.wake.notify_one();
    Ok(Json(report))
}

async fn queue(
    State(state): State<ServeState>,
    headers: HeaderMap,
) -> Result<Json<QueueReport>, ApiError> {
    state.admin(&headers).await?;
    Ok(Json(state.run(|s| Ok(s.queue_report()?)).await?))
}

async fn retry(
    State(state): State<ServeState>,
    headers: HeaderMap,
) -> Result<Json<QueueReport>, ApiError> {
    let user = state.admin(&headers).await?;
    let report = state
        .run(move |s| {
            s.stock.queue_retry_by(&format!("admin:{user}"))?;
            Ok(s.queue_report()?)
        })
        .await?;
    state.wake.notify_one();
    Ok(Json(report))
}

async fn device(
    State(state): State<ServeState>,
    headers: HeaderMap,
    params: Result<Query<DeviceQuery>, QueryRejection>,
) -> Result<Json<DeviceReport>, ApiError> {
    state.admin(&headers).await?;
    let DeviceQuery { id } =
        query(params).map_err(|_| ApiError::bad_request("name the device: ?id=MODEL-SERIAL"))?;
    Ok(Json(state.run(move |s| s.device_report(&id)).await?))
}
