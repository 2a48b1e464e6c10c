//! CRLs partitioned by issuance month (issue 15): with a `crl_url`, each
//! device certificate's CDP names its month's CRL, each partition carries an
//! issuingDistributionPoint naming that URL, a revocation re-signs only its
//! certificate's partition, and RFC 5280 clients (openssl) find a revoked
//! device in the right one.

use std::path::Path;
use std::process::Command;

use crate::common;

use certline::ca::dir::{self, InitOptions, NewKeys};
use certline::ca::issuance::{CertAuthority, Clock, Requester};
use certline::pki::crl::Reason;
use certline::store::ledger::RevokeTarget;
use certline::wire::ca::BatchRequest;
use common::*;
use x509_parser::prelude::*;

const CRL_URL: &str = "http://pki.example/crl/issuing.crl";

/// The serials (hex) a DER CRL lists, and the URIs of its issuingDistributionPoint.
fn listed(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let (_, crl) = parse_x509_crl(der).unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    let mut idp = Vec::new();
    for ext in crl.extensions() {
        if let ParsedExtension::IssuingDistributionPoint(point) = ext.parsed_extension() {
            if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                for name in names {
                    if let GeneralName::URI(uri) = name {
                        idp.push(uri.to_string());
                    }
                }
            }
        }
    }
    (serials, idp)
}

fn serial_of(pem: &str) -> String {
    let der = ::pem::parse(pem).unwrap().into_contents();
    hex::encode(X509Certificate::from_der(&der).unwrap().1.raw_serial())
}

fn cdp_of(pem: &str) -> Vec<String> {
    let der = ::pem::parse(pem).unwrap().into_contents();
    certline::pki::urls::crl_urls(&X509Certificate::from_der(&der).unwrap().1)
}

fn open_at(dir: &Path, at: ::time::OffsetDateTime) -> CertAuthority {
    dir::open(dir, "partition-test-passphrase", None, Clock::fixed(at))
        .unwrap()
        .ca
}

/// The stored CRL of a scope: its number and DER.
fn stored(ca: &CertAuthority, scope: &str) -> (u64, Vec<u8>) {
    let (number, der, _) = ca.ledger().current_crl(scope).unwrap().unwrap();
    (number, der)
}

#[test]
fn a_revocation_re_signs_only_its_partition_and_a_crash_before_publishing_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let november = ::time::macros::datetime!(2026-11-20 10:00 UTC);
    let december = ::time::macros::datetime!(2026-12-02 10:00 UTC);
    dir::init(
        &ca_dir,
        &InitOptions {
            organization: "Partition Test".into(),
            pen: 32473,
            hosts: vec!["localhost".into()],
            max_batch: 100,
            crl_url: Some(CRL_URL.into()),
            ca_issuers_url: None,
            keys: NewKeys::Sealed,
            ledger: None,
        },
        "partition-test-passphrase",
        Clock::fixed(november),
    )
    .unwrap();
    let operator = Requester::operator("test");
    let mut ca = open_at(&ca_dir, november);
    let old = ca
        .issue_batch(&BatchRequest::for_ids(["3012-1"]), &operator, 1)
        .unwrap();
    ca.publish_if_behind().unwrap();
    drop(ca);
    let mut ca = open_at(&ca_dir, december);
    let new = ca
        .issue_batch(&BatchRequest::for_ids(["3012-2"]), &operator, 1)
        .unwrap();
    ca.publish_if_behind().unwrap();

    // Each certificate names its issuance month's CRL.
    let (old_pack, new_pack) = (&old.packs[0], &new.packs[0]);
    let nov_url = "http://pki.example/crl/issuing-2026-11.crl";
    let dec_url = "http://pki.example/crl/issuing-2026-12.crl";
    assert_eq!(cdp_of(&old_pack.cert_pem), [nov_url]);
    assert_eq!(cdp_of(&new_pack.cert_pem), [dec_url]);
    let scopes = ["issuing", "issuing:2026-11", "issuing:2026-12"];
    let before: Vec<(u64, Vec<u8>)> = scopes.iter().map(|s| stored(&ca, s)).collect();
    // Each partition names its own URL; the base names crl_url.
    for ((_, der), url) in before.iter().zip([CRL_URL, nov_url, dec_url]) {
        let (serials, idp) = listed(der);
        assert!(serials.is_empty());
        assert_eq!(idp, [url]);
    }

    // November's device is revoked; the process dies before any publication.
    ca.revoke(
        &RevokeTarget::DeviceId("3012-1".into()),
        Reason::KeyCompromise,
        &operator,
    )
    .unwrap();
    assert_eq!(stored(&ca, "issuing:2026-11"), before[1]);
    drop(ca);

    // The next start publishes what the crash left behind: November's
    // partition only, listing the revocation; December's and the base stay.
    let ca = open_at(&ca_dir, december);
    let after: Vec<(u64, Vec<u8>)> = scopes.iter().map(|s| stored(&ca, s)).collect();
    assert_eq!(after[0], before[0], "the base CRL was signed again");
    assert_eq!(after[2], before[2], "December's CRL was signed again");
    assert_eq!(after[1].0, before[1].0 + 1);
    assert_eq!(listed(&after[1].1).0, [serial_of(&old_pack.cert_pem)]);
    assert!(!listed(&after[2].1)
        .0
        .contains(&serial_of(&old_pack.cert_pem)));
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().unwrap()
}

/// pkilint's CRL linter where it is installed (`tests/prerequisites.d/20-pkilint.sh`).
fn pkilint_findings(file: &Path) -> Option<String> {
    let out = Command::new("lint_crl")
        .args(["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING"])
        .arg(file)
        .output()
        .ok()?;
    Some(text(&out.stdout))
}

#[test]
fn partitions_verify_with_openssl_and_a_revoked_device_is_found_in_its_partition() {
    revoked_devices_are_found_in_their_partition(&Ca::init(&["--crl-url", CRL_URL]));
}

/// The same with the ledger on PostgreSQL (its store reads and registers
/// partitions with SQL of its own).
#[test]
fn on_postgresql_too_a_revoked_device_is_found_in_its_partition() {
    let Some(pg) = crate::pg_support::PgServer::start() else {
        return;
    };
    pg.create_database("partitions");
    revoked_devices_are_found_in_their_partition(&Ca::init(&[
        "--ledger",
        &pg.url("partitions"),
        "--ledger-password-file",
        path(&pg.password_file()),
        "--crl-url",
        CRL_URL,
    ]));
}

/// Two devices issued this month and a station credential; the first device
/// and the station revoked: each CRL verifies with openssl and is clean under
/// pkilint, the device is listed in this month's partition and the station
/// in the base, and `openssl verify -crl_check` given every CRL refuses the
/// revoked device and accepts its neighbour.
fn revoked_devices_are_found_in_their_partition(ca: &Ca) {
    let packs = ca.issue("packs", &["3012-1", "3012-2"]);
    let station = ca.enroll("station", "st1");
    ok(&["ca", "revoke", "--dir", ca.dir(), "--id", "3012-1"]);
    let station_serial = serial_of(&std::fs::read_to_string(&station).unwrap());
    ok(&[
        "ca",
        "revoke",
        "--dir",
        ca.dir(),
        "--serial",
        &station_serial,
    ]);

    let crl_file = ca.file("crls.pem");
    ok(&["ca", "crl", "--dir", ca.dir(), "--out", path(&crl_file)]);
    let crls = pem_file(&crl_file, "X509 CRL");
    // The base, the root's, this month's partition.
    assert_eq!(crls.len(), 3, "{crls:?}");
    let chain = ca.file("cas.pem");
    let root = std::fs::read_to_string(ca.dir.join("root.pem")).unwrap();
    let issuing = std::fs::read_to_string(ca.dir.join("issuing.pem")).unwrap();
    std::fs::write(&chain, format!("{root}{issuing}")).unwrap();
    let month = certline::pki::crl::partition_of(::time::OffsetDateTime::now_utc());
    let partition_url = format!("http://pki.example/crl/issuing-{month}.crl");
    let mut partition_serials = None;
    for (n, der) in crls.iter().enumerate() {
        let file = ca.file(&format!("crl-{n}.pem"));
        std::fs::write(
            &file,
            ::pem::encode(&::pem::Pem::new("X509 CRL", der.clone())),
        )
        .unwrap();
        // Every CRL verifies against its issuer.
        let out = openssl(&["crl", "-noout", "-CAfile", path(&chain), "-in", path(&file)]);
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success() && said.contains("verify OK"), "{said}");
        let (serials, idp) = listed(der);
        if idp == [partition_url.as_str()] {
            partition_serials = Some(serials.clone());
        }
        if idp == [CRL_URL] {
            // The base keeps service credentials; the device is not there.
            assert_eq!(serials.as_slice(), std::slice::from_ref(&station_serial));
        }
        // pkilint stays clean on every CRL the CA publishes (the root's is an ARL).
        if n != 1 {
            if let Some(report) = pkilint_findings(&file) {
                assert!(report.trim().is_empty(), "CRL {n}: {report}");
            }
        }
    }
    let device =
        |id: &str| serial_of(&std::fs::read_to_string(packs.join(id).join("chain.pem")).unwrap());
    assert_eq!(partition_serials, Some(vec![device("3012-1")]));

    // An RFC 5280 client given every CRL picks the partition the device's
    // CDP names: the revoked device is refused, its neighbour accepted.
    let verify = |id: &str| {
        let pack = packs.join(id);
        openssl(&[
            "verify",
            "-crl_check",
            "-CAfile",
            path(&pack.join("root.pem")),
            "-untrusted",
            path(&pack.join("chain.pem")),
            "-CRLfile",
            path(&crl_file),
            path(&pack.join("chain.pem")),
        ])
    };
    let out = verify("3012-1");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success() && said.contains("revoked"), "{said}");
    let out = verify("3012-2");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
