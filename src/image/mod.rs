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

use crate::run::{Cmd, Limits, RunError};

/// The first four bytes of every QCOW2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The first line of a VMDK descriptor file, which names other files.
const VMDK_DESCRIPTOR: &[u8] = b"# Disk DescriptorFile";

/// The formats accepted from others: single-file formats qemu reads.
pub const ACCEPTED_FORMATS: [&str; 6] = ["raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi"];

/// Bounds for qemu-img reading a foreign image's metadata (what OpenStack's
/// services give `qemu-img info` on untrusted images).
const METADATA_LIMITS: Limits = Limits {
    memory: 1 << 30,
    cpu: std::time::Duration::from_secs(30),
    wall: std::time::Duration::from_secs(120),
};

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
    /// The image refers to other files (a backing file, an external data
    /// file, extents), which could be the host's own.
    #[error("{}: {why}; only self-contained images are accepted (flatten it with `qemu-img convert -O qcow2` on a trusted machine)", path.display())]
    NotSelfContained {
        /// The image path as given.
        path: PathBuf,
        /// What it refers to.
        why: String,
    },
    /// qemu-img reads it, but as a format not on the accepted list.
    #[error("{}: {format} images are not accepted; use one of {}", path.display(), ACCEPTED_FORMATS.join(", "))]
    FormatRefused {
        /// The image path as given.
        path: PathBuf,
        /// qemu-img's name for its format.
        format: String,
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
                | ImageError::NotSelfContained { .. }
                | ImageError::FormatRefused { .. }
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
}

/// Identifies `image` with qemu-img; a QCOW2 is also checked for
/// truncation and corruption. Reads only, never modifies the file.
///
/// The image must be self-contained: the header is read before qemu-img
/// opens the file, so a reference to a host file (backing file, external
/// data file, VMDK extent) is refused before anything opens it, and what
/// qemu-img reports is checked again.
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
    let head = read_head(image)?;
    let starts_like_qcow2 = head.starts_with(QCOW2_MAGIC);
    if let Some(why) = header_reference(&head) {
        return Err(ImageError::NotSelfContained { path: image.to_path_buf(), why });
    }
    // An absolute path: qemu reads a name like `json:{…}` or `nbd:…` as
    // options or a protocol, not as a file.
    let absolute = std::path::absolute(image).map_err(|source| ImageError::Io { path: image.to_path_buf(), source })?;

    // -U: an image that a running QEMU (`dbimage test`) holds open is
    // still safe to read, and without it qemu-img refuses the lock.
    let info = Cmd::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&absolute)
        .limits(METADATA_LIMITS)
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
    if !ACCEPTED_FORMATS.contains(&identity.format.as_str()) {
        return Err(ImageError::FormatRefused { path: image.to_path_buf(), format: identity.format });
    }
    if let Some(why) = info_reference(&info, &absolute) {
        return Err(ImageError::NotSelfContained { path: image.to_path_buf(), why });
    }
    if identity.format == "qcow2" {
        check_qcow2(image, &absolute)?;
    }
    Ok(identity)
}

/// The first sector of `image` (less for a shorter file).
fn read_head(image: &Path) -> Result<Vec<u8>, ImageError> {
    let io = |source| ImageError::Io { path: image.to_path_buf(), source };
    let mut head = Vec::with_capacity(512);
    File::open(image).map_err(io)?.take(512).read_to_end(&mut head).map_err(io)?;
    Ok(head)
}

/// What a QCOW2 header or a VMDK descriptor refers to outside the file.
fn header_reference(head: &[u8]) -> Option<String> {
    let be64 = |at: usize| head.get(at..at + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
    if head.starts_with(QCOW2_MAGIC) {
        if be64(8).is_some_and(|off| off != 0) {
            return Some("its qcow2 header names a backing file".into());
        }
        // Version 3 headers: incompatible feature bit 2 is an external data file.
        let version = head.get(4..8).map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()));
        if version.is_some_and(|v| v >= 3) && be64(72).is_some_and(|f| f & 0x4 != 0) {
            return Some("its qcow2 header names an external data file".into());
        }
    }
    // qemu reads a descriptor without its usual first line too.
    if head.starts_with(VMDK_DESCRIPTOR) || head.windows(b"createType".len()).any(|w| w == b"createType") {
        return Some("it is a VMDK descriptor, whose extents are other files".into());
    }
    None
}

/// What `qemu-img info` says the image needs besides its own file: a
/// backing file, a data file, an extent or a child node that is not
/// `image` itself.
fn info_reference(json: &str, image: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let own = image.to_string_lossy();
    if let Some(b) = v.get("backing-filename") {
        return Some(format!("it names a backing file ({b})"));
    }
    let data = v.pointer("/format-specific/data");
    if let Some(f) = data.and_then(|d| d.get("data-file")) {
        return Some(format!("it names an external data file ({f})"));
    }
    let extents = data.and_then(|d| d.get("extents")).and_then(|e| e.as_array());
    for name in extents.into_iter().flatten().filter_map(|e| e.get("filename")?.as_str()) {
        if name != own {
            return Some(format!("it has an extent in another file ({name})"));
        }
    }
    // QEMU 8 and later list the nodes below the format's.
    let children = v.get("children").and_then(|c| c.as_array());
    for child in children.into_iter().flatten() {
        let name = child.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        let file = child.pointer("/info/filename").and_then(|f| f.as_str()).unwrap_or("?");
        if name != "file" || file != own {
            return Some(format!("it has a {name} node on another file ({file})"));
        }
    }
    None
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
        let absolute = std::path::absolute(image).map_err(|source| ImageError::Io { path: image.to_path_buf(), source })?;
        Cmd::new("qemu-img")
            .args(["convert", "-U", "-f", &format, "-O", "raw"])
            .arg(absolute)
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

/// Reads format and virtual size from `qemu-img info --output=json`.
fn parse_info(json: &str) -> Option<Identity> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(Identity {
        format: v.get("format")?.as_str()?.to_string(),
        virtual_size: v.get("virtual-size")?.as_u64()?,
    })
}

/// `qemu-img convert` of a truncated QCOW2 succeeds and silently reads
/// zeros past the end of the file, so truncation has to be caught by
/// `qemu-img check` before converting.
fn check_qcow2(image: &Path, absolute: &Path) -> Result<(), ImageError> {
    match Cmd::new("qemu-img")
        .args(["check", "-U", "-f", "qcow2", "--output=json"])
        .arg(absolute)
        .limits(METADATA_LIMITS)
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
        assert_eq!((id.format.as_str(), id.virtual_size), ("qcow2", 67108864));
        assert_eq!(parse_info("{}"), None);
        assert_eq!(parse_info("not json"), None);
    }

    #[test]
    fn references_to_other_files_are_found_in_headers_and_info() {
        let mut qcow2 = QCOW2_MAGIC.to_vec();
        qcow2.extend_from_slice(&3u32.to_be_bytes());
        qcow2.resize(104, 0);
        assert_eq!(header_reference(&qcow2), None);
        let mut backing = qcow2.clone();
        backing[15] = 0x70;
        assert!(header_reference(&backing).unwrap().contains("backing file"));
        let mut data_file = qcow2.clone();
        data_file[79] = 0x4;
        assert!(header_reference(&data_file).unwrap().contains("external data file"));
        assert!(header_reference(b"# Disk DescriptorFile\nversion=1\n").unwrap().contains("VMDK descriptor"));
        assert!(header_reference(b"version=1\ncreateType=\"monolithicFlat\"\n").unwrap().contains("VMDK descriptor"));
        assert_eq!(header_reference(b"\0\0"), None);

        let own = Path::new("/x/a.vmdk");
        let info = |data: &str| format!(r#"{{"format": "vmdk", "virtual-size": 1, "format-specific": {{"data": {data}}}}}"#);
        assert_eq!(info_reference(&info(r#"{"extents": [{"filename": "/x/a.vmdk"}]}"#), own), None);
        let two = info(r#"{"extents": [{"filename": "/x/a.vmdk"}, {"filename": "/dev/sda"}]}"#);
        assert!(info_reference(&two, own).unwrap().contains("/dev/sda"));
        assert!(info_reference(&info(r#"{"data-file": "/etc/shadow"}"#), own).unwrap().contains("/etc/shadow"));
        let children = r#"{"format": "qcow2", "children": [{"name": "file", "info": {"filename": "/x/a.vmdk"}},
            {"name": "data-file", "info": {"filename": "/root/k"}}]}"#;
        assert!(info_reference(children, own).unwrap().contains("data-file node on another file (/root/k)"));
        assert!(info_reference(r#"{"backing-filename": "b.img"}"#, own).unwrap().contains("b.img"));
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
