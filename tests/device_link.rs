//! Black-box tests of the device side through the real binary: `certline
//! device-sim` as a separate process, real TLS, real pseudo-terminals, the
//! example plugins built from plugins/, driven by `certline plugin try`.

use crate::device_support as support;

use support::*;

#[test]
fn imaging_plugin_writes_a_pack_over_tcp() {
    let pki = Pki::new();
    let pack = pki.pack("3012-100001");
    let sim = Sim::start(
        &pki.path().join("dev"),
        "3012-100001",
        &pki.device_link(),
        false,
        &[],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &["--json"]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sim.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["device_id"], "3012-100001");
    assert_eq!(report["report"]["received"], true);
    assert_eq!(report["report"]["possession_proved"], true);
    assert_eq!(
        report["report"]["before"]["fingerprint"],
        serde_json::Value::Null
    );
    assert_flash_holds(&sim.flash(), &pack, "3012-100001");
    assert_no_leftovers(&sim.dir);
    assert_eq!(
        std::fs::read_to_string(sim.dir.join("nvram/id"))
            .unwrap()
            .trim(),
        "3012-100001"
    );
}

#[test]
fn meter_plugin_writes_a_pack_over_a_serial_pty() {
    let pki = Pki::new();
    let pack = pki.pack("A123-200001");
    let sim = Sim::start(
        &pki.path().join("meter"),
        "A123-200001",
        &pki.device_link(),
        true,
        &[],
    );
    assert!(
        sim.addr.starts_with("/dev/"),
        "pty path expected, got {}",
        sim.addr
    );
    let out = plugin_try(&pki, METER, &sim.addr, &pack, &[]);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sim.log()
    );
    assert!(text(&out.stdout).contains("proof of possession verified"));
    assert_flash_holds(&sim.flash(), &pack, "A123-200001");

    // The device keeps serving: a second session on the same pty reads back.
    let again = plugin_try(&pki, METER, &sim.addr, &pack, &["--json"]);
    assert!(
        again.status.success(),
        "{}\n{}",
        text(&again.stderr),
        sim.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["report"]["before"]["device_id"], "A123-200001");
}

/// A device that already holds an identity, and a pack for it from another CA
/// (so that old and new flash differ).
fn provisioned_device(pki: &Pki, id: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let other = Pki::new();
    let old = other.pack(id);
    let dir = pki.path().join(format!("dev-{id}"));
    std::fs::create_dir_all(dir.join("flash")).unwrap();
    for f in ["root.pem", "chain.pem", "key.pem"] {
        std::fs::copy(old.join(f), dir.join("flash").join(f)).unwrap();
    }
    (dir, pki.pack(id))
}

#[test]
fn a_link_dropped_after_received_leaves_flash_unchanged() {
    let pki = Pki::new();
    let (dir, pack) = provisioned_device(&pki, "3012-300001");
    let before = snapshot(&dir.join("flash"));
    let sim = Sim::start(
        &dir,
        "3012-300001",
        &pki.device_link(),
        false,
        &["--drop-after-received"],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(
        &out,
        &[
            "plugin acme-imaging",
            "write-pack",
            "link closed",
            "after the device reported \"received\"",
        ],
    );
    assert_eq!(
        snapshot(&sim.flash()),
        before,
        "flash changed after a dropped link"
    );
    assert_no_leftovers(&sim.dir);
}

#[test]
fn a_serial_link_dropped_mid_write_leaves_flash_unchanged() {
    let pki = Pki::new();
    let (dir, pack) = provisioned_device(&pki, "A123-300002");
    let before = snapshot(&dir.join("flash"));
    let mut sim = Sim::start(
        &dir,
        "A123-300002",
        &pki.device_link(),
        true,
        &["--drop-after-received"],
    );
    let out = plugin_try(&pki, METER, &sim.addr, &pack, &[]);
    assert_fails(&out, &["plugin acme-meter", "write-pack", "link"]);
    assert!(sim.wait().success());
    assert_eq!(
        snapshot(&sim.flash()),
        before,
        "flash changed after a dropped link"
    );
    assert_no_leftovers(&sim.dir);
}

#[test]
fn a_failed_write_reports_the_device_reason_and_leaves_flash_unchanged() {
    let pki = Pki::new();
    let (dir, pack) = provisioned_device(&pki, "3012-300003");
    let before = snapshot(&dir.join("flash"));
    let sim = Sim::start(
        &dir,
        "3012-300003",
        &pki.device_link(),
        false,
        &["--fail-write", "flash worn out"],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(&out, &["the device refused in write-pack: flash worn out"]);
    assert_eq!(snapshot(&sim.flash()), before);
}

#[test]
fn a_device_with_another_id_is_refused_before_and_by_the_device() {
    let pki = Pki::new();
    let pack = pki.pack("3012-400001");
    let sim = Sim::start(
        &pki.path().join("dev"),
        "3012-400009",
        &pki.device_link(),
        false,
        &[],
    );
    // The line checks first...
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(
        &out,
        &["the device is 3012-400009, but the pack is for 3012-400001"],
    );
    // ...and the device checks too, if the pack gets there anyway.
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &["--no-precheck"]);
    assert_fails(
        &out,
        &["pack is for 3012-400001, this device is 3012-400009"],
    );
    assert!(
        snapshot(&sim.flash()).is_empty(),
        "flash written for the wrong device"
    );
}

#[test]
fn a_device_reporting_another_id_is_refused() {
    let pki = Pki::new();
    let pack = pki.pack("3012-400002");
    let sim = Sim::start(
        &pki.path().join("dev"),
        "3012-400002",
        &pki.device_link(),
        false,
        &["--report-id", "3012-999999"],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(
        &out,
        &["the device is 3012-999999, but the pack is for 3012-400002"],
    );
    assert!(snapshot(&sim.flash()).is_empty());
}

#[test]
fn a_corrupt_read_back_fails_the_write() {
    let pki = Pki::new();
    let pack = pki.pack("3012-400003");
    let sim = Sim::start(
        &pki.path().join("dev"),
        "3012-400003",
        &pki.device_link(),
        false,
        &["--corrupt-readback"],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(&out, &["read-back mismatch", "the pack's certificate is"]);
}

#[test]
fn a_slow_device_runs_into_the_deadline() {
    let pki = Pki::new();
    let pack = pki.pack("3012-400004");
    let sim = Sim::start(
        &pki.path().join("dev"),
        "3012-400004",
        &pki.device_link(),
        false,
        &["--delay-ms", "5000"],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &["--timeout-ms", "1000"]);
    assert_fails(&out, &["plugin acme-imaging", "read-identity", "timed out"]);
    assert!(snapshot(&sim.flash()).is_empty());
}

#[test]
fn a_garbled_frame_is_a_protocol_error() {
    let pki = Pki::new();
    let pack = pki.pack("A123-500001");
    let sim = Sim::start(
        &pki.path().join("meter"),
        "A123-500001",
        &pki.device_link(),
        true,
        &["--garble"],
    );
    let out = plugin_try(&pki, METER, &sim.addr, &pack, &[]);
    assert_fails(
        &out,
        &[
            "plugin acme-meter",
            "device protocol error",
            "garbled frame",
        ],
    );
    assert!(snapshot(&sim.flash()).is_empty());

    let pack = pki.pack("3012-500002");
    let sim = Sim::start(
        &pki.path().join("printer"),
        "3012-500002",
        &pki.device_link(),
        false,
        &["--garble"],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(&out, &["plugin acme-imaging", "garbled frame header"]);
    assert!(snapshot(&sim.flash()).is_empty());
}

#[test]
fn a_bad_crc_is_retried() {
    let pki = Pki::new();
    let pack = pki.pack("A123-500003");
    let sim = Sim::start(
        &pki.path().join("meter"),
        "A123-500003",
        &pki.device_link(),
        true,
        &["--bad-crc", "2"],
    );
    let out = plugin_try(&pki, METER, &sim.addr, &pack, &[]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), sim.log());
    assert_flash_holds(&sim.flash(), &pack, "A123-500003");
}

#[test]
fn a_crc_that_stays_bad_fails_cleanly() {
    let pki = Pki::new();
    let pack = pki.pack("A123-500004");
    let sim = Sim::start(
        &pki.path().join("meter"),
        "A123-500004",
        &pki.device_link(),
        true,
        &["--bad-crc", "100"],
    );
    let out = plugin_try(&pki, METER, &sim.addr, &pack, &[]);
    assert_fails(&out, &["plugin acme-meter", "read-identity", "bad CRC"]);
    assert!(snapshot(&sim.flash()).is_empty());
}

#[test]
fn a_device_with_a_link_credential_from_another_vendor_is_refused() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let pack = pki.pack("3012-600001");
    let sim = Sim::start(
        &pki.path().join("dev"),
        "3012-600001",
        &stranger.device_link(),
        false,
        &[],
    );
    let out = plugin_try(&pki, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(
        &out,
        &["TLS handshake with tcp", "invalid peer certificate"],
    );
    assert!(snapshot(&sim.flash()).is_empty());
}

#[test]
fn a_line_without_a_line_credential_is_refused() {
    let pki = Pki::new();
    let pack = pki.pack("3012-600002");
    let sim = Sim::start(
        &pki.path().join("dev"),
        "3012-600002",
        &pki.device_link(),
        false,
        &[],
    );
    // A station credential of the right CA is still not a line credential.
    let station = pki.path().join("station.pem");
    pki.enroll("station", "station-1", &station);
    let out = certline()
        .args(["plugin", "try", "--plugin"])
        .arg(wasm(IMAGING))
        .args(["--device", &sim.addr, "--pack"])
        .arg(&pack)
        .arg("--credential")
        .arg(&station)
        .output()
        .unwrap();
    assert_fails(
        &out,
        &[
            "station credential",
            "the device link needs a line credential",
        ],
    );
    // A line of another CA gets no link either.
    let stranger = Pki::new();
    let out = plugin_try(&stranger, IMAGING, &sim.addr, &pack, &[]);
    assert_fails(&out, &["handshake"]);
    assert!(snapshot(&sim.flash()).is_empty());
}

#[test]
fn a_device_sim_refuses_a_credential_that_is_not_a_device_link() {
    let pki = Pki::new();
    let out = certline()
        .args([
            "device-sim",
            "--model",
            "3012",
            "--serial",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(pki.path().join("dev"))
        .arg("--credential")
        .arg(pki.line())
        .output()
        .unwrap();
    assert_fails(
        &out,
        &["line credential", "a device needs a device-link credential"],
    );
}

#[test]
fn a_device_keeps_its_id() {
    let pki = Pki::new();
    let dir = pki.path().join("dev");
    drop(Sim::start(
        &dir,
        "3012-700001",
        &pki.device_link(),
        false,
        &[],
    ));
    let out = certline()
        .args([
            "device-sim",
            "--model",
            "3012",
            "--serial",
            "700002",
            "--listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_fails(&out, &["is 3012-700001 (its NVRAM says so)", "3012-700002"]);
}

#[test]
fn plugin_try_refuses_a_pack_for_a_model_the_plugin_does_not_serve() {
    let pki = Pki::new();
    let pack = pki.pack("A123-800001");
    let out = plugin_try(&pki, IMAGING, "127.0.0.1:9", &pack, &[]);
    assert_fails(
        &out,
        &["plugin acme-imaging serves model codes 3012, 3013, 3014; the pack is for A123-800001"],
    );
}

#[test]
fn plugin_check_describes_a_plugin_and_refuses_bad_files() {
    let out = ok(certline()
        .args(["plugin", "check", "--json"])
        .arg(wasm(METER)));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "acme-meter");
    assert_eq!(v["interface"], "certline:device@0.1.0");
    assert_eq!(v["models"], serde_json::json!(["A123"]));
    assert!(v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "certline:device/device@0.1.0"));

    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "not wasm").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (text_file, "not a WebAssembly file"),
        (core, "a core WebAssembly module, not a component"),
        (
            wasm(WRONG_WORLD),
            "does not export certline:device/device (it exports: wasi:cli/run",
        ),
        (wasm(SNEAKY), "it imports wasi:filesystem/types@0.2.6"),
        (
            wasm(FUTURE_VERSION),
            "built against certline:device@0.3.0, newer than this host's certline:device@0.2.0",
        ),
    ];
    for (file, says) in cases {
        let out = certline()
            .args(["plugin", "check"])
            .arg(&file)
            .output()
            .unwrap();
        assert_fails(&out, &[says]);
    }
}
