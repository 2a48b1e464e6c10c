//! `certline station bench`: a day's fetch end to end against a real CA
//! process on loopback (encryption and durable commits included), beside the
//! CA's own rate for the same batches; then take + result round trips from
//! concurrent line clients over kept-alive mTLS connections, each state change
//! durably committed. Reports figures; asserts nothing about time.
//!
//! With `--chaos`, the load run instead: CA and station as child processes,
//! `--lines` line clients taking and reporting `--devices` devices while the
//! CA is paused (SIGSTOP) for `--ca-pause-secs` and the station is SIGKILLed
//! and restarted mid-way; the clients retry as a line's outbox does. At the
//! end it checks that nothing was lost and every result was recorded exactly
//! once, and reports round trips per second and the p99 round trip.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::config::day_text;
use super::fetch::{CaLink, Shared};
use super::serve::{router, ServeState};
use super::Station;
use crate::child::{random_secret, run_ok, this_certline_with, Child};
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
    #[arg(long, visible_alias = "devices", default_value_t = 10_000)]
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
    /// The load run: CA and station as processes, the CA paused and the
    /// station killed and restarted mid-way; checks nothing was lost.
    #[arg(long)]
    pub chaos: bool,
    /// With --chaos: how long the CA stays paused (SIGSTOP), in seconds.
    #[arg(long, default_value_t = 60)]
    pub ca_pause_secs: u64,
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

/// A CA process on loopback (`ca init` then `ca serve`), killed on drop.
fn start_ca(dir: &Path, passphrase: &str, max_batch: usize) -> anyhow::Result<Child> {
    let ca = dir.join("ca");
    run_ok(
        this_certline_with(passphrase)?
            .args(["ca", "init", "--max-batch"])
            .arg(max_batch.to_string())
            .arg("--dir")
            .arg(&ca),
    )?;
    let mut serve = this_certline_with(passphrase)?;
    serve
        .args(["ca", "serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&ca);
    Child::spawn(serve).listening("listening on ")
}

fn enroll(
    dir: &Path,
    passphrase: &str,
    role: &str,
    name: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let out = dir.join(format!("{role}-{name}.pem"));
    run_ok(
        this_certline_with(passphrase)?
            .args(["ca", "enroll", "--role", role, "--name", name, "--dir"])
            .arg(dir.join("ca"))
            .arg("--out")
            .arg(&out),
    )?;
    Ok(out)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.chaos {
        return chaos(&args);
    }
    let count = args.count.max(1);
    let chunk = args.chunk.clamp(1, 10_000);
    let lines = args.lines.max(1);
    let tmp = tempfile::tempdir()?;
    let passphrase = random_secret()?;
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
    let rt = crate::command::runtime()?;

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
    let admin_password = random_secret()?;
    super::dir::init(
        &dir,
        &super::dir::InitOptions {
            ca_url: ca.url.clone(),
            credential: station_cred_path.clone(),
            admin_user: "admin".into(),
            models: vec!["BENCH".into()],
            models_without_certificate: vec![],
            models_device_keygen: vec![],
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
                                fields: Default::default(),
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
    crate::command::emit(args.json, &figures, || {
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

#[derive(Debug, Serialize)]
struct ChaosFigures {
    devices: usize,
    lines: usize,
    /// Round trips (take + written, retries included) per second, over the whole run.
    round_trips_per_second: f64,
    /// Take to the station's answer to written, retries included, milliseconds.
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Requests that failed in transport (station down) and were retried.
    retried_requests: usize,
    /// Written reports answered "already reported" after a retry (the first got through).
    duplicate_reports: usize,
    ca_paused_secs: u64,
    station_restarts: usize,
    seconds: f64,
    /// Devices with exactly one recorded written result (must be all).
    recorded_once: usize,
}

/// What the load run's clients share: the next device, progress, figures.
#[derive(Default)]
struct Load {
    next: AtomicUsize,
    done: AtomicUsize,
    retried: AtomicUsize,
    duplicates: AtomicUsize,
    times_ms: Mutex<Vec<f64>>,
}

/// Whether a failed request is worth sending again as it is: the station is
/// down or restarting, or answered that it cannot serve right now.
fn transient(err: &crate::service::client::ClientError) -> bool {
    use crate::service::client::ClientError;
    match err {
        ClientError::Unreachable { .. } | ClientError::Garbage { .. } => true,
        ClientError::Refused { status, .. } => *status >= 500,
    }
}

/// One line's client: take + written for devices until none is left,
/// retrying as a line's outbox does.
async fn load_line(
    client: ServiceClient,
    load: Arc<Load>,
    devices: usize,
    give_up: Instant,
) -> anyhow::Result<()> {
    loop {
        let n = load.next.fetch_add(1, Ordering::Relaxed);
        if n >= devices {
            return Ok(());
        }
        let id = format!("BENCH-{:08}", n + 1);
        let start = Instant::now();
        let pack: TakeResponse = loop {
            match client
                .post(api::TAKE, &TakeRequest { id: id.clone() })
                .await
            {
                Ok(pack) => break pack,
                Err(e) if transient(&e) && Instant::now() < give_up => {
                    load.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => anyhow::bail!("take {id}: {e}"),
            }
        };
        let request = WrittenRequest {
            id: id.clone(),
            serial: pack.serial.clone(),
            fingerprint: pack.fingerprint.clone(),
            fields: Default::default(),
        };
        let mut retried = false;
        loop {
            match client
                .post::<_, ReportResponse>(api::WRITTEN, &request)
                .await
            {
                Ok(_) => break,
                Err(e) if retried && e.code() == Some(api::codes::DUPLICATE_REPORT) => {
                    load.duplicates.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if transient(&e) && Instant::now() < give_up => {
                    retried = true;
                    load.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => anyhow::bail!("written {id}: {e}"),
            }
        }
        load.times_ms
            .lock()
            .unwrap()
            .push(start.elapsed().as_secs_f64() * 1000.0);
        load.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// The load run (`--chaos`); see the module's opening comment.
fn chaos(args: &BenchArgs) -> anyhow::Result<()> {
    let devices = args.count.max(1);
    let lines = args.lines.max(1);
    let chunk = args.chunk.clamp(1, 10_000);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let passphrase = random_secret()?;
    let admin_password = random_secret()?;
    let certline = || -> anyhow::Result<Command> {
        let mut cmd = this_certline_with(&passphrase)?;
        cmd.env(super::admin::PASSWORD_ENV, &admin_password);
        Ok(cmd)
    };
    let say = |text: &str| {
        if !args.json {
            eprintln!("station bench --chaos: {text}");
        }
    };
    say("starting a CA on loopback...");
    let ca = start_ca(dir, &passphrase, chunk)?;
    let station_cred = enroll(dir, &passphrase, "station", "bench-station")?;
    let mut line_creds = Vec::new();
    for n in 0..lines {
        line_creds.push(Credential::load(&enroll(
            dir,
            &passphrase,
            "line",
            &format!("bench-line-{n}"),
        )?)?);
    }
    let station = dir.join("station");
    run_ok(
        certline()?
            .args(["station", "init", "--model", "BENCH", "--dir"])
            .arg(&station)
            .args(["--ca", &ca.url, "--credential"])
            .arg(&station_cred)
            .args(["--chunk-size", &chunk.to_string()]),
    )?;
    let day = crate::day::utc_day_text(0);
    let plan = dir.join("plan.csv");
    std::fs::write(
        &plan,
        format!("date,model,first_serial,count\n{day},BENCH,00000001,{devices}\n"),
    )?;
    run_ok(
        certline()?
            .args(["station", "plan", "import", "--dir"])
            .arg(&station)
            .arg(&plan),
    )?;
    say(&format!("fetching {devices} packs..."));
    run_ok(
        certline()?
            .args(["station", "fetch", "--day", &day, "--dir"])
            .arg(&station),
    )?;
    // A fixed address, so that the restarted station is where the lines look.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let serve = || -> anyhow::Result<Child> {
        let mut cmd = certline()?;
        cmd.args(["station", "serve", "--listen", &listen, "--dir"])
            .arg(&station);
        Child::spawn(cmd).listening("listening on ")
    };
    let mut server = Some(serve()?);
    let url = format!("https://{listen}");

    say(&format!(
        "{lines} lines, {devices} devices; the CA pauses at 25 % for {} s, the station is killed at 50 %...",
        args.ca_pause_secs
    ));
    let load = Arc::new(Load::default());
    let rt = crate::command::runtime()?;
    let give_up = Instant::now() + Duration::from_secs(args.ca_pause_secs + 600);
    let clients = line_creds
        .iter()
        .map(|c| {
            ServiceClient::new(
                &url,
                c,
                crate::pki::role::Role::Station,
                Duration::from_secs(10),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| rt.spawn(load_line(client, load.clone(), devices, give_up)))
        .collect();
    // The chaos, on this thread while the lines work.
    let pause = Duration::from_secs(args.ca_pause_secs);
    let mut ca_paused_at: Option<Instant> = None;
    let mut ca_resumed = false;
    let mut restarts = 0;
    while load.done.load(Ordering::Relaxed) < devices && !tasks.iter().all(|t| t.is_finished()) {
        let done = load.done.load(Ordering::Relaxed);
        if ca_paused_at.is_none() && done * 4 >= devices {
            say(&format!("{done} done: pausing the CA (SIGSTOP)"));
            ca.signal("STOP")?;
            ca_paused_at = Some(Instant::now());
        }
        if restarts == 0 && done * 2 >= devices {
            say(&format!(
                "{done} done: killing the station (SIGKILL) and starting it again"
            ));
            if let Some(mut s) = server.take() {
                s.kill();
            }
            server = Some(serve()?);
            restarts += 1;
        }
        if !ca_resumed && ca_paused_at.is_some_and(|at| at.elapsed() >= pause) {
            say("the CA goes on (SIGCONT)");
            ca.signal("CONT")?;
            ca_resumed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let results: Vec<anyhow::Result<()>> = rt.block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(
                task.await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("a line task failed: {e}"))),
            );
        }
        out
    });
    let elapsed = start.elapsed();
    // The CA's pause lasts its full time even when the lines finished first.
    if let Some(at) = ca_paused_at.filter(|_| !ca_resumed) {
        std::thread::sleep(pause.saturating_sub(at.elapsed()));
        ca.signal("CONT")?;
    }
    for result in results {
        result?;
    }

    // Nothing lost, every result recorded exactly once: read the station's stock.
    let recorded_once = recorded_once(&station.join("stock.db"), devices)?;
    drop(server);
    let mut times = std::mem::take(&mut *load.times_ms.lock().unwrap());
    times.sort_by(f64::total_cmp);
    let figures = ChaosFigures {
        devices,
        lines,
        round_trips_per_second: devices as f64 / elapsed.as_secs_f64(),
        median_ms: crate::command::percentile(&times, 50.0),
        p99_ms: crate::command::percentile(&times, 99.0),
        max_ms: times.last().copied().unwrap_or(0.0),
        retried_requests: load.retried.load(Ordering::Relaxed),
        duplicate_reports: load.duplicates.load(Ordering::Relaxed),
        ca_paused_secs: args.ca_pause_secs,
        station_restarts: restarts,
        seconds: elapsed.as_secs_f64(),
        recorded_once,
    };
    crate::command::emit(args.json, &figures, || {
        println!(
            "station load, {devices} devices, {lines} lines, the CA paused {} s, the station killed and restarted {restarts} time(s)",
            figures.ca_paused_secs
        );
        println!(
            "  {:.0} round trips/s (take + written, over {:.1} s); round trip median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            figures.round_trips_per_second, figures.seconds, figures.median_ms, figures.p99_ms, figures.max_ms
        );
        println!(
            "  {} requests retried, {} written reports found already recorded; {} of {devices} devices recorded exactly once",
            figures.retried_requests, figures.duplicate_reports, figures.recorded_once
        );
    })?;
    anyhow::ensure!(
        recorded_once == devices,
        "only {recorded_once} of {devices} devices have exactly one written result"
    );
    Ok(())
}

/// How many of the bench's devices have exactly one pack, written (flagged
/// or deleted by retention), and exactly one `written` entry in the audit log.
fn recorded_once(stock: &Path, devices: usize) -> anyhow::Result<usize> {
    let conn =
        rusqlite::Connection::open_with_flags(stock, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut written = std::collections::HashMap::<String, (usize, usize)>::new();
    let mut packs = conn.prepare("SELECT id, state FROM packs")?;
    for row in packs.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (id, state) = row?;
        if ["written", "flagged", "deleted"].contains(&state.as_str()) {
            written.entry(id).or_default().0 += 1;
        }
    }
    let mut audit = conn.prepare(
        "SELECT json_extract(detail, '$.id'), COUNT(*) FROM audit WHERE action = 'written' GROUP BY 1",
    )?;
    for row in audit.query_map([], |r| {
        Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
    })? {
        if let (Some(id), n) = row? {
            written.entry(id).or_default().1 += n as usize;
        }
    }
    Ok((1..=devices)
        .filter(|n| written.get(&format!("BENCH-{n:08}")) == Some(&(1, 1)))
        .count())
}
