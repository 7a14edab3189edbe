//! `dbimage prune`: keep the newest N images of a base in Glance (never one
//! a Trove datastore version boots) and in the local images directory.

use std::path::{Path, PathBuf};

use crate::build::manifest;
use crate::cli::PruneArgs;
use crate::cloud::glance::Image;
use crate::cloud::rotate;
use crate::commands::UsageError;
use crate::settings::Settings;

/// Runs `dbimage prune`.
pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    if args.keep == 0 {
        return Err(UsageError("--keep 0 would delete every image of the base; keep at least 1".into()).into());
    }
    let settings = Settings::load()?;
    let base = match (&args.name, &args.db, &args.db_version) {
        (Some(name), _, _) if !name.is_empty() && !name.contains('/') => name.clone(),
        (Some(name), _, _) => return Err(UsageError(format!("--name {name:?} is not an image base name")).into()),
        (None, Some(db), Some(v)) => {
            let catalog = crate::catalog::Catalog::load(&settings.data_dir.join("datastores"))?;
            catalog.get(db)?;
            format!("{db}-{}{}", crate::catalog::datastores::two_components(v)?, settings.source)
        }
        _ => {
            return Err(UsageError(
                "name the images to prune: -d DB -v VER, or --name BASE (dbimage never prunes every base)".into(),
            )
            .into());
        }
    };
    let would = if args.dry_run { "would delete" } else { "deleted" };
    if !args.local_only {
        let session = crate::commands::publish::login(&args.cloud)?;
        let pruned = rotate::prune(&session, &base, args.keep, args.dry_run)?;
        let show = |i: &Image| format!("{} ({})", i.name.as_deref().unwrap_or(""), i.id);
        for i in &pruned.kept {
            println!("glance: kept {}", show(i));
        }
        for (i, version) in &pruned.in_use {
            println!("glance: kept {}: Trove datastore version {version} uses it", show(i));
        }
        for i in &pruned.deleted {
            println!("glance: {would} {}", show(i));
        }
    }
    if !args.cloud_only {
        for file in prune_local(&settings.images_dir, &base, args.keep, args.dry_run)? {
            println!("local: {would} {}", file.display());
        }
    }
    Ok(())
}

/// Deletes (unless `dry_run`) all but the `keep` newest
/// `<base>-YYYY-MM-DD*.qcow2` files in `dir`, newest by the date in their
/// names, and their manifests; returns the files meant.
fn prune_local(dir: &Path, base: &str, keep: usize, dry_run: bool) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", dir.display()),
    };
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if path.extension().is_some_and(|e| e == "qcow2") && rotate::is_dated_file(base, stem) {
            images.push((stem.to_string(), path.clone()));
        }
    }
    images.sort_by(|a, b| b.0.cmp(&a.0));
    let mut meant = Vec::new();
    for (_, image) in images.into_iter().skip(keep) {
        for file in [manifest::path_beside(&image), image] {
            if file.exists() {
                if !dry_run {
                    std::fs::remove_file(&file).map_err(|e| anyhow::anyhow!("cannot delete {}: {e}", file.display()))?;
                }
                meant.push(file);
            }
        }
    }
    Ok(meant)
}
