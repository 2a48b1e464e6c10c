//! `certline line bench`: scan-to-written time of the line, with real CA and
//! station processes on loopback (mTLS, durable commits, encrypted stock), the
//! real plugin (WASM) and a zero-delay reference device on loopback TCP. Each
//! "device on the cable" is a `certline device-sim` process with a fresh
//! folder and its own id, started on the line's cable address before its scan
//! (the start is not measured) and stopped after it. Scan-to-written is
//! the time from the scan to the station's answer to "written" (device
//! identified, pack taken, written, read back, possession proved, results
//! committed to the outbox and delivered). Reports figures; asserts nothing
//! about time.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::config::LineConfig;
use super::workflow::Status;
use crate::child::{random_secret, run_ok, Child};
use crate::command::{median, percentile};
use crate::pki::id::DeviceId;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Devices measured (after the warm-up).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Devices written first and not measured.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// The device plugin (serves model 3012).
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/certline_plugin_imaging.wasm"
    )]
    pub plugin: PathBuf,
    /// Where the simulated devices keep their flash [default: /dev/shm when
    /// it exists, so that the figure is certline's time and not the disk's;
    /// otherwise a temporary folder].
    #[arg(long, value_name = "DIR")]
    pub device_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Figures {
    devices: usize,
    /// Scan to the station's answer to "written", milliseconds.
    median_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    /// Median of each step, milliseconds.
    steps: Vec<(String, f64)>,
    /// Median including closing the link (the line is ready for the next scan).
    median_until_ready_ms: f64,
}

/// The CA's and the station's commands: the passphrase only (the station's
/// first administrator gets a password at `station init`, nothing else does).
fn certline(passphrase: &str) -> anyhow::Result<Command> {
    crate::child::this_certline_with(passphrase)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !args.plugin.is_file() {
        anyhow::bail!(
            "plugin {} not found: build the plugins first (cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml) or name one with --plugin",
            args.plugin.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let passphrase = random_secret()?;
    let total = args.count + args.warmup;
    eprintln!("line bench: setting up a CA and a station with {total} packs ...");

    // CA, credentials, station with today's plan, fetched.
    let ca = dir.join("ca");
    run_ok(
        certline(&passphrase)?
            .args(["ca", "init", "--dir"])
            .arg(&ca),
    )?;
    let ca_server = Child::spawn({
        let mut c = certline(&passphrase)?;
        c.args(["ca", "serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&ca);
        c
    })
    .listening("listening on ")?;
    let ca_url = ca_server.url.clone();
    let enroll = |role: &str, name: &str| -> anyhow::Result<PathBuf> {
        let out = dir.join(format!("{name}.pem"));
        run_ok(
            certline(&passphrase)?
                .args(["ca", "enroll", "--role", role, "--name", name, "--dir"])
                .arg(&ca)
                .arg("--out")
                .arg(&out),
        )?;
        Ok(out)
    };
    let station_cred = enroll("station", "bench-station")?;
    let line_cred = enroll("line", "bench-line")?;
    let device_cred = enroll("device-link", "bench-boards")?;
    let station = dir.join("station");
    run_ok(
        certline(&passphrase)?
            .env(crate::command::ADMIN_PASSWORD_ENV, &passphrase)
            .args(["station", "init", "--model", "3012", "--dir"])
            .arg(&station)
            .args(["--ca", &ca_url, "--credential"])
            .arg(&station_cred),
    )?;
    let day = crate::day::utc_day_text(0);
    let plan = dir.join("plan.csv");
    std::fs::write(
        &plan,
        format!("date,model,first_serial,count\n{day},3012,000001,{total}\n"),
    )?;
    run_ok(
        certline(&passphrase)?
            .args(["station", "plan", "import", "--dir"])
            .arg(&station)
            .arg(&plan),
    )?;
    run_ok(
        certline(&passphrase)?
            .args(["station", "fetch", "--day", &day, "--dir"])
            .arg(&station),
    )?;
    let station_server = Child::spawn({
        let mut c = certline(&passphrase)?;
        c.args(["station", "serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&station);
        c
    })
    .listening("listening on ")?;
    let station_url = station_server.url.clone();

    // The device on the cable: whichever simulator folder is current.
    let shm = PathBuf::from("/dev/shm");
    let devices_tmp = match &args.device_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None if shm.is_dir() => tempfile::tempdir_in(&shm)?,
        None => tempfile::tempdir()?,
    };
    let devices = devices_tmp.path().to_path_buf();
    // A free loopback port for the cable: each device simulator listens there in turn.
    let cable = TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    // The line, configured as a factory would.
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(&args.plugin, plugins.join("plugin.wasm"))
        .with_context(|| format!("cannot copy {}", args.plugin.display()))?;
    let config_file = dir.join("line.toml");
    std::fs::write(
        &config_file,
        format!(
            "name = \"bench-line\"\nstate_dir = \"line-state\"\n\
             [station]\nurl = \"{station_url}\"\ncredential = \"{}\"\n\
             [scanner]\nsource = \"stdin\"\n\
             [device]\naddress = \"{cable}\"\n\
             [plugins]\ndir = \"plugins\"\n",
            line_cred.display()
        ),
    )?;
    let mut terminal = super::terminal::open(LineConfig::load(&config_file)?)?;

    eprintln!(
        "line bench: {} warm-up devices, then {} measured ...",
        args.warmup, args.count
    );
    let mut written = Vec::with_capacity(args.count);
    let mut ready = Vec::with_capacity(args.count);
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    for n in 1..=total {
        let id = DeviceId::new("3012", &format!("{n:06}"))?;
        let mut sim = crate::child::this_certline()?;
        sim.args([
            "device-sim",
            "--model",
            "3012",
            "--serial",
            &format!("{n:06}"),
        ])
        .arg("--dir")
        .arg(devices.join(id.to_string()))
        .arg("--credential")
        .arg(&device_cred)
        .args(["--listen", &cable, "--once"]);
        let device = Child::spawn(sim).first_line()?;
        let report = terminal.handle_scan(&id.to_string());
        drop(device);
        if report.status != Status::Ok || report.result.as_deref() != Some("delivered") {
            anyhow::bail!(
                "device {id}: {} {} - {}",
                report.status.word(),
                report.code,
                report.message
            );
        }
        if n <= args.warmup {
            continue;
        }
        written.push(report.steps.iter().map(|(_, ms)| ms).sum::<f64>());
        ready.push(report.ms);
        for (name, ms) in &report.steps {
            match steps.iter_mut().find(|(s, _)| s == name) {
                Some((_, v)) => v.push(*ms),
                None => steps.push((name.clone(), vec![*ms])),
            }
        }
        if n % 200 == 0 {
            eprintln!("line bench: {n}/{total}");
        }
        let _ = std::fs::remove_dir_all(devices.join(id.to_string()));
    }
    let mut sorted = written.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let figures = Figures {
        devices: sorted.len(),
        median_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        mean_ms: sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
        max_ms: sorted.last().copied().unwrap_or(0.0),
        steps: steps
            .into_iter()
            .map(|(name, v)| (name, median(v)))
            .collect(),
        median_until_ready_ms: median(ready),
    };
    crate::command::emit(args.json, &figures, || {
        println!(
            "scan-to-written over {} devices: median {:.2} ms, p99 {:.2} ms (mean {:.2}, max {:.2})",
            figures.devices, figures.median_ms, figures.p99_ms, figures.mean_ms, figures.max_ms
        );
        let parts: Vec<String> = figures
            .steps
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.2}"))
            .collect();
        println!("median per step (ms): {}", parts.join(", "));
        println!(
            "median until the line is ready for the next scan (link closed): {:.2} ms",
            figures.median_until_ready_ms
        );
    })?;
    Ok(())
}
