use clap::Parser;

fn main() -> std::process::ExitCode {
    // Crash tests set fail points through FAILPOINTS (only with the `failpoints` feature).
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
