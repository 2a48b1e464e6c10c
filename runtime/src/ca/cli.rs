//! `certline ca …`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::config::{LedgerConfig, DEFAULT_PEN};
use super::dir::{self, InitOptions};
use super::issuance::{Clock, Requester};
use super::serve::{public_router, revoke_target, router, CaState};
use crate::command::StateDir;
use crate::command::{emit, runtime};
use crate::pki::credential::Credential;
use crate::pki::crl::Reason;
use crate::pki::role::Role;
use crate::pki::to_pem;
use crate::service::client::ServiceClient;
use crate::service::server::{bind, serve, shutdown_signal};
use crate::service::tls::{server_config, ClientAuth};
use crate::wire::ca::{BatchRequest, Enrolled};

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a root and an issuing CA and an empty ledger in a new directory.
    Init(InitArgs),
    /// Serve the CA's HTTPS API (mutual TLS) until stopped.
    Serve(ServeArgs),
    /// Issue a service credential (station, line, center, device link) as one PEM file.
    Enroll(EnrollArgs),
    /// Issue packs locally, without a server, into pack folders (root.pem, chain.pem, key.pem).
    Issue(IssueArgs),
    /// Ask a running CA for the packs of a list of ids and write them as pack folders.
    Request(RequestArgs),
    /// Revoke a certificate by serial or by device id; publishes a new CRL.
    Revoke(RevokeArgs),
    /// Write the current CRLs (issuing CA's, then root's) as PEM.
    Crl(CrlArgs),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Ledger counts, or the certificate history of one id.
    Status(StatusArgs),
    /// One certificate from the ledger: PEM, or with `--json` its record and state history.
    Show(ShowArgs),
    /// Every certificate issued or revoked since a date, for auditors (CSV or JSON lines).
    Export(ExportArgs),
    /// Measure issuance: raw crypto rate, pack rate in process, pack rate over mTLS.
    Bench(super::bench::BenchArgs),
    /// Copy this CA's SQLite ledger into an empty PostgreSQL database and
    /// point ca.toml at it (stop the CA first; the audit chain is verified
    /// before and after).
    MigrateLedger(MigrateLedgerArgs),
}

/// A CA directory and where its secrets come from: the passphrase (as for
/// every state folder) and, when its keys are in a PKCS#11 token, the PIN
/// (`--pin-file` or `CERTLINE_PKCS11_PIN`, never the command line).
#[derive(Args, Debug, Clone)]
pub struct CaDir {
    #[command(flatten)]
    pub state: StateDir,
    /// File holding the PKCS#11 token's user PIN (else CERTLINE_PKCS11_PIN);
    /// used only when the CA's keys are in a token.
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
}

impl std::ops::Deref for CaDir {
    type Target = StateDir;

    fn deref(&self) -> &StateDir {
        &self.state
    }
}

/// Opens the CA a command names.
pub fn open(dir: &CaDir) -> anyhow::Result<dir::OpenCa> {
    // Say "not a CA" before asking for a passphrase it would not need.
    dir::read_config(&dir.dir, &Clock::system())?;
    let passphrase = dir.passphrase()?;
    dir::open(
        &dir.dir,
        &passphrase,
        dir.pin_file.as_deref(),
        Clock::system(),
    )
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// Organisation (the vendor) named in every certificate.
    #[arg(long, default_value = "certline Example Vendor")]
    pub org: String,
    /// The vendor's IANA private enterprise number, used in device URIs.
    #[arg(long, default_value_t = DEFAULT_PEN)]
    pub pen: u32,
    /// Extra host names or IP addresses the CA server is reached at (localhost is always in).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Most ids one batch request may ask for.
    #[arg(long, default_value_t = 10_000)]
    pub max_batch: usize,
    /// Generate the root and issuing keys inside a PKCS#11 token, through
    /// this module (e.g. /usr/lib/softhsm/libsofthsm2.so); needs --token.
    #[arg(long, requires = "token")]
    pub pkcs11_module: Option<PathBuf>,
    /// The label of the PKCS#11 token to generate the keys in.
    #[arg(long, requires = "pkcs11_module")]
    pub token: Option<String>,
    /// Public URL of the issuing CA's CRL (http or https), put into every
    /// certificate as its CRL Distribution Point (ca.toml's `crl_url`).
    #[arg(long)]
    pub crl_url: Option<String>,
    /// Public URL of the issuing CA's certificate, put into every certificate
    /// as its Authority Information Access caIssuers (ca.toml's `ca_issuers_url`).
    #[arg(long)]
    pub ca_issuers_url: Option<String>,
    /// Keep the ledger in this PostgreSQL database (postgres://user@host:port/db,
    /// no password in it) instead of DIR/ledger.db: for several CA processes.
    #[arg(long, value_name = "URL")]
    pub ledger: Option<String>,
    /// File holding the ledger database's password (else CERTLINE_LEDGER_PASSWORD).
    #[arg(long, requires = "ledger", value_name = "FILE")]
    pub ledger_password_file: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MigrateLedgerArgs {
    /// The CA directory (its CA stopped).
    #[arg(long)]
    pub dir: PathBuf,
    /// The PostgreSQL database to copy the ledger into (empty, or new).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// File holding the database's password (else CERTLINE_LEDGER_PASSWORD);
    /// recorded in ca.toml.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long)]
    pub listen: Option<String>,
    /// Signing threads per batch (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also serve the CRLs and CA certificates, and only those, over plain
    /// HTTP on this address, at the paths of ca.toml's crl_url and ca_issuers_url.
    #[arg(long)]
    pub public_listen: Option<String>,
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub dir: CaDir,
    #[arg(long, value_enum)]
    pub role: Role,
    /// The service's name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub name: String,
    /// Where to write the credential (PEM: chain, root, key; mode 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Host names or IP addresses a server of this role is reached at (default: localhost, 127.0.0.1, ::1).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// File with one device id a line.
    #[arg(long)]
    pub ids: PathBuf,
    /// Folder to write one pack folder per id into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// The CA's URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    pub url: String,
    /// A station credential (from `certline ca enroll --role station`).
    #[arg(long)]
    pub credential: PathBuf,
    /// File with one device id a line.
    #[arg(long)]
    pub ids: PathBuf,
    /// Folder to write one pack folder per id into.
    #[arg(long)]
    pub out: PathBuf,
    /// Ids per request (each request is all-or-nothing).
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// Certificate serial number (hex).
    #[arg(long, conflicts_with = "id", required_unless_present = "id")]
    pub serial: Option<String>,
    /// Device id whose valid certificate to revoke.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, value_enum, default_value_t = Reason::Unspecified)]
    pub reason: Reason,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CrlArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// Write here instead of stdout: the base CRL (the issuing CA's at
    /// `crl_url`), the root's, then each partition's (by issuance month).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Publish fresh CRLs whose nextUpdate is this many seconds away (default:
    /// the current CRLs, re-published once half their validity is gone).
    #[arg(long, value_name = "SECONDS")]
    pub valid_for: Option<u32>,
    /// Publish fresh CRLs now, whatever the publisher's delay (a CA serving
    /// this directory serves them from its next CRL request on).
    #[arg(long, conflicts_with = "valid_for")]
    pub now: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the whole hash chain; exits non-zero naming the first broken entry.
    Verify(AuditArgs),
    /// Show the newest entries.
    Show(AuditShowArgs),
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AuditShowArgs {
    #[command(flatten)]
    pub audit: AuditArgs,
    /// How many entries.
    #[arg(long, default_value_t = 20)]
    pub last: i64,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Show the certificate history of this device id (or role:name).
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The device id (or role:name) whose certificate to show: its valid one, else its newest.
    #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
    pub id: Option<String>,
    /// The certificate's serial (hex).
    #[arg(long)]
    pub serial: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// List certificates issued or revoked at or after this date (YYYY-MM-DD, UTC) or instant (RFC 3339).
    #[arg(long)]
    pub since: String,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init(args) => init(args),
        CaCommand::Serve(args) => serve_ca(args),
        CaCommand::Enroll(args) => enroll(args),
        CaCommand::Issue(args) => issue(args),
        CaCommand::Request(args) => request(args),
        CaCommand::Revoke(args) => revoke(args),
        CaCommand::Crl(args) => crl(args),
        CaCommand::Audit(cmd) => audit(cmd),
        CaCommand::Status(args) => status(args),
        CaCommand::Show(args) => show(args),
        CaCommand::Export(args) => export(args),
        CaCommand::Bench(args) => super::bench::run(args),
        CaCommand::MigrateLedger(args) => migrate_ledger(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let passphrase = args.dir.passphrase()?;
    let keys = match (&args.pkcs11_module, &args.token) {
        (Some(module), Some(token)) => dir::NewKeys::Pkcs11 {
            module: module.clone(),
            token: token.clone(),
            pin: crate::pki::keystore::pkcs11::read_pin(args.dir.pin_file.as_deref())?,
        },
        _ => dir::NewKeys::Sealed,
    };
    let in_token = args.token.clone();
    let report = dir::init(
        &args.dir.dir,
        &InitOptions {
            organization: args.org,
            pen: args.pen,
            hosts: args.hosts,
            max_batch: args.max_batch,
            ledger: args
                .ledger
                .as_deref()
                .map(|url| LedgerConfig::new(url, args.ledger_password_file.clone())),
            crl_url: args.crl_url,
            ca_issuers_url: args.ca_issuers_url,
            keys,
        },
        &passphrase,
        Clock::system(),
    )?;
    emit(args.json, &report, || {
        println!("CA initialised in {}", report.dir.display());
        println!("  organisation      {}", report.organization);
        println!("  enterprise number {}", report.pen);
        println!("  root CA           sha256 {}", report.root_fingerprint);
        println!("  issuing CA        sha256 {}", report.issuing_fingerprint);
        println!();
        if let Some(token) = &in_token {
            println!(
                "The root and issuing keys were generated inside PKCS#11 token {token:?} (labels {} and {});",
                dir::ROOT_KEY_LABEL,
                dir::ISSUING_KEY_LABEL
            );
            println!("they never leave it. Every start needs the token and its PIN.");
        }
        println!(
            "The {} sealed in {} under a key derived",
            if in_token.is_some() {
                "CA server's TLS key is"
            } else {
                "root, issuing and TLS keys are"
            },
            report.dir.join(dir::KEYS_FILE).display()
        );
        println!(
            "(Argon2id) from the passphrase you gave via {}.",
            if args.dir.passphrase_file.is_some() {
                "--passphrase-file"
            } else {
                "CERTLINE_PASSPHRASE"
            }
        );
        println!("That passphrase is stored nowhere. Keep it safe: without it this CA can never");
        println!(
            "sign again (no new packs, no revocations, no CRLs); devices already written keep"
        );
        println!("working, but every future device would need a new CA and a new trust anchor.");
        println!();
        println!(
            "Next: certline ca serve --dir {} (listens on {})",
            report.dir.display(),
            report.listen
        );
    })
}

fn serve_ca(args: ServeArgs) -> anyhow::Result<()> {
    let opened = open(&args.dir)?;
    let listen = args
        .listen
        .unwrap_or_else(|| opened.ca.config().listen.clone());
    let tls = server_config(&opened.tls, ClientAuth::Optional)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // On a shared ledger, a crashed peer's reservations are revoked once its lease ran out.
    let sweep = opened
        .ca
        .config()
        .ledger
        .as_ref()
        .map(|l| Duration::from_secs(u64::from(l.lease_seconds.max(3) / 2)));
    let state = CaState::new(opened.ca, threads)?;
    let public = match &args.public_listen {
        Some(addr) => Some((addr.clone(), public_router(state.clone())?)),
        None => None,
    };
    runtime()?.block_on(async move {
        if let Some(every) = sweep {
            tokio::spawn(state.clone().sweep_orphans(every));
        }
        if let Some((addr, router)) = public {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| anyhow::anyhow!("--public-listen: cannot listen on {addr}: {e}"))?;
            println!(
                "CA public listener (CRLs and CA certificates only) on http://{}",
                listener.local_addr()?
            );
            // The same accept loop as the HTTPS listeners (header timeout,
            // connection cap, paced accept retries), without TLS.
            tokio::spawn(async move {
                let stop = std::future::pending();
                if let Err(e) = crate::service::server::serve_plain(listener, router, stop).await {
                    tracing::error!("the public listener stopped: {e}");
                }
            });
        }
        let listener = bind(&listen, "CA").await?;
        serve(listener, tls, router(state), shutdown_signal()).await
    })
}

fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        anyhow::bail!(
            "{} already exists; refusing to overwrite a credential",
            args.out.display()
        );
    }
    let mut opened = open(&args.dir)?;
    let hosts = if args.hosts.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        args.hosts
    };
    let cred = opened.ca.enroll(
        args.role,
        &args.name,
        &hosts,
        &Requester::operator("ca enroll"),
    )?;
    cred.save(&args.out)?;
    let serial = x509_parser::parse_x509_certificate(cred.leaf())
        .map(|(_, c)| hex::encode(c.raw_serial()))
        .unwrap_or_default();
    let report = Enrolled {
        role: args.role.name().to_string(),
        name: args.name.clone(),
        serial: serial.clone(),
        out: args.out.clone(),
    };
    emit(args.json, &report, || {
        println!(
            "{} credential {} (serial {serial}) written to {}",
            args.role,
            args.name,
            args.out.display()
        );
    })
}

fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let ids = super::request::read_ids(&args.ids)?;
    super::request::check_out_dir(&ids, &args.out)?;
    let mut opened = open(&args.dir)?;
    let request = BatchRequest::for_ids(&ids);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let batch = opened
        .ca
        .issue_batch(&request, &Requester::operator("ca issue"), threads);
    // Whatever a failed batch abandoned is listed now, not at the next start.
    opened.ca.publish_if_behind()?;
    let batch = batch?;
    let written = super::request::write_batch(&batch, &args.out)?;
    emit(args.json, &written, || {
        for pack in &written {
            println!(
                "{}  serial {}  {}",
                pack.id,
                pack.serial,
                pack.dir.display()
            );
        }
        println!(
            "{} pack(s) written to {}",
            written.len(),
            args.out.display()
        );
    })
}

fn request(args: RequestArgs) -> anyhow::Result<()> {
    let ids = super::request::read_ids(&args.ids)?;
    let cred = Credential::load(&args.credential)?;
    let client = ServiceClient::new(&args.url, &cred, Role::Ca, Duration::from_secs(600))?;
    let json = args.json;
    let written = runtime()?.block_on(super::request::request_packs(
        &client,
        &ids,
        &args.out,
        args.chunk,
        |done, total| {
            if !json {
                eprintln!("  {done}/{total} packs received");
            }
        },
    ))?;
    emit(json, &written, || {
        println!(
            "{} pack(s) written to {}",
            written.len(),
            args.out.display()
        );
    })
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let target =
        revoke_target(args.serial.as_deref(), args.id.as_deref()).map_err(anyhow::Error::msg)?;
    let mut opened = open(&args.dir)?;
    let revoked = opened
        .ca
        .revoke(&target, args.reason, &Requester::operator("ca revoke"))?;
    // No publisher runs in this process: publish now (a CA serving the same
    // directory serves the stored CRL at its next read).
    opened.ca.publish_if_behind()?;
    emit(args.json, &revoked, || {
        println!(
            "revoked {} ({}) at {}: {}",
            revoked.serial, revoked.subject, revoked.revoked_at, revoked.reason
        );
    })
}

fn crl(args: CrlArgs) -> anyhow::Result<()> {
    let mut opened = open(&args.dir)?;
    let mut pem = String::new();
    if args.now {
        opened.ca.publish_crls()?;
    }
    if let Some(seconds) = args.valid_for {
        anyhow::ensure!(seconds > 0, "--valid-for must be at least 1 second");
        opened
            .ca
            .publish_crls_valid_for(time::Duration::seconds(i64::from(seconds)))?;
    }
    // The base CRL, the root's, then each partition (`publish.rs`).
    for scope in opened.ca.crl_scopes()? {
        let der = match args.valid_for {
            // Exactly the CRLs just published, not a re-publication of them.
            Some(_) => {
                opened
                    .ca
                    .ledger()
                    .current_crl(&scope)?
                    .context("no CRL was published")?
                    .1
            }
            None => opened.ca.crl(&scope)?,
        };
        pem.push_str(&to_pem("X509 CRL", &der));
    }
    match args.out {
        Some(path) => {
            std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            print!("{pem}");
            Ok(())
        }
    }
}

fn migrate_ledger(args: MigrateLedgerArgs) -> anyhow::Result<()> {
    let report = super::migrate::to_postgres(&args.dir, &args.to, args.password_file)?;
    emit(args.json, &report, || {
        println!(
            "ledger copied to {}: {} certificates, {} audit entries (chain verified before and after, head {})",
            report.to, report.certificates, report.audit_entries, report.head
        );
        println!(
            "{} now names it under [ledger]; the old {} stays as it was, unused.",
            args.dir.join(dir::CONFIG_FILE).display(),
            args.dir.join(dir::LEDGER_FILE).display()
        );
    })
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(args) => {
            let ledger = dir::open_ledger(&args.dir)?;
            let verified = ledger.verify()?;
            emit(args.json, &verified, || {
                println!(
                    "audit log intact: {} entries, head {}",
                    verified.entries, verified.head
                );
            })
        }
        AuditCommand::Show(args) => {
            let ledger = dir::open_ledger(&args.audit.dir)?;
            let entries = ledger.audit_tail(args.last)?;
            emit(args.audit.json, &entries, || {
                for e in &entries {
                    let mut detail = e.detail.to_string();
                    if detail.len() > 160 {
                        detail.truncate(157);
                        detail.push_str("...");
                    }
                    println!(
                        "{:>6}  {}  {:<14} {:<10} {detail}",
                        e.seq, e.at, e.actor, e.action
                    );
                }
            })
        }
    }
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let ledger = dir::open_ledger(&args.dir)?;
    match args.id {
        Some(id) => {
            let history = ledger.history(&id)?;
            if history.is_empty() {
                anyhow::bail!("the ledger has no certificate for {id}");
            }
            emit(args.json, &history, || {
                for r in &history {
                    println!(
                        "{}  {:<8} requested {} by {}{}",
                        r.serial,
                        r.status.as_str(),
                        r.requested_at,
                        r.requester,
                        r.reason
                            .as_ref()
                            .map(|x| format!(", revoked: {x}"))
                            .unwrap_or_default()
                    );
                }
            })
        }
        None => {
            let counts = ledger.counts()?;
            emit(args.json, &counts, || {
                for c in &counts {
                    println!(
                        "{:<8} {:<9} {}",
                        c.kind.as_str(),
                        c.status.as_str(),
                        c.count
                    );
                }
            })
        }
    }
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    let ledger = dir::open_ledger(&args.dir)?;
    let record = match (&args.id, &args.serial) {
        (Some(id), _) => ledger
            .latest(id)?
            .with_context(|| format!("the ledger has no certificate for {id}"))?,
        (None, Some(serial)) => {
            let serial = crate::pki::serial::Serial::from_hex(serial)
                .map_err(|e| anyhow::anyhow!("--serial: {e}"))?
                .to_hex();
            ledger
                .by_serial(&serial)?
                .with_context(|| format!("the ledger has no certificate with serial {serial}"))?
        }
        (None, None) => anyhow::bail!("name --id or --serial"),
    };
    let der = ledger.der(&record.serial)?;
    let note = match (&der, &record.issued_at) {
        (Some(_), _) => None,
        (None, Some(_)) => Some(crate::store::ledger::NO_DER_NOTE.to_string()),
        (None, None) => Some("never issued: its reservation was abandoned before signing".into()),
    };
    let shown = crate::wire::ca::CertShow {
        history: crate::store::ledger::states(&record),
        pem: der.as_deref().map(|der| to_pem("CERTIFICATE", der)),
        note,
        record,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    match (&shown.pem, &shown.note) {
        (Some(pem), _) => {
            print!("{pem}");
            Ok(())
        }
        (None, note) => anyhow::bail!(
            "certificate {} of {}: no DER in the ledger: {}",
            shown.record.serial,
            shown.record.subject,
            note.as_deref().unwrap_or_default()
        ),
    }
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 instant.
fn parse_since(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at.to_offset(time::UtcOffset::UTC));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|day| day.midnight().assume_utc())
        .map_err(|_| {
            anyhow::anyhow!(
                "--since {text:?} is not a date (YYYY-MM-DD) or an RFC 3339 instant (2026-01-31T12:00:00Z)"
            )
        })
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let since = parse_since(&args.since)?;
    let ledger = dir::open_ledger(&args.dir)?;
    let rows: Vec<crate::wire::ca::ExportRow> = ledger
        .changed_since(since)?
        .into_iter()
        .map(Into::into)
        .collect();
    let mut out: Vec<u8> = Vec::new();
    match args.format {
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(&mut out);
            if rows.is_empty() {
                // The header alone still says what the columns would be.
                writer.write_record([
                    "id",
                    "kind",
                    "serial",
                    "fingerprint",
                    "status",
                    "requested_at",
                    "issued_at",
                    "revoked_at",
                    "requester",
                    "reason",
                    "revoked_by",
                ])?;
            }
            for row in &rows {
                writer.serialize(row)?;
            }
            writer.flush()?;
        }
        ExportFormat::Jsonl => {
            for row in &rows {
                serde_json::to_writer(&mut out, row)?;
                out.push(b'\n');
            }
        }
    }
    for note in ledger.notes()? {
        eprintln!("note: {note}");
    }
    match args.out {
        Some(path) => {
            std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
    }
}
