//! End to end, foreign architecture: build the PostgreSQL 15 image for
//! ppc64le on this (amd64) host through qemu-user, check what came out,
//! then boot it once on an emulated POWER9 (pseries under TCG) and ask
//! PostgreSQL over the network. One build and one boot: both are the
//! slowest of the suite.

mod common;
#[path = "common/answer.rs"]
mod answer;

use std::path::Path;
use std::process::Command;

use common::*;

/// GPT type of the PowerPC PReP boot partition, as sfdisk prints it.
const PREP_TYPE: &str = "9E1A2D38-C612-4316-AA26-8B49521E5A8B";
/// ELF `e_machine` of 64-bit POWER.
const EM_PPC64: u8 = 21;
/// Bound on the boot: the build before it takes about 15 of the binary's
/// 30 minutes (DBIMAGE_TEST_BINARY_TIMEOUT), and a boot that answers
/// takes a few; `dbimage test`'s own timeout failing first says more
/// (console tail, last probe) than the binary's limit would.
const BOOT_TIMEOUT_SECS: u64 = 720;

#[test]
fn postgresql_15_for_ppc64le_builds_under_qemu_user_and_answers_on_power9() {
    require_root();
    let scratch = Scratch::new();
    let (image, manifest) = make_image(
        &scratch,
        &[
            "-d",
            "postgresql",
            "-v",
            "15",
            "-r",
            "bookworm",
            "-a",
            "ppc64le",
            "--compression",
            "zstd",
        ],
        &[],
    );
    assert_eq!(manifest["request"]["arch"], "ppc64le", "{manifest}");
    assert_eq!(manifest["compression"], "zstd");
    assert!(
        manifest["packages"]["linux-image-powerpc64le"].is_string(),
        "{manifest}"
    );
    assert!(
        manifest["packages"]["grub-ieee1275-bin"].is_string(),
        "{manifest}"
    );
    let pg = manifest["database_packages"]["postgresql-15"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(pg.starts_with("15."), "postgresql-15 version {pg:?}");

    assert_prep_partition(&image, &scratch);
    assert_ppc64le_binaries(&image);
    assert_inspect_agrees(&image, &pg);
    scratch.assert_clean();
    assert_answers_from_power(&scratch, &image);
}

/// `dbimage test` boots the image on pseries and psql gets an answer from
/// a PostgreSQL 15 compiled for POWER: nothing on this host could give it.
fn assert_answers_from_power(scratch: &Scratch, image: &Path) {
    let said = answer::answer_within(scratch, image, "postgresql", BOOT_TIMEOUT_SECS);
    assert!(said.contains("PostgreSQL 15."), "{said}");
    assert!(said.contains("powerpc64le"), "the answer is not from a POWER build: {said}");
}

/// `sfdisk --dump` of a raw conversion: partition 1 is PReP.
fn assert_prep_partition(image: &Path, scratch: &Scratch) {
    let raw = to_raw(image, scratch.dir.path());
    let dump = Command::new("sfdisk")
        .arg("--dump")
        .arg(&raw)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout).to_string();
    std::fs::remove_file(&raw).unwrap();
    assert!(dump.contains("label: gpt"), "{dump}");
    let first = dump
        .lines()
        .find(|l| l.contains("disk.raw1 :"))
        .unwrap_or_default();
    assert!(
        first.contains(&format!("type={PREP_TYPE}")),
        "partition 1 is not PReP:\n{dump}"
    );
}

/// The image's `/usr/bin/dash` is a 64-bit little-endian POWER ELF.
fn assert_ppc64le_binaries(image: &Path) {
    let (dash, err) = debugfs_in_image(image, "cat /usr/bin/dash");
    // The header's first 20 bytes are all ASCII-range, so the lossy UTF-8
    // conversion keeps them.
    let h = dash.as_bytes();
    assert!(
        h.len() > 20 && h.starts_with(b"\x7fELF"),
        "not an ELF: {err}"
    );
    assert_eq!((h[4], h[5]), (2, 1), "not 64-bit little-endian");
    assert_eq!(h[18], EM_PPC64, "e_machine is not PPC64");
}

/// `dbimage inspect -f json` reports the same.
fn assert_inspect_agrees(image: &Path, pg_version: &str) {
    let mut c = dbimage();
    c.arg("inspect").arg(image).args(["-f", "json"]);
    let out = run(c);
    assert!(out.status.success(), "dbimage inspect failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["architecture"]["name"], "ppc64le", "{report}");
    let packages = report["database"]["packages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        packages
            .iter()
            .any(|p| p["name"] == "postgresql-15" && p["version"] == pg_version),
        "inspect does not report postgresql-15 {pg_version}: {packages:?}"
    );
}
