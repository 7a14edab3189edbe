//! Every install source: the user's .deb, a tarball with setup.sh, and a
//! vendor's signed apt repository (served here on 127.0.0.1), plus the
//! refusals of bad `-p` input.

mod common;
#[path = "common/answer.rs"]
mod answer;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Real Debian packages, fetched with `apt-get download` into `dir`.
fn download(dir: &Path, packages: &[&str]) -> Vec<PathBuf> {
    let fetch = || Command::new("apt-get").arg("download").args(packages).current_dir(dir).status().unwrap();
    if !fetch().success() {
        // A fresh machine may have no package lists yet.
        assert!(Command::new("apt-get").args(["update", "-qq"]).status().unwrap().success());
        assert!(fetch().success(), "apt-get download {packages:?}");
    }
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    debs
}

fn sh(script: &str, dir: &Path) {
    let ok = Command::new("sh").arg("-c").arg(script).current_dir(dir).status().unwrap();
    assert!(ok.success(), "{script}");
}

#[test]
fn redis_from_the_users_deb_boots_and_answers() {
    require_root();
    let scratch = Scratch::new();
    let pkgs = scratch.dir.path().join("pkgs");
    std::fs::create_dir(&pkgs).unwrap();
    let debs = download(&pkgs, &["redis-server"]);
    let deb = debs.iter().find(|d| d.to_string_lossy().contains("redis-server_")).unwrap();
    let (image, manifest) = make_image(
        &scratch,
        &["-d", "redis", "-v", "7.0", "-r", "bookworm", "--compression", "zstd", "-p", deb.to_str().unwrap()],
        &[],
    );
    assert_eq!(manifest["install"]["kind"], "deb");
    assert_eq!(manifest["install"]["package"], "redis-server");
    let version = manifest["install"]["version"].as_str().unwrap();
    assert_eq!(manifest["database_packages"]["redis-server"], version);
    // Its dependency came from the distro in the same apt run.
    assert!(manifest["packages"]["redis-tools"].is_string());
    boot_and_answer(&scratch, &image, "redis");
}

#[test]
fn redis_from_a_tarball_setup_sh_boots_and_answers() {
    require_root();
    let scratch = Scratch::new();
    let src = scratch.dir.path().join("src");
    std::fs::create_dir_all(src.join("debs")).unwrap();
    download(&src.join("debs"), &["redis-server", "redis-tools", "libjemalloc2", "liblzf1"]);
    std::fs::write(
        src.join("setup.sh"),
        "#!/bin/sh\nset -eu\n# Installs the database from the .debs this tarball carries.\n\
         apt-get install -y --no-install-recommends ./debs/*.deb\n\
         echo installed-by-setup-sh > /etc/redis/dbimage-tarball\n",
    )
    .unwrap();
    sh("chmod 755 setup.sh && tar czf ../redis.tar.gz .", &src);
    let tarball = scratch.dir.path().join("redis.tar.gz");
    let (image, manifest) = make_image(
        &scratch,
        &["-d", "redis", "-v", "7.0", "-r", "bookworm", "--compression", "zstd", "-p", tarball.to_str().unwrap()],
        &[],
    );
    assert_eq!(manifest["install"]["kind"], "tarball");
    assert!(manifest["packages"]["redis-server"].is_string());
    let (marker, _) = debugfs_in_image(&image, "cat /etc/redis/dbimage-tarball");
    assert_eq!(marker.trim(), "installed-by-setup-sh");
    assert!(list_image_dir(&image, "/tmp").iter().all(|f| f != "dbimage-pkg"), "scratch dir removed");
    boot_and_answer(&scratch, &image, "redis");
}

/// A signed apt repository of real Debian packages, served on 127.0.0.1
/// by a process this test started and ends by its PID.
struct VendorRepo {
    server: Spawned,
    port: u16,
    key: PathBuf,
    fingerprint: String,
}

impl Drop for VendorRepo {
    fn drop(&mut self) {
        let _ = self.server.kill();
        self.server.wait();
    }
}

/// [`vendor_repo_with`] holding Debian's packages as they are.
fn vendor_repo(dir: &Path, packages: &[&str]) -> VendorRepo {
    vendor_repo_with(dir, packages, |_| {})
}

/// A vendor repository of `packages`, changed by `rebrand` in its pool
/// before the indexes are made and signed.
fn vendor_repo_with(dir: &Path, packages: &[&str], rebrand: impl FnOnce(&Path)) -> VendorRepo {
    let gnupg = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    gpg(&["--quick-gen-key", "dbimage test vendor <vendor@test.invalid>", "ed25519", "sign", "never"]);
    let key = dir.join("test-vendor.asc");
    std::fs::write(&key, gpg(&["--armor", "--export"])).unwrap();
    let fingerprint = gpg(&["--with-colons", "--list-keys"])
        .lines()
        .find_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_string()))
        .unwrap();

    let repo = dir.join("repo");
    let pool = repo.join("pool");
    std::fs::create_dir_all(&pool).unwrap();
    download(&pool, packages);
    rebrand(&pool);
    std::fs::create_dir_all(repo.join("dists/bookworm/main/binary-amd64")).unwrap();
    sh(
        "apt-ftparchive packages pool > dists/bookworm/main/binary-amd64/Packages && \
         gzip -k dists/bookworm/main/binary-amd64/Packages && \
         apt-ftparchive -o APT::FTPArchive::Release::Origin=dbimage-test-vendor \
           -o APT::FTPArchive::Release::Suite=bookworm -o APT::FTPArchive::Release::Codename=bookworm \
           -o APT::FTPArchive::Release::Architectures=amd64 -o APT::FTPArchive::Release::Components=main \
           release dists/bookworm > Release.tmp && mv Release.tmp dists/bookworm/Release",
        &repo,
    );
    gpg(&["--clearsign", "-o", "repo/dists/bookworm/InRelease", "repo/dists/bookworm/Release"]);

    let (server, port) = serve(&repo);
    VendorRepo { server, port, key, fingerprint }
}

/// Serves `repo` on a free port of 127.0.0.1 and waits until that server,
/// not whoever took the port in between, hands out this repository's
/// InRelease. A port found free may be taken before the server binds it
/// (tests run in parallel): the server then exits and another port is tried.
fn serve(repo: &Path) -> (Spawned, u16) {
    let in_release = std::fs::read(repo.join("dists/bookworm/InRelease")).unwrap();
    for _ in 0..5 {
        let port = common::sshd::free_port();
        let mut c = Command::new("python3");
        c.args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(repo)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(repo.with_extension("log")).unwrap());
        let mut server = spawn(c);
        let what = format!("the vendor repository server (python3 -m http.server) to serve {} on 127.0.0.1:{port}", repo.display());
        let _w = waiting_for(&what);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while server.try_wait().unwrap().is_none() {
            if fetch(port, "/dists/bookworm/InRelease").as_deref() == Some(&in_release[..]) {
                return (server, port);
            }
            let log = std::fs::read_to_string(repo.with_extension("log")).unwrap_or_default();
            assert!(std::time::Instant::now() < deadline, "timed out after 20 s waiting for {what}; its log:\n{log}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("the repository server on port {port} exited: {}", std::fs::read_to_string(repo.with_extension("log")).unwrap_or_default());
    }
    panic!("the vendor repository server could not listen on any of 5 free ports of 127.0.0.1");
}

/// The body of `GET path` from 127.0.0.1:port, if it answered 200 in time.
fn fetch(port: u16, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let timeout = Some(std::time::Duration::from_secs(5));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(timeout).ok()?;
    s.set_write_timeout(timeout).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    answer.starts_with(b"HTTP/1.0 200").then(|| answer[split + 4..].to_vec())
}

/// A data directory of our own: the real catalog and elements, the test
/// key in datastores/keys/, and `row` appended to `db`.yaml.
fn data_dir_with_row(scratch: &Scratch, key: &Path, key_name: &str, db: &str, row: &str) -> PathBuf {
    let data = scratch.dir.path().join("data");
    std::fs::create_dir_all(data.join("datastores/keys")).unwrap();
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in std::fs::read_dir(project.join("datastores")).unwrap().flatten() {
        if f.path().extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(f.path(), data.join("datastores").join(f.file_name())).unwrap();
        }
    }
    std::os::unix::fs::symlink(project.join("elements"), data.join("elements")).unwrap();
    std::fs::copy(key, data.join("datastores/keys").join(key_name)).unwrap();
    let catalog = data.join(format!("datastores/{db}.yaml"));
    let mut yaml = std::fs::read_to_string(&catalog).unwrap();
    yaml.push_str(row);
    std::fs::write(&catalog, yaml).unwrap();
    data
}

/// What the vendor's MariaDB adds to its server's version string.
const VENDOR_MARKER: &str = "dbimage-test-vendor";

/// Turns Debian's mariadb-server in `pool` into a vendor's own: a higher
/// version (`+dbimagevendor1`) and a configuration file that makes the
/// server report [`VENDOR_MARKER`] in `select version()`, so the answer of
/// the booted image tells which package it came from.
fn rebrand_mariadb_server(pool: &Path) {
    let deb = std::fs::read_dir(pool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("mariadb-server_")))
        .expect("mariadb-server downloaded");
    let tree = pool.with_file_name("mariadb-server-tree");
    sh(&format!("dpkg-deb -R {} {}", deb.display(), tree.display()), pool);
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path).unwrap();
    let debian = control.lines().find_map(|l| l.strip_prefix("Version: ")).unwrap().to_string();
    // 1:10.11.19-0+deb12u1 → 10.11.19: keeping the real number lets the
    // server's own upgrade check (debian-start) agree with the client.
    let upstream = debian.split_once(':').map_or(&debian[..], |(_, v)| v).split('-').next().unwrap().to_string();
    std::fs::write(&control_path, control.replace(&format!("Version: {debian}\n"), &format!("Version: {debian}+dbimagevendor1\n"))).unwrap();
    std::fs::write(
        tree.join("etc/mysql/mariadb.conf.d/90-dbimage-test-vendor.cnf"),
        format!("[mariadbd]\nversion = {upstream}-MariaDB-{VENDOR_MARKER}\n"),
    )
    .unwrap();
    std::fs::remove_file(&deb).unwrap();
    sh(&format!("dpkg-deb --build --root-owner-group {} mariadb-server_vendor.deb && rm -r {}", tree.display(), tree.display()), pool);
}

/// The vendor path end to end: MariaDB from a signed repository served
/// here, built, then booted and queried; the answer must come from the
/// vendor's package, not Debian's.
#[test]
fn community_edition_from_a_local_signed_repository_boots_and_answers() {
    require_root();
    let scratch = Scratch::new();
    let repo = vendor_repo_with(scratch.dir.path(), &["mariadb-server", "mariadb-client"], rebrand_mariadb_server);

    let row = format!(
        "  - source: community\n    release: bookworm\n    arch: [amd64]\n    version: \"10.11\"\n    \
         packages: [mariadb-server, mariadb-client]\n    repo:\n      url: http://127.0.0.1:{}\n      \
         suite: bookworm\n      components: [main]\n      key: test-vendor.asc\n      \
         fingerprint: {}\n      pin: o=dbimage-test-vendor\n",
        repo.port, repo.fingerprint
    );
    let data = data_dir_with_row(&scratch, &repo.key, "test-vendor.asc", "mariadb", &row);

    let (image, manifest) = make_image(
        &scratch,
        &["-d", "mariadb", "-v", "10.11", "-c", "--compression", "zstd"],
        &[("DBIMAGE_DATA_DIR", &data)],
    );
    let name = image.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("mariadb-10.11-c-dib-"), "{name}");
    assert_eq!(manifest["datastore"]["source"], "community");
    let origin = manifest["origins"]["mariadb-server"].as_str().unwrap();
    assert!(origin.starts_with(&format!("http://127.0.0.1:{}", repo.port)), "{origin}");
    let version = manifest["database_packages"]["mariadb-server"].as_str().unwrap_or_default();
    assert!(version.ends_with("+dbimagevendor1"), "mariadb-server {version:?} is not the vendor's");
    // The repository, its key and its pin are gone from the image.
    let leftovers: Vec<String> = [
        ("/etc/apt/sources.list.d", "dbimage-mariadb"),
        ("/usr/share/keyrings", "dbimage-mariadb"),
        ("/etc/apt/preferences.d", "dbimage-mariadb"),
    ]
    .iter()
    .flat_map(|(dir, prefix)| list_image_dir(&image, dir).into_iter().filter(move |f| f.starts_with(prefix)))
    .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    drop(repo);
    let said = answer::answer_within(&scratch, &image, "mariadb", 480);
    assert!(said.contains(VENDOR_MARKER), "the answer is not from the vendor's mariadb-server: {said}");
}

#[test]
fn a_vendor_key_with_the_wrong_fingerprint_is_refused() {
    require_root();
    let scratch = Scratch::new();
    let repo = vendor_repo(scratch.dir.path(), &["redis-tools"]);
    let data = data_dir_with_row(
        &scratch,
        &repo.key,
        "k.asc",
        "redis",
        "  - source: community\n    release: bookworm\n    arch: [amd64]\n    version: \"7.0\"\n    \
         packages: [redis-server]\n    repo:\n      url: http://127.0.0.1:1\n      suite: bookworm\n      \
         components: [main]\n      key: k.asc\n      fingerprint: 0000 1111 2222 3333 4444 5555 6666 7777 8888 9999\n",
    );
    let mut c = scratch.cmd();
    c.env("DBIMAGE_DATA_DIR", &data).args(["make", "-d", "redis", "-v", "7.0", "-c", "-I"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to trust it"), "{err}");
    scratch.assert_clean();
    assert!(scratch.outputs().is_empty());
}

/// A minimal .deb made here with dpkg-deb.
fn tiny_deb(dir: &Path, arch: &str, depends: Option<&str>) -> PathBuf {
    let root = dir.join(format!("tiny-{arch}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    let mut control = format!(
        "Package: dbimage-tiny\nVersion: 1.0\nArchitecture: {arch}\nMaintainer: t <t@test.invalid>\nDescription: test\n"
    );
    if let Some(d) = depends {
        control.push_str(&format!("Depends: {d}\n"));
    }
    std::fs::write(root.join("DEBIAN/control"), control).unwrap();
    let deb = dir.join(format!("dbimage-tiny_{arch}.deb"));
    let ok = Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&root).arg(&deb).status().unwrap();
    assert!(ok.success());
    deb
}

fn refused(scratch: &Scratch, args: &[&str], code: i32, expect: &str) {
    let mut c = scratch.cmd();
    c.arg("make").args(args);
    let out = run(c);
    assert_eq!(out.status.code(), Some(code), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expect), "{args:?}: {err}");
    assert!(scratch.outputs().is_empty());
    assert!(list(&scratch.work()).is_empty());
}

#[test]
fn bad_package_input_is_refused_before_anything_is_built() {
    let scratch = Scratch::new();
    let dir = scratch.dir.path();
    let ppc = tiny_deb(dir, "ppc64el", None);
    refused(&scratch, &["-d", "redis", "-v", "7.0", "-I", "-a", "amd64", "-p", ppc.to_str().unwrap()], 2, "built for ppc64el");
    let fake = dir.join("fake.deb");
    std::fs::write(&fake, b"this is not an ar archive").unwrap();
    refused(&scratch, &["-d", "redis", "-v", "7.0", "-I", "-p", fake.to_str().unwrap()], 2, "not a valid Debian package");
    let garbage = dir.join("garbage.tar.gz");
    std::fs::write(&garbage, [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    refused(&scratch, &["-d", "redis", "-v", "7.0", "-I", "-p", garbage.to_str().unwrap()], 2, "garbage.tar.gz");
    let empty = dir.join("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    refused(&scratch, &["-d", "redis", "-v", "7.0", "-I", "-p", empty.to_str().unwrap()], 2, "empty.tar");
    let zip = dir.join("db.zip");
    std::fs::write(&zip, b"PK\x03\x04").unwrap();
    refused(&scratch, &["-d", "redis", "-v", "7.0", "-I", "-p", zip.to_str().unwrap()], 2, "db.zip");
    refused(&scratch, &["-d", "redis", "-I", "-p", fake.to_str().unwrap()], 2, "--db-version");
    refused(&scratch, &["-d", "mysql", "-c", "-e", "-I"], 2, "cannot be used with");
    refused(&scratch, &["-d", "redis", "-v", "7.0", "-I", "-p", "/nonexistent/x.deb"], 2, "no such file");
}

#[test]
fn a_deb_whose_dependencies_cannot_be_met_fails_before_the_disk() {
    require_root();
    let scratch = Scratch::new();
    let deb = tiny_deb(scratch.dir.path(), "all", Some("dbimage-no-such-package"));
    let _lock = build_lock();
    let mut c = scratch.cmd();
    c.args(["make", "-d", "redis", "-v", "7.0", "-r", "bookworm", "-I", "-p"]).arg(&deb);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dbimage-no-such-package"), "{err}");
    assert!(!err.contains("==> disk"), "stopped before the disk: {err}");
    scratch.assert_clean();
    assert!(scratch.outputs().is_empty());
}
