//! `simuboost-daemon`: runs a workload in a KVM VM and records it: incremental checkpoints, the
//! event log and per-interval working sets, written as a run directory (docs/FORMAT.md).

mod cli;
mod guest_image;
mod interval;
mod record;
mod run;
mod trace;
mod trace_only;
mod upload;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    if let Err(message) = cli::check_values(&command) {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit();
    }
    let result = match command {
        Command::Run(args) => run::run(&args),
        Command::Workloads => {
            run::print_workloads();
            Ok(run::Outcome::Success)
        }
        Command::Mkdisk(args) => run::mkdisk(&args).map(|()| run::Outcome::Success),
        Command::Upload(args) => upload::upload(&args).map(|()| run::Outcome::Success),
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => {
            eprintln!(
                "simuboost-daemon: error: {}",
                simuboost_report::error_message(err.as_ref())
            );
            ExitCode::from(run::EXIT_ERROR)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
