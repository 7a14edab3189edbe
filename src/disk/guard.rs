//! The teardown stack: every host side effect a build makes, undone in
//! reverse order whatever happens.
//!
//! Each mount, loop device, partition mapping and temporary directory is
//! pushed here as an [`Undo`] the moment it exists. The stack is written to
//! a state file after every change, so a build killed with SIGKILL can still
//! be cleaned up later by `dbimage cleanup`, which replays that file, but
//! only the steps confined to the work directory: a state file is data, and
//! a step naming a host path is refused whoever wrote it.
//! Dropping the stack unwinds it; [`Teardown::unwind_to`] undoes a suffix
//! early (e.g. the chroot's /proc once the hooks are done).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use serde::{Deserialize, Serialize};

use crate::run::Cmd;

/// One side effect and how to reverse it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "undo", rename_all = "snake_case")]
pub enum Undo {
    /// A mount point to unmount.
    Unmount {
        /// The mount point.
        path: PathBuf,
    },
    /// A loop device to detach.
    DetachLoop {
        /// The device node, e.g. `/dev/loop3`.
        device: PathBuf,
    },
    /// Partition nodes added to a loop device with `partx -a`.
    DeletePartitions {
        /// The whole-disk loop device.
        device: PathBuf,
    },
    /// A directory tree we created.
    RemoveDir {
        /// The directory.
        path: PathBuf,
    },
    /// A file we created and that must not survive failure.
    RemoveFile {
        /// The file.
        path: PathBuf,
    },
    /// A file we replaced for a while: put the saved original back (or
    /// remove ours if there was none).
    Restore {
        /// The file we replaced.
        path: PathBuf,
        /// Where the original was moved, if it existed.
        backup: Option<PathBuf>,
    },
    /// A daemon we started (qemu-storage-daemon exporting an image): ask it
    /// to stop with SIGTERM, which flushes its writes, and wait for it.
    StopDaemon {
        /// Its pid.
        pid: i32,
        /// Its command name, checked first so a reused pid is left alone.
        comm: String,
        /// A FUSE mount it served, unmounted if it is still there.
        mount: Option<PathBuf>,
    },
}

impl Undo {
    /// Whether replaying this step from a state file touches only what a
    /// build makes under `work`: paths inside it, loop devices backed by a
    /// file inside it, a qemu-storage-daemon serving a file inside it.
    pub fn confined_to(&self, work: &Path) -> Result<(), String> {
        match self {
            Undo::Unmount { path } | Undo::RemoveDir { path } => inside(work, path),
            // Beside outputs, builds write `.NAME.partial-PID`; only such a
            // name is removed outside the work directory.
            Undo::RemoveFile { path } => inside(work, path).or_else(|e| if is_partial(path) { Ok(()) } else { Err(e) }),
            Undo::Restore { path, backup } => {
                inside(work, path)?;
                backup.as_deref().map_or(Ok(()), |b| inside(work, b))
            }
            Undo::DetachLoop { device } | Undo::DeletePartitions { device } => loop_inside(work, device),
            Undo::StopDaemon { comm, mount, .. } => {
                if comm != "qemu-storage-daemon" {
                    return Err(format!("{comm:?} is not a daemon dbimage starts"));
                }
                mount.as_deref().map_or(Err("a daemon without its export".into()), |m| inside(work, m))
            }
        }
    }

    /// Reverses the side effect; already-undone effects are not an error.
    pub fn undo(&self) -> Result<(), String> {
        match self {
            Undo::Unmount { path } => unmount(path),
            Undo::DetachLoop { device } => detach_loop(device),
            Undo::StopDaemon { pid, comm, mount } => {
                stop_daemon(*pid, comm)?;
                mount.as_deref().map_or(Ok(()), unmount)
            }
            Undo::DeletePartitions { device } => {
                if !device.exists() {
                    return Ok(());
                }
                Cmd::new("partx").arg("-d").arg(device).run().map_err(|e| e.to_string())
            }
            Undo::RemoveDir { path } => {
                // A tool we ran (debootstrap) may have mounted inside it and
                // died; never let remove_dir_all walk into a live /proc or /dev.
                unmount_below(path)?;
                remove_dir(path)
            }
            Undo::RemoveFile { path } => remove_file(path),
            Undo::Restore { path, backup } => {
                remove_file(path)?;
                match backup {
                    Some(b) if b.symlink_metadata().is_ok() => fs::rename(b, path)
                        .map_err(|e| format!("restoring {}: {e}", path.display())),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// `path` is a partial output of dbimage's own (`.NAME.partial-PID`) in a
/// directory reached without links.
fn is_partial(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let pid = name.rsplit_once(".partial-").map(|(_, pid)| pid).unwrap_or("");
    let dir = path.parent().unwrap_or(Path::new("/"));
    name.starts_with('.')
        && !pid.is_empty()
        && pid.chars().all(|c| c.is_ascii_digit())
        && path.is_absolute()
        && dir.canonicalize().is_ok_and(|real| real == dir)
        && path.symlink_metadata().is_ok_and(|m| m.is_file())
}

/// `path` lies below `work`, spelled without `.` or `..`, and stays there
/// once links are resolved (as far as it exists).
fn inside(work: &Path, path: &Path) -> Result<(), String> {
    let outside = || Err(format!("{} is outside the work directory {}", path.display(), work.display()));
    let plain = path.is_absolute()
        && path.components().skip(1).all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || !path.starts_with(work) || path == work {
        return outside();
    }
    let Ok(work) = work.canonicalize() else { return outside() };
    let existing = path.ancestors().find(|a| a.symlink_metadata().is_ok()).unwrap_or(path);
    match existing.canonicalize() {
        Ok(real) if real.starts_with(&work) && real != work => Ok(()),
        // A dangling link left where a file was: removing it follows nothing.
        Err(_) if existing == path && existing.parent().and_then(|p| p.canonicalize().ok()).is_some_and(|p| p.starts_with(&work)) => Ok(()),
        _ => outside(),
    }
}

/// `device` is a loop device that is detached or backed by a file inside `work`.
fn loop_inside(work: &Path, device: &Path) -> Result<(), String> {
    let name = device.strip_prefix("/dev").ok().and_then(|n| n.to_str()).unwrap_or_default();
    let number = name.strip_prefix("loop").unwrap_or_default();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a loop device", device.display()));
    }
    match fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")) {
        Ok(backing) => inside(work, Path::new(backing.trim_end_matches('\n')))
            .map_err(|e| format!("{} is backed by a file elsewhere: {e}", device.display())),
        Err(_) => Ok(()),
    }
}

fn remove_dir(path: &Path) -> Result<(), String> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

fn remove_file(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unmount_below(dir: &Path) -> Result<(), String> {
    for mp in mounts_below(dir) {
        unmount(&mp)?;
    }
    Ok(())
}

/// Whether something is mounted on `path` (in this mount namespace).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn unmount(path: &Path) -> Result<(), String> {
    for attempt in 0..10 {
        if !is_mounted(path) {
            return Ok(());
        }
        match umount2(path, MntFlags::empty()) {
            Ok(()) => continue, // stacked mounts: loop until none is left
            Err(nix::errno::Errno::EBUSY) => {
                if attempt == 0 {
                    kill_processes_under(path);
                }
                thread::sleep(Duration::from_millis(200));
            }
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(format!("unmounting {}: {e}", path.display())),
        }
    }
    // Still busy: detach it from the tree so nothing of ours stays visible.
    umount2(path, MntFlags::MNT_DETACH)
        .map_err(|e| format!("unmounting {} (busy): {e}", path.display()))
}

/// Ends processes whose root or working directory lies under `path`: only
/// processes started inside our own chroot can be there.
fn kill_processes_under(path: &Path) {
    let Ok(entries) = fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let inside = ["root", "cwd"].iter().any(|l| {
            fs::read_link(e.path().join(l)).map(|t| t.starts_with(path)).unwrap_or(false)
        });
        if inside && pid != std::process::id() as i32 {
            tracing::warn!("ending process {pid} still running inside {}", path.display());
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn detach_loop(device: &Path) -> Result<(), String> {
    super::loopback::release(device);
    if !device.exists() {
        return Ok(());
    }
    let dev = loopdev::LoopDevice::open(device).map_err(|e| format!("{}: {e}", device.display()))?;
    for _ in 0..20 {
        match dev.detach() {
            Ok(()) => return Ok(()),
            // ENXIO: not attached any more.
            Err(e) if e.raw_os_error() == Some(libc_enxio()) => return Ok(()),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
    dev.detach().map_err(|e| format!("detaching {}: {e}", device.display()))
}

/// SIGTERM to `pid` if it still runs `comm`, then waits up to a minute
/// (a daemon flushing a large image takes a moment).
fn stop_daemon(pid: i32, comm: &str) -> Result<(), String> {
    // /proc/PID/stat is "pid (comm) state …"; a zombie ('Z') has exited.
    let running = || {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
        let name = &stat[open + 1..close];
        let state = stat[close + 1..].trim_start().chars().next();
        !name.is_empty() && comm.starts_with(name) && state != Some('Z')
    };
    if !running() {
        return Ok(());
    }
    let target = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("stopping {comm} ({pid}): {e}"))?;
    for _ in 0..600 {
        if !running() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{comm} ({pid}) did not stop within a minute of SIGTERM"))
}

fn libc_enxio() -> i32 {
    nix::errno::Errno::ENXIO as i32
}

/// The stack of side effects of one run, persisted to a state file.
#[derive(Debug)]
pub struct Teardown {
    stack: Vec<Undo>,
    state_file: Option<PathBuf>,
}

/// A position in the stack, for [`Teardown::unwind_to`].
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize);

/// What the state file holds.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: u32,
    stack: Vec<Undo>,
}

impl Teardown {
    /// An empty stack that records itself in `state_file` (if any).
    pub fn new(state_file: Option<PathBuf>) -> Teardown {
        Teardown { stack: Vec::new(), state_file }
    }

    /// Records a side effect that now exists.
    pub fn push(&mut self, undo: Undo) {
        self.stack.push(undo);
        self.save();
    }

    /// The current top of the stack.
    pub fn mark(&self) -> Mark {
        Mark(self.stack.len())
    }

    /// Undoes everything pushed after `mark`, newest first. Every step is
    /// tried; the first error is returned.
    pub fn unwind_to(&mut self, mark: Mark) -> Result<(), String> {
        let mut first_err = None;
        while self.stack.len() > mark.0 {
            let Some(u) = self.stack.pop() else { break };
            if let Err(e) = u.undo() {
                tracing::error!("cleanup: {e}");
                first_err.get_or_insert(e);
            }
            self.save();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Forgets the top entry without undoing it (the effect was made
    /// permanent, e.g. a temporary output renamed into place).
    pub fn forget(&mut self, undo: &Undo) {
        if let Some(pos) = self.stack.iter().rposition(|u| u == undo) {
            self.stack.remove(pos);
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        if self.stack.is_empty() {
            let _ = fs::remove_file(path);
            return;
        }
        let state = State { pid: std::process::id(), stack: self.stack.clone() };
        if let Ok(json) = serde_json::to_vec_pretty(&state) {
            let tmp = path.with_extension("tmp");
            if fs::write(&tmp, json).is_ok() {
                let _ = fs::rename(&tmp, path);
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = self.unwind_to(Mark(0));
    }
}

/// Replays a state file left by a run that died; returns what was undone.
///
/// Refuses while the owning process is still alive, and a file someone
/// else owns; steps not confined to `work` are left out with a warning.
pub fn replay_state_file(path: &Path, work: &Path) -> Result<Vec<Undo>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = path.symlink_metadata().map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!("{} is not a state file of this user's; not replayed", path.display()));
    }
    let raw = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let state: State = serde_json::from_slice(&raw)
        .map_err(|e| format!("{} is not a dbimage state file: {e}", path.display()))?;
    if Path::new(&format!("/proc/{}", state.pid)).exists() && state.pid != std::process::id() {
        return Err(format!(
            "build process {} that owns {} is still running; stop it first",
            state.pid,
            path.display()
        ));
    }
    let stack: Vec<Undo> = state
        .stack
        .into_iter()
        .filter(|u| match u.confined_to(work) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{}: not undoing {u:?}: {e}; check it by hand", path.display());
                false
            }
        })
        .collect();
    let done = stack.clone();
    let mut td = Teardown { stack, state_file: Some(path.to_path_buf()) };
    td.unwind_to(Mark(0))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwinds_in_reverse_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let a = dir.path().join("a");
        let b = a.join("b");
        let mut td = Teardown::new(Some(state.clone()));
        fs::create_dir(&a).unwrap();
        td.push(Undo::RemoveDir { path: a.clone() });
        let mark = td.mark();
        fs::write(&b, "x").unwrap();
        td.push(Undo::RemoveFile { path: b.clone() });
        let saved: State = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
        assert_eq!(saved.stack.len(), 2);
        td.unwind_to(mark).unwrap();
        assert!(!b.exists() && a.exists());
        drop(td);
        assert!(!a.exists());
        assert!(!state.exists(), "empty stack leaves no state file");
    }

    #[test]
    fn replay_undoes_a_dead_runs_effects() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let victim = dir.path().join("left-behind");
        fs::create_dir(&victim).unwrap();
        // pid 0 is never a live build.
        let s = State { pid: 0, stack: vec![Undo::RemoveDir { path: victim.clone() }] };
        fs::write(&state, serde_json::to_vec(&s).unwrap()).unwrap();
        let undone = replay_state_file(&state, dir.path()).unwrap();
        assert_eq!(undone.len(), 1);
        assert!(!victim.exists());
        assert!(!state.exists());
    }

    #[test]
    fn partial_outputs_are_recognised_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let partial = real.join(".pg-15.qcow2.partial-4242");
        std::fs::write(&partial, b"").unwrap();
        assert!(is_partial(&partial));
        for name in ["pg-15.qcow2", ".pg.partial-", ".pg.partial-12x", "passwd"] {
            std::fs::write(real.join(name), b"").unwrap();
            assert!(!is_partial(&real.join(name)), "{name}");
        }
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert!(!is_partial(&real.join("link/.pg-15.qcow2.partial-4242")), "reached through a link");
    }

    #[test]
    fn replay_undoes_only_what_lies_in_the_work_directory() {
        let host = tempfile::tempdir().unwrap();
        let canary = host.path().join("canary");
        fs::write(&canary, "host file").unwrap();
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let ours = w.join("build-1/tree");
        fs::create_dir_all(&ours).unwrap();
        std::os::unix::fs::symlink(host.path(), w.join("build-1/link")).unwrap();
        let hostile = [
            Undo::RemoveFile { path: canary.clone() },
            Undo::RemoveFile { path: w.join("build-1/../../").join(canary.strip_prefix("/").unwrap()) },
            Undo::RemoveFile { path: w.join("build-1/link/canary") },
            Undo::Restore { path: w.join("build-1/x"), backup: Some(canary.clone()) },
            Undo::RemoveDir { path: w.to_path_buf() },
            Undo::Unmount { path: "/proc".into() },
            Undo::DetachLoop { device: "/dev/sda".into() },
            Undo::StopDaemon { pid: 1, comm: "systemd".into(), mount: None },
        ];
        for u in &hostile {
            assert!(u.confined_to(w).is_err(), "{u:?}");
        }
        let mut stack = vec![Undo::RemoveDir { path: ours.clone() }];
        stack.extend(hostile.iter().cloned());
        let state = w.join("build-1/state.json");
        fs::write(&state, serde_json::to_vec(&State { pid: 0, stack }).unwrap()).unwrap();
        let undone = replay_state_file(&state, w).unwrap();
        assert_eq!(undone, [Undo::RemoveDir { path: ours.clone() }]);
        assert!(!ours.exists());
        assert_eq!(fs::read_to_string(&canary).unwrap(), "host file");
    }
}
