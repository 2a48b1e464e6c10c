//! The line terminal end to end: a real CA and station (processes, mTLS), one
//! device simulator process at a time on the line's cable address, the
//! scanner on a pseudo-terminal pair, real WASM plugins. Every bad input ends
//! in one clear operator line, changes nothing it should not, and the line
//! goes on to write the next device.

use crate::line_support as line;

use line::*;

#[test]
fn writes_devices_from_scans_and_refuses_every_bad_input() {
    let rig = Rig::new(
        &["3012", "BAD1"],
        &["3012,000001,6", "BAD1,TRAP1,1"],
        &[IMAGING, MISBEHAVE],
    );
    let cable = free_addr();
    let mut scanner = Scanner::new();
    let config = rig.config("line.toml", &scanner.section(3000), &cable, "");
    let line = Line::start(&config);

    // A good scan, with the reader's AIM prefix: written, verified, reported.
    let id = "3012-000001";
    let first = rig.device(id, Some(&cable), &[]);
    scanner.scan(&format!("]C1{id}"));
    let v = line.device();
    assert_line(&v, id, "ok", "written", &["written and verified"]);
    assert_eq!(v["result"], "delivered");
    assert_eq!(v["shift"]["ok"], 1);
    assert_eq!(rig.states(id), ["flagged"]);
    first.assert_holds(&rig.root, id, &rig.fingerprint(id, "flagged"));
    let written_flash = std::fs::read(first.flash().join("chain.pem")).unwrap();

    // A malformed barcode: nothing touched.
    scanner.scan("3012000001");
    assert_line(
        &line.device(),
        "3012000001",
        "refused",
        "malformed_barcode",
        &["not a device id", "no '-'"],
    );

    // The same device scanned twice: the station says it is done; the flash
    // keeps its identity.
    scanner.scan(id);
    assert_line(
        &line.device(),
        id,
        "refused",
        "already_written",
        &["already has its certificate"],
    );
    assert_eq!(
        std::fs::read(first.flash().join("chain.pem")).unwrap(),
        written_flash
    );
    assert_eq!(rig.states(id), ["flagged"]);
    drop(first);

    // A model the station does not know (the line has its plugin).
    let unknown = rig.device("3013-000001", Some(&cable), &[]);
    scanner.scan("3013-000001");
    assert_line(
        &line.device(),
        "3013-000001",
        "refused",
        "unknown_model",
        &["does not know model 3013"],
    );
    unknown.assert_blank();
    drop(unknown);

    // A model no plugin on this line serves: refused before the device is touched.
    scanner.scan("7777-000001");
    assert_line(
        &line.device(),
        "7777-000001",
        "refused",
        "no_plugin",
        &["no device plugin for model 7777"],
    );

    // An id that is not in today's plan.
    let stray = rig.device("3012-999999", Some(&cable), &[]);
    scanner.scan("3012-999999");
    assert_line(
        &line.device(),
        "3012-999999",
        "refused",
        "not_in_plan",
        &["not in the production plan"],
    );
    stray.assert_blank();
    drop(stray);

    // The plate says one device, the cable has another: nothing taken.
    let other = rig.device("3012-000003", Some(&cable), &[]);
    scanner.scan("3012-000002");
    assert_line(
        &line.device(),
        "3012-000002",
        "refused",
        "wrong_device",
        &["says it is 3012-000003", "3012-000002"],
    );
    other.assert_blank();
    assert_eq!(rig.states("3012-000002"), ["stocked"]);
    assert_eq!(rig.states("3012-000003"), ["stocked"]);
    drop(other);

    // A device that refuses the write: failed, revoked at the station.
    let worn = rig.device(
        "3012-000004",
        Some(&cable),
        &["--fail-write", "flash worn out"],
    );
    scanner.scan("3012-000004");
    assert_line(
        &line.device(),
        "3012-000004",
        "failed",
        "device_refused",
        &["refused the write", "flash worn out"],
    );
    worn.assert_blank();
    assert_eq!(rig.states("3012-000004")[0], "revoked");
    drop(worn);

    // A device that drops the link mid-write (after "received").
    let drop_dev = rig.device("3012-000005", Some(&cable), &["--drop-after-received"]);
    scanner.scan("3012-000005");
    assert_line(
        &line.device(),
        "3012-000005",
        "failed",
        "link_dropped",
        &["dropped during the write"],
    );
    drop_dev.assert_blank();
    assert_eq!(rig.states("3012-000005")[0], "revoked");
    let history = rig.factory.device("3012-000005");
    assert!(
        history.to_string().contains("received"),
        "the station heard 'received' first: {history:#}"
    );
    drop(drop_dev);

    // A plugin that traps: that write fails, the line goes on.
    let trap = rig.device("BAD1-TRAP1", Some(&cable), &[]);
    scanner.scan("BAD1-TRAP1");
    assert_line(
        &line.device(),
        "BAD1-TRAP1",
        "failed",
        "plugin_fault",
        &["plugin failed", "trapped"],
    );
    trap.assert_blank();
    assert_eq!(rig.states("BAD1-TRAP1")[0], "revoked");
    drop(trap);

    // A double trigger is one scan; the next device is written.
    let next = rig.device("3012-000006", Some(&cable), &[]);
    scanner.send(b"3012-000006\r\n3012-000006\r\n");
    scanner.scan("END");
    let v = line.device();
    assert_line(&v, "3012-000006", "ok", "written", &[]);
    let v2 = line.device();
    assert_eq!(
        v2["scan"], "END",
        "the double trigger was not ignored: {v2:#}"
    );
    next.assert_holds(
        &rig.root,
        "3012-000006",
        &rig.fingerprint("3012-000006", "flagged"),
    );
    assert_eq!(v2["shift"]["ok"], 2);
    assert_eq!(v2["shift"]["failed"], 3);
    assert_eq!(v2["shift"]["refused"], 7);
}

#[test]
fn writes_a_meter_over_a_serial_link() {
    let rig = Rig::new(&["A123"], &["A123,000001,2"], &[METER]);
    let meter = rig.device("A123-000001", None, &[]);
    let mut scanner = Scanner::new();
    let config = rig.config("line.toml", &scanner.section(0), &meter.addr, "");
    let line = Line::start(&config);
    scanner.scan("]Q3A123-000001");
    let v = line.device();
    assert_line(
        &v,
        "A123-000001",
        "ok",
        "written",
        &["written and verified"],
    );
    meter.assert_holds(
        &rig.root,
        "A123-000001",
        &rig.fingerprint("A123-000001", "flagged"),
    );
    // The serial link is reusable: the same device again is refused by the
    // station, over a second session on the same port.
    scanner.scan("A123-000001");
    assert_line(
        &line.device(),
        "A123-000001",
        "refused",
        "already_written",
        &[],
    );
}
