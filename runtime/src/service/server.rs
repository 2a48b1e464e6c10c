//! An axum application served over mutual TLS. Every request carries the
//! peer's identity (as a [`Peer`] extension) read once per connection from the
//! certificate the TLS layer already verified.

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

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!("accept failed: {err}");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            // A peer that never finishes the handshake must not hold a task forever.
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
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
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    router.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%addr, "connection ended: {err}");
            }
        });
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
