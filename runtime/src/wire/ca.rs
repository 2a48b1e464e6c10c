//! The CA's HTTPS API.
//!
//! `POST /v1/packs` (station): issue one pack per id, all or nothing.
//! `POST /v1/replace` (station): a fresh pack for one id, revoking the one it replaces.
//! `POST /v1/revoke` (station): revoke by serial or device id.
//! `POST /v1/lookup` (station): the live certificate of each id, to resume safely.
//! `GET /v1/crl`, `GET /v1/crl/root` (anyone, no client certificate needed): DER CRLs.
//! `GET /v1/health` (anyone).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::pki::crl::Reason;
use crate::pki::pack::Pack;
use crate::pki::profile::CertProfile;

pub const PACKS: &str = "/v1/packs";
pub const REPLACE: &str = "/v1/replace";
pub const REVOKE: &str = "/v1/revoke";
pub const LOOKUP: &str = "/v1/lookup";
pub const CRL: &str = "/v1/crl";
pub const ROOT_CRL: &str = "/v1/crl/root";
pub const HEALTH: &str = "/v1/health";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub items: Vec<BatchItem>,
    /// Certificate profile per model code; a model not named here gets the
    /// CA's configured profile for it (or the default profile).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, CertProfile>,
}

impl BatchRequest {
    /// A batch of fresh certificates (nothing replaced) under the CA's profiles.
    pub fn for_ids<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> BatchRequest {
        BatchRequest {
            items: ids
                .into_iter()
                .map(|id| BatchItem {
                    id: id.as_ref().to_string(),
                    replaces: None,
                })
                .collect(),
            profiles: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// `<model>-<serial>`; checked by the CA so that an error can name the item.
    pub id: String,
    /// Serial (hex) of the id's valid certificate that this one replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    pub id: String,
    pub replaces: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<CertProfile>,
}

/// Issued packs; the root and issuing CA are sent once for the whole batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackBatch {
    pub root_pem: String,
    pub issuing_pem: String,
    pub packs: Vec<IssuedPack>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct IssuedPack {
    pub id: String,
    pub serial: String,
    pub fingerprint: String,
    pub cert_pem: String,
    /// PKCS#8 PEM of the device's private key.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedPack")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl PackBatch {
    /// The pack as a device receives it: root, device chain, key.
    pub fn pack(&self, issued: &IssuedPack) -> Pack {
        Pack {
            root_pem: self.root_pem.clone(),
            chain_pem: format!("{}{}", issued.cert_pem, self.issuing_pem),
            key_pem: issued.key_pem.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub reason: Reason,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub serial: String,
    pub subject: String,
    pub revoked_at: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupResponse {
    /// Only the ids that have a valid certificate.
    pub live: Vec<LiveCert>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveCert {
    pub id: String,
    pub serial: String,
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub organization: String,
    pub pen: u32,
    pub max_batch: usize,
}
