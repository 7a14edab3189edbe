//! `dbimage import`: bring a foreign disk image in. Check it (qemu-img
//! reads it, no backing file, a Linux root that `e2fsck -n` passes),
//! convert it to a compressed QCOW2 beside the others, publish it to
//! Glance, and register it as a Trove datastore version when `-d`/`-v`
//! name one.
//!
//! The input is never written: a raw input is attached read-only as it is;
//! any other format is exported read-only as a raw disk by
//! qemu-storage-daemon over FUSE (no copy, no temporary raw file the size
//! of the disk). The root is found by content and checked through a
//! read-only loop device at its offset; the conversion reads the input
//! with its own format and writes a temporary file that is renamed into
//! place only when complete.

use crate::host_tools::{self, Group};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::HumanBytes;

use crate::cli::{Compression, ImportArgs};
use crate::commands::{UsageError, file_stem, publish, same_file};
use crate::disk::export::{self, Access};
use crate::disk::guard::{Teardown, Undo};
use crate::disk::{loopback, qcow2};
use crate::image::{self, Identity, fsck, inspect};
use crate::run::check_cancelled;
use crate::settings::Settings;

/// Everything `import` will do, resolved before the host is touched.
struct Request {
    input: PathBuf,
    id: Identity,
    name: String,
    dest: PathBuf,
    datastore: Option<(String, String)>,
    compression: Compression,
}

/// Runs `dbimage import`.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    // Scratch directories go there: it must be private first.
    crate::settings::secure_work_dir(&settings.work_dir).map_err(|e| UsageError(e.to_string()))?;
    host_tools::require(&[Group::Image], &[])?;
    let req = plan(&args, &settings)?;
    check_and_convert(&req, &settings)?;
    println!("{}", req.dest.display());
    if args.no_publish {
        return Ok(());
    }
    let datastore = req.datastore.as_ref().map(|(d, v)| (d.as_str(), v.as_str()));
    let extra = [("dbimage_imported_from", req.id.format.as_str())];
    publish::publish_foreign(&settings, &req.dest, &req.name, datastore, &extra, &args.publish)
}

/// Checks every input and, when publishing, logs in; nothing on the host
/// changes.
fn plan(args: &ImportArgs, settings: &Settings) -> anyhow::Result<Request> {
    let datastore = match (&args.db, &args.db_version) {
        (Some(d), Some(v)) => Some((d.clone(), v.clone())),
        (None, None) => None,
        _ => {
            return Err(UsageError(
                "-d and -v go together: both to register a Trove datastore version, neither to publish to Glance only".into(),
            )
            .into());
        }
    };
    let input = args.file.clone();
    // Refuses an image that refers to other files (backing, data file, extents).
    let id = image::identify(&input)?;
    if let Some((d, v)) = &datastore {
        publish::check_target(settings, None, d, v)?;
    }
    let name = match &args.name {
        Some(n) if n.is_empty() || n.contains('/') || n.starts_with('.') => {
            return Err(UsageError(format!("--name {n:?}: a name must be a plain file name")).into());
        }
        Some(n) => n.clone(),
        None => file_stem(&input)?,
    };
    let outdir = args.outdir.clone().unwrap_or_else(|| settings.images_dir.clone());
    let dest = outdir.join(format!("{name}.qcow2"));
    if same_file(&dest, &input) {
        return Err(UsageError(format!("{} would overwrite the input; pass --name or -o", dest.display())).into());
    }
    if dest.exists() && !args.force {
        return Err(UsageError(format!("{} exists; pass --force to replace it", dest.display())).into());
    }
    tracing::info!("{}: {}, {} virtual", input.display(), id.format, HumanBytes(id.virtual_size));
    // Log in before the slow steps: a wrong password costs seconds.
    publish::prepare_cloud(None, &args.publish.cloud, !args.no_publish)?;
    Ok(Request { input, id, name, dest, datastore, compression: args.compression })
}

/// Checks the root filesystem, then converts into a temporary file that
/// is renamed into place.
fn check_and_convert(req: &Request, settings: &Settings) -> anyhow::Result<()> {
    let outdir = req.dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(outdir).with_context(|| format!("creating {}", outdir.display()))?;
    let work = settings.work_dir.join(format!("import-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut td = Teardown::new(Some(work.join("state.json")));
    td.push(Undo::RemoveDir { path: work.clone() });
    let start = td.mark();

    let raw = if req.id.format == "raw" {
        req.input.clone()
    } else {
        let raw = work.join("disk.raw");
        export::export_raw(&mut td, &req.input, &req.id.format, &raw, Access::ReadOnly)?;
        raw
    };
    check_cancelled()?;
    let root = inspect::locate_root(&raw, &req.input)?;
    let device = loopback::attach_range(&mut td, &raw, root.start, root.size, true)?;
    fsck::check_root(&device, &root, &req.input)?;
    tracing::info!("root filesystem: partition {} of {} passes e2fsck -n", root.number, req.input.display());
    td.unwind_to(start).map_err(anyhow::Error::msg)?;
    check_cancelled()?;

    let file_name = format!("{}.qcow2", req.name);
    let tmp = outdir.join(format!(".{file_name}.partial-{}", std::process::id()));
    let tmp_undo = Undo::RemoveFile { path: tmp.clone() };
    td.push(tmp_undo.clone());
    qcow2::convert(&req.input, &req.id.format, &tmp, req.compression)?;
    check_cancelled()?;
    fs::rename(&tmp, &req.dest).with_context(|| format!("renaming into {}", req.dest.display()))?;
    td.forget(&tmp_undo);
    // A manifest left by an image this one replaced (--force) describes
    // something else; `dbimage publish` would believe it.
    let stale = crate::build::manifest::path_beside(&req.dest);
    if stale.exists() {
        fs::remove_file(&stale).with_context(|| format!("removing the replaced image's manifest {}", stale.display()))?;
    }
    Ok(())
}
