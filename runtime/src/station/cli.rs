//! `certline station ...`: init, plan import, fetch, serve, admin, bench.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::background::background;
use super::config::{day_text, parse_day, RetentionAction};
use super::dir::{self, InitOptions};
use super::fetch::{CaLink, Shared};
use super::login::{password_or_prompt, Secret};
use super::serve::{router, ServeState};
use super::{Opened, Station};
use crate::command::StateDir;
use crate::command::{emit, runtime};
use crate::service::server::{bind, serve, shutdown_signal};
use crate::service::tls::{server_config, ClientAuth};
use crate::wire::station::{FetchCommandReport, PlanShowReport};

#[derive(Subcommand, Debug)]
pub enum StationCommand {
    /// Create a station directory: configuration, sealed credential, empty stock, first admin.
    Init(InitArgs),
    /// Production plans.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Send waiting revocations/replacements, then fetch the packs of the day(s) from the CA.
    Fetch(FetchArgs),
    /// Serve lines and administrators over HTTPS (prints its URL).
    Serve(ServeArgs),
    /// Administration behind the admin login, locally (--dir) or through a serving station (--url).
    #[command(subcommand)]
    Admin(super::admin_cli::AdminCommand),
    /// Measure a day's fetch and take+result round trips (not a test).
    Bench(super::bench::BenchArgs),
}

/// Opens the station a command names.
pub(crate) fn open(dir: &StateDir) -> anyhow::Result<Opened> {
    // Say "not a station" before asking for a passphrase it would not need.
    dir::read_config(&dir.dir)?;
    let passphrase = dir.passphrase()?;
    Station::open(&dir.dir, Some(&passphrase))
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: StateDir,
    /// The CA's URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    pub ca: String,
    /// The station credential (from `certline ca enroll --role station`).
    #[arg(long)]
    pub credential: PathBuf,
    /// Name of the first administrator (password from CERTLINE_ADMIN_PASSWORD or a prompt).
    #[arg(long, default_value = "admin")]
    pub admin_user: String,
    /// The first administrator's password: from the environment only.
    #[arg(long = "admin-password", env = super::admin::PASSWORD_ENV, hide_env_values = true, hide = true)]
    pub admin_password: Option<Secret>,
    /// A model code whose devices get a certificate (repeat; more in station.toml [models]).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// A model code built without a certificate (kept in plans, skipped by the fetch).
    #[arg(long = "model-without-cert")]
    pub models_without_cert: Vec<String>,
    /// A model (named with --model too) whose devices generate their own key
    /// and send a CSR (keygen = "device"); nothing is fetched for it.
    #[arg(long = "device-keygen-model")]
    pub models_device_keygen: Vec<String>,
    /// What happens to a pack once written: flag (keep, marked) or delete (wipe the key).
    #[arg(long, value_parser = ["flag", "delete"], default_value = "flag")]
    pub retention: String,
    /// Ids per batch request to the CA (default 1000).
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// Seconds a line has to report a result before the pack is revoked and replaced (default 1800).
    #[arg(long)]
    pub handout_timeout: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Import a plan (CSV: date,model,first_serial,count; or JSON): all rows or none.
    Import(PlanImportArgs),
    /// Show the plan of a day.
    Show(PlanShowArgs),
}

#[derive(Args, Debug)]
pub struct PlanImportArgs {
    /// The station directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The plan file (.csv or .json).
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PlanShowArgs {
    /// The station directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// YYYY-MM-DD (default: the station's today).
    #[arg(long)]
    pub day: Option<String>,
    /// List every id, not just the counts.
    #[arg(long)]
    pub ids: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    #[command(flatten)]
    pub dir: StateDir,
    /// Fetch this day only (YYYY-MM-DD); default: today and the next working day(s).
    #[arg(long)]
    pub day: Option<String>,
    /// Another CA URL than station.toml's.
    #[arg(long)]
    pub ca: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dir: StateDir,
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long)]
    pub listen: Option<String>,
    /// Pretend today is this day (YYYY-MM-DD): for demos and tests.
    #[arg(long)]
    pub today: Option<String>,
    /// Another CA URL than station.toml's.
    #[arg(long)]
    pub ca: Option<String>,
    /// Seconds between fetches of the CA's CRL (lines whose credential it
    /// lists are refused).
    #[arg(long, default_value_t = 60)]
    pub crl_refresh: u64,
    /// Run the retention clock this far ahead (e.g. 30d, 12h, 90m, 45s), so
    /// a retention policy by age can be watched without waiting days. For
    /// tests only: refused unless --testing is given too.
    #[arg(long, value_name = "DURATION")]
    pub clock_ahead: Option<String>,
    /// Allow the test-only settings (--clock-ahead). Never on a production station.
    #[arg(long)]
    pub testing: bool,
}

/// A duration as `--clock-ahead` takes it: a number and d, h, m or s.
fn parse_ahead(text: &str) -> anyhow::Result<i64> {
    let bad =
        || anyhow::anyhow!("--clock-ahead {text:?}: expected a number and d, h, m or s (30d, 12h)");
    let unit = text.chars().last().ok_or_else(bad)?;
    let per = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(bad()),
    };
    let n: i64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    // At most a hundred years ahead, never behind.
    n.checked_mul(per)
        .filter(|secs| (0..=36_500 * 86_400).contains(secs))
        .ok_or_else(bad)
}

pub fn run(command: StationCommand) -> anyhow::Result<()> {
    match command {
        StationCommand::Init(args) => init(args),
        StationCommand::Plan(PlanCommand::Import(args)) => plan_import(args),
        StationCommand::Plan(PlanCommand::Show(args)) => plan_show(args),
        StationCommand::Fetch(args) => fetch(args),
        StationCommand::Serve(args) => serve_station(args),
        StationCommand::Admin(command) => super::admin_cli::run(command),
        StationCommand::Bench(args) => super::bench::run(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    if args.dir.dir.join(dir::CONFIG_FILE).exists() {
        anyhow::bail!(
            "{} is already an initialised station (it has {}); refusing to overwrite its stock",
            args.dir.dir.display(),
            dir::CONFIG_FILE
        );
    }
    let passphrase = args.dir.passphrase()?;
    let password = password_or_prompt(
        args.admin_password.as_ref(),
        &format!("password for the new administrator {}: ", args.admin_user),
    )?;
    let retention = if args.retention == "delete" {
        RetentionAction::Delete
    } else {
        RetentionAction::Flag
    };
    let report = dir::init(
        &args.dir.dir,
        &InitOptions {
            ca_url: args.ca,
            credential: args.credential,
            admin_user: args.admin_user,
            models: args.models,
            models_without_certificate: args.models_without_cert,
            models_device_keygen: args.models_device_keygen,
            retention,
            chunk_size: args.chunk_size,
            handout_timeout_secs: args.handout_timeout,
        },
        &passphrase,
        &password,
    )?;
    emit(args.json, &report, || {
        println!(
            "station {} initialised in {}",
            report.name,
            report.dir.display()
        );
        println!("  CA                 {}", report.ca_url);
        println!("  models with certs  {}", list(&report.models));
        println!(
            "  models without     {}",
            list(&report.models_without_certificate)
        );
        println!("  administrator      {}", report.admin_user);
        println!();
        println!("Pack keys will be sealed under a key derived (Argon2id) from the passphrase you");
        println!(
            "gave; it is stored nowhere. Edit {} for profiles,",
            report.dir.join(dir::CONFIG_FILE).display()
        );
        println!("retention, timeouts and the scheduled fetch.");
        println!();
        println!(
            "Next: certline station plan import --dir {} PLAN.csv",
            report.dir.display()
        );
    })
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

fn plan_import(args: PlanImportArgs) -> anyhow::Result<()> {
    let config = dir::read_config(&args.dir)?;
    let mut stock = dir::open_stock(&args.dir)?;
    let report = super::plan::import(&args.file, &config, &mut stock, "station plan import")?;
    emit(args.json, &report, || {
        println!("imported {}: {} device id(s)", report.file, report.ids);
        for (day, models) in &report.days {
            let parts: Vec<String> = models.iter().map(|(m, n)| format!("{m} x{n}")).collect();
            println!("  {day}  {}", parts.join(", "));
        }
        println!(
            "  {} new, {} unchanged, {} dropped from the plan",
            report.change.added, report.change.kept, report.change.removed
        );
        for note in &report.notes {
            println!("  note: {note}");
        }
    })
}

fn plan_show(args: PlanShowArgs) -> anyhow::Result<()> {
    let config = dir::read_config(&args.dir)?;
    let stock = dir::open_stock(&args.dir)?;
    let day = match &args.day {
        Some(d) => parse_day(d).map_err(anyhow::Error::msg)?,
        None => config.today(),
    };
    let day = day_text(day);
    let rows = stock.plan_between(&day, &day)?;
    let mut by_model: std::collections::BTreeMap<&str, usize> = Default::default();
    for row in &rows {
        *by_model.entry(row.model.as_str()).or_default() += 1;
    }
    let value = PlanShowReport {
        day: day.clone(),
        models: by_model.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
        rows: args.ids.then(|| rows.clone()),
    };
    emit(args.json, &value, || {
        println!("plan for {day}: {} device id(s)", rows.len());
        for (model, n) in &by_model {
            let cert = if config.carries_certificate(model) {
                "certificate"
            } else {
                "no certificate"
            };
            println!("  {model:<8} {n:>6}  ({cert})");
        }
        if args.ids {
            for row in &rows {
                println!("  {}  ({} row {})", row.id, row.source, row.row);
            }
        }
    })
}

fn fetch_days(station: &Station, day: Option<&str>) -> anyhow::Result<Vec<time::Date>> {
    Ok(match day {
        Some(d) => vec![parse_day(d).map_err(anyhow::Error::msg)?],
        None => {
            let today = station.today();
            let mut days = vec![today];
            days.extend(
                station
                    .config
                    .next_working_days(today, station.config.days_ahead),
            );
            days
        }
    })
}

fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    dir::read_config(&args.dir.dir)?;
    let _lock = dir::lock_fetch(&args.dir.dir)?;
    let opened = open(&args.dir)?;
    let credential = opened.credential.expect("opened with a passphrase");
    let ca_url = args
        .ca
        .clone()
        .unwrap_or_else(|| opened.station.config.ca_url.clone());
    let ca = CaLink::new(&ca_url, &credential)?;
    let days = fetch_days(&opened.station, args.day.as_deref())?;
    let shared: Shared = Arc::new(Mutex::new(opened.station));
    let json = args.json;
    let (queue, report) = runtime()?.block_on(async {
        let queue = super::fetch::work_queue(&shared, &ca, true).await?;
        if !json && (queue.done > 0 || queue.waiting > 0) {
            eprintln!(
                "CA queue: {} revocation(s)/replacement(s) sent, {} still waiting",
                queue.done, queue.waiting
            );
        }
        let mut last_shown = 0usize;
        let mut progress = |done: usize, total: usize| {
            if json {
                return;
            }
            if total == 0 {
                eprintln!("fetch: nothing to fetch");
            } else if done == 0 || done == total || done >= last_shown + (total / 20).max(1) {
                last_shown = done;
                eprintln!("fetch: {done}/{total} packs ({}%)", done * 100 / total);
            }
        };
        let report = super::fetch::fetch(&shared, &ca, &days, &mut progress).await?;
        anyhow::Ok((queue, report))
    })?;
    let value = FetchCommandReport {
        fetch: report.clone(),
        queue: queue.clone(),
    };
    emit(json, &value, || {
        println!(
            "fetched {} pack(s) for {} from {ca_url}",
            report.fetched,
            report.days.join(", ")
        );
        println!(
            "  planned ids with certificates {}, already in stock {}",
            report.planned, report.already_in_stock
        );
        if report.superseded_unknown > 0 {
            println!(
                "  {} id(s) had a certificate that never reached the stock (an interrupted fetch); the CA revoked it when issuing the new one",
                report.superseded_unknown
            );
        }
        for note in &report.notes {
            println!("  note: {note}");
        }
        if queue.waiting > 0 {
            println!(
                "  {} revocation(s)/replacement(s) still wait for the CA",
                queue.waiting
            );
        }
    })
}

fn serve_station(args: ServeArgs) -> anyhow::Result<()> {
    // Checked before anything is opened: a production station never starts
    // with a moved clock.
    let clock_ahead = match &args.clock_ahead {
        Some(ahead) => {
            if !args.testing {
                anyhow::bail!(
                    "--clock-ahead moves the station's retention clock and is for tests only; \
                     refused without --testing (never use it on a production station)"
                );
            }
            let secs = parse_ahead(ahead)?;
            eprintln!("warning: testing: the retention clock runs {ahead} ahead of the real one");
            Some(secs)
        }
        None => None,
    };
    let opened = open(&args.dir)?;
    let credential = opened.credential.expect("opened with a passphrase");
    let mut station = opened.station;
    if let Some(day) = &args.today {
        station.set_today(Some(parse_day(day).map_err(anyhow::Error::msg)?));
    }
    if let Some(secs) = clock_ahead {
        station.set_clock_ahead(secs);
    }
    // A crash may have left deleted key bytes in the WAL, hand-outs past
    // their time, rows that do not decrypt. (Packs written but not yet
    // retained are the background's: a retention script never holds up the
    // start.)
    station.checkpoint()?;
    let quarantined = station.verify_stock()?;
    if quarantined > 0 {
        eprintln!("warning: {quarantined} stocked pack(s) do not decrypt; quarantined, replacements queued");
    }
    station.sweep_timeouts()?;
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| station.config.listen.clone());
    let ca_url = args
        .ca
        .clone()
        .unwrap_or_else(|| station.config.ca_url.clone());
    let ca = Arc::new(CaLink::new(&ca_url, &credential)?);
    let tls = server_config(&credential, ClientAuth::Optional)?;
    let shared: Shared = Arc::new(Mutex::new(station));
    let dir = args.dir.dir.clone();
    runtime()?.block_on(async move {
        let mut state = ServeState::open(shared, &dir, &credential, &ca).await?;
        state.crl_refresh = Duration::from_secs(args.crl_refresh.max(1));
        let listener = bind(&listen, "station").await?;
        let worker = tokio::spawn(background(state.clone(), ca));
        let result = serve(listener, tls, router(state), shutdown_signal()).await;
        worker.abort();
        result
    })
}

/// For tests and the bench: the path of a station's stock.
pub fn stock_path(dir: &Path) -> PathBuf {
    dir.join(dir::STOCK_FILE)
}
