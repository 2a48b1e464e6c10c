//! Helpers for the line's black-box tests: a real CA and station (processes,
//! from station_support), device simulators as processes on one "cable"
//! address, the scanner on a pseudo-terminal pair, and `certline line` as a
//! process whose JSON operator lines the test reads.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

use certline::child::{Child, Stderr};

use crate::common::{path, text};
pub use crate::device_support::Sim as Device;
use crate::station_support::{certline, Factory, Proc, DAY};

/// Long enough for a slow shared machine; every wait ends as soon as the
/// awaited line arrives.
pub const WAIT: Duration = Duration::from_secs(120);

#[allow(unused_imports)] // each test file uses its own few
pub use crate::common::{wasm, IMAGING, METER, MISBEHAVE};

/// The `[scanner]` section of a line that reads the scans typed on its
/// standard input (the test's keyboard).
pub const KEYBOARD: &str = "source = \"stdin\"\ndebounce_ms = 0";

/// A free loopback port (bound, then released) for the device "cable".
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A CA, a serving station with today's plan, and the credentials a line
/// and its devices need.
pub struct Rig {
    pub factory: Factory,
    pub station: Option<Proc>,
    pub station_addr: String,
    pub line_cred: PathBuf,
    pub device_link: PathBuf,
    pub root: PathBuf,
    pub plugins: PathBuf,
}

impl Rig {
    /// `models` with certificates; `plan` rows as `MODEL,FIRST_SERIAL,COUNT` for today.
    pub fn new(models: &[&str], plan: &[&str], plugins: &[&str]) -> Rig {
        Self::with(models, &[], plan, plugins)
    }

    /// As [`Rig::new`], with extra `station init` flags.
    pub fn with(models: &[&str], init: &[&str], plan: &[&str], plugins: &[&str]) -> Rig {
        let factory = Factory::new(models, &[], init);
        let rows: Vec<String> = plan.iter().map(|r| format!("{DAY},{r}")).collect();
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        factory.plan("plan.csv", &rows);
        factory.fetch(DAY);
        let line_cred = factory.ca.enroll("line", "line-1");
        let device_link = factory.ca.enroll("device-link", "acme-boards");
        let plugin_dir = factory.ca.tmp.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        for p in plugins {
            std::fs::copy(wasm(p), plugin_dir.join(format!("{p}.wasm"))).unwrap();
        }
        let root = factory.ca.tmp.path().join("root.pem");
        let cred = std::fs::read_to_string(&line_cred).unwrap();
        let certs = certline::pki::pem_blocks(&cred, "CERTIFICATE").unwrap();
        std::fs::write(
            &root,
            certline::pki::to_pem("CERTIFICATE", certs.last().unwrap()),
        )
        .unwrap();
        let station_addr = free_addr();
        let mut rig = Rig {
            factory,
            station: None,
            station_addr,
            line_cred,
            device_link,
            root,
            plugins: plugin_dir,
        };
        rig.start_station();
        rig
    }

    pub fn tmp(&self) -> &Path {
        self.factory.ca.tmp.path()
    }

    pub fn station_url(&self) -> String {
        format!("https://{}", self.station_addr)
    }

    pub fn start_station(&mut self) {
        self.start_station_env(&[]);
    }

    /// Starts the station with extra environment (e.g. `FAILPOINTS`).
    pub fn start_station_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = certline();
        cmd.envs(env.iter().copied());
        cmd.args([
            "station",
            "serve",
            "--dir",
            self.factory.dir(),
            "--listen",
            &self.station_addr,
        ]);
        let p = Proc::start(cmd, "station listening on ");
        assert_eq!(p.url, self.station_url());
        self.station = Some(p);
    }

    pub fn stop_station(&mut self) {
        if let Some(mut p) = self.station.take() {
            p.kill();
        }
    }

    /// The states of the id's packs at the station, oldest first.
    pub fn states(&self, id: &str) -> Vec<String> {
        self.factory.states(id)
    }

    /// The fingerprint of the id's pack in `state`.
    pub fn fingerprint(&self, id: &str, state: &str) -> String {
        let report = self.factory.device(id);
        report["packs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["state"] == state)
            .unwrap_or_else(|| panic!("{id}: no pack in state {state}: {report:#}"))["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A device simulator process for `id` on `cable` (a TCP address), or on
    /// a new pseudo-terminal when `cable` is None.
    pub fn device(&self, id: &str, cable: Option<&str>, extra: &[&str]) -> Device {
        let dir = self.tmp().join(format!("dev-{id}"));
        Device::start_on(&dir, id, &self.device_link, cable, extra)
    }

    /// A copy of the example factory's scripts (line.lua, factory.toml) in
    /// the folder `name` of the rig's temporary folder.
    pub fn example_scripts(&self, name: &str) -> PathBuf {
        let dir = self.tmp().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example");
        for f in ["line.lua", "factory.toml"] {
            std::fs::copy(example.join(f), dir.join(f)).unwrap();
        }
        dir
    }

    /// A running line (configuration `name`) whose scans the test types on
    /// its keyboard ([`KEYBOARD`]), with the scripts in `scripts` and its
    /// devices on a fresh cable: the line, its keyboard, its configuration
    /// file and the cable's address.
    pub fn keyboard_line(&self, name: &str, scripts: &Path) -> (Line, ChildStdin, PathBuf, String) {
        let cable = free_addr();
        let config = self.config(
            name,
            KEYBOARD,
            &cable,
            &format!("[scripts]\ndir = \"{}\"", path(scripts)),
        );
        let mut line = Line::start_with(&config, Stdio::piped());
        let keyboard = line.child.stdin.take().unwrap();
        (line, keyboard, config, cable)
    }

    /// Writes a line configuration; `device` is the cable address.
    pub fn config(&self, name: &str, scanner: &str, device: &str, extra: &str) -> PathBuf {
        let file = self.tmp().join(name);
        std::fs::write(
            &file,
            format!(
                "name = \"line-1\"\nstate_dir = \"line-state\"\n{extra}\n\
                 [station]\nurl = \"{}\"\ncredential = \"{}\"\ntimeout_ms = 5000\nretry_ms = 300\n\
                 [scanner]\n{scanner}\n\
                 [device]\naddress = \"{device}\"\nconnect_timeout_ms = 5000\nwrite_timeout_ms = 30000\n\
                 [plugins]\ndir = \"{}\"\n",
                self.station_url(),
                path(&self.line_cred),
                path(&self.plugins)
            ),
        )
        .unwrap();
        file
    }
}

/// The scanner: the test holds the reader's end of a pseudo-terminal pair.
pub struct Scanner {
    master: serialport::TTYPort,
    _slave: serialport::TTYPort,
    pub path: String,
}

impl Scanner {
    pub fn new() -> Scanner {
        let (master, slave) = serialport::TTYPort::pair().unwrap();
        let path = serialport::SerialPort::name(&slave).unwrap();
        Scanner {
            master,
            _slave: slave,
            path,
        }
    }

    /// The `[scanner]` section for this port.
    pub fn section(&self, debounce_ms: u64) -> String {
        format!(
            "source = \"serial\"\nport = \"{}\"\nbaud = 9600\ndebounce_ms = {debounce_ms}",
            self.path
        )
    }

    /// Sends raw bytes as the reader would.
    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
        self.master.flush().unwrap();
    }

    /// One scan, with a carriage return.
    pub fn scan(&mut self, code: &str) {
        self.send(format!("{code}\r").as_bytes());
    }
}

/// A running `certline line --json`; its stdout and stderr lines are shown
/// after `[line]`.
pub struct Line {
    pub child: Child,
}

impl Line {
    pub fn start(config: &Path) -> Line {
        Self::start_with(config, Stdio::null())
    }

    pub fn start_with(config: &Path, stdin: Stdio) -> Line {
        Self::start_env(config, stdin, &[])
    }

    /// With extra environment variables (e.g. `FAILPOINTS` for crash tests).
    pub fn start_env(config: &Path, stdin: Stdio, env: &[(&str, &str)]) -> Line {
        let mut cmd = certline();
        cmd.env("CERTLINE_LOG", "certline::line=info,warn")
            .envs(env.iter().copied())
            .args(["line", "--json", "--config"])
            .arg(config)
            .stdin(stdin);
        let child = Child::spawn(cmd)
            .stderr(Stderr::Lines)
            .echo("[line]")
            .started()
            .expect("cannot start certline line");
        let line = Line { child };
        line.event("ready");
        line
    }

    /// The next event of kind `event` (others before it are skipped); every
    /// operator line must be JSON.
    #[track_caller]
    pub fn event(&self, event: &str) -> serde_json::Value {
        let line = self
            .child
            .stdout_line(WAIT, |line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("operator line is not JSON ({e}): {line}"));
                v["event"] == event
            })
            .unwrap_or_else(|e| panic!("no {event:?} event from the line: {e:#}"));
        serde_json::from_str(&line).unwrap()
    }

    /// The next device line.
    #[track_caller]
    pub fn device(&self) -> serde_json::Value {
        self.event("device")
    }

    /// Waits for a log line on stderr containing every one of `needles`.
    #[track_caller]
    pub fn wait_log(&self, needles: &[&str]) {
        if let Err(e) = self
            .child
            .stderr_line(WAIT, |l| needles.iter().all(|n| l.contains(n)))
        {
            panic!("no {needles:?} in the line's log: {e:#}");
        }
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }
}

/// `certline line status --json` for a line configuration.
pub fn status(config: &Path) -> serde_json::Value {
    let out = certline()
        .args(["line", "status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "line status: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts a device line: its status word, code, and that the message says
/// each of `says`.
#[track_caller]
pub fn assert_line(v: &serde_json::Value, id: &str, status: &str, code: &str, says: &[&str]) {
    assert_eq!(v["id"].as_str().or(v["scan"].as_str()), Some(id), "{v:#}");
    assert_eq!(v["status"], status, "{v:#}");
    assert_eq!(v["code"], code, "{v:#}");
    let message = v["message"].as_str().unwrap();
    for s in says {
        assert!(message.contains(s), "message does not say {s:?}: {message}");
    }
    assert!(
        !v["next"].as_str().unwrap().is_empty(),
        "no next step: {v:#}"
    );
}
