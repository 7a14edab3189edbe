//! Safe unpacking of a user's database tarball (`dbimage make -p FILE`).
//!
//! The tarball is unpacked into a scratch directory inside the image's root
//! tree and its `setup.sh` is later run in a chroot. Unpacking itself runs as
//! root on the build host, outside any chroot, so a hostile archive must not
//! be able to write, link or create anything outside the scratch directory.
//!
//! The rules, enforced identically by [`check`] (reads only) and [`unpack`]:
//!
//! * entry names are relative, have no `..` component and are not empty;
//!   a leading `./` (and `.`/empty components anywhere) is ignored;
//! * only regular files, directories, symlinks and hardlinks are allowed;
//!   device nodes, FIFOs, GNU sparse files and unknown types are refused;
//! * a symlink target is relative and, resolved lexically from the link's own
//!   directory, stays inside; in addition a `..` may only come *before* the
//!   first directory name of the target (`../lib/x` is fine, `a/../b` is
//!   not). Lexical resolution alone is not enough once other links exist:
//!   with `s -> .` and `t -> s/..`, `t` lexically names the scratch directory
//!   itself but really names its parent, and a chain of such links reaches
//!   the host's `/`. With leading-only `..`, every `..` crosses a real
//!   directory (parents of entries are never symlinks, see below), so the
//!   lexical answer is the real one;
//! * no entry may be written through a symlink that an earlier entry created
//!   (`lib -> sub` then `lib/x` is refused rather than followed: the archive
//!   should name `sub/x`), and no entry may replace an earlier one, except a
//!   directory declared twice;
//! * a hardlink names an earlier regular file of the archive;
//! * the headers' sizes sum to at most [`Limits::max_total_bytes`] and there
//!   are at most [`Limits::max_entries`] members;
//! * `setup.sh` is a regular file at the top.
//!
//! [`unpack`] re-applies every rule as it goes and, independently of the
//! bookkeeping, checks the disk before each write (`symlink_metadata` on every
//! parent, `O_CREAT|O_EXCL|O_NOFOLLOW` for files, `mkdir`/`symlink`/`link`
//! which never replace what exists). Ownership is never taken from the
//! archive (everything is root's) and setuid, setgid and sticky bits are
//! dropped.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The file name endings [`detect`] accepts, for error messages.
const ACCEPTED: &str = ".tar, .tgz, .tar.gz, .tar.bz2, .tbz2";

/// How far the tar reader may read past the end of the previous member's data
/// to parse the next member's headers. This bounds GNU long names and pax
/// records, which the `tar` crate reads whole into memory before we see the
/// member; real ones are a few hundred bytes.
const HEADER_ALLOWANCE: u64 = 1 << 20;

/// Permission bits kept from the archive: setuid, setgid and sticky are
/// dropped so a package cannot plant a setuid binary in the image.
const MODE_MASK: u32 = 0o777;

/// Mode of directories the archive implies but does not list.
const IMPLIED_DIR_MODE: u32 = 0o755;

/// Limits for unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes the members may hold in total (by header and as copied).
    pub max_total_bytes: u64,
    /// Most members the archive may have.
    pub max_entries: u64,
}

impl Default for Limits {
    /// 8 GiB and 200 000 members: far above any database distribution, low
    /// enough that a decompression bomb cannot fill the build host.
    fn default() -> Self {
        Self {
            max_total_bytes: 8 << 30,
            max_entries: 200_000,
        }
    }
}

/// Compression of a tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain `.tar`.
    None,
    /// `.tgz` / `.tar.gz`.
    Gzip,
    /// `.tar.bz2` / `.tbz2`.
    Bzip2,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "plain tar",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
        })
    }
}

/// What a successful [`check`] or [`unpack`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Files, directories and links (the archive's top directory and pax
    /// global headers are not counted).
    pub entries: u64,
    /// Sum of the members' sizes.
    pub bytes: u64,
}

/// Why a tarball was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    /// The file name has none of the accepted endings.
    #[error("{}: unknown tarball type; name it with one of: {ACCEPTED}", path.display())]
    UnknownCompression {
        /// The tarball.
        path: PathBuf,
    },
    /// The name promises one compression, the content is another.
    #[error(
        "{} is named as a {named} tarball but holds {found}; rename it to match its content ({ACCEPTED})",
        path.display()
    )]
    CompressionMismatch {
        /// The tarball.
        path: PathBuf,
        /// What the name says.
        named: Compression,
        /// What the first bytes say.
        found: &'static str,
    },
    /// The tarball cannot be opened or read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The tarball.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Empty, truncated, corrupt or not a tar archive at all.
    #[error("{} is not a valid tar archive: {reason}", path.display())]
    NotTar {
        /// The tarball.
        path: PathBuf,
        /// What is wrong, one line.
        reason: String,
    },
    /// A member has an empty name.
    #[error("tarball member #{index} has an empty name; rebuild the tarball with real file names")]
    EmptyName {
        /// 1-based position in the archive.
        index: u64,
    },
    /// A member name holds a NUL byte, which no file name can.
    #[error("tarball entry {entry:?} has a NUL byte in its name; rebuild the tarball")]
    NulInName {
        /// The name, lossily decoded.
        entry: String,
    },
    /// A member name is absolute.
    #[error(
        "tarball entry {entry:?} is an absolute path; rebuild the tarball with relative paths (tar -C DIR -czf FILE .)"
    )]
    AbsolutePath {
        /// The name.
        entry: String,
    },
    /// A member name has a `..` component.
    #[error(
        "tarball entry {entry:?} escapes the package directory; rebuild the tarball with relative paths"
    )]
    Escapes {
        /// The name.
        entry: String,
    },
    /// A character or block device or a FIFO.
    #[error(
        "tarball entry {entry:?} is a {kind}, which a package may not carry; create it from setup.sh if it is needed"
    )]
    SpecialFile {
        /// The name.
        entry: String,
        /// "character device", "block device" or "FIFO".
        kind: &'static str,
    },
    /// A GNU sparse file (old GNU format or pax `GNU.sparse.*`).
    #[error(
        "tarball entry {entry:?} is a GNU sparse file, which dbimage does not unpack; rebuild the tarball without --sparse"
    )]
    Sparse {
        /// The name.
        entry: String,
    },
    /// Any member type other than file, directory, symlink, hardlink.
    #[error(
        "tarball entry {entry:?} has unsupported type {type_byte:?}; rebuild the tarball with only files, directories and links"
    )]
    UnsupportedType {
        /// The name.
        entry: String,
        /// The header's type flag, as a character.
        type_byte: char,
    },
    /// A symlink or hardlink with no target.
    #[error(
        "tarball entry {entry:?} is a link with an empty or invalid target; rebuild the tarball"
    )]
    BadLinkTarget {
        /// The name.
        entry: String,
    },
    /// A symlink to an absolute path.
    #[error(
        "tarball entry {entry:?} is a symlink to the absolute path {target:?}; make links outside the package from setup.sh instead"
    )]
    SymlinkAbsolute {
        /// The name.
        entry: String,
        /// The target.
        target: String,
    },
    /// A symlink whose target climbs out of the package directory.
    #[error(
        "tarball entry {entry:?} is a symlink to {target:?}, which points outside the package directory; make such links from setup.sh instead"
    )]
    SymlinkEscapes {
        /// The name.
        entry: String,
        /// The target.
        target: String,
    },
    /// A symlink target with `..` after a directory name (see the module
    /// documentation for why).
    #[error(
        "tarball entry {entry:?} is a symlink to {target:?}, which uses \"..\" after a directory name; write the target without it"
    )]
    SymlinkClimbs {
        /// The name.
        entry: String,
        /// The target.
        target: String,
    },
    /// A hardlink to an absolute path or through `..`.
    #[error(
        "tarball entry {entry:?} is a hardlink to {target:?}, outside the package; hardlinks may only join files of the tarball"
    )]
    HardlinkOutside {
        /// The name.
        entry: String,
        /// The target.
        target: String,
    },
    /// A hardlink to something that is not an earlier regular file.
    #[error(
        "tarball entry {entry:?} is a hardlink to {target:?}, which is not a regular file earlier in the tarball; rebuild the tarball"
    )]
    HardlinkUnknown {
        /// The name.
        entry: String,
        /// The target.
        target: String,
    },
    /// A member whose path goes through a symlink the archive created.
    #[error(
        "tarball entry {entry:?} goes through the symlink {link:?} from the same tarball; put it at its real path"
    )]
    ThroughSymlink {
        /// The name.
        entry: String,
        /// The symlink on its path.
        link: String,
    },
    /// A member that would replace an earlier one, or sits under a file.
    #[error(
        "tarball entry {entry:?} clashes with an earlier entry of the same name or with a file on its path; rebuild the tarball without duplicates"
    )]
    Conflict {
        /// The name.
        entry: String,
    },
    /// More bytes than [`Limits::max_total_bytes`].
    #[error(
        "{} holds more than {limit} bytes, over dbimage's limit; trim the package",
        path.display()
    )]
    TooLarge {
        /// The tarball.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// More members than [`Limits::max_entries`].
    #[error(
        "{} has more than {limit} entries, over dbimage's limit; trim the package",
        path.display()
    )]
    TooManyEntries {
        /// The tarball.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A GNU long name or pax record over [`HEADER_ALLOWANCE`].
    #[error(
        "{} has an oversized long-name or pax header (over 1 MiB); rebuild the tarball with a standard tar",
        path.display()
    )]
    HeaderTooLarge {
        /// The tarball.
        path: PathBuf,
    },
    /// No `setup.sh` at the top.
    #[error(
        "no setup.sh at the top of {}; the tarball must carry its install script as ./setup.sh",
        path.display()
    )]
    NoSetup {
        /// The tarball.
        path: PathBuf,
    },
    /// `setup.sh` is there but is not a regular file.
    #[error(
        "setup.sh in {} is a {kind}, not a regular file; the tarball must carry its install script as ./setup.sh",
        path.display()
    )]
    SetupNotFile {
        /// The tarball.
        path: PathBuf,
        /// "directory" or "symlink".
        kind: &'static str,
    },
    /// The destination is missing, not a directory, or not empty.
    #[error("cannot unpack into {}: {why}", dest.display())]
    BadDest {
        /// The destination.
        dest: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Writing under the destination failed.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
}

/// Detects compression from the file name (.tar, .tgz, .tar.gz, .tar.bz2,
/// .tbz2) and checks that the first bytes agree with it.
pub fn detect(path: &Path) -> Result<Compression, TarballError> {
    let named = compression_from_name(path).ok_or_else(|| TarballError::UnknownCompression {
        path: path.to_path_buf(),
    })?;
    let mut head = Vec::with_capacity(512);
    File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|error| TarballError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    let not_tar = |reason: &str| TarballError::NotTar {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if head.is_empty() {
        return Err(not_tar("the file is empty"));
    }
    match (named, sniff(&head)) {
        (named, Some(found)) if found == named => Ok(named),
        (named, Some(found)) => Err(TarballError::CompressionMismatch {
            path: path.to_path_buf(),
            named,
            found: content_name(found),
        }),
        (named, None) => match foreign_format(&head) {
            Some(found) => Err(TarballError::CompressionMismatch {
                path: path.to_path_buf(),
                named,
                found,
            }),
            None => Err(not_tar(match named {
                Compression::None => "no tar header at the start",
                Compression::Gzip => "it does not start with the gzip magic bytes",
                Compression::Bzip2 => "it does not start with the bzip2 magic bytes",
            })),
        },
    }
}

/// Checks the whole archive without writing anything, so a bad archive fails
/// before any change to the host or the image.
pub fn check(path: &Path, limits: &Limits) -> Result<Summary, TarballError> {
    walk(path, limits, None)
}

/// Unpacks into `dest`, which must exist and be empty, re-checking each
/// entry as it goes. On error `dest` may hold part of the archive (never
/// anything outside it): run [`check`] first and remove `dest` on failure.
pub fn unpack(path: &Path, dest: &Path, limits: &Limits) -> Result<Summary, TarballError> {
    let bad = |why: String| TarballError::BadDest {
        dest: dest.to_path_buf(),
        why,
    };
    let meta = fs::symlink_metadata(dest).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("not a directory (or a symlink)".to_string()));
    }
    let mut listing = fs::read_dir(dest).map_err(|e| bad(e.to_string()))?;
    if listing.next().is_some() {
        return Err(bad("the directory is not empty".to_string()));
    }
    let mut writer = Writer {
        dest: dest.to_path_buf(),
        dir_modes: BTreeMap::new(),
        copied: 0,
    };
    let summary = walk(path, limits, Some(&mut writer))?;
    writer.finish()?;
    Ok(summary)
}

fn compression_from_name(path: &Path) -> Option<Compression> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(Compression::Gzip)
    } else if name.ends_with(".tar.bz2") || name.ends_with(".tbz2") {
        Some(Compression::Bzip2)
    } else if name.ends_with(".tar") {
        Some(Compression::None)
    } else {
        None
    }
}

/// Recognises the three accepted formats from the first (up to) 512 bytes.
fn sniff(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(b"BZh") {
        Some(Compression::Bzip2)
    } else if plausible_tar_header(head) {
        Some(Compression::None)
    } else {
        None
    }
}

fn content_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "an uncompressed tar archive",
        Compression::Gzip => "gzip data",
        Compression::Bzip2 => "bzip2 data",
    }
}

/// Names formats people commonly hand in by mistake, for a better message.
fn foreign_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz data")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd data")
    } else if head.starts_with(b"PK\x03\x04") {
        Some("a zip archive")
    } else {
        None
    }
}

/// A ustar/GNU magic, or an old-style header whose checksum adds up; an
/// all-zero block is an empty archive.
fn plausible_tar_header(head: &[u8]) -> bool {
    let Some(block) = head.get(..512) else {
        return false;
    };
    if &block[257..262] == b"ustar" || block.iter().all(|b| *b == 0) {
        return true;
    }
    let digits: Vec<u8> = block[148..156]
        .iter()
        .copied()
        .filter(|b| *b != b' ' && *b != 0)
        .collect();
    let Some(stored) = std::str::from_utf8(&digits)
        .ok()
        .filter(|s| !s.is_empty())
        .and_then(|s| u32::from_str_radix(s, 8).ok())
    else {
        return false;
    };
    // The checksum field itself counts as eight spaces.
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    sum == stored
}

/// The decompressed stream, counted, refusing to go past `limit` (see
/// [`HEADER_ALLOWANCE`]); `tripped` tells that refusal from real I/O errors.
struct CapReader {
    inner: Box<dyn Read>,
    pos: u64,
    limit: Rc<Cell<u64>>,
    tripped: Rc<Cell<bool>>,
}

impl Read for CapReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let room = self.limit.get().saturating_sub(self.pos);
        if room == 0 {
            self.tripped.set(true);
            return Err(io::Error::other("header allowance exceeded"));
        }
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// What one member turns into.
enum Action {
    /// Nothing to do: the top directory itself or a pax global header.
    Skip,
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// `target` is relative to the destination, already normalised.
    Hardlink {
        target: PathBuf,
    },
}

/// A member that passed every rule.
struct Planned {
    /// Normalised, relative, only normal components.
    rel: PathBuf,
    /// The name as in the archive, for messages.
    name: String,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// The rules, applied member by member; the same for check and unpack.
struct Checker<'a> {
    tarball: &'a Path,
    limits: &'a Limits,
    members: u64,
    bytes: u64,
    seen: HashMap<PathBuf, Kind>,
}

impl Checker<'_> {
    fn admit(&mut self, entry: &mut tar::Entry<'_, CapReader>) -> Result<Planned, TarballError> {
        self.members += 1;
        if self.members > self.limits.max_entries {
            return Err(TarballError::TooManyEntries {
                path: self.tarball.to_path_buf(),
                limit: self.limits.max_entries,
            });
        }
        let size = entry.size();
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_total_bytes {
            return Err(TarballError::TooLarge {
                path: self.tarball.to_path_buf(),
                limit: self.limits.max_total_bytes,
            });
        }
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            return Ok(Planned {
                rel: PathBuf::new(),
                name: String::new(),
                action: Action::Skip,
            });
        }
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let rel = normalise(&raw_name).map_err(|bad| match bad {
            BadPath::Empty => TarballError::EmptyName {
                index: self.members,
            },
            BadPath::Nul => TarballError::NulInName {
                entry: name.clone(),
            },
            BadPath::Absolute => TarballError::AbsolutePath {
                entry: name.clone(),
            },
            BadPath::DotDot => TarballError::Escapes {
                entry: name.clone(),
            },
        })?;
        let kind_error = |kind| TarballError::SpecialFile {
            entry: name.clone(),
            kind,
        };
        let action = if etype.is_gnu_sparse() || has_pax_sparse(entry) {
            return Err(TarballError::Sparse { entry: name });
        } else if etype.is_character_special() {
            return Err(kind_error("character device"));
        } else if etype.is_block_special() {
            return Err(kind_error("block device"));
        } else if etype.is_fifo() {
            return Err(kind_error("FIFO"));
        } else if etype.is_dir() {
            if rel.as_os_str().is_empty() {
                return Ok(Planned {
                    rel,
                    name,
                    action: Action::Skip,
                });
            }
            Action::Dir {
                mode: header_mode(entry),
            }
        } else if etype.is_file() || etype.is_contiguous() {
            Action::File {
                mode: header_mode(entry),
                size,
            }
        } else if etype.is_symlink() {
            let target = entry.link_name_bytes().map(|t| t.into_owned());
            Action::Symlink {
                target: check_symlink(&rel, &name, target)?,
            }
        } else if etype.is_hard_link() {
            let target = entry.link_name_bytes().map(|t| t.into_owned());
            Action::Hardlink {
                target: self.check_hardlink(&name, target)?,
            }
        } else {
            return Err(TarballError::UnsupportedType {
                entry: name,
                type_byte: char::from(etype.as_byte()),
            });
        };
        if rel.as_os_str().is_empty() {
            return Err(TarballError::EmptyName {
                index: self.members,
            });
        }
        self.record(&rel, &name, &action)?;
        Ok(Planned { rel, name, action })
    }

    fn check_hardlink(&self, name: &str, target: Option<Vec<u8>>) -> Result<PathBuf, TarballError> {
        let target = target.unwrap_or_default();
        let shown = String::from_utf8_lossy(&target).into_owned();
        let rel = match normalise(&target) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel,
            Ok(_) | Err(BadPath::Empty) | Err(BadPath::Nul) => {
                return Err(TarballError::BadLinkTarget {
                    entry: name.to_string(),
                });
            }
            Err(BadPath::Absolute) | Err(BadPath::DotDot) => {
                return Err(TarballError::HardlinkOutside {
                    entry: name.to_string(),
                    target: shown,
                });
            }
        };
        if self.seen.get(&rel) != Some(&Kind::File) {
            return Err(TarballError::HardlinkUnknown {
                entry: name.to_string(),
                target: shown,
            });
        }
        Ok(rel)
    }

    /// Enters the member and its implied parents into `seen`, refusing paths
    /// through earlier symlinks or files and any replacement.
    fn record(&mut self, rel: &Path, name: &str, action: &Action) -> Result<(), TarballError> {
        let mut prefix = PathBuf::new();
        let parts: Vec<&OsStr> = rel.iter().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push(part);
            match self.seen.get(&prefix) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(TarballError::ThroughSymlink {
                        entry: name.to_string(),
                        link: prefix.to_string_lossy().into_owned(),
                    });
                }
                Some(Kind::File) => {
                    return Err(TarballError::Conflict {
                        entry: name.to_string(),
                    });
                }
                None => {
                    self.seen.insert(prefix.clone(), Kind::Dir);
                }
            }
        }
        let kind = match action {
            Action::Dir { .. } => Kind::Dir,
            Action::File { .. } | Action::Hardlink { .. } => Kind::File,
            Action::Symlink { .. } => Kind::Symlink,
            Action::Skip => return Ok(()),
        };
        match self.seen.get(rel) {
            None => {
                self.seen.insert(rel.to_path_buf(), kind);
                Ok(())
            }
            Some(Kind::Dir) if kind == Kind::Dir => Ok(()),
            Some(_) => Err(TarballError::Conflict {
                entry: name.to_string(),
            }),
        }
    }

    fn finish(&self) -> Result<Summary, TarballError> {
        match self.seen.get(Path::new("setup.sh")) {
            Some(Kind::File) => Ok(Summary {
                entries: 0,
                bytes: self.bytes,
            }),
            Some(Kind::Dir) => Err(TarballError::SetupNotFile {
                path: self.tarball.to_path_buf(),
                kind: "directory",
            }),
            Some(Kind::Symlink) => Err(TarballError::SetupNotFile {
                path: self.tarball.to_path_buf(),
                kind: "symlink",
            }),
            None => Err(TarballError::NoSetup {
                path: self.tarball.to_path_buf(),
            }),
        }
    }
}

enum BadPath {
    Empty,
    Nul,
    Absolute,
    DotDot,
}

/// Turns an archive name into a relative path of normal components; an
/// empty result means the top directory (`.` or `./`).
fn normalise(raw: &[u8]) -> Result<PathBuf, BadPath> {
    if raw.is_empty() {
        return Err(BadPath::Empty);
    }
    if raw.contains(&0) {
        return Err(BadPath::Nul);
    }
    if raw[0] == b'/' {
        return Err(BadPath::Absolute);
    }
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(BadPath::DotDot),
            _ => out.push(OsStr::from_bytes(part)),
        }
    }
    Ok(out)
}

/// Applies the symlink rules (module documentation) and returns the target.
fn check_symlink(rel: &Path, name: &str, target: Option<Vec<u8>>) -> Result<Vec<u8>, TarballError> {
    let target = target.unwrap_or_default();
    if target.is_empty() || target.contains(&0) {
        return Err(TarballError::BadLinkTarget {
            entry: name.to_string(),
        });
    }
    let shown = String::from_utf8_lossy(&target).into_owned();
    if target[0] == b'/' {
        return Err(TarballError::SymlinkAbsolute {
            entry: name.to_string(),
            target: shown,
        });
    }
    let parts = || {
        target
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
    };
    // The lexical rule first, so an escaping target is reported as such.
    let mut depth = rel.iter().count().saturating_sub(1);
    for part in parts() {
        if part == b".." {
            depth = match depth.checked_sub(1) {
                Some(d) => d,
                None => {
                    return Err(TarballError::SymlinkEscapes {
                        entry: name.to_string(),
                        target: shown,
                    });
                }
            };
        } else {
            depth += 1;
        }
    }
    let mut descended = false;
    for part in parts() {
        if part == b".." && descended {
            return Err(TarballError::SymlinkClimbs {
                entry: name.to_string(),
                target: shown,
            });
        }
        descended |= part != b"..";
    }
    Ok(target)
}

fn header_mode(entry: &tar::Entry<'_, CapReader>) -> u32 {
    entry.header().mode().unwrap_or(0o644) & MODE_MASK
}

/// GNU's pax sparse formats look like regular files to the `tar` crate;
/// unpacking them as such would silently produce a corrupt file.
fn has_pax_sparse(entry: &mut tar::Entry<'_, CapReader>) -> bool {
    match entry.pax_extensions() {
        Ok(Some(exts)) => exts
            .filter_map(Result::ok)
            .any(|e| e.key_bytes().starts_with(b"GNU.sparse.")),
        _ => false,
    }
}

/// Reads every member, applies the rules and, given a writer, writes it.
fn walk(
    path: &Path,
    limits: &Limits,
    mut writer: Option<&mut Writer>,
) -> Result<Summary, TarballError> {
    let compression = detect(path)?;
    let file = File::open(path).map_err(|error| TarballError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let file = BufReader::new(file);
    let inner: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
    };
    let limit = Rc::new(Cell::new(HEADER_ALLOWANCE));
    let tripped = Rc::new(Cell::new(false));
    let mut archive = tar::Archive::new(CapReader {
        inner,
        pos: 0,
        limit: Rc::clone(&limit),
        tripped: Rc::clone(&tripped),
    });
    let read_error = |error: io::Error| {
        if tripped.get() {
            TarballError::HeaderTooLarge {
                path: path.to_path_buf(),
            }
        } else {
            TarballError::NotTar {
                path: path.to_path_buf(),
                reason: error.to_string(),
            }
        }
    };
    let mut checker = Checker {
        tarball: path,
        limits,
        members: 0,
        bytes: 0,
        seen: HashMap::new(),
    };
    let mut entries = 0;
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let planned = checker.admit(&mut entry)?;
        // Only now, with the size within budget, let the reader reach the end
        // of this member's data plus the next member's headers.
        let data_end = entry
            .raw_file_position()
            .saturating_add(entry.size().div_ceil(512).saturating_mul(512));
        limit.set(data_end.saturating_add(HEADER_ALLOWANCE));
        if matches!(planned.action, Action::Skip) {
            continue;
        }
        entries += 1;
        if let Some(w) = writer.as_deref_mut() {
            w.write(&planned, &mut entry, path, limits, &read_error)?;
        }
    }
    let mut summary = checker.finish()?;
    summary.entries = entries;
    Ok(summary)
}

/// Writes checked members under `dest`, trusting nothing on disk.
struct Writer {
    dest: PathBuf,
    /// Directory modes, applied at the end so that a read-only directory
    /// does not stop its own members from being written.
    dir_modes: BTreeMap<PathBuf, u32>,
    /// Bytes actually copied, against the same limit as the headers.
    copied: u64,
}

impl Writer {
    fn write(
        &mut self,
        planned: &Planned,
        entry: &mut tar::Entry<'_, CapReader>,
        tarball: &Path,
        limits: &Limits,
        read_error: &dyn Fn(io::Error) -> TarballError,
    ) -> Result<(), TarballError> {
        self.make_parents(planned)?;
        let target = self.dest.join(&planned.rel);
        let write_error = |error| TarballError::Write {
            path: target.clone(),
            error,
        };
        match &planned.action {
            Action::Skip => Ok(()),
            Action::Dir { mode } => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(TarballError::Conflict {
                            entry: planned.name.clone(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        DirBuilder::new()
                            .mode(0o700)
                            .create(&target)
                            .map_err(write_error)?;
                    }
                    Err(e) => return Err(write_error(e)),
                }
                self.dir_modes.insert(planned.rel.clone(), *mode);
                Ok(())
            }
            Action::File { mode, size } => {
                // O_EXCL never follows a final symlink and never reuses an
                // existing file; O_NOFOLLOW says so twice.
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                    .open(&target)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            TarballError::Conflict {
                                entry: planned.name.clone(),
                            }
                        } else {
                            write_error(e)
                        }
                    })?;
                let mut buf = vec![0u8; 64 * 1024];
                let mut done: u64 = 0;
                loop {
                    let n = entry.read(&mut buf).map_err(read_error)?;
                    if n == 0 {
                        break;
                    }
                    done += n as u64;
                    self.copied = self.copied.saturating_add(n as u64);
                    if self.copied > limits.max_total_bytes {
                        return Err(TarballError::TooLarge {
                            path: tarball.to_path_buf(),
                            limit: limits.max_total_bytes,
                        });
                    }
                    out.write_all(&buf[..n]).map_err(write_error)?;
                }
                if done != *size {
                    return Err(TarballError::NotTar {
                        path: tarball.to_path_buf(),
                        reason: format!(
                            "entry {:?} is truncated ({done} of {size} bytes)",
                            planned.name
                        ),
                    });
                }
                // fchmod on our own descriptor: no path to redirect.
                out.set_permissions(Permissions::from_mode(*mode))
                    .map_err(write_error)
            }
            Action::Symlink { target: link_to } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(link_to), &target).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        TarballError::Conflict {
                            entry: planned.name.clone(),
                        }
                    } else {
                        write_error(e)
                    }
                })
            }
            Action::Hardlink { target: original } => {
                let original = self.dest.join(original);
                match fs::symlink_metadata(&original) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => {
                        return Err(TarballError::HardlinkUnknown {
                            entry: planned.name.clone(),
                            target: original.to_string_lossy().into_owned(),
                        });
                    }
                }
                // linkat without AT_SYMLINK_FOLLOW; `original` was created by
                // us through checked parents and nothing is ever replaced.
                fs::hard_link(&original, &target).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        TarballError::Conflict {
                            entry: planned.name.clone(),
                        }
                    } else {
                        write_error(e)
                    }
                })
            }
        }
    }

    /// Walks the parents on disk: each must be a real directory (never a
    /// symlink) or absent, in which case it is created.
    fn make_parents(&mut self, planned: &Planned) -> Result<(), TarballError> {
        let parts: Vec<&OsStr> = planned.rel.iter().collect();
        let mut rel = PathBuf::new();
        for part in &parts[..parts.len().saturating_sub(1)] {
            rel.push(part);
            let here = self.dest.join(&rel);
            match fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(TarballError::ThroughSymlink {
                        entry: planned.name.clone(),
                        link: rel.to_string_lossy().into_owned(),
                    });
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(TarballError::Conflict {
                        entry: planned.name.clone(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&here)
                        .map_err(|error| TarballError::Write {
                            path: here.clone(),
                            error,
                        })?;
                    self.dir_modes
                        .entry(rel.clone())
                        .or_insert(IMPLIED_DIR_MODE);
                }
                Err(error) => return Err(TarballError::Write { path: here, error }),
            }
        }
        Ok(())
    }

    /// Applies directory modes, deepest first so that a parent losing its
    /// search bit cannot block its children.
    fn finish(&self) -> Result<(), TarballError> {
        for (rel, mode) in self.dir_modes.iter().rev() {
            let path = self.dest.join(rel);
            let write_error = |error| TarballError::Write {
                path: path.clone(),
                error,
            };
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                .open(&path)
                .map_err(write_error)?;
            dir.set_permissions(Permissions::from_mode(*mode))
                .map_err(write_error)?;
        }
        Ok(())
    }
}
