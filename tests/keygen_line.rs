//! Keys born in the device (`keygen = "device"`), end to end: a real CA,
//! station and line (processes), device simulators with a secure element
//! (`device-sim --keygen`), the imaging plugin on `certline:device@0.2.0`
//! beside a 0.1.0 plugin on the same line. Every bad input ends in one clear
//! operator line and changes nothing it should not.

use std::io::Write;
use std::path::PathBuf;
use std::process::ChildStdin;

use crate::line_support::*;

/// A copy of the example factory's scripts with the example's models
/// replaced by `models` (TOML `[models.X]` tables), plus the model without a
/// certificate that line.lua's self-check expects.
fn scripts(rig: &Rig, name: &str, models: &str) -> PathBuf {
    let dir = rig.example_scripts(name);
    std::fs::write(
        dir.join("factory.toml"),
        format!("name = \"test\"\n\n{models}\n[models.K7]\ncertificate = false\n"),
    )
    .unwrap();
    dir
}

/// A line reading check sheets from the keyboard, with the scripts of
/// [`scripts`] for `models` (in the folder `name`) and its devices on a
/// fresh cable, whose address it returns.
fn keyboard_line(rig: &Rig, name: &str, models: &str) -> (Line, ChildStdin, String) {
    let dir = scripts(rig, name, models);
    let (line, keyboard, _, cable) = rig.keyboard_line(&format!("{name}.toml"), &dir);
    (line, keyboard, cable)
}

/// A rig whose station has model 3012 generate its keys in the device,
/// `count` of them planned today, with the imaging plugin.
fn device_keygen_rig(count: u32) -> Rig {
    Rig::with(
        &["3012"],
        &["--device-keygen-model", "3012"],
        &[&format!("3012,000001,{count}")],
        &[IMAGING],
    )
}

/// The factory.toml models of a line with only the device-keygen model.
const DEVICE_MODEL: &str = "[models.3012]\ncertificate = true\nkeygen = \"device\"\n";

const MODELS: &str =
    "[models.3012]\ncertificate = true\nkeygen = \"device\"\nprofile = { key = \"p256\" }\n\n\
    [models.3013]\ncertificate = true\n\n[models.BAD1]\ncertificate = true\n";

fn sheet(id: &str) -> String {
    let (model, serial) = id.split_once('-').unwrap();
    format!("CS;M={model};S={serial};QC=OK")
}

/// The device's certificate (flash) and the key in its secure element
/// belong together: the key signs, the certificate verifies.
fn assert_secure_key_matches_flash(dev: &Device) {
    let dir = dev.flash().parent().unwrap().to_path_buf();
    assert!(
        !dev.flash().join("key.pem").exists(),
        "a device-generated key must never be in flash"
    );
    let key_pem = std::fs::read_to_string(dir.join("secure/key.pem")).unwrap();
    let key = certline::pki::pem_blocks(&key_pem, "PRIVATE KEY")
        .unwrap()
        .remove(0);
    let chain = std::fs::read_to_string(dev.flash().join("chain.pem")).unwrap();
    let cert = certline::pki::pem_blocks(&chain, "CERTIFICATE")
        .unwrap()
        .remove(0);
    let sig = certline::link::pop::sign(&key, b"probe").unwrap();
    certline::link::pop::verify(&cert, b"probe", &sig).unwrap();
}

#[test]
fn device_keygen_and_ca_keygen_on_one_line_with_old_and_new_plugins() {
    let rig = Rig::with(
        &["3012", "3013", "BAD1"],
        &["--device-keygen-model", "3012"],
        &["3012,000001,4", "3013,000001,1", "BAD1,000001,1"],
        &[IMAGING, MISBEHAVE],
    );
    // Nothing was fetched for the device-keygen model: its stock is its plan.
    let s = rig.factory.stock_of("3012");
    assert_eq!(
        (
            s["keygen"].as_str(),
            s["in_stock"].as_u64(),
            s["planned_today"].as_u64()
        ),
        (Some("device"), Some(0), Some(4)),
        "{s:#}"
    );
    let (mut line, mut keyboard, cable) = keyboard_line(&rig, "scripts", MODELS);

    // Device keygen with the 0.2.0 imaging plugin: written, verified, no key
    // anywhere but in the device's secure element.
    let id = "3012-000001";
    let dev = rig.device(id, Some(&cable), &["--keygen"]);
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    let v = line.device();
    assert_line(&v, id, "ok", "written", &["written and verified"]);
    assert_eq!(rig.states(id), ["flagged"]);
    dev.assert_holds(&rig.root, id, &rig.fingerprint(id, "flagged"));
    assert_secure_key_matches_flash(&dev);
    let report = rig.factory.device(id);
    assert_eq!(report["packs"][0]["key_held"], false, "{report:#}");
    assert_eq!(rig.factory.stock_of("3012")["signed_today"], 1);
    drop(dev);

    // CA keygen with the same 0.2.0 plugin, and a 0.1.0 plugin, on the same line.
    for id in ["3013-000001", "BAD1-000001"] {
        let dev = rig.device(id, Some(&cable), &[]);
        writeln!(keyboard, "{}", sheet(id)).unwrap();
        assert_line(
            &line.device(),
            id,
            "ok",
            "written",
            &["written and verified"],
        );
        dev.assert_holds(&rig.root, id, &rig.fingerprint(id, "flagged"));
        assert!(dev.flash().join("key.pem").exists());
    }

    // A device without a secure element cannot generate a key: refused,
    // nothing signed.
    let id = "3012-000002";
    let dev = rig.device(id, Some(&cable), &[]);
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    assert_line(
        &line.device(),
        id,
        "refused",
        "device_refused",
        &["no secure element", "nothing was signed"],
    );
    assert!(rig.states(id).is_empty());
    assert!(rig.factory.ca.history(id).is_empty());
    drop(dev);

    // A device that generates a key and drops the link: nothing signed.
    let dev = rig.device(id, Some(&cable), &["--keygen", "--drop-after-keygen"]);
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    assert_line(
        &line.device(),
        id,
        "refused",
        "link_dropped",
        &["nothing was signed"],
    );
    assert!(rig.states(id).is_empty());
    assert!(rig.factory.ca.history(id).is_empty());
    drop(dev);

    // A device (or plugin) that answers a CSR for one key and then holds
    // another: caught by the proof of possession; the certificate is revoked.
    let dev = rig.device(id, Some(&cable), &["--keygen", "--csr-for-other-key"]);
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    assert_line(
        &line.device(),
        id,
        "failed",
        "possession_failed",
        &["prove"],
    );
    assert_eq!(rig.states(id), ["revoked"]);
    drop(dev);
    rig.factory.wait_queue_empty();

    // The same device with an honest secure element: a new key, a new
    // certificate; the id has exactly one valid certificate.
    let dev = rig.device(id, Some(&cable), &["--keygen"]);
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    assert_line(&line.device(), id, "ok", "written", &[]);
    assert_eq!(rig.states(id), ["revoked", "flagged"]);
    assert_secure_key_matches_flash(&dev);
    assert_eq!(
        rig.factory.ca.valid(id).len(),
        1,
        "one valid certificate per id"
    );
    drop(dev);
    line.kill();

    // A 0.1.0 plugin serving a model that generates its keys in the device:
    // refused for that model, naming both versions.
    let (mut line, mut keyboard, _) = keyboard_line(
        &rig,
        "scripts-old",
        &MODELS.replace(
            "[models.BAD1]\ncertificate = true\n",
            "[models.BAD1]\ncertificate = true\nkeygen = \"device\"\n",
        ),
    );
    let id = "BAD1-000001";
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    assert_line(
        &line.device(),
        id,
        "refused",
        "plugin_too_old",
        &["certline:device@0.1.0", "certline:device@0.2.0", "BAD1"],
    );
    line.kill();
}

#[test]
fn a_ca_that_is_down_gives_retry_and_loses_nothing() {
    let mut rig = device_keygen_rig(2);
    let (mut line, mut keyboard, cable) = keyboard_line(&rig, "scripts", DEVICE_MODEL);
    let id = "3012-000001";
    let dev = rig.device(id, Some(&cable), &["--keygen"]);

    rig.factory.stop_ca();
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    assert_line(
        &line.device(),
        id,
        "refused",
        "ca_unreachable",
        &["CA unreachable, retry", "nothing was signed"],
    );
    assert!(rig.states(id).is_empty());
    dev.assert_blank();

    rig.factory.start_ca();
    writeln!(keyboard, "{}", sheet(id)).unwrap();
    assert_line(&line.device(), id, "ok", "written", &[]);
    assert_eq!(rig.states(id), ["flagged"]);
    assert_secure_key_matches_flash(&dev);
    line.kill();
}

#[test]
fn a_station_killed_between_the_cas_answer_and_the_lines_result_loses_nothing() {
    for point in ["sign-after-ca", "sign-after-commit"] {
        let mut rig = device_keygen_rig(1);
        rig.stop_station();
        rig.start_station_env(&[("FAILPOINTS", &format!("{point}=pause"))]);
        let (mut line, mut keyboard, cable) = keyboard_line(&rig, "scripts", DEVICE_MODEL);
        let id = "3012-000001";
        let dev = rig.device(id, Some(&cable), &["--keygen"]);

        writeln!(keyboard, "{}", sheet(id)).unwrap();
        rig.station
            .as_ref()
            .unwrap()
            .wait_stderr(&format!("station reached fail point {point}"));
        // SIGKILL: the CA has signed; the line has no answer yet.
        rig.stop_station();
        let v = line.device();
        assert_eq!(v["status"], "refused", "{point}: {v:#}");
        dev.assert_blank();

        rig.start_station();
        writeln!(keyboard, "{}", sheet(id)).unwrap();
        let v = line.device();
        assert_line(&v, id, "ok", "written", &[]);
        assert_secure_key_matches_flash(&dev);
        rig.factory.wait_queue_empty();
        // Exactly one valid certificate for the id, and it is the one in the device.
        let valid = rig.factory.ca.valid(id);
        assert_eq!(
            valid.len(),
            1,
            "{point}: one valid certificate per id: {valid:#?}"
        );
        assert_eq!(
            rig.states(id).last().map(String::as_str),
            Some("flagged"),
            "{point}"
        );
        line.kill();
    }
}
