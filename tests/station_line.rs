//! The line-facing API of a serving station (real processes, real mTLS):
//! take, received, written, failed with every refusal; revoke and replace on
//! failure and on hand-out timeout; the factory going on while the CA is down
//! (the CA work waits durably); retention that deletes key bytes from the file
//! and its WAL; a tampered row quarantined and never handed out.

use crate::common;
use crate::station_support as support;

use certline::wire::station::PackState;
use support::*;

#[test]
fn takes_and_results_with_every_refusal() {
    let factory = Factory::new(&["3012", "A123"], &["X9"], &[]);
    factory.plan(
        "plan.csv",
        &[
            &format!("{DAY},3012,000001,6"),
            &format!("{DAY},X9,1,2"),
            &format!("{NEXT_DAY},A123,000001,2"),
        ],
    );
    factory.fetch(DAY);
    factory.fetch(NEXT_DAY);
    let station = factory.serve();
    let line1 = factory.line("line-1", &station);
    let line2 = factory.line("line-2", &station);

    // Ids the station must refuse, each with its own code.
    assert_eq!(code(line1.take("3012000001")), "bad_request");
    assert_eq!(code(line1.take("3012-999999")), "not_in_plan");
    assert_eq!(code(line1.take("X9-1")), "no_certificate_model");
    assert_eq!(code(line1.take("QQ1-1")), "unknown_model");
    assert_eq!(code(line1.take("A123-000001")), "not_planned_today");

    // A good take: a complete pack whose certificate names the id.
    let id = "3012-000001";
    let pack = line1.take(id).unwrap();
    assert_eq!(pack.id, id);
    assert!(!pack.again);
    let chain = certline::pki::pem_blocks(&pack.chain_pem, "CERTIFICATE").unwrap();
    assert_eq!(chain.len(), 2, "device cert then issuing CA");
    assert_eq!(certline::pki::fingerprint(&chain[0]), pack.fingerprint);
    let identity = certline::pki::identity::device_identity(&chain[0]).unwrap();
    assert_eq!(identity.id.to_string(), id);
    assert_eq!(identity.serial_hex, pack.serial);
    assert!(pack
        .key_pem
        .as_deref()
        .is_some_and(|k| k.contains("PRIVATE KEY")));
    // Another line may not take it nor report on it; the same line gets it again.
    assert_eq!(code(line2.take(id)), "handed_out_elsewhere");
    assert_eq!(code(line2.received(id, &pack.serial)), "not_your_pack");
    let again = line1.take(id).unwrap();
    assert!(again.again);
    assert_eq!(again.serial, pack.serial);
    // Reports that do not fit.
    assert_eq!(code(line1.received(id, "00ff")), "unknown_pack");
    let other = line1.take("3012-000002").unwrap();
    assert_eq!(code(line1.received(id, &other.serial)), "unknown_pack");
    line1.received(id, &pack.serial).unwrap();
    assert_eq!(code(line1.received(id, &pack.serial)), "duplicate_report");
    assert_eq!(code(line1.take(id)), "wrong_state");
    assert_eq!(
        code(line1.written(id, &pack.serial, &"0".repeat(64))),
        "fingerprint_mismatch"
    );
    let done = line1.written(id, &pack.serial, &pack.fingerprint).unwrap();
    assert_eq!(done.state, PackState::Flagged);
    assert_eq!(
        code(line1.written(id, &pack.serial, &pack.fingerprint)),
        "duplicate_report"
    );
    assert_eq!(code(line1.failed(id, &pack.serial, "late")), "wrong_state");
    assert_eq!(code(line1.take(id)), "already_written");
    assert_eq!(code(line2.take(id)), "already_written");

    // A failed write: the certificate is revoked at the CA and a replacement stocked.
    let failed_id = "3012-000002";
    let report = line1
        .failed(failed_id, &other.serial, "device answered CRC error")
        .unwrap();
    assert_eq!(report.state, PackState::Revoked);
    assert_eq!(
        code(line1.failed(failed_id, &other.serial, "again")),
        "duplicate_report"
    );
    assert_eq!(
        code(line1.written(failed_id, &other.serial, &other.fingerprint)),
        "wrong_state"
    );
    factory.wait_device(failed_id, "replaced", |r| {
        r["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["state"] == "stocked")
    });
    let history = factory.ca.history(failed_id);
    let old = history
        .iter()
        .find(|r| r["serial"] == other.serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "revoked");
    assert_eq!(old["reason"], "superseded");
    let fresh = line2.provision(failed_id);
    assert_ne!(fresh.serial, other.serial);

    // A station credential is no line credential.
    let not_a_line = Line::new(&station.url, &factory.station_cred);
    assert_eq!(code(not_a_line.take("3012-000003")), "forbidden");

    // Not yet fetched: a plan row imported after the fetch.
    factory.plan(
        "late.csv",
        &[&format!("{DAY},3012,000001,7"), &format!("{DAY},X9,1,2")],
    );
    assert_eq!(code(line1.take("3012-000007")), "not_in_stock");

    let all = ids("3012", 1, 6, 6);
    factory.assert_agree(&all);
    let stock = json(&[
        "station",
        "admin",
        "stock",
        "--dir",
        factory.dir(),
        "--json",
    ]);
    let m = stock["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "3012")
        .unwrap();
    assert_eq!(m["used_today"], 2, "{stock}");
    assert_eq!(m["failed_today"], 1, "{stock}");
    assert_eq!(m["replaced_today"], 1, "{stock}");
    assert_eq!(m["in_stock"], 4, "{stock}");
    assert_eq!(m["planned_today"], 7, "{stock}");
}

#[test]
fn the_factory_goes_on_while_the_ca_is_down() {
    let mut factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,5")]);
    factory.fetch(DAY);
    let station = factory.serve();
    let line = factory.line("line-1", &station);
    factory.stop_ca();

    // Takes and results go on from the stock.
    line.provision("3012-000001");
    let pack = line.take("3012-000002").unwrap();
    line.failed("3012-000002", &pack.serial, "write timed out")
        .unwrap();
    // The replacement waits, durably, and the admin view shows it.
    let queue = json(&[
        "station",
        "admin",
        "queue",
        "--dir",
        factory.dir(),
        "--json",
    ]);
    assert_eq!(queue["items"][0]["id"], "3012-000002", "{queue}");
    assert_eq!(queue["items"][0]["kind"], "replace", "{queue}");
    let waited = factory.wait_device("3012-000002", "tried", |r| {
        r["waiting_for_ca"][0]["attempts"].as_i64().unwrap_or(0) >= 1
    });
    assert!(
        waited["waiting_for_ca"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{waited}"
    );
    assert_eq!(code(line.take("3012-000002")), "replacement_pending");
    line.provision("3012-000003");
    let stock = json(&[
        "station",
        "admin",
        "stock",
        "--dir",
        factory.dir(),
        "--json",
    ]);
    assert_eq!(stock["waiting_for_ca"], 1, "{stock}");

    // The CA comes back: the waiting work goes out, the replacement arrives.
    factory.start_ca();
    json(&[
        "station",
        "admin",
        "retry",
        "--url",
        &station.url,
        "--root",
        common::path(&factory.dir.join("root.pem")),
        "--json",
    ]);
    factory.wait_device("3012-000002", "replaced", |r| {
        r["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["state"] == "stocked")
            && r["waiting_for_ca"].as_array().unwrap().is_empty()
    });
    line.provision("3012-000002");
    factory.assert_agree(&ids("3012", 1, 5, 6));
}

#[test]
fn a_hand_out_with_no_result_in_time_is_revoked_and_replaced() {
    let factory = Factory::new(&["3012"], &[], &["--handout-timeout", "1"]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,2")]);
    factory.fetch(DAY);
    let station = factory.serve();
    let line = factory.line("line-1", &station);
    let id = "3012-000001";
    let pack = line.take(id).unwrap();
    let report = factory.wait_device(id, "replaced after the timeout", |r| {
        let packs = r["packs"].as_array().unwrap();
        packs.len() == 2 && packs[1]["state"] == "stocked"
    });
    assert!(
        report["packs"][0]["end_reason"]
            .as_str()
            .unwrap()
            .starts_with("timed_out"),
        "{report}"
    );
    // A result that comes too late is refused, saying what happened.
    assert_eq!(
        code(line.written(id, &pack.serial, &pack.fingerprint)),
        "wrong_state"
    );
    let history = factory.ca.history(id);
    let old = history
        .iter()
        .find(|r| r["serial"] == pack.serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "revoked");
    factory.assert_agree(&ids("3012", 1, 2, 6));
}

#[test]
fn retention_delete_wipes_the_key_from_the_file_and_its_wal() {
    let factory = Factory::new(&["3012"], &[], &["--retention", "delete"]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    let id = "3012-000002";
    let sealed = sealed_key(&factory, id);
    let station = factory.serve();
    let line = factory.line("line-1", &station);
    let db = factory.stock_db();
    let wal = factory.dir.join("stock.db-wal");
    assert!(
        file_contains(&db, &sealed) || file_contains(&wal, &sealed),
        "the sealed key should be on disk before"
    );
    let pack = line.provision(id);
    let report = factory.device(id);
    assert_eq!(report["packs"][0]["state"], "deleted", "{report}");
    assert_eq!(report["packs"][0]["key_held"], false, "{report}");
    assert!(
        !file_contains(&db, &sealed),
        "the key bytes are still in the database file"
    );
    assert!(
        !file_contains(&wal, &sealed),
        "the key bytes are still in the WAL"
    );
    // The fingerprint stays in the audit log.
    let audit = json(&[
        "station",
        "admin",
        "audit",
        "--dir",
        factory.dir(),
        "--last",
        "50",
        "--json",
    ]);
    assert_eq!(audit["intact"], true);
    let delete = audit["last"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "delete")
        .unwrap();
    assert_eq!(delete["detail"]["fingerprint"], pack.fingerprint.as_str());
    assert_eq!(code(line.take(id)), "already_written");
}

fn sealed_key(factory: &Factory, id: &str) -> Vec<u8> {
    let conn = rusqlite::Connection::open(factory.stock_db()).unwrap();
    conn.query_row("SELECT sealed_key FROM packs WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn a_swapped_key_row_is_quarantined_and_never_handed_out() {
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    // Swap the sealed keys of two rows, as an attacker with file access might.
    let a = sealed_key(&factory, "3012-000001");
    let b = sealed_key(&factory, "3012-000002");
    {
        let conn = rusqlite::Connection::open(factory.stock_db()).unwrap();
        conn.execute(
            "UPDATE packs SET sealed_key = ?1 WHERE id = '3012-000001'",
            [&b],
        )
        .unwrap();
        conn.execute(
            "UPDATE packs SET sealed_key = ?1 WHERE id = '3012-000002'",
            [&a],
        )
        .unwrap();
    }
    let station = factory.serve();
    let line = factory.line("line-1", &station);
    for id in ["3012-000001", "3012-000002"] {
        let report = factory.wait_device(id, "quarantined and replaced", |r| {
            let packs = r["packs"].as_array().unwrap();
            packs[0]["state"] == "quarantined" && packs.iter().any(|p| p["state"] == "stocked")
        });
        let bad = report["packs"][0]["serial"].as_str().unwrap().to_string();
        let pack = line.provision(id);
        assert_ne!(pack.serial, bad, "a quarantined pack was handed out");
        let history = factory.ca.history(id);
        let old = history
            .iter()
            .find(|r| r["serial"] == bad.as_str())
            .unwrap();
        assert_eq!(old["status"], "revoked");
        assert_eq!(old["reason"], "key-compromise");
    }
    line.provision("3012-000003");
    factory.assert_agree(&ids("3012", 1, 3, 6));
}

#[test]
fn a_line_whose_credential_the_ca_revoked_takes_no_more_packs() {
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    let station = factory.serve_with(&[], &["--crl-refresh", "1"]);
    let good = factory.line("line-1", &station);
    let stolen = factory.line("line-2", &station);
    stolen.take("3012-000001").unwrap();

    // The CA revokes line-2's credential (a terminal was stolen, say).
    let cred = factory.ca.file("line-line-2.pem");
    let leaf = common::pem_file(&cred, "CERTIFICATE").remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial = hex::encode(parsed.raw_serial());
    ok(&[
        "ca",
        "revoke",
        "--dir",
        factory.ca.dir(),
        "--serial",
        &serial,
        "--reason",
        "key-compromise",
    ]);

    // The station learns it from the CA's CRL at its next refresh; until then
    // the line's report on its pack is merely wrong, afterwards it is forbidden.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while code(stolen.received("3012-000001", "00")) != "forbidden" {
        assert!(
            std::time::Instant::now() < deadline,
            "the station never refused the revoked line"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(code(stolen.take("3012-000002")), "forbidden");
    // Other lines go on.
    good.take("3012-000002").unwrap();
    assert_eq!(factory.states("3012-000003"), vec!["stocked".to_string()]);
}

#[test]
fn a_restarted_station_still_refuses_a_revoked_line_while_the_ca_is_down() {
    let mut factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    factory.ca.enroll("line", "line-2");
    factory.revoke_line("line-2");
    // The station learns of it from the CA's CRL (at start), and keeps it.
    let mut station = factory.serve();
    let stolen = Line::new(&station.url, &factory.ca.tmp.path().join("line-line-2.pem"));
    assert_eq!(code(stolen.take("3012-000001")), "forbidden");
    station.kill();
    // Restarted while the CA is down: the kept CRL still refuses the line.
    factory.stop_ca();
    let station = factory.serve();
    let stolen = Line::new(&station.url, &factory.ca.tmp.path().join("line-line-2.pem"));
    assert_eq!(code(stolen.take("3012-000001")), "forbidden");
    assert_eq!(factory.states("3012-000001"), ["stocked"]);
    let good = factory.line("line-1", &station);
    assert!(good.health().crl.fresh);
    good.take("3012-000001").unwrap();
}

#[test]
fn without_a_fresh_crl_lines_are_refused_and_health_says_so() {
    let mut factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    // The station never saw a CRL and the CA is down: it cannot tell a
    // revoked line from a good one, so it hands out nothing.
    factory.stop_ca();
    let station = factory.serve_with(&[], &["--crl-refresh", "1"]);
    let line = factory.line("line-1", &station);
    assert_eq!(code(line.take("3012-000001")), "no_fresh_crl");
    let health = line.health();
    assert_eq!(health.status, "no_fresh_crl", "{health:?}");
    assert!(!health.crl.fresh, "{health:?}");
    assert_eq!(factory.states("3012-000001"), ["stocked"]);
    // The CA comes back: the next refresh lets the lines in.
    factory.start_ca();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !line.health().crl.fresh {
        assert!(std::time::Instant::now() < deadline, "never got the CRL");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(line.health().status, "ok");
    line.provision("3012-000001");
}

#[test]
fn the_packs_a_revoked_line_holds_are_revoked_and_replaced_at_once() {
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    let station = factory.serve_with(&[], &["--crl-refresh", "1"]);
    let stolen = factory.line("line-2", &station);
    let pack = stolen.take("3012-000001").unwrap();
    factory.revoke_line("line-2");
    // Not after the 30-minute hand-out timeout: as soon as the CRL says so.
    let report = factory.wait_device("3012-000001", "revoked and replaced", |r| {
        let packs = r["packs"].as_array().unwrap();
        packs.len() == 2 && packs[0]["state"] == "revoked" && packs[1]["state"] == "stocked"
    });
    assert!(
        report["packs"][0]["end_reason"]
            .as_str()
            .unwrap()
            .starts_with("line_lost"),
        "{report}"
    );
    let old = factory
        .ca
        .history("3012-000001")
        .into_iter()
        .find(|r| r["serial"] == pack.serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "revoked");
    let good = factory.line("line-1", &station);
    good.provision("3012-000001");
    factory.assert_agree(&ids("3012", 1, 3, 6));
}

#[test]
fn a_retention_script_that_never_returns_does_not_keep_the_station_from_starting() {
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,3")]);
    factory.fetch(DAY);
    let mut station = factory.serve();
    factory.line("line-1", &station).provision("3012-000001");
    station.kill();
    assert_eq!(factory.states("3012-000001"), ["flagged"]);
    // A policy that never answers for a flagged pack (a backtracking pattern
    // runs inside one C call, out of reach of the instruction budget).
    factory.retention_script(
        r#"
function decide(pack)
  if pack.flagged then
    return string.rep("a", 200000):find(".-.-.-.-.-b") and "keep" or "keep"
  end
  return "flag"
end
checks = { { pack = { model = "3012", age_days = 0 }, expect = "flag" } }
"#,
    );
    // The port opens and lines are served while the sweep is stuck.
    let station = factory.serve();
    let line = Line::new(&station.url, &factory.ca.tmp.path().join("line-line-1.pem"));
    assert_eq!(line.health().status, "ok");
    line.provision("3012-000002");
    // The stuck script holds its own decisions up, not the line: the pack
    // stays written until a sweep can decide it.
    let state = &factory.states("3012-000002")[0];
    assert!(state == "written" || state == "flagged", "{state}");
}
