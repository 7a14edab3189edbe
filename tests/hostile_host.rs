//! Hostile hosts and host files: a compromised build VM naming the files
//! dbimage fetches, and a work directory or state file planted by another
//! local user. Each case ends refused, with a file the attack aims at
//! unchanged. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::sshd::Sshd;
use common::{Scratch, dbimage, list, run};

/// A file an attack aims at, with the bytes it must keep.
struct Canary {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Canary {
    fn new(path: PathBuf) -> Canary {
        let bytes = b"HOST CANARY: must never be written\n".to_vec();
        std::fs::write(&path, &bytes).unwrap();
        Canary { path, bytes }
    }
    fn assert_untouched(&self, case: &str) {
        let now = std::fs::read(&self.path).unwrap_or_default();
        assert_eq!(now, self.bytes, "{case}: {} changed", self.path.display());
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Failed with one error line, the last, naming `expect`.
fn assert_one_error(case: &str, out: &Output, expect: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "{case}: succeeded: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{case}: one error line expected: {err}");
    assert_eq!(err.trim_end().lines().last(), Some(errors[0]), "{case}: the error is the last line: {err}");
    assert!(errors[0].contains(expect), "{case}: expected {expect:?} in {err}");
}

/// `dbimage playbook run` of `text` against `sshd`.
fn run_playbook(sshd: &Sshd, dir: &Path, text: &str) -> Output {
    let book = dir.join("book.yaml");
    std::fs::write(&book, text).unwrap();
    let mut c = dbimage();
    c.args(["playbook", "run"])
        .arg(&book)
        .args(["--host", "root@127.0.0.1", "--port", &sshd.port.to_string(), "--key"])
        .arg(&sshd.client_key)
        .env("DBIMAGE_KNOWN_HOSTS", &sshd.known_hosts);
    run(c)
}

#[test]
fn a_fetch_never_writes_outside_its_directory_or_through_a_link() {
    common::require_root();
    let sshd = Sshd::start();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let into = d.join("fetch");
    std::fs::create_dir(&into).unwrap();
    let canary = Canary::new(d.join("victim"));
    // The remote side names the file; the playbook trusts the name.
    let book = |name: &str| {
        format!(
            "- run: printf 'from the host\\n' > {d}/remote-file\n\
             - run: printf '%s' '{name}'\n  register: named\n\
             - fetch: {{ src: \"{d}/remote-file\", dest: \"{into}/{{{{ named.stdout }}}}\" }}\n",
            d = d.display(),
            into = into.display()
        )
    };

    let out = run_playbook(&sshd, d, &book("../victim"));
    assert_one_error("'..' in the name", &out, "the path climbs out with '..'");
    canary.assert_untouched("'..' in the name");

    // A link planted where the partial file goes, or at the destination.
    std::os::unix::fs::symlink(&canary.path, into.join("a.qcow2.dbimage-part")).unwrap();
    let out = run_playbook(&sshd, d, &book("a.qcow2"));
    assert_one_error("a link at the partial file", &out, "a.qcow2.dbimage-part is in the way");
    canary.assert_untouched("a link at the partial file");
    std::os::unix::fs::symlink(&canary.path, into.join("b.qcow2")).unwrap();
    let out = run_playbook(&sshd, d, &book("b.qcow2"));
    assert_one_error("a link at the destination", &out, "it is a symbolic link");
    canary.assert_untouched("a link at the destination");

    let out = run_playbook(&sshd, d, &book(".hidden"));
    assert_one_error("a hidden name", &out, "not a plain file name");
    let mut left = list(&into);
    left.sort();
    assert_eq!(left, ["a.qcow2.dbimage-part", "b.qcow2"], "only the planted links are there");
}

/// A copy of the data files whose build VM playbook builds nothing and
/// reports `name` as the image it made: what a compromised VM can say.
fn data_dir_of_a_lying_vm(dir: &Path, name: &str) -> PathBuf {
    let data = dir.join("data");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["elements", "datastores", "flavors", "playbooks"] {
        common::sh(&format!("mkdir -p {d} && cp -a {s}/{sub} {d}/", d = data.display(), s = src.display()));
    }
    let book = data.join("playbooks/dibvm.yaml");
    let text = std::fs::read_to_string(&book).unwrap();
    let build = r#""$bin" --log-file {{ work }}/build.log make {{ make_args }}"#;
    let find = "cd {{ work }}/out && ls *.qcow2";
    assert!(text.contains(build) && text.contains(find), "dibvm.yaml changed; update this test");
    let lying = text
        .replace(build, "for f in x.json x.qcow2 out/x.sh; do echo 'from the VM' > {{ work }}/$f; done")
        .replace(find, &format!("printf '{name}'"));
    std::fs::write(&book, lying).unwrap();
    data
}

#[test]
fn a_build_vm_cannot_choose_where_its_image_lands() {
    common::require_root();
    let sshd = Sshd::start();
    let scratch = Scratch::new();
    std::fs::create_dir_all(scratch.out()).unwrap();
    // `..` from the fetch directory is the output directory.
    let canaries = [Canary::new(scratch.out().join("x.json")), Canary::new(scratch.out().join("x.qcow2"))];
    for (name, expect) in [
        ("../x.qcow2", "the path climbs out with '..'"),
        ("x.sh", "\"x.sh\" does not end in .qcow2"),
        ("a.qcow2\\nb.qcow2", "not a plain file name"),
    ] {
        let t = tempfile::tempdir_in(scratch.dir.path()).unwrap();
        let mut c = scratch.cmd();
        sshd.as_dibvm(&mut c, &sshd.known_hosts);
        c.env("DBIMAGE_DATA_DIR", data_dir_of_a_lying_vm(t.path(), name));
        c.args(["make", "-d", "redis", "-i", "127.0.0.1", "-I"]);
        let out = run(c);
        assert_one_error(name, &out, expect);
        assert_eq!(out.status.code(), Some(2), "{name}");
        for canary in &canaries {
            canary.assert_untouched(name);
        }
        let mut left = scratch.outputs();
        left.sort();
        assert_eq!(left, ["x.json", "x.qcow2"], "{name}: nothing but the canaries in the output directory");
    }
    scratch.assert_clean();
}

/// A state file as a build writes it, planted in `dir` for `cleanup`.
fn plant_state(dir: &Path, steps: &[serde_json::Value]) {
    std::fs::create_dir_all(dir).unwrap();
    let state = serde_json::json!({ "pid": 0, "stack": steps });
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
}

fn remove_file(path: &Path) -> serde_json::Value {
    serde_json::json!({ "undo": "remove_file", "path": path })
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// A scratch area, a host file beside it and its work directory's path.
fn scratch_with_canary() -> (Scratch, Canary, PathBuf) {
    common::require_root();
    let scratch = Scratch::new();
    let canary = Canary::new(scratch.dir.path().join("host-file"));
    let work = scratch.work();
    (scratch, canary, work)
}

#[test]
fn a_work_directory_others_can_write_is_refused_by_every_command() {
    let (scratch, canary, work) = scratch_with_canary();
    plant_state(&work.join("planted-1"), &[remove_file(&canary.path)]);
    set_mode(&work, 0o777);
    let image = common::cloud::small_qcow2(scratch.dir.path(), "input", 1);
    let commands: [&[&str]; 3] = [
        &["cleanup"],
        &["make", "-d", "redis", "-I"],
        &["upload", "-d", "redis", "-v", "7.0", "-f", image.to_str().unwrap(), "--no-publish"],
    ];
    for args in commands {
        let mut c = scratch.cmd();
        c.args(args);
        let out = run(c);
        assert_one_error(args[0], &out, "is writable by others (mode 0777)");
        assert!(stderr(&out).contains("chmod 0700"), "{}: says how to fix it", args[0]);
        assert_eq!(out.status.code(), Some(2), "{}", args[0]);
        canary.assert_untouched(args[0]);
        assert_eq!(list(&work), ["planted-1"], "{}: nothing made in the work directory", args[0]);
        assert!(scratch.outputs().is_empty(), "{}: {:?}", args[0], scratch.outputs());
    }

    // Another user's directory, however closed, is refused too.
    set_mode(&work, 0o700);
    std::os::unix::fs::chown(&work, Some(65534), None).unwrap();
    let mut c = scratch.cmd();
    c.arg("cleanup");
    let out = run(c);
    assert_one_error("owned by nobody", &out, "belongs to uid 65534");
    canary.assert_untouched("owned by nobody");
    std::os::unix::fs::chown(&work, Some(0), None).unwrap();
}

#[test]
fn cleanup_replays_only_steps_inside_the_work_directory() {
    let (scratch, canary, work) = scratch_with_canary();
    std::fs::create_dir_all(&work).unwrap();
    set_mode(&work, 0o700);
    let left = work.join("build-1/left-behind");
    std::fs::create_dir_all(&left).unwrap();
    let climbing = work.join("build-1/../..").join(canary.path.file_name().unwrap());
    plant_state(
        &work.join("build-1"),
        &[
            serde_json::json!({ "undo": "remove_dir", "path": work.join("build-1") }),
            remove_file(&canary.path),
            remove_file(&climbing),
        ],
    );
    let mut c = scratch.cmd();
    c.arg("cleanup");
    let out = run(c);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    canary.assert_untouched("cleanup");
    assert!(!work.join("build-1").exists(), "the step inside the work directory was undone");
    for refused in [&canary.path, &climbing] {
        let refused = refused.display().to_string();
        assert!(err.lines().any(|l| l.contains("not undoing") && l.contains(&refused)), "{refused}: {err}");
    }
}
