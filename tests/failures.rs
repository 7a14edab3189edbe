//! Failure paths: each must stop with a clear error, leave no mount, no
//! loop device, no work files and nothing in the output directory.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn with_test_elements(c: &mut std::process::Command) {
    c.env("ELEMENTS_PATH", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/elements"));
}

#[test]
fn missing_element_is_a_usage_error_and_touches_nothing() {
    let scratch = Scratch::new();
    let mut c = scratch.cmd();
    c.args(["make", "-d", "redis", "-I", "-x", "no-such-element"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-element"), "{err}");
    assert!(!scratch.work().exists(), "nothing was created");
    assert!(scratch.outputs().is_empty());
}

#[test]
fn unsupported_request_prints_the_table() {
    let scratch = Scratch::new();
    let mut c = scratch.cmd();
    c.args(["make", "-d", "mysql", "-I"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().next().unwrap().contains("mysql"), "{err}");
    assert!(!scratch.work().exists());
}

/// Without -I a cloud is needed; its absence must be found before a build
/// spends minutes, and a keypair name needs one too.
#[test]
fn publishing_without_a_cloud_fails_before_building() {
    let scratch = Scratch::new();
    for args in [&["make", "-d", "redis"][..], &["make", "-d", "redis", "-I", "-k", "my-keypair"][..]] {
        let mut c = scratch.cmd();
        c.env_remove("OS_CLOUD").env_remove("OS_AUTH_URL").env("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml");
        c.args(args);
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("no cloud configured") || err.contains("cloud keypairs need a configured cloud"), "{err}");
        assert!(!scratch.work().exists(), "nothing was created");
        assert!(scratch.outputs().is_empty());
    }
}

#[test]
fn failing_hook_stops_the_build_cleanly() {
    require_root();
    let _lock = build_lock();
    let scratch = Scratch::new();
    let mut c = scratch.cmd();
    with_test_elements(&mut c);
    c.args(["make", "-d", "redis", "-r", "bookworm", "-I", "-x", "fail-hook"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pre-install.d/50-fail") && err.contains("failing on purpose"), "{err}");
    scratch.assert_clean();
    assert!(scratch.outputs().is_empty(), "{:?}", scratch.outputs());
}

/// Starts a build with the slow hook and waits until it runs in the chroot.
fn start_slow_build(scratch: &Scratch) -> (std::process::Child, std::path::PathBuf) {
    let mut c = scratch.cmd();
    with_test_elements(&mut c);
    c.args(["make", "-d", "redis", "-r", "bookworm", "-I", "-x", "slow-hook"]);
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    let marker = loop {
        let found = std::fs::read_dir(scratch.work())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("tree/tmp/dbimage-slow-hook-started"))
            .find(|p| p.exists());
        if let Some(m) = found {
            break m;
        }
        assert!(child.try_wait().unwrap().is_none(), "build ended before the hook ran");
        assert!(start.elapsed() < Duration::from_secs(900), "slow hook never started");
        std::thread::sleep(Duration::from_millis(500));
    };
    // The chroot's mounts live in dbimage's own mount namespace.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", child.id())).unwrap();
    assert!(mounts.contains(&*scratch.work().to_string_lossy()), "chroot mounts are live in dbimage's namespace");
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(&*scratch.work().to_string_lossy()), "the host never sees them");
    (child, marker)
}

/// SIGKILL while a hook runs in the chroot: the hook (a grandchild), the
/// mounts and the loop devices go with dbimage, without `dbimage cleanup`;
/// `cleanup` then removes the files the kernel cannot.
#[test]
fn a_killed_build_leaves_nothing_running() {
    require_root();
    let _lock = build_lock();
    let scratch = Scratch::new();
    let (mut child, _) = start_slow_build(&scratch);
    nix_signal::send(child.id(), nix_signal::Sig::Kill);
    child.wait().unwrap();
    assert_nothing_left_after_kill(scratch.dir.path());
    let mut c = scratch.cmd();
    c.arg("cleanup");
    let out = run(c);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("undid"));
    scratch.assert_clean();
    assert!(scratch.outputs().is_empty());
}

fn interrupt_mid_build(signal: nix_signal::Sig) {
    require_root();
    let _lock = build_lock();
    let scratch = Scratch::new();
    let (mut child, marker) = start_slow_build(&scratch);
    nix_signal::send(child.id(), signal);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    eprintln!("{err}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!marker.exists());
    scratch.assert_clean();
    assert!(scratch.outputs().is_empty());
}

#[test]
fn sigint_mid_build_cleans_up() {
    interrupt_mid_build(nix_signal::Sig::Int);
}

#[test]
fn sigterm_mid_build_cleans_up() {
    interrupt_mid_build(nix_signal::Sig::Term);
}

/// Sending a signal to the child we started, by its PID.
mod nix_signal {
    pub enum Sig {
        Int,
        Term,
        Kill,
    }
    pub fn send(pid: u32, sig: Sig) {
        let name = match sig {
            Sig::Int => "-INT",
            Sig::Term => "-TERM",
            Sig::Kill => "-KILL",
        };
        let ok = std::process::Command::new("kill").arg(name).arg(pid.to_string()).status().unwrap();
        assert!(ok.success());
    }
}

/// A PATH holding every program of the host's except `program`.
fn path_without(dir: &Path, program: &str) -> std::ffi::OsString {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap()) {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let link = bin.join(entry.file_name());
            if entry.file_name() != program && !link.exists() {
                std::os::unix::fs::symlink(entry.path(), &link).unwrap();
            }
        }
    }
    bin.into_os_string()
}

/// A build must not find out after minutes that a host program is
/// missing: it stops before touching anything, naming the package.
#[test]
fn missing_host_program_stops_make_before_building() {
    let scratch = Scratch::new();
    let path = path_without(scratch.dir.path(), "qemu-img");
    let mut c = scratch.cmd();
    c.env("PATH", &path).args(["make", "-d", "redis", "-I"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("`qemu-img` (package qemu-utils)") && err.contains("install qemu-utils"), "{err}");
    assert!(!err.contains("debootstrap"), "debootstrap is there and not named: {err}");
    assert!(!scratch.work().exists(), "nothing was created");
    assert!(scratch.outputs().is_empty());
}
