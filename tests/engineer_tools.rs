//! A factory engineer's tools (issue 18): `script check` that says what it
//! assumed (which factory.toml, a guessed role), refusals with the advice of
//! their code, a parse's own fields reported, and the station's test-only
//! clock refused on a station that is not under test.

use std::path::Path;

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
