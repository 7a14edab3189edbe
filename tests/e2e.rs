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

/// The whole job: build without -I, so the image is published to the
/// local cloud, with the DBA key taken from a Nova keypair.
#[test]
fn postgresql_15_is_published_boots_and_answers_psql() {
    require_root();
    let cloud = common::cloud::cloud();
    let scratch = Scratch::new();
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("dba");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dba@e2e", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_string();
    cloud.create_keypair("e2e-dba", &public);

    let (image, manifest, stdout) = make_image_with(
        &scratch,
        &["-d", "postgresql", "-v", "15", "-r", "bookworm", "-k", "e2e-dba"],
        &[],
        |c| cloud.env(c, "dbimage-admin"),
    );
    let name = manifest["name"].as_str().unwrap();
    assert!(stdout.contains("glance image") && stdout.contains("trove datastore postgresql version 15"), "{stdout}");
    let imgs = cloud.images_named(name);
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0]["status"], "active");
    assert_eq!(imgs[0]["dbimage_sha256"], manifest["sha256"]);
    assert_eq!(imgs[0]["architecture"], "x86_64");
    let id = imgs[0]["id"].as_str().unwrap();
    let versions = cloud.datastore_versions("postgresql");
    let v15: Vec<_> = versions.iter().filter(|v| v["name"] == "15").collect();
    assert_eq!(v15.len(), 1, "{versions:?}");
    assert_eq!(v15[0]["image"], id);
    // The Nova keypair's public key is the DBA's authorized key.
    let (keys, _) = debugfs_in_image(&image, "cat /home/debian/.ssh/authorized_keys");
    assert!(keys.contains(&public), "authorized_keys: {keys}");
    assert_eq!(manifest["authorized_key"], true);
    boot_and_answer(&scratch, &image, "postgresql");
}

#[test]
fn mariadb_10_11_boots_and_answers_mariadb_client() {
    build_and_boot("mariadb", "10.11", "zstd");
}

#[test]
fn redis_7_boots_and_answers_ping() {
    build_and_boot("redis", "7.0", "zstd");
}
