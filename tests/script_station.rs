//! The station's scripted retention policy: chosen by `[retention] script`,
//! deciding through the station's own trait, reloaded on edits, a broken
//! edit refused while the previous version keeps deciding.

use std::time::Duration;

use certline::station::config::StationConfig;
use certline::station::retention::{Decision, RetentionPolicy, ScriptedPolicy, WrittenPack};

fn pack<'a>(model: &'a str, days: i64, flagged: bool) -> WrittenPack<'a> {
    WrittenPack {
        id: if model == "A123" { "A123-1" } else { "3012-1" },
        model,
        serial: "0a1b",
        line: "line-1",
        written_at: 0,
        age_secs: days * 86_400,
        flagged,
    }
}

#[test]
fn config_names_the_script() {
    let text = r#"
name = "s"
ca_url = "https://127.0.0.1:1"
[retention]
script = "retention.lua"
"#;
    let config: StationConfig = toml::from_str(text).unwrap();
    assert_eq!(
        config.retention.script.as_deref(),
        Some(std::path::Path::new("retention.lua"))
    );
}

#[test]
fn scripted_policy_decides_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retention.lua");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example/retention.lua");
    let original = std::fs::read_to_string(example).unwrap();
    std::fs::write(&path, &original).unwrap();
    let config = StationConfig::new("s", "https://127.0.0.1:1");
    let policy = ScriptedPolicy::open(&path, &config).unwrap();
    assert!(policy.name().contains("retention.lua (version 1)"));
    assert_eq!(
        policy.decide(&pack("A123", 0, false)).unwrap(),
        Decision::Delete
    );
    assert_eq!(
        policy.decide(&pack("3012", 0, false)).unwrap(),
        Decision::Flag
    );
    assert_eq!(
        policy.decide(&pack("3012", 10, true)).unwrap(),
        Decision::Keep
    );
    assert_eq!(
        policy.decide(&pack("3012", 31, true)).unwrap(),
        Decision::Delete
    );

    // An edit: keep 7 days instead of 30 (and its self-check follows).
    let seen = policy.file().generation();
    let edited = original
        .replace("local KEEP_DAYS = 30", "local KEEP_DAYS = 7")
        .replace(
            "age_days = 29, flagged = true }, expect = \"keep\"",
            "age_days = 6, flagged = true }, expect = \"keep\"",
        );
    let tmp = dir.path().join("retention.lua.tmp");
    std::fs::write(&tmp, &edited).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(policy.file().wait_for_change(seen, Duration::from_secs(10)) > seen);
    assert!(policy.name().contains("version 2"), "{}", policy.name());
    assert_eq!(
        policy.decide(&pack("3012", 10, true)).unwrap(),
        Decision::Delete
    );

    // A broken edit: refused, version 2 keeps deciding.
    let seen = policy.file().generation();
    std::fs::write(&path, "function decide(pack)\n  return 'flag'\n").unwrap();
    assert!(policy.file().wait_for_change(seen, Duration::from_secs(10)) > seen);
    let refused = policy.file().refused().unwrap();
    assert!(
        refused.message.contains("retention.lua:3:"),
        "{}",
        refused.message
    );
    assert_eq!(
        policy.decide(&pack("3012", 10, true)).unwrap(),
        Decision::Delete
    );

    // A policy that answers nonsense: the station gets an error (and leaves
    // the pack as it is), with file and line.
    let seen = policy.file().generation();
    std::fs::write(
        &path,
        "function decide(pack)\n  if pack.age_days > 100 then return 7 end\n  return 'flag'\nend\n",
    )
    .unwrap();
    assert!(policy.file().wait_for_change(seen, Duration::from_secs(10)) > seen);
    let err = policy.decide(&pack("3012", 200, true)).unwrap_err();
    assert!(
        format!("{err:#}").contains("retention.lua:1: function decide returned a integer"),
        "{err:#}"
    );
}

#[test]
fn a_broken_script_stops_the_station_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retention.lua");
    std::fs::write(&path, "function decide(pack) while true do end end\nchecks = { { pack = { model = 'X' }, expect = 'flag' } }\n").unwrap();
    let config = StationConfig::new("s", "https://127.0.0.1:1");
    let err = ScriptedPolicy::open(&path, &config).err().unwrap();
    assert!(
        format!("{err:#}").contains("retention.lua:1: over the instruction budget"),
        "{err:#}"
    );
}
