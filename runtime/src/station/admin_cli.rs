//! `certline station admin ...`: administration behind the admin login,
//! either on the station directory itself (`--dir`) or through a serving
//! station's API (`--url`). Both are one [`AdminApi`]; the commands below
//! neither know nor care which one they talk to.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::config::parse_day;
use super::login::{password_or_prompt, Secret};
use super::Station;
use crate::command::{emit, runtime};
use crate::service::client::ServiceClient;
use crate::wire::station::{
    self as api, AuditQuery, AuditReport, DeviceQuery, DeviceReport, DiscardReport, DiscardRequest,
    LoggedOut, LoginRequest, LoginResponse, QueueReport, ReworkReport, ReworkRequest, StockReport,
    UserAdded,
};

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
    /// The admin password: from the environment only (never give it as a flag).
    #[arg(long = "password", env = super::admin::PASSWORD_ENV, hide_env_values = true, hide = true)]
    pub password: Option<Secret>,
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
    /// Discard the leftovers of a model: its stocked packs (their certificates
    /// revoked) and, for a model whose keys are born in the device, its planned
    /// ids not signed yet.
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
        /// The new administrator's password: from the environment only.
        #[arg(long = "new-password", env = super::admin::NEW_PASSWORD_ENV, hide_env_values = true, hide = true)]
        new_password: Option<Secret>,
    },
}

/// What an administrator can do, wherever the station is.
pub(crate) trait AdminApi {
    fn stock(&mut self) -> anyhow::Result<StockReport>;
    fn discard(&mut self, model: &str, day: Option<&str>) -> anyhow::Result<DiscardReport>;
    fn audit(&mut self, last: i64) -> anyhow::Result<AuditReport>;
    fn rework(&mut self, id: &str, reason: &str) -> anyhow::Result<ReworkReport>;
    /// The CA queue; with `retry`, every waiting item is made due first.
    fn queue(&mut self, retry: bool) -> anyhow::Result<QueueReport>;
    fn device(&mut self, id: &str) -> anyhow::Result<DeviceReport>;
    /// Adds an administrator (password already checked and hashed).
    fn add_user(&mut self, name: &str, phc: &str) -> anyhow::Result<()>;
    /// Ends the session, if there is one.
    fn close(self: Box<Self>);
}

/// On the station directory, logged in against its stock.
struct LocalAdmin {
    station: Station,
    actor: String,
}

/// Through a serving station's API, with a session token.
struct RemoteAdmin {
    client: ServiceClient,
    rt: tokio::runtime::Runtime,
}

fn refused(err: super::StationError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

impl AdminApi for LocalAdmin {
    fn stock(&mut self) -> anyhow::Result<StockReport> {
        self.station.stock_report()
    }

    fn discard(&mut self, model: &str, day: Option<&str>) -> anyhow::Result<DiscardReport> {
        self.station
            .discard(&self.actor, model, day)
            .map_err(refused)
    }

    fn audit(&mut self, last: i64) -> anyhow::Result<AuditReport> {
        self.station.audit_report(last)
    }

    fn rework(&mut self, id: &str, reason: &str) -> anyhow::Result<ReworkReport> {
        self.station
            .rework(&self.actor, id, reason)
            .map_err(refused)
    }

    fn queue(&mut self, retry: bool) -> anyhow::Result<QueueReport> {
        if retry {
            self.station.stock.queue_retry_by(&self.actor)?;
        }
        self.station.queue_report()
    }

    fn device(&mut self, id: &str) -> anyhow::Result<DeviceReport> {
        self.station.device_report(id).map_err(refused)
    }

    fn add_user(&mut self, name: &str, phc: &str) -> anyhow::Result<()> {
        self.station.add_user(&self.actor, name, phc)
    }

    fn close(self: Box<Self>) {}
}

impl AdminApi for RemoteAdmin {
    fn stock(&mut self) -> anyhow::Result<StockReport> {
        Ok(self.rt.block_on(self.client.get_json(api::ADMIN_STOCK))?)
    }

    fn discard(&mut self, model: &str, day: Option<&str>) -> anyhow::Result<DiscardReport> {
        let request = DiscardRequest {
            model: model.to_string(),
            day: day.map(str::to_string),
        };
        Ok(self
            .rt
            .block_on(self.client.post(api::ADMIN_DISCARD, &request))?)
    }

    fn audit(&mut self, last: i64) -> anyhow::Result<AuditReport> {
        Ok(self.rt.block_on(
            self.client
                .get_json_query(api::ADMIN_AUDIT, &AuditQuery { last }),
        )?)
    }

    fn rework(&mut self, id: &str, reason: &str) -> anyhow::Result<ReworkReport> {
        let request = ReworkRequest {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        Ok(self
            .rt
            .block_on(self.client.post(api::ADMIN_REWORK, &request))?)
    }

    fn queue(&mut self, retry: bool) -> anyhow::Result<QueueReport> {
        Ok(if retry {
            self.rt
                .block_on(self.client.post(api::ADMIN_RETRY, &serde_json::json!({})))?
        } else {
            self.rt.block_on(self.client.get_json(api::ADMIN_QUEUE))?
        })
    }

    fn device(&mut self, id: &str) -> anyhow::Result<DeviceReport> {
        let query = DeviceQuery { id: id.to_string() };
        Ok(self
            .rt
            .block_on(self.client.get_json_query(api::ADMIN_DEVICE, &query))?)
    }

    fn add_user(&mut self, _name: &str, _phc: &str) -> anyhow::Result<()> {
        anyhow::bail!("user-add works on the station directory only (--dir)")
    }

    fn close(self: Box<Self>) {
        let _ = self.rt.block_on(
            self.client
                .post::<_, LoggedOut>(api::ADMIN_LOGOUT, &serde_json::json!({})),
        );
    }
}

/// Logs in where the target says: the station directory or a serving station.
fn connect(target: &AdminTarget) -> anyhow::Result<Box<dyn AdminApi>> {
    let prompt = format!("password of {}: ", target.user);
    if let Some(dir) = &target.dir {
        let mut station = Station::open(dir, None)?.station;
        if let Some(day) = &target.today {
            station.set_today(Some(parse_day(day).map_err(anyhow::Error::msg)?));
        }
        let password = password_or_prompt(target.password.as_ref(), &prompt)?;
        let config = station.config.admin.clone();
        super::login::check_login(
            &mut station.stock,
            &config,
            &target.user,
            &password,
            "local",
        )
        .map_err(refused)?;
        return Ok(Box::new(LocalAdmin {
            station,
            actor: format!("admin:{}", target.user),
        }));
    }
    let (Some(url), Some(root_path)) = (target.url.as_deref(), target.root.as_deref()) else {
        anyhow::bail!("name the station: --dir DIR, or --url URL with --root FILE");
    };
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
    let password = password_or_prompt(target.password.as_ref(), &prompt)?;
    let rt = runtime()?;
    let login: LoginResponse = rt.block_on(client.post(
        api::ADMIN_LOGIN,
        &LoginRequest {
            user: target.user.clone(),
            password,
        },
    ))?;
    Ok(Box::new(RemoteAdmin {
        client: client.with_bearer(&login.token),
        rt,
    }))
}

/// Runs `work` logged in, then logs out (whatever `work` answered).
fn with_admin<T>(
    target: &AdminTarget,
    work: impl FnOnce(&mut dyn AdminApi) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut admin = connect(target)?;
    let result = work(admin.as_mut());
    admin.close();
    result
}

pub fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Stock(target) => {
            let report = with_admin(&target, |a| a.stock())?;
            emit(target.json, &report, || print_stock(&report))
        }
        AdminCommand::Discard { target, model, day } => {
            let report = with_admin(&target, |a| a.discard(&model, day.as_deref()))?;
            emit(target.json, &report, || {
                let unsigned = report
                    .discarded
                    .len()
                    .saturating_sub(report.revocations_queued);
                if report.revocations_queued > 0 || unsigned == 0 {
                    println!(
                        "discarded {} leftover pack(s) of model {}; {} revocation(s) queued for the CA",
                        report.revocations_queued, report.model, report.revocations_queued
                    );
                }
                if unsigned > 0 {
                    println!(
                        "discarded {unsigned} planned id(s) of model {} not signed yet: their CSRs will be refused",
                        report.model
                    );
                }
            })
        }
        AdminCommand::Audit { target, last } => {
            let report = with_admin(&target, |a| a.audit(last))?;
            emit(target.json, &report, || print_audit(&report))?;
            if !report.intact {
                anyhow::bail!("the audit log's hash chain is broken");
            }
            Ok(())
        }
        AdminCommand::Rework { target, id, reason } => {
            let report = with_admin(&target, |a| a.rework(&id, &reason))?;
            emit(target.json, &report, || {
                println!(
                    "rework of {} authorised: certificate {} will be revoked and a fresh pack fetched ({})",
                    report.id, report.revoked_serial, report.replacement
                );
            })
        }
        AdminCommand::Queue(target) => {
            let report = with_admin(&target, |a| a.queue(false))?;
            emit(target.json, &report, || print_queue(&report))
        }
        AdminCommand::Retry(target) => {
            let report = with_admin(&target, |a| a.queue(true))?;
            emit(target.json, &report, || print_queue(&report))
        }
        AdminCommand::Device { target, id } => {
            let report = with_admin(&target, |a| a.device(&id))?;
            emit(target.json, &report, || print_device(&report))
        }
        AdminCommand::UserAdd {
            target,
            new_user,
            new_password,
        } => {
            if target.dir.is_none() {
                anyhow::bail!("user-add works on the station directory only (--dir)");
            }
            with_admin(&target, |a| {
                let password = password_or_prompt(
                    new_password.as_ref(),
                    &format!("password for the new administrator {new_user}: "),
                )?;
                super::login::check_new_user(&new_user, &password)?;
                let phc = super::login::hash_password(&password)?;
                a.add_user(&new_user, &phc)
            })?;
            let report = UserAdded { added: new_user };
            emit(target.json, &report, || {
                println!("administrator {} added", report.added)
            })
        }
    }
}

fn print_audit(report: &AuditReport) {
    match &report.problem {
        None => println!("audit log intact: {} entries", report.entries),
        Some(p) => println!("AUDIT LOG BROKEN: {p}"),
    }
    for e in &report.last {
        let mut detail = e.detail.to_string();
        if detail.len() > 140 {
            let mut cut = 137;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push_str("...");
        }
        println!(
            "{:>6}  {}  {:<18} {:<12} {detail}",
            e.seq, e.at, e.actor, e.action
        );
    }
}

fn print_queue(report: &QueueReport) {
    if report.items.is_empty() {
        println!("nothing waits for the CA");
    }
    for q in &report.items {
        println!(
            "{:>5}  {:<8} {:<24} {}  {:<22} since {}  tries {}{}",
            q.seq,
            q.kind.as_str(),
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
}

fn print_device(report: &DeviceReport) {
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
            p.state.as_str(),
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
}

fn print_stock(report: &StockReport) {
    println!("stock on {} (today)", report.day);
    println!(
        "  {:<8} {:>6} {:>8} {:>8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>11} {:>9}",
        "model",
        "keys",
        "planned",
        "in stock",
        "handed out",
        "signed today",
        "used today",
        "failed today",
        "replaced",
        "quarantined",
        "discarded"
    );
    for m in &report.models {
        println!(
            "  {:<8} {:>6} {:>8} {:>8} {:>10} {:>12} {:>10} {:>12} {:>9} {:>11} {:>9}",
            m.model,
            // Where the keys are born: packs from the CA, or CSRs from the devices.
            match (m.certificate, m.keygen) {
                (false, _) => "none",
                (true, crate::pki::profile::Keygen::Ca) => "ca",
                (true, crate::pki::profile::Keygen::Device) => "device",
            },
            m.planned_today,
            m.in_stock,
            m.handed_out,
            m.signed_today,
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
