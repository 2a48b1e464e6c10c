//! `certline demo`: one whole factory day on loopback, with embedded
//! defaults. Every role runs as its own `certline` process, as it would in a
//! factory: a CA, a station, two lines (imaging devices over TCP with the XML
//! plugin; meters over a serial pseudo-terminal with the TLV plugin), device
//! simulators, and the remote-management center. Progress goes to stderr; the
//! summary (a table per model, the center's decisions, the invariant checks)
//! to stdout, or as one JSON document with `--json`. The command exits
//! non-zero if any invariant check fails.

pub mod floor;
pub mod process;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use floor::{Cable, Line, Step};
use process::{service, Certline};

use crate::wire::ca::{CertRecord, CertStatus};
use crate::wire::center::Verdict;
use crate::wire::station::{DiscardReport, QueueReport, ReworkReport, StockReport};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to keep the demo's state (default: a new folder under the system
    /// temp dir). Refused if it already holds a demo.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The folder holding the example plugins (certline_plugin_imaging.wasm,
    /// certline_plugin_meter.wasm) [default: plugins/target/wasm32-wasip2/release
    /// of the source tree, built by plugins/build.sh].
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// The example factory's scripts (line.lua, retention.lua) [default:
    /// scripts/example of the source tree].
    #[arg(long)]
    pub scripts: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// After the summary, keep the CA and the station serving (the station's
    /// console in a browser at the printed address) until Ctrl-C.
    #[arg(long)]
    pub keep_serving: bool,
}

/// One model in the day's production plan.
pub struct Planned {
    pub model: &'static str,
    pub first: u32,
    pub count: u32,
    pub width: usize,
    pub certificate: bool,
    /// Its devices generate their own key (`keygen = "device"`): a CSR on
    /// the line, signed through the station, no key at the CA or station.
    pub device_keygen: bool,
    pub what: &'static str,
}

impl Planned {
    pub fn ids(&self) -> Vec<String> {
        (self.first..self.first + self.count)
            .map(|n| format!("{}-{n:0w$}", self.model, w = self.width))
            .collect()
    }
}

/// The day's production plan.
pub const PLAN: &[Planned] = &[
    Planned {
        model: "3012",
        first: 1,
        count: 12,
        width: 6,
        certificate: true,
        device_keygen: false,
        what: "A4 printer, line-1 (XML over TCP)",
    },
    Planned {
        model: "3014",
        first: 1,
        count: 4,
        width: 6,
        certificate: true,
        device_keygen: true,
        what: "A4 printer with a secure element: keys born in the device, line-1",
    },
    Planned {
        model: "3013",
        first: 1,
        count: 6,
        width: 6,
        certificate: true,
        device_keygen: false,
        what: "A3 printer, discontinued today, line-1",
    },
    Planned {
        model: "A123",
        first: 1,
        count: 8,
        width: 6,
        certificate: true,
        device_keygen: false,
        what: "meter, line-2 (TLV over serial)",
    },
    Planned {
        model: "K7",
        first: 1001,
        count: 3,
        width: 4,
        certificate: false,
        device_keygen: false,
        what: "finisher accessory, no certificate",
    },
];

/// The model the factory stops building today: its leftovers are discarded.
pub const DISCONTINUED: &str = "3013";
/// A written device whose board is replaced after the line (a rework): its
/// certificate is revoked at the CA and the center must say so.
pub const REWORKED: &str = "3012-000003";
/// A written device that reports as another one (to have its counter billed
/// to someone else's contract).
pub const IMPERSONATOR: (&str, &str) = ("3012-000007", "3012-000001");
/// A device that was never written (scanned, not in the plan): it connects
/// to the center without an identity.
pub const STRAY: &str = "3012-999999";
/// The maintenance contracts the center knows: (first id, last id,
/// contract), each from the demo's day with no end.
pub const CONTRACTS: &[(&str, &str, &str)] = &[
    ("3012-000001", "3012-000006", "MC-2041-ACME"),
    ("3013-000001", "3013-000001", "MC-2042-GLOBEX"),
    ("A123-000001", "A123-000003", "MC-7001-CITYGRID"),
];

/// The contracts file the center loads (CSV: devices,contract,from,to).
pub fn contracts(day: &str) -> String {
    let mut csv = String::from("devices,contract,from,to\n");
    for (first, last, contract) in CONTRACTS {
        let devices = if first == last {
            first.to_string()
        } else {
            format!("{first}..{last}")
        };
        csv.push_str(&format!("{devices},{contract},{day},\n"));
    }
    csv
}

/// The center's verdict the demo's day should lead to for a device: the
/// stray one holds no identity, the reworked one was revoked, and every
/// other one has a contract exactly when [`CONTRACTS`] covers it.
pub fn expected_verdict(id: &str) -> Verdict {
    if id == STRAY {
        return Verdict::Unknown;
    }
    if id == REWORKED {
        return Verdict::Revoked;
    }
    // The plan's ids have a fixed width per model, so a range is a
    // same-length lexicographic interval.
    let covered = CONTRACTS
        .iter()
        .any(|(first, last, _)| id.len() == first.len() && *first <= id && id <= *last);
    if covered {
        Verdict::Contract
    } else {
        Verdict::NoContract
    }
}

pub(crate) fn progress(text: &str) {
    eprintln!("{text}");
}

fn step(n: usize, what: &str) {
    progress(&format!("[{n:>2}] {what}"));
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// The marker that says a folder holds a demo.
const MARKER: &str = "certline-demo.txt";

fn source_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn find_plugins(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = given.unwrap_or_else(|| source_tree().join("plugins/target/wasm32-wasip2/release"));
    for name in ["certline_plugin_imaging.wasm", "certline_plugin_meter.wasm"] {
        if !dir.join(name).is_file() {
            anyhow::bail!(
                "{} is missing: build the example plugins first with plugins/build.sh \
                 (it installs the wasm32-wasip2 target), or name their folder with --plugins",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

/// The example factory's scripts, if they are there (issue 7).
fn find_scripts(given: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    let dir = match given {
        Some(d) => {
            if !d.join("retention.lua").is_file() || !d.join("line.lua").is_file() {
                anyhow::bail!("{} holds no line.lua and retention.lua", d.display());
            }
            d
        }
        None => source_tree().join("scripts/example"),
    };
    Ok((dir.join("retention.lua").is_file() && dir.join("line.lua").is_file()).then_some(dir))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = match args.dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!(
            "certline-demo-{}-{}",
            time::OffsetDateTime::now_utc().unix_timestamp(),
            std::process::id()
        )),
    };
    if dir.join(MARKER).exists() || dir.join("ca").exists() {
        anyhow::bail!(
            "{} already holds a demo; pass another --dir or remove it",
            dir.display()
        );
    }
    let plugins = find_plugins(args.plugins)?;
    let scripts = find_scripts(args.scripts)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let day = crate::day::utc_day_text(0);
    std::fs::write(
        dir.join(MARKER),
        format!("certline demo of {day}: every role's state is in this folder\n"),
    )?;
    let certline = Certline::new(&dir)?;
    progress(&format!(
        "certline demo: one factory day ({day}) on loopback, state in {}",
        dir.display()
    ));

    // The factory's scripts, copied so that the demo's state is complete and
    // they can be edited while it runs.
    let scripts = match scripts {
        Some(from) => {
            let to = dir.join("scripts/example");
            copy_dir(&from, &to)?;
            Some(to)
        }
        None => None,
    };

    step(
        1,
        "CA: init (root + issuing CA), enroll the station, lines, device link and center; serve over mTLS",
    );
    let ca_dir = dir.join("ca");
    certline.run(&[
        "ca",
        "init",
        "--dir",
        path(&ca_dir),
        "--org",
        "certline Demo Vendor",
    ])?;
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    let enroll = |role: &str, name: &str| -> anyhow::Result<PathBuf> {
        let out = creds.join(format!("{name}.pem"));
        certline.run(&[
            "ca",
            "enroll",
            "--dir",
            path(&ca_dir),
            "--role",
            role,
            "--name",
            name,
            "--out",
            path(&out),
        ])?;
        Ok(out)
    };
    let station_cred = enroll("station", "station-1")?;
    let line1_cred = enroll("line", "line-1")?;
    let line2_cred = enroll("line", "line-2")?;
    let link_cred = enroll("device-link", "demo-boards")?;
    let center_dir = dir.join("center");
    std::fs::create_dir_all(&center_dir)?;
    let center_cred = enroll("center", "center-1")?;
    std::fs::copy(&center_cred, center_dir.join("credential.pem"))?;
    let ca = service(
        &certline,
        &[
            "ca",
            "serve",
            "--dir",
            path(&ca_dir),
            "--listen",
            "127.0.0.1:0",
        ],
        "CA listening on ",
        "ca",
    )?;

    step(
        2,
        "station: init (models 3012 3013 A123 with certificates, 3014 with keys born in the device, K7 without; admin password set)",
    );
    let st = dir.join("station");
    let mut init = vec![
        "station",
        "init",
        "--dir",
        path(&st),
        "--ca",
        &ca.url,
        "--credential",
        path(&station_cred),
        "--chunk-size",
        "10",
        "--json",
    ];
    for p in PLAN {
        init.push(if p.certificate {
            "--model"
        } else {
            "--model-without-cert"
        });
        init.push(p.model);
        if p.device_keygen {
            init.push("--device-keygen-model");
            init.push(p.model);
        }
    }
    certline.run(&init)?;
    configure_station(&st, scripts.as_deref())?;
    match &scripts {
        Some(s) => progress(&format!(
            "     retention policy: {} (Lua)",
            s.join("retention.lua").display()
        )),
        None => progress(
            "     retention policy: built-in (A123 delete, others flag); scripts/example not found",
        ),
    }

    step(3, "station: import the day's production plan");
    let plan_file = dir.join("plan.csv");
    let mut csv = String::from("date,model,first_serial,count\n");
    for p in PLAN {
        csv.push_str(&format!(
            "{day},{},{:0w$},{}\n",
            p.model,
            p.first,
            p.count,
            w = p.width
        ));
        progress(&format!(
            "     {:<5} {:>3} devices  {}",
            p.model, p.count, p.what
        ));
    }
    std::fs::write(&plan_file, csv)?;
    // The import's report is checked to be one, not read.
    certline.json::<serde::de::IgnoredAny>(&[
        "station",
        "plan",
        "import",
        "--dir",
        path(&st),
        path(&plan_file),
        "--json",
    ])?;

    step(4, "station: fetch the day's packs from the CA");
    // Without --json the fetch shows its progress on stderr (chunks of 10
    // packs, as set at init); the numbers are read back from the stock.
    let fetch = certline.run_with_progress(
        &["station", "fetch", "--dir", path(&st), "--day", &day],
        "fetch:",
        "     ",
    )?;
    for line in fetch.lines().filter(|l| !l.trim().is_empty()).take(2) {
        progress(&format!("     {}", line.trim()));
    }
    let after_fetch: StockReport = certline.json(&[
        "station",
        "admin",
        "stock",
        "--dir",
        path(&st),
        "--today",
        &day,
        "--json",
    ])?;

    step(5, "station: serve the lines (mTLS)");
    let station = service(
        &certline,
        &[
            "station",
            "serve",
            "--dir",
            path(&st),
            "--listen",
            "127.0.0.1:0",
            "--today",
            &day,
        ],
        "station listening on ",
        "station",
    )?;
    progress(&format!(
        "     console: {}/console/ (user admin, password in {}; the browser must trust {})",
        station.url,
        dir.join("admin-password").display(),
        st.join("root.pem").display()
    ));

    step(
        6,
        "lines: line-1 (imaging, XML over TCP) and line-2 (meters, TLV over a serial pty) work their scans",
    );
    let lines_dir = dir.join("lines");
    let devices = dir.join("devices");
    std::fs::create_dir_all(&devices)?;
    let mut line_plugins = Vec::new();
    for (name, wasm) in [
        ("line-1", "certline_plugin_imaging.wasm"),
        ("line-2", "certline_plugin_meter.wasm"),
    ] {
        let to = lines_dir.join(name).join("plugins");
        std::fs::create_dir_all(&to)?;
        std::fs::copy(plugins.join(wasm), to.join(wasm))?;
        line_plugins.push(to);
    }
    let cable = floor::free_addr()?;
    let port = lines_dir.join("line-2").join("meter-port");
    // HOOK (issue 7): the line gets the example factory's line.lua through
    // `[scripts] dir`; a line build without the Lua workflow says so in its
    // log and parses plates with the built-in MODEL-SERIAL parser.
    let factory = floor::write_factory(&lines_dir)?;
    let line1 = Line {
        name: "line-1".into(),
        config: floor::write_config(
            &lines_dir.join("line-1"),
            "line-1",
            &station.url,
            &line1_cred,
            &cable,
            &line_plugins[0],
            scripts.as_deref(),
            &factory,
        )?,
        cable: Cable::Tcp(cable.clone()),
        steps: line1_steps(),
    };
    let line2 = Line {
        name: "line-2".into(),
        config: floor::write_config(
            &lines_dir.join("line-2"),
            "line-2",
            &station.url,
            &line2_cred,
            path(&port),
            &line_plugins[1],
            scripts.as_deref(),
            &factory,
        )?,
        cable: Cable::Serial(port),
        steps: line2_steps(),
    };
    let scans = std::thread::scope(|s| -> anyhow::Result<Vec<floor::ScanResult>> {
        let a = s.spawn(|| floor::run_line(&certline, &line1, &devices, &link_cred));
        let b = s.spawn(|| floor::run_line(&certline, &line2, &devices, &link_cred));
        let mut all = a.join().map_err(|_| anyhow::anyhow!("line-1 panicked"))??;
        all.extend(b.join().map_err(|_| anyhow::anyhow!("line-2 panicked"))??);
        Ok(all)
    })?;

    step(
        7,
        &format!(
            "admin: log in over HTTPS and discard the leftover packs of discontinued model {DISCONTINUED}"
        ),
    );
    let root = st.join("root.pem");
    fn admin<T: serde::de::DeserializeOwned>(
        certline: &Certline,
        url: &str,
        root: &Path,
        cmd: &[&str],
    ) -> anyhow::Result<T> {
        let mut args = vec!["station", "admin"];
        args.extend_from_slice(cmd);
        args.extend([
            "--url",
            url,
            "--root",
            path(root),
            "--user",
            "admin",
            "--json",
        ]);
        certline.json(&args)
    }
    let admin_url = station.url.clone();
    let discard: DiscardReport = admin(
        &certline,
        &admin_url,
        &root,
        &["discard", "--model", DISCONTINUED, "--day", &day],
    )?;
    progress(&format!("     {}", compact(&discard)?));

    step(
        8,
        &format!("admin: rework {REWORKED} (board replaced): its certificate is revoked at the CA"),
    );
    let rework: ReworkReport = admin(
        &certline,
        &admin_url,
        &root,
        &[
            "rework",
            "--id",
            REWORKED,
            "--reason",
            "main board replaced after burn-in",
        ],
    )?;
    progress(&format!("     {}", compact(&rework)?));
    wait_queue(&certline, &st)?;
    wait_revoked(&certline, &ca_dir, REWORKED, &rework.revoked_serial)?;
    // The serving CA publishes a revocation within its `crl_max_delay`; the
    // center below reads the CRL once at start, so publish it now.
    certline.run(&[
        "ca",
        "crl",
        "--now",
        "--dir",
        path(&ca_dir),
        "--out",
        path(&center_dir.join("crl.pem")),
    ])?;
    let stock: StockReport = admin(&certline, &admin_url, &root, &["stock"])?;

    step(
        9,
        "center: every written device connects with the identity in its flash",
    );
    let contracts_file = center_dir.join("contracts.csv");
    std::fs::write(&contracts_file, contracts(&day))?;
    let center = service(
        &certline,
        &[
            "center",
            "--dir",
            path(&center_dir),
            "--listen",
            "127.0.0.1:0",
            "--contracts",
            path(&contracts_file),
            "--ca",
            &ca.url,
        ],
        "center listening on ",
        "center",
    )?;
    let written: Vec<String> = report::written_ids(&scans);
    let center_rows = report::connect_all(&certline, &center.url, &devices, &written)?;
    drop(center);

    step(10, "summary and invariant checks");
    let gathered = report::gather(&certline, &ca_dir, &st)?;
    // The CRLs as a file, so the center can be started again on the state
    // left behind without the CA (see the summary's "try" commands).
    let crl_file = center_dir.join("crl.pem");
    certline.run(&[
        "ca",
        "crl",
        "--dir",
        path(&ca_dir),
        "--out",
        path(&crl_file),
    ])?;
    // Kept serving after the summary with --keep-serving; stopped here otherwise.
    let mut serving = Some((station, ca));
    if !args.keep_serving {
        serving = None;
    }
    let summary = report::Summary::build(
        &dir,
        &day,
        scripts.as_deref(),
        &after_fetch,
        &stock,
        &scans,
        &center_rows,
        &gathered,
        &ca_dir,
        &devices,
        started,
    )?;
    let value = serde_json::to_value(&summary)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&value)?,
    )?;
    crate::command::emit(args.json, &value, || summary.print())?;
    if let Some((station, _ca)) = &serving {
        progress(&format!(
            "station and CA keep serving until Ctrl-C; the console: {}/console/ (user admin, password in {})",
            station.url,
            dir.join("admin-password").display()
        ));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::service::server::shutdown_signal());
    }
    drop(serving);
    if !summary.ok {
        let failed: Vec<&str> = summary
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        anyhow::bail!(
            "{} invariant check(s) failed: {}; the state is in {}",
            failed.len(),
            failed.join("; "),
            dir.display()
        );
    }
    Ok(())
}

/// A report as its compact JSON (keys sorted, as `serde_json::Value` has
/// them), cut to a progress line's width.
fn compact(v: &impl serde::Serialize) -> anyhow::Result<String> {
    let s = serde_json::to_value(v)?.to_string();
    Ok(if s.len() > 160 {
        format!("{}...", &s[..157])
    } else {
        s
    })
}

/// The demo's station: every day a working day (the demo runs any day), and
/// the example factory's retention policy.
fn configure_station(st: &Path, scripts: Option<&Path>) -> anyhow::Result<()> {
    let file = st.join("station.toml");
    let text = std::fs::read_to_string(&file)?;
    let mut config: toml::Table = toml::from_str(&text)?;
    config.insert(
        "working_days".into(),
        toml::Value::Array(
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .map(|d| toml::Value::String(d.to_string()))
                .collect(),
        ),
    );
    let retention = config
        .entry("retention")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if let toml::Value::Table(r) = retention {
        match scripts {
            Some(s) => {
                r.insert(
                    "script".into(),
                    toml::Value::String(path(&s.join("retention.lua")).to_string()),
                );
            }
            None => {
                let mut models = toml::Table::new();
                models.insert("A123".into(), toml::Value::String("delete".into()));
                r.insert("models".into(), toml::Value::Table(models));
            }
        }
    }
    std::fs::write(&file, toml::to_string(&config)?)?;
    Ok(())
}

/// Waits until the station has nothing waiting for the CA (revocations and
/// replacements are sent as they happen; this is the belt and braces).
fn wait_queue(certline: &Certline, st: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q: QueueReport =
            certline.json(&["station", "admin", "queue", "--dir", path(st), "--json"])?;
        let waiting = q.items.len();
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{waiting} item(s) still wait for the CA: {}",
                serde_json::to_value(&q)?
            );
        }
        let _ = certline.run(&["station", "admin", "retry", "--dir", path(st), "--json"]);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until the CA's ledger lists `serial` of `id` as revoked.
fn wait_revoked(certline: &Certline, ca_dir: &Path, id: &str, serial: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history: Vec<CertRecord> =
            certline.json(&["ca", "status", "--dir", path(ca_dir), "--id", id, "--json"])?;
        let revoked = history
            .iter()
            .any(|c| c.serial == serial && c.status == CertStatus::Revoked);
        if revoked {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the CA never revoked {id}'s certificate {serial}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// line-1: imaging devices over TCP, and most of the bad scans.
fn line1_steps() -> Vec<Step> {
    let mut steps = vec![
        Step::new("3012-000001", Some("3012-000001"), "ok", "written"),
        Step::new(
            "]C13012-000002",
            Some("3012-000002"),
            "ok",
            "written (scanner sent an AIM prefix)",
        ),
        Step::new("3012-000003", Some("3012-000003"), "ok", "written"),
        Step::new("3012000004", None, "refused", "malformed barcode"),
        Step::new("7777-000001", None, "refused", "unknown model"),
        Step::new(
            "K7-1001",
            None,
            "refused",
            "model without certificate: nothing to write",
        ),
        Step::new(
            STRAY,
            Some(STRAY),
            "refused",
            "not in the plan: nothing taken",
        ),
        Step::faulty(
            "3012-000004",
            &["--drop-after-received"],
            "failed",
            "device drops the link mid-write: certificate revoked, re-issued",
        ),
        Step::new(
            "3012-000004",
            Some("3012-000004"),
            "ok",
            "rescanned: written with the re-issued certificate",
        ),
        Step::new(
            "3012-000001",
            Some("3012-000001"),
            "refused",
            "duplicate scan: already written",
        ),
    ];
    for n in 5..=10 {
        let id = format!("3012-{n:06}");
        steps.push(Step::new(&id, Some(&id), "ok", "written"));
    }
    for n in 1..=2 {
        let id = format!("3013-{n:06}");
        steps.push(Step::new(&id, Some(&id), "ok", "written"));
    }
    // Keys born in the device: each generates its key in its secure
    // element and sends a CSR; the certificate is built from the id.
    for n in 1..=3 {
        let id = format!("3014-{n:06}");
        steps.push(Step::faulty(
            &id,
            &["--keygen"],
            "ok",
            "key generated in the device, CSR signed, written",
        ));
    }
    steps.push(Step::faulty(
        "3014-000004",
        &["--keygen", "--csr-for-other-key"],
        "failed",
        "CSR for one key, holds another: proof of possession fails, revoked",
    ));
    steps.push(Step::faulty(
        "3014-000004",
        &["--keygen"],
        "ok",
        "rescanned: a fresh key, a fresh certificate",
    ));
    steps
}

/// line-2: meters over a serial pseudo-terminal.
fn line2_steps() -> Vec<Step> {
    vec![
        Step::new("A123-000001", Some("A123-000001"), "ok", "written"),
        Step::new(
            "]Q3A123-000002",
            Some("A123-000002"),
            "ok",
            "written (scanner sent an AIM prefix)",
        ),
        Step::new("A123-000003", Some("A123-000003"), "ok", "written"),
        Step::faulty(
            "A123-000004",
            &["--fail-write", "flash worn out"],
            "failed",
            "meter refuses the write: certificate revoked, re-issued",
        ),
        Step::new(
            "A123-000004",
            Some("A123-000004"),
            "ok",
            "rescanned: written with the re-issued certificate",
        ),
        Step::new("A123_000005", None, "refused", "malformed barcode"),
        Step::new("A123-000005", Some("A123-000005"), "ok", "written"),
        Step::new("A123-000006", Some("A123-000006"), "ok", "written"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contracts_file_and_the_expected_verdicts_come_from_one_table() {
        assert_eq!(
            contracts("2026-12-02"),
            "devices,contract,from,to\n\
             3012-000001..3012-000006,MC-2041-ACME,2026-12-02,\n\
             3013-000001,MC-2042-GLOBEX,2026-12-02,\n\
             A123-000001..A123-000003,MC-7001-CITYGRID,2026-12-02,\n"
        );
        assert_eq!(expected_verdict("3012-000001"), Verdict::Contract);
        assert_eq!(expected_verdict("3012-000006"), Verdict::Contract);
        assert_eq!(expected_verdict("3012-000007"), Verdict::NoContract);
        assert_eq!(expected_verdict("3013-000001"), Verdict::Contract);
        assert_eq!(expected_verdict("3013-000002"), Verdict::NoContract);
        assert_eq!(expected_verdict("A123-000003"), Verdict::Contract);
        assert_eq!(expected_verdict("A123-000004"), Verdict::NoContract);
        assert_eq!(expected_verdict(REWORKED), Verdict::Revoked);
        assert_eq!(expected_verdict(STRAY), Verdict::Unknown);
    }
}
