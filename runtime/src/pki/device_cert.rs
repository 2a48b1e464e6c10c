//! The device identity certificate profile (IEEE 802.1AR IDevID in spirit).
//!
//! Subject `O=<vendor>, CN=<model>-<serial>, serialNumber=<serial>`; SAN URI
//! `urn:dev:ops:<PEN>-<model>-<serial>` (RFC 9039) plus an RFC 4108
//! hardwareModuleName when the model profile names a hardware type;
//! basicConstraints CA:FALSE, keyUsage digitalSignature (critical),
//! extKeyUsage clientAuth, AKI and SKI.

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
};
use yasna::models::ObjectIdentifier;
use yasna::Tag;

use super::id::DeviceId;
use super::profile::ResolvedProfile;
use super::serial::Serial;

pub const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
pub const OID_ON_HARDWARE_MODULE_NAME: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 4];
pub const OID_SERIAL_NUMBER_ATTR: &[u64] = &[2, 5, 4, 5];

/// The RFC 9039 device URI for an id under a vendor's enterprise number.
pub fn device_uri(pen: u32, id: &DeviceId) -> String {
    format!("urn:dev:ops:{pen}-{}-{}", id.model(), id.serial())
}

/// Certificate parameters for one device. `not_before` is passed in so a batch
/// shares one timestamp and the caller controls the clock.
pub fn device_params(
    org: &str,
    pen: u32,
    id: &DeviceId,
    profile: &ResolvedProfile,
    serial: &Serial,
    not_before: time::OffsetDateTime,
) -> CertificateParams {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, id.to_string());
    // A–Z 0–9 only, so always a valid PrintableString (802.1AR wants that type).
    let serial_text =
        rcgen::string::PrintableString::try_from(id.serial()).expect("device serials are A-Z 0-9");
    dn.push(
        DnType::CustomDnType(OID_SERIAL_NUMBER_ATTR.to_vec()),
        DnValue::PrintableString(serial_text),
    );

    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.serial_number = Some(serial.to_rcgen());
    params.not_before = not_before;
    params.not_after = profile.not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        OID_SUBJECT_ALT_NAME,
        subject_alt_name(
            &device_uri(pen, id),
            profile.hardware_type_oid.as_deref(),
            id.serial(),
        ),
    )];
    params
}

/// The SAN is written by hand because rcgen's otherName only carries strings,
/// and hardwareModuleName is `SEQUENCE { hwType OID, hwSerialNum OCTET STRING }`.
fn subject_alt_name(uri: &str, hardware_type: Option<&[u64]>, serial: &str) -> Vec<u8> {
    yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer
                .next()
                .write_tagged_implicit(Tag::context(6), |w| w.write_ia5_string(uri));
            if let Some(hw_type) = hardware_type {
                writer.next().write_tagged_implicit(Tag::context(0), |w| {
                    w.write_sequence(|w| {
                        w.next()
                            .write_oid(&ObjectIdentifier::from_slice(OID_ON_HARDWARE_MODULE_NAME));
                        w.next().write_tagged(Tag::context(0), |w| {
                            w.write_sequence(|w| {
                                w.next().write_oid(&ObjectIdentifier::from_slice(hw_type));
                                w.next().write_bytes(serial.as_bytes());
                            })
                        });
                    })
                });
            }
        })
    })
}
