//! Trove's management API: datastore versions and their configuration
//! parameters. Needs an admin token.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::Service;
use super::{CloudError, Session};

/// A datastore version as the management API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct DatastoreVersion {
    /// Version id.
    pub id: String,
    /// Display name (`15`, `10.11`).
    pub name: String,
    /// The datastore's name.
    pub datastore_name: String,
    /// The Glance image id it boots.
    #[serde(default)]
    pub image: Option<String>,
}

#[derive(Debug, Deserialize)]
struct VersionList {
    versions: Vec<DatastoreVersion>,
}

/// What a datastore version should be.
#[derive(Debug, Clone)]
pub struct VersionSpec {
    /// Datastore name (created when missing).
    pub datastore: String,
    /// Version name.
    pub name: String,
    /// Trove manager (`postgresql`, `mariadb`, …).
    pub manager: String,
    /// Glance image id.
    pub image: String,
    /// Packages, informational.
    pub packages: Vec<String>,
}

/// One configuration parameter rule (Trove's validation-rules.json shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    /// Parameter name.
    pub name: String,
    /// Whether a change needs a database restart.
    pub restart_required: bool,
    /// integer, string, boolean or float.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Lower bound (integers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Upper bound (integers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// A validation-rules.json file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ValidationRules {
    /// The rules.
    #[serde(rename = "configuration-parameters")]
    pub parameters: Vec<Parameter>,
}

#[derive(Debug, Deserialize)]
struct ParameterList {
    #[serde(rename = "configuration-parameters")]
    parameters: Vec<RemoteParameter>,
}

#[derive(Debug, Deserialize)]
struct RemoteParameter {
    name: String,
    #[serde(default)]
    restart_required: bool,
    #[serde(rename = "type", default)]
    data_type: String,
    #[serde(default)]
    min_size: Option<i64>,
    #[serde(default)]
    max_size: Option<i64>,
}

/// How a version ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist and was created.
    Created,
    /// It existed and now points at the new image.
    Updated,
}

/// The Trove API of a session.
pub struct Trove<'a> {
    svc: Service<'a>,
}

impl<'a> Trove<'a> {
    /// Trove from the session's catalog (`database` service).
    pub fn new(session: &'a Session) -> Result<Trove<'a>, CloudError> {
        let mut svc = session.service("Trove", "database", "")?;
        // Catalogs register either …/v1.0/%(tenant_id)s (substituted by
        // Keystone) or the bare …/v1.0.
        if !svc.base.ends_with(&session.project_id) {
            if !svc.base.ends_with("/v1.0") {
                svc.base.push_str("/v1.0");
            }
            svc.base = format!("{}/{}", svc.base, session.project_id);
        }
        Ok(Trove { svc })
    }

    /// Every datastore version, active or not (admin only: the first call
    /// of a publish, so that a non-admin fails before any upload).
    pub fn versions(&self) -> Result<Vec<DatastoreVersion>, CloudError> {
        match self.svc.get::<VersionList>("/mgmt/datastore-versions") {
            Ok(list) => Ok(list.versions),
            Err(CloudError::Http { status: status @ (401 | 403), message, .. }) => Err(CloudError::Config(format!(
                "Trove's management API refused this user ({message}, HTTP {status}); registering datastore \
                 versions needs the admin role: use an admin cloud entry"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The version `name` of `datastore`, if any.
    pub fn find_version(&self, datastore: &str, name: &str) -> Result<Option<DatastoreVersion>, CloudError> {
        Ok(self.versions()?.into_iter().find(|v| v.datastore_name == datastore && v.name == name))
    }

    /// Creates the version (and its datastore) or points the existing one at
    /// the new image; either way it ends active and the datastore's default.
    pub fn upsert_version(&self, spec: &VersionSpec) -> Result<(DatastoreVersion, Outcome), CloudError> {
        let outcome = match self.find_version(&spec.datastore, &spec.name)? {
            Some(v) => {
                let body = json!({
                    "image": spec.image,
                    "datastore_manager": spec.manager,
                    "packages": spec.packages,
                    "active": true,
                    "default": true,
                });
                self.svc.patch(&format!("/mgmt/datastore-versions/{}", v.id), "application/json", &body)?;
                Outcome::Updated
            }
            None => {
                let body = json!({ "version": {
                    "name": spec.name,
                    "datastore_name": spec.datastore,
                    "datastore_manager": spec.manager,
                    "image": spec.image,
                    "packages": spec.packages,
                    "active": true,
                    "default": true,
                }});
                self.svc.post_no_answer("/mgmt/datastore-versions", &body)?;
                Outcome::Created
            }
        };
        let v = self.find_version(&spec.datastore, &spec.name)?.ok_or_else(|| {
            CloudError::Failed(format!(
                "Trove accepted datastore version {} {} but does not list it",
                spec.datastore, spec.name
            ))
        })?;
        Ok((v, outcome))
    }

    /// Makes the version's configuration parameters match `rules`: missing
    /// ones are created, changed ones updated, others left alone. Trove's
    /// API takes only integer and string rules (booleans and floats load
    /// only through trove-manage), so those are skipped.
    pub fn sync_parameters(&self, version_id: &str, rules: &[Parameter]) -> Result<ParameterSync, CloudError> {
        let base = format!("/mgmt/datastores/versions/{version_id}/parameters");
        let existing = self.svc.get::<ParameterList>(&base)?.parameters;
        let mut sync = ParameterSync::default();
        for rule in rules {
            if !api_loadable(rule) {
                sync.skipped += 1;
                continue;
            }
            let body = json!({ "configuration-parameter": {
                "name": rule.name,
                // Trove's schema wants 0/1 here, not a JSON boolean.
                "restart_required": u8::from(rule.restart_required),
                "data_type": rule.data_type,
                "min_size": rule.min,
                "max_size": rule.max,
            }});
            match existing.iter().find(|p| p.name == rule.name) {
                None => {
                    self.svc.post::<_, serde_json::Value>(&base, &body)?;
                    sync.created += 1;
                }
                Some(p) if !same(p, rule) => {
                    let path = format!("{base}/{}", rule.name);
                    let req = self.svc.request(reqwest::Method::PUT, &path).json(&body);
                    self.svc.send(&reqwest::Method::PUT, &path, req)?;
                    sync.updated += 1;
                }
                Some(_) => sync.unchanged += 1,
            }
        }
        Ok(sync)
    }
}

/// What [`Trove::sync_parameters`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParameterSync {
    /// Rules added.
    pub created: usize,
    /// Rules changed.
    pub updated: usize,
    /// Rules already right.
    pub unchanged: usize,
    /// Boolean and float rules, which the API cannot load.
    pub skipped: usize,
}

/// Whether Trove's management API accepts this rule's type.
fn api_loadable(rule: &Parameter) -> bool {
    matches!(rule.data_type.as_str(), "integer" | "string")
}

/// Whether the stored rule matches ours. Trove leaves zero bounds out of
/// its answers, so a missing bound equals 0.
fn same(p: &RemoteParameter, rule: &Parameter) -> bool {
    let bound = |v: Option<i64>| v.unwrap_or(0);
    p.restart_required == rule.restart_required
        && p.data_type == rule.data_type
        && bound(p.min_size) == bound(rule.min)
        && bound(p.max_size) == bound(rule.max)
}
