//! Revocation entries and reasons, as the ledger keeps them and CRLs carry
//! them; and a CRL decoded once into a serial → reason map for whoever checks
//! many certificates against it ([`RevocationList`]).

use serde::{Deserialize, Serialize};

use super::serial::Serial;

/// RFC 5280 5.3.1 reason codes that a certline CA uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    #[default]
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    /// Replaced by a fresh certificate (a failed write, a rework).
    Superseded,
    /// Taken out of service: discarded leftovers, abandoned issuance.
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::CaCompromise => "ca-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
            Reason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(text, true).ok()
    }

    pub fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate as a CRL lists it.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    pub serial: Serial,
    pub revoked_at: time::OffsetDateTime,
    pub reason: Reason,
}

/// The longest serial RFC 5280 (4.1.2.2) allows, in octets.
const SERIAL_OCTETS: usize = 20;

/// A serial as a fixed-size key: its big-endian value, leading zeros
/// dropped, right-aligned in 20 octets (21 bytes an entry with the reason).
type SerialKey = [u8; SERIAL_OCTETS];

fn serial_key(raw: &[u8]) -> Option<SerialKey> {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let value = &raw[start..];
    if value.len() > SERIAL_OCTETS {
        return None;
    }
    let mut key = [0u8; SERIAL_OCTETS];
    key[SERIAL_OCTETS - value.len()..].copy_from_slice(value);
    Some(key)
}

/// Who signed a DER CRL and its CRL number, read from its outer structure
/// without decoding the list of entries (a few TLV headers, whatever the
/// CRL's size): what a holder of a [`RevocationList`] compares before
/// deciding whether a fetched CRL is worth verifying at all.
pub fn crl_header(der: &[u8]) -> anyhow::Result<(Vec<u8>, u64)> {
    use x509_parser::der_parser::asn1_rs::{Any, Class, FromDer, Tag};
    let bad = |what: &str| anyhow::anyhow!("not a CRL: {what}");
    let (_, list) = Any::from_der(der).map_err(|_| bad("no outer SEQUENCE"))?;
    let (_, tbs) = Any::from_der(list.data).map_err(|_| bad("no tbsCertList"))?;
    let mut rest = tbs.data;
    let mut issuer = None;
    let mut number = None;
    let mut index = 0;
    while !rest.is_empty() {
        let (after, item) = Any::from_der(rest).map_err(|_| bad("a damaged tbsCertList"))?;
        let raw = &rest[..rest.len() - after.len()];
        rest = after;
        // version (optional INTEGER), signature, issuer, ...
        if index == 0 && item.tag() == Tag::Integer {
            continue;
        }
        index += 1;
        if index == 2 {
            issuer = Some(raw.to_vec());
        }
        if item.class() == Class::ContextSpecific && item.tag() == Tag(0) {
            let (_, extensions) =
                Any::from_der(item.data).map_err(|_| bad("damaged crlExtensions"))?;
            let mut list = extensions.data;
            while !list.is_empty() {
                let (after, extension) =
                    Any::from_der(list).map_err(|_| bad("a damaged extension"))?;
                list = after;
                let (mut fields, oid) =
                    Any::from_der(extension.data).map_err(|_| bad("an extension without id"))?;
                // id-ce-cRLNumber, 2.5.29.20
                if oid.data != [0x55, 0x1d, 0x14] {
                    continue;
                }
                while let Ok((after, field)) = Any::from_der(fields) {
                    fields = after;
                    if field.tag() == Tag::OctetString {
                        let (_, value) =
                            Any::from_der(field.data).map_err(|_| bad("a damaged CRL number"))?;
                        let key =
                            serial_key(value.data).ok_or_else(|| bad("a CRL number too large"))?;
                        anyhow::ensure!(
                            key[..SERIAL_OCTETS - 8].iter().all(|&b| b == 0),
                            "the CRL number is beyond 2^64"
                        );
                        number = Some(u64::from_be_bytes(
                            key[SERIAL_OCTETS - 8..].try_into().expect("8 octets"),
                        ));
                    }
                }
            }
        }
    }
    Ok((
        issuer.ok_or_else(|| bad("no issuer"))?,
        number.ok_or_else(|| bad("no CRL number"))?,
    ))
}

/// A CRL whose signature verified against its issuer, decoded once into a
/// serial → reason map: a lookup is one hash probe, whatever the list's
/// length, and no DER is kept.
pub struct RevocationList {
    issuer: Vec<u8>,
    number: u64,
    this_update: time::OffsetDateTime,
    next_update: time::OffsetDateTime,
    /// Reason codes as RFC 5280 5.3.1 numbers them.
    revoked: std::collections::HashMap<SerialKey, u8>,
}

impl RevocationList {
    /// Decodes `der` and verifies its signature with `issuer` (a DER
    /// certificate whose subject must be the CRL's issuer). Errors say what
    /// was wrong; nothing is kept from a CRL that fails.
    pub fn verified(der: &[u8], issuer: &[u8]) -> anyhow::Result<RevocationList> {
        let (_, issuer_cert) = x509_parser::parse_x509_certificate(issuer)
            .map_err(|e| anyhow::anyhow!("the CRL issuer's certificate does not parse: {e}"))?;
        let (rest, crl) =
            x509_parser::parse_x509_crl(der).map_err(|e| anyhow::anyhow!("not a CRL: {e}"))?;
        anyhow::ensure!(rest.is_empty(), "trailing bytes after the CRL");
        anyhow::ensure!(
            crl.issuer() == issuer_cert.subject(),
            "the CRL is issued by {}, not by {}",
            crl.issuer(),
            issuer_cert.subject()
        );
        crl.verify_signature(issuer_cert.public_key())
            .map_err(|e| anyhow::anyhow!("the CRL's signature does not verify: {e}"))?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n.clone()).ok())
            .ok_or_else(|| anyhow::anyhow!("the CRL has no CRL number (or one beyond 2^64)"))?;
        let next_update = crl
            .next_update()
            .ok_or_else(|| anyhow::anyhow!("a CRL without nextUpdate"))?
            .to_datetime();
        let mut revoked =
            std::collections::HashMap::with_capacity(crl.tbs_cert_list.revoked_certificates.len());
        for entry in crl.iter_revoked_certificates() {
            let key = serial_key(entry.raw_serial()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the CRL lists serial {} of more than 20 octets (RFC 5280 4.1.2.2)",
                    hex::encode(entry.raw_serial())
                )
            })?;
            let reason = entry.reason_code().map(|(_, code)| code.0).unwrap_or(0);
            revoked.insert(key, reason);
        }
        Ok(RevocationList {
            issuer: crl.tbs_cert_list.issuer.as_raw().to_vec(),
            number,
            this_update: crl.last_update().to_datetime(),
            next_update,
            revoked,
        })
    }

    /// The issuer's name (DER), as a certificate's issuer field carries it.
    pub fn issuer(&self) -> &[u8] {
        &self.issuer
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn this_update(&self) -> time::OffsetDateTime {
        self.this_update
    }

    pub fn next_update(&self) -> time::OffsetDateTime {
        self.next_update
    }

    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// The reason (its RFC 5280 name in x509-parser's spelling, e.g.
    /// `KeyCompromise`) a serial (DER integer bytes) is listed for, if listed.
    pub fn reason(&self, serial: &[u8]) -> Option<String> {
        let key = serial_key(serial)?;
        self.revoked
            .get(&key)
            .map(|&code| x509_parser::x509::ReasonCode(code).to_string())
    }

    /// Bytes the map holds in memory: its buckets at their capacity, one
    /// control byte each.
    pub fn heap_bytes(&self) -> usize {
        self.revoked.capacity() * (std::mem::size_of::<(SerialKey, u8)>() + 1)
    }
}
