//! The hostile-input corpus: images and image contents crafted to make a
//! root-run dbimage read or write the host. Every case must end with a
//! one-line error and exit code 2 (or, where refusing is not the right
//! answer, with the attack defused), the input unchanged, a canary file on
//! the host unchanged, and no mount, loop device or daemon left. The cases
//! are made here, by the test itself. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// A host file the attacks aim at, and its hash before the attack.
struct Canary {
    path: PathBuf,
    hash: String,
}

impl Canary {
    /// A 1 MiB file of its own under `dir`, beginning with a marker.
    fn new(dir: &Path, name: &str) -> Canary {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut data = b"HOST CANARY: must never be read into an image or written\n".to_vec();
        data.resize(1 << 20, b'c');
        std::fs::write(&path, data).unwrap();
        let hash = sha256(&path);
        Canary { path, hash }
    }
    /// Takes the hash again (after making an image that names the file:
    /// `qemu-img create` writes a data file itself).
    fn rehash(&mut self) {
        self.hash = sha256(&self.path);
    }
    fn assert_untouched(&self, case: &str) {
        assert_eq!(sha256(&self.path), self.hash, "{case}: the host file {} changed", self.path.display());
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 2 and one error line, the last, naming `expect`.
fn assert_refused(case: &str, out: &Output, expect: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{case}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{case}: one error line expected: {err}");
    assert_eq!(err.trim_end().lines().last(), Some(errors[0]), "{case}: the error is the last line: {err}");
    assert!(errors[0].contains(expect), "{case}: expected {expect:?} in {err}");
}

/// No output, nothing mounted, attached or running for `scratch`.
fn assert_nothing_left(case: &str, scratch: &Scratch) {
    assert!(scratch.outputs().is_empty(), "{case}: outputs written: {:?}", scratch.outputs());
    scratch.assert_clean();
    assert!(no_daemon_of(scratch.dir.path()), "{case}: a qemu-storage-daemon is still running");
}

/// Runs `dbimage ARGS` in `scratch`, from `cwd`.
fn dbimage_in(scratch: &Scratch, cwd: &Path, args: &[&str]) -> Output {
    let mut c = scratch.cmd();
    c.current_dir(cwd).args(args);
    run(c)
}

/// Every command that opens a foreign image, on `image`.
fn every_reader(scratch: &Scratch, image: &Path) -> Vec<(String, Output)> {
    let img = image.to_str().unwrap();
    let runs = vec![
        ("import", vec!["import", img, "--no-publish"]),
        ("inspect", vec!["inspect", img]),
        ("publish", vec!["publish", img, "-d", "postgresql", "-v", "15", "--os-cloud", "nowhere"]),
        ("upload", vec!["upload", "-d", "postgresql", "-v", "15", "-f", img, "--no-publish"]),
    ];
    let cwd = image.parent().unwrap();
    runs.into_iter().map(|(name, args)| (name.to_string(), dbimage_in(scratch, cwd, &args))).collect()
}

/// Asserts every reader refused `image` with `expect`, changing nothing.
fn assert_all_refuse(case: &str, scratch: &Scratch, image: &Path, canary: &Canary, expect: &str) {
    let before = sha256(image);
    for (cmd, out) in every_reader(scratch, image) {
        let what = format!("{case} ({cmd})");
        assert_refused(&what, &out, expect);
        canary.assert_untouched(&what);
        assert_eq!(sha256(image), before, "{what}: the input changed");
        assert_nothing_left(&what, scratch);
    }
}

fn qemu_img(args: &str) {
    sh(&format!("qemu-img {args} >/dev/null"));
}

/// Setup shared by the image-file cases: a scratch, an input directory and
/// a canary outside both.
fn image_case() -> (Scratch, PathBuf, Canary) {
    require_root();
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let canary = Canary::new(&scratch.dir.path().join("host"), "disk.img");
    (scratch, inputs, canary)
}

#[test]
fn qcow2_with_an_external_data_file_on_the_host() {
    let (scratch, inputs, mut canary) = image_case();
    for raw in ["on", "off"] {
        let image = inputs.join(format!("data-file-{raw}.qcow2"));
        qemu_img(&format!(
            "create -f qcow2 -o data_file={},data_file_raw={raw} {} 1M",
            canary.path.display(),
            image.display()
        ));
        canary.rehash();
        let case = format!("qcow2 data_file_raw={raw}");
        assert_all_refuse(&case, &scratch, &image, &canary, "external data file");
    }
}

#[test]
fn qcow2_with_a_backing_file_or_chain_on_the_host() {
    let (scratch, inputs, canary) = image_case();
    let direct = inputs.join("backed.qcow2");
    qemu_img(&format!("create -f qcow2 -F raw -b {} {} 1M", canary.path.display(), direct.display()));
    assert_all_refuse("qcow2 backing file", &scratch, &direct, &canary, "backing file");
    // A chain: the top names a middle overlay, which names the host file.
    let middle = inputs.join("middle.qcow2");
    qemu_img(&format!("create -f qcow2 -F raw -b {} {} 1M", canary.path.display(), middle.display()));
    let top = inputs.join("top.qcow2");
    qemu_img(&format!("create -f qcow2 -F qcow2 -b {} {} 1M", middle.display(), top.display()));
    assert_all_refuse("qcow2 backing chain", &scratch, &top, &canary, "backing file");
}

#[test]
fn vmdk_descriptors_with_extents_on_the_host() {
    let (scratch, inputs, canary) = image_case();
    let flat = format!("RW 2048 FLAT \"{}\" 0", canary.path.display());
    let plain = inputs.join("flat.vmdk");
    let descriptor = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n";
    std::fs::write(&plain, format!("{descriptor}\n{flat}\n")).unwrap();
    assert_all_refuse("vmdk FLAT extent", &scratch, &plain, &canary, "VMDK descriptor");
    // Without the usual first line, qemu still reads it as a descriptor.
    let bare = inputs.join("bare.vmdk");
    std::fs::write(&bare, format!("version=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{flat}\n"))
        .unwrap();
    assert_all_refuse("vmdk descriptor without its first line", &scratch, &bare, &canary, "VMDK descriptor");
}

#[test]
fn a_file_name_qemu_would_read_as_options() {
    let (scratch, inputs, _) = image_case();
    // Given relative, qemu-img would parse this name as a JSON description
    // of a raw image on the canary; dbimage must read it as the file it is.
    let canary = Canary::new(&inputs, "canary.img");
    let name = r#"json:{"driver":"raw","file":{"driver":"file","filename":"canary.img"}}"#.to_string();
    let image = inputs.join(&name);
    std::fs::write(&image, b"this is not a disk image, just a file with a strange name\n").unwrap();
    let before = sha256(&image);
    for args in [vec!["import", name.as_str(), "--no-publish"], vec!["inspect", name.as_str()]] {
        let case = format!("json: file name ({})", args[0]);
        let out = dbimage_in(&scratch, &inputs, &args);
        assert_refused(&case, &out, "not a disk image");
        canary.assert_untouched(&case);
        assert_eq!(sha256(&image), before);
        assert_nothing_left(&case, &scratch);
    }
}

#[test]
fn formats_off_the_allow_list_are_refused() {
    let (scratch, inputs, canary) = image_case();
    let qed = inputs.join("disk.qed");
    qemu_img(&format!("create -f qed {} 1M", qed.display()));
    assert_all_refuse("qed", &scratch, &qed, &canary, "qed images are not accepted");
}

// ---------------------------------------------------------------- contents

/// A minimal root tree: os-release, passwd with `home` for user dba, dash.
fn tree(dir: &Path, home: &str) -> PathBuf {
    let t = dir.join("tree");
    for d in ["etc/ssh", "home/dba", "usr/bin"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::write(t.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    std::fs::write(t.join("etc/passwd"), format!("root:x:0:0:root:/root:/bin/sh\ndba:x:1000:1000::{home}:/bin/sh\n"))
        .unwrap();
    std::fs::write(t.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    for (from, to) in [
        ("/usr/bin/dash", "usr/bin/dash"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
    ] {
        std::fs::create_dir_all(t.join(to).parent().unwrap()).unwrap();
        std::fs::copy(from, t.join(to)).unwrap();
    }
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/dash", t.join("bin/sh")).unwrap();
    t
}

/// A QCOW2 (MBR, root at 1 MiB) of `tree`.
fn disk(dir: &Path, name: &str, tree: &Path) -> PathBuf {
    let raw = ext4_disk(dir, name, Some("label: dos\nstart=2048, type=83\n"), 2048, tree);
    let q = dir.join(format!("{name}.qcow2"));
    qemu_img(&format!("convert -O qcow2 {} {}", raw.display(), q.display()));
    std::fs::remove_file(raw).unwrap();
    std::fs::remove_dir_all(tree).unwrap();
    q
}

/// `upload -k KEY --no-publish` of `image`.
fn upload_key(scratch: &Scratch, image: &Path) -> Output {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileCorpusKeyOnlyForTests hostile@test";
    let img = image.to_str().unwrap();
    dbimage_in(scratch, image.parent().unwrap(), &["upload", "-d", "postgresql", "-v", "15", "-f", img, "-b", "dba", "-k", key, "--no-publish"])
}

/// An upload whose image's own data aims at the host: refused, host and
/// input untouched, nothing left.
fn assert_upload_refused(case: &str, home: &str, prepare: impl FnOnce(&Path), canary: &Canary, expect: &str) {
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let t = tree(&inputs, home);
    prepare(&t);
    let image = disk(&inputs, "evil", &t);
    let before = sha256(&image);
    let out = upload_key(&scratch, &image);
    assert_refused(case, &out, expect);
    canary.assert_untouched(case);
    assert_eq!(sha256(&image), before, "{case}: the input changed");
    assert_nothing_left(case, &scratch);
}

#[test]
fn passwd_homes_and_links_that_lead_to_the_host() {
    require_root();
    let host = Scratch::new();
    let victim_home = host.dir.path().join("victim");
    let canary = Canary::new(&victim_home.join(".ssh"), "authorized_keys");
    let climb = format!("/home/../../../../../../..{}", victim_home.display());
    assert_upload_refused("home with ..", &climb, |_| {}, &canary, "not a plain absolute path");
    assert_upload_refused("relative home", "home/dba", |_| {}, &canary, "not a plain absolute path");
    let vh = victim_home.clone();
    assert_upload_refused(
        "home is an absolute symlink",
        "/home/dba",
        move |t| {
            std::fs::remove_dir(t.join("home/dba")).unwrap();
            std::os::unix::fs::symlink(&vh, t.join("home/dba")).unwrap();
        },
        &canary,
        "symbolic link",
    );
    let vh = victim_home.join(".ssh");
    assert_upload_refused(
        ".ssh is an absolute symlink",
        "/home/dba",
        move |t| std::os::unix::fs::symlink(&vh, t.join("home/dba/.ssh")).unwrap(),
        &canary,
        "symbolic link",
    );
    assert_upload_refused(
        ".ssh is a relative symlink climbing out",
        "/home/dba",
        |t| std::os::unix::fs::symlink("../../../../../../../../../../..", t.join("home/dba/.ssh")).unwrap(),
        &canary,
        "symbolic link",
    );
    let host_etc_ssh = Canary::new(&host.dir.path().join("etc-ssh"), "ssh_host_ed25519_key");
    let dir = host_etc_ssh.path.parent().unwrap().to_path_buf();
    assert_upload_refused(
        "etc/ssh is a symlink to a host directory",
        "/home/dba",
        move |t| {
            std::fs::remove_dir(t.join("etc/ssh")).unwrap();
            std::os::unix::fs::symlink(&dir, t.join("etc/ssh")).unwrap();
        },
        &host_etc_ssh,
        "symbolic link",
    );
    assert_upload_refused(
        "passwd is a FIFO",
        "/home/dba",
        |t| {
            std::fs::remove_file(t.join("etc/passwd")).unwrap();
            sh(&format!("mkfifo {}", t.join("etc/passwd").display()));
        },
        &canary,
        "not a regular file",
    );
}

/// Entries that are not regular files where dbimage writes are replaced,
/// never opened: a FIFO would hang a write, a device node would reach a
/// host device.
#[test]
fn special_files_where_dbimage_writes_are_replaced_not_opened() {
    require_root();
    let host = Scratch::new();
    let canary = Canary::new(&host.dir.path().join("h"), "machine-id");
    let canary_path = canary.path.clone();
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let t = tree(&inputs, "/home/dba");
    std::fs::create_dir_all(t.join("home/dba/.ssh")).unwrap();
    sh(&format!("mkfifo {}", t.join("home/dba/.ssh/authorized_keys").display()));
    std::fs::remove_file(t.join("etc/machine-id")).unwrap();
    std::os::unix::fs::symlink(&canary_path, t.join("etc/machine-id")).unwrap();
    sh(&format!("mknod {} c 1 3", t.join("etc/ssh/ssh_host_rsa_key").display()));
    let image = disk(&inputs, "special", &t);
    let before = sha256(&image);
    let out = upload_key(&scratch, &image);
    assert!(out.status.success(), "{}", stderr(&out));
    canary.assert_untouched("machine-id symlink to the host");
    assert_eq!(sha256(&image), before, "the input changed");
    let patched = scratch.out().join("special-patched.qcow2");
    let (keys, _) = debugfs_in_partition(&patched, Some(0), "stat /home/dba/.ssh/authorized_keys");
    assert!(keys.contains("Type: regular"), "authorized_keys is a regular file now: {keys}");
    let (machine_id, _) = debugfs_in_partition(&patched, Some(0), "stat /etc/machine-id");
    assert!(machine_id.contains("Type: regular") && machine_id.contains("Size: 0"), "{machine_id}");
    let (ssh, _) = debugfs_in_partition(&patched, Some(0), "ls /etc/ssh");
    assert!(!ssh.contains("ssh_host_rsa_key"), "the device node named like a host key is removed: {ssh}");
    scratch.assert_clean();
    assert!(no_daemon_of(scratch.dir.path()));
}

/// A root filesystem with errors, whose superblock also asks the kernel to
/// panic on an error: `upload` checks it with `e2fsck -n` and never mounts it.
#[test]
fn a_damaged_root_that_asks_for_a_panic_is_not_mounted() {
    require_root();
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let t = tree(&inputs, "/home/dba");
    let raw = ext4_disk(&inputs, "panic", Some("label: dos\nstart=2048, type=83\n"), 2048, &t);
    std::fs::remove_dir_all(&t).unwrap();
    let fs = inputs.join("fs.ext4");
    sh(&format!("dd if={} of={} bs=1M skip=1 status=none", raw.display(), fs.display()));
    sh(&format!("tune2fs -e panic {} >/dev/null", fs.display()));
    sh(&format!("debugfs -w -R 'set_inode_field /etc/passwd links_count 7' {} 2>/dev/null", fs.display()));
    sh(&format!("dd if={} of={} bs=1M seek=1 conv=notrunc status=none", fs.display(), raw.display()));
    std::fs::remove_file(&fs).unwrap();
    let image = inputs.join("panic.qcow2");
    qemu_img(&format!("convert -O qcow2 {} {}", raw.display(), image.display()));
    let before = sha256(&image);
    let out = upload_key(&scratch, &image);
    assert_refused("errors=panic with a damaged root", &out, "has errors");
    assert!(stderr(&out).contains("ref count is 7, should be 1"), "{}", stderr(&out));
    assert_eq!(sha256(&image), before, "the input changed");
    assert_nothing_left("errors=panic with a damaged root", &scratch);
}

/// A host directory an image's links aim at: its names and contents, and
/// nothing may be mounted on it.
fn host_dir(scratch: &Scratch, name: &str) -> (PathBuf, Canary) {
    let dir = scratch.dir.path().join(name);
    let canary = Canary::new(&dir, "canary");
    (dir, canary)
}

fn assert_host_dir_untouched(case: &str, dir: &Path, canary: &Canary) {
    canary.assert_untouched(case);
    assert_eq!(list(dir), vec!["canary".to_string()], "{case}: {} changed", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir.display().to_string()), "{case}: something is mounted on {}", dir.display());
}

/// `upload -s`: the chroot's mount points and replaced files are reached
/// without following the image's links.
#[test]
fn chroot_mount_points_and_files_that_lead_to_the_host() {
    require_root();
    let host = Scratch::new();
    for (case, link) in [("proc", "proc"), ("dev", "dev"), ("sys", "sys"), ("usr/sbin (policy-rc.d)", "usr/sbin")] {
        let (dir, canary) = host_dir(&host, &link.replace('/', "-"));
        let scratch = Scratch::new();
        let inputs = scratch.dir.path().join("in");
        std::fs::create_dir_all(&inputs).unwrap();
        let t = tree(&inputs, "/home/dba");
        std::fs::create_dir_all(t.join(link).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&dir, t.join(link)).unwrap();
        let image = disk(&inputs, "chroot", &t);
        let before = sha256(&image);
        let img = image.to_str().unwrap();
        let out = dbimage_in(&scratch, &inputs, &["upload", "-d", "postgresql", "-v", "15", "-f", img, "-s", "true", "--no-publish"]);
        let case = format!("{case} is a symlink to a host directory");
        assert_refused(&case, &out, "symbolic link");
        assert_host_dir_untouched(&case, &dir, &canary);
        assert_eq!(sha256(&image), before, "{case}: the input changed");
        assert_nothing_left(&case, &scratch);
    }
}

/// `etc/resolv.conf` as a link to a host file is set aside and put back,
/// never written through.
#[test]
fn resolv_conf_linked_to_a_host_file_is_set_aside_not_written() {
    require_root();
    let host = Scratch::new();
    let (dir, canary) = host_dir(&host, "resolv");
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let t = tree(&inputs, "/home/dba");
    std::os::unix::fs::symlink(&canary.path, t.join("etc/resolv.conf")).unwrap();
    let image = disk(&inputs, "resolv", &t);
    let img = image.to_str().unwrap();
    let out = dbimage_in(&scratch, &inputs, &["upload", "-d", "postgresql", "-v", "15", "-f", img, "-s", "test -f /etc/resolv.conf", "--no-publish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_host_dir_untouched("resolv.conf symlink", &dir, &canary);
    let patched = scratch.out().join("resolv-patched.qcow2");
    let (stat, _) = debugfs_in_partition(&patched, Some(0), "stat /etc/resolv.conf");
    assert!(stat.contains("Type: symlink"), "the image's own link is back: {stat}");
    scratch.assert_clean();
}

/// The guest agent's transport_url (message-bus credentials) must not be
/// published to every project by accident.
#[test]
fn credentials_are_not_published_to_every_project_unless_forced() {
    require_root();
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let image = disk(&inputs, "creds", &tree(&inputs, "/home/dba"));
    let settings = inputs.join("settings.yaml");
    std::fs::write(&settings, "guest_agent:\n  transport_url: \"rabbit://trove:bus-secret-4471@192.0.2.10:5672/\"\n  region: RegionB\n").unwrap();
    let img = image.to_str().unwrap();
    for visibility in ["public", "community"] {
        let mut c = scratch.cmd();
        c.env("DBIMAGE_SETTINGS", &settings).env_remove("OS_CLOUD").env_remove("OS_AUTH_URL");
        c.args(["upload", "-d", "postgresql", "-v", "15", "-f", img, "--visibility", visibility]);
        let out = run(c);
        let case = format!("upload --visibility {visibility} with a transport_url");
        assert_refused(&case, &out, "--force-public-credentials");
        assert!(!stderr(&out).contains("bus-secret-4471"), "{case}: the secret was printed");
        assert_nothing_left(&case, &scratch);
    }
}

/// An `-s` script may hold secrets: its text reaches neither the output,
/// the manifest, nor the image (it runs from a file that is removed).
#[test]
fn the_script_text_stays_out_of_logs_and_manifest() {
    require_root();
    let scratch = Scratch::new();
    let inputs = scratch.dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let image = disk(&inputs, "script", &tree(&inputs, "/home/dba"));
    let img = image.to_str().unwrap();
    let script = "echo ran-it; true # db-password=s3cret-in-script-9931";
    let out = dbimage_in(&scratch, &inputs, &["upload", "-d", "postgresql", "-v", "15", "-f", img, "-s", script, "--no-publish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(shown.contains("ran-it"), "the script ran: {shown}");
    assert!(!shown.contains("s3cret-in-script-9931"), "the script's text was printed: {shown}");
    let manifest = std::fs::read_to_string(scratch.out().join("script-patched.json")).unwrap();
    assert!(!manifest.contains("s3cret-in-script-9931"), "{manifest}");
    assert!(manifest.contains("ran the -s script in the image (sha256 "), "{manifest}");
    let patched = scratch.out().join("script-patched.qcow2");
    let (tmp, _) = debugfs_in_partition(&patched, Some(0), "ls /tmp");
    assert!(!tmp.contains("dbimage-script"), "the script file is gone: {tmp}");
    scratch.assert_clean();
}
