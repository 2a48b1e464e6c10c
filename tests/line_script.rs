//! The factory's line.lua on a running line (the real `certline line`
//! process, a real station, CA and device): an edit changes how the next scan
//! is parsed; a broken edit is refused, shown to the operator, and scanning
//! goes on with the previous version.

use crate::line_support as line;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use line::*;

fn save(file: &Path, text: &str) {
    // Editors save by writing a new file and renaming it over the old one.
    let tmp = file.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[test]
fn editing_line_lua_while_the_line_runs() {
    let rig = Rig::new(&["3012"], &["3012,000001,3"], &[IMAGING]);
    let scripts = rig.example_scripts("scripts");
    let script = scripts.join("line.lua");
    let original = std::fs::read_to_string(&script).unwrap();
    let (mut line, mut keyboard, _, cable) = rig.keyboard_line("line.toml", &scripts);

    // The example script reads check sheets.
    let first = rig.device("3012-000001", Some(&cable), &[]);
    writeln!(keyboard, "CS;M=3012;S=000001;QC=OK").unwrap();
    assert_line(&line.device(), "3012-000001", "ok", "written", &[]);
    drop(first);

    // A traveller card ("TR;") is not a format this factory knows yet.
    let second = rig.device("3012-000002", Some(&cable), &[]);
    writeln!(keyboard, "TR;M=3012;S=000002;QC=OK").unwrap();
    let refused = line.device();
    assert_eq!(refused["status"], "refused", "{refused}");
    assert_eq!(rig.states("3012-000002"), vec!["stocked".to_string()]);

    // The line engineer teaches line.lua the traveller card while the line runs.
    let edited = original.replace(
        "if text:sub(1, 3) ~= \"CS;\" then return nil end",
        "if text:sub(1, 3) ~= \"CS;\" and text:sub(1, 3) ~= \"TR;\" then return nil end",
    );
    assert_ne!(
        edited, original,
        "the example script changed shape; update this test"
    );
    save(&script, &edited);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        writeln!(keyboard, "TR;M=3012;S=000002;QC=OK").unwrap();
        let report = line.device();
        if report["status"] == "ok" {
            assert_line(&report, "3012-000002", "ok", "written", &[]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit never took effect: {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(second);

    // A broken edit (saved halfway) is refused; the previous version keeps parsing.
    save(&script, &edited[..edited.len() / 2]);
    line.wait_log(&[
        "script refused, the previous version keeps running",
        "line.lua",
    ]);
    let third = rig.device("3012-000003", Some(&cable), &[]);
    writeln!(keyboard, "TR;M=3012;S=000003;QC=OK").unwrap();
    let report = line.device();
    assert_line(&report, "3012-000003", "ok", "written", &[]);
    let message = report["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("line.lua edit refused, previous version running"),
        "the operator is told once: {report}"
    );
    third.assert_holds(
        &rig.factory.ca.dir.join("root.pem"),
        "3012-000003",
        &rig.fingerprint("3012-000003", "flagged"),
    );
    drop(keyboard);
    line.kill();
}

/// The station's newest audit entry with `action` for which `detail` holds
/// (read through its folder, `station admin audit --json`).
pub fn audit_entry(
    station_dir: &str,
    action: &str,
    detail: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let audit = crate::station_support::json(&[
        "station",
        "admin",
        "audit",
        "--dir",
        station_dir,
        "--last",
        "100",
        "--json",
    ]);
    assert_eq!(audit["intact"], true, "{audit}");
    let mut entries = audit["last"].as_array().unwrap().iter().rev();
    entries
        .find(|e| e["action"] == action && detail(&e["detail"]))
        .unwrap_or_else(|| panic!("no {action} entry like that in the audit: {audit:#}"))
        .clone()
}

/// Issue 18: the operator sees an edit of line.lua the moment it lands,
/// accepted or refused, without scanning anything; `line status` says which
/// version serves; a QC fail is refused with its own advice; a field of the
/// factory's own reaches the device's result and the station's audit; the
/// log on a pipe has no colour codes.
#[test]
fn the_operator_sees_every_edit_at_once() {
    let rig = Rig::new(&["3012"], &["3012,000001,2"], &[IMAGING]);
    let scripts = rig.example_scripts("scripts");
    let script = scripts.join("line.lua");
    let original = std::fs::read_to_string(&script).unwrap();
    let (mut line, mut keyboard, config, cable) = rig.keyboard_line("line.toml", &scripts);
    let serving = status(&config)["serving"].clone();
    assert_eq!(serving["running"], true, "{serving}");
    assert_eq!(serving["script"]["version"], 1, "{serving}");
    assert_eq!(serving["plugins"][0]["name"], "acme-imaging", "{serving}");

    // An accepted edit: announced with its version, no scan needed.
    save(&script, &format!("{original}\n-- edited on the floor\n"));
    let accepted = line.event("script_reloaded");
    assert_eq!(accepted["version"], 2, "{accepted}");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("line.lua version 2 now serving"),
        "{accepted}"
    );
    assert_eq!(status(&config)["serving"]["script"]["version"], 2);

    // A refused edit: announced at once with its error; version 2 serves on.
    save(&script, &original[..original.len() / 2]);
    let refused = line.event("script_refused");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("line.lua edit refused, version 2 keeps serving")
            && message.contains("line.lua:"),
        "{refused}"
    );
    let serving = status(&config)["serving"].clone();
    assert_eq!(serving["script"]["version"], 2, "{serving}");
    assert!(!serving["script"]["refused"].is_null(), "{serving}");
    let logged = line
        .child
        .stderr_line(WAIT, |l| l.contains("script refused"))
        .unwrap();
    assert!(
        !logged.contains('\u{1b}'),
        "colour codes in a log file: {logged:?}"
    );

    // A QC fail: its own code and advice, nothing taken from the station.
    writeln!(keyboard, "CS;M=3012;S=000001;QC=NG").unwrap();
    let qc = line.device();
    assert_eq!(qc["code"], "qc_failed", "{qc}");
    assert!(
        qc["next"]
            .as_str()
            .unwrap()
            .contains("take the device off the line"),
        "{qc}"
    );
    assert_eq!(rig.states("3012-000001"), vec!["stocked".to_string()]);

    // The lot on the check sheet comes back with the device's result.
    let device = rig.device("3012-000001", Some(&cable), &[]);
    writeln!(keyboard, "CS;M=3012;S=000001;QC=OK;LOT=L42").unwrap();
    let written = line.device();
    assert_line(&written, "3012-000001", "ok", "written", &[]);
    assert_eq!(written["fields"]["lot"], "L42", "{written}");
    // ... and the station records it in the audit entry of the write.
    let entry = audit_entry(rig.factory.dir(), "written", |d| d["id"] == "3012-000001");
    assert_eq!(entry["detail"]["fields"]["lot"], "L42", "{entry}");
    assert_eq!(entry["actor"], "line:line-1", "{entry}");
    drop(device);
    drop(keyboard);
    line.kill();
}

/// The fields a line reports with a write are bounded at the station: not
/// text, too many, too long, a name that is no name: refused as a bad
/// request naming the field, and nothing changes; a report without fields
/// (an older line) and one with good fields are taken.
#[test]
fn the_station_bounds_the_fields_of_a_report() {
    use crate::station_support::{Factory, DAY};
    use certline::wire::station::{self as api, ReportResponse};

    let factory = Factory::new(&["3012"], &[], &[]);
    factory.plan("plan.csv", &[&format!("{DAY},3012,000001,2")]);
    factory.fetch(DAY);
    let station = factory.serve();
    let cred = factory.ca.enroll("line", "line-1");
    let line = crate::station_support::Line::new(&station.url, &cred);
    // Raw reports go through a client of their own (a client's pooled
    // connections belong to the runtime that made them).
    let client = certline::service::client::ServiceClient::new(
        &station.url,
        &certline::pki::credential::Credential::load(&cred).unwrap(),
        certline::pki::role::Role::Station,
        Duration::from_secs(60),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = "3012-000001";
    let pack = line.take(id).unwrap();
    line.received(id, &pack.serial).unwrap();
    let written = |fields: serde_json::Value| {
        let mut body = serde_json::json!({
            "id": id,
            "serial": pack.serial,
            "fingerprint": pack.fingerprint,
        });
        if !fields.is_null() {
            body["fields"] = fields;
        }
        rt.block_on(client.post::<_, ReportResponse>(api::WRITTEN, &body))
    };
    let message = |r: Result<ReportResponse, _>| match r {
        Err(certline::service::client::ClientError::Refused { code, message, .. }) => {
            format!("{code}: {message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    };

    let many: serde_json::Map<String, serde_json::Value> =
        (0..17).map(|i| (format!("f{i}"), "x".into())).collect();
    for (fields, says) in [
        (serde_json::json!({ "lot": 42 }), "expected a string"),
        (
            serde_json::json!({ "lot": { "a": 1 } }),
            "expected a string",
        ),
        (
            serde_json::Value::Object(many),
            "17 fields; a report carries at most 16",
        ),
        (
            serde_json::json!({ "lot": "L".repeat(201) }),
            "field lot: its value is 201 bytes; at most 200",
        ),
        (
            serde_json::json!({ "lot number": "L42" }),
            "field name \"lot number\"",
        ),
        (
            serde_json::json!({ "lot": "L4\u{1b}[2J" }),
            "control characters",
        ),
    ] {
        let refusal = message(written(fields.clone()));
        assert!(
            refusal.starts_with("bad_request: ") && refusal.contains(says),
            "{fields}: {refusal}"
        );
        assert_eq!(factory.states(id), vec!["received".to_string()], "{fields}");
    }

    // Good fields are taken and recorded with the write.
    written(serde_json::json!({ "lot": "L42", "test-bay": "7" })).unwrap();
    let entry = audit_entry(factory.dir(), "written", |d| d["id"] == id);
    assert_eq!(
        entry["detail"]["fields"],
        serde_json::json!({ "lot": "L42", "test-bay": "7" }),
        "{entry}"
    );

    // An older line's report has no fields at all; its audit entry none.
    let id = "3012-000002";
    let pack = line.provision(id);
    let entry = audit_entry(factory.dir(), "written", |d| {
        d["serial"] == pack.serial.as_str()
    });
    assert!(entry["detail"].get("fields").is_none(), "{entry}");
}
