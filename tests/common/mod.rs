//! Helpers shared by the end-to-end tests: run the real binary as root
//! against real debootstrap, loop devices and QEMU, and check the host is
//! left clean.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// One build at a time: they share the base-tree cache and two cores.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Serialises builds within a test binary.
pub fn build_lock() -> MutexGuard<'static, ()> {
    BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dbimage binary under test.
pub fn dbimage() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dbimage"));
    c.env("DBIMAGE_DATA_DIR", env!("CARGO_MANIFEST_DIR"));
    c
}

/// A scratch area: its own work dir and output dir, the shared cache.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let base = Path::new("/var/tmp/dbimage-tests");
        std::fs::create_dir_all(base).unwrap();
        Scratch { dir: tempfile::tempdir_in(base).unwrap() }
    }
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
    pub fn out(&self) -> PathBuf {
        self.dir.path().join("images")
    }
    /// `dbimage` with this scratch's work and output directories.
    pub fn cmd(&self) -> Command {
        let mut c = dbimage();
        c.env("DBIMAGE_WORK_DIR", self.work()).env("DBIMAGE_IMAGES_DIR", self.out());
        c
    }
    /// Files left in the output directory.
    pub fn outputs(&self) -> Vec<String> {
        list(&self.out())
    }
    /// Asserts nothing of this scratch is mounted or attached, and the work
    /// directory holds nothing.
    pub fn assert_clean(&self) {
        let root = self.dir.path().to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        assert!(ours.is_empty(), "mounts left behind: {ours:#?}");
        let loops = Command::new("losetup").arg("-a").output().unwrap();
        let loops = String::from_utf8_lossy(&loops.stdout).to_string();
        let ours: Vec<&str> = loops.lines().filter(|l| l.contains(&root)).collect();
        assert!(ours.is_empty(), "loop devices left behind: {ours:#?}");
        assert!(list(&self.work()).is_empty(), "work dir not empty: {:?}", list(&self.work()));
    }
}

/// Names in a directory (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Runs a command, echoing its output into the test log.
pub fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn dbimage");
    eprintln!("--- {:?}\n{}{}", c, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// The end-to-end tests need root (loop devices, mounts, chroot).
pub fn require_root() {
    assert!(
        nix_is_root(),
        "the end-to-end tests build real images and must run as root (sudo cargo test)"
    );
}

fn nix_is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}
