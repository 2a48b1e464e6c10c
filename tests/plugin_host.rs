//! The plugin host as a line uses it: one host process (this test), plugins
//! from a folder, real device simulators over real TLS. Misbehaving plugins
//! fail one write each and the next write on the same host succeeds; the
//! folder refuses bad files and hot-reloads.

use crate::device_support as support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certline::link::{self, DeviceAddr, DeviceLink};
use certline::pki::credential::Credential;
use certline::pki::pack::Pack;
use certline::plugin::folder::PluginFolder;
use certline::plugin::{Fault, Limits, PluginEngine, Precheck, WriteJob};
use support::*;

/// Generous: the wait ends as soon as the folder changes.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// Which fault a misbehaving write must end in.
type FaultCheck = fn(&Fault) -> bool;

fn engine() -> Arc<PluginEngine> {
    // A smaller fuel budget than the default keeps the looping plugin's test
    // short; a real write needs a few million units.
    PluginEngine::new(Limits {
        fuel: 300_000_000,
        memory: 32 << 20,
        ..Limits::default()
    })
    .unwrap()
}

fn folder_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (plugin, as_name) in files {
        std::fs::copy(wasm(plugin), dir.path().join(as_name)).unwrap();
    }
    dir
}

fn connect(pki: &Pki, addr: &str) -> Box<dyn DeviceLink> {
    let cred = Credential::load(&pki.line()).unwrap();
    let tls = link::line_config(&cred).unwrap();
    Box::new(
        link::connect(
            &DeviceAddr::parse(addr).unwrap(),
            tls,
            Duration::from_secs(30),
        )
        .unwrap(),
    )
}

fn job(pack: &Path) -> WriteJob {
    WriteJob::new(&Pack::read_dir(pack).unwrap()).unwrap()
}

#[test]
fn misbehaving_plugins_fail_one_write_and_the_next_write_succeeds() {
    let pki = Pki::new();
    let packs = pki.issue(&[
        "BAD1-000001",
        "BAD1-TRAP1",
        "BAD1-SPIN1",
        "BAD1-HOG1",
        "BAD1-MALFORM1",
    ]);
    let sim = Sim::start(
        &pki.path().join("dev"),
        "BAD1-000001",
        &pki.device_link(),
        false,
        &[],
    );
    let folder = folder_with(&[(MISBEHAVE, "misbehave.wasm")]);
    let plugins = PluginFolder::open(folder.path(), engine()).unwrap();
    let plugin = plugins.for_model("BAD1").expect("misbehave serves BAD1");

    let cases: [(&str, FaultCheck, &str); 4] = [
        (
            "BAD1-TRAP1",
            |f| {
                matches!(
                    f,
                    Fault::Trap {
                        call: "write-pack",
                        ..
                    }
                )
            },
            "trapped in write-pack",
        ),
        (
            "BAD1-SPIN1",
            |f| {
                matches!(
                    f,
                    Fault::OutOfFuel {
                        call: "write-pack",
                        ..
                    }
                )
            },
            "used up its fuel budget",
        ),
        (
            "BAD1-HOG1",
            |f| {
                matches!(
                    f,
                    Fault::Memory {
                        call: "write-pack",
                        cap: 32,
                        ..
                    }
                )
            },
            "memory cap of 32 MiB",
        ),
        (
            "BAD1-MALFORM1",
            |f| {
                matches!(
                    f,
                    Fault::Malformed {
                        call: "write-pack",
                        ..
                    }
                )
            },
            "malformed answer from write-pack",
        ),
    ];
    for (id, is_expected, says) in cases {
        let mut device = connect(&pki, &sim.addr);
        // The misbehaviour is keyed to the pack's serial, so skip the id check
        // that would otherwise stop these packs before the plugin runs.
        let err = plugin
            .write(&mut device, &job(&packs.join(id)), Precheck::Skip)
            .unwrap_err();
        device.close();
        assert!(
            is_expected(&err.fault),
            "{id}: unexpected fault {:?}",
            err.fault
        );
        let message = err.to_string();
        assert!(message.starts_with("plugin misbehave:"), "{message}");
        assert!(message.contains(says), "{id}: {message}");
        if id == "BAD1-TRAP1" {
            // The SDK's panic hook: the trap says what panicked and where.
            assert!(
                message.contains("misbehave: deliberate trap for BAD1-TRAP1")
                    && message.contains("misbehave/src/lib.rs:"),
                "{message}"
            );
        }
        assert!(!err.received, "{id}: nothing was received");
        assert!(snapshot(&sim.flash()).is_empty(), "{id}: flash written");

        // The same host, the same plugin: the next write works.
        let good = packs.join("BAD1-000001");
        let mut device = connect(&pki, &sim.addr);
        let report = plugin
            .write(&mut device, &job(&good), Precheck::CheckId)
            .unwrap();
        device.close();
        assert!(report.written && report.possession_proved);
        assert_flash_holds(&sim.flash(), &good, "BAD1-000001");
        std::fs::remove_dir_all(sim.flash()).unwrap();
    }
}

/// Hostile plugins (issue 12, matrix item 2): each attack fails that one
/// device with an error naming what the plugin did, within the operation's
/// deadline, and the next device on the same host writes.
#[test]
fn hostile_plugins_fail_one_device_each_and_the_next_device_writes() {
    let pki = Pki::new();
    let ids = [
        "EVIL-000001",
        "EVIL-FLOOD1",
        "EVIL-ZERO1",
        "EVIL-BIGID1",
        "EVIL-HOLD1",
        "EVIL-REPORT1",
        "EVIL-LOUD1",
    ];
    let packs = pki.issue(&ids);
    let sim = Sim::start(
        &pki.path().join("dev"),
        "EVIL-000001",
        &pki.device_link(),
        false,
        &[],
    );
    let folder = folder_with(&[(HOSTILE, "hostile.wasm")]);
    // A short deadline keeps the endless-polling case short; a real write
    // takes a fraction of it.
    let engine = PluginEngine::new(Limits {
        fuel: 300_000_000,
        memory: 32 << 20,
        deadline: Duration::from_secs(5),
    })
    .unwrap();
    let plugins = PluginFolder::open(folder.path(), engine).unwrap();
    let plugin = plugins.for_model("EVIL").expect("hostile serves EVIL");

    let cases: [(&str, FaultCheck, &str, bool); 6] = [
        // The device stops reading, so the flood blocks in a write: that
        // write ends at the operation's deadline, not at a timeout of its own.
        (
            "EVIL-FLOOD1",
            |f| {
                matches!(
                    f,
                    Fault::Deadline {
                        call: "write-pack",
                        secs: 5
                    }
                )
            },
            "ran past the device operation's deadline of 5 s in write-pack",
            false,
        ),
        (
            "EVIL-ZERO1",
            |f| {
                matches!(
                    f,
                    Fault::Deadline {
                        call: "write-pack",
                        secs: 5
                    }
                )
            },
            "ran past the device operation's deadline of 5 s in write-pack",
            false,
        ),
        (
            "EVIL-BIGID1",
            |f| {
                matches!(
                    f,
                    Fault::Memory {
                        call: "read-identity",
                        cap: 32,
                        ..
                    }
                )
            },
            "memory cap of 32 MiB in read-identity",
            true,
        ),
        (
            "EVIL-HOLD1",
            |f| {
                matches!(
                    f,
                    Fault::Rule {
                        call: "write-pack",
                        ..
                    }
                )
            },
            "kept the device link it was lent past the end of write-pack",
            false,
        ),
        (
            "EVIL-REPORT1",
            |f| {
                matches!(
                    f,
                    Fault::Rule {
                        call: "write-pack",
                        ..
                    }
                )
            },
            "reported \"received\" more than once",
            true,
        ),
        (
            "EVIL-LOUD1",
            |f| {
                matches!(
                    f,
                    Fault::Device {
                        call: "write-pack",
                        ..
                    }
                )
            },
            "the device refused in write-pack: \\x1b]0;owned\\x07\\x1b[31m",
            false,
        ),
    ];
    for (id, is_expected, says, received) in cases {
        let mut device = connect(&pki, &sim.addr);
        let err = plugin
            .write(&mut device, &job(&packs.join(id)), Precheck::Skip)
            .unwrap_err();
        // Closed and gone: a device left blocked by the flood sees the end.
        device.close();
        drop(device);
        assert!(
            is_expected(&err.fault),
            "{id}: unexpected fault {:?}",
            err.fault
        );
        let message = err.to_string();
        assert!(message.starts_with("plugin hostile:"), "{message}");
        assert!(message.contains(says), "{id}: {message}");
        assert!(
            message.len() < 2048,
            "{id}: a {} byte error message",
            message.len()
        );
        assert!(
            !message.contains(['\x1b', '\x07']),
            "{id}: raw control characters in {message:?}"
        );
        assert_eq!(err.received, received, "{id}: received");
        assert!(snapshot(&sim.flash()).is_empty(), "{id}: flash written");

        // The same host, the same plugin: the next device writes.
        let good = packs.join("EVIL-000001");
        let mut device = connect(&pki, &sim.addr);
        let report = plugin
            .write(&mut device, &job(&good), Precheck::CheckId)
            .unwrap_or_else(|e| panic!("after {id}: {e}"));
        device.close();
        assert!(report.written && report.possession_proved);
        assert_flash_holds(&sim.flash(), &good, "EVIL-000001");
        std::fs::remove_dir_all(sim.flash()).unwrap();
    }
}

#[test]
fn bad_files_in_the_plugin_folder_are_refused_and_the_good_ones_serve() {
    let folder = folder_with(&[
        (IMAGING, "imaging.wasm"),
        (WRONG_WORLD, "command.wasm"),
        (FUTURE_VERSION, "future.wasm"),
        (SNEAKY, "sneaky.wasm"),
    ]);
    std::fs::write(folder.path().join("readme.wasm"), "this is text").unwrap();
    std::fs::write(folder.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(
        folder.path().join("notes.txt"),
        "not a plugin, not looked at",
    )
    .unwrap();
    let plugins = PluginFolder::open(folder.path(), engine()).unwrap();

    assert_eq!(plugins.for_model("3012").unwrap().name(), "acme-imaging");
    assert_eq!(plugins.status().len(), 1);
    let refused = plugins.refused();
    let says = |file: &str| {
        refused
            .get(&folder.path().join(file))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        says("command.wasm").contains("does not export certline:device/device"),
        "{refused:?}"
    );
    assert!(
        says("future.wasm").contains("certline:device@0.3.0")
            && says("future.wasm").contains("certline:device@0.2.0")
    );
    assert!(says("readme.wasm").contains("not a WebAssembly file"));
    assert!(says("core.wasm").contains("not a component"));
    assert!(
        says("sneaky.wasm").contains("wasi:sockets/tcp@0.2.6")
            && says("sneaky.wasm").contains("does not grant")
    );
    assert_eq!(refused.len(), 5, "{refused:?}");
}

#[test]
fn two_plugins_claiming_one_model_code_is_an_error_naming_both() {
    let folder = folder_with(&[(IMAGING, "a-imaging.wasm"), (DUP_MODEL, "b-dup.wasm")]);
    let plugins = PluginFolder::open(folder.path(), engine()).unwrap();
    let refused = plugins.refused();
    let why = refused
        .get(&folder.path().join("b-dup.wasm"))
        .expect("the second claimant is refused");
    assert!(
        why.contains("dup-model claims model code 3012, which plugin acme-imaging")
            && why.contains("a-imaging.wasm"),
        "{why}"
    );
    assert_eq!(plugins.for_model("3012").unwrap().name(), "acme-imaging");
}

#[test]
fn the_folder_hot_reloads_and_keeps_the_old_version_when_a_new_one_is_broken() {
    let folder = folder_with(&[(METER, "meter.wasm")]);
    let plugins = PluginFolder::open(folder.path(), engine()).unwrap();
    plugins.watch().unwrap();
    assert!(plugins.for_model("3012").is_none());

    // A new plugin takes effect.
    let seen = plugins.generation();
    std::fs::copy(wasm(IMAGING), folder.path().join("imaging.wasm")).unwrap();
    wait_until(&plugins, seen, || plugins.for_model("3012").is_some());
    assert_eq!(plugins.for_model("3013").unwrap().name(), "acme-imaging");

    // A broken replacement is refused; the previous version keeps serving.
    let seen = plugins.generation();
    std::fs::write(folder.path().join("imaging.wasm"), "truncated upload").unwrap();
    wait_until(&plugins, seen, || {
        plugins
            .refused()
            .contains_key(&folder.path().join("imaging.wasm"))
    });
    assert_eq!(plugins.for_model("3012").unwrap().name(), "acme-imaging");
    assert!(
        plugins.refused()[&folder.path().join("imaging.wasm")].contains("not a WebAssembly file")
    );

    // A good replacement (another plugin in the same file) takes over.
    let seen = plugins.generation();
    std::fs::copy(wasm(DUP_MODEL), folder.path().join("imaging.wasm")).unwrap();
    wait_until(&plugins, seen, || {
        plugins
            .for_model("3012")
            .is_some_and(|p| p.name() == "dup-model")
    });
    assert!(
        plugins.for_model("3013").is_none(),
        "the old version no longer serves"
    );
    assert!(plugins.refused().is_empty());

    // A removed plugin stops serving; the others stay.
    let seen = plugins.generation();
    std::fs::remove_file(folder.path().join("imaging.wasm")).unwrap();
    wait_until(&plugins, seen, || plugins.for_model("3012").is_none());
    assert_eq!(plugins.for_model("A123").unwrap().name(), "acme-meter");
}

/// Waits for the watcher to reload until `done` holds (or gives up after a
/// generous bound and lets the assertion say what is missing).
fn wait_until(plugins: &PluginFolder, mut seen: u64, done: impl Fn() -> bool) {
    let give_up = std::time::Instant::now() + RELOAD_WAIT;
    while !done() && std::time::Instant::now() < give_up {
        seen = plugins.wait_for_change(seen, Duration::from_secs(1));
    }
    assert!(
        done(),
        "the plugin folder did not reload as expected; refused: {:?}",
        plugins.refused()
    );
}
