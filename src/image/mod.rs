//! Reading existing images, as an unprivileged user.
//!
//! Nothing here mounts, attaches a loop device or uses nbd: a QCOW2 (or any
//! other format qemu-img reads) is first converted to a sparse raw file in a
//! temporary directory, then [`partitions`] reads the partition table from
//! the raw bytes and opens filesystems with the `ext4-view` crate, and
//! [`inspect`] turns what it finds into a report.

pub mod fsck;
pub mod inspect;
pub mod partitions;
pub mod patch;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::run::{Cmd, RunError};

/// The first four bytes of every QCOW2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Errors reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The path does not exist.
    #[error("{}: no such file", path.display())]
    NotFound {
        /// The image path as given.
        path: PathBuf,
    },
    /// Neither qemu-img nor our own readers recognise the content.
    #[error("{}: not a disk image ({why})", path.display())]
    NotADiskImage {
        /// The image path as given.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// The image file ends before the data its header refers to.
    #[error("{}: truncated {format} image ({why})", path.display())]
    Truncated {
        /// The image path as given.
        path: PathBuf,
        /// qemu-img's format name.
        format: String,
        /// qemu-img's complaint.
        why: String,
    },
    /// qemu-img found the image's metadata inconsistent.
    #[error("{}: corrupt {format} image ({why})", path.display())]
    Corrupt {
        /// The image path as given.
        path: PathBuf,
        /// qemu-img's format name.
        format: String,
        /// qemu-img's complaint.
        why: String,
    },
    /// There are partitions, but none holds a readable Linux root.
    #[error("{}: no Linux root filesystem found (partitions seen: {seen})", path.display())]
    NoLinuxRoot {
        /// The image path as given.
        path: PathBuf,
        /// A one-line summary of every partition and why it was not a root.
        seen: String,
    },
    /// The root filesystem has errors (`e2fsck -n` says so).
    #[error("{}: the root filesystem (partition {partition}, {fstype}) has errors: {verdict}", path.display())]
    FilesystemErrors {
        /// The image path as given.
        path: PathBuf,
        /// The partition's number (0 for a whole-disk filesystem).
        partition: u32,
        /// Its filesystem type.
        fstype: String,
        /// fsck's verdict, one line.
        verdict: String,
    },
    /// Reading the image (or its converted copy) failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// qemu-img could not be run, failed unexpectedly or was interrupted.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl ImageError {
    /// True when the image itself is the problem (the user's to fix), as
    /// opposed to a failure of this machine or of a tool.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ImageError::NotFound { .. }
                | ImageError::NotADiskImage { .. }
                | ImageError::Truncated { .. }
                | ImageError::Corrupt { .. }
                | ImageError::NoLinuxRoot { .. }
                | ImageError::FilesystemErrors { .. }
        )
    }
}

/// An image made readable as raw bytes.
///
/// For non-raw input this owns the temporary directory holding the
/// converted copy, which is removed when the value is dropped.
#[derive(Debug)]
pub struct RawImage {
    raw: PathBuf,
    /// qemu-img's name for the input format (`raw`, `qcow2`, ...).
    pub format: String,
    /// The disk size the guest sees, in bytes.
    pub virtual_size: u64,
    _scratch: Option<TempDir>,
}

/// What qemu-img says an image is, after the damage checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// qemu-img's name for the format (`raw`, `qcow2`, ...).
    pub format: String,
    /// The disk size the guest sees, in bytes.
    pub virtual_size: u64,
    /// The backing file, when the image is an overlay.
    pub backing_file: Option<String>,
}

/// Identifies `image` with qemu-img; a QCOW2 is also checked for
/// truncation and corruption. Reads only, never modifies the file.
pub fn identify(image: &Path) -> Result<Identity, ImageError> {
    let meta = match std::fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::NotFound {
                path: image.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ImageError::Io {
                path: image.to_path_buf(),
                source,
            });
        }
    };
    let not_image = |why: &str| ImageError::NotADiskImage {
        path: image.to_path_buf(),
        why: why.to_string(),
    };
    if meta.is_dir() {
        return Err(not_image("it is a directory"));
    }
    if meta.len() == 0 {
        return Err(not_image("the file is empty"));
    }
    let starts_like_qcow2 = has_qcow2_magic(image)?;

    // -U: an image that a running QEMU (`dbimage test`) holds open is
    // still safe to read, and without it qemu-img refuses the lock.
    let info = Cmd::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .map_err(|e| match e {
            RunError::Failed { ref tail, .. } => {
                let why = qemu_complaint(tail);
                if starts_like_qcow2 {
                    qcow2_damage(image, why)
                } else {
                    not_image(&why)
                }
            }
            other => ImageError::Run(other),
        })?;
    let identity = parse_info(&info).ok_or_else(|| not_image("qemu-img info gave no format and size"))?;
    if identity.format == "qcow2" {
        check_qcow2(image)?;
    }
    Ok(identity)
}

impl RawImage {
    /// Identifies `image` with qemu-img and, unless it is already raw,
    /// checks it and converts it to a sparse raw file in a temporary
    /// directory.
    pub fn open(image: &Path) -> Result<RawImage, ImageError> {
        let Identity { format, virtual_size, .. } = identify(image)?;
        if format == "raw" {
            return Ok(RawImage {
                raw: image.to_path_buf(),
                format,
                virtual_size,
                _scratch: None,
            });
        }

        let scratch = tempfile::Builder::new()
            .prefix("dbimage-inspect-")
            .tempdir()
            .map_err(|source| ImageError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let raw = scratch.path().join("disk.raw");
        // -f: the format is known now; letting qemu-img probe again could
        // read the file differently from what `info` reported.
        Cmd::new("qemu-img")
            .args(["convert", "-U", "-f", &format, "-O", "raw"])
            .arg(image)
            .arg(&raw)
            .run()
            .map_err(|e| match e {
                RunError::Failed { ref tail, .. } => ImageError::Corrupt {
                    path: image.to_path_buf(),
                    format: format.clone(),
                    why: qemu_complaint(tail),
                },
                other => ImageError::Run(other),
            })?;
        Ok(RawImage {
            raw,
            format,
            virtual_size,
            _scratch: Some(scratch),
        })
    }

    /// The raw bytes: the input itself, or the converted copy.
    pub fn raw_path(&self) -> &Path {
        &self.raw
    }
}

fn has_qcow2_magic(image: &Path) -> Result<bool, ImageError> {
    let mut head = [0u8; 4];
    let mut f = File::open(image).map_err(|source| ImageError::Io {
        path: image.to_path_buf(),
        source,
    })?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(&head == QCOW2_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(ImageError::Io {
            path: image.to_path_buf(),
            source,
        }),
    }
}

/// Reads format, virtual size and backing file from `qemu-img info --output=json`.
fn parse_info(json: &str) -> Option<Identity> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(Identity {
        format: v.get("format")?.as_str()?.to_string(),
        virtual_size: v.get("virtual-size")?.as_u64()?,
        backing_file: v.get("backing-filename").and_then(|b| b.as_str()).map(str::to_string),
    })
}

/// `qemu-img convert` of a truncated QCOW2 succeeds and silently reads
/// zeros past the end of the file, so truncation has to be caught by
/// `qemu-img check` before converting.
fn check_qcow2(image: &Path) -> Result<(), ImageError> {
    match Cmd::new("qemu-img")
        .args(["check", "-U", "-f", "qcow2", "--output=json"])
        .arg(image)
        .output()
    {
        Ok(_) => Ok(()),
        // 3: leaked clusters only; wasted space, but every read is correct.
        Err(RunError::Failed { status, .. }) if status.code() == Some(3) => Ok(()),
        Err(RunError::Failed { tail, .. }) => Err(qcow2_damage(image, qemu_complaint(&tail))),
        Err(other) => Err(ImageError::Run(other)),
    }
}

/// Truncation when qemu-img's words say the data runs past the end of the
/// file, corruption otherwise.
fn qcow2_damage(image: &Path, why: String) -> ImageError {
    let lower = why.to_lowercase();
    let truncated = ["end of the file", "end of file", "too short", "beyond"]
        .iter()
        .any(|w| lower.contains(w));
    if truncated {
        ImageError::Truncated {
            path: image.to_path_buf(),
            format: "qcow2".into(),
            why,
        }
    } else {
        ImageError::Corrupt {
            path: image.to_path_buf(),
            format: "qcow2".into(),
            why,
        }
    }
}

/// One line out of qemu-img's output for an error message: its first
/// `qemu-img:` or `ERROR` line, else the last line.
fn qemu_complaint(tail: &[String]) -> String {
    let line = tail
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("qemu-img:") || l.starts_with("ERROR"))
        .or_else(|| tail.iter().map(|l| l.trim()).rfind(|l| !l.is_empty()))
        .unwrap_or("qemu-img failed without a message");
    line.strip_prefix("qemu-img: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_format_and_size_from_qemu_img_info() {
        let json = r#"{"virtual-size": 67108864, "filename": "d.qcow2", "format": "qcow2"}"#;
        let id = parse_info(json).unwrap();
        assert_eq!((id.format.as_str(), id.virtual_size, id.backing_file), ("qcow2", 67108864, None));
        let json = r#"{"virtual-size": 1, "format": "qcow2", "backing-filename": "base.img"}"#;
        assert_eq!(parse_info(json).unwrap().backing_file.as_deref(), Some("base.img"));
        assert_eq!(parse_info("{}"), None);
        assert_eq!(parse_info("not json"), None);
    }

    #[test]
    fn picks_the_telling_line_of_qemu_img_output() {
        let tail = vec![
            "ERROR: counting reference for region exceeding the end of the file".to_string(),
            "ERROR: second".to_string(),
            "32 errors were found on the image.".to_string(),
        ];
        assert_eq!(
            qemu_complaint(&tail),
            "ERROR: counting reference for region exceeding the end of the file"
        );
        let tail = vec!["qemu-img: Could not open 'h.qcow2': qcow2 header too short".to_string()];
        assert_eq!(
            qemu_complaint(&tail),
            "Could not open 'h.qcow2': qcow2 header too short"
        );
        assert!(matches!(
            qcow2_damage(Path::new("x"), qemu_complaint(&tail)),
            ImageError::Truncated { .. }
        ));
        assert!(matches!(
            qcow2_damage(Path::new("x"), "Leaked cluster 4 refcount=1".into()),
            ImageError::Corrupt { .. }
        ));
    }
}
