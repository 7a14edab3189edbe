//! Running commands inside an image's tree.
//!
//! While hooks run, the tree gets `/proc`, `/sys`, `/dev`, `/dev/pts`, the
//! host's `resolv.conf`, and a `policy-rc.d` that forbids starting daemons;
//! everything is registered on the teardown stack and removed by
//! [`Teardown::unwind_to`] with the returned mark, so the image never keeps
//! any of it.
//!
//! The tree may be a foreign image (`upload -s`): every mount point and
//! replaced file is reached by descriptor without following the image's
//! links, so `dev -> /dev` or `etc -> /etc` in the image cannot aim a
//! mount or a write at the host. What then runs in the chroot is the
//! image's own code, as root: that is not contained (the README says so).

use std::fs;
use std::path::{Path, PathBuf};

use super::guard::{Mark, Teardown, Undo};
use super::image_root::{ImageRoot, RootError};
use super::mount::{self, MountError, MountPoint};
use crate::run::Cmd;

/// Errors preparing a chroot.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A path in the tree is a link, or not what it should be.
    #[error(transparent)]
    Tree(#[from] RootError),
    /// A file in the tree could not be written.
    #[error("preparing {path} in the image tree: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl ChrootError {
    /// True when the tree itself is the problem (a link where dbimage mounts or writes).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ChrootError::Tree(e) if !matches!(e, RootError::Io { .. }))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ChrootError + '_ {
    move |source| ChrootError::Io { path: path.to_path_buf(), source }
}

/// Makes `root` ready for running commands; returns the mark to unwind to.
///
/// `apt_cache`, if given, is bind-mounted on apt's archive directory so
/// downloaded packages outlive the build and are not part of the image.
pub fn enter(td: &mut Teardown, root: &Path, apt_cache: Option<&Path>) -> Result<Mark, ChrootError> {
    let mark = td.mark();
    let result = (|| {
        let tree = ImageRoot::open(root)?;
        tree.mkdir_all("tmp", 0o755)?;
        let dir = |rel: &str| tree.mkdir_all(rel, 0o755);
        mount::special(td, "proc", confined(root, "proc", &dir("proc")?), "")?;
        mount::special(td, "sysfs", confined(root, "sys", &dir("sys")?), "")?;
        mount::bind(td, Path::new("/dev"), confined(root, "dev", &dir("dev")?))?;
        // A private devpts instance: the chroot's ptys are not the host's.
        // dev is now the host's /dev (a slave bind), so the plain path is safe.
        mount::special(td, "devpts", &root.join("dev/pts"), "newinstance,ptmxmode=0666,mode=0620,gid=5")?;

        replace_file(td, &tree, root, "etc/resolv.conf", &host_resolv_conf(), 0o644)?;
        let policy = "#!/bin/sh\n# dbimage: no daemons during the build\nexit 101\n";
        replace_file(td, &tree, root, "usr/sbin/policy-rc.d", policy, 0o755)?;

        if let Some(cache) = apt_cache {
            fs::create_dir_all(cache.join("partial")).map_err(io_err(cache))?;
            let rel = "var/cache/apt/archives";
            mount::bind(td, cache, confined(root, rel, &dir(rel)?))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(mark),
        Err(e) => {
            let _ = td.unwind_to(mark);
            Err(e)
        }
    }
}

/// The host's resolver configuration, following the usual symlink.
fn host_resolv_conf() -> String {
    fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
}

/// The directory `rel` of `root`, opened as `fd`, as a mount point.
fn confined<'a>(root: &Path, rel: &str, fd: &'a std::os::fd::OwnedFd) -> MountPoint<'a> {
    MountPoint::confined(root.join(rel), fd)
}

/// Puts `content` at `rel` for the duration, saving what was there (a file
/// or a dangling symlink, as systemd-resolved leaves) for restore. Its
/// directory is reached without following links.
fn replace_file(td: &mut Teardown, tree: &ImageRoot, root: &Path, rel: &str, content: &str, mode: u32) -> Result<(), ChrootError> {
    let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir = tree.mkdir_all(dir_rel, 0o755)?;
    let backup = format!("{name}.dbimage-saved");
    let had = tree.rename_in(&dir, dir_rel, name, &backup)?;
    let path = root.join(rel);
    td.push(Undo::Restore { path: path.clone(), backup: had.then(|| path.with_file_name(&backup)) });
    tree.replace(&dir, &format!("/{rel}"), name, content.as_bytes(), mode, (0, 0))?;
    Ok(())
}

/// The environment every command in the chroot starts with.
pub fn base_env() -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("DEBIAN_FRONTEND", "noninteractive"),
        ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A command run as root inside `root`, with a clean environment plus `env`.
pub fn command<I, S>(root: &Path, argv: I, env: &[(String, String)]) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    Cmd::new("chroot")
        .arg(root)
        .args(argv)
        .contained()
        .env_clear()
        .envs(base_env())
        .envs(env.iter().cloned())
}
