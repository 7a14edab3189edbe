//! The base root tree: debootstrap once, then a cached tarball.
//!
//! The tarball's name carries a hash of everything that shapes the tree
//! (distro, release, architecture, mirror, variant, extra packages, the
//! keyring it was checked against), so a change to any of them makes a new
//! base instead of reusing a wrong one. debootstrap's own .deb downloads
//! are cached too.
//!
//! debootstrap always checks signatures (`--force-check-gpg` with an
//! explicit `--keyring`): without them it silently skips the check when
//! Debian's keyring is missing, and the unchecked base would be cached.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::arch::Arch;
use crate::disk::guard::{Teardown, Undo};
use crate::run::{Cmd, RunError};

/// Errors making or unpacking the base tree.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A command failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A cache file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `apt-get update` found index files that do not match the mirror's
    /// Release file.
    #[error(
        "the Debian mirror is inconsistent for {release}/{arch}: its index files do not match its \
         Release file ({detail}). This is the mirror's fault (mid-sync or a stale suite), not the build's: \
         retry later, point DBIMAGE_MIRROR / DBIMAGE_SECURITY_MIRROR at another mirror, or, if only \
         {release}-security is affected, add \"{release}/{deb}\" to security_skip (DBIMAGE_SECURITY_SKIP)",
        deb = arch.debian()
    )]
    MirrorInconsistent {
        /// The Debian release.
        release: String,
        /// The target architecture.
        arch: Arch,
        /// apt's own words.
        detail: String,
    },
    /// Debian's archive keyring is not there to check the base against.
    #[error(
        "Debian's archive keyring {} is missing, so debootstrap cannot check what it downloads: \
         install the package debian-archive-keyring, or set debian_keyring (DBIMAGE_DEBIAN_KEYRING) \
         to a keyring that has Debian's archive keys",
        path.display()
    )]
    NoKeyring {
        /// The keyring looked for.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The keyring debootstrap checks against: its path, and its content's
/// hash for the cache key (a base checked against other keys is another base).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keyring {
    #[serde(skip)]
    path: PathBuf,
    sha256: String,
}

impl Keyring {
    /// Reads the keyring at `path`.
    pub fn open(path: &Path) -> Result<Keyring, RootfsError> {
        let bytes = match fs::read(path) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => return Err(RootfsError::NoKeyring { path: path.to_path_buf() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RootfsError::NoKeyring { path: path.to_path_buf() });
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let sha256 = crate::digest::sha256(&bytes);
        Ok(Keyring { path: path.to_path_buf(), sha256 })
    }
}

/// Everything that determines the base tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseSpec {
    /// Always `debian` for now.
    pub distro: String,
    /// Debian release.
    pub release: String,
    /// Target architecture.
    pub arch: Arch,
    /// Mirror debootstrap fetches from.
    pub mirror: String,
    /// Extra packages for debootstrap's `--include`.
    pub include: Vec<String>,
    /// What the downloaded Release files must be signed by.
    pub keyring: Keyring,
}

impl BaseSpec {
    /// The cache key: readable prefix plus a hash of every field.
    pub fn key(&self) -> String {
        let digest = crate::digest::sha256(&serde_json::to_vec(self).unwrap_or_default());
        let hex = &digest[..12];
        format!(
            "{}-{}-{}-minbase-{hex}",
            self.distro,
            self.release,
            self.arch.debian()
        )
    }
}

/// Returns the cached base tarball for `spec`, making it first if needed.
/// The bool says whether the cache was hit.
pub fn ensure_base(
    td: &mut Teardown,
    spec: &BaseSpec,
    cache_dir: &Path,
) -> Result<(PathBuf, bool), RootfsError> {
    let dir = cache_dir.join("rootfs");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tarball = dir.join(format!("{}.tar", spec.key()));
    if tarball.is_file() {
        return Ok((tarball, true));
    }
    let debs =
        cache_dir
            .join("debootstrap")
            .join(format!("{}-{}", spec.release, spec.arch.debian()));
    fs::create_dir_all(&debs).map_err(io_err(&debs))?;

    let scratch = dir.join(format!(".build-{}", std::process::id()));
    fs::create_dir_all(&scratch).map_err(io_err(&scratch))?;
    let undo_scratch = Undo::RemoveDir {
        path: scratch.clone(),
    };
    td.push(undo_scratch.clone());
    let tree = scratch.join("tree");
    debootstrap(spec, &debs, &tree).run()?;

    let partial = scratch.join("base.tar");
    Cmd::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(&tree)
        .args(["-cf"])
        .arg(&partial)
        .arg(".")
        .run()?;
    fs::rename(&partial, &tarball).map_err(io_err(&tarball))?;
    td.forget(&undo_scratch);
    Undo::RemoveDir { path: scratch }
        .undo()
        .map_err(|e| RootfsError::Io {
            path: tarball.clone(),
            source: std::io::Error::other(e),
        })?;
    Ok((tarball, false))
}

/// The debootstrap command making `spec`'s tree in `tree`.
fn debootstrap(spec: &BaseSpec, debs: &Path, tree: &Path) -> Cmd {
    let mut cmd = Cmd::new("debootstrap")
        .args(["--variant=minbase", "--merged-usr", "--force-check-gpg"])
        .arg(format!("--keyring={}", spec.keyring.path.display()))
        .arg(format!("--arch={}", spec.arch.debian()))
        .arg(format!("--cache-dir={}", debs.display()));
    if !spec.include.is_empty() {
        cmd = cmd.arg(format!("--include={}", spec.include.join(",")));
    }
    cmd.arg(&spec.release).arg(tree).arg(&spec.mirror)
}

/// Unpacks a base tarball into `tree` (which must be empty or absent).
pub fn unpack(tarball: &Path, tree: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(tree).map_err(io_err(tree))?;
    Cmd::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tarball)
        .arg("-C")
        .arg(tree)
        .run()?;
    Ok(())
}

/// Writes apt's sources for the image: the release, its updates, and its
/// security suite unless disabled (some mirrors carry a stale one).
pub fn write_apt_sources(
    tree: &Path,
    release: &str,
    mirror: &str,
    security: Option<&str>,
) -> Result<(), RootfsError> {
    let mut text = format!("deb {mirror} {release} main\ndeb {mirror} {release}-updates main\n");
    if let Some(sec) = security {
        text.push_str(&format!("deb {sec} {release}-security main\n"));
    }
    let path = tree.join("etc/apt/sources.list");
    fs::write(&path, text).map_err(io_err(&path))
}

/// `apt-get update` inside `tree` (already prepared as a chroot), naming a
/// mirror caught mid-sync as such instead of leaving apt's lines to decode.
pub fn apt_update(
    tree: &Path,
    env: &[(String, String)],
    release: &str,
    arch: Arch,
) -> Result<(), RootfsError> {
    let err = match crate::disk::chroot::command(tree, ["apt-get", "-q", "update"], env).run() {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if let RunError::Failed { tail, .. } = &err
        && let Some(detail) = mirror_inconsistency(tail)
    {
        return Err(RootfsError::MirrorInconsistent {
            release: release.to_string(),
            arch,
            detail,
        });
    }
    Err(err.into())
}

/// The line of apt's output that shows the mirror disagreeing with itself.
fn mirror_inconsistency(lines: &[String]) -> Option<String> {
    const SIGNS: [&str; 4] = [
        "Hash Sum mismatch",
        "unexpected size",
        "Mirror sync in progress",
        "by-hash",
    ];
    let at = lines
        .iter()
        .position(|l| SIGNS.iter().any(|s| l.contains(s)))?;
    let line = lines[at].trim().trim_start_matches("E: ");
    if line.contains("http") {
        return Some(line.to_string());
    }
    // apt names the file on the `Err:` line before the reason.
    match lines[..at].iter().rev().find(|l| l.starts_with("Err:")) {
        Some(err) => {
            let file = err.split_once(' ').map_or(err.as_str(), |(_, f)| f).trim();
            Some(format!("{file}: {line}"))
        }
        None => Some(line.to_string()),
    }
}

/// Bytes used by a tree (apparent sizes of files, as `du -s --apparent`).
pub fn tree_size(tree: &Path) -> Result<u64, RootfsError> {
    let out = Cmd::new("du")
        .args(["-s", "-x", "--block-size=1"])
        .arg(tree)
        .output()?;
    Ok(out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BaseSpec {
        BaseSpec {
            distro: "debian".into(),
            release: "bookworm".into(),
            arch: Arch::Amd64,
            mirror: "http://deb.debian.org/debian".into(),
            include: vec![],
            keyring: Keyring { path: "/k.gpg".into(), sha256: "00".into() },
        }
    }

    #[test]
    fn mirror_mid_sync_is_recognised() {
        let tail = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let size = tail(&[
            "Get:5 http://deb.debian.org/debian-security bookworm-security/main ppc64el Packages [1 kB]",
            "Err:5 http://deb.debian.org/debian-security bookworm-security/main ppc64el Packages",
            "  File has unexpected size (268880 != 268431). Mirror sync in progress? [IP: 1.2.3.4 80]",
            "E: Some index files failed to download. They have been ignored, or old ones used instead.",
        ]);
        let detail = mirror_inconsistency(&size).unwrap();
        assert!(
            detail.starts_with("http://deb.debian.org/debian-security bookworm-security/main ppc64el Packages: File has unexpected size"),
            "{detail}"
        );
        let by_hash = tail(&[
            "E: Failed to fetch http://deb.debian.org/debian-security/dists/bookworm-security/main/binary-ppc64el/by-hash/SHA256/abc  404  Not Found",
        ]);
        assert!(mirror_inconsistency(&by_hash).is_some_and(|l| l.starts_with("Failed to fetch")));
        let dns = tail(&[
            "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'",
        ]);
        assert_eq!(mirror_inconsistency(&dns), None);
        let err = RootfsError::MirrorInconsistent {
            release: "bookworm".into(),
            arch: Arch::Ppc64le,
            detail: "Hash Sum mismatch".into(),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("mirror is inconsistent") && msg.contains("\"bookworm/ppc64el\""),
            "{msg}"
        );
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = spec();
        let mut keys = vec![base.key()];
        let mut s = spec();
        s.release = "trixie".into();
        keys.push(s.key());
        let mut s = spec();
        s.arch = Arch::Ppc64le;
        keys.push(s.key());
        let mut s = spec();
        s.mirror = "http://mirror.example/debian".into();
        keys.push(s.key());
        let mut s = spec();
        s.include = vec!["vim".into()];
        keys.push(s.key());
        let mut s = spec();
        s.keyring.sha256 = "01".into();
        keys.push(s.key());
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "{keys:?}");
        assert!(base.key().starts_with("debian-bookworm-amd64-minbase-"));
        assert_eq!(base.key(), spec().key(), "stable");
    }

    #[test]
    fn debootstrap_always_checks_signatures_against_the_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("debian-archive-keyring.gpg");
        let err = Keyring::open(&path).unwrap_err().to_string();
        assert!(err.contains("debian-archive-keyring") && !err.contains('\n'), "{err}");
        fs::write(&path, b"").unwrap();
        assert!(matches!(Keyring::open(&path), Err(RootfsError::NoKeyring { .. })), "an empty keyring checks nothing");

        fs::write(&path, b"keys").unwrap();
        let ring = Keyring::open(&path).unwrap();
        fs::write(&path, b"other keys").unwrap();
        assert_ne!(Keyring::open(&path).unwrap().sha256, ring.sha256);
        let cmd = debootstrap(&BaseSpec { keyring: ring, ..spec() }, Path::new("/debs"), Path::new("/tree")).display();
        assert!(cmd.contains(" --force-check-gpg "), "{cmd}");
        assert!(cmd.contains(&format!(" --keyring={} ", path.display())), "{cmd}");
    }
}
