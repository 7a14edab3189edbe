//! Mounting, always paired with an unmount on the teardown stack.

use std::io;
use std::path::{Path, PathBuf};

use sys_mount::{FilesystemType, Mount, MountFlags};

use super::guard::{Teardown, Undo};

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot mount {what} on {target}: {source}")]
pub struct MountError {
    /// What was being mounted.
    pub what: String,
    /// Where.
    pub target: PathBuf,
    /// The kernel's answer.
    pub source: io::Error,
}

fn register(
    td: &mut Teardown,
    what: String,
    target: &Path,
    result: io::Result<Mount>,
) -> Result<(), MountError> {
    match result {
        Ok(_) => {
            td.push(Undo::Unmount { path: target.to_path_buf() });
            Ok(())
        }
        Err(source) => Err(MountError { what, target: target.to_path_buf(), source }),
    }
}

/// Mounts a filesystem of type `fstype` from `device` on `target`.
pub fn filesystem(
    td: &mut Teardown,
    device: &Path,
    target: &Path,
    fstype: &str,
) -> Result<(), MountError> {
    let r = Mount::builder().fstype(FilesystemType::Manual(fstype)).mount(device, target);
    register(td, device.display().to_string(), target, r)
}

/// Mounts a foreign image's ext filesystem: `nodev,nosuid` (and `noexec`
/// unless the image's own programs must run), and `errors=remount-ro`
/// whatever its superblock asks (`errors=panic` would let a crafted image
/// stop the host).
pub fn foreign(td: &mut Teardown, device: &Path, target: &Path, fstype: &str, exec: bool) -> Result<(), MountError> {
    let mut flags = MountFlags::NODEV | MountFlags::NOSUID;
    if !exec {
        flags |= MountFlags::NOEXEC;
    }
    let r = Mount::builder()
        .fstype(FilesystemType::Manual(fstype))
        .flags(flags)
        .data("errors=remount-ro")
        .mount(device, target);
    register(td, device.display().to_string(), target, r)
}

/// Mounts a kernel filesystem (`proc`, `sysfs`, `devpts`) on `target`.
pub fn special(
    td: &mut Teardown,
    fstype: &str,
    target: &Path,
    data: &str,
) -> Result<(), MountError> {
    let r = Mount::builder()
        .fstype(FilesystemType::Manual(fstype))
        .flags(MountFlags::NOSUID | MountFlags::NOEXEC)
        .data(data)
        .mount(fstype, target);
    register(td, fstype.to_string(), target, r)
}

/// Bind-mounts `source` on `target`.
pub fn bind(td: &mut Teardown, source: &Path, target: &Path) -> Result<(), MountError> {
    let r = Mount::builder().flags(MountFlags::BIND).mount(source, target);
    register(td, source.display().to_string(), target, r)
}
