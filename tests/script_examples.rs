//! The example factory in scripts/example: its config reads, its line script
//! parses every barcode format it documents, and its retention policy decides
//! as documented.

use std::path::{Path, PathBuf};

use certline::script::factory::FactoryConfig;
use certline::script::line::{open_folder, ParseOutcome, Step};
use certline::script::retention::{PackFacts, RetentionScript, Verdict};
use certline::script::Limits;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example")
}

#[test]
fn factory_config_reads() {
    let f = FactoryConfig::read(&example().join("factory.toml")).unwrap();
    assert_eq!(f.lines.len(), 2);
    assert!(f.models["3012"].certificate);
    assert!(!f.models["K7"].certificate);
}

#[test]
fn line_script_parses_every_format() {
    let file = open_folder(&example(), "line-1", Limits::default()).unwrap();
    let line = file.current();
    let id = |scan: &str| match line.on_scan(scan).unwrap() {
        (ParseOutcome::Device(p), steps) => (p.id.to_string(), p.format, p.symbology, steps),
        (ParseOutcome::NotADevice(why), _) => (format!("refused: {why}"), None, None, vec![]),
        (ParseOutcome::Refused { code, why }, _) => {
            (format!("refused ({code}): {why}"), None, None, vec![])
        }
    };
    // Plain plate, with and without a symbology prefix.
    let (i, format, sym, steps) = id("3012-123456");
    assert_eq!(
        (i.as_str(), format.as_deref(), sym),
        ("3012-123456", Some("plate"), None)
    );
    assert_eq!(steps, vec![Step::Provision]);
    let (i, _, sym, _) = id("]Q13015-42");
    assert_eq!((i.as_str(), sym.as_deref()), ("3015-42", Some("]Q1")));
    // Plate with a check digit: right and wrong.
    let (i, format, _, _) = id("]C13012-123456-5");
    assert_eq!(
        (i.as_str(), format.as_deref()),
        ("3012-123456", Some("plate+check"))
    );
    assert!(id("3012-123456-4")
        .0
        .contains("check digit 4 does not match"));
    // Check sheet: QC passed and not; the meter asks for a confirmation.
    let (i, format, _, steps) = id("CS;M=A123;S=654321;QC=OK");
    assert_eq!(
        (i.as_str(), format.as_deref()),
        ("A123-654321", Some("check-sheet"))
    );
    assert!(matches!(
        &steps[..],
        [Step::Message { .. }, Step::Confirm { .. }, Step::Provision]
    ));
    assert!(id("CS;M=A123;S=654321;QC=NG").0.contains("QC=NG"));
    // A meter from its plate: confirm then provision.
    let (_, _, _, steps) = id("a123-654321");
    assert!(
        matches!(&steps[..], [Step::Confirm { prompt }, Step::Provision] if prompt.contains("service mode"))
    );
    // A model without a certificate is refused by the workflow.
    let (_, _, _, steps) = id("K7-1001");
    assert!(matches!(&steps[..], [Step::Refuse { code, .. }] if code == "no_certificate"));
    // Garbage, and an id the host refuses even though the script parsed it.
    assert!(id("hello").0.starts_with("refused"));
    assert!(id("TOOLONGMODEL-1").0.contains("model code"));
}

#[test]
fn retention_script_decides_as_documented() {
    let path = example().join("retention.lua");
    let source = std::fs::read(&path).unwrap();
    let policy =
        RetentionScript::load(&path, &source, serde_json::json!({}), Limits::default()).unwrap();
    let pack = |model: &str, days: i64, flagged: bool| PackFacts {
        id: format!("{model}-1"),
        model: model.into(),
        serial: "1".into(),
        cert_serial: "0a".into(),
        line: "line-1".into(),
        written_at: 0,
        age_secs: days * 86_400,
        flagged,
    };
    assert_eq!(
        policy.decide(&pack("A123", 0, false)).unwrap(),
        Verdict::Delete
    );
    assert_eq!(
        policy.decide(&pack("3012", 0, false)).unwrap(),
        Verdict::Flag
    );
    assert_eq!(
        policy.decide(&pack("3012", 29, true)).unwrap(),
        Verdict::Keep
    );
    assert_eq!(
        policy.decide(&pack("3012", 31, true)).unwrap(),
        Verdict::Delete
    );
}

#[test]
fn retention_wrong_answer_is_a_clear_error() {
    let path = Path::new("retention.lua");
    let policy = RetentionScript::load(
        path,
        b"-- policy\nfunction decide(pack)\n  return pack.age_days\nend\n",
        serde_json::json!({}),
        Limits::default(),
    )
    .unwrap();
    let err = policy
        .decide(&PackFacts {
            model: "X".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        err.message
            .starts_with("retention.lua:2: function decide returned a number"),
        "{}",
        err.message
    );
    let err = RetentionScript::load(
        path,
        b"function decide(pack) return 'flag' end\nchecks = { { pack = { model = 'X' }, expect = 'delete' } }\n",
        serde_json::json!({}),
        Limits::default(),
    )
    .err()
    .unwrap();
    assert!(
        err.message.contains("self-check 1 failed"),
        "{}",
        err.message
    );
}

/// Issue 12, D5 (the script side): a `decide` that loops, directly or in a
/// pattern, ends within its budget with an error naming the file and line.
#[test]
fn a_looping_retention_decide_ends_with_a_clear_error() {
    let models = serde_json::json!({});
    let pack = PackFacts {
        id: "3012-1".into(),
        model: "3012".into(),
        serial: "1".into(),
        cert_serial: "0a".into(),
        line: "line-1".into(),
        written_at: 0,
        age_secs: 0,
        flagged: false,
    };
    for body in [
        "while true do end",
        "local ok = pcall(function() while true do end end)",
        "local s = string.rep('a', 300) s:find('^(.-)(.-)(.-)(.-)(.-)(.-)b$')",
    ] {
        let source = format!("function decide(pack)\n  {body}\n  return 'flag'\nend\n");
        let policy = RetentionScript::load(
            Path::new("factory/retention.lua"),
            source.as_bytes(),
            models.clone(),
            Limits::default(),
        )
        .unwrap();
        // Run with a guard against a hang (before the fix this never returned).
        let err = std::thread::scope(|s| {
            let call = s.spawn(|| policy.decide(&pack));
            let start = std::time::Instant::now();
            while !call.is_finished() {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(120),
                    "{body}: decide never ended"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            call.join().unwrap()
        })
        .expect_err(body);
        assert!(
            err.message.contains("factory/retention.lua:2") && err.message.contains("budget"),
            "{body}: {}",
            err.message
        );
    }
}
