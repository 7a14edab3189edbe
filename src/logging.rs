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
            let f = private_file(p, false).with_context(|| format!("cannot create log file {}", p.display()))?;
            Some(fmt::layer().with_writer(Mutex::new(f)).with_ansi(false).with_filter(LevelFilter::DEBUG))
        }
        None => None,
    };
    tracing_subscriber::registry().with(term).with(file).init();
    Ok(LogGuard)
}

/// Opens a log for writing, readable by root only (a log can quote
/// what a secret's redaction missed), whether or not it existed.
pub fn private_file(path: &Path, append: bool) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn logs_are_private_and_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.log");
        private_file(&new, false).unwrap();
        let old = dir.path().join("old.log");
        std::fs::write(&old, "before\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&old, true).unwrap();
        for p in [&new, &old] {
            assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "before\n", "append keeps what was there");
        let target = dir.path().join("shadow");
        std::fs::write(&target, "x").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link.log")).unwrap();
        assert!(private_file(&dir.path().join("link.log"), false).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");
    }
}
