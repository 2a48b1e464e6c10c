//! Where a certificate says its issuer's CRL and certificate are published:
//! the CRL Distribution Points (RFC 5280 4.2.1.13) and Authority Information
//! Access caIssuers (4.2.2.1) extensions, written into certificates and read
//! back out of them (the center finds its CRLs this way).
//!
//! URLs are plain `http` or `https` (RFC 5280 clients fetch CRLs and CA
//! certificates over HTTP; they are signed, public data).
//!
//! A partitioned CRL (issue 15, see `pki::crl`) is published beside the base
//! CRL: `…/issuing.crl` has partitions `…/issuing-2026-12.crl`
//! ([`partition_url`]), and an index of them all, `…/crls.json`
//! ([`CRL_INDEX_FILE`]), for whoever needs every partition (the center).

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

/// The file beside the base CRL that lists every CRL the CA publishes (JSON,
/// `wire::ca::CrlIndex`).
pub const CRL_INDEX_FILE: &str = "crls.json";

/// The URL of a partition of the CRL published at `crl_url`: the partition's
/// name inserted before the file's extension (`issuing.crl` →
/// `issuing-2026-12.crl`), or appended when it has none.
pub fn partition_url(crl_url: &str, partition: &str) -> String {
    let file_start = crl_url.rfind('/').map_or(0, |at| at + 1);
    match crl_url[file_start..].rfind('.') {
        Some(dot) if dot > 0 => {
            let at = file_start + dot;
            format!("{}-{partition}{}", &crl_url[..at], &crl_url[at..])
        }
        _ => format!("{crl_url}-{partition}"),
    }
}

/// The partition a request path names, if it is the path of a partition of
/// the CRL published at `crl_url` (the inverse of [`partition_url`]).
pub fn partition_in_path(crl_url: &str, path: &str) -> Option<String> {
    let pattern = path_of(&partition_url(crl_url, "\0"));
    let (before, after) = pattern.split_once("\0")?;
    let partition = path.strip_prefix(before)?.strip_suffix(after)?;
    crate::pki::crl::is_partition(partition).then(|| partition.to_string())
}

/// The URIs of a certificate's CRL Distribution Points (full names only).
pub fn crl_urls(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for point in &points.points {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    urls.extend(names.iter().filter_map(|n| match n {
                        GeneralName::URI(uri) => Some(uri.to_string()),
                        _ => None,
                    }));
                }
            }
        }
    }
    urls
}

impl IssuerUrls {
    /// Adds a CDP and an AIA caIssuers extension for the URLs that are set.
    pub fn apply(&self, params: &mut CertificateParams) {
        self.apply_in_partition(params, None);
    }

    /// As [`Self::apply`], with the CDP naming the URL of CRL `partition`
    /// ([`partition_url`]) when one is given.
    pub fn apply_in_partition(&self, params: &mut CertificateParams, partition: Option<&str>) {
        if let Some(crl) = &self.crl {
            let url = match partition {
                Some(p) => partition_url(crl, p),
                None => crl.clone(),
            };
            params.crl_distribution_points = vec![CrlDistributionPoint { uris: vec![url] }];
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
    fn partition_urls_go_beside_the_base_crl_and_are_found_back() {
        let base = "http://h:1/crl/issuing.crl";
        assert_eq!(
            partition_url(base, "2026-12"),
            "http://h:1/crl/issuing-2026-12.crl"
        );
        assert_eq!(
            partition_url("http://h/a.b/crl", "2026-01"),
            "http://h/a.b/crl-2026-01"
        );
        assert_eq!(
            partition_in_path(base, "/crl/issuing-2026-12.crl").as_deref(),
            Some("2026-12")
        );
        for other in [
            "/crl/issuing.crl",
            "/crl/issuing-2026-13.crl",
            "/crl/issuing-../x.crl",
            "/crl/root-2026-12.crl",
            "/issuing-2026-12.crl",
        ] {
            assert_eq!(partition_in_path(base, other), None, "{other}");
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
