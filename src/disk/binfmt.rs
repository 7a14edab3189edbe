//! qemu-user for foreign-architecture builds.
//!
//! debootstrap's second stage, apt and every hook run the image's own
//! binaries in a chroot; on a foreign host the kernel hands them to
//! qemu-user through a binfmt_misc entry. The entry must have the `F` (fix
//! binary) flag: the kernel then opens the interpreter when the entry is
//! registered, so it works inside a chroot that has no copy of it.
//!
//! [`status`] only looks (planning and `--dry-run` must change nothing);
//! [`ensure`] registers the entry, and is called when a build starts. The
//! registration is left in place afterwards, as binfmt-support would do at
//! boot: it is host configuration, not build state.

use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::run::{Cmd, RunError};

/// Where the kernel's binfmt_misc filesystem lives.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Whether binaries of an architecture can run on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// The kernel runs them through qemu-user, chroots included.
    Enabled,
    /// qemu-user is installed but not registered with the kernel
    /// (binfmt_misc not mounted, or the entry disabled); [`ensure`] can
    /// register it.
    Registrable {
        /// The interpreter found on the host.
        interpreter: PathBuf,
    },
    /// An entry is enabled without the `F` flag (the dynamically linked
    /// `qemu-user-binfmt`): it cannot work inside the image's chroot.
    NoFixBinary,
    /// No qemu-user interpreter for the architecture is installed.
    Missing,
}

/// Errors making emulation available.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    /// qemu-user or binfmt-support is missing.
    #[error("{}", missing_message(*.0))]
    NotInstalled(Arch),
    /// The entry exists but lacks the `F` flag.
    #[error("{}", no_fix_message(*.0))]
    NoFixBinary(Arch),
    /// Mounting binfmt_misc or running update-binfmts failed.
    #[error("registering qemu-user for {arch} with the kernel failed: {source}")]
    Register {
        /// The target architecture.
        arch: Arch,
        /// The failing command.
        source: RunError,
    },
    /// update-binfmts succeeded but the kernel still has no enabled entry.
    #[error(
        "update-binfmts --enable {entry} ran, but {BINFMT_DIR}/{entry} is still not enabled; \
         check `update-binfmts --display {entry}`"
    )]
    StillDisabled {
        /// The binfmt_misc entry name.
        entry: String,
    },
}

/// The one-line fix when qemu-user is not installed.
pub fn missing_message(arch: Arch) -> String {
    format!(
        "building for {arch} on this host needs qemu-user: apt-get install qemu-user-static binfmt-support"
    )
}

fn no_fix_message(arch: Arch) -> String {
    format!(
        "{BINFMT_DIR}/{} is enabled without the F flag, so it cannot run {arch} binaries inside the \
         image's chroot: apt-get install qemu-user-static binfmt-support (it replaces qemu-user-binfmt)",
        entry_name(arch)
    )
}

/// The binfmt_misc entry (and binfmt-support name) for `arch`.
pub fn entry_name(arch: Arch) -> String {
    format!("qemu-{}", arch.uname())
}

/// Where qemu-user-static puts the interpreter: the `-P` wrapper of newer
/// packages first, as that is what their binfmt entry names.
fn interpreters(arch: Arch) -> [PathBuf; 2] {
    [
        PathBuf::from(format!(
            "/usr/libexec/qemu-binfmt/{}-binfmt-P",
            arch.uname()
        )),
        PathBuf::from(format!("/usr/bin/qemu-{}-static", arch.uname())),
    ]
}

/// What this host can do for `arch`, without changing anything.
pub fn status(arch: Arch) -> Emulation {
    status_in(Path::new(BINFMT_DIR), arch, &interpreters(arch))
}

fn status_in(dir: &Path, arch: Arch, interpreters: &[PathBuf]) -> Emulation {
    if let Ok(text) = std::fs::read_to_string(dir.join(entry_name(arch)))
        && text.starts_with("enabled")
    {
        let fixed = text
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .is_some_and(|f| f.contains('F'));
        return if fixed {
            Emulation::Enabled
        } else {
            Emulation::NoFixBinary
        };
    }
    match interpreters.iter().find(|p| p.exists()) {
        Some(p) => Emulation::Registrable {
            interpreter: p.clone(),
        },
        None => Emulation::Missing,
    }
}

/// Makes sure the kernel runs `arch` binaries through qemu-user, mounting
/// binfmt_misc and running `update-binfmts --enable` if needed.
pub fn ensure(arch: Arch) -> Result<(), BinfmtError> {
    match status(arch) {
        Emulation::Enabled => return Ok(()),
        Emulation::Missing => return Err(BinfmtError::NotInstalled(arch)),
        Emulation::NoFixBinary => return Err(BinfmtError::NoFixBinary(arch)),
        Emulation::Registrable { .. } => {}
    }
    let register_err = |source| BinfmtError::Register { arch, source };
    let dir = Path::new(BINFMT_DIR);
    if !dir.join("register").exists() {
        Cmd::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(dir)
            .run()
            .map_err(register_err)?;
        tracing::info!("    mounted binfmt_misc on {BINFMT_DIR} to run {arch} binaries");
        // Something else may register entries as soon as it is mounted.
        if status(arch) == Emulation::Enabled {
            return Ok(());
        }
    }
    let entry = entry_name(arch);
    match Cmd::new("update-binfmts").args(["--enable", &entry]).run() {
        Ok(()) => {}
        Err(RunError::Spawn { .. }) => return Err(BinfmtError::NotInstalled(arch)),
        Err(e) => return Err(register_err(e)),
    }
    match status(arch) {
        Emulation::Enabled => {
            tracing::info!(
                "    registered qemu-user for {arch} with the kernel (update-binfmts --enable {entry}); \
                 it stays registered"
            );
            Ok(())
        }
        Emulation::NoFixBinary => Err(BinfmtError::NoFixBinary(arch)),
        _ => Err(BinfmtError::StillDisabled { entry }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_entry(dir: &Path, text: &str) {
        std::fs::write(dir.join("qemu-ppc64le"), text).unwrap();
    }

    #[test]
    fn reads_the_kernel_entry() {
        let dir = tempfile::tempdir().unwrap();
        let interp = dir.path().join("qemu-ppc64le-static");
        let none: Vec<PathBuf> = vec![dir.path().join("absent")];
        assert_eq!(
            status_in(dir.path(), Arch::Ppc64le, &none),
            Emulation::Missing
        );

        std::fs::write(&interp, "").unwrap();
        let some = vec![dir.path().join("absent"), interp.clone()];
        assert_eq!(
            status_in(dir.path(), Arch::Ppc64le, &some),
            Emulation::Registrable {
                interpreter: interp.clone()
            }
        );

        write_entry(dir.path(), "disabled\ninterpreter /x\nflags: POCF\n");
        assert!(matches!(
            status_in(dir.path(), Arch::Ppc64le, &some),
            Emulation::Registrable { .. }
        ));

        write_entry(
            dir.path(),
            "enabled\ninterpreter /x\nflags: POCF\noffset 0\n",
        );
        assert_eq!(
            status_in(dir.path(), Arch::Ppc64le, &none),
            Emulation::Enabled
        );

        write_entry(
            dir.path(),
            "enabled\ninterpreter /usr/bin/qemu-ppc64le\nflags: OC\n",
        );
        assert_eq!(
            status_in(dir.path(), Arch::Ppc64le, &some),
            Emulation::NoFixBinary
        );
    }

    #[test]
    fn messages_name_the_packages() {
        let msg = missing_message(Arch::Ppc64le);
        assert!(
            msg.contains("apt-get install qemu-user-static binfmt-support"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        assert_eq!(entry_name(Arch::Ppc64le), "qemu-ppc64le");
    }
}
