//! Where a certificate says its issuer's CRL and certificate are published:
//! the CRL Distribution Points (RFC 5280 4.2.1.13) and Authority Information
//! Access caIssuers (4.2.2.1) extensions, written into certificates and read
//! back out of them (the center finds its CRLs this way).
//!
//! URLs are plain `http` or `https` (RFC 5280 clients fetch CRLs and CA
//! certificates over HTTP; they are signed, public data).

use rcgen::{CertificateParams, CrlDistributionPoint, CustomExtension};
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::*;
use yasna::models::ObjectIdentifier;
use yasna::Tag;

const OID_AUTHORITY_INFO_ACCESS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
const OID_AD_CA_ISSUERS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 2];

/// The public URLs a certificate names for its issuer: the issuer's CRL and
/// the issuer's certificate. Either may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerUrls {
    pub crl: Option<String>,
    pub ca_issuers: Option<String>,
}

impl IssuerUrls {
    /// Adds a CDP and an AIA caIssuers extension for the URLs that are set.
    pub fn apply(&self, params: &mut CertificateParams) {
        if let Some(crl) = &self.crl {
            params.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![crl.clone()],
            }];
        }
        if let Some(url) = &self.ca_issuers {
            params.custom_extensions.push(aia_extension(url));
        }
    }
}

/// Checks a URL that goes into certificates as is: `http://` or `https://`,
/// a host, printable ASCII (an IA5String) without spaces. `key` names it in the error.
pub fn check_url(key: &str, text: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{key} {text:?} is not an http(s) URL: {why}"));
    let Some((scheme, rest)) = text.split_once("://") else {
        return bad("it has no scheme (write it as http://host/path)");
    };
    if scheme != "http" && scheme != "https" {
        return bad(&format!(
            "its scheme is {scheme:?}; CRLs and CA certificates are published over http or https"
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("it holds spaces or characters outside printable ASCII");
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return bad("it names no host");
    }
    if text.contains(['?', '#']) {
        return bad("a query or fragment has no place in a publication URL");
    }
    if path_of(text).ends_with('/') {
        return bad("it names a folder, not a file");
    }
    Ok(())
}

/// The path part of a checked URL (`/` when it has none).
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    match rest.find('/') {
        Some(at) => rest[at..].to_string(),
        None => "/".to_string(),
    }
}

/// The URL beside `url` (same folder) named `file`.
pub fn sibling(url: &str, file: &str) -> String {
    match url.rfind('/') {
        Some(at) if url[..at].contains("://") && !url[..at].ends_with('/') => {
            format!("{}/{file}", &url[..at])
        }
        _ => format!("{}/{file}", url.trim_end_matches('/')),
    }
}

/// `SEQUENCE OF AccessDescription { caIssuers, uniformResourceIdentifier }`.
fn aia_extension(url: &str) -> CustomExtension {
    let content = yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_sequence(|writer| {
                writer
                    .next()
                    .write_oid(&ObjectIdentifier::from_slice(OID_AD_CA_ISSUERS));
                writer
                    .next()
                    .write_tagged_implicit(Tag::context(6), |w| w.write_ia5_string(url));
            });
        });
    });
    CustomExtension::from_oid_content(OID_AUTHORITY_INFO_ACCESS, content)
}

/// The URLs a certificate (DER) names for its issuer's CRL and certificate.
pub fn read(der: &[u8]) -> anyhow::Result<IssuerUrls> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    let mut urls = IssuerUrls::default();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => {
                urls.crl = points
                    .points
                    .iter()
                    .find_map(|p| match &p.distribution_point {
                        Some(DistributionPointName::FullName(names)) => {
                            names.iter().find_map(|n| match n {
                                GeneralName::URI(uri) => Some(uri.to_string()),
                                _ => None,
                            })
                        }
                        _ => None,
                    });
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                urls.ca_issuers = aia.accessdescs.iter().find_map(|d| {
                    let ca_issuers = d.access_method.to_id_string() == "1.3.6.1.5.5.7.48.2";
                    match (&d.access_location, ca_issuers) {
                        (GeneralName::URI(uri), true) => Some(uri.to_string()),
                        _ => None,
                    }
                });
            }
            _ => {}
        }
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_and_a_file_pass() {
        for good in [
            "http://ca.example.com/crl/issuing.crl",
            "https://pki.example/ca.crt",
            "http://127.0.0.1:8080/issuing.crl",
        ] {
            check_url("crl_url", good).unwrap();
        }
        for (bad, why) in [
            ("ldap://x/crl", "scheme"),
            ("ca.example.com/issuing.crl", "no scheme"),
            ("http:///issuing.crl", "no host"),
            ("http://ca.example.com/a b.crl", "spaces"),
            ("http://ca.example.com/crl/", "folder"),
            ("http://ca.example.com/crl?x=1", "query"),
            ("file:///etc/passwd", "scheme"),
        ] {
            let err = check_url("crl_url", bad).unwrap_err();
            assert!(err.contains("crl_url") && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn paths_and_siblings() {
        assert_eq!(path_of("http://h:1/a/b.crl"), "/a/b.crl");
        assert_eq!(path_of("http://h"), "/");
        assert_eq!(
            sibling("http://h/a/b.crl", "root.crl"),
            "http://h/a/root.crl"
        );
        assert_eq!(sibling("http://h/b.crl", "root.crl"), "http://h/root.crl");
    }
}
