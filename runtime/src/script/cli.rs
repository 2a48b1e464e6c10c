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
    sha256: String,
    results: Vec<serde_json::Value>,
}

pub fn run(cmd: ScriptCommand) -> anyhow::Result<()> {
    match cmd {
        ScriptCommand::Check(args) => check(args),
        ScriptCommand::Bench(args) => super::bench::run(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
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
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let models = super::factory::folder_models(&dir)?;
    let mut results = Vec::new();
    let sha256 = if role == "line" {
        let line = LineScript::load(&args.file, &source, "check", models, Limits::default())
            .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        for scan in &args.scan {
            results.push(match line.on_scan(scan) {
                Ok((ParseOutcome::Device(p), steps)) => serde_json::json!({
                    "scan": scan, "id": p.id.to_string(), "format": p.format,
                    "symbology": p.symbology, "steps": steps,
                }),
                Ok((ParseOutcome::NotADevice(why), _)) => {
                    serde_json::json!({ "scan": scan, "refused": why })
                }
                Err(e) => serde_json::json!({ "scan": scan, "error": e.message }),
            });
        }
        line.script().sha256().to_string()
    } else {
        let policy = RetentionScript::load(&args.file, &source, models, Limits::default())
            .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
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
        sha256,
        results,
    };
    crate::command::emit(args.json, &report, || {
        println!(
            "{}: loads and passes its self-check as a {role} script",
            args.file.display()
        );
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
