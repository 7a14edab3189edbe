//! Helpers shared by the end-to-end tests: run the real binary as root
//! against real debootstrap, loop devices and QEMU, and check the host is
//! left clean.

#![allow(dead_code)] // each test binary uses a different subset

pub mod cloud;
pub mod redis;
pub mod sshd;
pub mod watchdog;

#[allow(unused_imports)] // each test binary uses a different subset
pub use watchdog::{Spawned, spawn, waiting_for};

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
    watchdog::watch();
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
        watchdog::watch();
        let base = Path::new("/var/tmp/dbimage-tests");
        std::fs::create_dir_all(base).unwrap();
        Scratch {
            dir: tempfile::tempdir_in(base).unwrap(),
        }
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
        c.env("DBIMAGE_WORK_DIR", self.work())
            .env("DBIMAGE_IMAGES_DIR", self.out());
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
        let loops = losetup_all();
        let ours: Vec<&str> = loops.lines().filter(|l| l.contains(&root)).collect();
        assert!(ours.is_empty(), "loop devices left behind: {ours:#?}");
        assert!(
            list(&self.work()).is_empty(),
            "work dir not empty: {:?}",
            list(&self.work())
        );
    }
}

impl Drop for Scratch {
    /// A test that failed with a chroot still mounted must not let the
    /// recursive delete run through a bind-mounted host `/dev` or the
    /// shared apt cache: unmount what is left first, or keep the directory.
    fn drop(&mut self) {
        let root = self.dir.path().to_path_buf();
        for m in mounts_below(&root) {
            eprintln!("--- unmounting {} left under the scratch directory", m.display());
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        let left = mounts_below(&root);
        if !left.is_empty() {
            eprintln!("--- keeping {}: still mounted below it: {left:?}", root.display());
            self.dir.disable_cleanup(true);
        }
    }
}

/// Mount points at or below `dir`, innermost (and latest) first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.reverse();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut rest = p;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `losetup -a`'s list; a failing losetup fails the test instead of
/// looking like "no loop device".
pub fn losetup_all() -> String {
    let out = Command::new("losetup").arg("-a").output().expect("run losetup -a");
    assert!(out.status.success(), "losetup -a failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names in a directory (empty if it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a command, echoing its output into the test log.
pub fn run(c: Command) -> Output {
    let shown = format!("{c:?}");
    let out = watchdog::output(c);
    eprintln!(
        "--- {}\n{}{}",
        shown,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Runs a debugfs request against the root filesystem (GPT partition 2) of
/// a QCOW2 image without mounting: qemu-img to raw, dd the partition out.
/// Returns debugfs's stdout and stderr; panics when debugfs fails,
/// including when the path the request names is not there (see
/// [`image_has`] for a file that must be absent).
pub fn debugfs_in_image(image: &Path, request: &str) -> (String, String) {
    debugfs_in_partition(image, Some(1), request)
}

/// [`debugfs_in_image`] on the partition at `index` of the table (0-based),
/// or on the whole disk when `None` (a filesystem without a table).
pub fn debugfs_in_partition(image: &Path, index: Option<usize>, request: &str) -> (String, String) {
    let (out, err) = debugfs_raw(image, index, request);
    let complaints = debugfs_complaints(&err);
    assert!(complaints.is_empty(), "debugfs -R {request:?} on {}: {}", image.display(), complaints.join("; "));
    (out, err)
}

/// Whether `path` exists in the image's root filesystem: false only when
/// debugfs says it is not there, a panic when debugfs could not look.
pub fn image_has(image: &Path, path: &str) -> bool {
    partition_has(image, Some(1), path)
}

/// [`image_has`] on the partition at `index` (or the whole disk).
pub fn partition_has(image: &Path, index: Option<usize>, path: &str) -> bool {
    let (_, err) = debugfs_raw(image, index, &format!("stat {path}"));
    match debugfs_complaints(&err)[..] {
        [] => true,
        [one] if one.ends_with("File not found by ext2_lookup") => false,
        ref other => panic!("debugfs cannot tell whether {path} is in {}: {}", image.display(), other.join("; ")),
    }
}

/// debugfs's stderr lines other than its version banner: it exits 0 even
/// when it cannot open the filesystem or find the path, so these are the
/// only sign of failure.
fn debugfs_complaints(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !(l.starts_with("debugfs ") && l.contains(" (")))
        .collect()
}

/// Runs debugfs on the filesystem; its exit status must be 0.
fn debugfs_raw(image: &Path, index: Option<usize>, request: &str) -> (String, String) {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let fs = extract_filesystem(image, index, tmp.path());
    let out = Command::new("debugfs").arg("-R").arg(request).arg(&fs).output().expect("run debugfs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "debugfs -R {request:?} failed ({}): {stderr}", out.status);
    (stdout, stderr)
}

/// The filesystem at partition `index` (or the whole disk) as a file in `dir`.
fn extract_filesystem(image: &Path, index: Option<usize>, dir: &Path) -> PathBuf {
    let raw = to_raw(image, dir);
    let (start, size) = match index {
        Some(i) => {
            let dump = Command::new("sfdisk").arg("--json").arg(&raw).output().unwrap();
            assert!(dump.status.success(), "sfdisk --json {}: {}", raw.display(), String::from_utf8_lossy(&dump.stderr));
            let table: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
            let part = &table["partitiontable"]["partitions"][i];
            (part["start"].as_u64().unwrap(), part["size"].as_u64().unwrap())
        }
        None => (0, std::fs::metadata(&raw).unwrap().len() / 512),
    };
    let fs = dir.join("root.ext4");
    let ok = Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", fs.display()))
        .args(["bs=512", "conv=sparse", "status=none"])
        .arg(format!("skip={start}"))
        .arg(format!("count={size}"))
        .status()
        .unwrap();
    assert!(ok.success());
    fs
}

/// A sparse raw disk of 96 MiB at `dir/NAME.raw`: the partition table
/// `table` (an sfdisk script, or none for a whole-disk filesystem) and an
/// ext4 made from `tree` at `offset_sectors`, filling the rest of the disk
/// but its last MiB.
pub fn ext4_disk(dir: &Path, name: &str, table: Option<&str>, offset_sectors: u64, tree: &Path) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    sh(&format!("truncate -s 96M {}", raw.display()));
    if let Some(t) = table {
        sh(&format!("printf '{}' | sfdisk -q {}", t.replace('\n', "\\n"), raw.display()));
    }
    let size_mib = 96 - offset_sectors * 512 / (1 << 20) - 1;
    sh(&format!(
        "mkfs.ext4 -q -F -E offset={} -d {} {} {size_mib}M",
        offset_sectors * 512,
        tree.display(),
        raw.display()
    ));
    raw
}

/// A raw MBR disk (root at 1 MiB) holding a tree with `/etc/os-release`
/// and `blob_mib` MiB of random bytes (so converting it takes a while).
pub fn source_disk(dir: &Path, name: &str, blob_mib: u64) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    std::fs::write(tree.join("etc/imported"), "payload\n").unwrap();
    if blob_mib > 0 {
        sh(&format!("head -c {blob_mib}M /dev/urandom > {}/blob", tree.display()));
    }
    let raw = ext4_disk(dir, name, Some("label: dos\nstart=2048, type=83\n"), 2048, &tree);
    std::fs::remove_dir_all(tree).unwrap();
    raw
}

/// `qemu-img convert -O FORMAT` beside the source.
pub fn convert(src: &Path, format: &str) -> PathBuf {
    let out = src.with_extension(format);
    sh(&format!("qemu-img convert -q -O {format} {} {}", src.display(), out.display()));
    out
}

/// No qemu-storage-daemon serving a file under `dir` is running.
pub fn no_daemon_of(dir: &Path) -> bool {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().all(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        !(cmdline.contains("qemu-storage-daemon") && cmdline.contains(&needle))
    })
}

/// Runs a shell command line; it must succeed.
pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Makes an ed25519 key pair at `path` (+ `.pub`); returns the public key.
pub fn ssh_keygen(path: &Path, comment: &str) -> String {
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path).status().unwrap();
    assert!(st.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string()
}

/// sha256sum of a file.
pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split(' ').next().unwrap().to_string()
}

/// A sparse raw copy of `image` in `dir`.
pub fn to_raw(image: &Path, dir: &Path) -> PathBuf {
    let raw = dir.join("disk.raw");
    let ok = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&raw).status().unwrap();
    assert!(ok.success());
    raw
}

/// Names in a directory of the image's root filesystem.
pub fn list_image_dir(image: &Path, dir: &str) -> Vec<String> {
    // `ls -p` prints /inode/mode/uid/gid/name/size/ per entry.
    let (out, _) = debugfs_in_image(image, &format!("ls -p {dir}"));
    out.lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect()
}

/// Builds an image with `dbimage make ARGS -I` (one build at a time),
/// checks the host is clean and exactly the image and its manifest were
/// written, and returns the image's path and manifest.
pub fn make_image(
    scratch: &Scratch,
    args: &[&str],
    env: &[(&str, &Path)],
) -> (PathBuf, serde_json::Value) {
    let (image, manifest, _) = make_image_with(scratch, args, env, |c| {
        c.arg("-I");
    });
    (image, manifest)
}

/// [`make_image`] with the command adjusted by `adjust` (e.g. to publish
/// instead of passing -I); also returns make's stdout.
pub fn make_image_with(
    scratch: &Scratch,
    args: &[&str],
    env: &[(&str, &Path)],
    adjust: impl FnOnce(&mut Command),
) -> (PathBuf, serde_json::Value, String) {
    let _lock = build_lock();
    let mut c = scratch.cmd();
    c.arg("make").args(args);
    adjust(&mut c);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run(c);
    assert!(out.status.success(), "dbimage make {args:?} failed");
    scratch.assert_clean();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let image = PathBuf::from(stdout.lines().next().unwrap().split(' ').next().unwrap());
    let name = image.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.ends_with(".qcow2"), "{stdout}");
    let manifest_path = image.with_extension("json");
    let mut files = scratch.outputs();
    files.sort();
    assert_eq!(
        files,
        vec![
            manifest_path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string(),
            name
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    (image, manifest, stdout)
}

/// Boots the image with `dbimage test` and requires its database to answer.
pub fn boot_and_answer(scratch: &Scratch, image: &Path, db: &str) {
    let mut c = scratch.cmd();
    c.arg("test").arg(image).args(["--timeout", "480"]);
    let out = run(c);
    assert!(out.status.success(), "{db} image did not answer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{db} answered")), "{stdout}");
    scratch.assert_clean();
}

/// Processes (other than this one) whose command line, working directory
/// or root lies under `dir`.
pub fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()) && n != me))
        .filter_map(|e| {
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
            let links = ["cwd", "root"].map(|l| std::fs::read_link(e.path().join(l)).unwrap_or_default());
            let inside = cmdline.contains(&needle) || links.iter().any(|l| l.starts_with(dir));
            inside.then(|| format!("{} {}", e.file_name().to_string_lossy(), cmdline.trim()))
        })
        .collect()
}

/// After a SIGKILL of dbimage, and without `dbimage cleanup`: within a
/// minute the kernel has ended its processes, dropped its private mount
/// namespace and freed its autoclear loop devices. Panics naming what is left.
pub fn assert_nothing_left_after_kill(dir: &Path) {
    let root = dir.to_string_lossy().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let loops: Vec<String> = losetup_all().lines().filter(|l| l.contains(&root)).map(str::to_string).collect();
        let procs = processes_under(dir);
        let mounts = mounts_below(dir);
        if loops.is_empty() && procs.is_empty() && mounts.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a minute after SIGKILL, still left: loop devices {loops:?}, processes {procs:?}, mounts {mounts:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
