//! The vendor guide, `plugins/README.md`, run as written: every ```` ```sh test ````
//! block, in order, in one shell with `certline` on the PATH, so the guide's
//! commands cannot rot. Its quick start is issue 18's "done when" for
//! vendors: `plugin new` for a new model, build, `device-sim --exec` with the
//! generated device stub, and `plugin try` green, with no file edited by hand.
//! The Python section's ```` ```sh test-python ```` block is the same for a
//! Python plugin (componentize-py, from tests/prerequisites.d), in a test of
//! its own: its component is 19 MB and the host compiles it at each load.

use std::path::Path;
use std::process::Command;

use crate::common::{bin, text};

/// The ```` ```TAG ```` blocks of a markdown text (`sh test`, `sh
/// test-python`), in order.
fn tested_blocks(markdown: &str, tag: &str) -> Vec<String> {
    let opening = format!("```{tag}");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        let trimmed = line.trim();
        match &mut current {
            None if trimmed == opening => current = Some(Vec::new()),
            None => {}
            Some(_) if trimmed == "```" => blocks.push(current.take().unwrap().join("\n")),
            Some(lines) => lines.push(line),
        }
    }
    assert!(current.is_none(), "a ```{tag} block is not closed");
    blocks
}

/// Runs the guide's `tag` blocks in one shell, in `work` under `tmp`, with
/// `certline` on the PATH; returns stdout and stderr.
fn run_guide(tag: &str, tmp: &Path) -> (String, String) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(source.join("plugins/README.md")).unwrap();
    let blocks = tested_blocks(&guide, tag);
    assert!(!blocks.is_empty(), "the guide has no ```{tag} commands");

    let path_dir = tmp.join("bin");
    std::fs::create_dir(&path_dir).unwrap();
    std::os::unix::fs::symlink(bin(), path_dir.join("certline")).unwrap();
    let work = tmp.join("work");
    std::fs::create_dir(&work).unwrap();
    // The new crate builds in a target folder of its own (about 45 s of
    // CPU, mostly the SDK's proc macros; measured: a copy of plugins/target
    // is not reused, so none is made).
    let target = tmp.join("target");

    let script = format!("set -euo pipefail\n{}\n", blocks.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env(
            "PATH",
            format!(
                "{}:{}",
                path_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CERTLINE_PASSPHRASE")
        .env_remove("CERTLINE_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the guide's commands failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn the_vendor_guide_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (stdout, stderr) = run_guide("sh test", tmp.path());
    // plugin new, then try.sh: check, simulator with the stub, try.
    assert!(
        stdout.contains("made plugin acme-widget for model W1"),
        "{stdout}"
    );
    assert!(stdout.contains("interface: certline:device@"), "{stdout}");
    assert!(
        stdout.contains("wrote W1-000001: received, written"),
        "{stdout}"
    );
    assert!(stdout.contains("proof of possession verified"), "{stdout}");
    // --trace: the link's bytes both ways; the greeting once per session
    // (the endpoint lives for the session, not for one call).
    assert!(
        stderr.contains("> 17 bytes: \"HELLO certline/1\\n\""),
        "{stderr}"
    );
    assert!(stderr.contains("< "), "{stderr}");
    let hellos = stderr.matches("HELLO certline/1").count();
    assert_eq!(hellos, 1, "one HELLO per session:\n{stderr}");
    // Nothing was edited by hand: the crate is what plugin new wrote.
    let made = tmp.path().join("work/acme-widget");
    for f in ["Cargo.toml", "src/lib.rs", "device.py", "try.sh"] {
        assert!(made.join(f).is_file(), "{f} missing");
    }
}

#[test]
fn the_tested_blocks_are_found() {
    let md = "text\n```sh test\na\nb\n```\n```sh\nnot run\n```\n```sh test\nc\n```\n";
    assert_eq!(
        tested_blocks(md, "sh test"),
        vec!["a\nb".to_string(), "c".to_string()]
    );
    assert!(tested_blocks(md, "sh test-python").is_empty());
}

/// `plugin new --lang python`, componentize-py with `--stub-wasi`, `plugin
/// check`, the simulator with the generated device stub, `plugin try`: green
/// with no file edited by hand.
#[test]
fn a_python_plugin_is_made_built_and_tried_as_the_guide_says() {
    let tmp = tempfile::tempdir().unwrap();
    let (stdout, _) = run_guide("sh test-python", tmp.path());
    assert!(
        stdout.contains("made plugin acme-snake for model W2"),
        "{stdout}"
    );
    // Built against the newest interface, importing nothing but the host.
    assert!(
        stdout.contains("interface: certline:device@0.2.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("imports:   certline:device/host@0.2.0\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("device W2-000001 held no identity"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote W2-000001: received, written"),
        "{stdout}"
    );
    assert!(stdout.contains("(matches the pack)"), "{stdout}");
    assert!(stdout.contains("proof of possession verified"), "{stdout}");
    let made = tmp.path().join("work/acme-snake");
    for f in ["app.py", "wit/device.wit", "device.py", "try.sh"] {
        assert!(made.join(f).is_file(), "{f} missing");
    }
}
