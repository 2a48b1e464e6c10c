//! The center's copy of the CA's CRLs (the issuing CA's and the root's),
//! refreshed on a schedule from the CA or from a file. A failed refresh keeps
//! the last good copy and says why; whether a copy past its nextUpdate may
//! still be used is the caller's (configured) decision.

use std::path::PathBuf;
use std::time::Duration;

use crate::pki::pem_blocks;
use crate::service::client::ServiceClient;
use crate::wire::ca as ca_api;

pub enum CrlSource {
    /// The CA's `/v1/crl` and `/v1/crl/root`, fetched without a client certificate.
    Ca(ServiceClient),
    /// A PEM file holding the CRLs (as `certline ca crl --out` writes it).
    File(PathBuf),
    /// The CRL Distribution Points the CA wrote into the center's own
    /// credential (the issuing CA's CRL) and into the issuing CA's certificate
    /// (the root's), fetched over plain HTTP: CRLs are signed, and their
    /// signatures are checked when a chain is verified against them.
    Cdp {
        urls: Vec<String>,
        http: reqwest::Client,
    },
}

#[derive(Default, Clone)]
pub struct CrlState {
    /// DER CRLs; empty until the first successful load.
    pub crls: Vec<Vec<u8>>,
    /// The earliest nextUpdate among them.
    pub next_update: Option<time::OffsetDateTime>,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
}

impl CrlState {
    /// The reason code the issuing CA's CRL gives for a serial (hex), if listed.
    pub fn reason_for(&self, serial_hex: &str) -> Option<String> {
        self.crls.iter().find_map(|der| {
            let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
            let reason = crl
                .iter_revoked_certificates()
                .find(|r| hex::encode(r.raw_serial()) == serial_hex)
                .map(|r| {
                    r.reason_code()
                        .map(|(_, c)| c.to_string())
                        .unwrap_or_else(|| "unspecified".into())
                });
            reason
        })
    }

    pub fn is_stale(&self, now: time::OffsetDateTime) -> bool {
        self.next_update.is_none_or(|next| now > next)
    }
}

impl CrlSource {
    pub async fn fetch(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        match self {
            CrlSource::Ca(client) => Ok(vec![
                client.get_bytes(ca_api::CRL).await?,
                client.get_bytes(ca_api::ROOT_CRL).await?,
            ]),
            CrlSource::Cdp { urls, http } => {
                let mut crls = Vec::with_capacity(urls.len());
                for url in urls {
                    let response = http
                        .get(url)
                        .send()
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot fetch the CRL at {url}: {e}"))?;
                    let status = response.status();
                    anyhow::ensure!(status.is_success(), "the CRL at {url} answered {status}");
                    crls.push(
                        response
                            .bytes()
                            .await
                            .map_err(|e| anyhow::anyhow!("cannot read the CRL at {url}: {e}"))?
                            .to_vec(),
                    );
                }
                Ok(crls)
            }
            CrlSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read CRL file {}: {e}", path.display()))?;
                let crls = pem_blocks(&text, "X509 CRL")?;
                anyhow::ensure!(!crls.is_empty(), "{} holds no X509 CRL", path.display());
                Ok(crls)
            }
        }
    }
}

impl CrlSource {
    /// The CDP source for a credential: the CRL URLs in its leaf (the issuing
    /// CA's CRL) and in its issuing CA's certificate (the root's), refused
    /// with a clear error when the CA wrote none.
    pub fn from_cdp(cred: &crate::pki::credential::Credential) -> anyhow::Result<CrlSource> {
        let mut urls = Vec::new();
        for (cert, which) in cred.chain.iter().zip([
            "the credential's own certificate",
            "its issuing CA's certificate",
        ]) {
            let url = crate::pki::urls::read(cert)?.crl.ok_or_else(|| {
                anyhow::anyhow!(
                    "--crl-from-cdp: {which} names no CRL Distribution Point (the CA had no crl_url when it signed it); use --ca or --crl-file"
                )
            })?;
            urls.push(url);
        }
        anyhow::ensure!(
            urls.len() == 2,
            "--crl-from-cdp: the credential holds no issuing CA certificate"
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cred.root.clone())?;
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(CrlSource::Cdp { urls, http })
    }
}

/// Parses fetched CRLs into a new state (the signatures are checked when a
/// chain is verified against them).
pub fn state_from(crls: Vec<Vec<u8>>) -> anyhow::Result<CrlState> {
    let mut next_update: Option<time::OffsetDateTime> = None;
    for der in &crls {
        let (_, crl) =
            x509_parser::parse_x509_crl(der).map_err(|e| anyhow::anyhow!("not a CRL: {e}"))?;
        let next = crl
            .next_update()
            .ok_or_else(|| anyhow::anyhow!("a CRL without nextUpdate"))?
            .to_datetime();
        next_update = Some(next_update.map_or(next, |n| n.min(next)));
    }
    Ok(CrlState {
        crls,
        next_update,
        error: None,
    })
}

/// Refreshes `state` from `source` now and then every `every`.
pub async fn refresh_loop(
    source: CrlSource,
    state: std::sync::Arc<std::sync::RwLock<CrlState>>,
    every: Duration,
) {
    loop {
        let result = match source.fetch().await {
            Ok(crls) => state_from(crls),
            Err(e) => Err(e),
        };
        {
            let mut current = state.write().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(fresh) => *current = fresh,
                Err(e) => {
                    tracing::warn!("CRL refresh failed, keeping the last copy: {e:#}");
                    current.error = Some(format!("{e:#}"));
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
