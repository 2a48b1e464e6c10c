//! The device talking to the remote-management center with the identity in
//! its flash, the way a fielded device would: the whole path is exercised with
//! the certificate that was actually written on the line.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;

use super::Device;
use crate::pki::credential::Credential;
use crate::pki::pem_blocks;
use crate::service::client::{ClientError, ServiceClient};
use crate::service::tls::{anonymous_client_config, identity_client_config};
use crate::wire::center::{self as api, Decision, Report, ReportReceipt};

#[derive(Debug, Serialize)]
pub struct CenterAnswer {
    /// The center's decision about this device.
    pub decision: Decision,
    /// The id the report named.
    pub reported_as: String,
    pub report_accepted: bool,
    /// The center's reason for refusing the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_refused: Option<String>,
}

impl CenterAnswer {
    pub fn print(&self, id: &crate::pki::id::DeviceId) {
        let d = &self.decision;
        println!(
            "{id}: {}{} — {}",
            d.verdict.name(),
            d.contract
                .as_ref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            d.reason
        );
        match &self.report_refused {
            None => println!("report as {}: accepted", self.reported_as),
            Some(why) => println!("report as {}: refused: {why}", self.reported_as),
        }
    }
}

/// Connects with the flash identity (or, with an empty flash, with no client
/// certificate, trusting the root of the NVRAM link credential).
pub fn report_to_center(
    device: &Device,
    link_credential: &Credential,
    url: &str,
    claimed: &str,
    counter: u64,
) -> anyhow::Result<CenterAnswer> {
    let tls = match device.flash_pack()? {
        Some(pack) => {
            let chain = pem_blocks(&pack.chain_pem, "CERTIFICATE")?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let root = pem_blocks(&pack.root_pem, "CERTIFICATE")?
                .into_iter()
                .next()
                .map(CertificateDer::from)
                .ok_or_else(|| anyhow::anyhow!("flash root.pem holds no certificate"))?;
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pack.key_pkcs8_der()?.to_vec()));
            identity_client_config(chain, key, &root, crate::pki::role::Role::Center)?
        }
        None => anonymous_client_config(&link_credential.root, crate::pki::role::Role::Center)?,
    };
    let client = ServiceClient::with_tls(url, (*tls).clone(), Duration::from_secs(30))?;
    crate::command::runtime()?.block_on(async {
        let decision: Decision = client.get_json(api::STATUS).await?;
        let report = Report {
            id: claimed.to_string(),
            counter,
        };
        let (report_accepted, report_refused) =
            match client.post::<_, ReportReceipt>(api::REPORT, &report).await {
                Ok(receipt) => (receipt.accepted, None),
                Err(ClientError::Refused { message, .. }) => (false, Some(message)),
                Err(e) => return Err(e.into()),
            };
        Ok(CenterAnswer {
            decision,
            reported_as: claimed.to_string(),
            report_accepted,
            report_refused,
        })
    })
}
