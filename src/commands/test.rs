//! `dbimage test`: boot an image and wait until its database answers.

use crate::host_tools::{self, Group};
use std::time::Duration;

use crate::boot::{self, BootError, BootOptions};
use crate::build::manifest;
use crate::cli::TestArgs;
use crate::commands::UsageError;

/// Runs `dbimage test`.
pub fn run(args: TestArgs) -> anyhow::Result<()> {
    if !args.image.is_file() {
        return Err(UsageError(format!("image {} not found", args.image.display())).into());
    }
    let ds = manifest::read_beside(&args.image).map_err(|e| UsageError(e.to_string()))?.datastore;
    let boot = if ds.arch == crate::arch::Arch::Ppc64le { Group::BootPpc64le } else { Group::Boot };
    host_tools::require(&[Group::Boot, boot], &ds.test.probe.iter().take(1).map(String::as_str).collect::<Vec<_>>())?;
    let defaults = BootOptions::for_arch(ds.arch);
    let opts = BootOptions {
        timeout: args.timeout.map_or(defaults.timeout, Duration::from_secs),
        memory_mib: args.memory.unwrap_or(defaults.memory_mib),
        ..defaults
    };
    let report = match boot::boot_and_probe(&args.image, &ds, &opts) {
        Ok(report) => report,
        // The exit code for an interrupt comes from the shared handler.
        Err(BootError::Interrupted) => return Err(crate::run::Interrupted.into()),
        Err(e) => return Err(e.into()),
    };
    println!(
        "{} answered on {}:{} after {} s (boot + setup)",
        report.db,
        boot::HOST,
        report.port,
        report.elapsed.as_secs()
    );
    if let Some(after) = report.setup_after {
        tracing::info!("guest setup had finished after {} s", after.as_secs());
    }
    if !report.probe_stdout.is_empty() {
        println!("{}", report.probe_stdout);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::arch::Arch;
    use crate::boot::BootOptions;
    use crate::cli::Cli;

    /// `dbimage test --help` states the defaults the code applies.
    #[test]
    fn boot_test_help_names_the_default_timeouts() {
        let mut cli = Cli::command();
        let help = cli.find_subcommand_mut("test").unwrap().render_long_help().to_string();
        for arch in [Arch::Amd64, Arch::Ppc64le] {
            let opts = BootOptions::for_arch(arch);
            let timeout = format!("{} for {arch}", opts.timeout.as_secs());
            let memory = format!("{} for {arch}", opts.memory_mib);
            assert!(help.contains(&timeout) && help.contains(&memory), "{timeout}, {memory}: {help}");
        }
    }
}
