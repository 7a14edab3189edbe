//! Nova: flavors (with extra specs) and keypairs.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::http::Service;
use crate::catalog::flavors::NovaFlavor;
use super::{CloudError, Session};

/// The microversion dbimage speaks: 2.55 added flavor descriptions and
/// returns extra specs with flavors from 2.61; 2.61 is widely deployed.
const MICROVERSION: &str = "2.61";

/// A flavor as Nova reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Flavor {
    /// Flavor id.
    pub id: String,
    /// Flavor name.
    pub name: String,
    /// RAM in MB.
    pub ram: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Root disk in GB.
    pub disk: u64,
    /// Ephemeral disk in GB.
    #[serde(rename = "OS-FLV-EXT-DATA:ephemeral", default)]
    pub ephemeral: u64,
    /// Extra specs (returned with the flavor at 2.61+).
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

/// What happened to one flavor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlavorOutcome {
    /// It did not exist.
    Created,
    /// It existed with the same sizes; extra specs may have been updated.
    Unchanged,
    /// It existed with other sizes and was replaced (Nova flavors are
    /// immutable, so: deleted and created again under the same name).
    Replaced,
}

impl std::fmt::Display for FlavorOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlavorOutcome::Created => "created",
            FlavorOutcome::Unchanged => "unchanged",
            FlavorOutcome::Replaced => "replaced",
        })
    }
}

#[derive(Debug, Deserialize)]
struct FlavorList {
    flavors: Vec<Flavor>,
}

#[derive(Debug, Deserialize)]
struct FlavorBody {
    flavor: Flavor,
}

#[derive(Debug, Deserialize)]
struct KeypairBody {
    keypair: Keypair,
}

#[derive(Debug, Deserialize)]
struct Keypair {
    public_key: String,
}

/// The Nova API of a session.
pub struct Nova<'a> {
    svc: Service<'a>,
}

impl<'a> Nova<'a> {
    /// Nova from the session's catalog (`compute` service).
    pub fn new(session: &'a Session) -> Result<Nova<'a>, CloudError> {
        let svc = session.service("Nova", "compute", "")?.with_header("OpenStack-API-Version", format!("compute {MICROVERSION}"));
        Ok(Nova { svc })
    }

    /// All flavors, public and private, with details.
    pub fn flavors(&self) -> Result<Vec<Flavor>, CloudError> {
        Ok(self.svc.get::<FlavorList>("/flavors/detail?is_public=None")?.flavors)
    }

    /// Creates or fixes the flavor `spec.name`. Re-running with the same
    /// spec changes nothing.
    pub fn ensure_flavor(&self, spec: &NovaFlavor) -> Result<FlavorOutcome, CloudError> {
        let existing = self.flavors()?.into_iter().find(|f| f.name == spec.name);
        let (flavor, outcome) = match existing {
            Some(f) if f.vcpus == spec.vcpus && f.ram == spec.ram_mb && f.disk == spec.disk_gb && f.ephemeral == spec.ephemeral_gb => {
                (f, FlavorOutcome::Unchanged)
            }
            Some(f) => {
                self.svc.delete(&format!("/flavors/{}", f.id))?;
                (self.create(spec)?, FlavorOutcome::Replaced)
            }
            None => (self.create(spec)?, FlavorOutcome::Created),
        };
        let stale: Vec<&String> = flavor.extra_specs.keys().filter(|k| !spec.extra_specs.contains_key(*k)).collect();
        for key in stale.into_iter().filter(|k| k.starts_with("dbimage:")) {
            self.svc.delete(&format!("/flavors/{}/os-extra_specs/{key}", flavor.id))?;
        }
        if spec.extra_specs.iter().any(|(k, v)| flavor.extra_specs.get(k) != Some(v)) {
            self.svc.post::<_, serde_json::Value>(
                &format!("/flavors/{}/os-extra_specs", flavor.id),
                &json!({ "extra_specs": spec.extra_specs }),
            )?;
        }
        Ok(outcome)
    }

    fn create(&self, spec: &NovaFlavor) -> Result<Flavor, CloudError> {
        let body = json!({ "flavor": {
            "name": spec.name,
            "ram": spec.ram_mb,
            "vcpus": spec.vcpus,
            "disk": spec.disk_gb,
            "OS-FLV-EXT-DATA:ephemeral": spec.ephemeral_gb,
            "os-flavor-access:is_public": true,
        }});
        Ok(self.svc.post::<_, FlavorBody>("/flavors", &body)?.flavor)
    }

    /// The public key of a keypair registered with Nova.
    pub fn keypair_public_key(&self, name: &str) -> Result<String, CloudError> {
        match self.svc.get::<KeypairBody>(&format!("/os-keypairs/{name}")) {
            Ok(k) => Ok(k.keypair.public_key.trim().to_string()),
            Err(e) if e.status() == Some(404) => Err(CloudError::Config(format!(
                "Nova has no keypair {name:?} for this user; `openstack keypair list` shows the names, or pass a .pub file"
            ))),
            Err(e) => Err(e),
        }
    }
}
