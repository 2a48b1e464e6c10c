//! `certline center`

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::crl::{refresh, refresh_loop, CrlIssuers, CrlSource, CrlState};
use super::decide::Policy;
use super::serve::{router, CenterState, ContractBook};
use crate::pki::credential::Credential;
use crate::pki::role::Role;
use crate::service::client::ServiceClient;
use crate::service::server::{bind, serve, shutdown_signal};
use crate::service::tls::{server_config, ClientAuth};

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("crl_source").required(true).args(["ca", "crl_file", "crl_from_cdp"]))]
pub struct CenterArgs {
    /// The center's folder: its credential (credential.pem) and event log (events.jsonl).
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to listen on (port 0 picks one; the URL is printed).
    #[arg(long)]
    pub listen: String,
    /// The contract list (CSV: devices,contract,from,to); reloaded when it changes.
    #[arg(long)]
    pub contracts: PathBuf,
    /// The center's credential [default: DIR/credential.pem] (`certline ca enroll --role center`).
    #[arg(long)]
    pub credential: Option<PathBuf>,
    /// Fetch the CRLs from this CA (e.g. https://127.0.0.1:8443).
    #[arg(long)]
    pub ca: Option<String>,
    /// Read the CRLs from this PEM file instead (as `certline ca crl --out` writes it).
    #[arg(long)]
    pub crl_file: Option<PathBuf>,
    /// Fetch the CRLs from the CRL Distribution Points in the center's own
    /// credential and its issuing CA's certificate (plain HTTP, signed data).
    #[arg(long)]
    pub crl_from_cdp: bool,
    /// Seconds between CRL refreshes.
    #[arg(long, default_value_t = 60)]
    pub crl_refresh: u64,
    /// Keep answering from a CRL past its nextUpdate (fail open). By default
    /// the center answers "unverifiable" until it has a fresh CRL.
    #[arg(long)]
    pub allow_stale_crl: bool,
}

pub fn run(args: CenterArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let cred_path = args
        .credential
        .clone()
        .unwrap_or_else(|| args.dir.join("credential.pem"));
    let cred = Credential::load(&cred_path)?;
    if cred.role() != Role::Center {
        anyhow::bail!("{} is a {} credential; the center needs a center credential (`certline ca enroll --role center`)", cred_path.display(), cred.role());
    }
    // A broken contract list at start is an error: there is no previous one to keep.
    let mut book = ContractBook::default();
    book.reload(&args.contracts);
    if let Some(error) = book.error.take() {
        anyhow::bail!("{error}");
    }
    let contracts = Arc::new(RwLock::new(book));
    let contracts_path = std::fs::canonicalize(&args.contracts)?;
    let folder = contracts_path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let watched = contracts_path.clone();
    let book_for_watch = contracts.clone();
    let _watch = crate::watch::watch_folder(
        &folder,
        "contract list",
        Duration::from_millis(300),
        move |p| p.file_name() == watched.file_name(),
        move || {
            book_for_watch
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .reload(&contracts_path)
        },
    )?;

    let source = match (&args.ca, &args.crl_file) {
        _ if args.crl_from_cdp => CrlSource::from_cdp(&cred)?,
        (Some(url), _) => CrlSource::Ca(ServiceClient::anonymous(
            url,
            &cred.root,
            Role::Ca,
            Duration::from_secs(30),
        )?),
        (None, Some(file)) => CrlSource::File(file.clone()),
        (None, None) => unreachable!("clap requires one"),
    };
    let crl = Arc::new(RwLock::new(CrlState::default()));
    // CRLs are verified with the CA certificates of the center's own credential.
    let issuers = CrlIssuers {
        root: cred.root.to_vec(),
        issuing: cred
            .chain
            .get(1)
            .with_context(|| format!("{} holds no issuing CA certificate", cred_path.display()))?
            .to_vec(),
    };
    let state = Arc::new(CenterState {
        root: cred.root.to_vec(),
        crl: crl.clone(),
        contracts,
        policy: Policy {
            allow_stale_crl: args.allow_stale_crl,
        },
        events: CenterState::open_events(&args.dir.join("events.jsonl"))?,
    });
    let tls = server_config(&cred, ClientAuth::Optional)?;
    crate::command::runtime()?.block_on(async move {
        // The first CRL before the first answer, so a fresh center does not fail closed needlessly.
        refresh(&source, &issuers, &crl).await;
        tokio::spawn(refresh_loop(
            source,
            issuers,
            crl,
            Duration::from_secs(args.crl_refresh.max(1)),
        ));
        let listener = bind(&args.listen, "center").await?;
        serve(listener, tls, router(state), shutdown_signal()).await
    })
}
