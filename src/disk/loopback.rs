//! Loop devices for a disk image, with partition nodes made by `partx`.
//!
//! There is no udev here, so partition nodes come from `partx -a` (BLKPG),
//! which lets devtmpfs create `/dev/loopNpM`. The whole-disk device is kept
//! too: the bootloader is installed onto it and needs to see its partitions
//! as children of one disk.

use std::sync::Mutex;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use loopdev::{LoopControl, LoopDevice};

use super::guard::{Teardown, Undo};
use crate::run::{Cmd, RunError};

/// Errors attaching a disk image.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// No loop device could be set up.
    #[error("cannot attach {image} to a loop device: {source} (is the loop module loaded?)")]
    Attach {
        /// The image file.
        image: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// `partx` failed.
    #[error(transparent)]
    Partx(#[from] RunError),
    /// The partition nodes never appeared.
    #[error("partition node {0} did not appear after partx; is /dev a devtmpfs?")]
    NoNode(PathBuf),
}

/// A disk image attached to a loop device, with its partitions' nodes.
#[derive(Debug, Clone)]
pub struct AttachedDisk {
    /// The whole-disk device, e.g. `/dev/loop3`.
    pub device: PathBuf,
    /// Partition nodes in table order (`/dev/loop3p1`, …).
    pub partitions: Vec<PathBuf>,
}

/// Attaches `image` and creates nodes for its `count` partitions; both are
/// registered in `td` so they are undone in the right order.
pub fn attach(td: &mut Teardown, image: &Path, count: usize) -> Result<AttachedDisk, LoopError> {
    let device = attach_free(image)?;
    td.push(Undo::DetachLoop { device: device.clone() });
    Cmd::new("partx").arg("-a").arg(&device).run()?;
    td.push(Undo::DeletePartitions { device: device.clone() });
    let partitions: Vec<PathBuf> = (1..=count)
        .map(|n| PathBuf::from(format!("{}p{n}", device.display())))
        .collect();
    for p in &partitions {
        wait_for_node(p)?;
    }
    Ok(AttachedDisk { device, partitions })
}

/// Attaches `size` bytes of `file` from `offset` to a loop device of its
/// own (one filesystem of a disk image, without partition nodes);
/// `read_only` opens the file read-only and makes the device refuse writes.
pub fn attach_range(td: &mut Teardown, file: &Path, offset: u64, size: u64, read_only: bool) -> Result<PathBuf, LoopError> {
    let device = attach_free_with(file, |dev| dev.with().offset(offset).size_limit(size).read_only(read_only))?;
    td.push(Undo::DetachLoop { device: device.clone() });
    Ok(device)
}

/// Takes a free loop device; another process may grab the same one between
/// "find free" and "attach", so that race is retried.
fn attach_free(image: &Path) -> Result<PathBuf, LoopError> {
    attach_free_with(image, |dev| dev.with().part_scan(false))
}

/// [`attach_free`] with the attach options chosen by `options`.
fn attach_free_with(
    image: &Path,
    options: impl Fn(&LoopDevice) -> loopdev::AttachOptions<'_>,
) -> Result<PathBuf, LoopError> {
    let err = |source| LoopError::Attach { image: image.to_path_buf(), source };
    let control = LoopControl::open().map_err(err)?;
    let mut last = None;
    for _ in 0..10 {
        let dev: LoopDevice = control.next_free().map_err(err)?;
        match options(&dev).autoclear(true).attach(image) {
            Ok(()) => {
                let path = dev.path().ok_or_else(|| {
                    err(io::Error::other("attached loop device has no path"))
                })?;
                hold(&path, dev);
                return Ok(path);
            }
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => last = Some(e),
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(last.unwrap_or_else(|| io::Error::other("no free loop device"))))
}

/// Open descriptors of the loop devices this process attached. Every
/// device is attached with autoclear, which frees it at its last close: this
/// descriptor keeps it until the teardown stack detaches it, or until the
/// process dies, SIGKILL included, when the kernel closes it.
static HELD: Mutex<Vec<(PathBuf, LoopDevice)>> = Mutex::new(Vec::new());

fn hold(path: &Path, dev: LoopDevice) {
    if let Ok(mut held) = HELD.lock() {
        held.push((path.to_path_buf(), dev));
    }
}

/// Closes this process's descriptor of `device` (before detaching it).
pub fn release(device: &Path) {
    if let Ok(mut held) = HELD.lock() {
        held.retain(|(p, _)| p != device);
    }
}

fn wait_for_node(path: &Path) -> Result<(), LoopError> {
    for _ in 0..50 {
        if path.exists() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(LoopError::NoNode(path.to_path_buf()))
}
