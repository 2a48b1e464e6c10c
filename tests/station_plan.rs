//! Station set-up and production plans: init, plan import (CSV and JSON, all
//! rows or none, errors naming file, row and field), re-import, and a wrong
//! key-encryption passphrase that must change nothing.

use crate::common;
use crate::station_support as support;

use common::path;
use support::*;

fn sha(file: &std::path::Path) -> Vec<u8> {
    std::fs::read(file).unwrap()
}

#[test]
fn init_refuses_to_overwrite_and_checks_its_inputs() {
    let factory = Factory::new(&["3012"], &[], &[]);
    // Again on the same directory: refused, nothing touched.
    let before = sha(&factory.stock_db());
    let err = fails(&[
        "station",
        "init",
        "--dir",
        factory.dir(),
        "--ca",
        &factory.ca_url,
        "--credential",
        path(&factory.station_cred),
    ]);
    assert!(err.contains("already an initialised station"), "{err}");
    assert_eq!(before, sha(&factory.stock_db()));
    // A line credential is not a station credential.
    let line = factory.ca.enroll("line", "l1");
    let other = factory.ca.tmp.path().join("other");
    let err = fails(&[
        "station",
        "init",
        "--dir",
        path(&other),
        "--ca",
        &factory.ca_url,
        "--credential",
        path(&line),
    ]);
    assert!(err.contains("is a line credential"), "{err}");
    // A short admin password is refused.
    let out = certline_env(&[("CERTLINE_ADMIN_PASSWORD", "short")])
        .args([
            "station",
            "init",
            "--dir",
            path(&other),
            "--ca",
            &factory.ca_url,
            "--credential",
        ])
        .arg(&factory.station_cred)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::text(&out.stderr).contains("at least 8"),
        "{}",
        common::text(&out.stderr)
    );
    // No admin password at all (and no terminal to ask on): a clear error.
    let out = certline_env(&[])
        .env_remove("CERTLINE_ADMIN_PASSWORD")
        .args(["station", "admin", "stock", "--dir", factory.dir()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = common::text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("CERTLINE_ADMIN_PASSWORD") || err.contains("password"),
        "{err}"
    );
    // Every station command has --help.
    for sub in [
        vec!["station", "--help"],
        vec!["station", "init", "--help"],
        vec!["station", "plan", "import", "--help"],
        vec!["station", "fetch", "--help"],
        vec!["station", "serve", "--help"],
        vec!["station", "admin", "stock", "--help"],
        vec!["station", "admin", "discard", "--help"],
        vec!["station", "admin", "audit", "--help"],
        vec!["station", "admin", "rework", "--help"],
        vec!["station", "bench", "--help"],
    ] {
        ok(&sub);
    }
}

fn certline_env(env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = certline();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn plan_import_is_all_or_nothing_with_errors_naming_file_row_and_field() {
    let factory = Factory::new(&["3012", "A123"], &["X9"], &[]);
    let bad = [
        (
            "bad-date.csv",
            format!(
                "date,model,first_serial,count\n{DAY},3012,000001,5\n2030-02-30,3012,000100,2\n"
            ),
            "row 2 (line 3), field date",
        ),
        (
            "unknown-column.csv",
            "date,model,first_serial,count,colour\n".to_string(),
            "unknown column \"colour\"",
        ),
        (
            "negative.csv",
            format!("date,model,first_serial,count\n{DAY},3012,000001,-3\n"),
            "row 1 (line 2), field count",
        ),
        (
            "duplicate.csv",
            format!("date,model,first_serial,count\n{DAY},3012,000001,5\n{DAY},3012,000004,2\n"),
            "duplicate serial",
        ),
        (
            "unknown-model.csv",
            format!("date,model,first_serial,count\n{DAY},ZZ77,1,1\n"),
            "unknown model code ZZ77",
        ),
        (
            "bad-model.csv",
            format!("date,model,first_serial,count\n{DAY},zz-7,1,1\n"),
            "field model",
        ),
        (
            "unknown-field.json",
            format!(
                r#"[{{"date":"{DAY}","model":"3012","first_serial":"1","count":2,"shift":"night"}}]"#
            ),
            "row 1, field shift",
        ),
        (
            "both.json",
            format!(
                r#"[{{"date":"{DAY}","model":"3012","first_serial":"1","count":2,"serials":["9"]}}]"#
            ),
            "row 1, field serials",
        ),
    ];
    for (name, content, expected) in &bad {
        let err = factory.import_fails(name, content);
        assert!(
            err.contains(name),
            "{name}: the error must name the file: {err}"
        );
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in: {err}"
        );
    }
    // Nothing of the refused files was imported (the first row of bad-date.csv was fine).
    let shown = factory.plan_show(DAY, &[]);
    assert_eq!(shown["models"], serde_json::json!({}), "{shown}");

    // A good CSV plan, with a model that carries no certificate.
    let report = factory.plan(
        "day.csv",
        &[
            &format!("{DAY},3012,000098,5"),
            &format!("{DAY},X9,1,2"),
            &format!("{NEXT_DAY},A123,0500,3"),
        ],
    );
    assert_eq!(report["ids"], 10);
    assert_eq!(report["added"], 10);
    assert!(
        report["notes"][0].as_str().unwrap().contains("X9"),
        "{report}"
    );
    let shown = factory.plan_show(DAY, &["--ids"]);
    let ids: Vec<&str> = shown["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"3012-000098") && ids.contains(&"3012-000102"),
        "{ids:?}"
    );

    // A JSON plan with an explicit list, for another day.
    let report = factory.import(
        "extra.json",
        r#"{"plan":[{"date":"2030-01-17","model":"3012","serials":["777001","777005"]}]}"#,
    );
    assert_eq!(report["ids"], 2);

    // A serial already planned for another day is refused (across plans), naming both.
    let err = factory.import_fails(
        "again.csv",
        "date,model,first_serial,count\n2030-01-20,3012,000100,1\n",
    );
    assert!(
        err.contains("again.csv row 1") && err.contains(&format!("already planned for {DAY}")),
        "{err}"
    );

    // Fetch today's packs, then re-import today's plan changed: fetched packs stay.
    let fetched = factory.fetch(DAY);
    assert_eq!(fetched["fetch"]["fetched"], 5, "{fetched}");
    let report = factory.plan(
        "day-v2.csv",
        &[&format!("{DAY},3012,000100,5"), &format!("{DAY},X9,1,2")],
    );
    assert_eq!(report["kept"], 5, "{report}");
    assert_eq!(report["added"], 2, "{report}");
    assert_eq!(report["removed"], 2, "{report}");
    assert_eq!(
        factory.packs().len(),
        5,
        "re-importing a plan must not lose packs"
    );
    let fetched = factory.fetch(DAY);
    assert_eq!(fetched["fetch"]["fetched"], 2, "{fetched}");
    assert_eq!(fetched["fetch"]["already_in_stock"], 3, "{fetched}");
    factory.assert_agree(&ids_of(&factory));
}

/// D8 and D10: a plan is capped in ids per plan and per day (before any id
/// is made), and a serial range that runs past what a number holds is refused,
/// naming the row; nothing of a refused plan is imported.
#[test]
fn plans_over_the_caps_or_past_the_serial_range_are_refused_whole() {
    let factory = Factory::new(&["3012"], &[], &[]);
    let header = "date,model,first_serial,count";
    // The default cap (200,000 a plan): three full rows on three days.
    let err = factory.import_fails(
        "huge.csv",
        &format!(
            "{header}\n2030-01-14,3012,000001,100000\n2030-01-15,3012,100001,100000\n2030-01-16,3012,200001,100000\n"
        ),
    );
    assert!(
        err.contains("huge.csv row 3 (line 4), field count") && err.contains("200000"),
        "{err}"
    );
    // 2^128 - 1 counted up by two wraps a u128: refused, not zero ids.
    let err = factory.import_fails(
        "wrap.csv",
        &format!("{header}\n{DAY},3012,340282366920938463463374607431768211455,2\n"),
    );
    assert!(
        err.contains("wrap.csv row 1 (line 2), field first_serial"),
        "{err}"
    );
    // A serial may not be longer than 20 characters.
    let err = factory.import_fails(
        "long.csv",
        &format!("{header}\n{DAY},3012,123456789012345678901,1\n"),
    );
    assert!(
        err.contains("long.csv row 1 (line 2), field first_serial") && err.contains("20"),
        "{err}"
    );
    // Caps from station.toml: per plan, and per day (over several rows).
    let toml = factory.dir.join("station.toml");
    let mut config: toml::Table = std::fs::read_to_string(&toml).unwrap().parse().unwrap();
    config.insert(
        "plan".into(),
        toml::toml! { max_ids_per_plan = 10
        max_ids_per_day = 6 }
        .into(),
    );
    std::fs::write(&toml, config.to_string()).unwrap();
    let err = factory.import_fails(
        "per-plan.json",
        r#"[{"date":"2030-01-14","model":"3012","first_serial":"1","count":5},
            {"date":"2030-01-15","model":"3012","first_serial":"101","count":5},
            {"date":"2030-01-16","model":"3012","serials":["301"]}]"#,
    );
    assert!(
        err.contains("per-plan.json row 3, field serials") && err.contains("max_ids_per_plan"),
        "{err}"
    );
    let err = factory.import_fails(
        "per-day.csv",
        &format!("{header}\n{DAY},3012,000001,4\n{DAY},3012,000101,3\n"),
    );
    assert!(
        err.contains("per-day.csv row 2 (line 3), field count") && err.contains("max_ids_per_day"),
        "{err}"
    );
    // Nothing of any refused plan was imported; a plan within the caps is.
    assert!(factory.packs().is_empty());
    for day in ["2030-01-14", "2030-01-15", "2030-01-16", &DAY.to_string()] {
        let shown = factory.plan_show(day, &[]);
        assert_eq!(shown["models"], serde_json::json!({}), "{day}: {shown}");
    }
    let report = factory.plan("fits.csv", &[&format!("{DAY},3012,000001,6")]);
    assert_eq!(report["ids"], 6, "{report}");
}

fn ids_of(factory: &Factory) -> Vec<String> {
    let mut ids: Vec<String> = factory.packs().into_iter().map(|(id, _, _)| id).collect();
    ids.dedup();
    ids
}

#[test]
fn a_wrong_passphrase_refuses_to_start_and_changes_nothing() {
    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("p.csv", &[&format!("{DAY},3012,1,3")]);
    factory.fetch(DAY);
    let db = factory.stock_db();
    let wal = factory.dir.join("stock.db-wal");
    let keys = factory.dir.join("keys.json");
    let before = (sha(&db), std::fs::read(&wal).ok(), sha(&keys));
    for sub in [
        vec![
            "station",
            "serve",
            "--dir",
            factory.dir(),
            "--listen",
            "127.0.0.1:0",
        ],
        vec!["station", "fetch", "--dir", factory.dir()],
    ] {
        let out = certline_env(&[("CERTLINE_PASSPHRASE", "not the passphrase at all")])
            .args(&sub)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = common::text(&out.stderr);
        assert!(err.contains("wrong key-encryption passphrase"), "{err}");
        assert!(err.contains("refusing to start"), "{err}");
    }
    assert_eq!(before, (sha(&db), std::fs::read(&wal).ok(), sha(&keys)));
    // With the right one, the stock is all there.
    let stock = factory.stock();
    assert_eq!(stock["models"][0]["in_stock"], 3, "{stock}");
}

#[test]
fn the_drop_folder_imports_plans_and_the_scheduled_fetch_fetches_the_next_day() {
    let factory = Factory::new(&["3012"], &[], &[]);
    // Fetch every day at 00:00 (so: as soon as the station serves) for the next day.
    let config_path = factory.dir.join("station.toml");
    let mut config: toml::Table = std::fs::read_to_string(&config_path)
        .unwrap()
        .parse()
        .unwrap();
    config.insert("fetch_at".into(), "00:00".into());
    config.insert(
        "working_days".into(),
        toml::Value::Array(
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .map(|d| (*d).into())
                .collect(),
        ),
    );
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let plans = factory.dir.join("plans");
    std::fs::write(
        plans.join("broken.csv"),
        format!("date,model,first_serial,count\n{NEXT_DAY},3012,1,zero\n"),
    )
    .unwrap();
    std::fs::write(
        plans.join("tomorrow.csv"),
        format!("date,model,first_serial,count\n{NEXT_DAY},3012,000001,4\n"),
    )
    .unwrap();
    let _station = factory.serve();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while factory.packs().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled fetch never stocked tomorrow's packs"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let imported: Vec<_> = std::fs::read_dir(plans.join("imported")).unwrap().collect();
    assert_eq!(imported.len(), 1);
    let why = std::fs::read_to_string(plans.join("rejected").join("broken.csv.error.txt")).unwrap();
    assert!(why.contains("field count"), "{why}");
    assert!(plans.join("rejected").join("broken.csv").exists());
    factory.assert_agree(&ids("3012", 1, 4, 6));
}
