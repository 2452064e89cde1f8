//! `admedia-loadtest`: see `--help` and the crate docs.
//!
//! Exit codes: 0 the audit passed; 1 the audit found violations (listed
//! with the offending ids); 2 the run could not be carried out (bad flags,
//! no server, setup failure).

use std::process::ExitCode;

use admedia_loadtest::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match cli.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("admedia-loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let system = actix_rt::System::new();
    match system.block_on(admedia_loadtest::run::run(plan)) {
        Ok(outcome) if outcome.passed => ExitCode::SUCCESS,
        Ok(outcome) => {
            eprintln!(
                "admedia-loadtest: the audit failed; details in {}",
                outcome.report_dir.join("report.json").display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("admedia-loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
