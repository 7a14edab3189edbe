//! `dbimage test`: boot an image and wait until its database answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::boot::{self, BootError, BootOptions};
use crate::catalog::Resolved;
use crate::cli::TestArgs;
use crate::commands::UsageError;

/// The part of an image's manifest this command needs; the rest is ignored
/// so that manifests can grow without breaking `test`.
#[derive(Debug, Deserialize)]
struct Manifest {
    datastore: Resolved,
}

/// The manifest beside an image: `images/NAME.qcow2` → `images/NAME.json`.
fn manifest_path(image: &Path) -> PathBuf {
    image.with_extension("json")
}

fn read_manifest(image: &Path) -> anyhow::Result<Resolved> {
    let path = manifest_path(image);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(UsageError(format!(
                "no manifest for {}: expected {} (written by `dbimage make` beside the image)",
                image.display(),
                path.display()
            ))
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let manifest: Manifest = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not a dbimage manifest", path.display()))?;
    Ok(manifest.datastore)
}

/// Runs `dbimage test`.
pub fn run(args: TestArgs) -> anyhow::Result<()> {
    if !args.image.is_file() {
        return Err(UsageError(format!("image {} not found", args.image.display())).into());
    }
    let ds = read_manifest(&args.image)?;
    let opts = BootOptions {
        timeout: Duration::from_secs(args.timeout),
        memory_mib: args.memory,
        ..BootOptions::default()
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
    use super::*;

    #[test]
    fn boot_manifest_sits_beside_the_image() {
        assert_eq!(
            manifest_path(Path::new("images/pg-15.qcow2")),
            PathBuf::from("images/pg-15.json")
        );
    }

    #[test]
    fn boot_missing_manifest_names_the_expected_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("redis-7.qcow2");
        let err = read_manifest(&image).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!(
            "expected {}",
            dir.path().join("redis-7.json").display()
        )));
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn boot_manifest_reads_only_the_datastore() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("redis-7.qcow2");
        let json = r#"{
            "name": "redis-7", "sha256": "ab", "built": {"by": "x"},
            "datastore": {
                "db": "redis", "version": "7.0", "source": "distro", "release": "bookworm",
                "arch": "amd64", "packages": ["redis-server"], "service": "redis-server",
                "trove_manager": "redis", "element": "redis", "port": 6379,
                "test": {"guest_setup": "true", "probe": ["redis-cli", "-p", "{port}", "ping"]}
            }
        }"#;
        std::fs::write(manifest_path(&image), json).unwrap();
        let ds = read_manifest(&image).unwrap();
        assert_eq!((ds.db.as_str(), ds.port), ("redis", 6379));
        assert!(ds.test.env.is_empty());
    }
}
