//! Black-box tests of the CA's EST front door (RFC 7030) with clients
//! certline did not write: `curl` for the transport, `openssl` for the CSRs
//! and to read every answer (`openssl base64 -d | openssl pkcs7
//! -print_certs`, `openssl cms`, `openssl asn1parse`), and a second,
//! independent client in Python (`cryptography` + `requests`,
//! `tests/est_client.py`) for enroll, re-enroll and server keygen. The CA is
//! the real binary; the ledger and the audit log are read with `certline ca`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A CA serving EST, its root, a station credential, and a scratch folder.
struct Est {
    ca: Ca,
    server: Server,
    root: PathBuf,
    station: PathBuf,
    work: PathBuf,
}

/// One HTTP answer as curl saw it.
struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        text(&self.body)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    #[track_caller]
    fn refused(&self, status: u16, code: &str) -> String {
        let body = self.text();
        assert_eq!(self.status, status, "expected {status} {code}, got: {body}");
        assert!(
            body.starts_with(&format!("{code}: ")),
            "the body should start with the code {code}: {body}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "an EST refusal is text/plain: {}",
            self.headers
        );
        body
    }
}

/// What a client presents: nothing, a credential file (chain and key in one
/// PEM), or a certificate chain and a key in two files.
enum Client<'a> {
    Anonymous,
    Credential(&'a Path),
    Identity { chain: &'a Path, key: &'a Path },
}

fn run_tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

#[track_caller]
fn tool_ok(program: &str, args: &[&str]) -> String {
    let out = run_tool(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

impl Est {
    /// A fresh CA; `toml` is appended to its ca.toml before it serves.
    fn start(toml: &str) -> Est {
        let ca = Ca::init(&["--org", "Acme Devices"]);
        Est::serve(ca, toml)
    }

    fn serve(ca: Ca, toml: &str) -> Est {
        if !toml.is_empty() {
            let config = ca.dir.join("ca.toml");
            let mut text = std::fs::read_to_string(&config).unwrap();
            text.push('\n');
            text.push_str(toml);
            std::fs::write(&config, text).unwrap();
        }
        let station = ca.enroll("station", "st1");
        let server = ca.serve(&[]);
        let root = ca.dir.join("root.pem");
        let work = ca.file("est");
        std::fs::create_dir_all(&work).unwrap();
        Est {
            ca,
            server,
            root,
            station,
            work,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// `curl` to `/.well-known/est/<op>`: a GET, or a POST of `body` (a file)
    /// with `content_type`.
    fn curl(&self, client: Client<'_>, op: &str, post: Option<(&str, &Path)>) -> Answer {
        let headers = self.file("headers");
        let body = self.file("body");
        let _ = std::fs::remove_file(&body);
        let url = format!("{}/.well-known/est/{op}", self.server.url);
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--cacert".into(),
            path(&self.root).into(),
            "-D".into(),
            path(&headers).into(),
            "-o".into(),
            path(&body).into(),
            "-w".into(),
            "%{http_code}".into(),
        ];
        match client {
            Client::Anonymous => {}
            Client::Credential(file) => {
                args.extend(["--cert".into(), path(file).into()]);
            }
            Client::Identity { chain, key } => {
                args.extend([
                    "--cert".into(),
                    path(chain).into(),
                    "--key".into(),
                    path(key).into(),
                ]);
            }
        }
        if let Some((content_type, data)) = post {
            args.extend([
                "-H".into(),
                format!("Content-Type: {content_type}"),
                "--data-binary".into(),
                format!("@{}", path(data)),
            ]);
        }
        args.push(url);
        let out = Command::new("curl").args(&args).output().expect("curl");
        assert!(
            out.status.success(),
            "curl {args:?} failed: {}",
            text(&out.stderr)
        );
        Answer {
            status: text(&out.stdout).trim().parse().unwrap(),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    fn station(&self) -> Client<'_> {
        Client::Credential(&self.station)
    }

    /// A P-256 key and a CSR for `subject` made by `openssl req`, with any
    /// extra arguments; returns (key file, base64 CSR file).
    fn csr(&self, name: &str, subject: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let key = self.file(&format!("{name}.key"));
        let der = self.file(&format!("{name}.csr.der"));
        let b64 = self.file(&format!("{name}.csr.b64"));
        let mut args = vec![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            path(&key),
            "-subj",
            subject,
            "-outform",
            "DER",
            "-out",
            path(&der),
        ];
        args.extend_from_slice(extra);
        tool_ok("openssl", &args);
        tool_ok(
            "openssl",
            &["base64", "-in", path(&der), "-out", path(&b64)],
        );
        (key, b64)
    }

    /// A certs-only answer's certificates, as openssl prints them (PEM).
    fn print_certs(&self, answer: &Answer, name: &str) -> PathBuf {
        assert_eq!(answer.status, 200, "{}", answer.text());
        let b64 = self.file(&format!("{name}.b64"));
        let der = self.file(&format!("{name}.p7"));
        let pem = self.file(&format!("{name}.pem"));
        std::fs::write(&b64, &answer.body).unwrap();
        tool_ok(
            "openssl",
            &["base64", "-d", "-in", path(&b64), "-out", path(&der)],
        );
        tool_ok(
            "openssl",
            &[
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                path(&der),
                "-print_certs",
                "-out",
                path(&pem),
            ],
        );
        pem
    }

    /// simpleenroll (or another POST operation) of a CSR file by `client`.
    fn post(&self, client: Client<'_>, op: &str, csr: &Path) -> Answer {
        self.curl(client, op, Some(("application/pkcs10", csr)))
    }

    /// Writes the chain a device presents (its certificate, then the issuing CA).
    fn chain_file(&self, name: &str, cert_pem: &Path) -> PathBuf {
        let issuing = std::fs::read_to_string(self.ca.dir.join("issuing.pem")).unwrap();
        let mut chain = std::fs::read_to_string(cert_pem).unwrap();
        chain.push_str(&issuing);
        let file = self.file(&format!("{name}.chain.pem"));
        std::fs::write(&file, chain).unwrap();
        file
    }

    /// The station enrolls `id` from an openssl CSR; returns (key, certificate PEM).
    fn enroll(&self, name: &str, id: &str) -> (PathBuf, PathBuf) {
        let serial = id.split_once('-').unwrap().1;
        let (key, csr) = self.csr(name, &format!("/CN={id}/serialNumber={serial}"), &[]);
        let answer = self.post(self.station(), "simpleenroll", &csr);
        (key, self.print_certs(&answer, name))
    }

    fn history(&self, id: &str) -> Vec<serde_json::Value> {
        self.ca.history(id)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&ok(&[
            "ca",
            "audit",
            "show",
            "--dir",
            self.ca.dir(),
            "--last",
            "50",
            "--json",
        ]))
        .unwrap()
    }
}

fn x509_text(pem: &Path) -> String {
    tool_ok("openssl", &["x509", "-noout", "-text", "-in", path(pem)])
}

fn pubkey_of_cert(pem: &Path) -> String {
    tool_ok("openssl", &["x509", "-noout", "-pubkey", "-in", path(pem)])
}

fn pubkey_of_key(key: &Path) -> String {
    tool_ok("openssl", &["pkey", "-pubout", "-in", path(key)])
}

fn serial_of(pem: &Path) -> String {
    tool_ok("openssl", &["x509", "-noout", "-serial", "-in", path(pem)])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

fn status_of(history: &[serde_json::Value], serial: &str) -> (String, Option<String>) {
    let row = history
        .iter()
        .find(|r| r["serial"] == serial)
        .unwrap_or_else(|| panic!("serial {serial} not in {history:?}"));
    (
        row["status"].as_str().unwrap().to_string(),
        row["reason"].as_str().map(str::to_string),
    )
}

#[test]
fn cacerts_and_csrattrs_answer_as_rfc_7030_says() {
    let est = Est::start("[models.3012]\nkey = \"p384\"\n");

    // cacerts: base64 certs-only CMS with the issuing CA and the root.
    let answer = est.curl(est.station(), "cacerts", None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/pkcs7-mime")
    );
    let certs = est.print_certs(&answer, "cacerts");
    let printed = std::fs::read_to_string(&certs).unwrap();
    assert!(printed.contains("Acme Devices Issuing CA"), "{printed}");
    assert!(printed.contains("Acme Devices Root CA"), "{printed}");
    let got = pem_file(&certs, "CERTIFICATE");
    let mut want = pem_file(&est.ca.dir.join("issuing.pem"), "CERTIFICATE");
    want.extend(pem_file(&est.root, "CERTIFICATE"));
    let (mut got_sorted, mut want_sorted) = (got.clone(), want.clone());
    got_sorted.sort();
    want_sorted.sort();
    assert_eq!(
        got_sorted, want_sorted,
        "cacerts holds exactly the two CA certificates"
    );
    // openssl cms reads it as a SignedData with no signer.
    let p7 = est.file("cacerts.p7");
    let cms = tool_ok(
        "openssl",
        &[
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            path(&p7),
        ],
    );
    assert!(cms.contains("pkcs7-signedData"), "{cms}");
    let signers = cms.split("signerInfos:").nth(1).expect("signerInfos");
    assert_eq!(
        signers.trim_start().lines().next(),
        Some("<EMPTY>"),
        "{cms}"
    );

    // csrattrs: the default profile's P-256 and ECDSA with SHA-256, and serialNumber.
    let answer = est.curl(est.station(), "csrattrs", None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/csrattrs")
    );
    let attrs = asn1parse(&est, &answer, "csrattrs");
    for oid in [
        "id-ecPublicKey",
        "prime256v1",
        "ecdsa-with-SHA256",
        "serialNumber",
    ] {
        assert!(attrs.contains(oid), "csrattrs lacks {oid}: {attrs}");
    }
    // Under the label of a model with a P-384 profile, that profile answers.
    let answer = est.curl(est.station(), "3012/csrattrs", None);
    let attrs = asn1parse(&est, &answer, "csrattrs-3012");
    assert!(
        attrs.contains("secp384r1") && attrs.contains("ecdsa-with-SHA384"),
        "{attrs}"
    );
    assert!(!attrs.contains("prime256v1"), "{attrs}");

    // Not an EST operation, a label that is not a model code, the wrong method.
    est.curl(est.station(), "nothing", None)
        .refused(404, "not_found");
    est.curl(est.station(), "no-such-label/cacerts", None)
        .refused(404, "not_found");
    let answer = est.post(est.station(), "cacerts", &certs);
    answer.refused(405, "bad_request");
    assert_eq!(answer.header("allow").as_deref(), Some("GET"));
    est.curl(est.station(), "fullcmc", None)
        .refused(501, "not_found");
}

fn asn1parse(est: &Est, answer: &Answer, name: &str) -> String {
    assert_eq!(answer.status, 200, "{}", answer.text());
    let b64 = est.file(&format!("{name}.b64"));
    std::fs::write(&b64, &answer.body).unwrap();
    tool_ok(
        "openssl",
        &["asn1parse", "-inform", "PEM", "-in", path(&b64)],
    )
}

#[test]
fn without_a_client_certificate_only_public_cacerts_and_csrattrs_answer() {
    // Not public (the default): nothing answers a client without a certificate.
    let est = Est::start("");
    for op in ["cacerts", "csrattrs"] {
        let body = est
            .curl(Client::Anonymous, op, None)
            .refused(401, "no_client_certificate");
        assert!(body.contains("public"), "{body}");
    }
    let (_, csr) = est.csr("anon", "/CN=3012-000001/serialNumber=000001", &[]);
    for op in ["simpleenroll", "simplereenroll", "serverkeygen"] {
        est.post(Client::Anonymous, op, &csr)
            .refused(401, "no_client_certificate");
    }
    // A line or center credential is a certificate of this CA: it may read, not enroll.
    let line = est.ca.enroll("line", "line-1");
    assert_eq!(
        est.curl(Client::Credential(&line), "cacerts", None).status,
        200
    );
    for op in ["simpleenroll", "serverkeygen", "simplereenroll"] {
        est.post(Client::Credential(&line), op, &csr)
            .refused(403, "forbidden");
    }
    assert!(est.history("3012-000001").is_empty(), "nothing was issued");

    // Public: cacerts and csrattrs answer anyone; enrollment still does not.
    let est = Est::start("[est]\npublic = true\n");
    for op in ["cacerts", "csrattrs"] {
        let answer = est.curl(Client::Anonymous, op, None);
        assert_eq!(answer.status, 200, "{op}: {}", answer.text());
    }
    est.print_certs(&est.curl(Client::Anonymous, "cacerts", None), "public");
    for op in ["simpleenroll", "simplereenroll", "serverkeygen"] {
        est.post(Client::Anonymous, op, &csr)
            .refused(401, "no_client_certificate");
    }
}

#[test]
fn a_station_enrolls_a_csr_and_the_certificate_is_built_from_the_id() {
    let est = Est::start("");
    // The CSR asks for things the profile never gives: CA:TRUE, another SAN.
    let (key, csr) = est.csr(
        "dev1",
        "/O=Someone Else/CN=3012-000001/serialNumber=000001",
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectAltName=DNS:evil.example,URI:urn:dev:ops:32473-3012-000001",
        ],
    );
    let answer = est.post(est.station(), "simpleenroll", &csr);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    let cert = est.print_certs(&answer, "dev1");
    assert_eq!(
        pem_file(&cert, "CERTIFICATE").len(),
        1,
        "the new certificate"
    );
    // The key is the CSR's; everything else comes from the id and the profile.
    assert_eq!(pubkey_of_cert(&cert), pubkey_of_key(&key));
    let chain = est.chain_file("dev1", &cert);
    assert_chain_verifies_for(&chain, &est.root, "3012-000001");
    let text = x509_text(&cert);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("evil.example"), "{text}");
    assert!(!text.contains("Someone Else"), "{text}");
    assert!(
        text.contains("O = Acme Devices, CN = 3012-000001, serialNumber = 000001"),
        "{text}"
    );

    // The same ledger as the JSON API: valid, asked for by the station.
    let history = est.history("3012-000001");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["status"], "valid");
    assert_eq!(history[0]["requester"], "station:st1");
    assert_eq!(history[0]["serial"], serial_of(&cert));

    // One valid certificate per id: a second simpleenroll is refused.
    let (_, again) = est.csr("dev1b", "/CN=3012-000001", &[]);
    let body = est
        .post(est.station(), "simpleenroll", &again)
        .refused(409, "already_certified");
    assert!(body.contains("3012-000001"), "{body}");
    // The id from a SAN URN alone, and from CN=<model> with serialNumber.
    let (_, by_san) = est.csr(
        "dev2",
        "/O=Acme",
        &[
            "-addext",
            "subjectAltName=URI:urn:dev:ops:32473-A123-000002",
        ],
    );
    assert_eq!(est.post(est.station(), "simpleenroll", &by_san).status, 200);
    assert_eq!(est.history("A123-000002")[0]["status"], "valid");
    let (_, split) = est.csr("dev3", "/CN=A123/serialNumber=000003", &[]);
    assert_eq!(est.post(est.station(), "simpleenroll", &split).status, 200);
    assert_eq!(est.history("A123-000003")[0]["status"], "valid");
    // The same audit log: the station's issuance is in it.
    assert!(est
        .audit()
        .iter()
        .any(|e| e["action"] == "issue" && e["actor"] == "station:st1"));
}

#[test]
fn a_device_re_enrolls_with_its_identity_and_the_old_certificate_is_superseded() {
    let est = Est::start("");
    let (key, cert) = est.enroll("dev", "3012-000010");
    let chain = est.chain_file("dev", &cert);
    let old_serial = serial_of(&cert);
    let device = || Client::Identity {
        chain: &chain,
        key: &key,
    };

    // A device certificate reads cacerts but may not enroll or make keys.
    assert_eq!(est.curl(device(), "cacerts", None).status, 200);
    let (new_key, csr) = est.csr("dev-new", "/CN=3012-000010/serialNumber=000010", &[]);
    est.post(device(), "simpleenroll", &csr)
        .refused(403, "forbidden");
    let body = est
        .post(device(), "serverkeygen", &csr)
        .refused(403, "forbidden");
    assert!(body.contains("station"), "{body}");

    // Re-enroll: a new certificate for the same id and the new key.
    let answer = est.post(device(), "simplereenroll", &csr);
    let renewed = est.print_certs(&answer, "dev-renewed");
    assert_eq!(pubkey_of_cert(&renewed), pubkey_of_key(&new_key));
    assert_chain_verifies_for(
        &est.chain_file("renewed", &renewed),
        &est.root,
        "3012-000010",
    );
    let new_serial = serial_of(&renewed);
    assert_ne!(new_serial, old_serial);
    let history = est.history("3012-000010");
    assert_eq!(
        status_of(&history, &old_serial),
        ("revoked".into(), Some("superseded".into()))
    );
    assert_eq!(status_of(&history, &new_serial).0, "valid");
    let row = history.iter().find(|r| r["serial"] == new_serial).unwrap();
    assert_eq!(row["requester"], "device:3012-000010");
    assert_eq!(row["replaces"], old_serial);
    // The CRL lists the superseded certificate.
    let crl = est.file("issuing.crl");
    ok(&["ca", "crl", "--dir", est.ca.dir(), "--out", path(&crl)]);
    let crl_text = tool_ok("openssl", &["crl", "-noout", "-text", "-in", path(&crl)]);
    assert!(
        crl_text.to_ascii_lowercase().contains(&old_serial),
        "{crl_text}"
    );

    // The old (revoked) certificate cannot re-enroll again; it is audited.
    let (_, csr2) = est.csr("dev-again", "/CN=3012-000010/serialNumber=000010", &[]);
    let body = est
        .post(device(), "simplereenroll", &csr2)
        .refused(403, "certificate_revoked");
    assert!(body.contains("revoked"), "{body}");
    let history = est.history("3012-000010");
    assert_eq!(history.len(), 2, "nothing issued: {history:?}");

    // With the new certificate, a CSR for another id is refused and audited.
    let renewed_chain = est.chain_file("renewed2", &renewed);
    let current = Client::Identity {
        chain: &renewed_chain,
        key: &new_key,
    };
    let (_, other) = est.csr("other", "/CN=3012-000011/serialNumber=000011", &[]);
    let body = est
        .post(current, "simplereenroll", &other)
        .refused(403, "not_your_id");
    assert!(body.contains("3012-000011"), "{body}");
    assert!(est.history("3012-000011").is_empty());
    let refusals: Vec<_> = est
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "est-reenroll-refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[0]["detail"]["code"], "certificate_revoked");
    assert_eq!(refusals[1]["detail"]["code"], "not_your_id");
    assert_eq!(refusals[1]["detail"]["csr_id"], "3012-000011");
    assert_eq!(refusals[1]["actor"], "device:3012-000010");
    assert_eq!(
        status_of(&est.history("3012-000010"), &new_serial).0,
        "valid"
    );

    // A station replaces only what it asked for: the device's own renewal is not its.
    let (_, by_station) = est.csr("st-re", "/CN=3012-000010/serialNumber=000010", &[]);
    est.post(est.station(), "simplereenroll", &by_station)
        .refused(403, "not_your_certificate");
    // The station that asked for an id re-enrolls it (the JSON API's replace).
    let (_, station_cert) = est.enroll("st-own", "3012-000012");
    let (_, csr3) = est.csr("st-own-new", "/CN=3012-000012/serialNumber=000012", &[]);
    let answer = est.post(est.station(), "simplereenroll", &csr3);
    let third = est.print_certs(&answer, "third");
    let history = est.history("3012-000012");
    assert_eq!(status_of(&history, &serial_of(&third)).0, "valid");
    assert_eq!(
        status_of(&history, &serial_of(&station_cert)),
        ("revoked".into(), Some("superseded".into()))
    );
    // Re-enrolling an id without a valid certificate is refused.
    let (_, unknown) = est.csr("unknown", "/CN=3012-000013/serialNumber=000013", &[]);
    est.post(est.station(), "simplereenroll", &unknown)
        .refused(404, "no_valid_certificate");
}

/// A re-enrollment cut short (the CA killed after signing the new
/// certificate, before committing it) leaves the device its old certificate,
/// valid: the device re-enrolls with it once the CA is back (issue 17).
#[cfg(feature = "failpoints")]
#[test]
fn a_re_enrollment_cut_short_leaves_the_device_its_old_certificate() {
    let mut est = Est::start("");
    let (key, cert) = est.enroll("dev", "3012-000020");
    let chain = est.chain_file("dev", &cert);
    let old_serial = serial_of(&cert);
    let (_, csr) = est.csr("dev-new", "/CN=3012-000020/serialNumber=000020", &[]);

    est.server.kill();
    let mut armed = crate::ca::armed_ca(&est.ca, "ca-after-sign");
    let url = format!("{}/.well-known/est/simplereenroll", armed.url);
    let data = format!("@{}", path(&csr));
    let mut asked = Command::new("curl")
        .args(["-sS", "--cacert", path(&est.root), "--cert", path(&chain)])
        .args([
            "--key",
            path(&key),
            "-H",
            "Content-Type: application/pkcs10",
        ])
        .args(["--data-binary", &data, &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    armed.wait_stderr("ca reached fail point ca-after-sign");
    armed.kill();
    assert!(
        !asked.wait().unwrap().success(),
        "curl got an answer from a killed CA"
    );

    // Back: the new certificate's reservation is revoked, the old one valid.
    est.server = est.ca.serve(&[]);
    let history = est.history("3012-000020");
    assert_eq!(status_of(&history, &old_serial).0, "valid", "{history:?}");
    let abandoned: Vec<_> = history
        .iter()
        .filter(|r| r["serial"] != old_serial.as_str())
        .collect();
    assert_eq!(abandoned.len(), 1, "{history:?}");
    assert_eq!(abandoned[0]["status"], "revoked");

    // The device re-enrolls with the certificate it kept.
    let device = Client::Identity {
        chain: &chain,
        key: &key,
    };
    let answer = est.post(device, "simplereenroll", &csr);
    let renewed = est.print_certs(&answer, "dev-renewed");
    let history = est.history("3012-000020");
    assert_eq!(status_of(&history, &serial_of(&renewed)).0, "valid");
    assert_eq!(
        status_of(&history, &old_serial),
        ("revoked".into(), Some("superseded".into()))
    );
}

#[test]
fn serverkeygen_answers_the_key_and_the_certificate_in_multipart() {
    let est = Est::start("");
    let (_, csr) = est.csr("skg", "/CN=3012-000020/serialNumber=000020", &[]);
    let answer = est.post(est.station(), "serverkeygen", &csr);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let content_type = answer.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/mixed; boundary=")
        .unwrap_or_else(|| panic!("not multipart/mixed: {content_type}"));
    let parts = multipart(&answer.text(), boundary);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].0.as_deref(), Some("application/pkcs8"));
    assert_eq!(
        parts[1].0.as_deref(),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    // The key (PKCS#8) and the certificate belong together, read by openssl.
    let key_b64 = est.file("skg.key.b64");
    std::fs::write(&key_b64, &parts[0].1).unwrap();
    let key_der = est.file("skg.key.der");
    tool_ok(
        "openssl",
        &[
            "base64",
            "-d",
            "-in",
            path(&key_b64),
            "-out",
            path(&key_der),
        ],
    );
    let key_pem = est.file("skg.key.pem");
    tool_ok(
        "openssl",
        &[
            "pkey",
            "-inform",
            "DER",
            "-in",
            path(&key_der),
            "-out",
            path(&key_pem),
        ],
    );
    let cert_answer = Answer {
        status: 200,
        headers: String::new(),
        body: parts[1].1.clone().into_bytes(),
    };
    let cert = est.print_certs(&cert_answer, "skg-cert");
    assert_eq!(pubkey_of_cert(&cert), pubkey_of_key(&key_pem));
    assert_chain_verifies_for(&est.chain_file("skg", &cert), &est.root, "3012-000020");
    let history = est.history("3012-000020");
    assert_eq!(history[0]["status"], "valid");
    assert_eq!(history[0]["requester"], "station:st1");
    // One valid certificate per id here too.
    est.post(est.station(), "serverkeygen", &csr)
        .refused(409, "already_certified");
}

/// The parts of a multipart body: (Content-Type, content).
fn multipart(body: &str, boundary: &str) -> Vec<(Option<String>, String)> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    for chunk in body.split(&delimiter).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let chunk = chunk.trim_start_matches("\r\n");
        let (head, content) = chunk.split_once("\r\n\r\n").expect("part headers");
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: ").map(str::to_string));
        parts.push((content_type, content.trim().to_string()));
    }
    parts
}

#[test]
fn bad_requests_are_refused_with_the_reason_and_change_nothing() {
    let est = Est::start("[models.A123]\nkey = \"p384\"\n");
    let before = est.ca.counts();
    let (_, good) = est.csr("good", "/CN=3012-000030/serialNumber=000030", &[]);

    // A CSR whose signature does not verify (its last signature byte flipped).
    let der_file = est.file("good.csr.der");
    let mut der = std::fs::read(&der_file).unwrap();
    *der.last_mut().unwrap() ^= 0x01;
    let forged = est.file("forged.der");
    std::fs::write(&forged, &der).unwrap();
    let forged_b64 = est.file("forged.b64");
    tool_ok(
        "openssl",
        &["base64", "-in", path(&forged), "-out", path(&forged_b64)],
    );
    for op in ["simpleenroll", "serverkeygen"] {
        let body = est
            .post(est.station(), op, &forged_b64)
            .refused(400, "bad_csr");
        assert!(body.contains("signature"), "{body}");
    }

    // Not base64; base64 but not DER; PEM instead of base64 DER.
    let junk = est.file("junk");
    std::fs::write(&junk, "this is not base64 at all!").unwrap();
    let body = est
        .post(est.station(), "simpleenroll", &junk)
        .refused(400, "not_base64");
    assert!(body.contains("base64"), "{body}");
    let not_der = est.file("notder");
    std::fs::write(&not_der, "aGVsbG8gd29ybGQ=").unwrap();
    let body = est
        .post(est.station(), "simpleenroll", &not_der)
        .refused(400, "bad_csr");
    assert!(body.contains("PKCS#10"), "{body}");
    let pem = est.file("good.csr.pem");
    tool_ok(
        "openssl",
        &[
            "req",
            "-inform",
            "DER",
            "-in",
            path(&der_file),
            "-out",
            path(&pem),
        ],
    );
    let body = est
        .post(est.station(), "simpleenroll", &pem)
        .refused(400, "not_base64");
    assert!(body.contains("PEM"), "{body}");

    // The wrong content type, and none.
    let answer = est.curl(
        est.station(),
        "simpleenroll",
        Some(("application/json", &good)),
    );
    let body = answer.refused(415, "unsupported_media_type");
    assert!(body.contains("application/pkcs10"), "{body}");

    // An id not in the profile's format, in the CN or the SAN; a SAN under another PEN.
    for (name, subject, extra) in [
        ("lower", "/CN=3012-abc/serialNumber=abc", vec![]),
        ("long", "/CN=TOOLONGMODEL-1", vec![]),
        ("nodash", "/CN=device 7", vec![]),
        ("mismatch", "/CN=3012-000031/serialNumber=000032", vec![]),
        (
            "pen",
            "/O=Acme",
            vec![
                "-addext",
                "subjectAltName=URI:urn:dev:ops:99999-3012-000033",
            ],
        ),
        (
            "two",
            "/CN=3012-000034",
            vec![
                "-addext",
                "subjectAltName=URI:urn:dev:ops:32473-3012-000035",
            ],
        ),
        ("none", "/O=Acme", vec![]),
    ] {
        let (_, csr) = est.csr(name, subject, &extra);
        let body = est
            .post(est.station(), "simpleenroll", &csr)
            .refused(400, "bad_id");
        assert!(body.len() > 20, "{name}: {body}");
    }
    // A label for another model than the CSR's id.
    let body = est
        .post(est.station(), "A123/simpleenroll", &good)
        .refused(400, "bad_id");
    assert!(
        body.contains("A123") && body.contains("3012-000030"),
        "{body}"
    );
    // A key that is not the profile's algorithm (A123 is P-384).
    let (_, p256) = est.csr("alg", "/CN=A123-000036", &[]);
    let body = est
        .post(est.station(), "A123/simpleenroll", &p256)
        .refused(400, "bad_csr");
    assert!(
        body.to_ascii_lowercase().contains("p384") || body.contains("P-384"),
        "{body}"
    );

    // A body over 1 MiB.
    let big = est.file("big");
    std::fs::write(&big, vec![b'A'; 1024 * 1024 + 1]).unwrap();
    let body = est
        .post(est.station(), "simpleenroll", &big)
        .refused(413, "body_too_large");
    assert!(body.contains("1048576"), "{body}");

    assert_eq!(est.ca.counts(), before, "no bad request changed the ledger");
    // And the good CSR still enrolls.
    assert_eq!(est.post(est.station(), "simpleenroll", &good).status, 200);
}

/// The Python client (`cryptography` + `requests`), certline-free.
fn python_client(est: &Est, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/est_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--url")
        .arg(&est.server.url)
        .arg("--root")
        .arg(&est.root)
        .arg("--work")
        .arg(&est.work)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "est_client.py {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_python_client_enrolls_re_enrolls_and_gets_a_server_generated_key() {
    let est = Est::start("");
    let station = path(&est.station).to_string();
    let report = python_client(
        &est,
        &[
            "--station",
            &station,
            "--id",
            "3012-000040",
            "--serverkeygen-id",
            "3012-000041",
        ],
    );
    // The client checked each answer itself (key matches, chain to the
    // root); here the CA's ledger must agree.
    let enrolled = report["enrolled_serial"].as_str().unwrap();
    let renewed = report["reenrolled_serial"].as_str().unwrap();
    let history = est.history("3012-000040");
    assert_eq!(
        status_of(&history, enrolled),
        ("revoked".into(), Some("superseded".into()))
    );
    assert_eq!(status_of(&history, renewed).0, "valid");
    let history = est.history("3012-000041");
    assert_eq!(
        status_of(&history, report["serverkeygen_serial"].as_str().unwrap()).0,
        "valid"
    );
    assert_eq!(report["revoked_reenroll_status"], 403);
}
