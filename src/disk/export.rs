//! A disk image (QCOW2, VMDK, VDI, … anything QEMU reads) seen as a raw
//! disk without converting it: qemu-storage-daemon exports it over FUSE
//! onto a plain file that loop devices can attach to. Read-write, writes
//! go into the image itself (changed clusters only; untouched compressed
//! clusters stay as they are), which is what makes patching an image cheap
//! compared with a raw round trip; read-only, the image is opened
//! read-only and cannot change at all.

use std::fs;
use std::path::{Path, PathBuf};

use super::guard::{Teardown, Undo};
use crate::run::{Cmd, RunError};

/// Errors exporting an image.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The daemon could not be started or did not export.
    #[error("exporting {image} with qemu-storage-daemon: {source}")]
    Daemon {
        /// The image file.
        image: PathBuf,
        /// What failed.
        source: RunError,
    },
    /// A file around the export could not be made or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Formats whose images can name a backing file.
const BACKED_FORMATS: [&str; 3] = ["qcow2", "vmdk", "qed"];

/// How an export may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Writes go into the image.
    ReadWrite,
    /// The image is opened read-only; the export refuses writes.
    ReadOnly,
}

/// Exports `image` (of qemu's `format`: `qcow2`, `vmdk`, …) as a raw disk
/// at `raw` (created as an empty file first) until the teardown stack
/// stops the daemon, which flushes.
pub fn export_raw(td: &mut Teardown, image: &Path, format: &str, raw: &Path, access: Access) -> Result<(), ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    fs::write(raw, b"").map_err(io(raw))?;
    td.push(Undo::RemoveFile { path: raw.to_path_buf() });
    let pidfile = raw.with_extension("pid");
    // Blockdev options are comma-separated: a comma in a path is doubled.
    let esc = |p: &Path| p.display().to_string().replace(',', ",,");
    let read_only = access == Access::ReadOnly;
    let writable = if read_only { "off" } else { "on" };
    let file = serde_json::json!({"driver": "file", "node-name": "file", "filename": image, "read-only": read_only});
    let mut disk = serde_json::json!({"driver": format, "node-name": "disk", "file": "file", "read-only": read_only});
    // Never a backing file, whatever the image's header says (JSON is the
    // only syntax that can say null).
    if BACKED_FORMATS.contains(&format) {
        disk["backing"] = serde_json::Value::Null;
    }
    // --daemonize returns once the export is mounted, so no polling.
    Cmd::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(file.to_string())
        .arg("--blockdev")
        .arg(disk.to_string())
        .arg("--export")
        .arg(format!("type=fuse,id=raw,node-name=disk,mountpoint={},writable={writable}", esc(raw)))
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--daemonize")
        .run()
        .map_err(|source| ExportError::Daemon { image: image.to_path_buf(), source })?;
    let pid = fs::read_to_string(&pidfile).map_err(io(&pidfile))?;
    let pid: i32 = pid.trim().parse().map_err(|_| ExportError::Io {
        path: pidfile.clone(),
        source: std::io::Error::other("not a pid"),
    })?;
    td.push(Undo::RemoveFile { path: pidfile });
    td.push(Undo::StopDaemon { pid, comm: "qemu-storage-daemon".into(), mount: Some(raw.to_path_buf()) });
    Ok(())
}
