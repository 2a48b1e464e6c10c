//! The station's HTTPS API over TLS (see `wire::station` for the endpoints)
//! and its background work: hand-out timeouts, the CA queue, retention by
//! age, the plan drop folder and the scheduled fetch.
//!
//! Line endpoints take a line credential (mTLS); admin endpoints take a
//! session token from the admin login, with or without a client certificate.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Notify;

use super::desk::{Station, StationError};
use super::fetch::{blocking, CaLink, Shared};
use crate::pki::role::Role;
use crate::service::server::{ApiError, JsonBody, Peer};
use crate::wire::station::{
    self as api, codes, AuditReport, DeviceReport, DiscardReport, DiscardRequest, FailedRequest,
    Health, LoginRequest, LoginResponse, QueueReport, ReceivedRequest, ReportResponse,
    ReworkReport, ReworkRequest, StockReport, TakeRequest, TakeResponse, WrittenRequest,
};

#[derive(Clone)]
pub struct ServeState {
    pub shared: Shared,
    /// Wakes the background loop (a failure queued CA work, say).
    pub wake: Arc<Notify>,
    /// Serials (hex) the CA's CRL lists, refreshed by the background loop: a
    /// line whose credential was revoked may take no more packs.
    pub revoked: Arc<RwLock<HashSet<String>>>,
    /// How often the background loop fetches the CA's CRL.
    pub crl_refresh: Duration,
}

impl ServeState {
    pub fn new(shared: Shared) -> ServeState {
        ServeState {
            shared,
            wake: Arc::new(Notify::new()),
            revoked: Arc::new(RwLock::new(HashSet::new())),
            crl_refresh: Duration::from_secs(60),
        }
    }

    /// The name of the line on the other end, refused unless it presents a
    /// line credential that the CA has not revoked.
    fn line_of(&self, peer: &Peer) -> Result<String, ApiError> {
        let name = peer.require(&[Role::Line])?.to_string();
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        if peer.serial.as_ref().is_some_and(|s| revoked.contains(s)) {
            return Err(ApiError::forbidden(format!(
                "the credential of line {name} has been revoked by the CA"
            )));
        }
        Ok(name)
    }

    async fn run<T: Send + 'static>(
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
        self.run(move |s| super::admin::authenticate(&s.stock, &token))
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

pub fn router(state: ServeState) -> Router {
    Router::new()
        .route(api::TAKE, post(take))
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
        .with_state(state)
}

async fn take(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<TakeRequest>,
) -> Result<Json<TakeResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    let result = state.run(move |s| s.take(&line, &request.id)).await;
    if matches!(&result, Err(e) if e.code == codes::QUARANTINED) {
        state.wake.notify_one();
    }
    Ok(Json(result?))
}

async fn received(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(r): JsonBody<ReceivedRequest>,
) -> Result<Json<ReportResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    Ok(Json(
        state
            .run(move |s| s.received(&line, &r.id, &r.serial))
            .await?,
    ))
}

async fn written(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(r): JsonBody<WrittenRequest>,
) -> Result<Json<ReportResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    Ok(Json(
        state
            .run(move |s| s.written(&line, &r.id, &r.serial, &r.fingerprint))
            .await?,
    ))
}

async fn failed(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(r): JsonBody<FailedRequest>,
) -> Result<Json<ReportResponse>, ApiError> {
    let line = state.line_of(&peer)?;
    let response = state
        .run(move |s| s.failed(&line, &r.id, &r.serial, &r.reason))
        .await?;
    state.wake.notify_one();
    Ok(Json(response))
}

async fn health(State(state): State<ServeState>) -> Result<Json<Health>, ApiError> {
    state
        .run(|s| {
            Ok(Json(Health {
                status: "ok".into(),
                station: s.config.name.clone(),
                day: super::config::day_text(s.today()),
            }))
        })
        .await
}

async fn login(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let from = peer.addr.to_string();
    let user = request.user.clone();
    let (token, expires) = state
        .run(move |s| {
            let config = s.config.admin.clone();
            super::admin::login(
                &mut s.stock,
                &config,
                &request.user,
                &request.password,
                &from,
            )
        })
        .await?;
    Ok(Json(LoginResponse {
        user,
        token,
        expires_at: crate::store::stock::unix_text(expires),
    }))
}

async fn logout(
    State(state): State<ServeState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.admin(&headers).await?;
    let token = bearer(&headers)?;
    state
        .run(move |s| Ok(super::admin::logout(&mut s.stock, &token)?))
        .await?;
    Ok(Json(serde_json::json!({"logged_out": true})))
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

/// One parameter of a query string (percent-decoded).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn audit(
    State(state): State<ServeState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditReport>, ApiError> {
    state.admin(&headers).await?;
    let last = match query_param(query.as_deref(), "last") {
        None => 20,
        Some(text) => text.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("last={text:?} is not a number of entries"))
        })?,
    };
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
    state.admin(&headers).await?;
    let report = state
        .run(|s| {
            s.stock.queue_retry_now()?;
            Ok(s.queue_report()?)
        })
        .await?;
    state.wake.notify_one();
    Ok(Json(report))
}

async fn device(
    State(state): State<ServeState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<DeviceReport>, ApiError> {
    state.admin(&headers).await?;
    let id = query_param(query.as_deref(), "id")
        .ok_or_else(|| ApiError::bad_request("name the device: ?id=MODEL-SERIAL"))?;
    Ok(Json(state.run(move |s| s.device_report(&id)).await?))
}

// ---- background work ----

/// Runs forever: timeouts and the CA queue every second (or when woken),
/// the drop folder every 2 s, retention by age every minute, the scheduled
/// fetch when its time comes.
pub async fn background(state: ServeState, ca: Arc<CaLink>, dir: PathBuf) {
    let mut last_retention = Instant::now();
    let mut last_drop: Option<Instant> = None;
    let mut last_scheduled: Option<time::Date> = None;
    let mut scheduled_retry: Option<Instant> = None;
    let mut last_crl: Option<Instant> = None;
    loop {
        tokio::select! {
            () = state.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match blocking(&state.shared, |s| s.sweep_timeouts()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::warn!("{n} hand-out(s) timed out; revoking and replacing"),
            Ok(Err(e)) | Err(e) => tracing::error!("timeout sweep failed: {e:#}"),
        }
        match super::fetch::work_queue(&state.shared, &ca, false).await {
            Ok(run) if run.done > 0 || run.failed > 0 => tracing::info!(
                done = run.done,
                failed = run.failed,
                waiting = run.waiting,
                "CA queue"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("CA queue failed: {e:#}"),
        }
        if last_drop.is_none_or(|at| at.elapsed() >= Duration::from_secs(2)) {
            last_drop = Some(Instant::now());
            let dir = dir.clone();
            if let Err(e) = blocking(&state.shared, move |s| drop_folder(s, &dir)).await {
                tracing::error!("plan drop folder: {e:#}");
            }
        }
        if last_crl.is_none_or(|at| at.elapsed() >= state.crl_refresh) {
            last_crl = Some(Instant::now());
            match ca.revoked_serials().await {
                Ok(serials) => *state.revoked.write().unwrap_or_else(|p| p.into_inner()) = serials,
                Err(e) => {
                    tracing::warn!("cannot refresh the CA's CRL (keeping the last one): {e:#}")
                }
            }
        }
        if last_retention.elapsed() >= Duration::from_secs(60) {
            last_retention = Instant::now();
            if let Ok(Err(e)) | Err(e) = blocking(&state.shared, |s| s.sweep_retention())
                .await
                .map(|r| r.map(|_| ()))
            {
                tracing::error!("retention sweep failed: {e:#}");
            }
        }
        let due = blocking(&state.shared, |s| {
            let minute = s.config.fetch_minute()?;
            let offset = s.config.offset().ok()?;
            let now = time::OffsetDateTime::now_utc().to_offset(offset);
            let today = s.today();
            let at = u32::from(now.hour()) * 60 + u32::from(now.minute());
            (at >= minute).then(|| {
                (
                    today,
                    s.config.next_working_days(today, s.config.days_ahead),
                )
            })
        })
        .await
        .ok()
        .flatten();
        if let Some((today, days)) = due {
            if last_scheduled != Some(today)
                && scheduled_retry.is_none_or(|at| Instant::now() >= at)
            {
                last_scheduled = Some(today);
                match super::dir::lock_fetch(&dir) {
                    Ok(_lock) => {
                        let mut quiet = |_: usize, _: usize| {};
                        match super::fetch::fetch(&state.shared, &ca, &days, &mut quiet).await {
                            Ok(r) => {
                                tracing::warn!(fetched = r.fetched, days = ?r.days, "scheduled fetch done")
                            }
                            Err(e) => {
                                tracing::error!(
                                    "scheduled fetch failed (retried in 10 minutes): {e:#}"
                                );
                                // Try again later today, without holding up
                                // timeouts and the CA queue meanwhile.
                                last_scheduled = None;
                                scheduled_retry = Some(Instant::now() + Duration::from_secs(600));
                            }
                        }
                    }
                    Err(e) => tracing::warn!("scheduled fetch skipped: {e:#}"),
                }
            }
        }
    }
}

/// Imports every plan file dropped into `DIR/plans/`: an imported file moves
/// to `plans/imported/`, a refused one to `plans/rejected/` beside a
/// `.error.txt` that says why.
pub fn drop_folder(station: &mut Station, dir: &Path) -> anyhow::Result<()> {
    let folder = dir.join(super::dir::PLANS_DIR);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && (name.ends_with(".csv") || name.ends_with(".json"))
        })
        .collect();
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plan")
            .to_string();
        let config = station.config.clone();
        match super::plan::import(&file, &config, &mut station.stock, "station:drop-folder") {
            Ok(report) => {
                tracing::warn!(file = %file.display(), ids = report.ids, "plan imported from the drop folder");
                let done = folder.join("imported");
                std::fs::create_dir_all(&done)?;
                std::fs::rename(
                    &file,
                    done.join(format!("{}-{name}", crate::store::stock::now_unix())),
                )?;
            }
            Err(err) => {
                tracing::error!("plan {} refused: {err:#}", file.display());
                let rejected = folder.join("rejected");
                std::fs::create_dir_all(&rejected)?;
                std::fs::write(
                    rejected.join(format!("{name}.error.txt")),
                    format!("{err:#}\n"),
                )?;
                std::fs::rename(&file, rejected.join(&name))?;
            }
        }
    }
    Ok(())
}
