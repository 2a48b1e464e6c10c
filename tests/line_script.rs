//! The factory's line.lua on a running line (the real `certline line`
//! process, a real station, CA and device): an edit changes how the next scan
//! is parsed; a broken edit is refused, shown to the operator, and scanning
//! goes on with the previous version.

use crate::common;
use crate::line_support as line;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
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
    let scripts = rig.tmp().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example");
    for f in ["line.lua", "factory.toml"] {
        std::fs::copy(example.join(f), scripts.join(f)).unwrap();
    }
    let script = scripts.join("line.lua");
    let original = std::fs::read_to_string(&script).unwrap();
    let cable = free_addr();
    let config = rig.config(
        "line.toml",
        "source = \"stdin\"\ndebounce_ms = 0",
        &cable,
        &format!("[scripts]\ndir = \"{}\"", common::path(&scripts)),
    );
    let mut line = Line::start_with(&config, Stdio::piped());
    let mut keyboard = line.child.stdin.take().unwrap();

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
