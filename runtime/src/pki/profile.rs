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

/// Where a model's device keys are born. `ca` (the default): the CA
/// generates the key and the pack carries it to the device. `device`: the
/// device generates its key in its own protected store and proves it with a
/// PKCS#10 request (`pki::csr`); no key of such a model ever exists at the
/// CA or the station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Keygen {
    #[default]
    Ca,
    Device,
}

impl Keygen {
    pub fn name(self) -> &'static str {
        match self {
            Keygen::Ca => "ca",
            Keygen::Device => "device",
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

impl ResolvedProfile {
    /// Refuses a profile whose certificates would end before (or as) they
    /// begin: a certificate signed at `not_before` must outlive that second.
    pub fn check_lifetime(&self, not_before: time::OffsetDateTime) -> Result<(), String> {
        if self.not_after <= not_before {
            return Err(format!(
                "not_after {} is not later than the certificate's not_before {}: \
                 it would be expired the moment it is signed; choose a later not_after",
                rfc3339(self.not_after),
                rfc3339(not_before)
            ));
        }
        Ok(())
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_must_end_after_it_begins() {
        let profile = CertProfile {
            not_after: Some("2030-01-01T00:00:00Z".into()),
            ..CertProfile::default()
        }
        .resolve()
        .unwrap();
        let at = time::macros::datetime!(2030-01-01 00:00:00 UTC);
        let err = profile.check_lifetime(at).unwrap_err();
        assert!(err.contains("not later than"), "{err}");
        assert!(profile
            .check_lifetime(at + time::Duration::seconds(1))
            .is_err());
        assert!(profile
            .check_lifetime(at - time::Duration::seconds(1))
            .is_ok());
        // The default lives as long as the device.
        let forever = CertProfile::default().resolve().unwrap();
        assert!(forever.check_lifetime(at).is_ok());
    }
}
