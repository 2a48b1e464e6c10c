//! The `certline` command line: one subcommand per role. Each role owns its own
//! argument types (`<role>::cli`); this file only dispatches.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "certline",
    version,
    about = "Per-device identity certificates for factory production lines"
)]
pub struct Cli {
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print the report as JSON. Accepted before or after the subcommand; a
    /// command's own `--json` reads the same flag.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The certificate authority: issues device identities, keeps the ledger, revokes.
    #[command(subcommand)]
    Ca(crate::ca::cli::CaCommand),
    /// A reference device (flash and NVRAM as files) speaking the example protocols.
    DeviceSim(crate::device_sim::cli::DeviceSimArgs),
    /// The remote-management center: decides contract / no contract / revoked from a device's certificate.
    Center(crate::center::cli::CenterArgs),
    /// The whole system on loopback with embedded defaults, then a summary.
    Demo(crate::demo::DemoArgs),
    /// One production line's terminal: scanner in, station and device out.
    Line(crate::line::cli::LineArgs),
    /// A device vendor's tools: check a plugin, try it against a device.
    #[command(subcommand)]
    Plugin(crate::plugin::cli::PluginCommand),
    /// The factory's Lua scripts: check one, measure what they cost.
    #[command(subcommand)]
    Script(crate::script::cli::ScriptCommand),
    /// The factory's station: plans, the day's fetch, the encrypted stock, lines, admin.
    #[command(subcommand)]
    Station(crate::station::cli::StationCommand),
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CERTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(cmd) => crate::ca::cli::run(cmd),
        Command::DeviceSim(args) => crate::device_sim::cli::run(args),
        Command::Line(args) => crate::line::cli::run(args),
        Command::Plugin(cmd) => crate::plugin::cli::run(cmd),
        Command::Script(cmd) => crate::script::cli::run(cmd),
        Command::Station(cmd) => crate::station::cli::run(cmd),
        Command::Demo(args) => crate::demo::run(args),
        Command::Center(args) => crate::center::cli::run(args),
    }
}
