//! `certline script check|bench`: try a factory script without a running
//! line or station, and measure what scripts cost.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::line::{LineScript, ParseOutcome, Step};
use super::retention::{PackFacts, RetentionScript};
use super::Limits;

#[derive(Subcommand, Debug)]
pub enum ScriptCommand {
    /// Load a script as the line or station would (sandbox, budget,
    /// self-check) and optionally run scans through it.
    Check(CheckArgs),
    /// Script overhead per scan and reload latency.
    Bench(super::bench::BenchArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// line.lua or retention.lua (the role follows the name unless --role says).
    pub file: PathBuf,
    #[arg(long, value_parser = ["line", "retention"])]
    pub role: Option<String>,
    /// The factory.toml whose models the script sees as host.models (default:
    /// the one beside the script, if any).
    #[arg(long, value_name = "FILE")]
    pub factory: Option<PathBuf>,
    /// A scan to run through a line script (repeatable).
    #[arg(long)]
    pub scan: Vec<String>,
    /// A pack to decide with a retention script: MODEL:AGE_DAYS[:flagged] (repeatable).
    #[arg(long)]
    pub pack: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct CheckReport {
    file: PathBuf,
    role: String,
    /// The role came from the file name, not from --role.
    role_guessed: bool,
    sha256: String,
    factory: FactoryUsed,
    results: Vec<serde_json::Value>,
}

pub fn run(cmd: ScriptCommand) -> anyhow::Result<()> {
    match cmd {
        ScriptCommand::Check(args) => check(args),
        ScriptCommand::Bench(args) => super::bench::run(args),
    }
}

/// Where `host.models` came from, in words and for `--json`.
#[derive(Debug, Serialize)]
struct FactoryUsed {
    /// The factory.toml read, or null when there was none.
    file: Option<PathBuf>,
    /// How it was found: "--factory", "beside the script" or "none".
    how: &'static str,
}

impl FactoryUsed {
    fn describe(&self) -> String {
        match &self.file {
            Some(f) => format!("models from {} ({})", f.display(), self.how),
            None => format!(
                "no {} beside the script, so host.models is empty (pass --factory FILE to use one)",
                super::factory::FACTORY_FILE
            ),
        }
    }
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let guessed = args.role.is_none();
    let role = args.role.clone().unwrap_or_else(|| {
        if args
            .file
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("retention"))
        {
            "retention".into()
        } else {
            "line".into()
        }
    });
    let source = std::fs::read(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let factory = match &args.factory {
        Some(f) => FactoryUsed {
            file: Some(f.clone()),
            how: "--factory",
        },
        None => {
            let beside = dir.join(super::factory::FACTORY_FILE);
            if beside.exists() {
                FactoryUsed {
                    file: Some(beside),
                    how: "beside the script",
                }
            } else {
                FactoryUsed {
                    file: None,
                    how: "none",
                }
            }
        }
    };
    let models = match &factory.file {
        Some(f) => super::factory::FactoryConfig::read(f)?.models_json(),
        None => serde_json::Value::Object(Default::default()),
    };
    // A refusal says what the check assumed, so a copy outside its folder
    // or a guessed role is visible in the error itself.
    let explain = |e: super::ScriptError| {
        let mut why = format!("refused: {e}\n  ({})", factory.describe());
        if guessed {
            let other = if role == "line" { "retention" } else { "line" };
            why.push_str(&format!(
                "\n  (checked as a {role} script, guessed from the file name; pass --role {other} if it is a {other} script)"
            ));
        }
        anyhow::anyhow!(why)
    };
    let mut results = Vec::new();
    let sha256 = if role == "line" {
        let line = LineScript::load(&args.file, &source, "check", models, Limits::default())
            .map_err(explain)?;
        for scan in &args.scan {
            results.push(match line.on_scan(scan) {
                Ok((ParseOutcome::Device(p), steps)) => serde_json::json!({
                    "scan": scan, "id": p.id.to_string(), "format": p.format,
                    "symbology": p.symbology, "fields": p.fields, "steps": steps,
                }),
                Ok((ParseOutcome::NotADevice(why), _)) => {
                    serde_json::json!({ "scan": scan, "refused": why,
                        "code": crate::wire::line::codes::MALFORMED_BARCODE,
                        "next": crate::wire::line::advice(crate::wire::line::codes::MALFORMED_BARCODE) })
                }
                Ok((ParseOutcome::Refused { code, why }, _)) => {
                    serde_json::json!({ "scan": scan, "refused": why, "code": code,
                        "next": crate::wire::line::advice(&code) })
                }
                Err(e) => serde_json::json!({ "scan": scan, "error": e.message }),
            });
        }
        line.script().sha256().to_string()
    } else {
        let policy = RetentionScript::load(&args.file, &source, models, Limits::default())
            .map_err(explain)?;
        for spec in &args.pack {
            let mut parts = spec.split(':');
            let model = parts.next().unwrap_or_default().to_string();
            let days: f64 = parts.next().unwrap_or("0").parse().map_err(|_| {
                anyhow::anyhow!("--pack {spec:?}: expected MODEL:AGE_DAYS[:flagged]")
            })?;
            let flagged = parts.next() == Some("flagged");
            let facts = PackFacts {
                id: format!("{model}-1"),
                model,
                serial: "1".into(),
                cert_serial: "01".into(),
                line: "check".into(),
                written_at: 0,
                age_secs: (days * 86_400.0) as i64,
                flagged,
            };
            results.push(match policy.decide(&facts) {
                Ok(v) => {
                    serde_json::json!({ "pack": spec, "decision": format!("{v:?}").to_lowercase() })
                }
                Err(e) => serde_json::json!({ "pack": spec, "error": e.message }),
            });
        }
        policy.script().sha256().to_string()
    };
    let report = CheckReport {
        file: args.file.clone(),
        role: role.clone(),
        role_guessed: guessed,
        sha256,
        factory,
        results,
    };
    crate::command::emit(args.json, &report, || {
        println!(
            "{}: loads and passes its self-check as a {role} script{}",
            args.file.display(),
            if guessed {
                " (role guessed from the file name; --role says otherwise)"
            } else {
                ""
            }
        );
        println!("  {}", report.factory.describe());
        for r in &report.results {
            println!("  {r}");
        }
    })?;
    let failed = report.results.iter().any(|r| r.get("error").is_some());
    if failed {
        anyhow::bail!("a call failed (see above)");
    }
    Ok(())
}

/// Steps as the operator reads them.
pub fn describe_steps(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| match s {
            Step::Confirm { .. } => "confirm",
            Step::Message { .. } => "message",
            Step::Provision => "provision",
            Step::Refuse { .. } => "refuse",
        })
        .collect::<Vec<_>>()
        .join(",")
}
