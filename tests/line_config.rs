//! The line's configuration: reloaded while the line runs (WezTerm style:
//! build, check, swap); a broken edit is refused with a clear message and the
//! previous configuration keeps writing devices. Keyboard-wedge input on
//! standard input; end of input ends the line cleanly.

use crate::common;
use crate::line_support as line;
use crate::station_support as support;

use std::io::Write;
use std::process::Stdio;

use line::*;

#[test]
fn reload_swaps_a_good_config_and_refuses_a_broken_edit() {
    let rig = Rig::new(&["3012"], &["3012,000001,2"], &[IMAGING]);
    let (cable_a, cable_b) = (free_addr(), free_addr());
    let config = rig.config(
        "line.toml",
        "source = \"stdin\"\ndebounce_ms = 0",
        &cable_a,
        "",
    );
    let good = std::fs::read_to_string(&config).unwrap();
    let mut line = Line::start_with(&config, Stdio::piped());
    let mut keyboard = line.child.stdin.take().unwrap();

    // Not TOML.
    std::fs::write(&config, good.replace("[device]", "[device")).unwrap();
    let v = line.event("reload_refused");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains("previous configuration stays"), "{m}");
    assert!(m.contains("line.toml"), "{m}");
    // TOML, but a wrong value: named.
    std::fs::write(&config, good.replace(&cable_a, "printer")).unwrap();
    let m = line.event("reload_refused")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("[device] address") && m.contains("printer"),
        "{m}"
    );
    // A credential that is no line credential.
    let station_cred = rig.factory.station_cred.to_str().unwrap().to_string();
    let line_cred = rig.line_cred.to_str().unwrap().to_string();
    std::fs::write(&config, good.replace(&line_cred, &station_cred)).unwrap();
    let m = line.event("reload_refused")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("needs a line credential"), "{m}");

    // The previous configuration still writes the device on cable A.
    let a = rig.device("3012-000001", Some(&cable_a), &[]);
    writeln!(keyboard, "3012-000001").unwrap();
    assert_line(&line.device(), "3012-000001", "ok", "written", &[]);
    a.assert_holds(
        &rig.root,
        "3012-000001",
        &rig.fingerprint("3012-000001", "flagged"),
    );

    // A good edit moves the cable; the next scan uses it.
    std::fs::write(&config, good.replace(&cable_a, &cable_b)).unwrap();
    let v = line.event("reloaded");
    assert!(v["device"].as_str().unwrap().contains(&cable_b), "{v:#}");
    let b = rig.device("3012-000002", Some(&cable_b), &[]);
    writeln!(keyboard, "3012-000002").unwrap();
    assert_line(&line.device(), "3012-000002", "ok", "written", &[]);
    b.assert_holds(
        &rig.root,
        "3012-000002",
        &rig.fingerprint("3012-000002", "flagged"),
    );

    // End of keyboard input ends the shift cleanly, with the count.
    drop(keyboard);
    let end = line.event("end");
    assert_eq!(end["shift"]["ok"], 2, "{end:#}");
    assert_eq!(end["kept"], 0, "{end:#}");
    assert!(line.child.wait().unwrap().success());
}

#[test]
fn a_broken_config_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("plugins")).unwrap();
    let file = tmp.path().join("line.toml");
    let base = "name = \"line-1\"\nstate_dir = \"state\"\n\
                [station]\nurl = \"https://127.0.0.1:9\"\ncredential = \"line.pem\"\n\
                [scanner]\nsource = \"stdin\"\n\
                [device]\naddress = \"127.0.0.1:9\"\n\
                [plugins]\ndir = \"plugins\"\n";
    // A usable credential, so that the check under test is the one that fails.
    let ca = common::Ca::init(&[]);
    std::fs::copy(ca.enroll("line", "line-1"), tmp.path().join("line.pem")).unwrap();
    for (from, to, says) in [
        (
            "source = \"stdin\"",
            "source = \"usb\"",
            "not a scanner source",
        ),
        (
            "source = \"stdin\"",
            "source = \"serial\"\nport = \"/dev/certline-no-such-port\"",
            "cannot open the scanner's serial port",
        ),
        (
            "https://127.0.0.1:9",
            "http://127.0.0.1:9",
            "must start with https://",
        ),
        (
            "credential = \"line.pem\"",
            "credential = \"none.pem\"",
            "none.pem",
        ),
    ] {
        std::fs::write(&file, base.replace(from, to)).unwrap();
        let out = support::certline()
            .args(["line", "--config"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = common::text(&out.stderr);
        assert!(!out.status.success(), "{says}: started anyway");
        assert!(err.contains(says), "{says}: {err}");
    }
}

/// Issue 12 D12: a barcode's bytes never reach the operator's terminal raw.
/// The real binary, text output, a keyboard-wedge scan carrying colour,
/// title and C1 sequences: every line printed (stdout and the log on stderr)
/// shows them escaped.
#[test]
fn control_characters_in_a_scan_never_reach_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("plugins")).unwrap();
    let ca = common::Ca::init(&[]);
    std::fs::copy(ca.enroll("line", "line-1"), tmp.path().join("line.pem")).unwrap();
    let file = tmp.path().join("line.toml");
    std::fs::write(
        &file,
        "name = \"line-1\"\nstate_dir = \"state\"\n\
         [station]\nurl = \"https://127.0.0.1:9\"\ncredential = \"line.pem\"\n\
         [scanner]\nsource = \"stdin\"\ndebounce_ms = 0\n\
         [device]\naddress = \"127.0.0.1:9\"\n\
         [plugins]\ndir = \"plugins\"\n",
    )
    .unwrap();
    let mut child = support::certline()
        .env("CERTLINE_LOG", "certline::line=info,warn")
        // The log's own colours off, so any escape on stderr is the scan's.
        .env("NO_COLOR", "1")
        .args(["line", "--config"])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut keyboard = child.stdin.take().unwrap();
    // A malformed id wrapped in colour and a window-title sequence; a valid
    // id format with a C1 CSI and a bidi override in the serial; a model no
    // plugin serves, followed by a bell.
    keyboard
        .write_all(
            b"\x1b[31m3012-1\x1b]0;pwned\x07\n\
              3012-\xc2\x9b2J\xe2\x80\xae1\n\
              7777-000001\x07\n",
        )
        .unwrap();
    drop(keyboard);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let stdout = common::text(&out.stdout);
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        for bad in ['\x1b', '\x07', '\u{9b}', '\u{202e}'] {
            assert!(
                !text.contains(bad),
                "{stream} carries a raw {bad:?}:\n{text}"
            );
        }
    }
    assert!(
        stdout.contains("\\x1b[31m3012-1\\x1b]0;pwned\\x07: REFUSED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3012-\\x9b2J\\u{202e}1: REFUSED"),
        "{stdout}"
    );
    assert!(stdout.contains("7777-000001\\x07: REFUSED"), "{stdout}");
    assert!(stdout.contains("shift 0 OK, 3 refused"), "{stdout}");
}
