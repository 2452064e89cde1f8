//! `admedia`: the orchestrator server. Everything is wired in `startup`.

use admedia::config::{Cli, Command};
use admedia::startup::Application;
use admedia_process::telemetry;
#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::from_env_and_args() {
        Ok(cli) => cli,
        Err(admedia::config::CliError::Exit(e)) => e.exit(),
        Err(admedia::config::CliError::Invalid(message)) => {
            eprintln!("admedia: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let settings = match cli.command {
        Some(Command::Serve(settings)) => *settings,
        Some(Command::Migrate { database_url }) => {
            telemetry::init(cli.serve.log_format);
            return match admedia::startup::migrate(&database_url).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("admedia migrate: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => cli.serve,
    };
    telemetry::init(settings.log_format);
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            // Once, on stderr: the log on stdout would only repeat it.
            eprintln!("admedia: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("admedia: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
