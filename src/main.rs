//! `dbimage`: parse the command line and dispatch. Behaviour lives in the
//! modules; this file only wires them together.

mod arch;
mod atomic;
mod boot;
mod build;
mod catalog;
mod cli;
mod clock;
mod cloud;
mod commands;
mod digest;
mod disk;
mod elements;
mod host_tools;
mod image;
mod logging;
mod queue;
mod remote;
mod run;
mod runtime;
mod settings;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = match logging::init(cli.log_file.as_deref(), cli.verbose, cli.quiet) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(commands::EXIT_USAGE);
        }
    };
    if let Err(e) = run::install_signal_handlers() {
        eprintln!("error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Make(args) => commands::make::run(args),
        Command::Test(args) => commands::test::run(args),
        Command::Datastores(args) => commands::datastores::run(args),
        Command::Cleanup => commands::cleanup::run(),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Flavor(args) => commands::flavor::run(args),
        Command::Publish(args) => commands::publish::run(args),
        Command::Upload(args) => commands::upload::run(args),
        Command::Import(args) => commands::import::run(args),
        Command::Playbook(args) => commands::playbook::run(args),
        Command::Prune(args) => commands::prune::run(args),
        Command::Queue(args) => commands::queue::run(args),
        Command::Worker(args) => commands::worker::run(args),
        Command::Jobs(args) => commands::jobs::run(args),
    };
    commands::exit(result)
}
