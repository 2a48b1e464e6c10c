//! `certline ca bench --revoked N`: what revocation costs at fleet scale
//! (issue 15). One run measures a CA with no revoked certificate and one with
//! N already on its CRL, each a real `certline ca serve` and a real
//! `certline center` as child processes on loopback:
//!
//! - the CA's CPU (utime + stime from /proc, publisher included) per revoke
//!   and per replacement, each a real API call from a station credential;
//! - `/v1/health` and `GET /v1/crl` latency while a revoke storm runs;
//! - the center's CPU per device connection (a fresh TLS handshake and
//!   `GET /v1/status` each) for a good and for a revoked device;
//! - memory (VmRSS) of both, and the center's per revoked entry.
//!
//! Filling N writes ledger rows directly (`Ledger::fill_revoked_for_bench`)
//! and publishes once with `ca crl --now`; everything measured goes through
//! the API. Reports figures and the goals beside them; asserts
//! nothing about time.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;

use crate::child::{random_secret, run_ok, Child};
use crate::command::percentile;
use crate::pki::credential::Credential;
use crate::pki::pem_blocks;
use crate::pki::role::Role;
use crate::service::client::ServiceClient;
use crate::service::tls::identity_client_config;
use crate::store::ledger::Ledger;
use crate::wire::ca::{self as api, BatchRequest, Health, IssuedPack, PackBatch, Revoked};
use crate::wire::center::{Decision, Verdict, STATUS};

/// What one run at one R measured.
#[derive(Debug, Serialize)]
pub struct AtR {
    pub revoked: usize,
    pub crl_bytes: usize,
    /// Wall time of `ca crl --now` after the fill (one full publication, process start included).
    pub publish_ms: f64,
    pub ca_cpu_per_revoke_ms: f64,
    pub ca_cpu_per_replace_ms: f64,
    pub health_p50_ms: f64,
    pub health_p99_ms: f64,
    pub crl_p50_ms: f64,
    pub crl_p99_ms: f64,
    pub center_cpu_per_good_ms: f64,
    pub center_cpu_per_revoked_ms: f64,
    pub center_good_per_s: f64,
    pub center_revoked_per_s: f64,
    pub ca_rss_kb: u64,
    pub center_rss_kb: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub storm: usize,
    pub connections: usize,
    pub runs: Vec<AtR>,
}

fn certline(passphrase: &str) -> anyhow::Result<Command> {
    crate::child::this_certline_with(passphrase)
}

/// utime + stime of a process, in milliseconds (/proc/PID/stat).
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("unreadable /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) * 1000.0 / ticks.max(1.0))
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn run(revoked: usize, storm: usize, connections: usize, json: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let passphrase = random_secret()?;
    let mut runs = Vec::new();
    for r in [0, revoked] {
        eprintln!("revocation bench: R = {r} ...");
        runs.push(at_r(
            &tmp.path().join(format!("r{r}")),
            &passphrase,
            r,
            storm.max(10),
            connections.max(10),
        )?);
        if revoked == 0 {
            break;
        }
    }
    let report = Report {
        storm,
        connections,
        runs,
    };
    crate::command::emit(json, &report, || print_table(&report))
}

fn print_table(report: &Report) {
    println!(
        "revocation at scale: {} revokes / {} replaces per storm, {} center connections per device kind",
        report.storm, report.storm, report.connections
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>13} {:>13} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "R",
        "CRL bytes",
        "publish",
        "revoke",
        "replace",
        "health p50/99",
        "crl p50/99",
        "ctr good",
        "ctr rev.",
        "good/s",
        "rev./s",
        "CA RSS",
        "ctr RSS"
    );
    for r in &report.runs {
        println!(
            "{:>8} {:>10} {:>7.0}ms {:>7.2}ms {:>7.2}ms {:>6.1}/{:<6.1} {:>6.1}/{:<6.1} {:>7.2}ms {:>7.2}ms {:>8.0} {:>8.0} {:>7}MB {:>7}MB",
            r.revoked,
            r.crl_bytes,
            r.publish_ms,
            r.ca_cpu_per_revoke_ms,
            r.ca_cpu_per_replace_ms,
            r.health_p50_ms,
            r.health_p99_ms,
            r.crl_p50_ms,
            r.crl_p99_ms,
            r.center_cpu_per_good_ms,
            r.center_cpu_per_revoked_ms,
            r.center_good_per_s,
            r.center_revoked_per_s,
            r.ca_rss_kb / 1024,
            r.center_rss_kb / 1024,
        );
    }
    if let [zero, big] = &report.runs[..] {
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
        println!("goals (issue 15), R = {} against R = 0:", big.revoked);
        println!(
            "  CA CPU per revoke   {:.2}x  per replace {:.2}x   (goal: within 1.5x)",
            ratio(zero.ca_cpu_per_revoke_ms, big.ca_cpu_per_revoke_ms),
            ratio(zero.ca_cpu_per_replace_ms, big.ca_cpu_per_replace_ms)
        );
        println!(
            "  /v1/health p99 {:.1} ms, GET /v1/crl p99 {:.1} ms during the storm   (goal: under 10 ms)",
            big.health_p99_ms, big.crl_p99_ms
        );
        println!(
            "  center CPU per connection: good {:.2}x, revoked {:.2}x   (goal: within 1.2x)",
            ratio(zero.center_cpu_per_good_ms, big.center_cpu_per_good_ms),
            ratio(
                zero.center_cpu_per_revoked_ms,
                big.center_cpu_per_revoked_ms
            )
        );
        if big.revoked > 0 {
            println!(
                "  center memory per revoked entry: {:.0} bytes (VmRSS difference / R)",
                (big.center_rss_kb as f64 - zero.center_rss_kb as f64) * 1024.0
                    / big.revoked as f64
            );
        }
    }
}

/// A device's TLS client (fresh connection pool: each call is a handshake).
fn device_client(url: &str, pack: &IssuedPack, batch: &PackBatch) -> anyhow::Result<ServiceClient> {
    let chain = [pack.cert_pem.as_str(), batch.issuing_pem.as_str()]
        .iter()
        .map(|pem| pem_blocks(pem, "CERTIFICATE"))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .map(CertificateDer::from)
        .collect();
    let root = CertificateDer::from(
        pem_blocks(&batch.root_pem, "CERTIFICATE")?
            .into_iter()
            .next()
            .context("no root")?,
    );
    let key = pem_blocks(&pack.key_pem, "PRIVATE KEY")?
        .into_iter()
        .next()
        .context("no key")?;
    let tls = identity_client_config(
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        &root,
        Role::Center,
    )?;
    ServiceClient::with_tls(url, (*tls).clone(), Duration::from_secs(30))
}

fn at_r(
    dir: &Path,
    passphrase: &str,
    revoked: usize,
    storm: usize,
    connections: usize,
) -> anyhow::Result<AtR> {
    let ca_dir = dir.join("ca");
    let ca = ca_dir
        .to_str()
        .context("a temporary path that is not UTF-8")?;
    run_ok(certline(passphrase)?.args(["ca", "init", "--dir", ca, "--org", "Bench"]))?;
    let station = dir.join("station.pem");
    let center_cred = dir.join("center.pem");
    for (role, name, out) in [
        ("station", "bench", &station),
        ("center", "center", &center_cred),
    ] {
        run_ok(
            certline(passphrase)?
                .args([
                    "ca", "enroll", "--dir", ca, "--role", role, "--name", name, "--out",
                ])
                .arg(out),
        )?;
    }
    // Years of revocations, written directly; published once.
    if revoked > 0 {
        let mut ledger = Ledger::open(
            &crate::store::ledger::Location::Sqlite(ca_dir.join(super::dir::LEDGER_FILE)),
            false,
        )?;
        ledger.fill_revoked_for_bench("FILL", revoked, time::OffsetDateTime::now_utc())?;
    }
    let started = Instant::now();
    run_ok(
        certline(passphrase)?
            .args(["ca", "crl", "--now", "--dir", ca, "--out"])
            .arg(dir.join("crl.pem")),
    )?;
    let publish_ms = ms(started.elapsed());

    let server = Child::spawn({
        let mut cmd = certline(passphrase)?;
        cmd.args(["ca", "serve", "--dir", ca, "--listen", "127.0.0.1:0"]);
        cmd
    })
    .stderr(crate::child::Stderr::Null)
    .listening("listening on ")?;
    let ca_pid = server.id();
    let url = server.url.clone();

    let cred = Credential::load(&station)?;
    let runtime = crate::command::runtime()?;
    let client = ServiceClient::new(&url, &cred, Role::Ca, Duration::from_secs(600))?;
    let anonymous = ServiceClient::anonymous(&url, &cred.root, Role::Ca, Duration::from_secs(60))?;
    // The certificates the storms revoke and replace, and two devices for the center.
    let ids: Vec<String> = (0..2 * storm + 2)
        .map(|n| format!("BENCH-{n:08}"))
        .collect();
    let batch: PackBatch =
        runtime.block_on(client.post(api::PACKS, &BatchRequest::for_ids(&ids)))?;
    anyhow::ensure!(
        batch.packs.len() == ids.len(),
        "the CA issued {} packs",
        batch.packs.len()
    );
    let (to_revoke, rest) = batch.packs.split_at(storm);
    let (to_replace, devices) = rest.split_at(storm);

    // The center, with the revoked device already revoked.
    let contracts = dir.join("contracts.csv");
    std::fs::write(&contracts, "devices,contract,from\n")?;
    let center = Child::spawn({
        let mut cmd = crate::child::this_certline()?;
        cmd.args(["center", "--dir"])
            .arg(dir.join("center"))
            .args(["--listen", "127.0.0.1:0", "--contracts"])
            .arg(&contracts)
            .arg("--credential")
            .arg(&center_cred)
            .args(["--ca", &url, "--crl-refresh", "1"]);
        cmd
    })
    .stderr(crate::child::Stderr::Null)
    .listening("listening on ")?;
    let (good, gone) = (&devices[0], &devices[1]);
    let _: Revoked = runtime.block_on(client.post(
        api::REVOKE,
        &serde_json::json!({"serial": gone.serial, "reason": "key-compromise"}),
    ))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d: Decision =
            runtime.block_on(device_client(&center.url, gone, &batch)?.get_json(STATUS))?;
        if d.verdict == Verdict::Revoked {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the center never saw the revocation: {}",
            d.reason
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let crl_bytes = runtime.block_on(anonymous.get_bytes(api::CRL))?.len();

    // Settles the publisher: its last signature is part of the storm's cost.
    let settle = || -> anyhow::Result<()> {
        let target: Health = runtime.block_on(anonymous.get_json(api::HEALTH))?;
        std::thread::sleep(Duration::from_secs_f64(target.crl_max_delay + 0.5));
        Ok(())
    };
    settle()?;

    // Storm 1: revokes, CPU only.
    let revoke_body =
        |p: &IssuedPack| serde_json::json!({"serial": p.serial, "reason": "superseded"});
    let half = storm / 2;
    let before = cpu_ms(ca_pid)?;
    for pack in &to_revoke[..half] {
        let _: Revoked = runtime.block_on(client.post(api::REVOKE, &revoke_body(pack)))?;
    }
    settle()?;
    let ca_cpu_per_revoke_ms = (cpu_ms(ca_pid)? - before) / half as f64;

    // Storm 2: replacements, CPU only.
    let before = cpu_ms(ca_pid)?;
    for pack in to_replace {
        let _: PackBatch = runtime.block_on(client.post(
            api::REPLACE,
            &serde_json::json!({"id": pack.id, "replaces": pack.serial}),
        ))?;
    }
    settle()?;
    let ca_cpu_per_replace_ms = (cpu_ms(ca_pid)? - before) / to_replace.len() as f64;

    // Storm 3: revokes while health and the CRL are asked for, each on its own connection.
    let running = Arc::new(AtomicBool::new(true));
    let probe = |path: &'static str| {
        let running = running.clone();
        let url = url.clone();
        let root = cred.root.clone();
        std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let client = ServiceClient::anonymous(&url, &root, Role::Ca, Duration::from_secs(60))?;
            let runtime = crate::command::runtime()?;
            let mut took = Vec::new();
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                runtime.block_on(client.get_bytes(path))?;
                took.push(ms(started.elapsed()));
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(took)
        })
    };
    let health_probe = probe(api::HEALTH);
    let crl_probe = probe(api::CRL);
    for pack in &to_revoke[half..] {
        let _: Revoked = runtime.block_on(client.post(api::REVOKE, &revoke_body(pack)))?;
    }
    running.store(false, Ordering::Relaxed);
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let health = sorted(
        health_probe
            .join()
            .map_err(|_| anyhow::anyhow!("probe panicked"))??,
    );
    let crl = sorted(
        crl_probe
            .join()
            .map_err(|_| anyhow::anyhow!("probe panicked"))??,
    );
    settle()?;

    // The center: a fresh handshake and one status per connection.
    let center_pid = center.id();
    let per_connection = |pack: &IssuedPack, expect: Verdict| -> anyhow::Result<(f64, f64)> {
        let before = cpu_ms(center_pid)?;
        let started = Instant::now();
        for _ in 0..connections {
            let d: Decision =
                runtime.block_on(device_client(&center.url, pack, &batch)?.get_json(STATUS))?;
            anyhow::ensure!(
                d.verdict == expect,
                "{}: {:?} ({})",
                pack.id,
                d.verdict,
                d.reason
            );
        }
        let wall = started.elapsed().as_secs_f64();
        Ok((
            (cpu_ms(center_pid)? - before) / connections as f64,
            connections as f64 / wall,
        ))
    };
    let (center_cpu_per_good_ms, center_good_per_s) = per_connection(good, Verdict::NoContract)?;
    let (center_cpu_per_revoked_ms, center_revoked_per_s) = per_connection(gone, Verdict::Revoked)?;

    Ok(AtR {
        revoked,
        crl_bytes,
        publish_ms,
        ca_cpu_per_revoke_ms,
        ca_cpu_per_replace_ms,
        health_p50_ms: percentile(&health, 50.0),
        health_p99_ms: percentile(&health, 99.0),
        crl_p50_ms: percentile(&crl, 50.0),
        crl_p99_ms: percentile(&crl, 99.0),
        center_cpu_per_good_ms,
        center_cpu_per_revoked_ms,
        center_good_per_s,
        center_revoked_per_s,
        ca_rss_kb: rss_kb(ca_pid)?,
        center_rss_kb: rss_kb(center_pid)?,
    })
}
