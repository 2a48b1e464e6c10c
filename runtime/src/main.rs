use clap::Parser;

fn main() -> std::process::ExitCode {
    // Crash tests only: `FAILPOINTS=name=action;…` arms the `fail` points.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = certline::cli::Cli::parse();
    certline::cli::init_logging(cli.verbose);
    match certline::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
