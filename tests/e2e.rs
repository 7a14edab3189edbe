//! End to end: build real images from Debian 12, boot each under QEMU, and
//! ask its database with a real client from the host.

mod common;

use common::*;

fn build_and_boot(db: &str, version: &str, compression: &str) {
    require_root();
    let scratch = Scratch::new();
    let (image, manifest) = make_image(
        &scratch,
        &["-d", db, "-v", version, "-r", "bookworm", "--compression", compression],
        &[],
    );
    let name = image.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with(&format!("{db}-{version}-dib-20")), "{name}");
    assert_eq!(manifest["datastore"]["db"], db);
    assert_eq!(manifest["compression"], compression);
    assert!(manifest["database_packages"].as_object().is_some_and(|m| !m.is_empty()), "{manifest}");
    assert!(manifest["packages"]["linux-image-cloud-amd64"].is_string());
    assert_eq!(manifest["sha256"].as_str().unwrap().len(), 64);
    // The image carries its own manifest; clones must not share host keys.
    let (embedded, _) = debugfs_in_image(&image, "cat /etc/dbimage/manifest.json");
    let embedded: serde_json::Value = serde_json::from_str(&embedded).unwrap();
    assert_eq!(embedded["name"], manifest["name"]);
    assert!(!list_image_dir(&image, "/etc/ssh").iter().any(|f| f.starts_with("ssh_host_")));
    boot_and_answer(&scratch, &image, db);
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
