//! `certline station ...`: init, plan import, fetch, serve, admin, bench.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::config::{day_text, parse_day, RetentionAction};
use super::desk::{Station, StationError};
use super::dir::{self, InitOptions};
use super::fetch::{CaLink, Shared};
use super::serve::{background, router, ServeState};
use crate::cli::{emit, runtime};
use crate::pki::seal::read_passphrase;
use crate::service::client::ServiceClient;
use crate::service::server::{bind, serve, shutdown_signal};
use crate::service::tls::{server_config, ClientAuth};
use crate::wire::station::{
    self as api, AuditReport, DeviceReport, DiscardReport, DiscardRequest, LoginRequest,
    LoginResponse, QueueReport, ReworkReport, ReworkRequest, StockReport,
};

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
    Admin(AdminCommand),
    /// Measure a day's fetch and take+result round trips (not a test).
    Bench(super::bench::BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DirArgs {
    /// The station directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// File holding the key-encryption passphrase (else CERTLINE_PASSPHRASE).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

impl DirArgs {
    fn open(&self) -> anyhow::Result<super::desk::Opened> {
        // Say "not a station" before asking for a passphrase it would not need.
        dir::read_config(&self.dir)?;
        let passphrase = read_passphrase(self.passphrase_file.as_deref())?;
        Station::open(&self.dir, Some(&passphrase))
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// The CA's URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    pub ca: String,
    /// The station credential (from `certline ca enroll --role station`).
    #[arg(long)]
    pub credential: PathBuf,
    /// Name of the first administrator (password from CERTLINE_ADMIN_PASSWORD or a prompt).
    #[arg(long, default_value = "admin")]
    pub admin_user: String,
    /// A model code whose devices get a certificate (repeat; more in station.toml [models]).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// A model code built without a certificate (kept in plans, skipped by the fetch).
    #[arg(long = "model-without-cert")]
    pub models_without_cert: Vec<String>,
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
    pub dir: DirArgs,
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
    pub dir: DirArgs,
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
}

#[derive(Args, Debug, Clone)]
pub struct AdminTarget {
    /// Work on the station directory directly.
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub dir: Option<PathBuf>,
    /// Work through a serving station's API, e.g. https://127.0.0.1:8444
    #[arg(long, requires = "root")]
    pub url: Option<String>,
    /// The root certificate the station's server chains to (the station directory's root.pem).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Admin user (password from CERTLINE_ADMIN_PASSWORD or a prompt).
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Pretend today is this day (YYYY-MM-DD) for the "today" figures (--dir only).
    #[arg(long)]
    pub today: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Stock per model code: in stock, handed out, used today, failed today, replaced.
    Stock(AdminTarget),
    /// Discard the leftover (stocked) packs of a model, revoking their certificates.
    Discard {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long)]
        model: String,
        /// Only the leftovers planned for this day (YYYY-MM-DD).
        #[arg(long)]
        day: Option<String>,
    },
    /// The audit log: whether its hash chain is intact, and the newest entries.
    Audit {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long, default_value_t = 20)]
        last: i64,
    },
    /// Authorise re-provisioning of a written device (board replaced): revoke and fetch a fresh pack.
    Rework {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long)]
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Revocations and replacements waiting for the CA.
    Queue(AdminTarget),
    /// Send the waiting revocations and replacements now (a serving station picks them up).
    Retry(AdminTarget),
    /// Everything the station knows of one device id.
    Device {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long)]
        id: String,
    },
    /// Add an administrator (--dir only; the new password from CERTLINE_NEW_ADMIN_PASSWORD or a prompt).
    UserAdd {
        #[command(flatten)]
        target: AdminTarget,
        /// The new user's name.
        #[arg(long)]
        new_user: String,
    },
}

pub fn run(command: StationCommand) -> anyhow::Result<()> {
    match command {
        StationCommand::Init(args) => init(args),
        StationCommand::Plan(PlanCommand::Import(args)) => plan_import(args),
        StationCommand::Plan(PlanCommand::Show(args)) => plan_show(args),
        StationCommand::Fetch(args) => fetch(args),
        StationCommand::Serve(args) => serve_station(args),
        StationCommand::Admin(command) => admin(command),
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
    let passphrase = read_passphrase(args.dir.passphrase_file.as_deref())?;
    let password = super::admin::read_password(&format!(
        "password for the new administrator {}: ",
        args.admin_user
    ))?;
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
    let value = serde_json::json!({"day": day, "models": by_model, "rows": if args.ids { serde_json::to_value(&rows)? } else { serde_json::Value::Null }});
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
    let opened = args.dir.open()?;
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
    let value = serde_json::json!({"fetch": report, "queue": queue});
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
    let opened = args.dir.open()?;
    let credential = opened.credential.expect("opened with a passphrase");
    let mut station = opened.station;
    if let Some(day) = &args.today {
        station.set_today(Some(parse_day(day).map_err(anyhow::Error::msg)?));
    }
    // A crash may have left deleted key bytes in the WAL, packs written but
    // not yet retained, hand-outs past their time, rows that do not decrypt.
    station.checkpoint()?;
    let quarantined = station.verify_stock()?;
    if quarantined > 0 {
        eprintln!("warning: {quarantined} stocked pack(s) do not decrypt; quarantined, replacements queued");
    }
    station.sweep_retention()?;
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
    let mut state = ServeState::new(Arc::new(Mutex::new(station)));
    state.crl_refresh = Duration::from_secs(args.crl_refresh.max(1));
    let dir = args.dir.dir.clone();
    runtime()?.block_on(async move {
        let listener = bind(&listen, "station").await?;
        let worker = tokio::spawn(background(state.clone(), ca, dir));
        let result = serve(listener, tls, router(state), shutdown_signal()).await;
        worker.abort();
        result
    })
}

// ---- admin ----

enum Admin {
    Local {
        station: Box<Station>,
        actor: String,
    },
    Remote {
        client: ServiceClient,
        rt: tokio::runtime::Runtime,
    },
}

impl Admin {
    fn connect(target: &AdminTarget) -> anyhow::Result<Admin> {
        if let Some(dir) = &target.dir {
            let mut station = Station::open(dir, None)?.station;
            if let Some(day) = &target.today {
                station.set_today(Some(parse_day(day).map_err(anyhow::Error::msg)?));
            }
            let password = super::admin::read_password(&format!("password of {}: ", target.user))?;
            let config = station.config.admin.clone();
            super::admin::check_login(
                &mut station.stock,
                &config,
                &target.user,
                &password,
                "local",
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(Admin::Local {
                station: Box::new(station),
                actor: format!("admin:{}", target.user),
            });
        }
        let url = target.url.as_deref().expect("clap requires --dir or --url");
        let root_path = target
            .root
            .as_deref()
            .expect("clap requires --root with --url");
        let root = crate::pki::pem_blocks(
            &std::fs::read_to_string(root_path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", root_path.display()))?,
            "CERTIFICATE",
        )?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", root_path.display()))?;
        let client = ServiceClient::anonymous(
            url,
            &root.into(),
            crate::pki::role::Role::Station,
            Duration::from_secs(60),
        )?;
        let password = super::admin::read_password(&format!("password of {}: ", target.user))?;
        let rt = runtime()?;
        let login: LoginResponse = rt.block_on(client.post(
            api::ADMIN_LOGIN,
            &LoginRequest {
                user: target.user.clone(),
                password,
            },
        ))?;
        Ok(Admin::Remote {
            client: client.with_bearer(&login.token),
            rt,
        })
    }

    fn local<T>(
        &mut self,
        work: impl FnOnce(&mut Station, &str) -> Result<T, StationError>,
    ) -> Option<anyhow::Result<T>> {
        match self {
            Admin::Local { station, actor } => {
                Some(work(station, actor).map_err(|e| anyhow::anyhow!("{e}")))
            }
            Admin::Remote { .. } => None,
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        match self {
            Admin::Remote { client, rt } => Ok(rt.block_on(client.get_json(path))?),
            Admin::Local { .. } => unreachable!("remote only"),
        }
    }

    fn post<Req: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> anyhow::Result<T> {
        match self {
            Admin::Remote { client, rt } => Ok(rt.block_on(client.post(path, body))?),
            Admin::Local { .. } => unreachable!("remote only"),
        }
    }

    fn close(self) {
        if let Admin::Remote { client, rt } = self {
            let _ = rt.block_on(
                client.post::<_, serde_json::Value>(api::ADMIN_LOGOUT, &serde_json::json!({})),
            );
        }
    }
}

fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

enum Kind {
    Retry,
    Other,
}

fn admin(command: AdminCommand) -> anyhow::Result<()> {
    let command_kind = match &command {
        AdminCommand::Retry(_) => Kind::Retry,
        _ => Kind::Other,
    };
    match command {
        AdminCommand::Stock(target) => {
            let mut admin = Admin::connect(&target)?;
            let report: StockReport = match admin.local(|s, _| Ok(s.stock_report()?)) {
                Some(r) => r?,
                None => admin.get(api::ADMIN_STOCK)?,
            };
            admin.close();
            emit(target.json, &report, || print_stock(&report))
        }
        AdminCommand::Discard { target, model, day } => {
            let mut admin = Admin::connect(&target)?;
            let report: DiscardReport =
                match admin.local(|s, actor| s.discard(actor, &model, day.as_deref())) {
                    Some(r) => r?,
                    None => admin.post(
                        api::ADMIN_DISCARD,
                        &DiscardRequest {
                            model: model.clone(),
                            day: day.clone(),
                        },
                    )?,
                };
            admin.close();
            emit(target.json, &report, || {
                println!(
                    "discarded {} leftover pack(s) of model {}; {} revocation(s) queued for the CA",
                    report.discarded.len(),
                    report.model,
                    report.revocations_queued
                );
            })
        }
        AdminCommand::Audit { target, last } => {
            let mut admin = Admin::connect(&target)?;
            let report: AuditReport = match admin.local(|s, _| Ok(s.audit_report(last)?)) {
                Some(r) => r?,
                None => admin.get(&format!("{}?last={last}", api::ADMIN_AUDIT))?,
            };
            admin.close();
            emit(target.json, &report, || {
                match &report.problem {
                    None => println!("audit log intact: {} entries", report.entries),
                    Some(p) => println!("AUDIT LOG BROKEN: {p}"),
                }
                for e in &report.last {
                    let mut detail = e.detail.to_string();
                    if detail.len() > 140 {
                        detail.truncate(137);
                        detail.push_str("...");
                    }
                    println!(
                        "{:>6}  {}  {:<18} {:<12} {detail}",
                        e.seq, e.at, e.actor, e.action
                    );
                }
            })?;
            if !report.intact {
                anyhow::bail!("the audit log's hash chain is broken");
            }
            Ok(())
        }
        AdminCommand::Rework { target, id, reason } => {
            let mut admin = Admin::connect(&target)?;
            let report: ReworkReport = match admin.local(|s, actor| s.rework(actor, &id, &reason)) {
                Some(r) => r?,
                None => admin.post(
                    api::ADMIN_REWORK,
                    &ReworkRequest {
                        id: id.clone(),
                        reason: reason.clone(),
                    },
                )?,
            };
            admin.close();
            emit(target.json, &report, || {
                println!(
                    "rework of {} authorised: certificate {} will be revoked and a fresh pack fetched ({})",
                    report.id, report.revoked_serial, report.replacement
                );
            })
        }
        AdminCommand::Queue(target) | AdminCommand::Retry(target) => {
            let retry = matches!(command_kind, Kind::Retry);
            let mut admin = Admin::connect(&target)?;
            let report: QueueReport = match admin.local(|s, _| {
                if retry {
                    s.stock.queue_retry_now()?;
                }
                Ok(s.queue_report()?)
            }) {
                Some(r) => r?,
                None if retry => admin.post(api::ADMIN_RETRY, &serde_json::json!({}))?,
                None => admin.get(api::ADMIN_QUEUE)?,
            };
            admin.close();
            emit(target.json, &report, || {
                if report.items.is_empty() {
                    println!("nothing waits for the CA");
                }
                for q in &report.items {
                    println!(
                        "{:>5}  {:<8} {:<24} {}  {:<22} since {}  tries {}{}",
                        q.seq,
                        q.kind,
                        q.id,
                        q.serial,
                        q.reason,
                        q.queued_at,
                        q.attempts,
                        q.last_error
                            .as_ref()
                            .map(|e| format!("  last: {e}"))
                            .unwrap_or_default()
                    );
                }
            })
        }
        AdminCommand::Device { target, id } => {
            let mut admin = Admin::connect(&target)?;
            let report: DeviceReport = match admin.local(|s, _| s.device_report(&id)) {
                Some(r) => r?,
                None => admin.get(&format!("{}?id={}", api::ADMIN_DEVICE, query_value(&id)))?,
            };
            admin.close();
            emit(target.json, &report, || {
                println!("{}", report.id);
                if let Some(p) = &report.plan {
                    println!(
                        "  planned for {} ({} row {}){}{}",
                        p.day,
                        p.source,
                        p.row,
                        if p.discarded { ", discarded" } else { "" },
                        if p.rework { ", rework authorised" } else { "" }
                    );
                }
                for p in &report.packs {
                    println!(
                        "  {}  {:<11} stocked {}{}{}{}",
                        p.serial,
                        p.state,
                        p.stocked_at,
                        p.line
                            .as_ref()
                            .map(|l| format!(", line {l}"))
                            .unwrap_or_default(),
                        p.written_at
                            .as_ref()
                            .map(|w| format!(", written {w}"))
                            .unwrap_or_default(),
                        p.end_reason
                            .as_ref()
                            .map(|r| format!(", {r}"))
                            .unwrap_or_default()
                    );
                }
                for q in &report.waiting_for_ca {
                    println!(
                        "  waiting for the CA: {} {} ({})",
                        q.kind, q.serial, q.reason
                    );
                }
            })
        }
        AdminCommand::UserAdd { target, new_user } => {
            if target.dir.is_none() {
                anyhow::bail!("user-add works on the station directory only (--dir)");
            }
            let mut admin = Admin::connect(&target)?;
            let password = match std::env::var("CERTLINE_NEW_ADMIN_PASSWORD") {
                Ok(p) if !p.is_empty() => zeroize::Zeroizing::new(p),
                _ => super::admin::read_password(&format!(
                    "password for the new administrator {new_user}: "
                ))?,
            };
            super::admin::check_new_user(&new_user, &password)?;
            let phc = super::admin::hash_password(&password)?;
            admin
                .local(|s, actor| Ok(s.stock.add_user(&new_user, &phc, actor)?))
                .expect("local")?;
            let value = serde_json::json!({"added": new_user});
            emit(target.json, &value, || {
                println!("administrator {new_user} added")
            })
        }
    }
}

fn print_stock(report: &StockReport) {
    println!("stock on {} (today)", report.day);
    println!(
        "  {:<8} {:>5} {:>8} {:>8} {:>10} {:>10} {:>12} {:>9} {:>11} {:>9}",
        "model",
        "cert",
        "planned",
        "in stock",
        "handed out",
        "used today",
        "failed today",
        "replaced",
        "quarantined",
        "discarded"
    );
    for m in &report.models {
        println!(
            "  {:<8} {:>5} {:>8} {:>8} {:>10} {:>10} {:>12} {:>9} {:>11} {:>9}",
            m.model,
            if m.certificate { "yes" } else { "no" },
            m.planned_today,
            m.in_stock,
            m.handed_out,
            m.used_today,
            m.failed_today,
            m.replaced_today,
            m.quarantined,
            m.discarded
        );
    }
    if report.waiting_for_ca > 0 {
        println!(
            "  {} revocation(s)/replacement(s) wait for the CA (certline station admin queue)",
            report.waiting_for_ca
        );
    } else {
        println!("  nothing waits for the CA");
    }
}

/// For tests and the bench: the path of a station's stock.
pub fn stock_path(dir: &Path) -> PathBuf {
    dir.join(dir::STOCK_FILE)
}
