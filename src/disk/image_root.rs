//! An image's root tree (a mounted foreign filesystem, or a tree being
//! built), reached only by file descriptor.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` below the root's descriptor,
//! and `..` is refused before that: a crafted image (a symlink
//! `etc/ssh -> /etc/ssh`, a passwd home `/home/../../../root`) can name
//! nothing outside itself. Files are read only when regular and within a
//! size bound, and written by creating a new file and renaming it over the
//! old entry, so a device node or FIFO planted in the image is never opened.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// Why a path in the image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The path (from the image's own data) is not a plain path.
    #[error("{0} is not a plain path inside the image (`..` or an empty name); refusing it")]
    NotPlain(String),
    /// A component is a symbolic link: following it could reach the host.
    #[error("{0} goes through a symbolic link in the image; refusing to follow it")]
    Symlink(String),
    /// The entry is not a regular file (a device node, FIFO, socket or directory).
    #[error("{0} in the image is not a regular file; refusing to open it")]
    NotRegular(String),
    /// The file is larger than dbimage reads.
    #[error("{path} in the image is {size} bytes, more than the {limit} dbimage reads")]
    TooLarge {
        /// The path inside the image.
        path: String,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// Any other failure.
    #[error("{path} in the image: {source}")]
    Io {
        /// The path inside the image.
        path: String,
        /// The error.
        source: io::Error,
    },
}

impl RootError {
    fn from_errno(path: &str, e: Errno) -> RootError {
        match e {
            Errno::ELOOP => RootError::Symlink(path.to_string()),
            Errno::EXDEV => RootError::Io { path: path.to_string(), source: io::Error::other("crosses a mount point") },
            e => RootError::Io { path: path.to_string(), source: io::Error::from(e) },
        }
    }

    /// True when the entry does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RootError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The root directory of a mounted image.
#[derive(Debug)]
pub struct ImageRoot {
    fd: OwnedFd,
}

/// How every path below the root is resolved.
fn how(flags: OFlag, mode: Mode) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(mode)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        )
}

/// `rel` as `/a/b` for messages, after checking it has plain names only.
fn plain(rel: &str) -> Result<String, RootError> {
    let shown = format!("/{}", rel.trim_start_matches('/'));
    let mut parts = Path::new(rel).components().peekable();
    if parts.peek().is_none() {
        return Err(RootError::NotPlain(shown));
    }
    for part in parts {
        match part {
            Component::Normal(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(RootError::NotPlain(shown)),
        }
    }
    Ok(shown)
}

impl ImageRoot {
    /// Opens the directory `root` (a mount point of dbimage's own).
    pub fn open(root: &Path) -> Result<ImageRoot, RootError> {
        let fd = File::open(root).map_err(|source| RootError::Io { path: root.display().to_string(), source })?;
        Ok(ImageRoot { fd: fd.into() })
    }

    fn openat(&self, rel: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, RootError> {
        let shown = plain(rel)?;
        let rel = rel.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        openat2(self.fd.as_fd(), rel, how(flags, mode)).map_err(|e| match e {
            // O_NOFOLLOW with O_DIRECTORY says ENOTDIR for a final symlink.
            Errno::ENOTDIR if self.is_symlink(rel) => RootError::Symlink(shown),
            e => RootError::from_errno(&shown, e),
        })
    }

    /// Whether the last component of `rel` is itself a symbolic link.
    fn is_symlink(&self, rel: &str) -> bool {
        let path = how(OFlag::O_PATH, Mode::empty());
        openat2(self.fd.as_fd(), rel, path)
            .and_then(|fd| fstat(&fd))
            .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
    }

    /// The directory `rel`, for reading its entries or working in it.
    fn dir(&self, rel: &str) -> Result<OwnedFd, RootError> {
        self.openat(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
    }

    /// Reads the regular file `rel`, at most `limit` bytes; `None` when it
    /// does not exist.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, RootError> {
        let fd = match self.openat(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let shown = plain(rel)?;
        let st = fstat(&fd).map_err(|e| RootError::from_errno(&shown, e))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(RootError::NotRegular(shown));
        }
        let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(RootError::TooLarge { path: shown, size, limit });
        }
        let mut buf = Vec::new();
        File::from(fd)
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|source| RootError::Io { path: shown, source })?;
        Ok(Some(buf))
    }

    /// Owner and group of the open entry `fd` (`rel` for messages).
    pub fn owner(&self, fd: &OwnedFd, rel: &str) -> Result<(u32, u32), RootError> {
        let st = fstat(fd).map_err(|e| RootError::from_errno(rel, e))?;
        Ok((st.st_uid, st.st_gid))
    }

    /// Makes the directory `rel` and its missing parents (mode `mode` for
    /// the ones it makes, root's); returns its descriptor.
    pub fn mkdir_all(&self, rel: &str, mode: u32) -> Result<OwnedFd, RootError> {
        plain(rel)?;
        let mut at = String::new();
        for part in Path::new(rel).components().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy()),
            _ => None,
        }) {
            let parent = self.dir(if at.is_empty() { "." } else { &at })?;
            match mkdirat(parent.as_fd(), part.as_ref(), Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(RootError::from_errno(&format!("/{at}/{part}"), e)),
            }
            at = if at.is_empty() { part.into_owned() } else { format!("{at}/{part}") };
        }
        self.dir(rel)
    }

    /// Replaces `name` in directory `dir` with a new regular file holding
    /// `data`, mode `mode`, owned by `owner`: written under a temporary
    /// name and renamed over whatever was there (never opened).
    pub fn replace(&self, dir: &OwnedFd, shown: &str, name: &str, data: &[u8], mode: u32, owner: (u32, u32)) -> Result<(), RootError> {
        let err = |e: Errno| RootError::from_errno(shown, e);
        let tmp = format!(".{name}.dbimage-{}", std::process::id());
        let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let fd = openat2(dir.as_fd(), tmp.as_str(), how(flags, Mode::from_bits_truncate(0o600))).map_err(err)?;
        let written = (|| {
            fchown(&fd, Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1))).map_err(err)?;
            fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(err)?;
            let mut file = File::from(fd);
            file.write_all(data).and_then(|()| file.sync_all()).map_err(|source| RootError::Io { path: shown.into(), source })?;
            renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name).map_err(err)
        })();
        if written.is_err() {
            let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// Renames `from` to `to` in the directory `dir` (`rel` for messages);
    /// false when there was no `from`. Links are renamed, not followed.
    pub fn rename_in(&self, dir: &OwnedFd, rel: &str, from: &str, to: &str) -> Result<bool, RootError> {
        match renameat(dir.as_fd(), from, dir.as_fd(), to) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(RootError::from_errno(&format!("/{}/{from}", rel.trim_matches('/')), e)),
        }
    }

    /// Sets owner and mode of the directory behind `fd`.
    pub fn set_dir(&self, fd: &OwnedFd, shown: &str, mode: u32, owner: (u32, u32)) -> Result<(), RootError> {
        let err = |e: Errno| RootError::from_errno(shown, e);
        fchown(fd, Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1))).map_err(err)?;
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(err)
    }

    /// Names in the directory `rel` (empty when it does not exist).
    pub fn list(&self, rel: &str) -> Result<Vec<String>, RootError> {
        let fd = match self.dir(rel) {
            Ok(fd) => fd,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let shown = plain(rel)?;
        let dir = nix::dir::Dir::from_fd(fd).map_err(|e| RootError::from_errno(&shown, e))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| RootError::from_errno(&shown, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes the entry `name` of directory `rel` (not a directory).
    pub fn remove(&self, rel: &str, name: &str) -> Result<(), RootError> {
        let fd = self.dir(rel)?;
        let shown = format!("{}/{name}", plain(rel)?);
        unlinkat(fd.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(|e| RootError::from_errno(&shown, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn paths_stay_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host").unwrap();
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(host.path().join("secret"), r.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("passwd", r.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink(host.path(), r.join("out")).unwrap();
        let root = ImageRoot::open(r).unwrap();
        assert_eq!(root.read("etc/passwd", 100).unwrap().unwrap(), b"root:x:0:0::/root:/bin/sh\n");
        assert!(root.read("etc/missing", 100).unwrap().is_none());
        for link in ["etc/abs", "etc/rel", "out/secret"] {
            assert!(matches!(root.read(link, 100), Err(RootError::Symlink(_))), "{link}");
        }
        let up = format!("etc/../..{}/secret", host.path().display());
        assert!(matches!(root.read(&up, 100), Err(RootError::NotPlain(_))));
        assert!(matches!(root.mkdir_all("home/../../x", 0o755), Err(RootError::NotPlain(_))));
        assert!(matches!(root.read("etc/passwd", 3), Err(RootError::TooLarge { .. })));
        assert!(matches!(root.read("etc", 100), Err(RootError::NotRegular(_))));
        assert!(matches!(root.mkdir_all("out/x", 0o755), Err(RootError::Symlink(_))));
        assert_eq!(std::fs::read_to_string(host.path().join("secret")).unwrap(), "host");
    }

    #[test]
    fn a_fifo_is_neither_read_nor_opened_for_writing() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("d")).unwrap();
        nix::unistd::mkfifo(&r.join("d/f"), Mode::from_bits_truncate(0o644)).unwrap();
        let root = ImageRoot::open(r).unwrap();
        // No writer: a blocking open would hang here.
        assert!(matches!(root.read("d/f", 100), Err(RootError::NotRegular(_))));
        let dir = root.mkdir_all("d", 0o755).unwrap();
        root.replace(&dir, "/d/f", "f", b"new", 0o640, (1001, 1002)).unwrap();
        let meta = std::fs::symlink_metadata(r.join("d/f")).unwrap();
        assert!(meta.is_file());
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o640, 1001, 1002));
        assert_eq!(root.list("d").unwrap(), vec!["f".to_string()], "no temporary file left");
        root.remove("d", "f").unwrap();
        assert!(root.list("d").unwrap().is_empty());
    }
}
