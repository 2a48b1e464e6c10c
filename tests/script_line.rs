//! The line's Lua workflow (`[scripts] dir`): parses with line.lua, asks for
//! a confirming rescan where the script wants one, refuses what the script
//! refuses, and keeps running through a broken edit.

use std::path::Path;
use std::time::Duration;

use certline::line::workflow::{LineHost, LuaWorkflow, Report, Status, Workflow};
use certline::pki::id::DeviceId;

#[derive(Default)]
struct FakeHost {
    provisioned: Vec<String>,
}

impl LineHost for FakeHost {
    fn provision(
        &mut self,
        scan: &str,
        id: &DeviceId,
        _fields: &std::collections::BTreeMap<String, String>,
    ) -> Report {
        self.provisioned.push(id.to_string());
        let mut r = Report::refused(
            scan,
            Some(&id.to_string()),
            "written",
            "written".into(),
            "next",
        );
        r.status = Status::Ok;
        r
    }
}

#[test]
fn lua_workflow_on_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example");
    for f in ["line.lua", "factory.toml"] {
        std::fs::copy(example.join(f), dir.path().join(f)).unwrap();
    }
    let mut wf = LuaWorkflow::open(dir.path(), "line-1").unwrap();
    let mut host = FakeHost::default();
    assert!(wf.name().contains("line.lua (version 1)"));

    assert_eq!(wf.on_scan("3012-123456-5", &mut host).status, Status::Ok);
    assert_eq!(
        wf.on_scan("3012-123456-4", &mut host).code,
        "malformed_barcode"
    );
    // The meter needs a confirming rescan.
    let first = wf.on_scan("A123-654321", &mut host);
    assert_eq!(
        (first.status, first.code.as_str()),
        (Status::Refused, "confirm")
    );
    assert!(first.message.contains("service mode"));
    assert_eq!(wf.on_scan("A123-654321", &mut host).status, Status::Ok);
    assert_eq!(wf.on_scan("K7-1", &mut host).code, "no_certificate");
    assert_eq!(host.provisioned, ["3012-123456", "A123-654321"]);

    // A broken edit: refused, shown once, scanning continues on version 1.
    let path = dir.path().join("line.lua");
    std::fs::write(&path, "function parse(raw)\n  return {\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..100 {
        if wf.name().contains("version 1") && std::fs::metadata(&path).is_ok() {
            let r = wf.on_scan("3012-1", &mut host);
            assert_eq!(r.status, Status::Ok);
            if r.message.contains("edit refused") {
                assert!(r.message.contains("line.lua:3:"), "{}", r.message);
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the refused edit was never shown to the operator");
}
