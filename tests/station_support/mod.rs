//! Helpers for the station's black-box tests: a real CA process, a station
//! directory, `certline station ...` as separate processes, a line client
//! speaking the station API with a real line credential, and the checks that
//! the CA's ledger and the station's stock agree.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use certline::child::{Child, Stderr, WAIT};
use certline::pki::credential::Credential;
use certline::service::client::{ClientError, ServiceClient};
use certline::wire::station::{
    self as api, FailedRequest, ReceivedRequest, ReportResponse, SignRequest, TakeRequest,
    TakeResponse, WrittenRequest,
};

use crate::common::{self, path, Ca, Server};

pub const ADMIN_PASSWORD: &str = "admin password for tests";
/// The station's today (UTC, the default offset): shown with `{DAY}`.
pub const DAY: Day = Day(0);
/// The day after.
pub const NEXT_DAY: Day = Day(1);

#[derive(Debug, Clone, Copy)]
pub struct Day(i64);

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&certline::day::utc_day_text(self.0))
    }
}

/// `certline` with the test passphrase and admin password.
pub fn certline() -> Command {
    let mut cmd = common::certline();
    cmd.env("CERTLINE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env_remove("FAILPOINTS");
    cmd
}

pub fn run(args: &[&str]) -> Output {
    certline()
        .args(args)
        .output()
        .expect("cannot start certline")
}

#[track_caller]
pub fn ok(args: &[&str]) -> String {
    common::succeeds(run(args), args)
}

#[track_caller]
pub fn fails(args: &[&str]) -> String {
    common::failed(run(args), args)
}

#[track_caller]
pub fn json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("certline {args:?}: not JSON ({e}): {out}"))
}

/// A long-running process whose stderr lines the test can wait for (each
/// also shown, after `[station]`); killed on drop.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Proc {
    /// Starts `cmd` and waits for the stdout line with `marker` and its URL.
    pub fn start(cmd: Command, marker: &str) -> Proc {
        let child = Child::spawn(cmd)
            .stderr(Stderr::Lines)
            .echo("[station]")
            .listening(marker)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Proc {
            url: child.url.clone(),
            child,
        }
    }

    /// A process that prints no URL (a fetch): only its stderr is watched.
    pub fn start_stderr(cmd: Command) -> Proc {
        let child = Child::spawn(cmd)
            .stderr(Stderr::Lines)
            .echo("[station]")
            .started()
            .unwrap_or_else(|e| panic!("{e:#}"));
        Proc {
            url: String::new(),
            child,
        }
    }

    /// Waits for a line on stderr containing `marker`.
    pub fn wait_stderr(&self, marker: &str) {
        if let Err(e) = self.child.stderr_line(WAIT, |line| line.contains(marker)) {
            panic!("no {marker:?} on the station's stderr: {e:#}");
        }
    }

    /// SIGKILL: no clean-up of any kind.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

/// A CA (process) and one station directory initialised against it.
pub struct Factory {
    pub ca: Ca,
    pub ca_server: Option<Server>,
    pub ca_url: String,
    pub dir: PathBuf,
    pub station_cred: PathBuf,
}

impl Factory {
    /// A CA serving on loopback and a station with `models` (with
    /// certificates) and `without` (without), plus `extra` init flags.
    pub fn new(models: &[&str], without: &[&str], extra: &[&str]) -> Factory {
        let ca = Ca::init(&[]);
        let ca_server = ca.serve(&[]);
        let ca_url = ca_server.url.clone();
        let station_cred = ca.enroll("station", "station-1");
        let dir = ca.tmp.path().join("station");
        let mut args = vec![
            "station",
            "init",
            "--dir",
            path(&dir),
            "--ca",
            &ca_url,
            "--credential",
            path(&station_cred),
        ];
        for m in models {
            args.extend(["--model", m]);
        }
        for m in without {
            args.extend(["--model-without-cert", m]);
        }
        args.extend_from_slice(extra);
        ok(&args);
        Factory {
            ca,
            ca_server: Some(ca_server),
            ca_url,
            dir,
            station_cred,
        }
    }

    pub fn dir(&self) -> &str {
        path(&self.dir)
    }

    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let file = self.ca.tmp.path().join(name);
        std::fs::write(&file, content).unwrap();
        file
    }

    /// Imports a CSV plan given as its rows (the header is added).
    pub fn plan(&self, name: &str, rows: &[&str]) -> serde_json::Value {
        self.import(
            name,
            &format!("date,model,first_serial,count\n{}\n", rows.join("\n")),
        )
    }

    /// `station plan import FILE` (and `extra` flags).
    fn import_args<'a>(&'a self, file: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["station", "plan", "import", "--dir", self.dir(), path(file)];
        args.extend_from_slice(extra);
        args
    }

    /// `station plan import --json` of a plan file `name` with `content`.
    #[track_caller]
    pub fn import(&self, name: &str, content: &str) -> serde_json::Value {
        json(&self.import_args(&self.file(name, content), &["--json"]))
    }

    /// `station plan import` of a plan file that must be refused; its stderr.
    #[track_caller]
    pub fn import_fails(&self, name: &str, content: &str) -> String {
        fails(&self.import_args(&self.file(name, content), &[]))
    }

    /// `station plan show --day DAY --json` (with `extra` flags, e.g. `--ids`).
    pub fn plan_show(&self, day: impl std::fmt::Display, extra: &[&str]) -> serde_json::Value {
        let day = day.to_string();
        let mut args = vec![
            "station",
            "plan",
            "show",
            "--dir",
            self.dir(),
            "--day",
            &day,
        ];
        args.extend_from_slice(extra);
        args.push("--json");
        json(&args)
    }

    /// `station admin stock --json` through the directory.
    pub fn stock(&self) -> serde_json::Value {
        json(&["station", "admin", "stock", "--dir", self.dir(), "--json"])
    }

    /// One model's row of [`Factory::stock`].
    #[track_caller]
    pub fn stock_of(&self, model: &str) -> serde_json::Value {
        let stock = self.stock();
        stock["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model)
            .unwrap_or_else(|| panic!("no model {model}: {stock:#}"))
            .clone()
    }

    pub fn fetch(&self, day: impl std::fmt::Display) -> serde_json::Value {
        let day = day.to_string();
        let day = day.as_str();
        json(&[
            "station",
            "fetch",
            "--dir",
            self.dir(),
            "--day",
            day,
            "--json",
        ])
    }

    /// Stops the CA (its directory stays).
    pub fn stop_ca(&mut self) {
        if let Some(mut server) = self.ca_server.take() {
            server.kill();
        }
    }

    /// Starts the CA again on the same address.
    pub fn start_ca(&mut self) {
        let listen = self.ca_url.trim_start_matches("https://").to_string();
        let server = Server::start(
            &["ca", "serve", "--dir", self.ca.dir(), "--listen", &listen],
            "CA listening on ",
        );
        assert_eq!(server.url, self.ca_url);
        self.ca_server = Some(server);
    }

    pub fn serve_with(&self, env: &[(&str, &str)], extra: &[&str]) -> Proc {
        let mut cmd = certline();
        cmd.args([
            "station",
            "serve",
            "--dir",
            self.dir(),
            "--listen",
            "127.0.0.1:0",
        ]);
        cmd.args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::start(cmd, "station listening on ")
    }

    pub fn serve(&self) -> Proc {
        self.serve_with(&[], &[])
    }

    pub fn line(&self, name: &str, station: &Proc) -> Line {
        let cred = self.ca.enroll("line", name);
        Line::new(&station.url, &cred)
    }

    /// `station admin SUB --json` with `extra` arguments through the serving
    /// station's API (`--url`, trusting the station directory's root).
    fn admin_url(&self, station: &Proc, sub: &str, extra: &[&str]) -> Output {
        let root = self.dir.join("root.pem");
        let mut args = vec![
            "station",
            "admin",
            sub,
            "--url",
            &station.url,
            "--root",
            path(&root),
            "--json",
        ];
        args.extend_from_slice(extra);
        run(&args)
    }

    /// [`Factory::admin_url`] that must succeed: its JSON report.
    #[track_caller]
    pub fn admin_json(&self, station: &Proc, sub: &str, extra: &[&str]) -> serde_json::Value {
        let out = common::succeeds(self.admin_url(station, sub, extra), &[sub]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("station admin {sub}: not JSON ({e}): {out}"))
    }

    /// [`Factory::admin_url`] that must fail: its stderr.
    #[track_caller]
    pub fn admin_fails(&self, station: &Proc, sub: &str, extra: &[&str]) -> String {
        common::failed(self.admin_url(station, sub, extra), &[sub])
    }

    /// `station admin device --id ID --json` through the directory.
    pub fn device(&self, id: &str) -> serde_json::Value {
        json(&[
            "station",
            "admin",
            "device",
            "--dir",
            self.dir(),
            "--id",
            id,
            "--json",
        ])
    }

    /// The state of the id's packs, oldest first.
    pub fn states(&self, id: &str) -> Vec<String> {
        self.device(id)["packs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["state"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits (polling the station) until `check` holds for the id's report.
    pub fn wait_device(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let report = self.device(id);
            if check(&report) {
                return report;
            }
            assert!(Instant::now() < deadline, "{id}: never {what}: {report:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Revokes a line credential at the CA (`ca revoke --serial`).
    pub fn revoke_line(&self, name: &str) {
        let cred = self.ca.file(&format!("line-{name}.pem"));
        let leaf = common::pem_file(&cred, "CERTIFICATE").remove(0);
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let serial = hex::encode(parsed.raw_serial());
        ok(&[
            "ca",
            "revoke",
            "--dir",
            self.ca.dir(),
            "--serial",
            &serial,
            "--reason",
            "key-compromise",
        ]);
    }

    /// Sets `[retention] script` in station.toml to a script with this text.
    pub fn retention_script(&self, lua: &str) {
        std::fs::write(self.dir.join("retention.lua"), lua).unwrap();
        let config_path = self.dir.join("station.toml");
        let mut config: toml::Table = std::fs::read_to_string(&config_path)
            .unwrap()
            .parse()
            .unwrap();
        let retention = config
            .entry("retention")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        retention
            .as_table_mut()
            .unwrap()
            .insert("script".into(), "retention.lua".into());
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    }

    /// The audit log through `station admin audit --dir`: whether its chain is intact.
    pub fn audit(&self, last: u32) -> serde_json::Value {
        let out = run(&[
            "station",
            "admin",
            "audit",
            "--dir",
            self.dir(),
            "--last",
            &last.to_string(),
            "--json",
        ]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "admin audit: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Waits until the CA holds no valid certificate for the id that the
    /// station does not hold as its live pack.
    pub fn wait_device_ca(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let live: Vec<String> = self
                .packs()
                .into_iter()
                .filter(|(i, _, s)| {
                    i == id
                        && certline::wire::station::PackState::parse(s).is_some_and(|s| s.is_live())
                })
                .map(|(_, serial, _)| serial)
                .collect();
            let stray: Vec<String> = self
                .ca
                .history(id)
                .into_iter()
                .filter(|r| r["status"] == "valid")
                .filter_map(|r| r["serial"].as_str().map(str::to_string))
                .filter(|s| !live.contains(s))
                .collect();
            if stray.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: the CA still holds {stray:?} valid, unknown to the stock"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until nothing waits for the CA.
    pub fn wait_queue_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let queue = json(&["station", "admin", "queue", "--dir", self.dir(), "--json"]);
            if queue["items"].as_array().is_some_and(|i| i.is_empty()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the CA queue never emptied: {queue}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every pack is in one known state and no id has two live packs.
    #[track_caller]
    pub fn assert_one_state_each(&self) {
        let mut live = std::collections::HashSet::new();
        for (id, serial, state) in self.packs() {
            let state = certline::wire::station::PackState::parse(&state)
                .unwrap_or_else(|| panic!("pack {serial} of {id} in unknown state {state}"));
            if state.is_live() {
                assert!(live.insert(id.clone()), "{id} has two live packs");
            }
        }
    }

    pub fn stock_db(&self) -> PathBuf {
        self.dir.join("stock.db")
    }

    /// (id, serial, state) of every pack, read straight from the stock file.
    pub fn packs(&self) -> Vec<(String, String, String)> {
        let conn = rusqlite::Connection::open_with_flags(
            self.stock_db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = conn
            .prepare("SELECT id, serial, state FROM packs ORDER BY pack_id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows
    }

    /// Asserts that the station and the CA agree: every id has at most one
    /// valid certificate at the CA, and it is the station's live pack (when
    /// nothing waits for the CA, exactly). No serial was taken twice.
    #[track_caller]
    pub fn assert_agree(&self, ids: &[String]) {
        let queue = json(&["station", "admin", "queue", "--dir", self.dir(), "--json"]);
        let waiting: Vec<String> = queue["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["id"].as_str().unwrap().to_string())
            .collect();
        let packs = self.packs();
        for id in ids {
            let history = self.ca.history(id);
            let valid: Vec<&str> = history
                .iter()
                .filter(|r| r["status"] == "valid")
                .map(|r| r["serial"].as_str().unwrap())
                .collect();
            assert!(
                valid.len() <= 1,
                "{id} has {} valid certificates at the CA",
                valid.len()
            );
            let live: Vec<&str> = packs
                .iter()
                .filter(|(i, _, s)| {
                    i == id
                        && certline::wire::station::PackState::parse(s).is_some_and(|s| s.is_live())
                })
                .map(|(_, serial, _)| serial.as_str())
                .collect();
            assert!(
                live.len() <= 1,
                "{id} has {} live packs at the station",
                live.len()
            );
            if waiting.contains(id) {
                continue;
            }
            assert_eq!(
                valid, live,
                "{id}: the CA's valid certificate and the station's live pack differ"
            );
        }
        // No serial handed out twice: at most one take per serial in the audit log.
        let conn = rusqlite::Connection::open_with_flags(
            self.stock_db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let twice: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM (SELECT json_extract(detail, '$.serial') AS s, COUNT(*) AS n FROM audit WHERE action = 'take' GROUP BY s HAVING n > 1)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(twice, 0, "a pack was handed out twice");
    }
}

/// A production line speaking the station's API with its own credential.
pub struct Line {
    pub client: ServiceClient,
    rt: tokio::runtime::Runtime,
}

impl Line {
    pub fn new(url: &str, cred: &Path) -> Line {
        let cred = Credential::load(cred).unwrap();
        Line {
            client: ServiceClient::new(
                url,
                &cred,
                certline::pki::role::Role::Station,
                Duration::from_secs(60),
            )
            .unwrap(),
            rt: common::runtime(),
        }
    }

    pub fn take(&self, id: &str) -> Result<TakeResponse, ClientError> {
        self.rt
            .block_on(self.client.post(api::TAKE, &TakeRequest { id: id.into() }))
    }

    /// `POST /v1/sign` with the CSR of a fresh P-256 key, as a device that
    /// generates its own key (`keygen = "device"`) sends it.
    pub fn sign(&self, id: &str) -> Result<TakeResponse, ClientError> {
        use base64::Engine;
        let (_, csr) =
            certline::pki::csr::generate(certline::pki::profile::KeyAlgorithm::P256, id).unwrap();
        self.rt.block_on(self.client.post(
            api::SIGN,
            &SignRequest {
                id: id.into(),
                csr: base64::engine::general_purpose::STANDARD.encode(csr),
            },
        ))
    }

    pub fn received(&self, id: &str, serial: &str) -> Result<ReportResponse, ClientError> {
        self.rt.block_on(self.client.post(
            api::RECEIVED,
            &ReceivedRequest {
                id: id.into(),
                serial: serial.into(),
            },
        ))
    }

    pub fn written(
        &self,
        id: &str,
        serial: &str,
        fingerprint: &str,
    ) -> Result<ReportResponse, ClientError> {
        self.rt.block_on(self.client.post(
            api::WRITTEN,
            &WrittenRequest {
                id: id.into(),
                serial: serial.into(),
                fingerprint: fingerprint.into(),
                fields: Default::default(),
            },
        ))
    }

    pub fn failed(
        &self,
        id: &str,
        serial: &str,
        reason: &str,
    ) -> Result<ReportResponse, ClientError> {
        self.rt.block_on(self.client.post(
            api::FAILED,
            &FailedRequest {
                id: id.into(),
                serial: serial.into(),
                reason: reason.into(),
            },
        ))
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> api::Health {
        self.rt
            .block_on(self.client.get_json(api::HEALTH))
            .expect("health")
    }

    /// Take, received, written with the right fingerprint.
    #[track_caller]
    pub fn provision(&self, id: &str) -> TakeResponse {
        let pack = self.take(id).unwrap_or_else(|e| panic!("take {id}: {e}"));
        self.received(id, &pack.serial).unwrap();
        self.written(id, &pack.serial, &pack.fingerprint).unwrap();
        pack
    }
}

/// A client of the station's API with no credential (as a browser or an
/// admin before its login), trusting the station directory's `root`, and a
/// runtime to drive it.
pub fn anonymous(url: &str, root: &Path) -> (ServiceClient, tokio::runtime::Runtime) {
    let client = ServiceClient::anonymous(
        url,
        &common::pem_file(root, "CERTIFICATE").remove(0).into(),
        certline::pki::role::Role::Station,
        Duration::from_secs(30),
    )
    .unwrap();
    (client, common::runtime())
}

/// The refusal code of a result that must be a refusal.
#[track_caller]
pub fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub fn ids(model: &str, first: u32, count: u32, width: usize) -> Vec<String> {
    (first..first + count)
        .map(|n| format!("{model}-{n:0width$}"))
        .collect()
}

/// Whether `needle` occurs in the file's bytes.
pub fn file_contains(file: &Path, needle: &[u8]) -> bool {
    match std::fs::read(file) {
        Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
        Err(_) => false,
    }
}
