//! The test helpers' own promises, each shown failing where it used to
//! pass: a debugfs that cannot read the filesystem is not "file absent",
//! a test that panics ends what it started and unmounts what it left
//! before its scratch directory is deleted, and a hanging test binary is
//! ended by its watchdog with what it waited for.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A QCOW2 holding only an ext4 filesystem with /etc/present.
fn whole_disk_image(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/present"), "here\n").unwrap();
    convert(&ext4_disk(dir, "fs", None, 0, &tree), "qcow2")
}

#[test]
fn debugfs_tells_absent_from_unreadable() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = whole_disk_image(dir.path());
    assert!(partition_has(&image, None, "/etc/present"));
    assert!(!partition_has(&image, None, "/etc/absent"));
    assert_eq!(debugfs_in_partition(&image, None, "cat /etc/present").0, "here\n");

    // No filesystem at all: debugfs still exits 0 with empty output.
    let blank = dir.path().join("blank.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 {} 16M", blank.display()));
    let absent = std::panic::catch_unwind(|| partition_has(&blank, None, "/etc/absent"));
    assert!(absent.is_err(), "an unreadable filesystem was taken for a missing file");
    let listed = std::panic::catch_unwind(|| debugfs_in_partition(&blank, None, "ls -p /etc"));
    assert!(listed.is_err(), "an unreadable filesystem listed as empty");
    let missing = std::panic::catch_unwind(|| debugfs_in_partition(&image, None, "cat /etc/absent"));
    assert!(missing.is_err(), "cat of a missing file read as empty");
}

#[test]
fn scratch_drop_unmounts_instead_of_deleting_through_a_bind_mount() {
    require_root();
    // Stands for the host's /dev bind-mounted into a chroot.
    let host = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(host.path().join("precious"), "keep me").unwrap();
    let scratch = Scratch::new();
    let root = scratch.dir.path().to_path_buf();
    let target = root.join("work/tree/dev");
    std::fs::create_dir_all(&target).unwrap();
    sh(&format!("mount --bind {} {}", host.path().display(), target.display()));
    let failing = std::panic::catch_unwind(move || {
        let _scratch = scratch;
        panic!("a test failing with its chroot mounted");
    });
    assert!(failing.is_err());
    assert!(host.path().join("precious").is_file(), "the scratch delete went through the bind mount");
    assert!(mounts_below(&root).is_empty(), "left mounted: {:?}", mounts_below(&root));
    assert!(!root.exists(), "the scratch directory was kept although nothing was mounted");
}

#[test]
fn a_failing_test_ends_the_process_it_spawned() {
    let mut pid = 0;
    let failing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut c = Command::new("sh");
        c.args(["-c", "sleep 600 & wait"]);
        let child = spawn(c);
        pid = child.id();
        panic!("a test failing while its build runs");
    }));
    assert!(failing.is_err());
    assert!(!running(pid), "pid {pid} outlived its test");
}

/// Run only as the child of `a_hanging_binary_is_ended_by_its_watchdog`.
#[test]
#[ignore]
fn hangs_until_the_watchdog_ends_it() {
    assert!(
        std::env::var_os("DBIMAGE_TEST_HANG").is_some(),
        "this test hangs on purpose; a_hanging_binary_is_ended_by_its_watchdog runs it"
    );
    let mut c = Command::new("sleep");
    c.arg("600");
    spawn(c).wait();
}

#[test]
fn a_hanging_binary_is_ended_by_its_watchdog() {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "hangs_until_the_watchdog_ends_it"])
        .env("DBIMAGE_TEST_HANG", "1")
        .env("DBIMAGE_TEST_BINARY_TIMEOUT", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(c);
    let started = Instant::now();
    let out = child.output();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(started.elapsed() < Duration::from_secs(60), "{err}");
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(err.contains("ran longer than 2 s"), "{err}");
    assert!(err.contains("test hangs_until_the_watchdog_ends_it is still running, waiting for"), "{err}");
    let line = err.lines().find(|l| l.contains("ending pid") && l.contains("sleep")).unwrap_or_else(|| panic!("{err}"));
    let pid: u32 = line.split_whitespace().nth(2).and_then(|p| p.trim_end_matches(':').parse().ok()).unwrap();
    assert!(!running(pid), "the hanging test's sleep (pid {pid}) was left running");
}

/// The process exists and is not a zombie (one whose parent ended may wait
/// a moment to be reaped).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
}
