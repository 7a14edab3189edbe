//! End to end: build real images from Debian 12, boot each under QEMU, and
//! ask its database with a real client from the host.

mod common;

use common::*;

fn build_and_boot(db: &str, version: &str, compression: &str) {
    require_root();
    let scratch = Scratch::new();
    let image = {
        let _lock = build_lock();
        let mut c = scratch.cmd();
        c.args(["make", "-d", db, "-v", version, "-r", "bookworm", "-I", "--compression", compression]);
        let out = run(c);
        assert!(out.status.success(), "make -d {db} failed");
        scratch.assert_clean();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let image = stdout.lines().next().unwrap().split(' ').next().unwrap().to_string();
        assert!(image.ends_with(".qcow2"), "{stdout}");
        let name = std::path::Path::new(&image).file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with(&format!("{db}-{version}-dib-20")), "{name}");
        let mut files = scratch.outputs();
        files.sort();
        assert_eq!(files, vec![name.replace(".qcow2", ".json"), name.clone()]);

        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(image.replace(".qcow2", ".json")).unwrap()).unwrap();
        assert_eq!(manifest["datastore"]["db"], db);
        assert!(manifest["database_packages"].as_object().is_some_and(|m| !m.is_empty()), "{manifest}");
        assert!(manifest["packages"]["linux-image-cloud-amd64"].is_string());
        assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);
        image
    };
    let mut c = scratch.cmd();
    c.args(["test", &image, "--timeout", "480"]);
    let out = run(c);
    assert!(out.status.success(), "{db} image did not answer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{db} answered")), "{stdout}");
    scratch.assert_clean();
}

#[test]
fn postgresql_15_boots_and_answers_psql() {
    build_and_boot("postgresql", "15", "zlib");
}

#[test]
fn mariadb_10_11_boots_and_answers_mariadb_client() {
    build_and_boot("mariadb", "10.11", "zstd");
}

#[test]
fn redis_7_boots_and_answers_ping() {
    build_and_boot("redis", "7.0", "zstd");
}
