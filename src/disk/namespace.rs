//! A mount namespace of dbimage's own.
//!
//! `make` first moves into a private
//! copy of the host's mount namespace, with every mount a slave of the
//! host's: what dbimage mounts is never seen by the host, and when dbimage
//! dies, even by SIGKILL, the kernel unmounts all of it once the last
//! process in the namespace is gone (children die with dbimage through
//! `PR_SET_PDEATHSIG`). The host's later mounts still reach dbimage.
//!
//! Not for `upload` and `import`: their disk is a FUSE export served by
//! qemu-storage-daemon, and a namespace torn down in the exit of that very
//! daemon deadlocks (ext4 on a loop device on the FUSE file waits for its
//! journal, which waits for the exiting server). Seen here; they keep their
//! state file and `dbimage cleanup` instead.

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Entering the namespace failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a private mount namespace ({what}): {source}; dbimage needs root (CAP_SYS_ADMIN)")]
pub struct NamespaceError {
    what: &'static str,
    source: nix::errno::Errno,
}

/// Moves this process into a private mount namespace. Must run before any
/// thread is started: a namespace belongs to the thread that unshares it.
pub fn enter_private() -> Result<(), NamespaceError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|source| NamespaceError { what: "unshare", source })?;
    let flags = MsFlags::MS_REC | MsFlags::MS_SLAVE;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).map_err(|source| NamespaceError { what: "making / a slave", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a child process: the test harness's threads must not change namespace.
    #[test]
    fn mounts_in_the_namespace_stay_there() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().display().to_string();
        // In a forked child (single-threaded from fork), enter and mount.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // Only system calls between fork and _exit: other test
                // threads may hold the allocator's lock.
                let ok = enter_private().is_ok()
                    && mount(Some("tmpfs"), target.as_str(), Some("tmpfs"), MsFlags::empty(), None::<&str>).is_ok();
                unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0), "the child mounted in its namespace");
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&target), "the child's mount is not seen here");
    }
}
