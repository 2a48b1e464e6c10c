//! A client for certline's HTTPS services: presents a credential, trusts only
//! the credential's root, talks only to a server of the role it means to
//! reach (see `tls::RoleVerifier`), keeps connections alive, and turns refusals into
//! errors that carry the service's code and sentence.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::pki::credential::Credential;
use crate::pki::role::Role;
use crate::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} refused: {message}")]
    Refused {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{url} answered with something that is not a valid response: {reason}")]
    Garbage { url: String, reason: String },
}

impl ClientError {
    /// The service's machine code, for a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    /// Sent as `Authorization: Bearer <token>` (an admin session), if set.
    bearer: Option<zeroize::Zeroizing<String>>,
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

impl ServiceClient {
    /// A client presenting `cred` to a server that must hold a credential of
    /// role `expect` (checked in the handshake, before anything is sent).
    pub fn new(
        base_url: &str,
        cred: &Credential,
        expect: Role,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let tls = super::tls::client_config(cred, expect)?;
        Self::with_tls(base_url, (*tls).clone(), timeout)
    }

    /// A client with no certificate of its own (CRL, health, an admin's
    /// login) to a server of role `expect`.
    pub fn anonymous(
        base_url: &str,
        root: &CertificateDer<'static>,
        expect: Role,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let tls = super::tls::anonymous_client_config(root, expect)?;
        Self::with_tls(base_url, (*tls).clone(), timeout)
    }

    /// A client with any TLS configuration (see `tls::identity_client_config`).
    pub fn with_tls(
        base_url: &str,
        tls: rustls::ClientConfig,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = base_url.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            anyhow::bail!("service URL {base_url:?} must start with https:// (nothing is spoken in clear text)");
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(ServiceClient {
            http,
            base,
            bearer: None,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client, sending `Authorization: Bearer <token>` with every request.
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.bearer = Some(zeroize::Zeroizing::new(token.to_string()));
        self
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.bearer {
            Some(token) => request.bearer_auth(token.as_str()),
            None => request,
        }
    }

    pub async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self.authorize(self.http.post(&url)).json(body).send().await;
        let bytes = self.check(&url, response).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Garbage {
            url,
            reason: e.to_string(),
        })
    }

    pub async fn get_json<Resp: DeserializeOwned>(&self, path: &str) -> Result<Resp, ClientError> {
        let url = format!("{}{path}", self.base);
        let bytes = self.get_bytes(path).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Garbage {
            url,
            reason: e.to_string(),
        })
    }

    /// `GET path?query` with the query's fields percent-encoded by reqwest.
    pub async fn get_json_query<Q: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<Resp, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .authorize(self.http.get(&url))
            .query(query)
            .send()
            .await;
        let bytes = self.check(&url, response).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Garbage {
            url,
            reason: e.to_string(),
        })
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self.authorize(self.http.get(&url)).send().await;
        self.check(&url, response).await
    }

    async fn check(
        &self,
        url: &str,
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Vec<u8>, ClientError> {
        let response = response.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: chain(&e),
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.to_string(),
                reason: chain(&e),
            })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Refused {
                url: url.to_string(),
                status: status.as_u16(),
                code: body.code,
                message: body.error,
            }),
            Err(_) => Err(ClientError::Garbage {
                url: url.to_string(),
                reason: format!("HTTP {status} without an error body"),
            }),
        }
    }
}
