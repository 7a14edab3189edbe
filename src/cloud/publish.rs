//! Publishing an image: Glance upload (or reuse of an identical one), then
//! (unless the image is published for Glance only) the Trove datastore
//! version and its configuration parameters. Whatever this run created is
//! removed again when a later step fails. With rotation the image is
//! `<base>-latest`, and once it is published the former `-latest` images are
//! renamed after the date they were created.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::glance::{self, Glance, NewImage};
use super::rotate;
use super::trove::{self, Outcome, Parameter, ParameterSync, Trove, VersionSpec};
use super::{CloudError, Session};

/// Everything publishing needs, resolved beforehand.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    /// The QCOW2 file.
    pub file: PathBuf,
    /// Its SHA-256 (stored as a property; an active image of the same name
    /// and hash is reused instead of uploaded again).
    pub sha256: String,
    /// What Glance should hold.
    pub image: NewImage,
    /// The Trove datastore version to point at it; `None` publishes to
    /// Glance only.
    pub version: Option<VersionSpec>,
    /// Configuration parameter rules for the version.
    pub parameters: Vec<Parameter>,
    /// Keep a freshly uploaded image when Trove refuses the version.
    pub keep_image: bool,
    /// Rotation: `image.name` is `<base>-latest`, and once the image is
    /// published every other image of that name is renamed to
    /// `<base>-YYYY-MM-DD` (its creation date; `-HHMMSS` added when that
    /// name is taken).
    pub rotate: bool,
}

/// What publishing did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The Glance image id.
    pub image_id: String,
    /// True when an identical image was already there.
    pub reused: bool,
    /// What Trove holds now, unless the image went to Glance only.
    pub version: Option<Registered>,
    /// Former `-latest` images renamed by rotation: (id, new name).
    pub renamed: Vec<(String, String)>,
}

/// The Trove side of a publish.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The datastore version id.
    pub version_id: String,
    /// Whether the version was created or updated.
    pub outcome: Outcome,
    /// What happened to the configuration parameters.
    pub parameters: ParameterSync,
}

/// How long Glance gets to turn an uploaded image `active`.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long dbimage keeps trying to delete a half-made image while the
/// image service does not answer (it may be restarting).
const CLEANUP_PATIENCE: Duration = Duration::from_secs(60);

/// Publishes `spec` through `session`.
pub fn publish(session: &Session, spec: &PublishSpec) -> Result<Published, CloudError> {
    // Trove is asked first: a missing service or missing admin rights must
    // not cost an upload.
    let glance = Glance::new(session)?;
    let trove = match &spec.version {
        Some(_) => {
            let trove = Trove::new(session)?;
            trove.versions()?;
            Some(trove)
        }
        None => None,
    };
    let reusable = glance.find_by_name(&spec.image.name)?.into_iter().find(|i| {
        i.status == "active" && i.property("dbimage_sha256") == Some(spec.sha256.as_str())
    });
    let (image_id, reused) = match reusable {
        Some(img) => {
            tracing::info!("Glance already has {} ({}) with the same content; reusing it", spec.image.name, img.id);
            (img.id, true)
        }
        None => (upload(&glance, spec)?, false),
    };
    let (Some(trove), Some(version)) = (trove, &spec.version) else {
        let renamed = rotate_others(&glance, spec, &image_id)?;
        return Ok(Published { image_id, reused, version: None, renamed });
    };
    let version = VersionSpec { image: image_id.clone(), ..version.clone() };
    let registered = trove.upsert_version(&version).and_then(|(v, outcome)| {
        let parameters = trove.sync_parameters(&v.id, &spec.parameters)?;
        Ok(Registered { version_id: v.id, outcome, parameters })
    });
    match registered {
        Ok(r) => {
            let renamed = rotate_others(&glance, spec, &image_id)?;
            Ok(Published { image_id, reused, version: Some(r), renamed })
        }
        Err(e) if reused => Err(e),
        Err(e) if spec.keep_image => {
            tracing::warn!("Trove failed; keeping Glance image {image_id} as asked (--keep-image)");
            Err(e)
        }
        Err(e) => {
            tracing::warn!("Trove failed; deleting Glance image {image_id} so that nothing is left half-published");
            delete_patiently(&glance, &image_id);
            Err(e)
        }
    }
}

/// With rotation, renames every image named like the published one
/// (`<base>-latest`) except the published one itself to `<base>-<its
/// created_at date>`, or `<base>-<date>-<HHMMSS>` when that name is taken.
/// The publish itself stands when a rename fails; the error says so, and
/// running the same command again reuses the image and retries the rename.
fn rotate_others(glance: &Glance, spec: &PublishSpec, published: &str) -> Result<Vec<(String, String)>, CloudError> {
    if !spec.rotate {
        return Ok(Vec::new());
    }
    let latest = &spec.image.name;
    let base = latest.strip_suffix("-latest").unwrap_or(latest);
    let mut renamed = Vec::new();
    for img in glance.find_by_name(latest)?.into_iter().filter(|i| i.id != published) {
        let created = img.created_at.clone().unwrap_or_default();
        let failed = |why: String| {
            CloudError::Failed(format!(
                "published {latest} ({published}), but the former {latest} ({}) was not renamed: {why}; \
                 run the same command again to retry, or rename it with `openstack image set --name NAME {}`",
                img.id, img.id
            ))
        };
        let dated = |with_time| {
            rotate::dated_name(base, &created, with_time)
                .ok_or_else(|| failed(format!("Glance gives no usable created_at ({created:?})")))
        };
        let mut name = dated(false)?;
        if !glance.find_by_name(&name).map_err(|e| failed(e.to_string()))?.is_empty() {
            name = dated(true)?;
        }
        glance.rename(&img.id, &name).map_err(|e| failed(e.to_string()))?;
        tracing::info!("renamed the former {latest} ({}) to {name}", img.id);
        renamed.push((img.id, name));
    }
    Ok(renamed)
}

/// Creates the image, streams the file, waits for `active` and verifies the
/// checksum; on any failure the image record is deleted again.
fn upload(glance: &Glance, spec: &PublishSpec) -> Result<String, CloudError> {
    let mut new = spec.image.clone();
    new.properties.insert("dbimage_sha256".into(), spec.sha256.clone());
    let created = glance.create(&new)?;
    tracing::info!("created Glance image {} ({})", new.name, created.id);
    let result = glance.upload(&created.id, &spec.file).and_then(|sent| {
        let img = glance.wait_active(&created.id, ACTIVE_TIMEOUT)?;
        glance::verify(&img, &sent)
    });
    match result {
        Ok(()) => Ok(created.id),
        Err(e) => {
            tracing::warn!("upload failed; deleting the half-made Glance image {}", created.id);
            delete_patiently(glance, &created.id);
            Err(e)
        }
    }
}

/// Deletes an image, retrying while Glance cannot be reached; says how to
/// finish by hand when it gives up.
fn delete_patiently(glance: &Glance, id: &str) {
    let deadline = Instant::now() + CLEANUP_PATIENCE;
    loop {
        match glance.delete(id) {
            Ok(()) => {
                tracing::info!("deleted Glance image {id}");
                return;
            }
            Err(e @ CloudError::Connect { .. }) if Instant::now() < deadline => {
                tracing::warn!("cannot delete image {id} yet ({e}); retrying");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!("could not delete Glance image {id}: {e}; delete it with `openstack image delete {id}`");
                return;
            }
        }
    }
}

/// Glance properties describing an image built by dbimage.
pub fn properties(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Reads a validation-rules file (Trove's format) and checks what Trove's
/// API would reject: integer rules need both bounds.
pub fn read_rules(path: &std::path::Path) -> Result<Vec<Parameter>, CloudError> {
    let bad = |msg: String| CloudError::Config(format!("{}: {msg}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let rules: trove::ValidationRules = serde_json::from_str(&text).map_err(|e| bad(format!("{e}; fix the file")))?;
    for p in &rules.parameters {
        if !matches!(p.data_type.as_str(), "integer" | "string" | "boolean" | "float") {
            return Err(bad(format!("parameter {}: type {:?} is not integer, string, boolean or float", p.name, p.data_type)));
        }
        if p.data_type == "integer" && (p.min.is_none() || p.max.is_none()) {
            return Err(bad(format!("parameter {}: integer rules need both min and max", p.name)));
        }
    }
    Ok(rules.parameters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, r#"{"configuration-parameters":[{"name":"max_connections","restart_required":true,"type":"integer","min":1,"max":10000},{"name":"x","restart_required":false,"type":"string"}]}"#).unwrap();
        assert_eq!(read_rules(&p).unwrap().len(), 2);
        std::fs::write(&p, r#"{"configuration-parameters":[{"name":"n","restart_required":true,"type":"integer","min":1}]}"#).unwrap();
        assert!(read_rules(&p).unwrap_err().to_string().contains("both min and max"));
    }

    #[test]
    fn empty_properties_are_left_out() {
        let p = properties(&[("a", "1"), ("b", "")]);
        assert_eq!(p.len(), 1);
    }
}
