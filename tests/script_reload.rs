//! Hot reload of a line script while scans keep coming: a good edit takes the
//! next scan, every broken edit is refused with its file and line while the
//! previous version keeps parsing, and an editor's rename-over save works.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certline::script::line::{open_folder, LineScript, ParseOutcome};
use certline::script::{Limits, ScriptFile};

const WAIT: Duration = Duration::from_secs(10);

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example")
}

fn copy_example(dir: &Path) {
    for f in ["line.lua", "factory.toml", "retention.lua"] {
        std::fs::copy(example().join(f), dir.join(f)).unwrap();
    }
}

/// Saves like an editor that writes a new file and renames it over the old.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("lua.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn id_of(file: &ScriptFile<LineScript>, scan: &str) -> String {
    match file.current().parse(scan).unwrap() {
        ParseOutcome::Device(p) => p.id.to_string(),
        ParseOutcome::NotADevice(why) => format!("refused: {why}"),
        ParseOutcome::Refused { code, why } => format!("refused ({code}): {why}"),
    }
}

/// Waits for the reload of the next change and returns what it did.
fn await_change(file: &ScriptFile<LineScript>, seen: u64) -> u64 {
    let now = file.wait_for_change(seen, WAIT);
    assert!(now > seen, "no reload within {WAIT:?}");
    now
}

#[test]
fn edits_take_the_next_scan_and_broken_edits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let path = dir.path().join("line.lua");
    let file = open_folder(dir.path(), "line-1", Limits::default()).unwrap();
    file.watch().unwrap();
    assert_eq!(id_of(&file, "3012-123456"), "3012-123456");

    // A scanner that never stops while the edits happen: every scan must be
    // answered by some good version.
    let stop = Arc::new(AtomicBool::new(false));
    let scans = Arc::new(AtomicU64::new(0));
    let scanner = {
        let (file, stop, scans) = (file.clone(), stop.clone(), scans.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (outcome, steps) = file.current().on_scan("]C13012-123456-5").unwrap();
                assert!(matches!(outcome, ParseOutcome::Device(_)), "{outcome:?}");
                assert!(!steps.is_empty());
                scans.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let original = std::fs::read_to_string(&path).unwrap();
    let mut seen = file.generation();

    // 1. A good edit: serials get a "S" prefix stripped (a new plate layout).
    let edited = original.replace(
        "function parse(raw)\n",
        "function parse(raw)\n  raw = raw:gsub(\"^SN:\", \"\")\n",
    );
    save_by_rename(&path, &edited);
    seen = await_change(&file, seen);
    assert_eq!(file.version(), 2);
    assert!(file.refused().is_none());
    assert_eq!(id_of(&file, "SN:3012-777"), "3012-777");

    // 2. Broken edits, each refused with file and line; version 2 keeps serving.
    let broken: Vec<(&str, String, &str)> = vec![
        ("syntax error", edited.replace("local function plate(text)", "local function plate(text"), "line.lua:"),
        ("runtime error at load", format!("{edited}\nlocal x = nil\nx.y = 1\n"), "attempt to index a nil value"),
        ("endless loop at load", format!("{edited}\nwhile true do end\n"), "instruction budget"),
        ("endless loop in pcall at load", format!("{edited}\nwhile true do pcall(function() while true do end end) end\n"), "instruction budget"),
        ("memory bomb at load", format!("{edited}\nlocal t = {{}}\nwhile true do pcall(function() t[#t+1] = string.rep('x', 1 << 20) end) end\n"), "memory limit"),
        ("failed self-check", edited.replace("weight = 4 - weight", "weight = weight"), "self-check"),
        ("wrong return type", edited.replace("  scan.symbology = symbology\n  return scan\n", "  return 42\n"), "function parse returned a integer"),
        ("no parse", edited.replace("function parse(raw)", "function parse_(raw)"), "must define function parse"),
        ("io.open", format!("{edited}\nio.open('/etc/passwd')\n"), "global 'io'"),
        ("truncated save", edited[..edited.len() / 2].to_string(), "line.lua:"),
    ];
    for (what, text, words) in broken {
        // The truncated save is written in place (no rename), as a crashed
        // editor or a copy in progress would leave it.
        if what == "truncated save" {
            std::fs::write(&path, &text).unwrap();
        } else {
            save_by_rename(&path, &text);
        }
        seen = await_change(&file, seen);
        let refused = file
            .refused()
            .unwrap_or_else(|| panic!("{what}: not refused"));
        assert!(
            refused.message.contains("line.lua:") && refused.message.contains(words),
            "{what}: {:?} does not name the file and say {words:?}",
            refused.message
        );
        // A failed self-check names the check (its number and scan) instead;
        // a missing function has no line.
        assert!(
            matches!(what, "failed self-check" | "no parse")
                || refused
                    .message
                    .split("line.lua:")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())),
            "{what}: no line in {:?}",
            refused.message
        );
        assert_eq!(
            file.version(),
            2,
            "{what}: the good version must keep serving"
        );
        assert_eq!(id_of(&file, "SN:3012-777"), "3012-777", "{what}");
    }

    // 3. The fix loads again.
    let fixed = edited.replace("^SN:", "^SER:");
    save_by_rename(&path, &fixed);
    await_change(&file, seen);
    assert_eq!(file.version(), 3);
    assert!(file.refused().is_none());
    assert_eq!(id_of(&file, "SER:3012-9"), "3012-9");

    stop.store(true, Ordering::Relaxed);
    scanner.join().expect("the scanner never saw a failure");
    assert!(scans.load(Ordering::Relaxed) > 10);
}

#[test]
fn touching_or_reading_the_file_does_not_reload() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let file = open_folder(dir.path(), "line-1", Limits::default()).unwrap();
    file.watch().unwrap();
    let path = dir.path().join("line.lua");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text).unwrap();
    let _ = std::fs::read(&path).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(file.version(), 1);
    assert!(file.refused().is_none());
}

#[test]
fn a_broken_file_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    std::fs::write(
        dir.path().join("line.lua"),
        "function parse(raw)\n  return\n",
    )
    .unwrap();
    let err = open_folder(dir.path(), "line-1", Limits::default())
        .err()
        .unwrap();
    assert!(err.message.contains("line.lua:3:"), "{}", err.message);
}

#[test]
fn removed_then_restored_file_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let file = open_folder(dir.path(), "line-1", Limits::default()).unwrap();
    file.watch().unwrap();
    let path = dir.path().join("line.lua");
    let text = std::fs::read_to_string(&path).unwrap();
    let seen = file.generation();
    std::fs::remove_file(&path).unwrap();
    let seen = await_change(&file, seen);
    assert!(file.refused().unwrap().message.contains("cannot read"));
    assert_eq!(id_of(&file, "3012-1"), "3012-1");
    std::fs::write(&path, text).unwrap();
    await_change(&file, seen);
    assert!(file.refused().is_none());
    assert_eq!(file.version(), 1);
    let started = Instant::now();
    assert_eq!(id_of(&file, "3012-1"), "3012-1");
    assert!(started.elapsed() < WAIT);
}

/// Issue 12, D4: an edit whose patterns backtrack without end used to hang
/// the reload thread (and `script check`) for good. Now every such edit is
/// refused within its budget, the previous version keeps parsing, a good
/// edit after it still loads, and a `parse` that only hangs on a long scan
/// fails that scan instead of the line.
#[test]
fn edits_with_runaway_patterns_are_refused_and_later_edits_still_load() {
    let dir = tempfile::tempdir().unwrap();
    copy_example(dir.path());
    let path = dir.path().join("line.lua");
    let file = open_folder(dir.path(), "line-1", Limits::default()).unwrap();
    file.watch().unwrap();
    let original = std::fs::read_to_string(&path).unwrap();
    let mut seen = file.generation();
    let runaway = "(string.rep(';', 400)):match('^(.-);(.-);(.-);(.-);(.-);(.-);(.-);(.-)x$')";
    let broken = [
        ("a runaway match at load", format!("{original}\nlocal _ = {runaway}\n")),
        (
            "a runaway gsub in a self-check",
            original.replace(
                "function parse(raw)\n",
                &format!("function parse(raw)\n  if raw:find(';;;;') then return nil, tostring({runaway}) end\n"),
            ) + "\nchecks[#checks + 1] = { scan = string.rep(';', 400) }\n",
        ),
        (
            "a runaway xpcall handler at load",
            format!("{original}\nxpcall(function() while true do end end, function() while true do end end)\n"),
        ),
    ];
    for (what, text) in broken {
        save_by_rename(&path, &text);
        seen = await_change(&file, seen);
        let refused = file
            .refused()
            .unwrap_or_else(|| panic!("{what}: not refused"));
        assert!(
            refused.message.contains("line.lua:") && refused.message.contains("budget"),
            "{what}: {:?}",
            refused.message
        );
        assert_eq!(file.version(), 1, "{what}: the first version keeps serving");
        assert_eq!(id_of(&file, "3012-123456"), "3012-123456", "{what}");
    }

    // A good edit still loads (the reload thread is not stuck).
    let edited = original.replace(
        "function parse(raw)\n",
        "function parse(raw)\n  raw = raw:gsub(\"^SN:\", \"\")\n",
    );
    save_by_rename(&path, &edited);
    seen = await_change(&file, seen);
    assert!(file.refused().is_none(), "{:?}", file.refused());
    assert_eq!(file.version(), 2);
    assert_eq!(id_of(&file, "SN:3012-777"), "3012-777");

    // A parse that passes its self-check but backtracks on a scan of 400 ';'.
    let trap = edited.replace(
        "function parse(raw)\n",
        "function parse(raw)\n  if raw:sub(1, 1) == ';' then\n    local a = raw:match('^(.-);(.-);(.-);(.-);(.-);(.-);(.-);(.-)x$')\n  end\n",
    );
    save_by_rename(&path, &trap);
    await_change(&file, seen);
    assert!(file.refused().is_none(), "{:?}", file.refused());
    let line = file.current();
    let scan = ";".repeat(400);
    let err = std::thread::scope(|s| {
        let parse = s.spawn(|| line.parse(&scan));
        // A guard against a hang, not a timing assertion.
        let start = Instant::now();
        while !parse.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the parse never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        parse.join().unwrap()
    })
    .expect_err("the runaway parse must fail");
    assert!(
        err.message.contains("line.lua:") && err.message.contains("budget"),
        "{}",
        err.message
    );
    // The same version keeps parsing the next scan.
    assert_eq!(id_of(&file, "3012-123456"), "3012-123456");
}
