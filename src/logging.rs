//! Logging: concise progress on the terminal, everything in `--log-file`.
//!
//! Command lines and their output are logged at debug level under the
//! `cmd` target by the runner; they reach the terminal only with
//! `--verbose` but always reach the log file.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// Keeps the log file open for the life of the program.
pub struct LogGuard;

/// Sets up the terminal and file loggers.
pub fn init(log_file: Option<&Path>, verbose: bool, quiet: bool) -> anyhow::Result<LogGuard> {
    let term_level = if quiet {
        LevelFilter::WARN
    } else if verbose {
        LevelFilter::DEBUG
    } else {
        LevelFilter::INFO
    };
    let term = fmt::layer()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_filter(term_level);
    let file = match log_file {
        Some(p) => {
            let f = File::create(p).with_context(|| format!("cannot create log file {}", p.display()))?;
            Some(fmt::layer().with_writer(Mutex::new(f)).with_ansi(false).with_filter(LevelFilter::DEBUG))
        }
        None => None,
    };
    tracing_subscriber::registry().with(term).with(file).init();
    Ok(LogGuard)
}
