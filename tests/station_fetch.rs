//! The day's fetch against a real CA process: chunks with progress, a CA that
//! is down or answers garbage (nothing stored, a clear error), and resuming
//! after a response that never reached the stock (the unknown certificate is
//! revoked by the CA as the new one is issued: never two valid certificates).

use crate::common;
use crate::station_support as support;

use common::path;
use support::*;

/// A TLS server with a certificate from the test CA that answers every
/// request with 200 and `body`: a CA gone mad.
fn garbage_ca(factory: &Factory, name: &str, body: &'static str) -> String {
    let cred = certline::pki::credential::Credential::load(&factory.ca.enroll("ca", name)).unwrap();
    let tls =
        certline::service::tls::server_config(&cred, certline::service::tls::ClientAuth::Optional)
            .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("https://{}", listener.local_addr().unwrap()))
                .unwrap();
            let router = axum::Router::new().fallback(move || async move { body });
            certline::service::server::serve(listener, tls, router, std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

#[test]
fn fetch_in_chunks_with_progress_and_refusals_that_store_nothing() {
    let mut factory = Factory::new(&["3012", "A123"], &["X9"], &["--chunk-size", "7"]);
    factory.plan(
        "plan.csv",
        &[
            &format!("{DAY},3012,000001,20"),
            &format!("{DAY},A123,000001,5"),
            &format!("{DAY},X9,1,4"),
        ],
    );
    let wanted: Vec<String> = ids("3012", 1, 20, 6)
        .into_iter()
        .chain(ids("A123", 1, 5, 6))
        .collect();

    // A CA that answers garbage: a clear error, nothing stored.
    for (n, body) in ["this is not JSON at all", r#"{"live": "nope"}"#]
        .into_iter()
        .enumerate()
    {
        let url = garbage_ca(&factory, &format!("impostor{n}"), body);
        let err = fails(&[
            "station",
            "fetch",
            "--dir",
            factory.dir(),
            "--day",
            &DAY.to_string(),
            "--ca",
            &url,
        ]);
        assert!(err.contains("not a valid response"), "{err}");
        assert!(err.contains("0 of 25 packs are in stock"), "{err}");
        assert!(factory.packs().is_empty());
    }

    // The CA is down: a clear error naming it, nothing stored.
    factory.stop_ca();
    let err = fails(&[
        "station",
        "fetch",
        "--dir",
        factory.dir(),
        "--day",
        &DAY.to_string(),
    ]);
    assert!(
        err.contains("cannot reach") && err.contains(&factory.ca_url),
        "{err}"
    );
    assert!(err.contains("Run the fetch again"), "{err}");
    assert!(factory.packs().is_empty());
    factory.start_ca();

    // The real fetch: 25 packs in chunks of 7, progress on stderr.
    let out = run(&[
        "station",
        "fetch",
        "--dir",
        factory.dir(),
        "--day",
        &DAY.to_string(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let progress = common::text(&out.stderr);
    assert!(progress.contains("fetch: 0/25 packs"), "{progress}");
    assert!(progress.contains("fetch: 25/25 packs (100%)"), "{progress}");
    let stdout = common::text(&out.stdout);
    assert!(stdout.contains("fetched 25 pack(s)"), "{stdout}");
    assert!(
        stdout.contains("X9: 4 planned id(s) carry no certificate; skipped"),
        "{stdout}"
    );
    assert_eq!(factory.packs().len(), 25);
    factory.assert_agree(&wanted);

    // Again: nothing left to fetch, nothing asked twice.
    let again = factory.fetch(DAY);
    assert_eq!(again["fetch"]["fetched"], 0, "{again}");
    assert_eq!(again["fetch"]["already_in_stock"], 25, "{again}");
    let issued: i64 = factory
        .ca
        .counts()
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "device")
        .map(|r| r["count"].as_i64().unwrap())
        .sum();
    assert_eq!(issued, 25, "the CA issued more than one certificate per id");

    // Keys at rest are sealed: no PEM private key in the stock file or its WAL.
    for file in [factory.stock_db(), factory.dir.join("stock.db-wal")] {
        assert!(
            !file_contains(&file, b"PRIVATE KEY"),
            "{} holds a clear key",
            file.display()
        );
    }
}

#[test]
fn a_fetch_resumes_over_certificates_that_never_reached_the_stock() {
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,10")]);
    let wanted = ids("3012", 1, 10, 6);
    // As if an earlier fetch's answer was lost: the CA issued certificates
    // for three ids that the stock never saw.
    let lost = factory
        .ca
        .ids_file("lost.txt", &["3012-000002", "3012-000005", "3012-000009"]);
    let out_dir = factory.ca.tmp.path().join("lost-packs");
    common::ok(&[
        "ca",
        "request",
        "--url",
        &factory.ca_url,
        "--credential",
        path(&factory.station_cred),
        "--ids",
        path(&lost),
        "--out",
        path(&out_dir),
    ]);
    let lost_serial = factory.ca.history("3012-000005")[0]["serial"]
        .as_str()
        .unwrap()
        .to_string();

    let report = factory.fetch(DAY);
    assert_eq!(report["fetch"]["fetched"], 10, "{report}");
    assert_eq!(report["fetch"]["superseded_unknown"], 3, "{report}");
    // The lost certificate is revoked (superseded), the station's one is the valid one.
    let history = factory.ca.history("3012-000005");
    let old = history
        .iter()
        .find(|r| r["serial"] == lost_serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "revoked", "{history:?}");
    assert_eq!(old["reason"], "superseded", "{history:?}");
    factory.assert_agree(&wanted);
}
