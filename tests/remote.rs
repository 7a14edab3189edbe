//! Remote hosts against a real sshd on 127.0.0.1 started by the test:
//! playbook tasks, host key trust, the controller playbook, and a full
//! remote build (`make -i`) that boots, plus a connection dropped mid-build.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::{Scratch, dbimage, list, run};

fn playbook(sshd: &Sshd, file: &Path, known_hosts: &Path) -> std::process::Command {
    let mut c = dbimage();
    c.args(["playbook", "run"])
        .arg(file)
        .args(["--host", "root@127.0.0.1", "--port", &sshd.port.to_string(), "--key"])
        .arg(&sshd.client_key)
        .env("DBIMAGE_KNOWN_HOSTS", known_hosts);
    c
}

#[test]
fn playbook_tasks_run_copy_fetch_template_register_when() {
    common::require_root();
    let sshd = Sshd::start();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let remote = d.join("remote");
    std::fs::create_dir_all(d.join("tree/sub")).unwrap();
    std::fs::write(d.join("tree/a.txt"), "alpha\n").unwrap();
    std::fs::write(d.join("tree/sub/b.txt"), "beta\n").unwrap();
    std::fs::write(d.join("one.txt"), "one\n").unwrap();
    std::fs::write(d.join("conf.j2"), "host={{ who.stdout }}\nsecret={{ pw }}\n").unwrap();
    let book = d.join("book.yaml");
    std::fs::write(
        &book,
        format!(
            r#"
- name: who is logged in
  run: id -un
  register: who
- name: copy a file with a mode
  copy: {{ src: one.txt, dest: "{r}/one.txt", mode: "0600" }}
- name: copy a directory
  copy: {{ src: tree, dest: "{r}/tree" }}
- name: template
  template: {{ src: conf.j2, dest: "{r}/conf", mode: "0640" }}
- name: skipped when false
  run: touch {r}/skipped
  when: who.stdout != "root"
- name: runs when true
  run: echo ran > {r}/when-true
  when: who.stdout == "root" and greeting == "hi there"
- name: uses the secret
  run: echo "the secret is {{{{ pw }}}}"
- name: make something to fetch
  run: printf 'from the host %s\n' "{{{{ greeting }}}}" > {r}/made
- name: fetch it
  fetch: {{ src: "{r}/made", dest: "{l}/fetched" }}
"#,
            r = remote.display(),
            l = d.display()
        ),
    )
    .unwrap();
    let mut c = playbook(&sshd, &book, &sshd.known_hosts);
    c.args(["-e", "greeting=hi there", "--secret", "pw=Sup3rSecret", "--verbose"]);
    let out = run(c);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("Sup3rSecret"), "secret leaked into the log: {all}");
    assert!(all.contains("the secret is ***"), "{all}");

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(std::fs::read_to_string(remote.join("one.txt")).unwrap(), "one\n");
    assert_eq!(mode(&remote.join("one.txt")), 0o600);
    assert_eq!(std::fs::read_to_string(remote.join("tree/sub/b.txt")).unwrap(), "beta\n");
    assert_eq!(std::fs::read_to_string(remote.join("conf")).unwrap(), "host=root\nsecret=Sup3rSecret\n");
    assert_eq!(mode(&remote.join("conf")), 0o640);
    assert!(!remote.join("skipped").exists());
    assert_eq!(std::fs::read_to_string(remote.join("when-true")).unwrap(), "ran\n");
    assert_eq!(std::fs::read_to_string(d.join("fetched")).unwrap(), "from the host hi there\n");
    assert!(!list(d).iter().any(|f| f.contains("dbimage-part")), "{:?}", list(d));
}

#[test]
fn a_failing_task_names_itself_and_runs_only_always_tasks() {
    common::require_root();
    let sshd = Sshd::start();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let book = d.join("fail.yaml");
    std::fs::write(
        &book,
        format!(
            r#"
- name: fails on purpose
  run: echo first-line; echo boom-line >&2; exit 3
- name: never runs
  run: touch {d}/never
- name: cleans up anyway
  always: true
  run: touch {d}/cleaned
- name: undefined variable
  always: true
  run: echo {{{{ nope }}}}
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let out = run(playbook(&sshd, &book, &sshd.known_hosts));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("task 'fails on purpose' on root@127.0.0.1:{}", sshd.port)), "{err}");
    assert!(err.contains("exit code 3") && err.contains("boom-line"), "{err}");
    assert!(!d.join("never").exists());
    assert!(d.join("cleaned").exists(), "the always task did not run");
    assert!(err.contains("nope"), "the template error is reported too: {err}");

    // A malformed playbook is refused before connecting, with exit code 2.
    std::fs::write(&book, "- name: two actions\n  run: x\n  copy: {src: a, dest: b}\n").unwrap();
    let out = run(playbook(&sshd, &book, &sshd.known_hosts));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("task 'two actions': needs exactly one"));
}

#[test]
fn unknown_host_keys_are_refused_until_trusted() {
    common::require_root();
    let sshd = Sshd::start();
    let t = tempfile::tempdir().unwrap();
    let known = t.path().join("config/known_hosts");
    let book = t.path().join("b.yaml");
    std::fs::write(&book, "- run: true\n").unwrap();
    let out = run(playbook(&sshd, &book, &known));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not in") && err.contains("dbimage playbook trust 127.0.0.1"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert!(err.lines().last().unwrap().starts_with("error:"), "the error is one line: {err}");

    let trust = |yes: bool| {
        let mut c = dbimage();
        c.args(["playbook", "trust", "127.0.0.1", "--port", &sshd.port.to_string()]).env("DBIMAGE_KNOWN_HOSTS", &known);
        if yes {
            c.arg("--yes");
        }
        let out = run(c);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let print = std::process::Command::new("ssh-keygen").arg("-lf").arg(&sshd.host_pub).output().unwrap();
    let fingerprint = String::from_utf8_lossy(&print.stdout).split_whitespace().nth(1).unwrap().to_string();
    // Without --yes it only shows the real host key's fingerprint.
    assert!(trust(false).contains(&fingerprint));
    assert!(!known.exists(), "nothing trusted without --yes");
    assert!(trust(true).contains("trusted"));
    assert!(run(playbook(&sshd, &book, &known)).status.success());

    // A changed host key is refused, naming the file to fix; trusting again
    // replaces the old key instead of adding beside it.
    std::fs::write(&known, format!("[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMUb1Kf0Jh3h0y0bQ9mZkVbZbQ9mZkVbZbQ9mZkVbZbQ\n", sshd.port)).unwrap();
    let out = run(playbook(&sshd, &book, &known));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("differs") && err.contains("remove the old line"), "{err}");
    assert!(trust(true).contains("replacing 1 old key"));
    assert!(run(playbook(&sshd, &book, &known)).status.success());
    assert_eq!(std::fs::read_to_string(&known).unwrap().lines().count(), 1);
}

/// A guest agent configuration as a controller would hold it.
const FIXTURE_CONF: &str = "[DEFAULT]\ntransport_url = rabbit://trove:Fixture-Pw-91@10.9.8.7:5672/\ncontrol_exchange = trove-fixture\n";

fn controller_fixture(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let conf = dir.join("controller-guestagent.conf");
    std::fs::write(&conf, FIXTURE_CONF).unwrap();
    let key = dir.join("controller_id");
    let public = common::ssh_keygen(&key, "controller@fixture");
    (conf, key.with_extension("pub"), public)
}

#[test]
fn remote_make_with_controller_metadata_builds_an_image_that_boots() {
    common::require_root();
    let _b = common::build_lock();
    let sshd = Sshd::start();
    let scratch = Scratch::new();
    let (conf, ctl_pub, ctl_key) = controller_fixture(scratch.dir.path());

    let mut c = scratch.cmd();
    sshd.as_dibvm(&mut c, &sshd.known_hosts);
    sshd.as_controller(&mut c, &conf, Some(&ctl_pub));
    c.args(["make", "-d", "redis", "-i", "127.0.0.1", "-I", "-x", "trove-guest-agent", "--compression", "zstd"]);
    let out = run(c);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("Fixture-Pw-91"), "the controller's password leaked: {all}");
    assert!(all.contains("[root@127.0.0.1:"), "the remote log is streamed: {all}");
    let outputs = scratch.outputs();
    assert_eq!(outputs.len(), 2, "image and manifest only: {outputs:?}");
    let image = scratch.out().join(outputs.iter().find(|f| f.ends_with(".qcow2")).unwrap());
    assert!(list(Path::new("/var/tmp")).iter().all(|f| !f.starts_with("dbimage-remote-")), "remote work dir left");

    // The controller's configuration and key are in the image.
    let (cat, _) = common::debugfs_in_image(&image, "cat /etc/trove/conf.d/trove-guestagent.conf");
    assert!(cat.contains("control_exchange = trove-fixture"), "{cat}");
    let (keys, _) = common::debugfs_in_image(&image, "cat /home/debian/.ssh/authorized_keys");
    assert!(keys.contains(&ctl_key), "{keys}");

    // upload re-reads the controller: its values land in the patched image,
    // and the guest agent's entry point runs in a chroot of the image.
    std::fs::write(&conf, FIXTURE_CONF.replace("trove-fixture", "trove-patched")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(image.with_extension("json")).unwrap()).unwrap();
    let version = manifest["datastore"]["version"].as_str().unwrap().to_string();
    let mut c = scratch.cmd();
    sshd.as_controller(&mut c, &conf, None);
    c.args(["upload", "-d", "redis", "-v", &version, "--no-publish", "-f"])
        .arg(&image)
        .args(["-s", "/opt/trove-guestagent/bin/trove-guestagent --help"]);
    let out = run(c);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(shown.contains("--config-dir"), "the agent's --help ran in the chroot: {shown}");
    let patched = scratch.out().join(format!("{}-patched.qcow2", image.file_stem().unwrap().to_string_lossy()));
    let (cat, _) = common::debugfs_in_image(&patched, "cat /etc/trove/conf.d/trove-guestagent.conf");
    assert!(cat.contains("control_exchange = trove-patched"), "{cat}");

    common::boot_and_answer(&scratch, &image, "redis");
}

#[test]
fn a_connection_dropped_mid_build_is_reported_and_leaves_nothing() {
    common::require_root();
    let _b = common::build_lock();
    let sshd = Sshd::start();
    let scratch = Scratch::new();
    let mut c = scratch.cmd();
    sshd.as_dibvm(&mut c, &sshd.known_hosts);
    c.args(["make", "-d", "redis", "-i", "127.0.0.1", "-I"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = common::spawn(c);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{l}");
                lines.lock().unwrap().push(l);
            }
        })
    };
    // Wait until the build runs in its chroot on the "VM" (mounts up), then
    // cut the connection.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !lines.lock().unwrap().iter().any(|l| l.contains("[root@127.0.0.1:") && l.contains("install.d")) {
        assert!(Instant::now() < deadline, "the remote build never started");
        assert!(child.try_wait().unwrap().is_none(), "dbimage ended before the build started");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(sshd.drop_connections() > 0, "no connection to drop");
    let status = child.wait();
    reader.join().unwrap();
    let err = lines.lock().unwrap().join("\n");
    assert!(!status.success());
    assert!(err.contains("lost the connection to root@127.0.0.1"), "{err}");
    assert!(err.contains("build the image on the build VM"), "the task is named: {err}");
    assert!(scratch.outputs().is_empty(), "nothing local: {:?}", scratch.outputs());
    // The remote build saw the drop and cleaned up after itself; its work
    // directory went with the always-task on a new connection.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let busy = mounts.lines().any(|l| l.contains("/var/tmp/dbimage/")) ||
            list(Path::new("/var/tmp")).iter().any(|f| f.starts_with("dbimage-remote-"));
        if !busy {
            break;
        }
        assert!(Instant::now() < deadline, "the remote build left mounts or its work dir");
        std::thread::sleep(Duration::from_millis(500));
    }
    scratch.assert_clean();
}

#[test]
fn bad_remote_settings_fail_early_and_change_nothing() {
    common::require_root();
    let sshd = Sshd::start();
    let scratch = Scratch::new();
    let make = |tweak: &dyn Fn(&mut std::process::Command)| {
        let mut c = scratch.cmd();
        sshd.as_dibvm(&mut c, &sshd.known_hosts);
        tweak(&mut c);
        c.args(["make", "-d", "redis", "-i", "127.0.0.1", "-I"]);
        let out = run(c);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string()
    };
    let err = make(&|c| {
        c.env("DBIMAGE_DIB_PASSWD", "hunter22");
    });
    assert!(err.contains("DBIMAGE_DIB_PASSWD") && err.contains("keys only") && !err.contains("hunter22"), "{err}");
    let err = make(&|c| {
        c.env("DBIMAGE_DIB_PRIVATE_SSH_KEY", "/nonexistent/key");
    });
    assert!(err.contains("SSH key /nonexistent/key") && err.contains("does not exist"), "{err}");
    let err = make(&|c| {
        c.env("DBIMAGE_DIB_PORT", common::sshd::free_port().to_string());
    });
    assert!(err.contains("cannot connect to root@127.0.0.1:") && err.contains("refused"), "{err}");
    let other = scratch.dir.path().join("other_key");
    common::ssh_keygen(&other, "not-authorized");
    let err = make(&|c| {
        c.env("DBIMAGE_DIB_PRIVATE_SSH_KEY", &other);
    });
    assert!(err.contains("refused the SSH key"), "{err}");
    assert!(scratch.outputs().is_empty());
    scratch.assert_clean();
}
