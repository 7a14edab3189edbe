//! `dbimage publish` against the real local cloud (Keystone, Glance, Trove
//! API, Nova API from PyPI on 127.0.0.1, started by scripts/test): uploads
//! that come back byte for byte, datastore versions that stay single when
//! published twice, and every failure path leaving nothing half-made.
//!
//! Tests that stop a service run one at a time (they share the cloud).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use common::cloud::{Cloud, cloud, small_qcow2};

/// Serialises the tests of this file: some stop Glance.
static CLOUD_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    CLOUD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn publish(cloud: &Cloud, entry: &str, args: &[&str], image: &Path) -> Output {
    let mut c = common::dbimage();
    cloud.env(&mut c, entry);
    c.arg("publish").arg(image).args(args);
    common::run(c)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn versions_named(cloud: &Cloud, ds: &str, name: &str) -> Vec<serde_json::Value> {
    cloud.datastore_versions(ds).into_iter().filter(|v| v["name"] == name).collect()
}

#[test]
fn publish_uploads_registers_and_is_idempotent() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let a = small_qcow2(dir.path(), "a.qcow2", 1);
    let args = ["-d", "postgresql", "-v", "90.1", "--name", "pub-test-a"];

    let out = publish(&cloud, "dbimage-admin", &args, &a);
    assert!(out.status.success(), "{}", stderr(&out));
    let imgs = cloud.images_named("pub-test-a");
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    let img = &imgs[0];
    assert_eq!(img["status"], "active");
    assert_eq!(img["disk_format"], "qcow2");
    assert_eq!(img["hw_rng_model"], "virtio");
    let tags: Vec<&str> = img["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(tags.contains(&"trove") && tags.contains(&"postgresql"), "{tags:?}");
    let id = img["id"].as_str().unwrap().to_string();
    assert_eq!(cloud.download(&id), std::fs::read(&a).unwrap(), "Glance holds other bytes");

    let v = versions_named(&cloud, "postgresql", "90.1");
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["image"], id.as_str());
    let params = cloud.parameters(v[0]["id"].as_str().unwrap());
    assert!(params.iter().any(|p| p["name"] == "max_connections"), "{params:?}");

    // The same file again: nothing new in Glance or Trove.
    let out = publish(&cloud, "dbimage-admin", &args, &a);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reused"));
    assert_eq!(cloud.images_named("pub-test-a").len(), 1);
    let again = versions_named(&cloud, "postgresql", "90.1");
    assert_eq!((again.len(), &again[0]["id"]), (1, &v[0]["id"]));

    // A new build of the same version: the version moves to the new image.
    let b = small_qcow2(dir.path(), "b.qcow2", 2);
    let out = publish(&cloud, "dbimage-admin", &["-d", "postgresql", "-v", "90.1", "--name", "pub-test-b"], &b);
    assert!(out.status.success(), "{}", stderr(&out));
    let new_id = cloud.images_named("pub-test-b")[0]["id"].as_str().unwrap().to_string();
    let moved = versions_named(&cloud, "postgresql", "90.1");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["image"], new_id.as_str());
    cloud.delete_image(&new_id);
    cloud.delete_image(&id);
}

#[test]
fn wrong_password_is_a_clear_auth_error() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let img = small_qcow2(dir.path(), "x.qcow2", 3);
    // A copy of clouds.yaml whose admin password is wrong.
    let text = std::fs::read_to_string(&cloud.clouds_yaml).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let real = doc["clouds"]["dbimage-admin"]["auth"]["password"].as_str().unwrap().to_string();
    let wrong = text.replace(&real, "not-the-password-123");
    let yaml = dir.path().join("clouds.yaml");
    std::fs::write(&yaml, wrong).unwrap();
    let mut c = common::dbimage();
    c.env("OS_CLIENT_CONFIG_FILE", &yaml).env("OS_CLOUD", "dbimage-admin").env_remove("OS_AUTH_URL");
    c.arg("publish").arg(&img).args(["-d", "redis", "-v", "90.2", "--name", "pub-test-auth"]);
    let out = common::run(c);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("authentication failed") && err.contains("HTTP 401"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(!err.contains("not-the-password-123"), "password leaked: {err}");
    assert!(cloud.images_named("pub-test-auth").is_empty());
}

#[test]
fn application_credentials_work() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let img = small_qcow2(dir.path(), "x.qcow2", 4);
    let out = publish(&cloud, "dbimage-appcred", &["-d", "mariadb", "-v", "90.3", "--name", "pub-test-appcred"], &img);
    assert!(out.status.success(), "{}", stderr(&out));
    let imgs = cloud.images_named("pub-test-appcred");
    assert_eq!(imgs.len(), 1);
    cloud.delete_image(imgs[0]["id"].as_str().unwrap());
}

#[test]
fn unknown_region_is_reported_before_anything_is_made() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let img = small_qcow2(dir.path(), "x.qcow2", 5);
    let out = publish(&cloud, "dbimage-admin", &["-d", "redis", "-v", "90.4", "--name", "pub-test-region", "--os-region-name", "Atlantis"], &img);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("region \"Atlantis\"") && err.contains("RegionOne"), "{err}");
    assert!(cloud.images_named("pub-test-region").is_empty());
}

#[test]
fn non_admin_is_refused_before_any_upload() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let img = small_qcow2(dir.path(), "x.qcow2", 6);
    // A member may upload to Glance, but Trove's management API is admin-only.
    let out = publish(&cloud, "dbimage-demo", &["-d", "mariadb", "-v", "90.5", "--name", "pub-test-member"], &img);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs the admin role"), "{err}");
    assert!(!err.contains("created Glance image"), "uploaded before asking Trove: {err}");
    assert!(cloud.images_named("pub-test-member").is_empty());
}

#[test]
fn trove_refusal_deletes_the_image_unless_kept() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let img = small_qcow2(dir.path(), "x.qcow2", 7);
    // Trove 26 ships guest agent managers for MySQL, MariaDB and PostgreSQL
    // only, and refuses a Redis version that names no registry extension:
    // the refusal comes after the upload.
    let out = publish(&cloud, "dbimage-admin", &["-d", "redis", "-v", "90.5", "--name", "pub-test-refused"], &img);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("Trove refused") && err.contains("created Glance image"), "{err}");
    assert!(cloud.images_named("pub-test-refused").is_empty(), "orphan image left in Glance");

    let out = publish(&cloud, "dbimage-admin", &["-d", "redis", "-v", "90.5", "--name", "pub-test-kept", "--keep-image"], &img);
    assert!(!out.status.success());
    let kept = cloud.images_named("pub-test-kept");
    assert_eq!(kept.len(), 1, "--keep-image should keep it");
    assert_eq!(kept[0]["status"], "active");
    cloud.delete_image(kept[0]["id"].as_str().unwrap());
}

#[test]
fn glance_quota_413_leaves_no_image() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB of data: over the `tiny` project's 1 MiB image_size_total.
    let img = dir.path().join("big.qcow2");
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&img).arg("64M").status().unwrap();
    assert!(st.success());
    let st = Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -P 7 0 4M"]).arg(&img).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(st.success());
    let out = publish(&cloud, "dbimage-tiny", &["-d", "redis", "-v", "90.6", "--name", "pub-test-413"], &img);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("HTTP 413"), "{err}");
    let tiny = Cloud::login(&cloud.dir, "dbimage-tiny");
    assert!(tiny.images_named("pub-test-413").is_empty(), "half-made image left");
}

#[test]
fn not_a_qcow2_is_refused_before_any_upload() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.qcow2");
    std::fs::write(&junk, vec![0x42u8; 1 << 20]).unwrap();
    let before = std::fs::read(&junk).unwrap();
    let out = publish(&cloud, "dbimage-admin", &["-d", "redis", "-v", "90.7", "--name", "pub-test-junk"], &junk);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not qcow2"), "{}", stderr(&out));
    assert!(cloud.images_named("pub-test-junk").is_empty());
    assert_eq!(std::fs::read(&junk).unwrap(), before, "input changed");
}

#[test]
fn glance_stopped_mid_upload_leaves_no_orphan() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    // ~1.5 GiB of incompressible data so the upload takes a while.
    let raw = dir.path().join("big.raw");
    let st = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=1536", "status=none"])
        .arg(format!("of={}", raw.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let img = dir.path().join("big.qcow2");
    let st = Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&img).status().unwrap();
    assert!(st.success());
    std::fs::remove_file(&raw).unwrap();

    let mut c = common::dbimage();
    cloud.env(&mut c, "dbimage-admin");
    c.arg("publish").arg(&img).args(["-d", "redis", "-v", "90.8", "--name", "pub-test-glance-down"]);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = common::spawn(c);
    // Wait until the image record exists and data is flowing, then stop Glance.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let imgs = cloud.images_named("pub-test-glance-down");
        if imgs.iter().any(|i| i["status"] == "saving") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "upload never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    cloud.harness("stop", "glance");
    std::thread::sleep(std::time::Duration::from_secs(3));
    cloud.harness("start-service", "glance");
    let out = child.output();
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(!out.status.success());
    // The error must be the interrupted upload of the image's data, not
    // just any line naming Glance (the info line "created Glance image"
    // always does).
    let id = err
        .lines()
        .find_map(|l| l.split("created Glance image pub-test-glance-down (").nth(1))
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no image was created: {err}"));
    let error = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {err}"));
    let put = format!("/images/{id}/file");
    assert!(
        error.contains(&put) && (error.contains("cannot reach Glance at ") || error.contains("Glance refused PUT ")),
        "the error is not the failed upload of {put}: {error}"
    );
    let cloud = common::cloud::cloud();
    assert!(cloud.images_named("pub-test-glance-down").is_empty(), "orphan image after Glance restart");
}

#[test]
fn flavor_upload_creates_then_updates_nova_flavors() {
    let _l = lock();
    let cloud = cloud();
    let overlay = tempfile::tempdir().unwrap();
    let flavor = |args: &[&str]| {
        let mut c = common::dbimage();
        cloud.env(&mut c, "dbimage-admin");
        c.env("DBIMAGE_CUSTOM_FLAVORS_DIR", overlay.path()).arg("flavor").args(args);
        common::run(c)
    };
    let find = |name: &str| cloud.flavors().into_iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("no flavor {name}"));

    let out = flavor(&["upload", "-d", "redis"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tiny = find("redis.tiny");
    assert_eq!((tiny["vcpus"].as_u64(), tiny["ram"].as_u64(), tiny["disk"].as_u64()), (Some(2), Some(2048), Some(6)));
    assert_eq!(tiny["OS-FLV-EXT-DATA:ephemeral"].as_u64(), Some(5));
    assert_eq!(tiny["extra_specs"]["dbimage:backup_size_mb"], "10240");
    assert_eq!(tiny["extra_specs"]["dbimage:database_disk_mb"], "5120");
    let xl = find("redis.xlarge");
    assert_eq!((xl["vcpus"].as_u64(), xl["ram"].as_u64(), xl["disk"].as_u64()), (Some(32), Some(32768), Some(10)));

    // Again: nothing changes, not even the ids.
    let ids: Vec<String> = ["tiny", "small", "medium", "large", "xlarge"].iter().map(|f| find(&format!("redis.{f}"))["id"].as_str().unwrap().to_string()).collect();
    let out = flavor(&["upload", "-d", "redis"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("unchanged").count(), 5);
    let again: Vec<String> = ["tiny", "small", "medium", "large", "xlarge"].iter().map(|f| find(&format!("redis.{f}"))["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, again);

    // A change reaches Nova on the next upload.
    assert!(flavor(&["change", "-d", "redis", "-f", "tiny", "-c", "4", "-b", "12345"]).status.success());
    let out = flavor(&["upload", "-d", "redis"]);
    assert!(out.status.success());
    let tiny = find("redis.tiny");
    assert_eq!(tiny["vcpus"].as_u64(), Some(4));
    assert_eq!(tiny["extra_specs"]["dbimage:backup_size_mb"], "12345");
    assert_eq!(cloud.flavors().iter().filter(|f| f["name"] == "redis.tiny").count(), 1);
}

/// A Keystone stand-in over TLS on 127.0.0.1 that refuses every login with
/// Keystone's 401 body: enough to show whose certificate dbimage trusts.
struct TlsKeystone {
    child: std::process::Child,
    port: u16,
}

impl TlsKeystone {
    fn start(dir: &Path) -> (TlsKeystone, std::path::PathBuf) {
        let ca = dir.join("ca.pem");
        let run = |args: &[&str]| {
            let st = Command::new("openssl").args(args).current_dir(dir).stderr(std::process::Stdio::null()).status().unwrap();
            assert!(st.success(), "openssl {args:?}");
        };
        run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dbimage test CA"]);
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"]);
        std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext"]);
        let script = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        body = b'{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}'
        self.send_response(401); self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(('127.0.0.1', 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain('srv.pem', 'srv.key')
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        (TlsKeystone { child, port: line.trim().parse().unwrap() }, ca)
    }
}

impl Drop for TlsKeystone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tls_trusts_the_cacert_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (ks, ca) = TlsKeystone::start(dir.path());
    let img = small_qcow2(dir.path(), "x.qcow2", 9);
    let attempt = |cacert: Option<&Path>| {
        let mut c = common::dbimage();
        c.env_remove("OS_CLOUD")
            .env_remove("OS_CLIENT_CONFIG_FILE")
            .env("OS_AUTH_URL", format!("https://127.0.0.1:{}/v3", ks.port))
            .env("OS_USERNAME", "admin")
            .env("OS_PASSWORD", "tls-secret-pw")
            .env("OS_PROJECT_NAME", "admin")
            .env("OS_USER_DOMAIN_NAME", "Default")
            .env("OS_PROJECT_DOMAIN_NAME", "Default");
        match cacert {
            Some(p) => c.env("OS_CACERT", p),
            None => c.env_remove("OS_CACERT"),
        };
        c.arg("publish").arg(&img).args(["-d", "redis", "-v", "90.9"]);
        let out = common::run(c);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(!err.contains("tls-secret-pw"), "password leaked: {err}");
        err
    };
    // The test CA is not in the system store: the handshake fails, and the
    // message says how to fix it.
    let err = attempt(None);
    assert!(err.contains("cannot reach Keystone") && err.contains("cacert"), "{err}");
    // With the CA, TLS succeeds and the server's own answer comes through.
    let err = attempt(Some(&ca));
    assert!(err.contains("authentication failed") && err.contains("HTTP 401"), "{err}");
}

/// Deletes every image named `name` (leftovers of an earlier run).
fn clear_images(cloud: &Cloud, name: &str) {
    for i in cloud.images_named(name) {
        cloud.delete_image(i["id"].as_str().unwrap());
    }
}

fn id_of(img: &serde_json::Value) -> String {
    img["id"].as_str().unwrap().to_string()
}

#[test]
fn rotate_keeps_one_latest_and_dates_the_former_ones() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let today = |img: &serde_json::Value| img["created_at"].as_str().unwrap()[..10].to_string();
    clear_images(&cloud, "rot-test-latest");
    let a = small_qcow2(dir.path(), "a.qcow2", 11);
    let out = publish(&cloud, "dbimage-admin", &["-d", "postgresql", "-v", "90.11", "--name", "rot-test-2026-01-01", "--rotate"], &a);
    assert!(out.status.success(), "{}", stderr(&out));
    let latest = cloud.images_named("rot-test-latest");
    assert_eq!(latest.len(), 1, "{latest:?}");
    let a_id = id_of(&latest[0]);
    let a_dated = format!("rot-test-{}", today(&latest[0]));
    clear_images(&cloud, &a_dated);

    // B (other content, same base) becomes -latest; A gets its creation date.
    let b = small_qcow2(dir.path(), "b.qcow2", 12);
    let args_b = ["-d", "postgresql", "-v", "90.11", "--name", "rot-test-2026-01-02", "--rotate"];
    let out = publish(&cloud, "dbimage-admin", &args_b, &b);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains(&format!("{a_id} (the former rot-test-latest) renamed to {a_dated}")), "{stdout}");
    let latest = cloud.images_named("rot-test-latest");
    assert_eq!(latest.len(), 1, "{latest:?}");
    let b_id = id_of(&latest[0]);
    assert_ne!(a_id, b_id);
    assert_eq!(cloud.download(&b_id), std::fs::read(&b).unwrap());
    let dated: Vec<String> = cloud.images_named(&a_dated).iter().map(id_of).collect();
    assert_eq!(dated, vec![a_id.clone()]);
    let v = versions_named(&cloud, "postgresql", "90.11");
    assert_eq!((v.len(), v[0]["image"].as_str()), (1, Some(b_id.as_str())));

    // B again: reused, nothing renamed.
    let out = publish(&cloud, "dbimage-admin", &args_b, &b);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("reused") && !stdout.contains("renamed"), "{stdout}");
    assert_eq!(cloud.images_named("rot-test-latest").iter().map(id_of).collect::<Vec<_>>(), vec![b_id.clone()]);
    assert_eq!(cloud.images_named(&a_dated).len(), 1);

    // C: B's dated name is taken by A, so B gets the time as well.
    let c = small_qcow2(dir.path(), "c.qcow2", 13);
    let out = publish(&cloud, "dbimage-admin", &["-d", "postgresql", "-v", "90.11", "--name", "rot-test", "--rotate"], &c);
    assert!(out.status.success(), "{}", stderr(&out));
    let b_img = cloud.get_image(&b_id);
    assert!(!b_img.is_null());
    let created = b_img["created_at"].as_str().unwrap();
    let b_dated = format!("rot-test-{}-{}", &created[..10], created[11..19].replace(':', ""));
    assert_eq!(b_img["name"], b_dated.as_str());
    let c_id = id_of(&cloud.images_named("rot-test-latest")[0]);
    assert_eq!(cloud.images_named(&a_dated).iter().map(id_of).collect::<Vec<_>>(), vec![a_id.clone()]);

    // A Trove refusal after the upload: the new image goes, C stays -latest.
    let d = small_qcow2(dir.path(), "d.qcow2", 14);
    let out = publish(&cloud, "dbimage-admin", &["-d", "redis", "-v", "90.12", "--name", "rot-test", "--rotate"], &d);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Trove refused"), "{}", stderr(&out));
    assert_eq!(cloud.images_named("rot-test-latest").iter().map(id_of).collect::<Vec<_>>(), vec![c_id.clone()]);
    assert_eq!(cloud.get_image(&b_id)["name"], b_dated.as_str());
    for id in [a_id, b_id, c_id] {
        cloud.delete_image(&id);
    }
}

#[test]
fn rotate_from_the_settings() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    clear_images(&cloud, "rot-env-latest");
    let img = small_qcow2(dir.path(), "e.qcow2", 15);
    let mut c = common::dbimage();
    cloud.env(&mut c, "dbimage-admin");
    c.env("DBIMAGE_ROTATE", "yes").arg("publish").arg(&img).args(["-d", "postgresql", "-v", "90.13", "--name", "rot-env-2026-03-04"]);
    let out = common::run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let latest = cloud.images_named("rot-env-latest");
    assert_eq!(latest.len(), 1, "{latest:?}");
    assert!(cloud.images_named("rot-env-2026-03-04").is_empty());
    cloud.delete_image(&id_of(&latest[0]));
}

fn prune(cloud: &Cloud, args: &[&str]) -> Output {
    let mut c = common::dbimage();
    cloud.env(&mut c, "dbimage-admin");
    c.arg("prune").args(args);
    common::run(c)
}

#[test]
fn prune_keeps_the_newest_and_what_trove_uses() {
    let _l = lock();
    let cloud = cloud();
    let dir = tempfile::tempdir().unwrap();
    let names = ["pr-test-2026-01-01", "pr-test-2026-01-02", "pr-test-2026-01-03", "pr-test-2026-01-03-101500", "pr-test-latest"];
    for n in names.iter().chain(&["pr-testx-2026-01-01", "pr-test-golden"]) {
        clear_images(&cloud, n);
    }
    // The oldest is what a Trove version boots.
    let img = small_qcow2(dir.path(), "p.qcow2", 21);
    let out = publish(&cloud, "dbimage-admin", &["-d", "postgresql", "-v", "90.21", "--name", names[0]], &img);
    assert!(out.status.success(), "{}", stderr(&out));
    let used = id_of(&cloud.images_named(names[0])[0]);
    let mut ids = vec![used.clone()];
    for n in &names[1..] {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        ids.push(cloud.create_image(n));
    }
    let others = [cloud.create_image("pr-testx-2026-01-01"), cloud.create_image("pr-test-golden")];

    // Dry run: says what would go, deletes nothing.
    let out = prune(&cloud, &["--keep", "2", "--name", "pr-test", "--cloud-only", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains(&format!("glance: would delete pr-test-2026-01-02 ({})", ids[1])), "{stdout}");
    assert!(stdout.contains(&format!("glance: would delete pr-test-2026-01-03 ({})", ids[2])), "{stdout}");
    assert!(stdout.contains(&format!("glance: kept pr-test-2026-01-01 ({used}): Trove datastore version postgresql 90.21 uses it")), "{stdout}");
    for id in ids.iter().chain(&others) {
        assert!(!cloud.get_image(id).is_null(), "dry run deleted {id}");
    }

    // For real: -latest and the newest dated one stay, the Trove one stays,
    // other bases are untouched.
    let out = prune(&cloud, &["--keep", "2", "--name", "pr-test", "--cloud-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gone: Vec<bool> = ids.iter().map(|id| cloud.get_image(id).is_null()).collect();
    assert_eq!(gone, [false, true, true, false, false], "{}", String::from_utf8_lossy(&out.stdout));
    for id in &others {
        assert!(!cloud.get_image(id).is_null(), "another base's image {id} was deleted");
    }
    for id in ids.iter().chain(&others) {
        cloud.delete_image(id);
    }
}

#[test]
fn prune_local_images_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let files = ["postgresql-15-dib-2026-01-01", "postgresql-15-dib-2026-01-02", "postgresql-15-dib-2026-01-03", "postgresql-15-dib-2026-01-03-patched", "postgresql-15-dibx-2026-01-01", "postgresql-16-dib-2026-01-01"];
    for f in files {
        std::fs::write(dir.path().join(format!("{f}.qcow2")), b"q").unwrap();
        std::fs::write(dir.path().join(format!("{f}.json")), b"{}").unwrap();
    }
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    let run = |args: &[&str]| {
        let mut c = common::dbimage();
        c.env("DBIMAGE_IMAGES_DIR", dir.path()).env("DBIMAGE_SOURCE", "-dib").arg("prune").args(args);
        common::run(c)
    };
    let before = listing();
    for bad in [&["--keep", "0", "--name", "postgresql-15-dib", "--local-only"][..], &["--keep", "2", "--local-only"][..]] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
        assert_eq!(listing(), before);
    }
    let out = run(&["--keep", "2", "-d", "postgresql", "-v", "15", "--local-only", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("local: would delete"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(listing(), before);
    let out = run(&["--keep", "2", "-d", "postgresql", "-v", "15", "--local-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut left: Vec<String> = before.into_iter().filter(|f| !f.starts_with("postgresql-15-dib-2026-01-01.") && !f.starts_with("postgresql-15-dib-2026-01-02.")).collect();
    left.sort();
    assert_eq!(listing(), left);
}
