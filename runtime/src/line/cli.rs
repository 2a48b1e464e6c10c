//! `certline line ...`: run a line, show its outbox, measure it.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LineArgs {
    #[command(subcommand)]
    pub command: Option<LineCommand>,
    /// The line's configuration (TOML): station, credential, scanner, device
    /// link, plugin and script folders. Reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Operator lines as JSON objects, one a line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum LineCommand {
    /// Results waiting in the line's outbox, and the last delivered ones.
    Status {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// How many delivered results to show.
        #[arg(long, default_value_t = 10)]
        last: usize,
        #[arg(long)]
        json: bool,
    },
    /// Scan-to-written time against real CA and station processes and a
    /// zero-delay simulated device: median and 99th percentile.
    Bench(super::bench::BenchArgs),
}

pub fn run(args: LineArgs) -> anyhow::Result<()> {
    match args.command {
        Some(LineCommand::Status { config, last, json }) => super::run::status(&config, json, last),
        Some(LineCommand::Bench(b)) => super::bench::run(b),
        None => {
            let Some(config) = args.config else {
                anyhow::bail!("certline line needs --config FILE (see certline line --help)");
            };
            super::run::run(&config, args.json)
        }
    }
}
