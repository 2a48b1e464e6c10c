//! The ledger keeps what the CA issued (issue 13): the DER of every
//! certificate, shown by `ca show` with its state history, and the
//! auditors' export (`ca export --since --format csv|jsonl`).

use crate::common;

use common::*;

/// `ca export --since SINCE --format FORMAT` for this CA (more arguments may follow).
fn export<'a>(ca: &'a Ca, since: &'a str, format: &'a str) -> Vec<&'a str> {
    vec![
        "ca",
        "export",
        "--dir",
        ca.dir(),
        "--since",
        since,
        "--format",
        format,
    ]
}

fn show_json(ca: &Ca, by: &str, value: &str) -> certline::wire::ca::CertShow {
    serde_json::from_str(&ok(&["ca", "show", "--dir", ca.dir(), by, value, "--json"])).unwrap()
}

#[test]
fn the_ledger_keeps_every_certificate_and_shows_it_with_its_states() {
    let ca = Ca::init(&[]);
    let packs = ca.issue("packs", &["3012-100", "3012-101"]);
    let device = pem_file(&packs.join("3012-100/chain.pem"), "CERTIFICATE")[0].clone();

    // PEM by id: exactly the certificate in the pack.
    let shown = ok(&["ca", "show", "--dir", ca.dir(), "--id", "3012-100"]);
    assert_eq!(
        ::pem::parse(shown.as_bytes()).unwrap().contents(),
        device.as_slice()
    );

    // JSON by serial: the record, its states, the same PEM.
    let serial = show_json(&ca, "--id", "3012-100").record.serial;
    let record = show_json(&ca, "--serial", &serial);
    assert_eq!(record.record.subject, "3012-100");
    assert_eq!(
        ::pem::parse(record.pem.as_deref().unwrap())
            .unwrap()
            .contents(),
        device.as_slice()
    );
    let states: Vec<_> = record.history.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(states, ["reserved", "valid"]);
    assert_eq!(record.history[0].by.as_deref(), Some("ca issue"));

    // Revoked: the history says when, by whom and why; the PEM stays.
    ca.revoke("3012-100", "key-compromise");
    let record = show_json(&ca, "--serial", &serial);
    let last = record.history.last().unwrap();
    assert_eq!(last.status.as_str(), "revoked");
    assert_eq!(last.by.as_deref(), Some("ca revoke"));
    assert_eq!(last.reason.as_deref(), Some("key-compromise"));
    assert!(record.pem.is_some());

    // Service credentials are kept too (the CA's own TLS certificate among them).
    let station = ca.enroll("station", "st1");
    let cred = pem_file(&station, "CERTIFICATE")[0].clone();
    let shown = show_json(&ca, "--id", "station:st1");
    assert_eq!(
        ::pem::parse(shown.pem.unwrap()).unwrap().contents(),
        cred.as_slice()
    );
    assert!(show_json(&ca, "--id", "ca:ca").pem.is_some());
}

#[test]
fn show_refuses_what_the_ledger_does_not_hold_naming_it() {
    let ca = Ca::init(&[]);
    let err = fails(&["ca", "show", "--dir", ca.dir(), "--id", "3012-404"]);
    assert!(err.contains("no certificate for 3012-404"), "{err}");
    let err = fails(&[
        "ca",
        "show",
        "--dir",
        ca.dir(),
        "--serial",
        "0123456789abcdef0123456789abcdef",
    ]);
    assert!(err.contains("no certificate with serial"), "{err}");
    let err = fails(&["ca", "show", "--dir", ca.dir(), "--serial", "xyz"]);
    assert!(err.contains("--serial"), "{err}");
    let err = fails(&["ca", "show", "--dir", ca.dir()]);
    assert!(err.contains("--id") || err.contains("--serial"), "{err}");
}

#[test]
fn export_lists_issued_and_revoked_certificates_since_a_date() {
    let ca = Ca::init(&[]);
    ca.issue("packs", &["3012-200", "3012-201"]);
    ca.revoke("3012-201", "superseded");

    let csv = ok(&export(&ca, "2000-01-01", "csv"));
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    for column in [
        "id",
        "serial",
        "fingerprint",
        "status",
        "issued_at",
        "revoked_at",
        "requester",
        "reason",
    ] {
        assert!(header.contains(&column.to_string()), "{column}: {header:?}");
    }
    let rows: Vec<certline::wire::ca::ExportRow> =
        reader.deserialize().map(Result::unwrap).collect();
    let row = |id: &str| rows.iter().find(|r| r.id == id).unwrap().clone();
    assert_eq!(row("3012-200").status.as_str(), "valid");
    assert_eq!(row("3012-200").requester, "ca issue");
    assert!(row("3012-200").fingerprint.is_some());
    assert_eq!(row("3012-201").status.as_str(), "revoked");
    assert_eq!(row("3012-201").reason.as_deref(), Some("superseded"));
    assert!(
        rows.iter().any(|r| r.id == "ca:ca"),
        "the CA's own TLS certificate"
    );

    let out = ca.file("export.jsonl");
    let mut args = export(&ca, "2000-01-01T00:00:00Z", "jsonl");
    args.extend(["--out", path(&out)]);
    ok(&args);
    let lines: Vec<certline::wire::ca::ExportRow> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, rows);

    // Nothing happened after a future date: the header alone.
    let csv = ok(&export(&ca, "2999-01-01", "csv"));
    assert_eq!(csv.lines().count(), 1, "{csv}");

    let err = fails(&export(&ca, "yesterday", "csv"));
    assert!(
        err.contains("--since") && err.contains("yesterday"),
        "{err}"
    );
    let err = fails(&export(&ca, "2000-01-01", "xml"));
    assert!(err.contains("xml"), "{err}");
}
