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
    let public = ssh_keygen(&keydir.path().join("dba"), "dba@e2e");
    cloud.create_keypair("e2e-dba", &public);

    // Publishing puts the guest agent in, configured from the settings.
    let make_settings = keydir.path().join("make-settings.yaml");
    std::fs::write(&make_settings, "guest_agent:\n  transport_url: \"rabbit://trove:e2e-make-pw@192.0.2.10:5672/\"\n")
        .unwrap();
    let (image, manifest, stdout) = make_image_with(
        &scratch,
        &["-d", "postgresql", "-v", "15", "-r", "bookworm", "-k", "e2e-dba"],
        &[("DBIMAGE_SETTINGS", &make_settings)],
        |c| cloud.env(c, "dbimage-admin"),
    );
    let name = manifest["name"].as_str().unwrap();
    assert!(stdout.contains("glance image") && stdout.contains("trove datastore postgresql version 15"), "{stdout}");
    // Earlier runs against the same cloud may have left same-named images.
    let imgs: Vec<_> = cloud.images_named(name).into_iter().filter(|i| i["dbimage_sha256"] == manifest["sha256"]).collect();
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0]["status"], "active");
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
    check_guest_agent(&image, &manifest, &stdout);

    // The same image for "another cloud": its guest agent configuration,
    // another DBA key, a package installed through apt in a chroot; then
    // published again. The input must not change; the version moves.
    let settings = keydir.path().join("settings.yaml");
    std::fs::write(&settings, "guest_agent:\n  transport_url: \"rabbit://trove:e2e-rabbit-pw@192.0.2.20:5672/\"\n").unwrap();
    let key2 = keydir.path().join("dba2");
    let public2 = ssh_keygen(&key2, "dba2@e2e");
    let mut c = scratch.cmd();
    cloud.env(&mut c, "dbimage-admin");
    c.env("DBIMAGE_SETTINGS", &settings);
    c.args(["upload", "-d", "postgresql", "-v", "15", "-f"]).arg(&image).arg("-k").arg(key2.with_extension("pub"));
    // The agent runs as its user in a chroot of the image, and that user
    // (only) reads the configuration upload wrote.
    let conf = "/etc/trove/conf.d/trove-guestagent.conf";
    c.args(["-s", &format!(
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends hello && hello \
         && runuser -u trove -- /opt/trove-guestagent/bin/trove-guestagent --help \
         && runuser -u trove -- test -r {conf} && echo agent-reads-its-configuration \
         && ! runuser -u nobody -- test -r {conf} && echo others-do-not"
    )]);
    let out = run(c);
    assert!(out.status.success(), "upload failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Hello, world!"), "{stdout}");
    assert!(stdout.contains("usage: trove-guestagent") && stdout.contains("--config-dir DIR"), "{stdout}");
    assert!(stdout.contains("agent-reads-its-configuration\nothers-do-not"), "{stdout}");
    assert!(!stdout.contains("e2e-rabbit-pw") && !String::from_utf8_lossy(&out.stderr).contains("e2e-rabbit-pw"));
    scratch.assert_clean();
    assert_eq!(Some(sha256(&image).as_str()), manifest["sha256"].as_str(), "the input changed");
    let patched = scratch.out().join(format!("{name}-patched.qcow2"));
    let (conf, _) = debugfs_in_image(&patched, "cat /etc/trove/conf.d/trove-guestagent.conf");
    assert!(conf.contains("transport_url = rabbit://trove:e2e-rabbit-pw@192.0.2.20:5672/"), "{conf}");
    let (keys, _) = debugfs_in_image(&patched, "cat /home/debian/.ssh/authorized_keys");
    assert_eq!(keys.trim(), public2);
    assert!(list_image_dir(&patched, "/usr/bin").contains(&"hello".to_string()));
    assert!(!list_image_dir(&patched, "/etc/ssh").iter().any(|f| f.starts_with("ssh_host_")));
    let patched_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(patched.with_extension("json")).unwrap()).unwrap();
    let patched_id = cloud
        .images_named(name)
        .into_iter()
        .find(|i| i["dbimage_sha256"] == patched_manifest["sha256"])
        .expect("patched image in Glance");
    let v15: Vec<_> = cloud.datastore_versions("postgresql").into_iter().filter(|v| v["name"] == "15").collect();
    assert_eq!(v15.len(), 1);
    assert_eq!(v15[0]["image"], patched_id["id"]);
    // The patched image (and so everything make put in it) boots and answers.
    boot_and_answer(&scratch, &patched, "postgresql");
}

/// What the trove-guest-agent element put in a published image.
fn check_guest_agent(image: &std::path::Path, manifest: &serde_json::Value, make_stdout: &str) {
    let agent = &manifest["guest_agent"];
    assert_eq!(agent["source"], serde_json::json!({ "kind": "pypi", "version": "26.0.0" }));
    assert_eq!(agent["configured"], true);
    assert_eq!(agent["python_packages"]["trove"], "26.0.0");
    assert!(list_image_dir(image, "/opt/trove-guestagent/bin").contains(&"trove-guestagent".to_string()));
    let (unit, _) = debugfs_in_image(image, "cat /etc/systemd/system/trove-guestagent.service");
    assert!(unit.contains("\nUser=trove\n"), "{unit}");
    assert!(
        unit.contains("\nExecStart=/opt/trove-guestagent/bin/trove-guestagent --config-dir=/etc/trove/conf.d\n"),
        "{unit}"
    );
    let (wants, _) = debugfs_in_image(image, "stat /etc/systemd/system/multi-user.target.wants/trove-guestagent.service");
    assert!(wants.contains("Type: symlink"), "{wants}");
    assert!(wants.contains("\"/etc/systemd/system/trove-guestagent.service\""), "{wants}");
    // The configuration: the settings' values, 0640, the agent's user's.
    let (passwd, _) = debugfs_in_image(image, "cat /etc/passwd");
    let trove: Vec<&str> = passwd.lines().find(|l| l.starts_with("trove:")).expect("a trove user").split(':').collect();
    let (stat, _) = debugfs_in_image(image, "stat /etc/trove/conf.d/trove-guestagent.conf");
    assert!(stat.contains("Mode:  0640"), "{stat}");
    assert!(stat.contains(&format!("User: {:>5}   Group: {:>5}", trove[2], trove[3])), "{stat}");
    let (conf, _) = debugfs_in_image(image, "cat /etc/trove/conf.d/trove-guestagent.conf");
    assert!(conf.contains("transport_url = rabbit://trove:e2e-make-pw@192.0.2.10:5672/"), "{conf}");
    assert!(!make_stdout.contains("e2e-make-pw") && !manifest.to_string().contains("e2e-make-pw"));
    // Neither pip's inputs nor its cache stay in the image.
    assert!(!list_image_dir(image, "/tmp").contains(&"dbimage-guest-agent".to_string()));
    assert!(!list_image_dir(image, "/root").contains(&".cache".to_string()));
}

#[test]
fn mariadb_10_11_boots_and_answers_mariadb_client() {
    build_and_boot("mariadb", "10.11", "zstd");
}
