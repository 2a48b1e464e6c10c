//! A factory engineer's tools (issue 18): `script check` that says what it
//! assumed (which factory.toml, a guessed role), refusals with the advice of
//! their code, a parse's own fields reported, and the station's test-only
//! clock: refused on a station that is not under test, and moved to watch a
//! retention policy by age delete keys without waiting days.

use std::path::Path;
use std::time::Duration;

use crate::common::{self, fails, ok, text};

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example")
}

#[test]
fn script_check_says_which_factory_it_used() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy outside its folder: no factory.toml beside it, so the example's
    // self-check that needs the factory's models fails, and says why.
    let copy = tmp.path().join("line.lua");
    std::fs::copy(example().join("line.lua"), &copy).unwrap();
    let out = fails(&["script", "check", common::path(&copy)]);
    assert!(
        out.contains("no factory.toml beside the script") && out.contains("--factory"),
        "{out}"
    );
    let factory = example().join("factory.toml");
    let report: serde_json::Value = serde_json::from_str(&ok(&[
        "script",
        "check",
        common::path(&copy),
        "--factory",
        common::path(&factory),
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["factory"]["how"], "--factory", "{report}");
    assert_eq!(report["role_guessed"], true, "{report}");
    // Beside the script, it is found and named.
    let out = ok(&["script", "check", common::path(&example().join("line.lua"))]);
    assert!(out.contains("factory.toml (beside the script)"), "{out}");
}

#[test]
fn a_guessed_role_is_named_when_the_check_fails() {
    let tmp = tempfile::tempdir().unwrap();
    // A retention script under a name that does not say so.
    let policy = tmp.path().join("policy.lua");
    std::fs::copy(example().join("retention.lua"), &policy).unwrap();
    let err = fails(&["script", "check", common::path(&policy)]);
    assert!(err.contains("must define function parse"), "{err}");
    assert!(
        err.contains("guessed from the file name") && err.contains("--role retention"),
        "{err}"
    );
    assert!(err.contains("no factory.toml beside the script"), "{err}");
    ok(&[
        "script",
        "check",
        "--role",
        "retention",
        common::path(&policy),
    ]);
}

#[test]
fn parse_fields_and_refusal_codes_reach_the_host() {
    let line = example().join("line.lua");
    let report: serde_json::Value = serde_json::from_str(&ok(&[
        "script",
        "check",
        common::path(&line),
        "--scan",
        "CS;M=3012;S=000001;QC=OK;LOT=l42",
        "--scan",
        "CS;M=3012;S=000002;QC=NG",
        "--scan",
        "hello",
        "--json",
    ]))
    .unwrap();
    let results = report["results"].as_array().unwrap();
    // A field of the factory's own (the lot) is kept, not dropped.
    assert_eq!(results[0]["id"], "3012-000001", "{report}");
    assert_eq!(results[0]["fields"]["lot"], "L42", "{report}");
    // A QC fail is its own refusal, and its advice is not "rescan the plate".
    assert_eq!(results[1]["code"], "qc_failed", "{report}");
    let next = results[1]["next"].as_str().unwrap();
    assert!(next.contains("take the device off the line"), "{next}");
    assert!(!next.contains("rating plate"), "{next}");
    // Not a device at all: rescan.
    assert_eq!(results[2]["code"], "malformed_barcode", "{report}");
}

#[test]
fn the_test_clock_is_refused_on_a_station_not_under_test() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::certline()
        .args(["station", "serve", "--dir"])
        .arg(tmp.path())
        .args(["--clock-ahead", "30d"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--clock-ahead") && err.contains("--testing"),
        "{err}"
    );
}

/// Retention by age, watched with the station's clock moved (issue 18): the
/// factory's retention.lua (the example's: flag at the write, delete 30 days
/// after it), printing each decision to the station's log the way an
/// engineer watches a policy. Packs written today stay flagged, keys and
/// all, on a station whose clock runs 29 days ahead (younger than 30 days);
/// on one 31 days ahead their keys are deleted and the audit says so, by
/// which policy.
#[test]
fn retention_by_age_with_the_station_clock_moved() {
    use crate::station_support::{Factory, DAY};

    let factory = Factory::new(&["3012"], &[], &[]);
    let policy = std::fs::read_to_string(example().join("retention.lua")).unwrap();
    std::fs::write(
        factory.dir.join("retention.lua"),
        format!(
            "{policy}\n\
             local decide_by_age = decide\n\
             function decide(pack)\n  \
               local verdict = decide_by_age(pack)\n  \
               print(tostring(pack.id) .. \" decided \" .. verdict)\n  \
               return verdict\n\
             end\n"
        ),
    )
    .unwrap();
    let config = factory.dir.join("station.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    let toml = if toml.contains("\n[retention]\n") {
        toml.replace(
            "\n[retention]\n",
            "\n[retention]\nscript = \"retention.lua\"\n",
        )
    } else {
        format!("{toml}\n[retention]\nscript = \"retention.lua\"\n")
    };
    std::fs::write(&config, toml).unwrap();
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,2")]);
    factory.fetch(DAY);
    let ids = ["3012-000001", "3012-000002"];
    let key_held = |id: &str| factory.device(id)["packs"][0]["key_held"].clone();

    // Today: both devices written; the policy flags their packs.
    let mut station = factory.serve();
    let line = factory.line("line-1", &station);
    for id in ids {
        line.provision(id);
    }
    station.kill();
    for id in ids {
        assert_eq!(factory.states(id), vec!["flagged".to_string()], "{id}");
        assert_eq!(key_held(id), true, "{id}");
    }

    // 29 days on: the sweep at start asks the policy, which keeps them.
    let log = [("CERTLINE_LOG", "info")];
    let mut station = factory.serve_with(&log, &["--testing", "--clock-ahead", "29d"]);
    let mut decided = Vec::new();
    for _ in ids {
        decided.push(
            station
                .child
                .stderr_line(Duration::from_secs(60), |l| {
                    l.contains("3012-00000") && l.contains(" decided ")
                })
                .unwrap(),
        );
    }
    for id in ids {
        assert!(
            decided
                .iter()
                .any(|l| l.contains(&format!("{id} decided keep"))),
            "{decided:?}"
        );
        assert_eq!(factory.states(id), vec!["flagged".to_string()], "{id}");
        assert_eq!(key_held(id), true, "{id}");
    }
    station.kill();

    // 31 days on: older than the policy keeps them; their keys are deleted.
    let station = factory.serve_with(&log, &["--testing", "--clock-ahead", "31d"]);
    station.wait_stderr("retention: 2 pack(s) flagged or deleted");
    for id in ids {
        assert_eq!(factory.states(id), vec!["deleted".to_string()], "{id}");
        assert_eq!(key_held(id), false, "{id}");
        let entry = crate::line_script::audit_entry(factory.dir(), "delete", |d| d["id"] == id);
        assert_eq!(entry["actor"], "station", "{entry}");
        assert_eq!(entry["detail"]["from"], "flagged", "{entry}");
        assert_eq!(entry["detail"]["to"], "deleted", "{entry}");
        let reason = entry["detail"]["reason"].as_str().unwrap();
        assert!(reason.contains("retention.lua"), "{entry}");
    }
}
