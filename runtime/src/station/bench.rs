//! `certline station bench`: a day's fetch end to end against a real CA
//! process on loopback (encryption and durable commits included), beside the
//! CA's own rate for the same batches; then take + result round trips from
//! concurrent line clients over kept-alive mTLS connections, each state change
//! durably committed. Reports figures; asserts nothing about time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::config::day_text;
use super::fetch::{CaLink, Shared};
use super::serve::{router, ServeState};
use super::Station;
use crate::pki::credential::Credential;
use crate::service::client::ServiceClient;
use crate::service::tls::{server_config, ClientAuth};
use crate::wire::ca::{self as ca_api, BatchItem, BatchRequest, PackBatch};
use crate::wire::station::{
    self as api, ReportResponse, TakeRequest, TakeResponse, WrittenRequest,
};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Packs in the day's fetch (and take + written round trips afterwards).
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Concurrent line clients.
    #[arg(long, default_value_t = 8)]
    pub lines: usize,
    /// Ids per batch request.
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    /// Retention for the round trips: flag (keep) or delete (wipe + WAL checkpoint).
    #[arg(long, value_parser = ["flag", "delete"], default_value = "flag")]
    pub retention: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Figures {
    count: usize,
    chunk: usize,
    lines: usize,
    retention: String,
    ca_packs_per_second: f64,
    fetch_packs_per_second: f64,
    fetch_of_ca: f64,
    round_trips: usize,
    round_trips_per_second: f64,
    commits_per_round_trip: usize,
}

struct CaProcess {
    child: Child,
    url: String,
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn certline(passphrase: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(crate::pki::seal::PASSPHRASE_ENV, passphrase)
        .env_remove("CERTLINE_LOG");
    Ok(cmd)
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn start_ca(dir: &Path, passphrase: &str, max_batch: usize) -> anyhow::Result<CaProcess> {
    let ca = dir.join("ca");
    run_ok(
        certline(passphrase)?
            .args(["ca", "init", "--max-batch"])
            .arg(max_batch.to_string())
            .arg("--dir")
            .arg(&ca),
    )?;
    let mut child = certline(passphrase)?
        .args(["ca", "serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    break rest.trim().to_string();
                }
            }
            _ => anyhow::bail!("the CA exited before printing its URL"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(CaProcess { child, url })
}

fn enroll(
    dir: &Path,
    passphrase: &str,
    role: &str,
    name: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let out = dir.join(format!("{role}-{name}.pem"));
    run_ok(
        certline(passphrase)?
            .args(["ca", "enroll", "--role", role, "--name", name, "--dir"])
            .arg(dir.join("ca"))
            .arg("--out")
            .arg(&out),
    )?;
    Ok(out)
}

fn random_secret() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("random");
    hex::encode(bytes)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let count = args.count.max(1);
    let chunk = args.chunk.clamp(1, 10_000);
    let lines = args.lines.max(1);
    let tmp = tempfile::tempdir()?;
    let passphrase = random_secret();
    let say = |text: &str| {
        if !args.json {
            eprintln!("{text}");
        }
    };
    say("starting a CA on loopback...");
    let ca = start_ca(tmp.path(), &passphrase, chunk.max(count))?;
    let station_cred_path = enroll(tmp.path(), &passphrase, "station", "bench-station")?;
    let mut line_creds = Vec::new();
    for n in 0..lines {
        line_creds.push(Credential::load(&enroll(
            tmp.path(),
            &passphrase,
            "line",
            &format!("bench-line-{n}"),
        )?)?);
    }
    let station_cred = Credential::load(&station_cred_path)?;
    let rt = crate::cli::runtime()?;

    // The CA's own rate for the same batches (ids the station will not use).
    say(&format!("CA alone: {count} packs in batches of {chunk}..."));
    let ca_client = ServiceClient::new(
        &ca.url,
        &station_cred,
        crate::pki::role::Role::Ca,
        Duration::from_secs(600),
    )?;
    let start = Instant::now();
    rt.block_on(async {
        let ids: Vec<String> = (0..count).map(|n| format!("CABENCH-{n:08}")).collect();
        for part in ids.chunks(chunk) {
            let request = BatchRequest {
                items: part
                    .iter()
                    .map(|id| BatchItem {
                        id: id.clone(),
                        replaces: None,
                    })
                    .collect(),
                profiles: Default::default(),
            };
            let batch: PackBatch = ca_client.post(ca_api::PACKS, &request).await?;
            anyhow::ensure!(batch.packs.len() == part.len(), "short batch");
        }
        anyhow::Ok(())
    })?;
    let ca_rate = count as f64 / start.elapsed().as_secs_f64();

    // The station: init, a plan for today, the fetch.
    let dir = tmp.path().join("station");
    let admin_password = random_secret();
    super::dir::init(
        &dir,
        &super::dir::InitOptions {
            ca_url: ca.url.clone(),
            credential: station_cred_path.clone(),
            admin_user: "admin".into(),
            models: vec!["BENCH".into()],
            models_without_certificate: vec![],
            retention: if args.retention == "delete" {
                super::config::RetentionAction::Delete
            } else {
                super::config::RetentionAction::Flag
            },
            chunk_size: Some(chunk),
            handout_timeout_secs: None,
        },
        &passphrase,
        &admin_password,
    )?;
    let opened = Station::open(&dir, Some(&passphrase))?;
    let mut station = opened.station;
    let today = station.today();
    let plan = tmp.path().join("plan.csv");
    std::fs::write(
        &plan,
        format!(
            "date,model,first_serial,count\n{},BENCH,00000001,{count}\n",
            day_text(today)
        ),
    )?;
    let config = station.config.clone();
    super::plan::import(&plan, &config, &mut station.stock, "bench")?;
    let shared: Shared = Arc::new(Mutex::new(station));
    let link = CaLink::new(&ca.url, &station_cred)?;
    say(&format!("station fetch: {count} packs..."));
    let start = Instant::now();
    let report = rt.block_on(super::fetch::fetch(
        &shared,
        &link,
        &[today],
        &mut |_, _| {},
    ))?;
    let fetch_rate = report.fetched as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.fetched == count,
        "fetched {} of {count}",
        report.fetched
    );

    // Round trips: take + written, `lines` clients in parallel.
    say(&format!(
        "{lines} line clients: take + written for {count} ids..."
    ));
    let tls = server_config(&station_cred, ClientAuth::Optional)?;
    let state = rt.block_on(ServeState::open(shared.clone(), &dir, &station_cred, &link))?;
    let next = Arc::new(AtomicUsize::new(0));
    let elapsed = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let server = tokio::spawn(crate::service::server::serve(
            listener,
            tls,
            router(state),
            std::future::pending(),
        ));
        let clients: Vec<ServiceClient> = line_creds
            .iter()
            .map(|c| {
                ServiceClient::new(
                    &url,
                    c,
                    crate::pki::role::Role::Station,
                    Duration::from_secs(60),
                )
            })
            .collect::<anyhow::Result<_>>()?;
        // Warm the connections (one handshake each) before the clock starts.
        for client in &clients {
            let _: serde_json::Value = client.get_json(api::HEALTH).await?;
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for client in clients {
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return anyhow::Ok(());
                    }
                    let id = format!("BENCH-{:08}", n + 1);
                    let pack: TakeResponse = client
                        .post(api::TAKE, &TakeRequest { id: id.clone() })
                        .await?;
                    let _: ReportResponse = client
                        .post(
                            api::WRITTEN,
                            &WrittenRequest {
                                id,
                                serial: pack.serial.clone(),
                                fingerprint: pack.fingerprint.clone(),
                            },
                        )
                        .await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = start.elapsed();
        server.abort();
        anyhow::Ok(elapsed)
    })?;
    let round_trip_rate = count as f64 / elapsed.as_secs_f64();
    let figures = Figures {
        count,
        chunk,
        lines,
        retention: args.retention.clone(),
        ca_packs_per_second: ca_rate,
        fetch_packs_per_second: fetch_rate,
        fetch_of_ca: fetch_rate / ca_rate,
        round_trips: count,
        round_trips_per_second: round_trip_rate,
        commits_per_round_trip: 2,
    };
    crate::cli::emit(args.json, &figures, || {
        println!("station bench, {count} packs, batches of {chunk}, P-256, CA on loopback");
        println!(
            "  CA alone (batch requests over mTLS)   {:>9.0} packs/s",
            figures.ca_packs_per_second
        );
        println!(
            "  station fetch (lookup + batch + check + seal + commit)  {:>9.0} packs/s  ({:.0}% of the CA's rate; goal 50%)",
            figures.fetch_packs_per_second,
            figures.fetch_of_ca * 100.0
        );
        println!(
            "  take + written, {lines} line clients ({} retention, 2 durable commits each)  {:>9.0} round trips/s  (goal 2000)",
            figures.retention, figures.round_trips_per_second
        );
    })
}
