//! Crash safety: the station is killed with SIGKILL during a fetch, between a
//! take and its result, and during retention; after a restart every pack is
//! in exactly one state, none was lost or handed out twice, the CA's ledger
//! and the stock agree, and no id has two valid certificates.
//!
//! The station stops at a named fail point when `FAILPOINTS` says so
//! (`FAILPOINTS=<point>=pause`: it prints "station reached fail point
//! <point>" and waits); the test then kills it for real. These tests need
//! the binary built with `--features certline/failpoints`.

use crate::station_support as support;

use support::*;

fn fetch_process(factory: &Factory, pause_at: &str) -> Proc {
    let mut cmd = certline();
    cmd.env("FAILPOINTS", format!("{pause_at}=pause")).args([
        "station",
        "fetch",
        "--dir",
        factory.dir(),
        "--day",
        &DAY.to_string(),
    ]);
    // `fetch` prints no URL; its first progress line on stderr is the marker.
    Proc::start_stderr(cmd)
}

#[test]
fn killed_during_a_fetch_the_next_fetch_completes_it() {
    let factory = Factory::new(&["3012"], &[], &["--chunk-size", "10"]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,30")]);
    let all = ids("3012", 1, 30, 6);

    // Killed after the CA issued the first chunk, before the station stored it.
    let mut fetch = fetch_process(&factory, "fetch-before-store");
    fetch.wait_stderr("station reached fail point fetch-before-store");
    fetch.kill();
    assert!(
        factory.packs().is_empty(),
        "nothing may be stored from the lost chunk"
    );
    let issued = factory.ca.history("3012-000001");
    assert_eq!(issued.len(), 1, "the CA did issue the first chunk");

    // Killed after storing the first chunk.
    let mut fetch = fetch_process(&factory, "fetch-after-store");
    fetch.wait_stderr("station reached fail point fetch-after-store");
    fetch.kill();
    assert_eq!(factory.packs().len(), 10);
    // The next chunk may have been issued while the first was stored: the CA
    // can hold certificates the stock never saw, but never two for one id.
    for id in &all {
        let valid = factory
            .ca
            .history(id)
            .iter()
            .filter(|r| r["status"] == "valid")
            .count();
        assert!(valid <= 1, "{id} has {valid} valid certificates");
    }

    // The next run completes it without a second valid certificate for any id.
    let report = factory.fetch(DAY);
    assert_eq!(report["fetch"]["fetched"], 20, "{report}");
    assert_eq!(report["fetch"]["already_in_stock"], 10, "{report}");
    assert_eq!(factory.packs().len(), 30);
    for (_, _, state) in factory.packs() {
        assert_eq!(state, "stocked");
    }
    factory.assert_agree(&all);
    // The certificates of the lost chunk are revoked (superseded) at the CA.
    let history = factory.ca.history("3012-000001");
    assert!(
        history
            .iter()
            .any(|r| r["status"] == "revoked" && r["reason"] == "superseded"),
        "{history:?}"
    );
}

#[test]
fn killed_between_take_and_result_the_pack_waits_for_its_line() {
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    let mut station = factory.serve();
    let line = factory.line("line-1", &station);
    let _other = factory.line("line-2", &station);
    let pack = line.take("3012-000001").unwrap();
    let second = line.take("3012-000002").unwrap();
    line.received("3012-000002", &second.serial).unwrap();
    station.kill();

    let station = factory.serve();
    let line = Line::new(&station.url, &factory.ca.tmp.path().join("line-line-1.pem"));
    let other = Line::new(&station.url, &factory.ca.tmp.path().join("line-line-2.pem"));
    assert_eq!(factory.states("3012-000001"), ["handed_out"]);
    assert_eq!(factory.states("3012-000002"), ["received"]);
    assert_eq!(code(other.take("3012-000001")), "handed_out_elsewhere");
    line.received("3012-000001", &pack.serial).unwrap();
    line.written("3012-000001", &pack.serial, &pack.fingerprint)
        .unwrap();
    line.failed("3012-000002", &second.serial, "power cut on the line")
        .unwrap();
    factory.wait_device("3012-000002", "replaced", |r| {
        r["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["state"] == "stocked")
    });
    other.provision("3012-000002");
    factory.assert_agree(&ids("3012", 1, 3, 6));
}

#[test]
fn killed_during_retention_no_key_byte_survives_the_restart() {
    let factory = Factory::new(&["3012"], &[], &["--retention", "delete"]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,2")]);
    factory.fetch(DAY);
    let conn = rusqlite::Connection::open(factory.stock_db()).unwrap();
    let sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed_key FROM packs WHERE id = '3012-000001'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    let mut station =
        factory.serve_with(&[("FAILPOINTS", "retention-before-checkpoint=pause")], &[]);
    let cred = factory.ca.enroll("line", "line-1");
    let url = station.url.clone();
    // The written report never gets its answer: the station stops mid-retention.
    let reporter = std::thread::spawn(move || {
        let line = Line::new(&url, &cred);
        let pack = line.take("3012-000001").unwrap();
        let _ = line.written("3012-000001", &pack.serial, &pack.fingerprint);
        pack
    });
    station.wait_stderr("station reached fail point retention-before-checkpoint");
    station.kill();
    let pack = reporter.join().unwrap();

    // Restarted: the pack is deleted (the commit happened), its key is gone
    // from the database file and from the WAL, and a repeated report says so.
    let station = factory.serve();
    assert_eq!(factory.states("3012-000001"), ["deleted"]);
    assert!(
        !file_contains(&factory.stock_db(), &sealed),
        "key bytes in the database file"
    );
    assert!(
        !file_contains(&factory.dir.join("stock.db-wal"), &sealed),
        "key bytes in the WAL"
    );
    let line = Line::new(&station.url, &factory.ca.tmp.path().join("line-line-1.pem"));
    assert_eq!(
        code(line.written("3012-000001", &pack.serial, &pack.fingerprint)),
        "duplicate_report"
    );
    line.provision("3012-000002");
    factory.assert_agree(&ids("3012", 1, 2, 6));
}

#[test]
fn serve_revokes_what_an_interrupted_fetch_left_valid_at_the_ca() {
    let factory = Factory::new(&["3012"], &[], &["--chunk-size", "10"]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,10")]);
    let all = ids("3012", 1, 10, 6);
    let mut fetch = fetch_process(&factory, "fetch-before-store");
    fetch.wait_stderr("station reached fail point fetch-before-store");
    fetch.kill();
    assert!(factory.packs().is_empty());
    assert_eq!(factory.ca.history("3012-000001")[0]["status"], "valid");
    // No fetch follows: serving alone cleans up the orphans.
    let _station = factory.serve();
    for id in &all {
        factory.wait_device_ca(id);
    }
    factory.wait_queue_empty();
    factory.assert_agree(&all);
    assert_eq!(factory.audit(1)["intact"], true);
}

/// What the crash matrix does to reach a fail point in a serving station.
#[derive(Clone, Copy)]
enum Step {
    Take,
    Received,
    Written,
    Failed,
    /// A hand-out left to time out (the station is set up with a 1 s timeout).
    TimeOut,
    Discard,
    Rework,
}

/// Kills the station at every state change it makes, restarts it, and
/// checks the invariants: every pack in one state, the stock and the CA's
/// ledger agree (no id with two valid certificates, no orphan once `serve`
/// ran), the audit chain intact, and the factory goes on.
#[test]
fn killed_at_every_state_change_the_station_keeps_its_invariants() {
    let cases: &[(&str, Step)] = &[
        ("take-after-commit", Step::Take),
        ("received-after-commit", Step::Received),
        ("written-after-commit", Step::Written),
        ("retention-before-checkpoint", Step::Written),
        ("failed-after-commit", Step::Failed),
        ("replace-after-commit", Step::Failed),
        ("timeout-after-commit", Step::TimeOut),
        ("discard-after-commit", Step::Discard),
        ("queue-after-ca", Step::Discard),
        ("rework-after-commit", Step::Rework),
    ];
    for &(point, step) in cases {
        eprintln!("---- crash matrix: {point}");
        let mut extra = vec!["--retention", "delete"];
        if matches!(step, Step::TimeOut) {
            extra.extend(["--handout-timeout", "1"]);
        }
        let factory = Factory::new(&["3012"], &[], &extra);
        factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
        factory.fetch(DAY);
        let cred = factory.ca.enroll("line", "line-1");
        if matches!(step, Step::Rework) {
            let station = factory.serve();
            Line::new(&station.url, &cred).provision("3012-000001");
        }
        let mut station = factory.serve_with(&[("FAILPOINTS", &format!("{point}=pause"))], &[]);
        let url = station.url.clone();
        let root = factory.dir.join("root.pem");
        let dir = factory.dir.clone();
        // The step runs on its own thread: its answer never comes.
        let worker = std::thread::spawn(move || {
            let line = Line::new(&url, &cred);
            let admin = |args: &[&str]| {
                let mut all = args.to_vec();
                all.extend(["--url", &url, "--root", crate::common::path(&root)]);
                let _ = run(&all);
            };
            let _ = &dir;
            match step {
                Step::Take => drop(line.take("3012-000001")),
                Step::Received => {
                    let pack = line.take("3012-000001").unwrap();
                    let _ = line.received("3012-000001", &pack.serial);
                }
                Step::Written => {
                    let pack = line.take("3012-000001").unwrap();
                    let _ = line.received("3012-000001", &pack.serial);
                    let _ = line.written("3012-000001", &pack.serial, &pack.fingerprint);
                }
                Step::Failed => {
                    let pack = line.take("3012-000001").unwrap();
                    let _ = line.failed("3012-000001", &pack.serial, "crc error");
                }
                Step::TimeOut => drop(line.take("3012-000001")),
                Step::Discard => admin(&["station", "admin", "discard", "--model", "3012"]),
                Step::Rework => admin(&[
                    "station",
                    "admin",
                    "rework",
                    "--id",
                    "3012-000001",
                    "--reason",
                    "board replaced",
                ]),
            }
        });
        station.wait_stderr(&format!("station reached fail point {point}"));
        station.kill();
        let _ = worker.join();

        // Restarted: the invariants hold, and the work goes on.
        factory.assert_one_state_each();
        let station = factory.serve();
        factory.wait_queue_empty();
        factory.assert_one_state_each();
        factory.assert_agree(&ids("3012", 1, 3, 6));
        let audit = factory.audit(1);
        assert_eq!(audit["intact"], true, "{point}: {audit}");
        if !matches!(step, Step::Discard | Step::TimeOut) {
            let line = Line::new(&station.url, &factory.ca.tmp.path().join("line-line-1.pem"));
            line.provision("3012-000003");
        }
    }
}
