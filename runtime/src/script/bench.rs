//! `certline script bench`: what the scripts cost. Script overhead per scan
//! (parse + workflow of the example line.lua, against the built-in parser),
//! per retention decision, and reload latency from the file write to the new
//! version serving (through the folder watcher, debounce included).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::line::{open_folder, ParseOutcome};
use super::retention::{PackFacts, RetentionScript};
use super::Limits;
use crate::command::percentile;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The factory script folder to measure.
    #[arg(long, default_value = "scripts/example")]
    pub dir: PathBuf,
    /// Scans to time.
    #[arg(long, default_value_t = 20_000)]
    pub scans: usize,
    /// Reloads to time.
    #[arg(long, default_value_t = 10)]
    pub reloads: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub scans: usize,
    /// Microseconds per scan, parse + workflow, through the sandbox.
    pub scan_us_mean: f64,
    pub scan_us_p99: f64,
    /// The built-in MODEL-SERIAL parser, for comparison.
    pub builtin_scan_us_mean: f64,
    pub retention_us_mean: f64,
    pub reloads: usize,
    /// Milliseconds from the write (rename) of an edited line.lua to the new
    /// version serving, through the watcher.
    pub reload_ms_median: f64,
    pub reload_ms_max: f64,
    /// Milliseconds to load and self-check line.lua (the part of a reload
    /// that is not waiting for the folder to be quiet).
    pub load_ms_mean: f64,
    pub debounce_ms: u64,
}

const SCANS: [&str; 4] = [
    "3012-123456",
    "]C13012-123456-5",
    "CS;M=A123;S=654321;QC=OK",
    "]Q13015-42",
];

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn measure(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let file = open_folder(&args.dir, "bench", Limits::default())?;
    let line = file.current();
    // Warm up.
    for scan in SCANS {
        line.on_scan(scan)?;
    }
    let mut times = Vec::with_capacity(args.scans);
    for i in 0..args.scans {
        let scan = SCANS[i % SCANS.len()];
        let started = Instant::now();
        let (outcome, _steps) = line.on_scan(scan)?;
        times.push(us(started.elapsed()));
        anyhow::ensure!(
            matches!(outcome, ParseOutcome::Device(_)),
            "{scan} did not parse"
        );
    }
    let scan_us_mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    times.sort_by(f64::total_cmp);
    let scan_us_p99 = percentile(&times, 99.0);

    let started = Instant::now();
    for i in 0..args.scans {
        std::hint::black_box(crate::pki::id::DeviceId::parse(std::hint::black_box(
            SCANS[(i % 2) * 3],
        )))
        .ok();
    }
    let builtin_scan_us_mean = us(started.elapsed()) / args.scans.max(1) as f64;

    let retention_path = args.dir.join("retention.lua");
    let retention_us_mean = if retention_path.exists() {
        let policy = RetentionScript::load(
            &retention_path,
            &std::fs::read(&retention_path)?,
            serde_json::json!({}),
            Limits::default(),
        )?;
        let pack = PackFacts {
            id: "3012-1".into(),
            model: "3012".into(),
            serial: "1".into(),
            cert_serial: "0a".into(),
            line: "line-1".into(),
            written_at: 0,
            age_secs: 40 * 86_400,
            flagged: true,
        };
        let started = Instant::now();
        for _ in 0..args.scans {
            policy.decide(&pack)?;
        }
        us(started.elapsed()) / args.scans.max(1) as f64
    } else {
        0.0
    };

    let (reload_ms_median, reload_ms_max, load_ms_mean) = reload_latency(&args.dir, args.reloads)?;
    Ok(BenchReport {
        scans: args.scans,
        scan_us_mean,
        scan_us_p99,
        builtin_scan_us_mean,
        retention_us_mean,
        reloads: args.reloads,
        reload_ms_median,
        reload_ms_max,
        load_ms_mean,
        debounce_ms: super::file::SCRIPT_DEBOUNCE.as_millis() as u64,
    })
}

fn reload_latency(dir: &Path, reloads: usize) -> anyhow::Result<(f64, f64, f64)> {
    let tmp = tempfile::tempdir()?;
    for f in ["line.lua", super::factory::FACTORY_FILE] {
        if dir.join(f).exists() {
            std::fs::copy(dir.join(f), tmp.path().join(f))?;
        }
    }
    let file = open_folder(tmp.path(), "bench", Limits::default())?;
    file.watch()?;
    let path = tmp.path().join("line.lua");
    let original = std::fs::read_to_string(&path)?;
    let mut latencies = Vec::new();
    let mut loads = Vec::new();
    for i in 0..reloads {
        // Each edit changes what a scan gives, so "serving" is observable.
        let text = format!("{original}\nhost_bench_edit = {i}\n");
        let swap = tmp.path().join("line.lua.new");
        std::fs::write(&swap, &text)?;
        let before = file.version();
        let started = Instant::now();
        std::fs::rename(&swap, &path)?;
        loop {
            if file.version() > before {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "edit {i} was not picked up within 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        let served = file.current();
        anyhow::ensure!(
            matches!(served.script().global("host_bench_edit"), mlua::Value::Integer(n) if n == i as i64),
            "edit {i} is not the version serving"
        );
        let started = Instant::now();
        super::line::LineScript::load(
            &path,
            text.as_bytes(),
            "bench",
            super::factory::folder_models(tmp.path())?,
            Limits::default(),
        )?;
        loads.push(started.elapsed().as_secs_f64() * 1e3);
        // Let the watcher settle so edits are separate.
        std::thread::sleep(Duration::from_millis(50));
    }
    latencies.sort_by(f64::total_cmp);
    let load_mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    Ok((
        percentile(&latencies, 50.0),
        latencies.last().copied().unwrap_or(0.0),
        load_mean,
    ))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args)?;
    crate::command::emit(args.json, &report, || {
        println!("script bench ({})", args.dir.display());
        println!(
            "  scan (parse + workflow, Lua): {:.1} µs mean, {:.1} µs p99 over {} scans (goal < 200 µs)",
            report.scan_us_mean, report.scan_us_p99, report.scans
        );
        println!(
            "  built-in parser:              {:.2} µs mean",
            report.builtin_scan_us_mean
        );
        println!(
            "  retention decision (Lua):     {:.1} µs mean",
            report.retention_us_mean
        );
        println!(
            "  reload, write to serving:     {:.0} ms median, {:.0} ms max over {} edits (debounce {} ms; goal < 1 s)",
            report.reload_ms_median, report.reload_ms_max, report.reloads, report.debounce_ms
        );
        println!(
            "  load + self-check line.lua:   {:.2} ms mean",
            report.load_ms_mean
        );
    })
}
