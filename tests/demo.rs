//! `certline demo`: the whole factory day, run once as a separate process
//! (it starts every role as its own process). The slowest test: one run.

use crate::common;

use common::{path, text};

fn row<'a>(summary: &'a serde_json::Value, model: &str) -> &'a serde_json::Value {
    summary["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("no row for {model}: {summary:#}"))
}

#[test]
fn runs_a_whole_factory_day_and_refuses_to_run_twice_in_one_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("day");
    // The demo makes its own passphrase and admin password.
    let out = std::process::Command::new(common::bin())
        .args(["demo", "--dir", path(&dir), "--json"])
        .env_remove("CERTLINE_PASSPHRASE")
        .env_remove("CERTLINE_LOG")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed:\nstdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));

    // Progress on stderr, the summary on stdout.
    for step in [
        "[ 1] CA",
        "fetch: 26/26 packs",
        "line-1",
        "line-2",
        "center",
    ] {
        assert!(
            stderr.contains(step),
            "no {step:?} in the progress:\n{stderr}"
        );
    }
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(
        std::fs::canonicalize(s["dir"].as_str().unwrap()).unwrap(),
        std::fs::canonicalize(&dir).unwrap()
    );

    // Per model: planned, fetched, written, failed, re-issued, revoked, discarded, in stock.
    for (model, want) in [
        ("3012", [12, 12, 10, 1, 2, 2, 0, 3]),
        ("3013", [6, 6, 2, 0, 0, 4, 4, 0]),
        ("A123", [8, 8, 6, 1, 1, 1, 0, 2]),
        ("K7", [3, 0, 0, 0, 0, 0, 0, 0]),
    ] {
        let r = row(&s, model);
        let got: Vec<u64> = [
            "planned",
            "fetched",
            "written",
            "failed",
            "reissued",
            "revoked",
            "discarded",
            "in_stock",
        ]
        .iter()
        .map(|k| r[k].as_u64().unwrap())
        .collect();
        assert_eq!(got, want, "{model}: {r:#}");
    }
    assert_eq!(row(&s, "K7")["certificate"], false);
    // Keys born in the device (3014): nothing fetched, every device signed
    // from its CSR, the one whose proof of possession failed revoked. (Its
    // re-signing names the failed certificate as replaced only if the
    // station's queue had not revoked it yet: not pinned.)
    let r = row(&s, "3014");
    assert_eq!(r["keygen"], "device", "{r:#}");
    let got: Vec<u64> = [
        "planned",
        "fetched",
        "written",
        "failed",
        "revoked",
        "discarded",
        "in_stock",
    ]
    .iter()
    .map(|k| r[k].as_u64().unwrap())
    .collect();
    assert_eq!(got, [4, 0, 4, 1, 1, 0, 0], "3014: {r:#}");
    assert_eq!(row(&s, "3012")["keygen"], "ca");
    // Retention: 3012/3013/3014 flagged (the reworked one no longer), A123 deleted.
    assert_eq!(s["totals"]["flagged"], 15, "{:#}", s["totals"]);
    assert_eq!(s["totals"]["deleted"], 6, "{:#}", s["totals"]);

    // Scans: the good ones, the bad ones, the failed writes.
    assert_eq!(s["scans"]["total"], 31);
    assert_eq!(s["scans"]["ok"], 22);
    assert_eq!(s["scans"]["refused"], 6);
    assert_eq!(s["scans"]["failed"], 3);
    assert_eq!(s["scans"]["codes"]["possession_failed"], 1);
    assert_eq!(s["scans"]["codes"]["already_written"], 1);
    assert_eq!(s["scans"]["codes"]["not_in_plan"], 1);

    // The center: every written device and the stray one.
    let c = &s["center"];
    assert_eq!(c["devices"], 23, "{c:#}");
    assert_eq!(c["contract"], 9, "{c:#}");
    assert_eq!(c["no_contract"], 12, "{c:#}");
    assert_eq!(c["revoked"], 1, "{c:#}");
    assert_eq!(c["unknown"], 1, "{c:#}");
    assert_eq!(c["unverifiable"], 0, "{c:#}");
    assert_eq!(c["reports_refused"], 3, "{c:#}");
    let impersonator = s["center_devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "3012-000007")
        .unwrap();
    assert_eq!(impersonator["reported_as"], "3012-000001");
    assert_eq!(impersonator["report_accepted"], false);

    // Every invariant check ran and passed.
    let checks = s["checks"].as_array().unwrap();
    assert!(checks.len() >= 9, "{checks:#?}");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "keys born in the device never existed at the CA or the station"),
        "{checks:#?}"
    );
    for check in checks {
        assert_eq!(check["ok"], true, "{check:#}");
    }

    // The state stays: a written device's flash, the summary.
    assert!(dir.join("devices/3012-000001/flash/chain.pem").is_file());
    assert!(dir.join("devices/3014-000001/secure/key.pem").is_file());
    assert!(!dir.join("devices/3014-000001/flash/key.pem").exists());
    assert!(dir.join("summary.json").is_file());

    // A second run into the same folder is refused and changes nothing.
    let before = std::fs::read(dir.join("summary.json")).unwrap();
    let again = std::process::Command::new(common::bin())
        .args(["demo", "--dir", path(&dir), "--json"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already holds a demo"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(dir.join("summary.json")).unwrap(), before);
}

#[test]
fn refuses_missing_plugins_and_scripts_before_touching_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("day");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for (flag, says) in [
        ("--plugins", "plugins/build.sh"),
        ("--scripts", "holds no line.lua and retention.lua"),
    ] {
        let out = std::process::Command::new(common::bin())
            .args(["demo", "--dir", path(&dir), flag, path(&empty)])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}: {}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{flag}: {stderr}");
        assert!(!dir.exists(), "{flag}: the demo created {}", dir.display());
    }
}
