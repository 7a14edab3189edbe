//! `dbimage flavor show|change|upload --dry-run` through the real binary,
//! with the overlay in a temporary directory. Needs no root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// A temporary overlay directory and the binary pointed at it.
struct Flavors {
    dir: tempfile::TempDir,
}

impl Flavors {
    fn new() -> Flavors {
        Flavors {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn overlay(&self, db: &str) -> PathBuf {
        self.dir.path().join(format!("{db}.yaml"))
    }

    fn run(&self, args: &[&str]) -> Output {
        common::dbimage()
            .env("DBIMAGE_CUSTOM_FLAVORS_DIR", self.dir.path())
            .arg("flavor")
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit code 2 with a one-line error; returns it.
    fn usage_error(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line wanted:\n{stderr}"
        );
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr
    }

    fn json(&self, db: &str) -> Value {
        serde_json::from_str(&self.ok(&["show", "-d", db, "-f", "json"])).unwrap()
    }
}

/// The table line of one flavor.
fn line<'a>(table: &'a str, flavor: &str) -> &'a str {
    let found = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(flavor));
    found.unwrap_or_else(|| panic!("no {flavor} in:\n{table}"))
}

fn cells(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn flavor<'a>(listing: &'a Value, name: &str) -> &'a Value {
    let flavors = listing["flavors"].as_array().unwrap();
    flavors.iter().find(|f| f["name"] == name).unwrap()
}

#[test]
fn show_table_json_and_yaml() {
    let f = Flavors::new();
    let table = f.ok(&["show", "-d", "redis"]);
    assert_eq!(
        cells(table.lines().next().unwrap()),
        [
            "FLAVOR",
            "VCPUS",
            "MEMORY_GB",
            "ROOT_MB",
            "DB_DISK_MB",
            "BACKUP_MB"
        ]
    );
    assert_eq!(
        cells(line(&table, "tiny")),
        ["tiny", "2", "2", "6144", "5120", "10240"]
    );
    assert_eq!(
        cells(line(&table, "xlarge"))[..4],
        ["xlarge", "32", "32", "10240"]
    );
    assert!(
        table.contains(&f.overlay("redis").display().to_string()),
        "{table}"
    );
    assert!(!table.contains('*'), "nothing customized:\n{table}");

    let json = f.json("mysql");
    assert_eq!(json["database"], "mysql");
    let names: Vec<&str> = json["flavors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny", "small", "medium", "large", "xlarge"]);
    let large = flavor(&json, "large");
    assert_eq!(large["nova_name"], "mysql.large");
    assert_eq!(large["current"], large["predefined"]);
    assert_eq!(large["current"]["vcpus"], 16);
    assert_eq!(large["current"]["root_mb"], 8192);
    assert_eq!(large["customized"], serde_json::json!([]));

    let yaml = f.ok(&["show", "-d", "mysql", "-f", "yaml"]);
    let yaml: Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(yaml, json, "YAML and JSON carry the same listing");
}

#[test]
fn change_shows_restores_and_removes_the_overlay() {
    let f = Flavors::new();
    let out = f.ok(&[
        "change", "-d", "mysql", "-f", "small", "-c", "8", "-r", "5000",
    ]);
    assert!(out.contains("root_mb 5000 rounded up to 5120"), "{out}");
    assert!(f.overlay("mysql").is_file());

    let table = f.ok(&["show", "-d", "mysql"]);
    assert_eq!(
        cells(line(&table, "small"))[..4],
        ["small", "8*", "4", "5120*"]
    );
    assert_eq!(cells(line(&table, "tiny"))[1], "2");
    let footer = table.lines().last().unwrap();
    assert!(
        footer.starts_with("* customized in") && footer.contains("mysql.yaml"),
        "{table}"
    );
    let predefined = f.ok(&["show", "-d", "mysql", "-p"]);
    assert_eq!(
        cells(line(&predefined, "small"))[..4],
        ["small", "4", "4", "6144"]
    );

    let json = f.json("mysql");
    let small = flavor(&json, "small");
    assert_eq!(
        (&small["current"]["vcpus"], &small["predefined"]["vcpus"]),
        (&8.into(), &4.into())
    );
    assert_eq!(small["customized"], serde_json::json!(["vcpus", "root_mb"]));

    let upload = f.ok(&["upload", "-d", "mysql", "--dry-run"]);
    let row = cells(line(&upload, "mysql.small"));
    assert_eq!(row[..5], ["mysql.small", "8", "4096", "5", "25"]);
    assert!(upload.contains("dbimage:backup_size_mb=51200"), "{upload}");

    f.ok(&["change", "-d", "mysql", "-f", "small", "-c", "-1"]);
    let small = flavor(&f.json("mysql"), "small").clone();
    assert_eq!(small["customized"], serde_json::json!(["root_mb"]));
    assert_eq!(small["current"]["vcpus"], 4);

    let out = f.ok(&["change", "-d", "mysql", "-f", "small", "-r", "-1"]);
    assert!(out.contains("removed"), "{out}");
    assert!(
        !f.overlay("mysql").exists(),
        "all defaults: no overlay left"
    );
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    let f = Flavors::new();
    f.ok(&["change", "-d", "postgresql", "-f", "tiny", "-m", "3"]);
    let before = std::fs::read(f.overlay("postgresql")).unwrap();

    for (args, want) in [
        (
            &["-f", "tiny", "-c", "0"][..],
            "vcpus 0 is out of range; use 1 to 256",
        ),
        (
            &["-f", "tiny", "-m", "1", "-b", "-5"],
            "backup_mb -5 is out of range",
        ),
        (
            &["-f", "tiny", "-r", "9999999"],
            "root_mb 9999999 is out of range",
        ),
        (
            &["-f", "huge", "-c", "2"],
            "postgresql has no flavor 'huge'",
        ),
        (&["-f", "tiny"], "nothing to change"),
    ] {
        let args: Vec<&str> = ["change", "-d", "postgresql"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        let err = f.usage_error(&args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(
            std::fs::read(f.overlay("postgresql")).unwrap(),
            before,
            "{args:?}"
        );
    }
    let err = f.usage_error(&["show", "-d", "oracle"]);
    assert!(
        err.contains("use one of: mariadb, mongodb, mysql, postgresql, redis"),
        "{err}"
    );
    assert!(!Path::new(&f.overlay("oracle")).exists());
}
