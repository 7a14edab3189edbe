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

/// Linux's PATH_MAX: no longer name or link target can be created, and the
/// per-entry bookkeeping is linear in the name's length.
const MAX_NAME: usize = 4096;

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
    /// A member name or link target is longer than any path can be.
    #[error(
        "tarball entry {entry:?}... has a name or link target over {MAX_NAME} bytes; shorten it"
    )]
    NameTooLong {
        /// The start of the name.
        entry: String,
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
        let link_len = entry.link_name_bytes().map_or(0, |l| l.len());
        if raw_name.len() > MAX_NAME || link_len > MAX_NAME {
            return Err(TarballError::NameTooLong {
                entry: name.chars().take(80).collect(),
            });
        }
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
        // Shallowest first, so the symlink named in an error is the one the
        // path would really go through.
        let mut parents: Vec<&Path> = rel
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        parents.reverse();
        for prefix in parents {
            match self.seen.get(prefix) {
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
                None => self.insert(prefix, Kind::Dir)?,
            }
        }
        let kind = match action {
            Action::Dir { .. } => Kind::Dir,
            Action::File { .. } | Action::Hardlink { .. } => Kind::File,
            Action::Symlink { .. } => Kind::Symlink,
            Action::Skip => return Ok(()),
        };
        match self.seen.get(rel) {
            None => self.insert(rel, kind),
            Some(Kind::Dir) if kind == Kind::Dir => Ok(()),
            Some(_) => Err(TarballError::Conflict {
                entry: name.to_string(),
            }),
        }
    }

    /// Implied directories count against [`Limits::max_entries`] too: they
    /// cost a `mkdir` and memory here just like listed ones.
    fn insert(&mut self, path: &Path, kind: Kind) -> Result<(), TarballError> {
        if self.seen.len() as u64 >= self.limits.max_entries {
            return Err(TarballError::TooManyEntries {
                path: self.tarball.to_path_buf(),
                limit: self.limits.max_entries,
            });
        }
        self.seen.insert(path.to_path_buf(), kind);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::os::unix::fs::MetadataExt;
    use tar::{EntryType, Header};

    /// A scratch layout like the real one: `<base>/tree/tmp/dbimage-pkg` is
    /// the destination and everything else under `base` is "outside".
    struct Fixture {
        _tmp: tempfile::TempDir,
        base: PathBuf,
        dest: PathBuf,
        archives: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let dest = base.join("tree/tmp/dbimage-pkg");
        fs::create_dir_all(&dest).unwrap();
        let archives = tmp.path().join("archives");
        fs::create_dir(&archives).unwrap();
        Fixture {
            _tmp: tmp,
            base,
            dest,
            archives,
        }
    }

    /// Every path under `dir`, never following symlinks.
    fn snapshot(dir: &Path) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    todo.push(p.clone());
                }
                out.insert(p);
            }
        }
        out
    }

    fn header(name: &[u8], etype: EntryType, size: u64, link: Option<&[u8]>, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        // Raw bytes rather than set_path: the Builder refuses the hostile
        // names these tests need.
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(etype);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(1234);
        h.set_cksum();
        h
    }

    enum M<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str, u32),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Raw(Box<Header>, Vec<u8>),
    }

    fn raw(h: Header, data: Vec<u8>) -> M<'static> {
        M::Raw(Box::new(h), data)
    }

    fn setup_sh() -> M<'static> {
        M::File("setup.sh", b"#!/bin/sh\necho installing\n", 0o755)
    }

    fn tar_bytes(members: Vec<M<'_>>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for m in members {
            let (h, data) = match m {
                M::File(n, d, mode) => (
                    header(n.as_bytes(), EntryType::Regular, d.len() as u64, None, mode),
                    d.to_vec(),
                ),
                M::Dir(n, mode) => (
                    header(n.as_bytes(), EntryType::Directory, 0, None, mode),
                    Vec::new(),
                ),
                M::Sym(n, t) => (
                    header(
                        n.as_bytes(),
                        EntryType::Symlink,
                        0,
                        Some(t.as_bytes()),
                        0o777,
                    ),
                    Vec::new(),
                ),
                M::Hard(n, t) => (
                    header(n.as_bytes(), EntryType::Link, 0, Some(t.as_bytes()), 0o644),
                    Vec::new(),
                ),
                M::Raw(h, d) => (*h, d),
            };
            b.append(&h, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A pax `x` member carrying one record, describing the next member.
    fn pax(key: &str, value: &[u8]) -> M<'static> {
        let body_len = key.len() + value.len() + 3;
        // The record's length counts its own digits.
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        let mut rec = format!("{len} {key}=").into_bytes();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        assert_eq!(rec.len(), len);
        raw(
            header(
                b"pax-hdr",
                EntryType::XHeader,
                rec.len() as u64,
                None,
                0o644,
            ),
            rec,
        )
    }

    fn long_name(name: &[u8]) -> M<'static> {
        let mut data = name.to_vec();
        data.push(0);
        raw(
            header(
                b"././@LongLink",
                EntryType::GNULongName,
                data.len() as u64,
                None,
                0o644,
            ),
            data,
        )
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bzip(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn put(fx: &Fixture, name: &str, data: &[u8]) -> PathBuf {
        let p = fx.archives.join(name);
        fs::write(&p, data).unwrap();
        p
    }

    /// Runs `check` and `unpack` on a hostile archive and asserts both
    /// refuse it with `expect` in the message, `check` writes nothing at
    /// all and `unpack` nothing outside the destination.
    fn refused(fx: &Fixture, archive: &Path, expect: &str) -> (TarballError, TarballError) {
        let before = snapshot(&fx.base);
        let checked = check(archive, &Limits::default()).unwrap_err();
        assert!(
            checked.to_string().contains(expect),
            "check: {checked} (wanted {expect:?})"
        );
        assert_eq!(snapshot(&fx.base), before, "check wrote something");
        let unpacked = unpack(archive, &fx.dest, &Limits::default()).unwrap_err();
        assert!(
            unpacked.to_string().contains(expect),
            "unpack: {unpacked} (wanted {expect:?})"
        );
        let outside: Vec<_> = snapshot(&fx.base)
            .into_iter()
            .filter(|p| !before.contains(p) && !p.starts_with(&fx.dest))
            .collect();
        assert!(outside.is_empty(), "unpack wrote outside: {outside:?}");
        // Whatever unpack left inside goes, as the caller would remove it,
        // so that the next case starts from an empty destination.
        fs::remove_dir_all(&fx.dest).unwrap();
        fs::create_dir(&fx.dest).unwrap();
        (checked, unpacked)
    }

    #[test]
    fn refuses_dotdot() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), M::File("../evil", b"x", 0o644)]),
        );
        let (c, u) = refused(
            &fx,
            &a,
            "tarball entry \"../evil\" escapes the package directory; rebuild the tarball with relative paths",
        );
        assert!(matches!(c, TarballError::Escapes { .. }));
        assert!(matches!(u, TarballError::Escapes { .. }));
        assert!(!fx.base.join("tree/tmp/evil").exists());
        // Deeper in the name, too.
        let a = put(
            &fx,
            "y.tar",
            &tar_bytes(vec![M::File("a/../../evil2", b"x", 0o644), setup_sh()]),
        );
        refused(&fx, &a, "escapes the package directory");
    }

    #[test]
    fn refuses_dotdot_in_pax_path() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![
                setup_sh(),
                pax("path", b"../pax-evil"),
                M::File("innocent", b"x", 0o644),
            ]),
        );
        refused(&fx, &a, "tarball entry \"../pax-evil\" escapes");
        assert!(!fx.base.join("tree/tmp/pax-evil").exists());
    }

    #[test]
    fn refuses_absolute_path() {
        let fx = fixture();
        let evil = fx.base.join("abs-evil");
        let name = evil.to_string_lossy().into_owned();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), M::File(&name, b"x", 0o644)]),
        );
        let (c, _) = refused(
            &fx,
            &a,
            "is an absolute path; rebuild the tarball with relative paths",
        );
        assert!(matches!(c, TarballError::AbsolutePath { .. }));
        assert!(!evil.exists());
    }

    #[test]
    fn refuses_symlink_to_etc_and_write_through_it() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![
                setup_sh(),
                M::Sym("etc-link", "/etc"),
                M::File("etc-link/dbimage-tarball-test-evil", b"x", 0o644),
            ]),
        );
        let (c, u) = refused(
            &fx,
            &a,
            "tarball entry \"etc-link\" is a symlink to the absolute path \"/etc\"",
        );
        assert!(matches!(c, TarballError::SymlinkAbsolute { .. }));
        assert!(matches!(u, TarballError::SymlinkAbsolute { .. }));
        assert!(!Path::new("/etc/dbimage-tarball-test-evil").exists());
        assert!(fs::symlink_metadata(fx.dest.join("etc-link")).is_err());
    }

    #[test]
    fn refuses_escaping_relative_symlink() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), M::Sym("a", "../../..")]),
        );
        let (c, _) = refused(&fx, &a, "points outside the package directory");
        assert!(matches!(c, TarballError::SymlinkEscapes { .. }));
        assert!(fs::symlink_metadata(fx.dest.join("a")).is_err());
        // One level too many from a subdirectory.
        let a = put(
            &fx,
            "y.tar",
            &tar_bytes(vec![setup_sh(), M::Sym("d/e/l", "../../../x")]),
        );
        refused(&fx, &a, "points outside the package directory");
    }

    #[test]
    fn refuses_dotdot_after_a_name_in_symlink() {
        // `s -> .` then `t -> s/..` is lexically inside but really the
        // parent of the package directory.
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), M::Sym("s", "."), M::Sym("t", "s/..")]),
        );
        let (c, _) = refused(&fx, &a, "uses \"..\" after a directory name");
        assert!(matches!(c, TarballError::SymlinkClimbs { .. }));
    }

    #[test]
    fn refuses_file_through_inside_symlink() {
        // Decision: refuse rather than follow, even though `lib -> sub`
        // stays inside; the archive should name `sub/evil`.
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![
                setup_sh(),
                M::Dir("sub/", 0o755),
                M::Sym("lib", "sub"),
                M::File("lib/evil", b"x", 0o644),
            ]),
        );
        let (c, u) = refused(
            &fx,
            &a,
            "tarball entry \"lib/evil\" goes through the symlink \"lib\" from the same tarball",
        );
        assert!(matches!(c, TarballError::ThroughSymlink { .. }));
        assert!(matches!(u, TarballError::ThroughSymlink { .. }));
        assert!(!fx.dest.join("sub/evil").exists());
    }

    #[test]
    fn writer_never_follows_a_symlink_on_disk() {
        // The on-disk guard on its own, without the bookkeeping that
        // normally stops this first.
        let fx = fixture();
        let outside = fx.base.join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, fx.dest.join("lnk")).unwrap();
        let mut w = Writer {
            dest: fx.dest.clone(),
            dir_modes: BTreeMap::new(),
            copied: 0,
        };
        let planned = Planned {
            rel: PathBuf::from("lnk/x"),
            name: "lnk/x".to_string(),
            action: Action::Dir { mode: 0o755 },
        };
        let e = w.make_parents(&planned).unwrap_err();
        assert!(matches!(e, TarballError::ThroughSymlink { .. }), "{e}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn refuses_hardlink_to_host_file() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), M::Hard("h", "/etc/hostname")]),
        );
        let (c, _) = refused(
            &fx,
            &a,
            "tarball entry \"h\" is a hardlink to \"/etc/hostname\", outside the package",
        );
        assert!(matches!(c, TarballError::HardlinkOutside { .. }));
        assert!(fs::symlink_metadata(fx.dest.join("h")).is_err());
    }

    #[test]
    fn refuses_hardlink_to_dotdot() {
        let fx = fixture();
        let x = fx.base.join("tree/tmp/x");
        fs::write(&x, b"host").unwrap();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), M::Hard("h", "../x")]),
        );
        let (c, _) = refused(&fx, &a, "is a hardlink to \"../x\", outside the package");
        assert!(matches!(c, TarballError::HardlinkOutside { .. }));
        assert_eq!(fs::metadata(&x).unwrap().nlink(), 1);
    }

    #[test]
    fn refuses_hardlink_to_later_or_missing_entry() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![M::Hard("h", "setup.sh"), setup_sh()]),
        );
        let (c, _) = refused(&fx, &a, "not a regular file earlier in the tarball");
        assert!(matches!(c, TarballError::HardlinkUnknown { .. }));
    }

    #[test]
    fn refuses_device_and_fifo() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![
                setup_sh(),
                raw(header(b"null", EntryType::Char, 0, None, 0o666), Vec::new()),
            ]),
        );
        let (c, _) = refused(&fx, &a, "tarball entry \"null\" is a character device");
        assert!(matches!(c, TarballError::SpecialFile { .. }));
        let a = put(
            &fx,
            "y.tar",
            &tar_bytes(vec![
                setup_sh(),
                raw(header(b"sda", EntryType::Block, 0, None, 0o660), Vec::new()),
            ]),
        );
        refused(&fx, &a, "tarball entry \"sda\" is a block device");
        let a = put(
            &fx,
            "z.tar",
            &tar_bytes(vec![
                setup_sh(),
                raw(header(b"pipe", EntryType::Fifo, 0, None, 0o644), Vec::new()),
            ]),
        );
        refused(&fx, &a, "tarball entry \"pipe\" is a FIFO");
        assert!(fs::symlink_metadata(fx.dest.join("null")).is_err());
        assert!(fs::symlink_metadata(fx.dest.join("pipe")).is_err());
    }

    #[test]
    fn refuses_gnu_sparse_and_unknown_types() {
        let fx = fixture();
        let mut h = header(b"sparse", EntryType::GNUSparse, 0, None, 0o644);
        if let Some(gnu) = h.as_gnu_mut() {
            gnu.set_real_size(0);
        }
        h.set_cksum();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), raw(h, Vec::new())]),
        );
        let (c, _) = refused(&fx, &a, "is a GNU sparse file");
        assert!(matches!(c, TarballError::Sparse { .. }));
        let a = put(
            &fx,
            "y.tar",
            &tar_bytes(vec![
                setup_sh(),
                raw(
                    header(b"vol", EntryType::new(b'V'), 0, None, 0o644),
                    Vec::new(),
                ),
            ]),
        );
        let (c, _) = refused(&fx, &a, "has unsupported type 'V'");
        assert!(matches!(c, TarballError::UnsupportedType { .. }));
        let a = put(
            &fx,
            "z.tar",
            &tar_bytes(vec![
                setup_sh(),
                pax("GNU.sparse.major", b"1"),
                M::File("GNUSparseFile.0/data", b"x", 0o644),
            ]),
        );
        let (c, _) = refused(&fx, &a, "\"GNUSparseFile.0/data\" is a GNU sparse file");
        assert!(matches!(c, TarballError::Sparse { .. }));
    }

    #[test]
    fn refuses_missing_or_odd_setup() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tgz",
            &gzip(&tar_bytes(vec![M::File("install.sh", b"x", 0o755)])),
        );
        let (c, _) = refused(&fx, &a, "no setup.sh at the top of ");
        assert!(matches!(c, TarballError::NoSetup { .. }));
        assert!(
            c.to_string()
                .ends_with("x.tgz; the tarball must carry its install script as ./setup.sh")
        );
        let fx = fixture();
        let a = put(
            &fx,
            "y.tar",
            &tar_bytes(vec![M::File("sub/setup.sh", b"x", 0o755)]),
        );
        refused(&fx, &a, "no setup.sh at the top of ");
        let fx = fixture();
        let a = put(
            &fx,
            "z.tar",
            &tar_bytes(vec![
                M::File("real.sh", b"x", 0o755),
                M::Sym("setup.sh", "real.sh"),
            ]),
        );
        let (c, _) = refused(&fx, &a, "is a symlink, not a regular file");
        assert!(matches!(c, TarballError::SetupNotFile { .. }));
    }

    #[test]
    fn refuses_gzip_garbage_zero_bytes_and_truncation() {
        let fx = fixture();
        let mut junk = vec![0x1f, 0x8b];
        let mut seed: u32 = 0x2545_f491;
        for _ in 0..4096 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            junk.push((seed >> 16) as u8);
        }
        let a = put(&fx, "x.tar.gz", &junk);
        let (c, _) = refused(&fx, &a, "x.tar.gz is not a valid tar archive: ");
        assert!(matches!(c, TarballError::NotTar { .. }));
        for name in ["empty.tar", "empty.tgz", "empty.tar.bz2"] {
            let a = put(&fx, name, b"");
            refused(
                &fx,
                &a,
                &format!("{name} is not a valid tar archive: the file is empty"),
            );
        }
        let full = tar_bytes(vec![setup_sh(), M::File("big", &[7u8; 5000], 0o644)]);
        let a = put(&fx, "cut.tar", &full[..3000]);
        refused(&fx, &a, "cut.tar is not a valid tar archive: ");
        let a = put(&fx, "cut.tgz", &gzip(&full)[..100]);
        refused(&fx, &a, "cut.tgz is not a valid tar archive: ");
        let a = put(&fx, "text.tar", &[b'x'; 2048]);
        refused(
            &fx,
            &a,
            "text.tar is not a valid tar archive: no tar header at the start",
        );
    }

    #[test]
    fn refuses_over_limits() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), M::File("big", &[0u8; 1000], 0o644)]),
        );
        let small = Limits {
            max_total_bytes: 100,
            max_entries: 10,
        };
        let before = snapshot(&fx.base);
        let e = check(&a, &small).unwrap_err();
        assert!(
            matches!(e, TarballError::TooLarge { limit: 100, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("holds more than 100 bytes"));
        assert_eq!(snapshot(&fx.base), before);
        let e = unpack(&a, &fx.dest, &small).unwrap_err();
        assert!(matches!(e, TarballError::TooLarge { .. }), "{e}");
        assert!(!fx.dest.join("big").exists());
        let few = Limits {
            max_total_bytes: 1 << 20,
            max_entries: 1,
        };
        let e = check(&a, &few).unwrap_err();
        assert!(
            matches!(e, TarballError::TooManyEntries { limit: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn refuses_oversized_long_name() {
        let fx = fixture();
        let long = vec![b'a'; 2 << 20];
        let mut h = header(
            b"././@LongLink",
            EntryType::GNULongName,
            long.len() as u64,
            None,
            0o644,
        );
        h.set_cksum();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![setup_sh(), raw(h, long), M::File("f", b"x", 0o644)]),
        );
        let (c, _) = refused(&fx, &a, "oversized long-name or pax header");
        assert!(matches!(c, TarballError::HeaderTooLarge { .. }));
        let a = put(
            &fx,
            "y.tar",
            &tar_bytes(vec![
                setup_sh(),
                long_name(&b"d/".repeat(2500)),
                M::File("placeholder", b"", 0o644),
            ]),
        );
        let (c, _) = refused(&fx, &a, "has a name or link target over 4096 bytes");
        assert!(matches!(c, TarballError::NameTooLong { .. }));
    }

    #[test]
    fn long_names_work_and_implied_dirs_count() {
        let fx = fixture();
        let deep = format!("{}file", "dir/".repeat(40));
        let tar = tar_bytes(vec![
            setup_sh(),
            long_name(deep.as_bytes()),
            M::File("placeholder", b"deep", 0o644),
        ]);
        let a = put(&fx, "x.tar", &tar);
        assert_eq!(check(&a, &Limits::default()).unwrap().entries, 2);
        let few = Limits {
            max_total_bytes: 1 << 20,
            max_entries: 10,
        };
        let e = check(&a, &few).unwrap_err();
        assert!(matches!(e, TarballError::TooManyEntries { .. }), "{e}");
        unpack(&a, &fx.dest, &Limits::default()).unwrap();
        assert_eq!(fs::read(fx.dest.join(&deep)).unwrap(), b"deep");
    }

    #[test]
    fn refuses_duplicates_and_bad_dest() {
        let fx = fixture();
        let a = put(
            &fx,
            "x.tar",
            &tar_bytes(vec![
                setup_sh(),
                M::File("f", b"1", 0o644),
                M::File("f", b"2", 0o644),
            ]),
        );
        let (c, _) = refused(&fx, &a, "tarball entry \"f\" clashes with an earlier entry");
        assert!(matches!(c, TarballError::Conflict { .. }));
        let fx = fixture();
        let a = put(&fx, "ok.tar", &tar_bytes(vec![setup_sh()]));
        fs::write(fx.dest.join("leftover"), b"").unwrap();
        let e = unpack(&a, &fx.dest, &Limits::default()).unwrap_err();
        assert!(matches!(e, TarballError::BadDest { .. }), "{e}");
        assert!(!fx.dest.join("setup.sh").exists());
    }

    #[test]
    fn detect_names_and_magic() {
        let fx = fixture();
        let a = put(&fx, "pkg.zip", b"PK\x03\x04rest");
        let e = detect(&a).unwrap_err();
        assert!(matches!(e, TarballError::UnknownCompression { .. }));
        assert!(
            e.to_string().ends_with(
                "pkg.zip: unknown tarball type; name it with one of: .tar, .tgz, .tar.gz, .tar.bz2, .tbz2"
            ),
            "{e}"
        );
        refused(&fx, &a, "unknown tarball type");
        let tar = tar_bytes(vec![setup_sh()]);
        let a = put(&fx, "pkg.tar.gz", &bzip(&tar));
        let e = detect(&a).unwrap_err();
        assert!(matches!(e, TarballError::CompressionMismatch { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("pkg.tar.gz is named as a gzip tarball but holds bzip2 data"),
            "{e}"
        );
        refused(&fx, &a, "is named as a gzip tarball but holds bzip2 data");
        let a = put(&fx, "pkg.tar", &gzip(&tar));
        assert!(matches!(
            detect(&a),
            Err(TarballError::CompressionMismatch { .. })
        ));
        assert_eq!(detect(&put(&fx, "a.tar", &tar)).unwrap(), Compression::None);
        assert_eq!(
            detect(&put(&fx, "a.TGZ", &gzip(&tar))).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            detect(&put(&fx, "a.tbz2", &bzip(&tar))).unwrap(),
            Compression::Bzip2
        );
        // A v7 header has no ustar magic but a valid checksum.
        let mut v7 = tar.clone();
        v7[257..265].fill(0);
        let mut h = Header::new_old();
        h.as_mut_bytes().copy_from_slice(&v7[..512]);
        h.set_cksum();
        v7[..512].copy_from_slice(h.as_bytes());
        assert_eq!(detect(&put(&fx, "v7.tar", &v7)).unwrap(), Compression::None);
    }

    #[test]
    fn unpacks_tgz_with_modes_links_and_nested_dirs() {
        let fx = fixture();
        let a = put(
            &fx,
            "pkg.tgz",
            &gzip(&tar_bytes(vec![
                M::Dir("./", 0o755),
                M::File("./setup.sh", b"#!/bin/sh\n", 0o755),
                M::Dir("./opt/", 0o750),
                M::Dir("./opt/db/bin/", 0o755),
                M::File("./opt/db/bin/dbd", b"ELF", 0o4755),
                M::File("./opt/db/lib/libdb.so.1", b"lib", 0o2644),
                M::Sym("./opt/db/lib/libdb.so", "libdb.so.1"),
                M::Sym("./opt/db/bin/lib", "../lib"),
                M::Hard("./opt/db/bin/dbd-again", "opt/db/bin/dbd"),
                M::Dir("./ro/", 0o555),
                M::File("./ro/inside", b"ro", 0o444),
            ])),
        );
        let before = snapshot(&fx.base);
        let checked = check(&a, &Limits::default()).unwrap();
        assert_eq!(snapshot(&fx.base), before);
        let got = unpack(&a, &fx.dest, &Limits::default()).unwrap();
        assert_eq!(got, checked);
        assert_eq!(
            got,
            Summary {
                entries: 10,
                bytes: 18
            }
        );
        let mode = |p: &str| fs::symlink_metadata(fx.dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("setup.sh"), 0o755);
        assert_eq!(mode("opt"), 0o750);
        assert_eq!(mode("opt/db"), 0o755, "implied directory");
        assert_eq!(mode("opt/db/bin/dbd"), 0o755, "setuid dropped");
        assert_eq!(mode("opt/db/lib/libdb.so.1"), 0o644, "setgid dropped");
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(fs::read(fx.dest.join("ro/inside")).unwrap(), b"ro");
        assert_eq!(
            fs::read_link(fx.dest.join("opt/db/lib/libdb.so")).unwrap(),
            Path::new("libdb.so.1")
        );
        assert_eq!(
            fs::read(fx.dest.join("opt/db/bin/lib/libdb.so")).unwrap(),
            b"lib"
        );
        let dbd = fs::metadata(fx.dest.join("opt/db/bin/dbd")).unwrap();
        assert_eq!(dbd.nlink(), 2);
        assert_eq!(
            dbd.uid(),
            fs::metadata(&fx.dest).unwrap().uid(),
            "owner not from archive"
        );
        assert_eq!(
            snapshot(&fx.base)
                .into_iter()
                .filter(|p| !before.contains(p) && !p.starts_with(&fx.dest))
                .count(),
            0
        );
    }

    #[test]
    fn unpacks_bzip2() {
        let fx = fixture();
        let a = put(
            &fx,
            "pkg.tar.bz2",
            &bzip(&tar_bytes(vec![
                setup_sh(),
                M::File("data/x.txt", b"hello", 0o644),
            ])),
        );
        let got = unpack(&a, &fx.dest, &Limits::default()).unwrap();
        assert_eq!(got.entries, 2);
        assert_eq!(fs::read(fx.dest.join("data/x.txt")).unwrap(), b"hello");
        assert!(
            fs::read(fx.dest.join("setup.sh"))
                .unwrap()
                .starts_with(b"#!/bin/sh")
        );
    }
}
