//! Running commands inside an image's tree.
//!
//! While hooks run, the tree gets `/proc`, `/sys`, `/dev`, `/dev/pts`, the
//! host's `resolv.conf`, and a `policy-rc.d` that forbids starting daemons;
//! everything is registered on the teardown stack and removed by
//! [`Teardown::unwind_to`] with the returned mark, so the image never keeps
//! any of it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::guard::{Mark, Teardown, Undo};
use super::mount::{self, MountError};
use crate::run::Cmd;

/// Errors preparing a chroot.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A file in the tree could not be written.
    #[error("preparing {path} in the image tree: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
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
        for dir in ["proc", "sys", "dev", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        mount::special(td, "proc", &root.join("proc"), "")?;
        mount::special(td, "sysfs", &root.join("sys"), "")?;
        mount::bind(td, Path::new("/dev"), &root.join("dev"))?;
        let pts = root.join("dev/pts");
        // A private devpts instance: the chroot's ptys are not the host's.
        mount::special(td, "devpts", &pts, "newinstance,ptmxmode=0666,mode=0620,gid=5")?;

        replace_file(td, &root.join("etc/resolv.conf"), &host_resolv_conf())?;
        let policy = root.join("usr/sbin/policy-rc.d");
        replace_file(td, &policy, "#!/bin/sh\n# dbimage: no daemons during the build\nexit 101\n")?;
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755)).map_err(io_err(&policy))?;

        if let Some(cache) = apt_cache {
            let target = root.join("var/cache/apt/archives");
            fs::create_dir_all(cache.join("partial")).map_err(io_err(cache))?;
            fs::create_dir_all(&target).map_err(io_err(&target))?;
            mount::bind(td, cache, &target)?;
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

/// Puts `content` at `path` for the duration, saving what was there
/// (a file or a dangling symlink, as systemd-resolved leaves) for restore.
fn replace_file(td: &mut Teardown, path: &Path, content: &str) -> Result<(), ChrootError> {
    let backup = path.with_file_name(format!(
        "{}.dbimage-saved",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let had = path.symlink_metadata().is_ok();
    if had {
        fs::rename(path, &backup).map_err(io_err(path))?;
    }
    td.push(Undo::Restore { path: path.to_path_buf(), backup: had.then_some(backup) });
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    fs::write(path, content).map_err(io_err(path))
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
        .env_clear()
        .envs(base_env())
        .envs(env.iter().cloned())
}
