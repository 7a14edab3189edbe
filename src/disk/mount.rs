//! Mounting, always paired with an unmount on the teardown stack.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
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

/// Where to mount: a host path, or a directory inside an image opened
/// without following links, mounted through its descriptor
/// (`/proc/self/fd/N`) so the image cannot swap a symlink in between.
#[derive(Debug)]
pub struct MountPoint<'a> {
    path: PathBuf,
    fd: Option<&'a OwnedFd>,
}

impl<'a> MountPoint<'a> {
    /// The directory behind `fd`, known to the teardown stack as `path`.
    pub fn confined(path: PathBuf, fd: &'a OwnedFd) -> MountPoint<'a> {
        MountPoint { path, fd: Some(fd) }
    }

    /// What the mount system call is given.
    fn syscall_path(&self) -> PathBuf {
        match self.fd {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => self.path.clone(),
        }
    }
}

impl From<&Path> for MountPoint<'_> {
    fn from(path: &Path) -> Self {
        MountPoint { path: path.to_path_buf(), fd: None }
    }
}

impl From<&PathBuf> for MountPoint<'_> {
    fn from(path: &PathBuf) -> Self {
        MountPoint { path: path.clone(), fd: None }
    }
}

fn register(td: &mut Teardown, what: String, target: &MountPoint, result: io::Result<Mount>) -> Result<(), MountError> {
    match result {
        Ok(_) => {
            td.push(Undo::Unmount { path: target.path.clone() });
            Ok(())
        }
        Err(source) => Err(MountError { what, target: target.path.clone(), source }),
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
    register(td, device.display().to_string(), &target.into(), r)
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
    register(td, device.display().to_string(), &target.into(), r)
}

/// Mounts a kernel filesystem (`proc`, `sysfs`, `devpts`) on `target`.
pub fn special<'a>(td: &mut Teardown, fstype: &str, target: impl Into<MountPoint<'a>>, data: &str) -> Result<(), MountError> {
    let target = target.into();
    let r = Mount::builder()
        .fstype(FilesystemType::Manual(fstype))
        .flags(MountFlags::NOSUID | MountFlags::NOEXEC)
        .data(data)
        .mount(fstype, target.syscall_path());
    register(td, fstype.to_string(), &target, r)
}

/// Bind-mounts `source` on `target`, as a slave: mounts made below it
/// (by a maintainer script in a chroot) never reach the host's tree.
pub fn bind<'a>(td: &mut Teardown, source: &Path, target: impl Into<MountPoint<'a>>) -> Result<(), MountError> {
    let target = target.into();
    let r = Mount::builder().flags(MountFlags::BIND).mount(source, target.syscall_path());
    register(td, source.display().to_string(), &target, r)?;
    // By path: the descriptor names the directory under the new mount, and
    // the path now leads into our own mount.
    let flags = nix::mount::MsFlags::MS_SLAVE | nix::mount::MsFlags::MS_REC;
    nix::mount::mount(None::<&str>, &target.path, None::<&str>, flags, None::<&str>).map_err(|e| MountError {
        what: format!("{} (making it a slave)", source.display()),
        target: target.path.clone(),
        source: e.into(),
    })
}
