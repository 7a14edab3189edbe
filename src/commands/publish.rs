//! `dbimage publish` (and the publishing step of `make`): check the image,
//! resolve what Glance and Trove should hold, log in, publish, report.

use crate::image::patch;
use crate::host_tools::{self, Group};
use std::path::Path;

use crate::build::manifest::{self, ImageInfo};
use crate::build::plan::is_keypair_name;
use crate::cloud::nova::Nova;
use crate::catalog::{Catalog, Resolved};
use crate::cli::{CloudArgs, PublishArgs, PublishOptions, Visibility};
use crate::cloud::glance::NewImage;
use crate::cloud::publish::{self, PublishSpec, Published};
use crate::cloud::trove::{Outcome, VersionSpec};
use crate::cloud::{self, Selection, Session};
use crate::commands::UsageError;
use crate::settings::Settings;

/// Runs `dbimage publish`.
pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    host_tools::require(&[Group::Publish], &[])?;
    let info = read_manifest(&args.image)?;
    let name = match args.name {
        Some(n) => n,
        None => default_name(&args.image)?,
    };
    publish_file(&settings, &args.image, &name, info.as_ref(), args.db.as_deref(), args.db_version.as_deref(), &args.publish)
}

/// Publishes an image `make` just built.
pub fn after_make(settings: &Settings, image: &Path, opts: &PublishOptions) -> anyhow::Result<()> {
    let info = manifest::read_beside(image)?;
    publish_file(settings, image, &info.name, Some(&info), None, None, opts)
}

/// The manifest beside `image`, if there is one.
pub fn read_manifest(image: &Path) -> anyhow::Result<Option<ImageInfo>> {
    match manifest::read_beside(image) {
        Ok(info) => Ok(Some(info)),
        Err(manifest::ManifestError::Missing { .. }) => Ok(None),
        Err(e) => Err(UsageError(e.to_string()).into()),
    }
}

/// Checks that `-d`/`-v` and the manifest (when both exist) name the same
/// datastore, before anything is done with the image.
pub fn check_target(settings: &Settings, info: Option<&ImageInfo>, db: &str, version: &str) -> anyhow::Result<()> {
    Target::resolve(settings, info, Some(db), Some(version)).map(drop)
}

/// Publishes `image` as Glance image `name`, registered as the datastore
/// named by its manifest or by `db`/`version`. Logs in afresh: a session
/// opened before a long build or patch may have expired.
pub fn publish_file(
    settings: &Settings,
    image: &Path,
    name: &str,
    info: Option<&ImageInfo>,
    db: Option<&str>,
    version: Option<&str>,
    opts: &PublishOptions,
) -> anyhow::Result<()> {
    let target = Target::resolve(settings, info, db, version)?;
    publish_target(settings, image, name, Some(&target), info, &[], opts)
}

/// Publishes an image dbimage did not build (no manifest): registered as
/// `datastore` (database, version) when given, else to Glance only, with
/// `extra` Glance properties (e.g. where it came from).
pub fn publish_foreign(
    settings: &Settings,
    image: &Path,
    name: &str,
    datastore: Option<(&str, &str)>,
    extra: &[(&str, &str)],
    opts: &PublishOptions,
) -> anyhow::Result<()> {
    let target = datastore.map(|(db, v)| Target::resolve(settings, None, Some(db), Some(v))).transpose()?;
    publish_target(settings, image, name, target.as_ref(), None, extra, opts)
}

/// Checks the file, logs in, publishes and reports.
fn publish_target(
    settings: &Settings,
    image: &Path,
    name: &str,
    target: Option<&Target>,
    info: Option<&ImageInfo>,
    extra: &[(&str, &str)],
    opts: &PublishOptions,
) -> anyhow::Result<()> {
    check_credentials_visibility(carries_credentials(image), opts)?;
    let rotate = opts.rotate || settings.rotate;
    let name = if rotate { crate::cloud::rotate::latest_name(name) } else { name.to_string() };
    let spec = PublishSpec { rotate, ..spec(settings, image, &name, target, info, extra, opts)? };
    let session = login(&opts.cloud)?;
    report(&spec, &publish::publish(&session, &spec)?);
    Ok(())
}

/// Refuses to publish an image carrying the guest agent's credentials to
/// every project (`public`, `community`) unless forced.
pub fn check_credentials_visibility(carries: bool, opts: &PublishOptions) -> Result<(), UsageError> {
    let everyone = matches!(opts.visibility, Visibility::Public | Visibility::Community);
    if carries && everyone && !opts.force_public_credentials {
        return Err(UsageError(
            "the image carries the guest agent's configuration (its transport_url holds message-bus credentials), \
             which every project could read with this visibility; publish it private or shared, leave the \
             configuration to Trove's injection, or pass --force-public-credentials"
                .into(),
        ));
    }
    Ok(())
}

/// Whether the manifest beside `image` says the guest agent configuration
/// was written into it (at build time, or by `upload`).
fn carries_credentials(image: &Path) -> bool {
    let Ok(raw) = std::fs::read(manifest::path_beside(image)) else { return false };
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(&raw) else { return false };
    let built = m.pointer("/guest_agent/configured").and_then(|c| c.as_bool()).unwrap_or(false);
    let patched = m.pointer("/patched/patches").and_then(|p| p.as_array()).is_some_and(|p| {
        p.iter().filter_map(|x| x.as_str()).any(|x| x.starts_with(patch::GUEST_AGENT_WRITTEN))
    });
    built || patched
}

/// Resolves the cloud settings and logs in.
pub fn login(args: &CloudArgs) -> anyhow::Result<Session> {
    let sel = Selection { cloud: args.os_cloud.clone(), region: args.os_region_name.clone() };
    let cfg = cloud::config::resolve(&sel)?;
    Ok(Session::login(&cfg)?)
}

/// Settles `-k` and the cloud before any long work. When publishing, logs
/// in now: a wrong password costs seconds, not a build. A `-k` naming a
/// Nova keypair is fetched when a cloud is configured (without one,
/// `read_key`'s own error names the problem). Returns the `-k` value to use:
/// the keypair's public key, or the value as given.
pub fn prepare_cloud(key: Option<&str>, cloud: &CloudArgs, publishing: bool) -> anyhow::Result<Option<String>> {
    let keypair = key.filter(|k| is_keypair_name(k) && cloud_configured(cloud));
    if !publishing && keypair.is_none() {
        return Ok(key.map(str::to_string));
    }
    let session = login(cloud)?;
    match keypair {
        Some(name) => {
            let public = Nova::new(&session)?.keypair_public_key(name)?;
            tracing::info!("-k {name}: public key from Nova's keypair");
            Ok(Some(public))
        }
        None => Ok(key.map(str::to_string)),
    }
}

/// Whether a cloud is configured at all (a name or OS_AUTH_URL is set).
fn cloud_configured(args: &CloudArgs) -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    args.os_cloud.is_some() || set("OS_CLOUD") || set("OS_AUTH_URL")
}

/// The datastore and version an image is registered as.
struct Target {
    db: String,
    version: String,
    manager: String,
    packages: Vec<String>,
    release: Option<String>,
    arch: Option<String>,
    source: Option<String>,
}

impl Target {
    fn from_resolved(ds: &Resolved) -> Target {
        Target {
            db: ds.db.clone(),
            version: ds.version.clone(),
            manager: ds.trove_manager.clone(),
            packages: ds.packages.clone(),
            release: Some(ds.release.clone()),
            arch: Some(ds.arch.to_string()),
            source: Some(ds.source.to_string()),
        }
    }

    /// From the flags, the manifest, or both (which must then agree).
    fn resolve(settings: &Settings, info: Option<&ImageInfo>, db: Option<&str>, version: Option<&str>) -> anyhow::Result<Target> {
        if let Some(info) = info {
            let ds = &info.datastore;
            let disagree = |what: &str, flag: &str, theirs: &str| {
                UsageError(format!(
                    "the image's manifest says {what} {theirs}, but {flag} was given; drop the flag or publish the right image"
                ))
            };
            if let Some(d) = db
                && d != ds.db
            {
                return Err(disagree("database", &format!("-d {d}"), &ds.db).into());
            }
            if let Some(v) = version
                && crate::catalog::datastores::two_components(v)? != ds.version
            {
                return Err(disagree("version", &format!("-v {v}"), &ds.version).into());
            }
            return Ok(Target::from_resolved(ds));
        }
        let (Some(db), Some(version)) = (db, version) else {
            return Err(UsageError(
                "the image has no dbimage manifest beside it; pass -d DB and -v VERSION".into(),
            )
            .into());
        };
        let catalog = Catalog::load(&settings.data_dir.join("datastores"))?;
        let ds = catalog.get(db)?;
        Ok(Target {
            db: db.to_string(),
            version: crate::catalog::datastores::two_components(version)?,
            manager: ds.trove_manager.clone(),
            packages: Vec::new(),
            release: None,
            arch: None,
            source: None,
        })
    }
}

/// `images/postgresql-15-dib-2026-11-24.qcow2` → `postgresql-15-dib-2026-11-24`.
fn default_name(image: &Path) -> anyhow::Result<String> {
    image
        .file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .ok_or_else(|| UsageError(format!("{}: cannot make an image name from the file name; pass --name", image.display())).into())
}

/// Glance's and Nova's architecture names.
fn glance_arch(debian: &str) -> &str {
    match debian {
        "amd64" => "x86_64",
        "ppc64el" | "ppc64le" => "ppc64le",
        other => other,
    }
}

fn debian_version(release: &str) -> &str {
    match release {
        "bookworm" => "12",
        "trixie" => "13",
        "forky" => "14",
        _ => "",
    }
}

/// Checks the file and assembles the publish spec (no network yet); without
/// a target the image goes to Glance only.
fn spec(
    settings: &Settings,
    image: &Path,
    name: &str,
    target: Option<&Target>,
    info: Option<&ImageInfo>,
    extra: &[(&str, &str)],
    opts: &PublishOptions,
) -> anyhow::Result<PublishSpec> {
    let id = crate::image::identify(image)?;
    if id.format != "qcow2" {
        return Err(UsageError(format!(
            "{}: is {}, not qcow2; convert it with `qemu-img convert -c -O qcow2` first",
            image.display(),
            id.format
        ))
        .into());
    }
    let sha256 = match info.and_then(|i| i.sha256.clone()) {
        Some(s) => s,
        None => manifest::sha256_file(image)?,
    };
    let parameters = match target {
        Some(t) => {
            let rules_file = settings.data_dir.join("datastores/validation-rules").join(format!("{}.json", t.db));
            if rules_file.is_file() { publish::read_rules(&rules_file)? } else { Vec::new() }
        }
        None => Vec::new(),
    };
    let field = |f: fn(&Target) -> Option<&str>| target.and_then(f).unwrap_or("");
    let release = field(|t| t.release.as_deref());
    let mut properties = publish::properties(&[
        ("hw_rng_model", "virtio"),
        ("os_type", "linux"),
        ("os_distro", if release.is_empty() { "" } else { "debian" }),
        ("os_version", debian_version(release)),
        ("architecture", glance_arch(field(|t| t.arch.as_deref()))),
        ("dbimage_database", field(|t| Some(&t.db))),
        ("dbimage_database_version", field(|t| Some(&t.version))),
        ("dbimage_source", field(|t| t.source.as_deref())),
        ("dbimage_version", env!("CARGO_PKG_VERSION")),
    ]);
    properties.extend(publish::properties(extra));
    let visibility = match opts.visibility {
        Visibility::Private => "private",
        Visibility::Shared => "shared",
        Visibility::Community => "community",
        Visibility::Public => "public",
    };
    const GIB: u64 = 1 << 30;
    Ok(PublishSpec {
        file: image.to_path_buf(),
        sha256,
        image: NewImage {
            name: name.to_string(),
            visibility: visibility.into(),
            tags: target.map(|t| vec!["trove".into(), t.db.clone()]).unwrap_or_default(),
            properties,
            min_disk_gb: id.virtual_size.div_ceil(GIB),
        },
        version: target.map(|t| VersionSpec {
            datastore: t.db.clone(),
            name: t.version.clone(),
            manager: t.manager.clone(),
            image: String::new(),
            packages: t.packages.clone(),
        }),
        parameters,
        keep_image: opts.keep_image,
        rotate: false,
    })
}

fn report(spec: &PublishSpec, p: &Published) {
    let image = if p.reused { "reused" } else { "uploaded" };
    println!("glance image {} ({image}): {}", spec.image.name, p.image_id);
    for (id, name) in &p.renamed {
        println!("glance image {id} (the former {}) renamed to {name}", spec.image.name);
    }
    let (Some(version), Some(r)) = (&spec.version, &p.version) else {
        println!("no trove datastore version (Glance only)");
        return;
    };
    let outcome = match r.outcome {
        Outcome::Created => "created",
        Outcome::Updated => "updated",
    };
    println!(
        "trove datastore {} version {} ({outcome}, default): {}",
        version.datastore, version.name, r.version_id
    );
    if !spec.parameters.is_empty() {
        let s = r.parameters;
        println!(
            "configuration parameters: {} created, {} updated, {} unchanged",
            s.created, s.updated, s.unchanged
        );
        if s.skipped > 0 {
            println!(
                "  {} boolean/float rules skipped: Trove's API loads only integer and string rules; \
                 load the rest with trove-manage db_load_datastore_config_parameters",
                s.skipped
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_out_of_public_images_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.qcow2");
        let manifest = crate::build::manifest::path_beside(&image);
        assert!(!carries_credentials(&image), "no manifest, nothing known");
        std::fs::write(&manifest, r#"{"guest_agent": {"configured": true}}"#).unwrap();
        assert!(carries_credentials(&image));
        std::fs::write(&manifest, r#"{"patched": {"patches": ["guest agent configuration written to /etc/x"]}}"#).unwrap();
        assert!(carries_credentials(&image));
        std::fs::write(&manifest, r#"{"guest_agent": {"configured": false}, "patched": {"patches": []}}"#).unwrap();
        assert!(!carries_credentials(&image));
        let opts = |visibility, force| PublishOptions {
            visibility,
            keep_image: false,
            rotate: false,
            force_public_credentials: force,
            cloud: CloudArgs { os_cloud: None, os_region_name: None },
        };
        for v in [Visibility::Public, Visibility::Community] {
            assert!(check_credentials_visibility(true, &opts(v, false)).is_err());
            assert!(check_credentials_visibility(true, &opts(v, true)).is_ok());
            assert!(check_credentials_visibility(false, &opts(v, false)).is_ok());
        }
        for v in [Visibility::Private, Visibility::Shared] {
            assert!(check_credentials_visibility(true, &opts(v, false)).is_ok());
        }
    }

    #[test]
    fn names_and_arches() {
        assert_eq!(default_name(Path::new("images/pg-15-dib-2026-11-24.qcow2")).unwrap(), "pg-15-dib-2026-11-24");
        assert_eq!(glance_arch("amd64"), "x86_64");
        assert_eq!(glance_arch("ppc64le"), "ppc64le");
        assert_eq!(debian_version("bookworm"), "12");
    }
}
