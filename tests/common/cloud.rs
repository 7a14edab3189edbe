//! The local OpenStack that `scripts/test` starts with `scripts/openstack`
//! (Keystone, Glance, Trove API, Nova API on 127.0.0.1), and plain HTTP
//! checks against it that do not go through dbimage's own client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{Value, json};

/// The running test cloud.
pub struct Cloud {
    /// The harness directory (clouds.yaml, env, pids, logs).
    pub dir: PathBuf,
    /// Its clouds.yaml.
    pub clouds_yaml: PathBuf,
    http: Client,
    token: String,
    /// Admin project id.
    pub project_id: String,
    glance: String,
    trove: String,
    nova: String,
}

/// The cloud started by scripts/test; panics with the way to start one.
pub fn cloud() -> Cloud {
    super::watchdog::watch();
    let dir = std::env::var("DBIMAGE_TEST_OPENSTACK_DIR").unwrap_or_else(|_| {
        panic!(
            "no test cloud: run the suite with scripts/test, or start one with \
             `scripts/openstack start DIR` and export DBIMAGE_TEST_OPENSTACK_DIR=DIR"
        )
    });
    Cloud::login(Path::new(&dir), "dbimage-admin")
}

impl Cloud {
    /// Logs in as the named clouds.yaml entry (password clouds only).
    pub fn login(dir: &Path, cloud: &str) -> Cloud {
        let clouds_yaml = dir.join("clouds.yaml");
        let text = std::fs::read_to_string(&clouds_yaml).expect("clouds.yaml of the test cloud");
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        let auth = &doc["clouds"][cloud]["auth"];
        let http = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let url = format!(
            "{}/auth/tokens",
            auth["auth_url"].as_str().unwrap().trim_end_matches('/')
        );
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": auth["username"], "domain": {"name": auth["user_domain_name"].as_str().unwrap_or("Default")},
                "password": auth["password"]}}},
            "scope": {"project": {"name": auth["project_name"], "domain": {"name": auth["project_domain_name"].as_str().unwrap_or("Default")}}}
        }});
        let resp = http.post(&url).json(&body).send().unwrap();
        assert!(
            resp.status().is_success(),
            "test login failed: {}",
            resp.status()
        );
        let token = resp.headers()["X-Subject-Token"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = resp.json().unwrap();
        let project_id = body["token"]["project"]["id"].as_str().unwrap().to_string();
        let endpoint = |kind: &str| -> String {
            let entry = body["token"]["catalog"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["type"] == kind)
                .unwrap();
            let ep = entry["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["interface"] == "public")
                .unwrap();
            ep["url"]
                .as_str()
                .unwrap()
                .trim_end_matches('/')
                .to_string()
        };
        let glance = format!("{}/v2", endpoint("image").trim_end_matches("/v2"));
        let trove = endpoint("database");
        let nova = endpoint("compute");
        Cloud {
            dir: dir.to_path_buf(),
            clouds_yaml,
            http,
            token,
            project_id,
            glance,
            trove,
            nova,
        }
    }

    /// `dbimage` pointed at this cloud's clouds.yaml and the given entry.
    pub fn env(&self, c: &mut Command, cloud: &str) {
        c.env("OS_CLIENT_CONFIG_FILE", &self.clouds_yaml)
            .env("OS_CLOUD", cloud)
            .env_remove("OS_AUTH_URL")
            .env_remove("OS_CLIENT_SECURE_FILE");
    }

    fn get(&self, url: &str) -> Value {
        let r = self
            .http
            .get(url)
            .header("X-Auth-Token", &self.token)
            .header("OpenStack-API-Version", "compute 2.61")
            .send()
            .unwrap();
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        r.json().unwrap()
    }

    /// Glance images with this name.
    pub fn images_named(&self, name: &str) -> Vec<Value> {
        let v = self.get(&format!("{}/images?name={name}", self.glance));
        v["images"].as_array().unwrap().clone()
    }

    /// One Glance image, or null when there is none.
    pub fn get_image(&self, id: &str) -> Value {
        let r = self.http.get(format!("{}/images/{id}", self.glance)).header("X-Auth-Token", &self.token).send().unwrap();
        if r.status() == 404 {
            return Value::Null;
        }
        assert!(r.status().is_success(), "GET image {id}: {}", r.status());
        r.json().unwrap()
    }

    /// The bytes Glance stores for an image.
    pub fn download(&self, id: &str) -> Vec<u8> {
        let r = self
            .http
            .get(format!("{}/images/{id}/file", self.glance))
            .header("X-Auth-Token", &self.token)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "download {id}: {}", r.status());
        r.bytes().unwrap().to_vec()
    }

    /// Creates an image record (no data, `queued`) and returns its id.
    pub fn create_image(&self, name: &str) -> String {
        let r = self
            .http
            .post(format!("{}/images", self.glance))
            .header("X-Auth-Token", &self.token)
            .json(&json!({"name": name, "disk_format": "qcow2", "container_format": "bare"}))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "create image {name}: {}", r.status());
        let v: Value = r.json().unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// Deletes an image (test cleanup).
    pub fn delete_image(&self, id: &str) {
        let _ = self
            .http
            .delete(format!("{}/images/{id}", self.glance))
            .header("X-Auth-Token", &self.token)
            .send();
    }

    /// `GET /datastores/{name}/versions` as a tenant sees it.
    pub fn datastore_versions(&self, datastore: &str) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/datastores/{datastore}/versions", self.trove))
            .header("X-Auth-Token", &self.token)
            .send()
            .unwrap();
        if r.status() == 404 {
            return Vec::new();
        }
        let v: Value = r.json().unwrap();
        v["versions"].as_array().cloned().unwrap_or_default()
    }

    /// Configuration parameters of a datastore version (management API).
    pub fn parameters(&self, version_id: &str) -> Vec<Value> {
        let v = self.get(&format!(
            "{}/mgmt/datastores/versions/{version_id}/parameters",
            self.trove
        ));
        v["configuration-parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// All Nova flavors with details (extra specs included at 2.61).
    pub fn flavors(&self) -> Vec<Value> {
        let v = self.get(&format!("{}/flavors/detail?is_public=None", self.nova));
        v["flavors"].as_array().unwrap().clone()
    }

    /// Registers a keypair in Nova for the admin user.
    pub fn create_keypair(&self, name: &str, public_key: &str) {
        let _ = self
            .http
            .delete(format!("{}/os-keypairs/{name}", self.nova))
            .header("X-Auth-Token", &self.token)
            .send();
        let r = self
            .http
            .post(format!("{}/os-keypairs", self.nova))
            .header("X-Auth-Token", &self.token)
            .json(&json!({"keypair": {"name": name, "public_key": public_key}}))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "create keypair: {}", r.status());
    }

    /// Runs `scripts/openstack ACTION DIR SERVICE`.
    pub fn harness(&self, action: &str, service: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openstack");
        let st = Command::new(script)
            .arg(action)
            .arg(&self.dir)
            .arg(service)
            .status()
            .unwrap();
        assert!(st.success(), "scripts/openstack {action} {service} failed");
    }
}

/// A small valid QCOW2 whose content differs per `seed` (so uploads are
/// distinguishable): `qemu-img create` plus a few bytes written with qemu-io.
pub fn small_qcow2(dir: &Path, name: &str, seed: u8) -> PathBuf {
    let p = dir.join(name);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P {seed} 0 64k")])
        .arg(&p)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    p
}
