//! Certificates that say where their CRL is (issue 13): `crl_url` and
//! `ca_issuers_url` in ca.toml, the CDP and AIA they put into certificates,
//! and the plain-HTTP public listener that serves CRLs and CA certificates
//! at those URLs' paths, and nothing else.

use std::process::Command;

use crate::common;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain-HTTP GET (the client has a TLS configuration only because reqwest
/// needs one; nothing here speaks TLS).
fn http_get(url: &str) -> (u16, Vec<u8>) {
    static ROOT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| {
        rcgen::generate_simple_self_signed(vec!["unused.example".into()])
            .unwrap()
            .cert
            .der()
            .to_vec()
    });
    runtime().block_on(async {
        let response = reqwest::Client::builder()
            .use_preconfigured_tls(tls_client(root, None))
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    })
}

/// The CRL partition of a certificate issued now (`YYYY-MM`, UTC).
fn this_month() -> String {
    certline::pki::crl::partition_of(time::OffsetDateTime::now_utc())
}

fn x509_text(file: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(file)
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn certificates_name_their_crl_and_issuer_and_the_public_listener_serves_them() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let crl_url = format!("{base}/crl/issuing.crl");
    let issuer_url = format!("{base}/certs/issuing.crt");
    let ca = Ca::init(&["--crl-url", &crl_url, "--ca-issuers-url", &issuer_url]);
    let config = std::fs::read_to_string(ca.dir.join("ca.toml")).unwrap();
    assert!(
        config.contains(&format!("crl_url = \"{crl_url}\"")),
        "{config}"
    );
    assert!(
        config.contains(&format!("ca_issuers_url = \"{issuer_url}\"")),
        "{config}"
    );

    let pack = ca.issue("packs", &["3012-7"]).join("3012-7");

    // The device certificate names the issuing CA's CRL (the partition of
    // its issuance month, beside crl_url: issue 15) and certificate ...
    let device = x509_text(&pack.join("chain.pem"));
    assert!(
        device.contains("X509v3 CRL Distribution Points"),
        "{device}"
    );
    let month = this_month();
    let partition_url = format!("{base}/crl/issuing-{month}.crl");
    assert!(device.contains(&format!("URI:{partition_url}")), "{device}");
    assert!(
        device.contains(&format!("CA Issuers - URI:{issuer_url}")),
        "{device}"
    );
    // ... the issuing CA's certificate names the root's, published beside them.
    let issuing = x509_text(&ca.dir.join("issuing.pem"));
    assert!(
        issuing.contains(&format!("URI:{base}/crl/root.crl")),
        "{issuing}"
    );
    assert!(
        issuing.contains(&format!("CA Issuers - URI:{base}/certs/root.crt")),
        "{issuing}"
    );
    // Service credentials too (the center finds its CRLs this way).
    let station = ca.enroll("station", "st1");
    assert!(x509_text(&station).contains(&format!("URI:{crl_url}")));

    let _server = ca.serve(&["--public-listen", &format!("127.0.0.1:{port}")]);
    let (status, crl) = http_get(&crl_url);
    assert_eq!(status, 200);
    x509_parser::parse_x509_crl(&crl).expect("the issuing CRL, DER");
    let (status, crl) = http_get(&partition_url);
    assert_eq!(status, 200);
    x509_parser::parse_x509_crl(&crl).expect("the partition's CRL, DER");
    let (status, root_crl) = http_get(&format!("{base}/crl/root.crl"));
    assert_eq!(status, 200);
    x509_parser::parse_x509_crl(&root_crl).expect("the root's CRL, DER");
    let (status, cert) = http_get(&issuer_url);
    assert_eq!(status, 200);
    assert_eq!(
        cert,
        pem_file(&ca.dir.join("issuing.pem"), "CERTIFICATE")[0]
    );
    let (status, cert) = http_get(&format!("{base}/certs/root.crt"));
    assert_eq!(status, 200);
    assert_eq!(cert, pem_file(&ca.dir.join("root.pem"), "CERTIFICATE")[0]);
    // Nothing else is spoken in clear text.
    for path in ["/v1/health", "/v1/crl", "/v1/packs", "/", "/crl/"] {
        assert_eq!(http_get(&format!("{base}{path}")).0, 404, "{path}");
    }

    // An RFC 5280 client follows the CDP on its own: openssl downloads the
    // CRLs the chain names and checks the device against them.
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-crl_download", "-CAfile"])
        .arg(pack.join("root.pem"))
        .arg("-untrusted")
        .arg(pack.join("chain.pem"))
        .arg(pack.join("chain.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    ok(&["ca", "revoke", "--dir", ca.dir(), "--id", "3012-7"]);
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-crl_download", "-CAfile"])
        .arg(pack.join("root.pem"))
        .arg("-untrusted")
        .arg(pack.join("chain.pem"))
        .arg(pack.join("chain.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("revoked") || text(&out.stdout).contains("revoked"));
}

#[test]
fn a_publication_url_that_is_not_http_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    for (flag, url, why) in [
        ("--crl-url", "ldap://pki.example/issuing.crl", "scheme"),
        ("--crl-url", "pki.example/issuing.crl", "no scheme"),
        ("--crl-url", "http:///issuing.crl", "no host"),
        ("--ca-issuers-url", "file:///etc/issuing.crt", "scheme"),
        ("--crl-url", "http://pki.example/crl/", "folder"),
    ] {
        let err = fails(&["ca", "init", "--dir", path(&dir), flag, url]);
        let key = flag.trim_start_matches("--").replace('-', "_");
        assert!(err.contains(&key) && err.contains(why), "{url}: {err}");
        assert!(!dir.exists(), "a refused init leaves nothing behind");
    }
    // The same check guards a hand-edited ca.toml at every start.
    let ca = Ca::init(&[]);
    let config = ca.dir.join("ca.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("crl_url = \"ftp://x/y.crl\"\n{text}")).unwrap();
    let err = fails(&["ca", "crl", "--dir", ca.dir()]);
    assert!(err.contains("crl_url") && err.contains("ftp"), "{err}");
}

#[test]
fn the_public_listener_needs_urls_to_publish() {
    let ca = Ca::init(&[]);
    let out = certline()
        .args([
            "ca",
            "serve",
            "--dir",
            ca.dir(),
            "--listen",
            "127.0.0.1:0",
            "--public-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--public-listen") && err.contains("crl_url"),
        "{err}"
    );
}
