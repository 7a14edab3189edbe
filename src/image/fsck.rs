//! Checking a located root filesystem with `e2fsck -n -f`: read-only, the
//! filesystem is never repaired, only judged.

use std::path::Path;

use super::ImageError;
use super::partitions::Partition;
use crate::run::{Cmd, RunError};

/// Runs `e2fsck -n -f` on `device`, which holds `part` of `image` (an ext
/// filesystem, as [`super::inspect::locate_root`] returns). A filesystem
/// with errors is [`ImageError::FilesystemErrors`] with e2fsck's verdict
/// in one line; `image` names the disk in messages.
pub fn check_root(device: &Path, part: &Partition, image: &Path) -> Result<(), ImageError> {
    let fstype = part.filesystem.map(|f| f.name()).unwrap_or("ext4");
    match Cmd::new("e2fsck").args(["-n", "-f"]).arg(device).run() {
        Ok(()) => Ok(()),
        Err(RunError::Failed { status, tail, .. }) => Err(ImageError::FilesystemErrors {
            path: image.to_path_buf(),
            partition: part.number,
            fstype: fstype.to_string(),
            verdict: verdict(status.code(), &tail, &device.display().to_string()),
        }),
        Err(other) => Err(ImageError::Run(other)),
    }
}

/// One line out of e2fsck's exit code and last lines: what the code means
/// and the first problem it reported (the device's name taken out, since
/// the loop device means nothing to the user).
fn verdict(code: Option<i32>, tail: &[String], device: &str) -> String {
    let meaning = match code {
        Some(4) => "errors left uncorrected",
        Some(8) => "operational error (not a readable filesystem?)",
        Some(12) => "interrupted",
        _ => "failed",
    };
    let code = code.map_or_else(|| "killed".to_string(), |c| format!("exit {c}"));
    let problem = tail
        .iter()
        .map(|l| l.replace(device, "the filesystem"))
        .map(|l| l.trim().trim_end_matches("Fix? no").trim_end_matches("Ignore? no").trim().to_string())
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("e2fsck ")
                && !l.starts_with("Pass ")
                && !l.starts_with("the filesystem:")
                && !l.starts_with("***")
        });
    match problem {
        Some(p) => format!("e2fsck -n: {meaning} ({code}): {p}"),
        None => format!("e2fsck -n: {meaning} ({code})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_the_first_problem_without_the_device() {
        let tail: Vec<String> = [
            "e2fsck 1.47.0 (5-Feb-2023)",
            "Pass 1: Checking inodes, blocks, and sizes",
            "Pass 4: Checking reference counts",
            "Inode 12 ref count is 5, should be 1.  Fix? no",
            "",
            "/dev/loop7: ********** WARNING: Filesystem still has errors **********",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            verdict(Some(4), &tail, "/dev/loop7"),
            "e2fsck -n: errors left uncorrected (exit 4): Inode 12 ref count is 5, should be 1."
        );
        let tail = vec!["e2fsck: Bad magic number in super-block while trying to open /dev/loop7".to_string()];
        assert_eq!(
            verdict(Some(8), &tail, "/dev/loop7"),
            "e2fsck -n: operational error (not a readable filesystem?) (exit 8): e2fsck: Bad magic number in super-block while trying to open the filesystem"
        );
        assert_eq!(verdict(None, &[], "/dev/loop7"), "e2fsck -n: failed (killed)");
    }
}
