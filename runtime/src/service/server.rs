//! An axum application served over mutual TLS (or, for the CA's public
//! listener only, in clear text: [`serve_plain`]). Every request carries the
//! peer's identity (as a [`Peer`] extension) read once per connection from the
//! certificate the TLS layer already verified. The accept loop bounds what a
//! peer can hold: handshake and header timeouts, a connection cap, and a
//! paced, sparingly logged retry when `accept` fails (see [`ServerLimits`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::pki::role::{role_of, Role};
use crate::wire::ErrorBody;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Role and name from a service credential; None for no certificate or a
    /// certificate (a device identity, say) that names no role.
    pub role: Option<(Role, String)>,
    /// Serial (hex) of the presented certificate, for revocation checks.
    pub serial: Option<String>,
    /// The certificates the peer presented (DER, leaf first), already verified
    /// to chain to our root by the TLS layer.
    pub chain: std::sync::Arc<Vec<Vec<u8>>>,
}

impl Peer {
    fn from_certs(
        addr: SocketAddr,
        certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Peer {
        let leaf = certs.and_then(|c| c.first());
        Peer {
            addr,
            role: leaf.and_then(|c| role_of(c)),
            serial: leaf.and_then(|c| {
                x509_parser::parse_x509_certificate(c)
                    .ok()
                    .map(|(_, cert)| hex::encode(cert.raw_serial()))
            }),
            chain: std::sync::Arc::new(
                certs
                    .unwrap_or_default()
                    .iter()
                    .map(|c| c.as_ref().to_vec())
                    .collect(),
            ),
        }
    }

    /// The peer's name if it holds one of `roles`, else a refusal naming what it holds.
    pub fn require(&self, roles: &[Role]) -> Result<&str, ApiError> {
        let wanted = roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(" or ");
        match &self.role {
            Some((role, name)) if roles.contains(role) => Ok(name),
            Some((role, name)) => Err(ApiError::forbidden(format!(
                "a {role} credential ({name}) may not do this; it takes a {wanted} credential"
            ))),
            None if self.serial.is_some() => Err(ApiError::forbidden(format!(
                "the client certificate is not a service credential; this takes a {wanted} credential"
            ))),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "no_client_certificate",
                format!("no client certificate; this takes a {wanted} credential"),
            )),
        }
    }
}

/// A refusal with an HTTP status, a stable code and a sentence.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(err: anyhow::Error) -> ApiError {
        tracing::error!("internal error: {err:#}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{err:#}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// JSON body extractor whose rejections (not JSON, truncated, wrong fields)
/// come back as an [`ApiError`] naming what was wrong.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "the request body is not what this endpoint takes: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// What a server grants each connection; from the environment (see
/// [`ServerLimits::from_env`]), with defaults generous enough for every
/// legitimate client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time for a client to finish the TLS handshake.
    pub handshake: Duration,
    /// Time for a client to send a request's complete headers; it also
    /// bounds how long an idle keep-alive connection is kept.
    pub headers: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshake: Duration::from_secs(10),
            headers: Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

/// Environment variables that set [`ServerLimits`] (for operators and tests).
pub const ENV_HANDSHAKE_TIMEOUT_MS: &str = "CERTLINE_HANDSHAKE_TIMEOUT_MS";
pub const ENV_HEADER_TIMEOUT_MS: &str = "CERTLINE_HEADER_TIMEOUT_MS";
pub const ENV_MAX_CONNECTIONS: &str = "CERTLINE_MAX_CONNECTIONS";

impl ServerLimits {
    /// The defaults, with any of `CERTLINE_HANDSHAKE_TIMEOUT_MS`,
    /// `CERTLINE_HEADER_TIMEOUT_MS` and `CERTLINE_MAX_CONNECTIONS` that is set.
    pub fn from_env() -> anyhow::Result<ServerLimits> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<ServerLimits> {
        let number = |name: &str| -> anyhow::Result<Option<u64>> {
            match get(name) {
                None => Ok(None),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => anyhow::bail!("{name}={text:?} is not a whole number above 0"),
                },
            }
        };
        let mut limits = ServerLimits::default();
        if let Some(ms) = number(ENV_HANDSHAKE_TIMEOUT_MS)? {
            limits.handshake = Duration::from_millis(ms);
        }
        if let Some(ms) = number(ENV_HEADER_TIMEOUT_MS)? {
            limits.headers = Duration::from_millis(ms);
        }
        if let Some(n) = number(ENV_MAX_CONNECTIONS)? {
            limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(limits)
    }
}

/// Pacing for a failing `accept` (out of file descriptors, say): waits longer
/// after each failure in a row, up to a second, and logs at most one line per
/// interval, counting the failures it did not log.
#[derive(Debug)]
struct AcceptBackoff {
    failures_in_a_row: u32,
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        AcceptBackoff {
            failures_in_a_row: 0,
            last_logged: None,
            unlogged: 0,
        }
    }

    fn succeeded(&mut self) {
        self.failures_in_a_row = 0;
    }

    /// Records a failure at `now`: how long to wait before accepting again,
    /// and the line to log, if one is due.
    fn failed(
        &mut self,
        now: std::time::Instant,
        err: &std::io::Error,
    ) -> (Duration, Option<String>) {
        let wait = Self::FIRST
            .saturating_mul(1 << self.failures_in_a_row.min(10))
            .min(Self::LONGEST);
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY);
        if !due {
            self.unlogged += 1;
            return (wait, None);
        }
        let line = match std::mem::take(&mut self.unlogged) {
            0 => format!("accept failed: {err}; pausing accepts for {wait:?}"),
            n => format!(
                "accept failed: {err}; pausing accepts for {wait:?} ({n} more failures since the last report)"
            ),
        };
        self.last_logged = Some(now);
        (wait, Some(line))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, with the
/// [`ServerLimits`] of the environment.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_with(listener, tls, router, ServerLimits::from_env()?, shutdown).await
}

/// Serves `router` on `listener` until `shutdown` resolves. A connection must
/// finish its handshake and each request's headers in time (a slow or idle
/// peer is dropped); at most `limits.max_connections` are served at once; a
/// failing accept is retried with a pause and logged sparingly.
pub async fn serve_with(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    accept_loop(listener, Some(tls), router, limits, shutdown).await
}

/// Serves `router` in clear text (HTTP/1.1, no TLS, every [`Peer`] without a
/// certificate) with the same limits as [`serve`]: the CA's public listener
/// of CRLs and CA certificates, the one thing certline serves in clear.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    accept_loop(listener, None, router, ServerLimits::from_env()?, shutdown).await
}

/// The accept loop of [`serve_with`] and [`serve_plain`].
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = AcceptBackoff::new();
    tokio::pin!(shutdown);
    loop {
        // A free slot first: at the cap, new peers wait in the backlog
        // instead of each costing a file descriptor and a task.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => return Ok(()),
        };
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff.succeeded();
                    pair
                }
                Err(err) => {
                    let (wait, line) = backoff.failed(std::time::Instant::now(), &err);
                    if let Some(line) = line {
                        tracing::warn!("{line}");
                    }
                    drop(slot);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = &mut shutdown => return Ok(()),
                    }
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                let peer = Peer::from_certs(addr, None);
                serve_connection(TokioIo::new(tcp), peer, router, limits).await;
                return;
            };
            // A peer that never finishes the handshake must not hold a task forever.
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::info!(%addr, "TLS handshake refused: {err}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer = Peer::from_certs(addr, tls.get_ref().1.peer_certificates());
            serve_connection(TokioIo::new(tls), peer, router, limits).await;
        });
    }
}

/// Serves the requests of one connection, each carrying `peer`.
async fn serve_connection<I>(io: I, peer: Peer, router: Router, limits: ServerLimits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
    // The header timer runs from the moment hyper waits for a request,
    // so it also ends an idle keep-alive connection.
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.headers)
        .keep_alive(true)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%addr, "connection ended: {err}");
    }
}

/// Binds `addr` and prints the URL (with the real port, when 0 was asked for)
/// on stdout, so that scripts and tests can find the service.
pub async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    println!("{what} listening on https://{local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(listener)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn limits_come_from_the_environment_and_bad_values_are_named() {
        let none = ServerLimits::from_lookup(|_| None).unwrap();
        assert_eq!(none, ServerLimits::default());
        let set = ServerLimits::from_lookup(|name| match name {
            ENV_HEADER_TIMEOUT_MS => Some("1500".into()),
            ENV_MAX_CONNECTIONS => Some("8".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set.headers, Duration::from_millis(1500));
        assert_eq!(set.max_connections, 8);
        assert_eq!(set.handshake, ServerLimits::default().handshake);
        let err = ServerLimits::from_lookup(|name| {
            (name == ENV_MAX_CONNECTIONS).then(|| "0".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(ENV_MAX_CONNECTIONS), "{err}");
    }

    /// The accept loop used to log and retry at once: 178 million lines in
    /// four minutes at the file-descriptor limit.
    #[test]
    fn a_failing_accept_is_paced_and_logged_once_per_interval() {
        let err = std::io::Error::from_raw_os_error(24); // EMFILE
        let mut backoff = AcceptBackoff::new();
        let start = Instant::now();
        let mut logged = Vec::new();
        let mut waits = Vec::new();
        // A million failures within the first log interval.
        for i in 0..1_000_000u32 {
            let now = start + Duration::from_micros(u64::from(i));
            let (wait, line) = backoff.failed(now, &err);
            waits.push(wait);
            logged.extend(line);
        }
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(waits.iter().all(|w| !w.is_zero()));
        assert_eq!(waits[0], AcceptBackoff::FIRST);
        assert_eq!(*waits.last().unwrap(), AcceptBackoff::LONGEST);
        // The next report, an interval later, counts what was not logged.
        let (_, line) = backoff.failed(start + AcceptBackoff::LOG_EVERY * 2, &err);
        let line = line.expect("a report is due");
        assert!(line.contains("999999 more failures"), "{line}");
        // A success resets the pause.
        backoff.succeeded();
        let (wait, _) = backoff.failed(start + AcceptBackoff::LOG_EVERY * 2, &err);
        assert_eq!(wait, AcceptBackoff::FIRST);
    }
}
