//! Reading a device identity back out of a certificate: the id in the SAN URI,
//! checked against the subject (the center and the line trust nothing less).

use x509_parser::prelude::*;

use super::id::DeviceId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub id: DeviceId,
    pub pen: u32,
    /// Certificate serial, lower-case hex without leading zero octets stripped.
    pub serial_hex: String,
}

/// The device id a device certificate names, or why it does not name one.
pub fn device_identity(cert_der: &[u8]) -> anyhow::Result<DeviceIdentity> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("subjectAltName is malformed: {e}"))?
        .ok_or_else(|| {
            anyhow::anyhow!("certificate has no subjectAltName: not a device identity")
        })?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("urn:dev:ops:") => Some(*uri),
            _ => None,
        })
        .ok_or_else(|| {
            anyhow::anyhow!("certificate has no urn:dev:ops: URI: not a device identity")
        })?;
    let rest = &uri["urn:dev:ops:".len()..];
    let (pen, id_text) = rest.split_once('-').ok_or_else(|| {
        anyhow::anyhow!("device URI {uri:?} is not urn:dev:ops:<PEN>-<model>-<serial>")
    })?;
    let pen: u32 = pen
        .parse()
        .map_err(|_| anyhow::anyhow!("device URI {uri:?} has no numeric enterprise number"))?;
    let id = DeviceId::parse(id_text).map_err(|e| anyhow::anyhow!("device URI {uri:?}: {e}"))?;

    // The subject must say the same thing: CN=<model>-<serial>, serialNumber=<serial>.
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok());
    let sn = subject
        .iter_by_oid(&oid_registry::OID_X509_SERIALNUMBER)
        .next()
        .and_then(|a| a.as_str().ok());
    if cn != Some(id.to_string().as_str()) {
        anyhow::bail!("subject CN {cn:?} does not match the SAN's device id {id}");
    }
    if sn != Some(id.serial()) {
        anyhow::bail!(
            "subject serialNumber {sn:?} does not match the SAN's serial {}",
            id.serial()
        );
    }
    Ok(DeviceIdentity {
        id,
        pen,
        serial_hex: hex::encode(cert.raw_serial()),
    })
}
