//! The CA hierarchy in memory: a root (signs the issuing CA and its CRL) and an
//! issuing CA (signs device identities, service credentials and their CRL).
//!
//! Creating and loading build the CA names from the same functions, and loading
//! checks the result against the stored certificates, so signatures made after a
//! restart chain exactly as before.
//!
//! Nothing here reads the clock: every signing call takes the time it signs at.
//! Nothing here holds a private key either: every signature is made by a
//! [`CaKey`] of the key store (sealed files or a PKCS#11 token).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, RevokedCertParams,
    SanType,
};
use x509_parser::prelude::*;

use super::crl::RevokedEntry;
use super::device_cert::device_params;
use super::id::DeviceId;
use super::keys::DeviceKey;
use super::keystore::{explain, CaKey};
use super::profile::{ResolvedProfile, FOREVER};
use super::role::Role;
use super::serial::Serial;
use super::to_pem;
use super::urls::IssuerUrls;

/// How long service credentials (station, line, center, device link) live.
pub const SERVICE_VALIDITY: ::time::Duration = ::time::Duration::days(5 * 365);

pub struct Authority {
    org: String,
    pen: u32,
    root: Issuer<'static, CaKey>,
    issuing: Issuer<'static, CaKey>,
    root_der: Vec<u8>,
    issuing_der: Vec<u8>,
    root_pem: String,
    issuing_pem: String,
    /// CDP and AIA of what the issuing CA signs.
    issued_urls: IssuerUrls,
}

fn ca_name(org: &str, which: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, format!("{org} {which}"));
    dn
}

fn ca_params(org: &str, which: &str, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(org, which);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.not_after = FOREVER;
    params
}

/// An issuer whose key identifier is computed once: rcgen would otherwise
/// rebuild and hash the issuer's public key for the AKI of every certificate.
fn issuer(mut params: CertificateParams, key: CaKey) -> Issuer<'static, CaKey> {
    params.key_identifier_method = KeyIdMethod::PreSpecified(params.key_identifier(&key));
    Issuer::new(params, key)
}

/// X.509 times have whole seconds.
fn seconds(at: ::time::OffsetDateTime) -> ::time::OffsetDateTime {
    at.replace_nanosecond(0).unwrap_or(at)
}

impl Authority {
    /// A new root (P-384) and issuing CA (P-256, the one that signs on the
    /// hot path) for keys the key store just made. `root_urls` go into the
    /// issuing CA's certificate (where the root's CRL and certificate are published).
    pub fn create(
        org: &str,
        pen: u32,
        root_urls: &IssuerUrls,
        root_key: CaKey,
        issuing_key: CaKey,
        now: ::time::OffsetDateTime,
    ) -> anyhow::Result<Authority> {
        let mut root_params = ca_params(org, "Root CA", 1);
        root_params.not_before = seconds(now);
        root_params.serial_number = Some(Serial::random().to_rcgen());
        let root_cert = root_params.self_signed(&root_key).map_err(explain)?;
        let root = issuer(root_params, root_key);

        let mut issuing_params = ca_params(org, "Issuing CA", 0);
        issuing_params.not_before = seconds(now);
        issuing_params.serial_number = Some(Serial::random().to_rcgen());
        root_urls.apply(&mut issuing_params);
        let issuing_cert = issuing_params
            .signed_by(&issuing_key, &root)
            .map_err(explain)?;
        let issuing = issuer(issuing_params, issuing_key);

        Ok(Authority::assemble(
            org,
            pen,
            root,
            issuing,
            root_cert.der().to_vec(),
            issuing_cert.der().to_vec(),
        ))
    }

    /// The CA as it was created, from its stored certificates and the key
    /// store's keys (each checked against its certificate, with one signature).
    pub fn load(
        org: &str,
        pen: u32,
        root_der: Vec<u8>,
        issuing_der: Vec<u8>,
        root_key: CaKey,
        issuing_key: CaKey,
    ) -> anyhow::Result<Authority> {
        check_matches(&root_der, &ca_name(org, "Root CA"), &root_key, "root")?;
        check_matches(
            &issuing_der,
            &ca_name(org, "Issuing CA"),
            &issuing_key,
            "issuing",
        )?;
        let root = issuer(ca_params(org, "Root CA", 1), root_key);
        let issuing = issuer(ca_params(org, "Issuing CA", 0), issuing_key);
        Ok(Authority::assemble(
            org,
            pen,
            root,
            issuing,
            root_der,
            issuing_der,
        ))
    }

    fn assemble(
        org: &str,
        pen: u32,
        root: Issuer<'static, CaKey>,
        issuing: Issuer<'static, CaKey>,
        root_der: Vec<u8>,
        issuing_der: Vec<u8>,
    ) -> Authority {
        Authority {
            org: org.to_string(),
            pen,
            root,
            issuing,
            root_pem: to_pem("CERTIFICATE", &root_der),
            issuing_pem: to_pem("CERTIFICATE", &issuing_der),
            root_der,
            issuing_der,
            issued_urls: IssuerUrls::default(),
        }
    }

    /// The CDP and AIA that certificates signed from now on carry.
    pub fn set_issued_urls(&mut self, urls: IssuerUrls) {
        self.issued_urls = urls;
    }

    pub fn org(&self) -> &str {
        &self.org
    }

    pub fn pen(&self) -> u32 {
        self.pen
    }

    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    pub fn issuing_der(&self) -> &[u8] {
        &self.issuing_der
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn issuing_pem(&self) -> &str {
        &self.issuing_pem
    }

    /// Signs one device identity certificate for a public key: one the CA
    /// generated, or one a device proved it holds (`pki::csr`).
    pub fn sign_device(
        &self,
        id: &DeviceId,
        profile: &ResolvedProfile,
        serial: &Serial,
        key: &impl rcgen::PublicKeyData,
        not_before: ::time::OffsetDateTime,
    ) -> anyhow::Result<Vec<u8>> {
        // Never sign a certificate that is expired from its first second.
        profile
            .check_lifetime(not_before)
            .map_err(|e| anyhow::anyhow!("refusing to sign {id}: {e}"))?;
        let mut params = device_params(&self.org, self.pen, id, profile, serial, not_before);
        self.issued_urls.apply(&mut params);
        let cert = params.signed_by(key, &self.issuing).map_err(explain)?;
        Ok(cert.der().to_vec())
    }

    /// Signs a service credential: role in the SAN URI and OU, usable as a TLS
    /// client and, for a server role only ([`Role::is_server`]), as a TLS
    /// server for the hosts named.
    pub fn sign_service(
        &self,
        role: Role,
        name: &str,
        hosts: &[String],
        serial: &Serial,
        key: &DeviceKey,
        now: ::time::OffsetDateTime,
    ) -> anyhow::Result<Vec<u8>> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.org.as_str());
        dn.push(DnType::OrganizationalUnitName, role.name());
        dn.push(DnType::CommonName, name);
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.serial_number = Some(serial.to_rcgen());
        params.not_before = seconds(now);
        params.not_after = seconds(now) + SERVICE_VALIDITY;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if role.is_server() {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let mut sans = vec![SanType::URI(role.uri(name).try_into()?)];
        for host in hosts {
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName(host.clone().try_into().map_err(|_| {
                        anyhow::anyhow!("host name {host:?} is not a valid DNS name")
                    })?)
                }
            });
        }
        params.subject_alt_names = sans;
        self.issued_urls.apply(&mut params);
        Ok(params
            .signed_by(key, &self.issuing)
            .map_err(explain)?
            .der()
            .to_vec())
    }

    /// The issuing CA's CRL: every revoked device and service certificate,
    /// thisUpdate `now`, nextUpdate `validity` later.
    pub fn issuing_crl(
        &self,
        number: u64,
        revoked: &[RevokedEntry],
        now: ::time::OffsetDateTime,
        validity: ::time::Duration,
    ) -> anyhow::Result<Vec<u8>> {
        sign_crl(&self.issuing, number, revoked, now, validity)
    }

    /// The root's CRL (an ARL): it would list a revoked issuing CA.
    pub fn root_crl(
        &self,
        number: u64,
        revoked: &[RevokedEntry],
        now: ::time::OffsetDateTime,
        validity: ::time::Duration,
    ) -> anyhow::Result<Vec<u8>> {
        sign_crl(&self.root, number, revoked, now, validity)
    }
}

fn sign_crl(
    issuer: &Issuer<'static, CaKey>,
    number: u64,
    revoked: &[RevokedEntry],
    now: ::time::OffsetDateTime,
    validity: ::time::Duration,
) -> anyhow::Result<Vec<u8>> {
    let this_update = seconds(now);
    let params = CertificateRevocationListParams {
        this_update,
        next_update: this_update + validity,
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|entry| RevokedCertParams {
                serial_number: entry.serial.to_rcgen(),
                revocation_time: entry.revoked_at,
                reason_code: Some(entry.reason.to_rcgen()),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer).map_err(explain)?.der().to_vec())
}

/// Refuses a stored CA certificate whose subject or key differs from what this
/// CA would sign with: issuing from a mismatched pair makes unverifiable chains.
fn check_matches(
    der: &[u8],
    expected: &DistinguishedName,
    key: &CaKey,
    which: &str,
) -> anyhow::Result<()> {
    use rcgen::PublicKeyData;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("the stored {which} CA certificate is unreadable: {e}"))?;
    let mut probe = CertificateParams::default();
    probe.distinguished_name = expected.clone();
    let probe_cert = probe
        .self_signed(key)
        .map_err(|e| anyhow::anyhow!("the {which} CA key does not sign: {:#}", explain(e)))?;
    let (_, probe_parsed) = X509Certificate::from_der(probe_cert.der())
        .map_err(|e| anyhow::anyhow!("internal: {e}"))?;
    if cert.subject().as_raw() != probe_parsed.subject().as_raw() {
        anyhow::bail!(
            "the stored {which} CA certificate's subject ({}) does not match the configured organisation",
            cert.subject()
        );
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        anyhow::bail!(
            "the stored {which} CA certificate does not belong to its key in the key store (another key under that name?)"
        );
    }
    Ok(())
}
