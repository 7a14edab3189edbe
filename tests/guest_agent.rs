//! When `make` puts the Trove guest agent in, which one, and the refusals
//! of bad settings: through the real binary's `--dry-run` (no root, no
//! cloud: a dry run stays offline). The built agent itself is checked by
//! the PostgreSQL end-to-end test.

mod common;

use std::path::Path;

use common::*;

struct DryRun {
    code: Option<i32>,
    plan: serde_json::Value,
    stdout: String,
    stderr: String,
}

fn dry_run(settings: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> DryRun {
    let scratch = Scratch::new();
    let mut c = scratch.cmd();
    c.env_remove("DBIMAGE_SETTINGS");
    if let Some(s) = settings {
        c.env("DBIMAGE_SETTINGS", s);
    }
    c.envs(env.iter().copied());
    c.args(["make", "-d", "postgresql", "-v", "15", "-r", "bookworm", "--dry-run"]).args(args);
    let out = run(c);
    assert!(!scratch.work().exists(), "a dry run creates nothing");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    DryRun {
        code: out.status.code(),
        plan: serde_json::from_str(&stdout).unwrap_or_default(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn has_element(plan: &serde_json::Value) -> bool {
    plan["elements"].as_array().unwrap().iter().any(|e| e["name"] == "trove-guest-agent")
}

#[test]
fn on_when_publishing_off_with_image_only_unless_asked() {
    for (args, on) in [
        (&[][..], true),
        (&["-I"][..], false),
        (&["-I", "--guest-agent"][..], true),
        (&["-I", "-x", "trove-guest-agent"][..], true),
        (&["--no-guest-agent"][..], false),
    ] {
        let r = dry_run(None, &[], args);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        assert_eq!(has_element(&r.plan), on, "{args:?}");
        assert_eq!(r.plan["guest_agent"].is_object(), on, "{args:?}");
        assert_eq!(r.plan["env"]["DBIMAGE_GUEST_AGENT_DIR"].as_str(), on.then_some("/tmp/dbimage-guest-agent"));
        // On without a configuration: a warning, not a failure.
        assert_eq!(r.stderr.contains("gets the Trove guest agent but no configuration"), on, "{args:?}: {}", r.stderr);
    }
    let r = dry_run(None, &[], &[]);
    let agent = &r.plan["guest_agent"];
    assert_eq!(agent["source"], serde_json::json!({ "kind": "pypi", "version": "26.0.0" }));
    assert!(agent["constraints"].as_str().unwrap().ends_with("elements/trove-guest-agent/constraints.txt"));
    assert!(r.plan["packages"]["install.d"].as_array().unwrap().contains(&"python3-venv".into()));
}

#[test]
fn settings_choose_the_agent_and_its_configuration_stays_secret() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("trove-25.0.1-py3-none-any.whl");
    std::fs::write(&wheel, "").unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        format!(
            "guest_agent:\n  transport_url: \"rabbit://trove:dry-run-pw@192.0.2.1:5672/\"\n\
             guest_agent_install:\n  file: {}\n",
            wheel.display()
        ),
    )
    .unwrap();
    let r = dry_run(Some(&settings), &[], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.plan["guest_agent"]["source"]["path"], wheel.to_str().unwrap());
    assert!(!r.stderr.contains("no configuration"), "{}", r.stderr);
    assert!(!r.stdout.contains("dry-run-pw") && !r.stderr.contains("dry-run-pw"), "the configuration leaked");
    assert!(r.plan.get("guest_agent_conf").is_none());
    // The environment wins over the file.
    let r = dry_run(Some(&settings), &[("DBIMAGE_GUEST_AGENT_VERSION", "25.0.0")], &[]);
    assert_eq!(r.plan["guest_agent"]["source"], serde_json::json!({ "kind": "pypi", "version": "25.0.0" }));
}

#[test]
fn bad_values_are_one_line_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.yaml");
    for (yaml, env, args, want) in [
        ("guest_agent_install:\n  file: /nonexistent/trove.whl\n", &[][..], &[][..], "/nonexistent/trove.whl: no such file"),
        ("guest_agent_install:\n  git: https://opendev.org/openstack/trove\n", &[], &[], "needs a ref"),
        ("guest_agent_install:\n  constraints: /nonexistent/uc.txt\n", &[], &[], "/nonexistent/uc.txt: no such file"),
        ("", &[("DBIMAGE_GUEST_AGENT_VERSION", "latest")], &[], "not a release number"),
        ("", &[], &["-x", "trove-guest-agent", "--no-guest-agent"], "contradicts"),
    ] {
        std::fs::write(&settings, yaml).unwrap();
        let r = dry_run(Some(&settings), env, args);
        assert_eq!(r.code, Some(2), "{yaml:?} {env:?} {args:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(want), "{}", r.stderr);
        assert!(r.stdout.is_empty());
    }
    // Only a build that installs the agent looks at its file.
    std::fs::write(&settings, "guest_agent_install:\n  file: /nonexistent/trove.whl\n").unwrap();
    assert_eq!(dry_run(Some(&settings), &[], &["-I"]).code, Some(0));
}
