//! The station's console in a browser, at `/console/` on the station's HTTPS
//! listener: today's stock and progress, the lines, one device's story, the
//! admin actions, the audit log and the users, for a production or quality
//! manager who is no shell user.
//!
//! Every number comes from the same station code as the API and
//! `station admin ... --json` ([`super::reports`], [`super::admin`]); this
//! module only turns requests into those calls and their answers into pages
//! ([`page`], with the chart from [`chart`]). Every asset is embedded in the
//! binary ([`assets`]): nothing comes from elsewhere.
//!
//! Security: only the admin login grants admin (a line, center or device
//! certificate gives nothing, as in the API); the session is the API's (same
//! table, same expiry) carried in a cookie that is `Secure`, `HttpOnly` and
//! `SameSite=Strict`; every state-changing request is a POST with a CSRF token
//! (the session's, derived from its token; the login form's, from a
//! short-lived cookie); a Content-Security-Policy without inline script;
//! nothing changes through GET.

mod assets;
mod chart;
mod page;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::serve::ServeState;
use crate::service::server::{ApiError, Peer};
use crate::wire::station::AuditPageQuery;

/// Where the console lives on the station's listener.
pub const PREFIX: &str = "/console";
/// The session cookie: the API's session token.
const SESSION_COOKIE: &str = "certline_session";
/// The login form's CSRF cookie (a random value the form repeats).
const LOGIN_COOKIE: &str = "certline_login";
/// How long a login form stays usable.
const LOGIN_FORM_SECS: i64 = 600;

/// The Content-Security-Policy of every console response: only the
/// station's own scripts, styles and images; no inline script, no frames,
/// forms only to the station.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: ServeState) -> Router {
    Router::new()
        .route(PREFIX, get(home))
        .route("/console/", get(home))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/today", get(today))
        .route("/console/today/live", get(today_live))
        .route("/console/lines", get(lines))
        .route("/console/devices", get(devices))
        .route("/console/actions", get(actions))
        .route("/console/actions/discard", post(discard))
        .route("/console/actions/rework", post(rework))
        .route("/console/actions/retry", post(retry))
        .route("/console/audit", get(audit))
        .route("/console/users", get(users))
        .route("/console/users/add", post(user_add))
        .route("/console/users/password", post(password))
        .route("/console/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(secure_headers))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}

/// The headers every console response carries.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // `same-origin`, not `no-referrer`: under `no-referrer` Chromium sends
        // `Origin: null` with the console's own forms, which the origin check refuses.
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Why a console request was not answered with its page.
enum Fail {
    /// No valid session: to the login page (a page) or 401 (a live refresh).
    Login,
    Unauthorized,
    /// A refusal shown as a page with its status.
    Page(StatusCode, String),
}

impl From<ApiError> for Fail {
    fn from(err: ApiError) -> Fail {
        Fail::Page(err.status, err.message)
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::Login => Redirect::to("/console/login").into_response(),
            Fail::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                html(page::refused("No admin session: log in again.")),
            )
                .into_response(),
            Fail::Page(status, message) => (status, html(page::refused(&message))).into_response(),
        }
    }
}

fn html(body: String) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body)
}

/// The logged-in administrator of a request.
struct Session {
    user: String,
    token: Zeroizing<String>,
    /// The token every form of this session carries.
    csrf: String,
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A session's CSRF token: derived from its secret token, so it needs no
/// storage and no other session can produce it.
fn csrf_of(token: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"certline console csrf\0");
    ctx.update(token.as_bytes());
    hex::encode(ctx.finish())
}

fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: i64) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"
        ),
    )
}

impl ServeState {
    /// The session of the request's cookie, checked as the API checks a bearer token.
    async fn console_session(&self, headers: &HeaderMap) -> Result<Session, Fail> {
        let token = Zeroizing::new(cookie(headers, SESSION_COOKIE).ok_or(Fail::Login)?);
        let check = token.clone();
        let user = self
            .run(move |s| super::login::authenticate(&s.stock, &check))
            .await
            .map_err(|e| match e.status {
                StatusCode::UNAUTHORIZED => Fail::Login,
                _ => Fail::from(e),
            })?;
        Ok(Session {
            user,
            csrf: csrf_of(&token),
            token,
        })
    }

    /// The session of a state-changing request: its form must carry the
    /// session's CSRF token, and a browser's Origin must be this station.
    async fn console_post(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Fail> {
        check_origin(headers)?;
        let session = self.console_session(headers).await.map_err(|e| match e {
            Fail::Login => Fail::Unauthorized,
            other => other,
        })?;
        if !same(csrf, &session.csrf) {
            return Err(csrf_refused());
        }
        Ok(session)
    }
}

fn csrf_refused() -> Fail {
    Fail::Page(
        StatusCode::FORBIDDEN,
        "This form has no valid CSRF token (it did not come from this console, or the session \
         changed): nothing was done. Open the page again and repeat."
            .into(),
    )
}

/// A browser names the page a POST comes from in `Origin`: it must be this
/// station (the host the request was sent to).
fn check_origin(headers: &HeaderMap) -> Result<(), Fail> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let seen = origin.to_str().unwrap_or("?");
    match (seen.strip_prefix("https://"), host) {
        (Some(origin), Some(host)) if origin == host => Ok(()),
        _ => Err(Fail::Page(
            StatusCode::FORBIDDEN,
            format!(
                "This form was posted from another site ({}, not https://{}): nothing was done.",
                crate::text::printable(seen),
                crate::text::printable(host.unwrap_or("?"))
            ),
        )),
    }
}

/// A form's fields, or a refusal naming what was wrong.
fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, Fail> {
    form.map(|Form(f)| f).map_err(|e| {
        Fail::Page(
            StatusCode::BAD_REQUEST,
            format!("The form is not what this page takes: {}", e.body_text()),
        )
    })
}

async fn home() -> Redirect {
    Redirect::to("/console/today")
}

async fn asset(Path(file): Path<String>) -> Response {
    match assets::get(&file) {
        Some((kind, body)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

// ---- login ----

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: Zeroizing<String>,
    /// Missing reads as empty, so a form without its token is refused as
    /// such (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
}

/// The login page with a fresh login CSRF token (cookie and form field).
fn login_page(status: StatusCode, message: Option<&str>) -> Result<Response, Fail> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Fail::Page(StatusCode::INTERNAL_SERVER_ERROR, "no randomness".into()))?;
    let token = hex::encode(bytes);
    Ok((
        status,
        [set_cookie(
            LOGIN_COOKIE,
            &token,
            "/console/login",
            LOGIN_FORM_SECS,
        )],
        html(page::login(message, &token)),
    )
        .into_response())
}

async fn login_form() -> Result<Response, Fail> {
    login_page(StatusCode::OK, None)
}

async fn login(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, Fail> {
    check_origin(&headers)?;
    let request = form(body)?;
    match cookie(&headers, LOGIN_COOKIE) {
        Some(expected) if same(&request.csrf, &expected) => {}
        _ => return Err(csrf_refused()),
    }
    match state
        .login(&peer, request.user.trim().to_string(), request.password)
        .await
    {
        Ok((token, _)) => {
            let secs = state
                .run(|s| Ok(s.config.admin.session_secs))
                .await
                .unwrap_or(3600);
            // Two cookies: `AppendHeaders` (a plain array would keep only the last).
            Ok((
                axum::response::AppendHeaders([
                    set_cookie(SESSION_COOKIE, &token, PREFIX, secs),
                    set_cookie(LOGIN_COOKIE, "", "/console/login", 0),
                ]),
                Redirect::to("/console/today"),
            )
                .into_response())
        }
        Err(err) => login_page(err.status, Some(&err.message)),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    /// Missing reads as empty, so a form without its token is refused as
    /// such (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<ServeState>,
    headers: HeaderMap,
    body: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Fail> {
    let session = state.console_post(&headers, &form(body)?.csrf).await?;
    let token = session.token.clone();
    state
        .run(move |s| Ok(super::login::logout(&mut s.stock, &token)?))
        .await?;
    Ok((
        [set_cookie(SESSION_COOKIE, "", PREFIX, 0)],
        Redirect::to("/console/login"),
    )
        .into_response())
}

// ---- pages ----

async fn today(State(state): State<ServeState>, headers: HeaderMap) -> Result<Response, Fail> {
    let session = state.console_session(&headers).await?;
    let body = today_body(&state).await?;
    Ok(html(page::layout(
        "Today",
        &session.user,
        &session.csrf,
        &page::today(&body),
    ))
    .into_response())
}

/// The live part of Today, for the page's refresh.
async fn today_live(State(state): State<ServeState>, headers: HeaderMap) -> Result<Response, Fail> {
    state.console_session(&headers).await.map_err(|e| match e {
        Fail::Login => Fail::Unauthorized,
        other => other,
    })?;
    let body = today_body(&state).await?;
    Ok(html(page::today_live(&body)).into_response())
}

async fn today_body(state: &ServeState) -> Result<page::Today, Fail> {
    let crl = state.crl.health();
    Ok(state
        .run(move |s| {
            Ok(page::Today {
                stock: s.stock_report()?,
                progress: s.progress_report()?,
                queue: s.queue_report()?,
                crl,
            })
        })
        .await?)
}

async fn lines(State(state): State<ServeState>, headers: HeaderMap) -> Result<Response, Fail> {
    let session = state.console_session(&headers).await?;
    let seen = state.activity.snapshot();
    let report = state.run(move |s| Ok(s.lines_report(&seen)?)).await?;
    Ok(html(page::layout(
        "Lines",
        &session.user,
        &session.csrf,
        &page::lines(&report),
    ))
    .into_response())
}

#[derive(Deserialize)]
struct Lookup {
    #[serde(default)]
    id: Option<String>,
}

async fn devices(
    State(state): State<ServeState>,
    headers: HeaderMap,
    query: Result<Query<Lookup>, QueryRejection>,
) -> Result<Response, Fail> {
    let session = state.console_session(&headers).await?;
    let id = query
        .map(|Query(q)| q.id)
        .unwrap_or_default()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty());
    let found = match id.clone() {
        None => None,
        Some(id) => Some(
            state
                .run(move |s| s.device_report(&id))
                .await
                .map_err(|e| e.message),
        ),
    };
    Ok(html(page::layout(
        "Devices",
        &session.user,
        &session.csrf,
        &page::devices(id.as_deref(), found.as_ref()),
    ))
    .into_response())
}

async fn actions(State(state): State<ServeState>, headers: HeaderMap) -> Result<Response, Fail> {
    let session = state.console_session(&headers).await?;
    actions_page(&state, &session, StatusCode::OK, None).await
}

async fn actions_page(
    state: &ServeState,
    session: &Session,
    status: StatusCode,
    result: Option<page::Outcome>,
) -> Result<Response, Fail> {
    let (stock, queue) = state
        .run(|s| Ok((s.stock_report()?, s.queue_report()?)))
        .await?;
    Ok((
        status,
        html(page::layout(
            "Actions",
            &session.user,
            &session.csrf,
            &page::actions(&stock, &queue, &session.csrf, result.as_ref()),
        )),
    )
        .into_response())
}

#[derive(Deserialize)]
struct DiscardForm {
    /// Missing reads as empty, so a form without its token is refused as
    /// such (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    model: String,
    /// The count the confirmation named.
    #[serde(default)]
    count: Option<usize>,
    /// The model code typed again.
    #[serde(default)]
    confirm: Option<String>,
}

/// A discard in two steps: the model chosen, then a confirmation that names
/// how many leftovers go and wants the model code typed again. Only a
/// confirmation that still names the stock's count discards.
async fn discard(
    State(state): State<ServeState>,
    headers: HeaderMap,
    body: Result<Form<DiscardForm>, FormRejection>,
) -> Result<Response, Fail> {
    let request = form(body)?;
    let session = state.console_post(&headers, &request.csrf).await?;
    let model = request.model.trim().to_string();
    let wanted = model.clone();
    let in_stock = state
        .run(move |s| {
            Ok(s.stock_report()?
                .models
                .into_iter()
                .find(|m| m.model == wanted)
                .map_or(0, |m| m.in_stock))
        })
        .await?;
    let confirmed = request.confirm.as_deref().map(str::trim);
    let ready = confirmed == Some(model.as_str()) && request.count == Some(in_stock);
    if !ready || in_stock == 0 {
        let note = match confirmed {
            Some(typed) if typed != model => Some(format!(
                "The model code typed again ({typed:?}) is not {model:?}: nothing was discarded."
            )),
            Some(_) if request.count != Some(in_stock) => Some(format!(
                "The stock changed meanwhile: {in_stock} leftovers now. Confirm again."
            )),
            _ => None,
        };
        if in_stock == 0 {
            return actions_page(
                &state,
                &session,
                StatusCode::NOT_FOUND,
                Some(page::Outcome::failed(format!(
                    "No stocked packs of model {model} to discard."
                ))),
            )
            .await;
        }
        return Ok(html(page::layout(
            "Confirm the discard",
            &session.user,
            &session.csrf,
            &page::confirm_discard(&model, in_stock, &session.csrf, note.as_deref()),
        ))
        .into_response());
    }
    let actor = format!("admin:{}", session.user);
    let result = state.run(move |s| s.discard(&actor, &model, None)).await;
    state.wake.notify_one();
    let (status, outcome) = match result {
        Ok(report) => (StatusCode::OK, page::Outcome::discarded(&report)),
        Err(err) => (err.status, page::Outcome::failed(err.message)),
    };
    actions_page(&state, &session, status, Some(outcome)).await
}

#[derive(Deserialize)]
struct ReworkForm {
    /// Missing reads as empty, so a form without its token is refused as
    /// such (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    id: String,
    reason: String,
}

async fn rework(
    State(state): State<ServeState>,
    headers: HeaderMap,
    body: Result<Form<ReworkForm>, FormRejection>,
) -> Result<Response, Fail> {
    let request = form(body)?;
    let session = state.console_post(&headers, &request.csrf).await?;
    let actor = format!("admin:{}", session.user);
    let result = state
        .run(move |s| s.rework(&actor, request.id.trim(), &request.reason))
        .await;
    state.wake.notify_one();
    let (status, outcome) = match result {
        Ok(report) => (StatusCode::OK, page::Outcome::reworked(&report)),
        Err(err) => (err.status, page::Outcome::failed(err.message)),
    };
    actions_page(&state, &session, status, Some(outcome)).await
}

async fn retry(
    State(state): State<ServeState>,
    headers: HeaderMap,
    body: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Fail> {
    let session = state.console_post(&headers, &form(body)?.csrf).await?;
    let actor = format!("admin:{}", session.user);
    let waiting = state
        .run(move |s| Ok(s.stock.queue_retry_by(&actor)?))
        .await?;
    state.wake.notify_one();
    actions_page(
        &state,
        &session,
        StatusCode::OK,
        Some(page::Outcome::ok(format!(
            "{waiting} item(s) waiting for the CA are due now; the station sends them at once."
        ))),
    )
    .await
}

async fn audit(
    State(state): State<ServeState>,
    headers: HeaderMap,
    query: Result<Query<AuditPageQuery>, QueryRejection>,
) -> Result<Response, Fail> {
    let session = state.console_session(&headers).await?;
    let query = query.map(|Query(q)| q).map_err(|e| {
        Fail::Page(
            StatusCode::BAD_REQUEST,
            format!("The filter is not what this page takes: {}", e.body_text()),
        )
    })?;
    let asked = query.clone();
    let report = state.run(move |s| Ok(s.audit_page(&asked)?)).await?;
    Ok(html(page::layout(
        "Audit",
        &session.user,
        &session.csrf,
        &page::audit(&report, &query),
    ))
    .into_response())
}

async fn users(State(state): State<ServeState>, headers: HeaderMap) -> Result<Response, Fail> {
    let session = state.console_session(&headers).await?;
    Ok(users_page(&session, StatusCode::OK, None))
}

fn users_page(session: &Session, status: StatusCode, outcome: Option<page::Outcome>) -> Response {
    (
        status,
        html(page::layout(
            "Users",
            &session.user,
            &session.csrf,
            &page::users(&session.user, &session.csrf, outcome.as_ref()),
        )),
    )
        .into_response()
}

#[derive(Deserialize)]
struct UserAddForm {
    /// Missing reads as empty, so a form without its token is refused as
    /// such (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    name: String,
    password: Zeroizing<String>,
    again: Zeroizing<String>,
}

/// Hashes a new password off the executor, after the rules are checked.
async fn new_hash(name: &str, password: &Zeroizing<String>) -> Result<String, String> {
    super::login::check_new_user(name, password).map_err(|e| format!("{e:#}"))?;
    let password = password.clone();
    tokio::task::spawn_blocking(move || super::login::hash_password(&password))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))
}

async fn user_add(
    State(state): State<ServeState>,
    headers: HeaderMap,
    body: Result<Form<UserAddForm>, FormRejection>,
) -> Result<Response, Fail> {
    let request = form(body)?;
    let session = state.console_post(&headers, &request.csrf).await?;
    let name = request.name.trim().to_string();
    if request.password != request.again {
        return Ok(users_page(
            &session,
            StatusCode::BAD_REQUEST,
            Some(page::Outcome::failed(
                "The two passwords differ: no user was added.",
            )),
        ));
    }
    let phc = match new_hash(&name, &request.password).await {
        Ok(phc) => phc,
        Err(e) => {
            return Ok(users_page(
                &session,
                StatusCode::BAD_REQUEST,
                Some(page::Outcome::failed(e)),
            ))
        }
    };
    let actor = format!("admin:{}", session.user);
    let added = name.clone();
    let result = state
        .run(move |s| Ok(s.add_user(&actor, &added, &phc)?))
        .await;
    Ok(match result {
        Ok(()) => users_page(
            &session,
            StatusCode::OK,
            Some(page::Outcome::ok(format!("Admin user {name} added."))),
        ),
        Err(err) => users_page(
            &session,
            StatusCode::CONFLICT,
            Some(page::Outcome::failed(err.message)),
        ),
    })
}

#[derive(Deserialize)]
struct PasswordForm {
    /// Missing reads as empty, so a form without its token is refused as
    /// such (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    current: Zeroizing<String>,
    password: Zeroizing<String>,
    again: Zeroizing<String>,
}

/// Changes the logged-in user's own password: the current one is checked
/// like a login (failures count towards the lockout).
async fn password(
    State(state): State<ServeState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Result<Form<PasswordForm>, FormRejection>,
) -> Result<Response, Fail> {
    let request = form(body)?;
    let session = state.console_post(&headers, &request.csrf).await?;
    let refused = |status, message: String| {
        Ok(users_page(
            &session,
            status,
            Some(page::Outcome::failed(message)),
        ))
    };
    if request.password != request.again {
        return refused(
            StatusCode::BAD_REQUEST,
            "The two new passwords differ: the password is unchanged.".into(),
        );
    }
    if let Err(err) = state
        .check_password(&peer, &session.user, request.current)
        .await
    {
        return refused(
            err.status,
            format!(
                "The current password is not right ({}): the password is unchanged.",
                err.message
            ),
        );
    }
    let phc = match new_hash(&session.user, &request.password).await {
        Ok(phc) => phc,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e),
    };
    let user = session.user.clone();
    let token = session.token.clone();
    state
        .run(move |s| {
            Ok(super::login::change_password(
                &mut s.stock,
                &user,
                &phc,
                &token,
            )?)
        })
        .await?;
    Ok(users_page(
        &session,
        StatusCode::OK,
        Some(page::Outcome::ok(
            "Your password is changed; your other sessions have ended.",
        )),
    ))
}
