//! `certline plugin`: a device vendor's tools. `check` says what the host makes
//! of a component; `try` writes a pack into a device through it and reads it
//! back; `bench` measures the plugin host's overhead and full writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::template::Lang;
use super::{Limits, Plugin, PluginEngine, Precheck, WriteJob};
use crate::command::emit;
use crate::link::{self, DeviceAddr, DeviceLink};
use crate::pki::credential::Credential;
use crate::pki::pack::Pack;

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Start a plugin for a new model: a crate that builds, a device stub for
    /// `device-sim --exec`, and try.sh that builds, checks and tries both.
    New(NewArgs),
    /// Check a plugin: interface version, name, models, exports and imports.
    Check(CheckArgs),
    /// Write a pack into a device through a plugin and read it back.
    Try(TryArgs),
    /// Measure the plugin host's per-write overhead and full writes per second.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The plugin's name, also its crate's (a-z 0-9 and '-').
    pub name: String,
    /// The model code it serves (as on the rating plate).
    #[arg(long)]
    pub model: String,
    /// The plugin's language: a Rust crate on the SDK, or a Python module
    /// built with componentize-py (`--stub-wasi`).
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where to make it [default: ./NAME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The certline source tree whose plugins/sdk and plugins/protocol a
    /// Rust crate depends on [default: the one this binary was built from].
    #[arg(long)]
    pub source: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The plugin component (.wasm).
    pub file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct LinkArgs {
    /// The plugin component (.wasm).
    #[arg(long)]
    pub plugin: PathBuf,
    /// The device: HOST:PORT for TCP, or a serial port path (/dev/ttyUSB0, a pty).
    #[arg(long)]
    pub device: String,
    /// The pack to write: a folder with root.pem, chain.pem, key.pem.
    #[arg(long)]
    pub pack: PathBuf,
    /// The line's credential (made by `certline ca enroll --role line`).
    #[arg(long, env = "CERTLINE_LINE_CREDENTIAL")]
    pub credential: PathBuf,
    /// Time limit of one device operation, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Fuel budget of each call into the plugin.
    #[arg(long, default_value_t = Limits::default().fuel)]
    pub fuel: u64,
    /// Memory cap of the plugin, MiB.
    #[arg(long, default_value_t = Limits::default().memory >> 20)]
    pub memory_mib: usize,
}

#[derive(Args, Debug)]
pub struct TryArgs {
    #[command(flatten)]
    pub link: LinkArgs,
    /// Send the pack even if the device reports another id (to test the
    /// device's own check).
    #[arg(long)]
    pub no_precheck: bool,
    /// Print every byte the plugin sends and receives on the link (after
    /// TLS), on stderr: `>` to the device, `<` from it.
    #[arg(long)]
    pub trace: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A link that prints what passes through it (`plugin try --trace`).
struct Traced {
    inner: Box<dyn DeviceLink>,
}

/// Bytes as a person reads them: text where they are text, hex otherwise.
fn show_bytes(data: &[u8]) -> String {
    let text = data
        .iter()
        .all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    if text {
        format!("{:?}", String::from_utf8_lossy(data))
    } else {
        hex::encode(data)
    }
}

impl DeviceLink for Traced {
    fn read(&mut self, max: usize, timeout: Duration) -> Result<Vec<u8>, link::LinkFailure> {
        let got = self.inner.read(max, timeout);
        match &got {
            Ok(bytes) => eprintln!("< {} bytes: {}", bytes.len(), show_bytes(bytes)),
            Err(e) => eprintln!("< read failed: {e}"),
        }
        got
    }

    fn write_within(&mut self, data: &[u8], timeout: Duration) -> Result<(), link::LinkFailure> {
        eprintln!("> {} bytes: {}", data.len(), show_bytes(data));
        let sent = self.inner.write_within(data, timeout);
        if let Err(e) = &sent {
            eprintln!("> write failed: {e}");
        }
        sent
    }

    fn close(&mut self) {
        eprintln!("- link closed by the host");
        self.inner.close()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub link: LinkArgs,
    /// How many writes (and as many host-overhead probes) to time.
    #[arg(long, default_value_t = 200)]
    pub writes: u32,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::New(args) => new(args),
        PluginCommand::Check(args) => check(args),
        PluginCommand::Try(args) => try_write(args),
        PluginCommand::Bench(args) => bench(args),
    }
}

fn new(args: NewArgs) -> anyhow::Result<()> {
    let lang = args.lang;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let files = super::template::create(&super::template::NewPlugin {
        name: &args.name,
        model: &args.model,
        dir: &dir,
        source: &source,
        lang,
    })?;
    println!(
        "made plugin {} for model {} in {}:",
        args.name,
        args.model,
        dir.display()
    );
    for f in &files {
        println!("  {}", f.display());
    }
    let once = match lang {
        Lang::Rust => "rustup target add wasm32-wasip2",
        Lang::Python => "pip install componentize-py",
    };
    println!("next: {once} (once), then {}/try.sh", dir.display());
    Ok(())
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let engine = PluginEngine::new(Limits::default())?;
    let p = engine.load(&args.file)?;
    let report = serde_json::json!({
        "file": p.path,
        "sha256": p.sha256,
        "size": p.size,
        "interface": format!("{}@{}", super::bindings::PACKAGE, p.interface),
        "name": p.info.name,
        "version": p.info.version,
        "models": p.info.models,
        "exports": p.exports,
        "imports": p.imports,
        "compile_ms": p.compile_time.as_millis() as u64,
    });
    emit(args.json, &report, || {
        println!(
            "{}: plugin {} {}",
            p.path.display(),
            p.info.name,
            p.info.version
        );
        println!(
            "  interface: {}@{} (supported)",
            super::bindings::PACKAGE,
            p.interface
        );
        println!("  models:    {}", p.info.models.join(", "));
        println!("  exports:   {}", p.exports.join(", "));
        println!("  imports:   {}", p.imports.join(", "));
        println!("  sha256:    {}", p.sha256);
        println!(
            "  size:      {} bytes, compiled in {} ms",
            p.size,
            p.compile_time.as_millis()
        );
    })
}

/// Everything `try` and `bench` set up before talking to the device.
struct Setup {
    plugin: Plugin,
    job: WriteJob,
    addr: DeviceAddr,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

fn setup(args: &LinkArgs) -> anyhow::Result<Setup> {
    let limits = Limits {
        fuel: args.fuel,
        memory: args.memory_mib << 20,
        deadline: Duration::from_millis(args.timeout_ms),
    };
    let engine = PluginEngine::new(limits)?;
    let plugin = engine.load(&args.plugin)?;
    let pack = Pack::read_dir(&args.pack)?;
    let job = WriteJob::new(&pack).with_context(|| format!("pack {}", args.pack.display()))?;
    if !plugin.serves(job.device_id.model()) {
        anyhow::bail!(
            "plugin {} serves model codes {}; the pack is for {}",
            plugin.name(),
            plugin.info.models.join(", "),
            job.device_id
        );
    }
    let cred = Credential::load(&args.credential)?;
    Ok(Setup {
        plugin,
        job,
        addr: DeviceAddr::parse(&args.device)?,
        tls: link::line_config(&cred)?,
        timeout: Duration::from_millis(args.timeout_ms),
    })
}

impl Setup {
    fn connect(&self) -> anyhow::Result<Box<dyn DeviceLink>> {
        Ok(Box::new(link::connect(
            &self.addr,
            self.tls.clone(),
            self.timeout,
        )?))
    }
}

fn try_write(args: TryArgs) -> anyhow::Result<()> {
    let s = setup(&args.link)?;
    let mut device = s.connect()?;
    if args.trace {
        eprintln!("- tracing the link to {} (after TLS)", device.describe());
        device = Box::new(Traced { inner: device });
    }
    let described = device.describe();
    let precheck = if args.no_precheck {
        Precheck::Skip
    } else {
        Precheck::CheckId
    };
    let result = s.plugin.write(&mut device, &s.job, precheck);
    device.close();
    let report = result.with_context(|| format!("writing {} to {described}", s.job.device_id))?;
    let value = serde_json::json!({
        "plugin": { "name": s.plugin.info.name, "version": s.plugin.info.version, "file": s.plugin.path },
        "link": described,
        "report": report,
    });
    emit(args.json, &value, || {
        println!(
            "plugin {} {} on {described}",
            s.plugin.info.name, s.plugin.info.version
        );
        match &report.before {
            Some(b) => println!(
                "device {} held {}",
                b.device_id,
                b.fingerprint
                    .as_deref()
                    .map_or("no identity".to_string(), |f| format!("certificate {f}"))
            ),
            None => println!("device id not checked first (--no-precheck)"),
        }
        println!("wrote {}: received, written", report.device_id);
        println!(
            "read back certificate {} (matches the pack)",
            report.read_back.fingerprint.as_deref().unwrap_or_default()
        );
        println!("proof of possession verified");
    })
}

/// Mean and median of a set of durations, in microseconds.
fn stats(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort();
    let n = samples.len().max(1) as u128;
    let mean = samples.iter().map(|d| d.as_micros()).sum::<u128>() / n;
    let median = samples.get(samples.len() / 2).map_or(0, |d| d.as_micros());
    let p99 = samples
        .get(samples.len() * 99 / 100)
        .map_or(0, |d| d.as_micros());
    serde_json::json!({ "mean_us": mean as u64, "median_us": median as u64, "p99_us": p99 as u64 })
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let s = setup(&args.link)?;
    let n = args.writes.max(1);

    // 1. The host alone: fresh store + instantiate from InstancePre, and one call.
    let mut instantiate = Vec::new();
    let mut with_call = Vec::new();
    for _ in 0..n {
        let (i, c) = s.plugin.overhead_probe()?;
        instantiate.push(i);
        with_call.push(c);
    }

    // 2. Full writes, each with its own TLS handshake, as a line does them.
    let started = Instant::now();
    let mut full = Vec::new();
    let mut host_share = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut device = s.connect()?;
        let report = s.plugin.write(&mut device, &s.job, Precheck::CheckId)?;
        device.close();
        full.push(t.elapsed());
        host_share.push(report.instantiate);
    }
    let wall = started.elapsed();

    // 3. Writes on one link: the same without the handshake.
    let mut device = s.connect()?;
    let mut on_link = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        s.plugin.write(&mut device, &s.job, Precheck::CheckId)?;
        on_link.push(t.elapsed());
    }
    device.close();

    let per_sec = f64::from(n) / wall.as_secs_f64();
    let value = serde_json::json!({
        "plugin": s.plugin.info.name,
        "device": args.link.device,
        "writes": n,
        "compile_ms": s.plugin.compile_time.as_millis() as u64,
        "host_store_and_instantiate": stats(instantiate.clone()),
        "host_store_instantiate_and_call": stats(with_call.clone()),
        "instantiate_within_writes": stats(host_share),
        "full_write_with_handshake": stats(full.clone()),
        "write_on_open_link": stats(on_link.clone()),
        "full_writes_per_second": (per_sec * 10.0).round() / 10.0,
    });
    emit(args.json, &value, || {
        let us = |v: &serde_json::Value, k: &str| v[k]["median_us"].as_u64().unwrap_or(0);
        println!(
            "plugin {} against {} ({n} runs each; medians)",
            s.plugin.info.name, args.link.device
        );
        println!(
            "  compile (once):                          {} ms",
            s.plugin.compile_time.as_millis()
        );
        println!(
            "  host: store + instantiate:               {} us",
            us(&value, "host_store_and_instantiate")
        );
        println!(
            "  host: store + instantiate + one call:    {} us",
            us(&value, "host_store_instantiate_and_call")
        );
        println!(
            "  full write (handshake, write, read-back, proof): {} us",
            us(&value, "full_write_with_handshake")
        );
        println!(
            "  write on an open link (no handshake):    {} us",
            us(&value, "write_on_open_link")
        );
        println!("  full writes per second:                  {per_sec:.1}");
    })
}
