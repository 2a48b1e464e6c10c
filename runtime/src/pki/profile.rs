//! A model's certificate profile: which key algorithm, an optional hardware
//! type OID (RFC 4108 hardwareModuleName), and the device certificate's end of life.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    #[default]
    P256,
    P384,
    Ed25519,
}

impl KeyAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

/// The 802.1AR-style "lives as long as the device" notAfter: 99991231235959Z.
pub const FOREVER: time::OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CertProfile {
    #[serde(default)]
    pub key: KeyAlgorithm,
    /// Dotted OID of the hardware type; when set, the SAN also carries a
    /// hardwareModuleName holding this OID and the device serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_type_oid: Option<String>,
    /// RFC 3339 end of validity; absent means 9999-12-31T23:59:59Z.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

impl CertProfile {
    /// Checks the profile and returns its parsed parts, with errors naming the field.
    pub fn resolve(&self) -> Result<ResolvedProfile, String> {
        let hardware_type_oid = match &self.hardware_type_oid {
            None => None,
            Some(text) => Some(parse_oid(text).map_err(|e| format!("hardware_type_oid: {e}"))?),
        };
        let not_after = match &self.not_after {
            None => FOREVER,
            Some(text) => {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("not_after {text:?} is not an RFC 3339 time: {e}"))?
            }
        };
        Ok(ResolvedProfile {
            key: self.key,
            hardware_type_oid,
            not_after,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ResolvedProfile {
    pub key: KeyAlgorithm,
    pub hardware_type_oid: Option<Vec<u64>>,
    pub not_after: time::OffsetDateTime,
}

pub fn parse_oid(text: &str) -> Result<Vec<u64>, String> {
    let arcs: Result<Vec<u64>, _> = text.split('.').map(str::parse::<u64>).collect();
    match arcs {
        Ok(arcs) if arcs.len() >= 2 && arcs[0] <= 2 && (arcs[0] == 2 || arcs[1] < 40) => Ok(arcs),
        _ => Err(format!(
            "{text:?} is not a dotted object identifier (e.g. 1.3.6.1.4.1.32473.1)"
        )),
    }
}
