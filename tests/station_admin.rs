//! Admin behind the login, locally (--dir) and through the serving station's
//! API (--url): wrong and missing passwords, lockout, the stock view, discard
//! of leftovers (revoked at the CA), the audit log, rework of a written device.

use crate::common;
use crate::station_support as support;

use common::path;
use support::*;

fn with_password(password: &str, args: &[&str]) -> std::process::Output {
    certline()
        .env("CERTLINE_ADMIN_PASSWORD", password)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn login_refuses_wrong_passwords_and_locks_out() {
    let factory = Factory::new(&["3012"], &[], &[]);
    let station = factory.serve();
    let root = factory.dir.join("root.pem");
    let url_args = [
        "station",
        "admin",
        "stock",
        "--url",
        &station.url,
        "--root",
        path(&root),
        "--json",
    ];
    // Through the API: a good login works, a wrong password is refused.
    let out = with_password(ADMIN_PASSWORD, &url_args);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let out = with_password("wrong password!", &url_args);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("wrong user or password"),
        "{}",
        common::text(&out.stderr)
    );
    // An unknown user gets the same answer.
    let mut args = url_args.to_vec();
    args.extend(["--user", "mallory"]);
    let out = with_password(ADMIN_PASSWORD, &args);
    assert!(common::text(&out.stderr).contains("wrong user or password"));
    // Four more failures (five in a row) lock the user out, even with the right password.
    for _ in 0..3 {
        with_password("wrong password!", &url_args);
    }
    let out = with_password("wrong password!", &url_args);
    assert!(
        common::text(&out.stderr).contains("locked out"),
        "{}",
        common::text(&out.stderr)
    );
    let out = with_password(ADMIN_PASSWORD, &url_args);
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("locked out"),
        "{}",
        common::text(&out.stderr)
    );
    // Locally too.
    let out = with_password(
        ADMIN_PASSWORD,
        &["station", "admin", "stock", "--dir", factory.dir()],
    );
    assert!(common::text(&out.stderr).contains("locked out"));
    // A request without a session is refused by the API itself.
    let (client, rt) = anonymous(&station.url, &root);
    let refused =
        rt.block_on(client.get_json::<serde_json::Value>(certline::wire::station::ADMIN_STOCK));
    assert_eq!(refused.unwrap_err().code(), Some("unauthorized"));
    let forged = client.clone().with_bearer("00".repeat(32).as_str());
    let refused =
        rt.block_on(forged.get_json::<serde_json::Value>(certline::wire::station::ADMIN_STOCK));
    assert_eq!(refused.unwrap_err().code(), Some("unauthorized"));
}

#[test]
fn stock_discard_audit_and_rework() {
    let factory = Factory::new(&["3012", "A123"], &["X9"], &[]);
    // A second administrator for the lockout-free part of this test.
    let out = certline()
        .env("CERTLINE_NEW_ADMIN_PASSWORD", "second admin password")
        .args([
            "station",
            "admin",
            "user-add",
            "--dir",
            factory.dir(),
            "--new-user",
            "second",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    factory.plan(
        "plan.csv",
        &[
            &format!("{DAY},3012,000001,4"),
            &format!("{DAY},A123,000001,3"),
            &format!("{DAY},X9,1,2"),
        ],
    );
    factory.fetch(DAY);
    let station = factory.serve();
    let line = factory.line("line-1", &station);
    let run_url = |sub: &str, extra: &[&str]| factory.admin_json(&station, sub, extra);

    line.provision("3012-000001");
    let pack = line.take("3012-000002").unwrap();
    line.failed("3012-000002", &pack.serial, "flash write error")
        .unwrap();
    factory.wait_device("3012-000002", "replaced", |r| {
        r["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["state"] == "stocked")
    });
    line.take("3012-000003").unwrap();

    // The stock view, through the API.
    let stock = run_url("stock", &[]);
    let model = |name: &str| {
        stock["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == name)
            .unwrap()
            .clone()
    };
    let m = model("3012");
    assert_eq!(
        (
            m["planned_today"].as_i64(),
            m["in_stock"].as_i64(),
            m["handed_out"].as_i64()
        ),
        (Some(4), Some(2), Some(1)),
        "{stock}"
    );
    assert_eq!(
        (
            m["used_today"].as_i64(),
            m["failed_today"].as_i64(),
            m["replaced_today"].as_i64()
        ),
        (Some(1), Some(1), Some(1)),
        "{stock}"
    );
    assert_eq!(model("A123")["in_stock"], 3);
    assert_eq!(model("X9")["certificate"], false);
    assert_eq!(model("X9")["planned_today"], 2);
    // And the human view says the same.
    let text = ok(&["station", "admin", "stock", "--dir", factory.dir()]);
    assert!(text.contains("3012") && text.contains("in stock"), "{text}");

    // Discard the leftovers of A123: revoked at the CA (cessation of operation).
    let discarded = run_url("discard", &["--model", "A123"]);
    assert_eq!(
        discarded["discarded"].as_array().unwrap().len(),
        3,
        "{discarded}"
    );
    let history = factory.wait_device("A123-000001", "revoked at the CA", |r| {
        r["waiting_for_ca"].as_array().unwrap().is_empty()
    });
    assert_eq!(history["packs"][0]["state"], "discarded");
    let ca = factory.ca.history("A123-000001");
    assert_eq!(ca[0]["status"], "revoked");
    assert_eq!(ca[0]["reason"], "cessation-of-operation");
    assert_eq!(code(line.take("A123-000001")), "discarded");
    // Nothing left to discard: a clear refusal.
    let err = factory.admin_fails(&station, "discard", &["--model", "A123"]);
    assert!(err.contains("no stocked packs of model A123"), "{err}");

    // Rework a written device: old certificate revoked, a fresh pack fetched.
    let written = factory.device("3012-000001");
    let old_serial = written["packs"][0]["serial"].as_str().unwrap().to_string();
    assert_eq!(code(line.take("3012-000001")), "already_written");
    let err = fails(&[
        "station",
        "admin",
        "rework",
        "--dir",
        factory.dir(),
        "--id",
        "3012-000004",
        "--reason",
        "x",
    ]);
    assert!(err.contains("not written"), "{err}");
    let rework = run_url(
        "rework",
        &[
            "--id",
            "3012-000001",
            "--reason",
            "board replaced in service",
        ],
    );
    assert_eq!(rework["revoked_serial"], old_serial.as_str());
    factory.wait_device("3012-000001", "re-stocked", |r| {
        r["packs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["state"] == "stocked")
    });
    let fresh = line.provision("3012-000001");
    assert_ne!(fresh.serial, old_serial);
    let ca = factory.ca.history("3012-000001");
    let old = ca
        .iter()
        .find(|r| r["serial"] == old_serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "revoked");

    // The audit log: intact, and every state change is in it.
    let audit = run_url("audit", &["--last", "500"]);
    assert_eq!(audit["intact"], true, "{audit}");
    let actions: Vec<&str> = audit["last"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "init",
        "user_add",
        "plan_import",
        "fetch",
        "take",
        "received",
        "written",
        "flag",
        "failed",
        "replaced",
        "replacement",
        "discard",
        "revoked",
        "rework",
        "login",
    ] {
        assert!(
            actions.contains(&action),
            "no {action} in the audit log: {actions:?}"
        );
    }
    let ids: Vec<String> = ids("3012", 1, 4, 6)
        .into_iter()
        .chain(ids("A123", 1, 3, 6))
        .collect();
    factory.assert_agree(&ids);
    // Tampering with the audit log is detected.
    drop(station);
    let conn = rusqlite::Connection::open(factory.stock_db()).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'nobody' WHERE seq = 3;",
    )
    .unwrap();
    drop(conn);
    let out = with_password(
        "second admin password",
        &[
            "station",
            "admin",
            "audit",
            "--dir",
            factory.dir(),
            "--user",
            "second",
        ],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out.stdout).contains("AUDIT LOG BROKEN"),
        "{}",
        common::text(&out.stdout)
    );
}

#[test]
fn logins_keep_little_of_a_name_and_are_limited_per_address() {
    let factory = Factory::new(&["3012"], &[], &[]);
    let station = factory.serve();
    let root = factory.dir.join("root.pem");
    let (client, rt) = anonymous(&station.url, &root);
    let login = |user: &str, password: &str| {
        rt.block_on(client.post::<_, serde_json::Value>(
            certline::wire::station::ADMIN_LOGIN,
            &serde_json::json!({"user": user, "password": password}),
        ))
    };
    // A 60 KB user name: refused, and the audit log keeps a short excerpt.
    let huge = format!("\u{1b}[31m{}", "x".repeat(60_000));
    assert_eq!(code(login(&huge, "wrong password!")), "unauthorized");
    let audit = factory.audit(5);
    let entry = audit["last"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "login_failed")
        .unwrap_or_else(|| panic!("no failed login in {audit}"));
    let kept = entry["detail"].to_string();
    assert!(kept.len() < 300, "{} bytes of a user name kept", kept.len());
    assert!(!kept.contains('\u{1b}'), "{kept}");
    let entries_before = audit["entries"].as_i64().unwrap();
    // Failed logins from one address: past the limit the address is refused
    // before any password is checked, and nothing more is written.
    let mut refused = 0;
    for _ in 0..30 {
        if code(login("mallory", "wrong password!")) == "rate_limited" {
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 30 were rate limited");
    let entries_after = factory.audit(1)["entries"].as_i64().unwrap();
    assert!(
        entries_after - entries_before <= 21,
        "{} audit rows for 30 failed logins",
        entries_after - entries_before
    );
    // The right password from that address waits too; the user is not locked.
    assert_eq!(code(login("admin", ADMIN_PASSWORD)), "rate_limited");
    let out = with_password(
        ADMIN_PASSWORD,
        &[
            "station",
            "admin",
            "stock",
            "--dir",
            factory.dir(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
}

#[test]
fn the_station_directory_is_its_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,2")]);
    factory.fetch(DAY);
    let station = factory.serve();
    factory.line("line-1", &station).provision("3012-000001");
    let mode = |name: &str| {
        std::fs::metadata(factory.dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "the station directory");
    assert_eq!(mode("plans"), 0o700);
    for file in [
        "stock.db",
        "stock.db-wal",
        "stock.db-shm",
        "keys.json",
        "station.toml",
        "credential.pem",
        "fetch.lock",
        "ca-crl.der",
    ] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
}

#[test]
fn a_discard_of_a_device_keygen_model_stops_its_planned_ids_from_being_signed() {
    let factory = Factory::new(&["3014"], &[], &["--device-keygen-model", "3014"]);
    factory.plan("plan.csv", &[&format!("{DAY},3014,000001,3")]);
    let station = factory.serve();
    let line = factory.line("line-1", &station);

    // One device signed and written before the discard.
    let signed = line.sign("3014-000001").unwrap();
    assert!(signed.key_pem.is_none());
    line.received("3014-000001", &signed.serial).unwrap();
    line.written("3014-000001", &signed.serial, &signed.fingerprint)
        .unwrap();

    // The discard takes the planned ids not yet signed; nothing to revoke.
    let report = factory.admin_json(&station, "discard", &["--model", "3014"]);
    assert_eq!(
        report["discarded"],
        serde_json::json!(["3014-000002", "3014-000003"]),
        "{report}"
    );
    assert_eq!(report["revocations_queued"], 0, "{report}");

    // A CSR for a discarded id: refused, naming the model and the discard;
    // nothing is issued at the CA.
    match line.sign("3014-000002") {
        Err(certline::service::client::ClientError::Refused { code, message, .. }) => {
            assert_eq!(code, "discarded");
            assert!(
                message.contains("model 3014") && message.contains("discarded"),
                "{message}"
            );
        }
        other => panic!("a discarded id was signed: {other:?}"),
    }
    assert!(factory.ca.history("3014-000002").is_empty());
    assert!(factory.states("3014-000002").is_empty());
    // The written device keeps its certificate.
    assert_eq!(factory.states("3014-000001"), ["flagged"]);
    assert_eq!(factory.ca.history("3014-000001")[0]["status"], "valid");

    // Nothing left to discard: a clear refusal naming the model.
    let err = factory.admin_fails(&station, "discard", &["--model", "3014"]);
    assert!(err.contains("model 3014"), "{err}");
}
