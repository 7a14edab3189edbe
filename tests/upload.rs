//! `dbimage upload --no-publish` on images made here with other builders'
//! layouts (DIB's MBR with the root first, PReP before the root, a
//! whole-disk filesystem), and its failure paths: the input never changes
//! and nothing stays mounted, attached or running. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// A minimal Debian-like root: os-release, passwd, host keys, machine-id,
/// and dash, sleep and cat with their libraries so `-s` has a shell.
fn tree(dir: &Path, with_os_release: bool) -> PathBuf {
    let t = dir.join("tree");
    for d in ["etc/ssh", "home/debian", "usr/bin", "lib/x86_64-linux-gnu", "lib64", "bin", "tmp"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    if with_os_release {
        std::fs::write(t.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Test 12\"\n").unwrap();
    }
    std::fs::write(t.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\ndebian:x:1000:1000::/home/debian:/bin/sh\n").unwrap();
    std::fs::write(t.join("etc/ssh/ssh_host_ed25519_key"), "private").unwrap();
    std::fs::write(t.join("etc/ssh/ssh_host_ed25519_key.pub"), "public").unwrap();
    std::fs::write(t.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    for (from, to) in [
        ("/usr/bin/dash", "usr/bin/dash"),
        ("/usr/bin/sleep", "usr/bin/sleep"),
        ("/usr/bin/cat", "usr/bin/cat"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
    ] {
        std::fs::copy(from, t.join(to)).unwrap();
    }
    std::os::unix::fs::symlink("/usr/bin/dash", t.join("bin/sh")).unwrap();
    t
}

/// The layouts: (name, sfdisk script or none, root offset in sectors,
/// root's index in the table).
const LAYOUTS: [(&str, Option<&str>, u64, Option<usize>); 3] = [
    ("mbr", Some("label: dos\nstart=2048, type=83\n"), 2048, Some(0)),
    ("prep", Some("label: dos\nstart=2048, size=8192, type=41\nstart=10240, type=83\n"), 10240, Some(1)),
    ("whole", None, 0, None),
];

/// A compressed QCOW2 of 96 MiB with `tree` as its root filesystem.
fn disk(dir: &Path, name: &str, table: Option<&str>, offset_sectors: u64, tree: &Path) -> PathBuf {
    let raw = ext4_disk(dir, name, table, offset_sectors, tree);
    let q = dir.join(format!("{name}.qcow2"));
    sh(&format!("qemu-img convert -q -c -O qcow2 {} {}", raw.display(), q.display()));
    std::fs::remove_file(raw).unwrap();
    q
}

struct Fixture {
    scratch: Scratch,
    input: PathBuf,
    settings: PathBuf,
    key: String,
    key_file: PathBuf,
}

const SECRET: &str = "rabbit-pw-7781";

fn fixture(name: &str, table: Option<&str>, offset: u64, with_os_release: bool) -> Fixture {
    fixture_named(name, table, offset, with_os_release)
}

/// [`fixture`] with the input file (and so the Glance name) called `file`:
/// tests that publish run in parallel and must not share a name.
fn fixture_named(file: &str, table: Option<&str>, offset: u64, with_os_release: bool) -> Fixture {
    require_root();
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let t = tree(&inputs, with_os_release);
    let input = disk(&inputs, file, table, offset, &t);
    std::fs::remove_dir_all(t).unwrap();
    let settings = inputs.join("settings.yaml");
    std::fs::write(
        &settings,
        format!("guest_agent:\n  transport_url: \"rabbit://trove:{SECRET}@192.0.2.10:5672/\"\n  region: RegionB\n"),
    )
    .unwrap();
    let key_file = inputs.join("dba.pub");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvZ8ZbOa2d4QyR6LwR0xvJ8Yk3cQh3Q3Zp2tEst dba@cloud-b".to_string();
    std::fs::write(&key_file, &key).unwrap();
    Fixture { scratch, input, settings, key, key_file }
}

impl Fixture {
    fn upload(&self, extra: &[&str]) -> Output {
        let mut c = self.scratch.cmd();
        c.env("DBIMAGE_SETTINGS", &self.settings).env_remove("OS_CLOUD").env_remove("OS_AUTH_URL");
        c.args(["upload", "-d", "redis", "-v", "7.0", "--no-publish", "-f"]).arg(&self.input).args(extra);
        run(c)
    }

    /// Asserts the failure left the input, the host and the output dir alone.
    fn assert_untouched(&self, before: &str) {
        assert_eq!(sha256(&self.input), before, "input changed");
        assert!(self.scratch.outputs().is_empty(), "output left: {:?}", self.scratch.outputs());
        self.scratch.assert_clean();
        assert!(no_daemon_of(self.scratch.dir.path()), "qemu-storage-daemon left running");
    }
}

#[test]
fn finds_and_patches_roots_of_other_layouts() {
    for (name, table, offset, index) in LAYOUTS {
        let f = fixture(name, table, offset, true);
        let before = sha256(&f.input);
        let out = f.upload(&["-k", f.key_file.to_str().unwrap(), "-s", "echo from-chroot > /etc/dbimage-was-here; cat /etc/os-release"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "{name}: secret printed");
        assert!(stdout.contains("PRETTY_NAME=\"Test 12\""), "{name}: -s output not shown: {stdout}");
        assert_eq!(sha256(&f.input), before, "{name}: input changed");
        f.scratch.assert_clean();
        assert!(no_daemon_of(f.scratch.dir.path()));

        let patched = f.scratch.out().join(format!("{name}-patched.qcow2"));
        assert!(stdout.lines().any(|l| l == patched.display().to_string()), "{stdout}");
        let cat = |file: &str| debugfs_in_partition(&patched, index, &format!("cat {file}")).0;
        let conf = cat("/etc/trove/conf.d/trove-guestagent.conf");
        assert!(conf.contains(&format!("transport_url = rabbit://trove:{SECRET}@192.0.2.10:5672/")), "{name}: {conf}");
        assert!(conf.contains("os_region_name = RegionB"), "{name}: {conf}");
        assert_eq!(cat("/etc/dbimage-was-here").trim(), "from-chroot");
        assert_eq!(cat("/etc/machine-id"), "");
        let ssh = debugfs_in_partition(&patched, index, "ls -p /etc/ssh").0;
        assert!(!ssh.contains("ssh_host_"), "{name}: host keys left: {ssh}");
        let stat = debugfs_in_partition(&patched, index, "stat /home/debian/.ssh/authorized_keys").0;
        assert!(stat.contains("Mode:  0600") && stat.contains("User:  1000   Group:  1000"), "{name}: {stat}");
        assert_eq!(cat("/home/debian/.ssh/authorized_keys").trim(), f.key);

        // dbimage inspect agrees on where the root is and whose key it is.
        let mut c = dbimage();
        c.args(["inspect", "-f", "json"]).arg(&patched);
        let report: serde_json::Value = serde_json::from_slice(&run(c).stdout).unwrap();
        assert_eq!(report["root_partition"].as_u64(), Some(index.map_or(0, |i| i as u64 + 1)), "{name}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(patched.with_extension("json")).unwrap()).unwrap();
        assert_eq!(manifest["sha256"].as_str(), Some(sha256(&patched).as_str()));
        assert_eq!(manifest["patched"]["patches"].as_array().unwrap().len(), 5, "{manifest}");
    }
}

#[test]
fn failing_script_aborts_and_changes_nothing() {
    let (name, table, offset, _) = LAYOUTS[0];
    let f = fixture(name, table, offset, true);
    let before = sha256(&f.input);
    let out = f.upload(&["-s", "echo about-to-fail; exit 3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-s command failed") && err.contains("about-to-fail"), "{err}");
    f.assert_untouched(&before);
}

#[test]
fn images_without_a_linux_root_or_broken_are_refused() {
    let (name, table, offset, _) = LAYOUTS[0];
    let f = fixture(name, table, offset, false);
    let before = sha256(&f.input);
    let out = f.upload(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Linux root"), "{:?}", out);
    f.assert_untouched(&before);

    let dir = f.scratch.dir.path().join("in");
    let truncated = dir.join("truncated.qcow2");
    std::fs::copy(&f.input, &truncated).unwrap();
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(len / 2).unwrap();
    let junk = dir.join("junk.qcow2");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    for (file, says) in [(&truncated, ["truncated", "corrupt"]), (&junk, ["not qcow2", "not a disk image"])] {
        let mut c = f.scratch.cmd();
        c.env("DBIMAGE_SETTINGS", &f.settings).env_remove("OS_CLOUD").env_remove("OS_AUTH_URL");
        c.args(["upload", "-d", "redis", "-v", "7.0", "--no-publish", "-f"]).arg(file);
        let before = sha256(file);
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{}", file.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(says.iter().any(|s| err.contains(s)), "{err}");
        assert_eq!(sha256(file), before);
        assert!(f.scratch.outputs().is_empty());
        f.scratch.assert_clean();
    }
}

/// Starts `upload -s 'sleep 120'` and returns once the sleep runs in the
/// image's chroot (everything is mounted, attached and exported then).
fn start_sleeping_upload(f: &Fixture) -> Spawned {
    let mut c = f.scratch.cmd();
    c.env("DBIMAGE_SETTINGS", &f.settings).env_remove("OS_CLOUD").env_remove("OS_AUTH_URL");
    c.args(["upload", "-d", "redis", "-v", "7.0", "--no-publish", "-s", "sleep 120", "-f"]).arg(&f.input);
    let mut child = spawn(c);
    let _w = waiting_for("the upload's -s command (sleep 120) to run in the chroot");
    let deadline = Instant::now() + Duration::from_secs(60);
    let work = f.scratch.work();
    loop {
        let sleeping = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let in_work = std::fs::read_link(e.path().join("root")).is_ok_and(|r| r.starts_with(&work));
            cmd.starts_with(b"sleep\x00120") && in_work
        });
        if sleeping {
            return child;
        }
        assert!(child.try_wait().unwrap().is_none(), "upload ended before -s ran");
        assert!(Instant::now() < deadline, "the -s command never started");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigint_during_the_script_cleans_up() {
    let (name, table, offset, _) = LAYOUTS[1];
    let f = fixture(name, table, offset, true);
    let before = sha256(&f.input);
    let mut child = start_sleeping_upload(&f);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait();
    assert_eq!(status.code(), Some(130));
    f.assert_untouched(&before);
}

/// SIGKILL leaves the export, the loop device and the mounts; `dbimage
/// cleanup` undoes them from the state file, ending with the daemon.
#[test]
fn cleanup_undoes_a_killed_upload() {
    let (name, table, offset, _) = LAYOUTS[0];
    let f = fixture(name, table, offset, true);
    let before = sha256(&f.input);
    let mut child = start_sleeping_upload(&f);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait();
    assert!(!no_daemon_of(f.scratch.dir.path()), "SIGKILL should leave the export running");
    let mut c = f.scratch.cmd();
    c.arg("cleanup");
    let out = run(c);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("undid"));
    f.assert_untouched(&before);
    // The temporary copy beside the destination is gone too.
    assert!(list(&f.scratch.out()).is_empty());
}

/// Without --no-publish, a failing -s must leave the cloud untouched too.
#[test]
fn failing_script_publishes_nothing() {
    let cloud = common::cloud::cloud();
    let (_, table, offset, _) = LAYOUTS[0];
    let name = "upload-test-failing-script";
    delete_images_named(&cloud, name);
    let f = fixture_named(name, table, offset, true);
    let before = sha256(&f.input);
    let mut c = f.scratch.cmd();
    cloud.env(&mut c, "dbimage-admin");
    c.env("DBIMAGE_SETTINGS", &f.settings);
    c.args(["upload", "-d", "redis", "-v", "7.0", "-s", "exit 4", "-f"]).arg(&f.input);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    f.assert_untouched(&before);
    assert!(cloud.images_named(name).is_empty(), "something was published");
}

/// An image without a manifest (not built by dbimage) is patched and
/// published under -d and -v.
#[test]
fn foreign_image_is_published_after_patching() {
    let cloud = common::cloud::cloud();
    let (_, table, offset, _) = LAYOUTS[0];
    let name = "upload-test-foreign";
    delete_images_named(&cloud, name);
    let f = fixture_named(name, table, offset, true);
    let before = sha256(&f.input);
    let mut c = f.scratch.cmd();
    cloud.env(&mut c, "dbimage-admin");
    c.env("DBIMAGE_SETTINGS", &f.settings);
    c.args(["upload", "-d", "postgresql", "-v", "15", "-f"]).arg(&f.input);
    let out = run(c);
    assert!(out.status.success());
    assert_eq!(sha256(&f.input), before, "input changed");
    let images = cloud.images_named(name);
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["status"], "active");
    delete_images_named(&cloud, name);
}

/// Removes what an earlier run left under `name` in a reused cloud.
fn delete_images_named(cloud: &common::cloud::Cloud, name: &str) {
    for img in cloud.images_named(name) {
        cloud.delete_image(img["id"].as_str().unwrap());
    }
}
