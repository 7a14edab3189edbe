//! The cloud-init NoCloud seed disk that prepares a booted image for a test.
//!
//! The seed is a tiny VFAT image labelled `CIDATA` holding `user-data` and
//! `meta-data`. It is built with `mkfs.vfat -C` and `mcopy` rather than by
//! mounting, because the hosts we run on may have no vfat in their kernel
//! and mounting would need root for no good reason.

use std::fs;
use std::path::{Path, PathBuf};

use crate::run::{Cmd, RunError};

/// Printed on the serial console once the guest setup script succeeded.
pub const SETUP_DONE_MARKER: &str = "DBIMAGE-SETUP-DONE";

/// Starts the line printed on the serial console when the guest setup failed.
pub const SETUP_FAILED_MARKER: &str = "DBIMAGE-SETUP-FAILED";

/// Where the guest keeps the setup script; under `/run` so that it (and the
/// password inside it) never reaches the image's disk, which is a snapshot
/// anyway.
const GUEST_SCRIPT: &str = "/run/dbimage-test/setup.sh";

/// Size of the seed filesystem in KiB: far more than two small files need,
/// and the smallest size `mkfs.vfat` creates without complaint.
const SEED_KIB: &str = "2048";

/// Errors building the seed disk.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Writing the seed's files failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `mkfs.vfat` or `mcopy` failed (or is missing: dosfstools, mtools).
    #[error("making the cloud-init seed disk: {0}")]
    Tool(#[from] RunError),
}

/// The cloud-init `meta-data` for one test run.
pub fn meta_data(instance_id: &str) -> String {
    format!("instance-id: {instance_id}\nlocal-hostname: dbimage-test\n")
}

/// The cloud-init `user-data` that runs `setup_script` as root and reports
/// its outcome on the guest's console device `console_tty` (`ttyS0`,
/// `hvc0`), the one QEMU captures.
///
/// `setup_script` must already have its placeholders substituted.
pub fn user_data(setup_script: &str, console_tty: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars, so quoting the
    // script this way survives any quotes, colons or indentation inside it.
    let content = json_quote(setup_script);
    let report = format!(
        "if sh {GUEST_SCRIPT}; then echo {SETUP_DONE_MARKER}; \
         else echo \"{SETUP_FAILED_MARKER} exit $?\"; fi > /dev/{console_tty} 2>&1 || true"
    );
    format!(
        "#cloud-config\n\
         write_files:\n  \
           - path: {GUEST_SCRIPT}\n    \
             owner: root:root\n    \
             permissions: \"0700\"\n    \
             content: {content}\n\
         runcmd:\n  \
           - [sh, -c, {report}]\n",
        report = json_quote(&report),
    )
}

fn json_quote(s: &str) -> String {
    // Serializing a &str cannot fail; the fallback only keeps this total.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Builds the seed disk `dir/seed.img` from the two documents; returns its path.
pub fn make_seed(dir: &Path, user_data: &str, meta_data: &str) -> Result<PathBuf, SeedError> {
    let write = |name: &str, text: &str| -> Result<PathBuf, SeedError> {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|source| SeedError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };
    let ud = write("user-data", user_data)?;
    let md = write("meta-data", meta_data)?;
    let image = dir.join("seed.img");
    // mkfs.vfat -C refuses to overwrite; a stale seed must not be reused.
    match fs::remove_file(&image) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SeedError::Write {
                path: image,
                source,
            });
        }
    }
    Cmd::new("mkfs.vfat")
        .args(["-n", "CIDATA", "-C"])
        .arg(&image)
        .arg(SEED_KIB)
        .run()?;
    Cmd::new("mcopy")
        .arg("-i")
        .arg(&image)
        .arg(&ud)
        .arg(&md)
        .arg("::")
        .run()?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtools(args: &[&str], image: &Path) -> String {
        Cmd::new(args[0])
            .arg("-i")
            .arg(image)
            .args(&args[1..])
            .output()
            .unwrap()
    }

    #[test]
    fn boot_seed_is_a_readable_cidata_disk() {
        let dir = tempfile::tempdir().unwrap();
        let script = "psql -c \"ALTER USER postgres PASSWORD 'abc'\"\nfoo: bar # not yaml\n";
        let img = make_seed(dir.path(), &user_data(script, "ttyS0"), &meta_data("dbimage-test-1")).unwrap();

        let listing = mtools(&["mdir", "::"], &img);
        assert!(listing.contains("CIDATA"), "{listing}");
        let ud = mtools(&["mtype", "::user-data"], &img);
        assert!(ud.starts_with("#cloud-config\n"), "{ud}");
        assert!(ud.contains("\"0700\""), "{ud}");
        let md = mtools(&["mtype", "::meta-data"], &img);
        assert!(md.contains("instance-id: dbimage-test-1"), "{md}");

        // A second seed in the same directory replaces the first.
        make_seed(dir.path(), &user_data("true", "ttyS0"), &meta_data("dbimage-test-2")).unwrap();
        let md = mtools(&["mtype", "::meta-data"], &img);
        assert!(md.contains("dbimage-test-2"), "{md}");
    }

    #[test]
    fn boot_user_data_round_trips_the_script() {
        let script = "a: 'b'\n  \"c\"\t\\d\n";
        let ud = user_data(script, "hvc0");
        // Every quoted scalar is JSON; check the script comes back intact.
        let content = ud
            .lines()
            .find_map(|l| l.trim().strip_prefix("content: "))
            .unwrap();
        let back: String = serde_json::from_str(content).unwrap();
        assert_eq!(back, script);
        assert!(ud.contains(SETUP_DONE_MARKER) && ud.contains(SETUP_FAILED_MARKER));
        assert!(ud.contains("> /dev/hvc0 2>&1") && !ud.contains("ttyS0"), "{ud}");
    }
}
