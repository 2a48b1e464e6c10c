//! Service roles carried in service credentials.
//!
//! A service credential names its role in a SAN URI `urn:certline:role:<role>:<name>`
//! (and, for people reading it, in the subject's OU). Servers authorise by this
//! role; a device identity (urn:dev:ops:…) has no role and so no service rights.

use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The CA's own HTTPS server.
    Ca,
    Station,
    Line,
    Center,
    /// The "common certificate" every device of a vendor gets when its board is
    /// built, used only to secure the line-to-device link.
    DeviceLink,
}

pub const ROLE_URI_PREFIX: &str = "urn:certline:role:";

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Ca => "ca",
            Role::Station => "station",
            Role::Line => "line",
            Role::Center => "center",
            Role::DeviceLink => "device-link",
        }
    }

    /// Whether this role runs an HTTPS service that others connect to: only
    /// these credentials carry serverAuth (and host names). A line, the
    /// device-link credential (in every device's NVRAM) and a device identity
    /// can never pose as a server to a certline client.
    pub fn is_server(self) -> bool {
        matches!(self, Role::Ca | Role::Station | Role::Center)
    }

    pub fn parse(text: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(text, false).ok()
    }

    pub fn uri(self, name: &str) -> String {
        format!("{ROLE_URI_PREFIX}{}:{name}", self.name())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A service name: what `enroll --name` accepts (it goes into a URI and a CN).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name {name:?} must be 1-64 characters of letters, digits, '-', '_', '.'"
        ))
    }
}

/// The role and name a certificate carries, if it is a service credential.
pub fn role_of(cert_der: &[u8]) -> Option<(Role, String)> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            let rest = uri.strip_prefix(ROLE_URI_PREFIX)?;
            let (role, name) = rest.split_once(':')?;
            Some((Role::parse(role)?, name.to_string()))
        }
        _ => None,
    })
}
