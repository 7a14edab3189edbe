//! `dbimage inspect` as a user runs it: exit codes, one-line errors and the
//! JSON shape. Needs no root: the images are plain files made with
//! `sfdisk`, `mkfs.ext4 -d` and `qemu-img`.

mod common;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::dbimage;

const MIB: u64 = 1 << 20;

fn inspect(args: &[&str], image: &Path) -> Output {
    dbimage()
        .arg("inspect")
        .args(args)
        .arg(image)
        .output()
        .unwrap()
}

fn ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A whole-disk ext4 filesystem holding a tiny Debian-like root.
fn whole_disk_image(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    let files = [
        (
            "etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n",
        ),
        (
            "var/lib/dpkg/status",
            "Package: redis-server\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5:7.0.15-1~deb12u1\n",
        ),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        (
            "root/.ssh/authorized_keys",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEYSECRET ops@example\n",
        ),
    ];
    for (path, text) in files {
        let p = tree.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
    }
    let img = dir.join("whole.ext4");
    fs::File::create(&img).unwrap().set_len(16 * MIB).unwrap();
    ok(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img));
    img
}

fn assert_bad_input(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(want),
        "{err} should mention {want}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn inspect_reports_json_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let img = whole_disk_image(dir.path());

    let out = inspect(&["-f", "json"], &img);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["schema"], 1);
    assert_eq!(r["format"], "raw");
    assert_eq!(r["partition_table"], "none");
    assert_eq!(r["root_partition"], 0);
    assert_eq!(r["partitions"][0]["filesystem"], "ext4");
    assert_eq!(r["os"]["version_codename"], "bookworm");
    assert_eq!(r["database"]["source"], "scan");
    assert_eq!(r["database"]["packages"][0]["name"], "redis-server");
    assert_eq!(
        r["database"]["packages"][0]["version"],
        "5:7.0.15-1~deb12u1"
    );
    assert_eq!(r["manifest"], serde_json::Value::Null);
    let user = &r["users"][0];
    assert_eq!(user["user"], "root");
    assert_eq!(user["keys"][0]["type"], "ssh-ed25519");
    assert_eq!(user["keys"][0]["comment"], "ops@example");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("KEYSECRET"));

    let out = inspect(&[], &img);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("redis-server 5:7.0.15-1~deb12u1"), "{table}");
    assert!(table.contains("Debian GNU/Linux 12 (bookworm)"), "{table}");
}

#[test]
fn inspect_bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    assert_bad_input(&inspect(&[], &d.join("missing.qcow2")), "no such file");

    let empty = d.join("empty.img");
    fs::write(&empty, b"").unwrap();
    assert_bad_input(&inspect(&[], &empty), "not a disk image");

    let random = d.join("random.img");
    let bytes: Vec<u8> = (0..MIB)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&random, bytes).unwrap();
    assert_bad_input(&inspect(&[], &random), "not a disk image");

    let swap = d.join("swap.raw");
    fs::File::create(&swap).unwrap().set_len(8 * MIB).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&swap)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048,type=S\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    assert_bad_input(&inspect(&[], &swap), "no Linux root filesystem found");

    let raw = whole_disk_image(d);
    let qcow2 = d.join("whole.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    assert!(inspect(&[], &qcow2).status.success());
    let f = fs::OpenOptions::new().write(true).open(&qcow2).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    assert_bad_input(&inspect(&["-f", "json"], &qcow2), "truncated qcow2");
}
