//! The station goes away: at take time the line refuses and writes nothing;
//! at report time the written device's results are kept durably on the line,
//! survive a restart of the line, and are delivered in order when the station
//! is back. The kept-alive station connection recovers by itself.

use crate::line_support as line;
use crate::station_support as support;

use line::*;

#[test]
fn station_outages_lose_nothing() {
    let mut rig = Rig::new(&["3012"], &["3012,000001,3"], &[IMAGING]);
    let cable = free_addr();
    let mut scanner = Scanner::new();
    let config = rig.config("line.toml", &scanner.section(0), &cable, "");
    let mut line = Line::start(&config);

    // Station down at take time: nothing taken, nothing written.
    rig.stop_station();
    let id = "3012-000001";
    let first = rig.device(id, Some(&cable), &[]);
    scanner.scan(id);
    assert_line(
        &line.device(),
        id,
        "refused",
        "station_unreachable",
        &["cannot be reached", "nothing was written"],
    );
    first.assert_blank();
    assert_eq!(rig.states(id), ["stocked"]);

    // Back on the same address: the line reconnects by itself.
    rig.start_station();
    scanner.scan(id);
    let v = line.device();
    assert_line(&v, id, "ok", "written", &[]);
    assert_eq!(v["result"], "delivered");
    first.assert_holds(&rig.root, id, &rig.fingerprint(id, "flagged"));
    drop(first);

    // Station down at report time: the device is written, the results kept.
    let id = "3012-000002";
    let slow = rig.device(id, Some(&cable), &["--delay-ms", "700"]);
    scanner.scan(id);
    line.wait_log(&["pack taken", id]);
    rig.stop_station();
    let v = line.device();
    assert_line(&v, id, "ok", "written", &["kept on this line"]);
    assert_eq!(v["result"], "kept");
    let fingerprint = v["fingerprint"].as_str().unwrap().to_string();
    slow.assert_holds(&rig.root, id, &fingerprint);
    drop(slow);

    // The line restarts before the station is back: nothing is lost.
    line.kill();
    let kept = status(&config);
    let waiting: Vec<(String, String)> = kept["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        waiting,
        [
            (id.to_string(), "received".to_string()),
            (id.to_string(), "written".to_string())
        ],
        "{kept:#}"
    );
    assert!(
        !kept.to_string().contains("PRIVATE KEY"),
        "the outbox holds no key material"
    );
    assert_eq!(rig.states(id), ["handed_out"]);

    rig.start_station();
    let line = Line::start(&config);
    let delivered = line.event("delivered");
    assert_eq!(delivered["delivered"], 2, "{delivered:#}");
    assert_eq!(delivered["left"], 0, "{delivered:#}");
    assert_eq!(rig.states(id), ["flagged"]);
    assert_eq!(rig.fingerprint(id, "flagged"), fingerprint);
    let after = status(&config);
    assert!(after["waiting"].as_array().unwrap().is_empty(), "{after:#}");
    let order: Vec<&str> = after["delivered"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["id"] == id)
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["received", "written"], "{after:#}");

    // And the line goes on.
    let third = rig.device("3012-000003", Some(&cable), &[]);
    scanner.scan("3012-000003");
    assert_line(&line.device(), "3012-000003", "ok", "written", &[]);
    third.assert_holds(
        &rig.root,
        "3012-000003",
        &rig.fingerprint("3012-000003", "flagged"),
    );
    rig.factory.assert_agree(&support::ids("3012", 1, 3, 6));
}

/// Issue 12, crash matrix (the line's part): the line SIGKILLed between the
/// device's "written" and the outbox, between the outbox and the delivery,
/// and between the station's answer and the outbox's record of it. After a
/// restart every result is delivered exactly once and the station records it
/// once. Needs `--features failpoints`.
#[cfg(feature = "failpoints")]
#[test]
fn a_line_killed_around_the_outbox_delivers_each_result_exactly_once() {
    use std::process::Stdio;

    let rig = Rig::new(&["3012"], &["3012,000001,4"], &[IMAGING]);
    let cable = free_addr();
    let mut scanner = Scanner::new();
    let config = rig.config("line.toml", &scanner.section(0), &cable, "");

    for (n, point) in [
        "line-written-before-outbox",
        "line-outbox-before-delivery",
        "line-delivered-before-settle",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("3012-00000{}", n + 1);
        let device = rig.device(&id, Some(&cable), &[]);
        let arm = format!("{point}=pause");
        let mut line = Line::start_env(&config, Stdio::null(), &[("FAILPOINTS", &arm)]);
        scanner.scan(&id);
        line.wait_log(&["line reached fail point", point]);
        line.kill();
        // Whatever the station knew at the kill, it holds one pack for the id.
        assert_eq!(rig.states(&id).len(), 1, "{point}: {:?}", rig.states(&id));

        let line = Line::start(&config);
        if point == "line-written-before-outbox" {
            // Nothing was committed: the restarted line asks the device.
            let v = line.event("resumed");
            assert_eq!(v["id"], id.as_str(), "{v:#}");
            assert_eq!(v["result"], "written", "{v:#}");
        }
        let delivered = line.event("delivered");
        assert_eq!(delivered["left"], 0, "{point}: {delivered:#}");
        assert_eq!(rig.states(&id), ["flagged"], "{point}");
        let fingerprint = rig.fingerprint(&id, "flagged");
        device.assert_holds(&rig.root, &id, &fingerprint);

        // Exactly once: the outbox delivered "received" and "written" once
        // each, and nothing waits.
        let after = status(&config);
        assert!(after["waiting"].as_array().unwrap().is_empty(), "{after:#}");
        let kinds: Vec<&str> = after["delivered"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["id"] == id.as_str())
            .map(|d| d["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["received", "written"], "{point}: {after:#}");
        drop(line);
        drop(device);
    }

    // Killed between "written" and the outbox, and the device is gone by the
    // restart: the write cannot be confirmed, so it is recorded as failed
    // (the station revokes that certificate and stocks a fresh one).
    let id = "3012-000004";
    let device = rig.device(id, Some(&cable), &[]);
    let mut line = Line::start_env(
        &config,
        Stdio::null(),
        &[("FAILPOINTS", "line-written-before-outbox=pause")],
    );
    scanner.scan(id);
    line.wait_log(&["line reached fail point line-written-before-outbox"]);
    line.kill();
    drop(device);
    let line = Line::start(&config);
    let v = line.event("resumed");
    assert_eq!(v["result"], "failed", "{v:#}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the device"),
        "{v:#}"
    );
    line.event("delivered");
    let states = rig.states(id);
    assert_eq!(states[0], "revoked", "{states:?}");
    drop(line);
    rig.factory.assert_agree(&support::ids("3012", 1, 4, 6));
}
