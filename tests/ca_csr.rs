//! Black-box tests of the CA's path for keys born in the device (`POST
//! /v1/csr`): the real binary and TLS; requests built as a device builds
//! them (`certline::pki::csr`), certificates read back with x509-parser.

use crate::ca::{identity_of, post};
use crate::common::*;

use base64::Engine;
use certline::pki::csr;
use certline::pki::profile::KeyAlgorithm;
use x509_parser::prelude::*;

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

fn body(id: &str, der: &[u8], replaces: Option<&str>) -> Vec<u8> {
    let mut json = serde_json::json!({"id": id, "csr": b64(der)});
    if let Some(serial) = replaces {
        json["replaces"] = serde_json::json!(serial);
    }
    serde_json::to_vec(&json).unwrap()
}

fn cert_of(reply: &serde_json::Value) -> Vec<u8> {
    certline::pki::pem_blocks(reply["cert_pem"].as_str().unwrap(), "CERTIFICATE")
        .unwrap()
        .remove(0)
}

struct Setup {
    ca: Ca,
    server: Server,
    root: Vec<u8>,
    station: std::path::PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let ca = Ca::init(&[]);
        let server = ca.serve(&[]);
        let root = pem_file(&ca.dir.join("root.pem"), "CERTIFICATE").remove(0);
        let station = ca.enroll("station", "st1");
        Setup {
            ca,
            server,
            root,
            station,
        }
    }

    fn post(&self, body: &[u8]) -> (u16, serde_json::Value) {
        post(
            &self.server.url,
            tls_client(&self.root, Some(identity_of(&self.station, &self.station))),
            "/v1/csr",
            body,
        )
        .unwrap()
    }
}

#[test]
fn a_csr_gets_a_certificate_for_its_key_built_from_the_id_only() {
    let s = Setup::new();
    let (key, _) = csr::generate(KeyAlgorithm::P256, "x").unwrap();
    // The request asks for another id, extra names and CA:TRUE: all ignored.
    let der = csr::request_for(&key, "9999-666", |params| {
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("evil.example".try_into().unwrap()),
            rcgen::SanType::URI("urn:dev:ops:32473-9999-666".try_into().unwrap()),
        ];
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    })
    .unwrap();
    let (status, reply) = s.post(&body("3012-1", &der, None));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["id"], "3012-1");
    assert!(reply.get("key_pem").is_none(), "no key travels: {reply}");
    let cert_der = cert_of(&reply);
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    // The certified key is the device's own.
    let verified = csr::verify(&der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        verified.key.public_key()
    );
    // Names and extensions come from the id and the profile.
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cn, vec!["3012-1"]);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("urn:dev:ops:32473-3012-1"), "{names:?}");
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    // The chain verifies for the id, as a pack's does.
    let dir = s.ca.file("signed");
    std::fs::create_dir_all(&dir).unwrap();
    let chain = format!(
        "{}{}",
        reply["cert_pem"].as_str().unwrap(),
        reply["issuing_pem"].as_str().unwrap()
    );
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    std::fs::write(dir.join("root.pem"), reply["root_pem"].as_str().unwrap()).unwrap();
    assert_chain_verifies_for(&dir.join("chain.pem"), &dir.join("root.pem"), "3012-1");
    // Recorded in the ledger like any other issuance, by this station.
    let history = s.ca.history("3012-1");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["status"], "valid");
    assert_eq!(history[0]["requester"], "station:st1");
    assert_eq!(history[0]["serial"], reply["serial"]);
}

#[test]
fn bad_csrs_are_refused_by_name_and_issue_nothing() {
    let s = Setup::new();
    let before = s.ca.counts();
    let (key, good) = csr::generate(KeyAlgorithm::P256, "3012-2").unwrap();
    let _ = key;

    // A signature that does not verify: one bit of the signed part changed.
    let verified = csr::verify(&good).unwrap();
    let public = verified.key.public_key().to_vec();
    let at = good
        .windows(public.len())
        .position(|w| w == public.as_slice())
        .unwrap();
    let mut forged = good.clone();
    forged[at + 10] ^= 0x01;
    // An EC point with one bit changed is (almost always) off the curve or
    // another key: either way no proof of possession.
    let (status, reply) = s.post(&body("3012-2", &forged, None));
    assert_eq!(
        (status, reply["code"].as_str()),
        (400, Some("bad_csr")),
        "{reply}"
    );
    assert!(
        reply["error"].as_str().unwrap().contains("3012-2"),
        "{reply}"
    );

    // Another algorithm than the model's (the default profile is P-256).
    let (_, p384) = csr::generate(KeyAlgorithm::P384, "3012-2").unwrap();
    let (status, reply) = s.post(&body("3012-2", &p384, None));
    assert_eq!(
        (status, reply["code"].as_str()),
        (400, Some("bad_csr")),
        "{reply}"
    );
    assert!(
        reply["error"].as_str().unwrap().contains("asks for p256"),
        "{reply}"
    );

    // Over 16 KiB, and not DER.
    let big = vec![0x30u8; csr::MAX_CSR_BYTES + 1];
    let (status, reply) = s.post(&body("3012-2", &big, None));
    assert_eq!(
        (status, reply["code"].as_str()),
        (400, Some("bad_csr")),
        "{reply}"
    );
    assert!(
        reply["error"].as_str().unwrap().contains("limit"),
        "{reply}"
    );
    let (status, reply) = s.post(&body("3012-2", b"hello, CA", None));
    assert_eq!(
        (status, reply["code"].as_str()),
        (400, Some("bad_csr")),
        "{reply}"
    );
    assert!(
        reply["error"].as_str().unwrap().contains("not a DER"),
        "{reply}"
    );
    let (status, reply) = s.post(br#"{"id": "3012-2", "csr": "%%%"}"#);
    assert_eq!(
        (status, reply["code"].as_str()),
        (400, Some("bad_csr")),
        "{reply}"
    );

    // A bad id, with a good request.
    let (status, reply) = s.post(&body("3012_2", &good, None));
    assert_eq!(
        (status, reply["code"].as_str()),
        (400, Some("bad_request")),
        "{reply}"
    );

    // None of it reached the ledger.
    assert_eq!(s.ca.counts(), before);
    assert!(s.ca.history("3012-2").is_empty());

    // Only a station may ask.
    let line = s.ca.enroll("line", "line-1");
    let (status, _) = post(
        &s.server.url,
        tls_client(&s.root, Some(identity_of(&line, &line))),
        "/v1/csr",
        &body("3012-2", &good, None),
    )
    .unwrap();
    assert_eq!(status, 403);
}

#[test]
fn a_second_csr_for_a_certified_id_is_refused_unless_it_replaces() {
    let s = Setup::new();
    let (_, first) = csr::generate(KeyAlgorithm::P256, "3012-3").unwrap();
    let (status, one) = s.post(&body("3012-3", &first, None));
    assert_eq!(status, 200, "{one}");
    let old = one["serial"].as_str().unwrap().to_string();

    // A new key for the same id, not named as a replacement: refused.
    let (_, second) = csr::generate(KeyAlgorithm::P256, "3012-3").unwrap();
    let (status, reply) = s.post(&body("3012-3", &second, None));
    assert_eq!(
        (status, reply["code"].as_str()),
        (409, Some("already_certified")),
        "{reply}"
    );
    // So is a pack for it (one valid certificate per id, whoever made the key).
    let (status, _) = post(
        &s.server.url,
        tls_client(&s.root, Some(identity_of(&s.station, &s.station))),
        "/v1/packs",
        br#"{"items": [{"id": "3012-3"}]}"#,
    )
    .unwrap();
    assert_eq!(status, 409);

    // The re-issue path: names the old one, which is revoked in the same step.
    let (status, two) = s.post(&body("3012-3", &second, Some(&old)));
    assert_eq!(status, 200, "{two}");
    let history = s.ca.history("3012-3");
    let valid: Vec<_> = history.iter().filter(|r| r["status"] == "valid").collect();
    assert_eq!(valid.len(), 1, "{history:?}");
    assert_eq!(valid[0]["serial"], two["serial"]);
    let revoked = history
        .iter()
        .find(|r| r["serial"] == old.as_str())
        .unwrap();
    assert_eq!(revoked["reason"], "superseded");
}
