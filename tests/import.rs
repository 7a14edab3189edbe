//! `dbimage import` against the real local cloud (scripts/test starts it):
//! a small MBR disk with an ext4 root made here, imported as raw, VMDK and
//! VDI, published to Glance (one registered as a Trove version) and
//! downloaded back equal to the source; and the refusals: a filesystem
//! with errors, a file that is not an image, `-d` without `-v`, an
//! existing output, a backing file. The input never changes and nothing
//! stays mounted, attached or running. Needs root.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::cloud::{Cloud, cloud};
use common::*;

/// `dbimage import` with this scratch's directories, on the test cloud
/// when given, else with no cloud configured at all.
fn import(scratch: &Scratch, cloud: Option<&Cloud>, file: &Path, args: &[&str]) -> Output {
    let mut c = scratch.cmd();
    match cloud {
        Some(cloud) => cloud.env(&mut c, "dbimage-admin"),
        None => {
            c.env_remove("OS_CLOUD").env_remove("OS_AUTH_URL");
        }
    }
    c.arg("import").arg(file).args(args);
    run(c)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The one `error:` line of a failed run.
fn error_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    lines[0].to_string()
}

fn assert_host_clean(scratch: &Scratch) {
    scratch.assert_clean();
    assert!(no_daemon_of(scratch.dir.path()), "qemu-storage-daemon left running");
}

#[test]
fn imports_raw_vmdk_and_vdi_and_publishes_them() {
    require_root();
    let cloud = cloud();
    let scratch = Scratch::new();
    let dir = scratch.dir.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = source_disk(&dir, "src", 0);
    let inputs = [(raw.clone(), "raw"), (convert(&raw, "vmdk"), "vmdk"), (convert(&raw, "vdi"), "vdi")];
    for (input, format) in &inputs {
        let name = format!("import-test-{format}");
        for old in cloud.images_named(&name) {
            cloud.delete_image(old["id"].as_str().unwrap());
        }
        let before = sha256(input);
        // The VDI one is registered as a Trove version; the others go to Glance only.
        let trove = *format == "vdi";
        let mut args = vec!["--name", name.as_str()];
        if trove {
            args.extend(["-d", "postgresql", "-v", "15"]);
        }
        let out = import(&scratch, Some(&cloud), input, &args);
        assert!(out.status.success(), "{format}: {}", stderr(&out));
        assert_eq!(sha256(input), before, "{format}: input changed");
        assert_host_clean(&scratch);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let dest = scratch.out().join(format!("{name}.qcow2"));
        assert!(stdout.lines().any(|l| l == dest.display().to_string()), "{stdout}");
        assert!(stderr(&out).contains(&format!("{format}, 96.00 MiB virtual")), "{format}: virtual size not reported");
        assert_eq!(scratch.outputs(), vec![format!("{name}.qcow2")], "{format}: only the image is written");
        let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&dest).output().unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");

        let imgs = cloud.images_named(&name);
        assert_eq!(imgs.len(), 1, "{format}: {imgs:?}");
        let img = &imgs[0];
        assert_eq!(img["status"], "active");
        assert_eq!(img["disk_format"], "qcow2");
        assert_eq!(img["dbimage_imported_from"], *format);
        let id = img["id"].as_str().unwrap().to_string();
        let back = dir.join(format!("{name}.download"));
        std::fs::write(&back, cloud.download(&id)).unwrap();
        assert_eq!(sha256(&back), sha256(&dest), "{format}: Glance holds other bytes");
        let same = Command::new("qemu-img").arg("compare").arg(&raw).arg(&back).status().unwrap();
        assert!(same.success(), "{format}: qemu-img compare says the download differs from the source");

        let versions: Vec<_> = cloud.datastore_versions("postgresql").into_iter().filter(|v| v["name"] == "15").collect();
        if trove {
            assert!(stdout.contains("trove datastore postgresql version 15"), "{stdout}");
            assert_eq!(versions.len(), 1, "{versions:?}");
            assert_eq!(versions[0]["image"], id.as_str());
        } else {
            assert!(stdout.contains("Glance only"), "{stdout}");
            let tags = img["tags"].as_array().unwrap();
            assert!(tags.is_empty(), "{format}: a Glance-only image is tagged {tags:?}");
            assert!(versions.iter().all(|v| v["image"] != id.as_str()), "{format}: registered in Trove");
        }
        cloud.delete_image(&id);
        std::fs::remove_file(&dest).unwrap();
    }
}

#[test]
fn a_filesystem_with_errors_is_refused_and_nothing_is_published() {
    require_root();
    let cloud = cloud();
    let scratch = Scratch::new();
    let dir = scratch.dir.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = source_disk(&dir, "broken", 0);
    // A wrong link count on /etc/os-release: the root is still found by
    // its content, but e2fsck -n must report an error it may not fix.
    let fs = dir.join("fs.ext4");
    sh(&format!("dd if={} of={} bs=1M skip=1 status=none", raw.display(), fs.display()));
    sh(&format!("debugfs -w -R 'set_inode_field /etc/os-release links_count 5' {} 2>/dev/null", fs.display()));
    let fsck = Command::new("e2fsck").args(["-n", "-f"]).arg(&fs).output().unwrap();
    assert_eq!(fsck.status.code(), Some(4), "the damage must be an error e2fsck -n reports");
    sh(&format!("dd if={} of={} bs=1M seek=1 conv=notrunc status=none", fs.display(), raw.display()));
    std::fs::remove_file(&fs).unwrap();

    for input in [raw.clone(), convert(&raw, "vmdk")] {
        let name = format!("import-test-broken-{}", input.extension().unwrap().to_string_lossy());
        let before = sha256(&input);
        let out = import(&scratch, Some(&cloud), &input, &["--name", &name, "-d", "postgresql", "-v", "15"]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = error_line(&out);
        assert!(
            err.contains("root filesystem (partition 1, ext4) has errors")
                && err.contains("e2fsck -n: errors left uncorrected (exit 4)")
                && err.contains("ref count is 5, should be 1"),
            "{err}"
        );
        assert_eq!(sha256(&input), before, "{name}: input changed");
        assert!(scratch.outputs().is_empty(), "output left: {:?}", scratch.outputs());
        assert_host_clean(&scratch);
        assert!(cloud.images_named(&name).is_empty(), "{name}: something was published");
    }
}

#[test]
fn bad_requests_are_refused_before_anything_is_done() {
    require_root();
    let scratch = Scratch::new();
    let dir = scratch.dir.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = source_disk(&dir, "good", 0);
    let junk = dir.join("notes.img");
    std::fs::write(&junk, "this is a text file, not a disk\n".repeat(100)).unwrap();
    let overlay = dir.join("overlay.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 -b {} -F raw {}", raw.display(), overlay.display()));

    let cases: [(&Path, &[&str], &str); 5] = [
        (&junk, &["--no-publish"], "not a disk image"),
        (&raw, &["--no-publish", "-d", "postgresql"], "-d and -v go together"),
        (&raw, &["--no-publish", "-v", "15"], "-d and -v go together"),
        (&raw, &["--no-publish", "-d", "nosuchdb", "-v", "1"], "unknown database"),
        (&overlay, &["--no-publish"], "names a backing file"),
    ];
    for (input, args, says) in cases {
        let before = sha256(input);
        let out = import(&scratch, None, input, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = error_line(&out);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(sha256(input), before);
        assert!(scratch.outputs().is_empty(), "{:?}", scratch.outputs());
        assert_host_clean(&scratch);
    }

    // An existing output is kept unless --force.
    let out = import(&scratch, None, &raw, &["--no-publish"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dest = scratch.out().join("good.qcow2");
    let first = sha256(&dest);
    let out = import(&scratch, None, &raw, &["--no-publish"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).contains("exists; pass --force"));
    assert_eq!(sha256(&dest), first);
    let out = import(&scratch, None, &raw, &["--no-publish", "--force", "--compression", "zstd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(sha256(&dest), first, "--force did not replace the image");
    assert_eq!(scratch.outputs(), vec!["good.qcow2".to_string()]);
    assert_host_clean(&scratch);
}

/// SIGTERM while the QCOW2 is being written: exit 130, no partial file, no
/// output, no daemon, loop device or work directory left.
#[test]
fn sigterm_during_conversion_leaves_nothing() {
    require_root();
    let scratch = Scratch::new();
    let dir = scratch.dir.path().join("in");
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
    // Incompressible data, so that compressing takes a while.
    sh(&format!("head -c 64M /dev/urandom > {}", tree.join("noise").display()));
    let raw = ext4_disk(&dir, "slow", None, 0, &tree);
    let input = convert(&raw, "vdi");
    let before = sha256(&input);
    let mut c = scratch.cmd();
    c.env_remove("OS_CLOUD").env_remove("OS_AUTH_URL");
    c.arg("import").arg(&input).arg("--no-publish");
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !scratch.outputs().iter().any(|f| f.contains(".partial-")) {
        assert!(child.try_wait().unwrap().is_none(), "import ended before converting");
        assert!(std::time::Instant::now() < deadline, "the conversion never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(sha256(&input), before);
    assert!(scratch.outputs().is_empty(), "output left: {:?}", scratch.outputs());
    assert_host_clean(&scratch);
}
