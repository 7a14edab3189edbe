//! `dbimage upload`: re-open an existing image, patch it for another cloud,
//! write the result beside the others, publish it.
//!
//! The input is never written: a copy is made as a temporary file beside
//! the destination, exported read-write as a raw disk (qemu-storage-daemon
//! over FUSE), its root filesystem found by content and loop-mounted,
//! patched, released, checked, and only then renamed into place.

use crate::image::fsck;
use crate::disk::image_root::ImageRoot;
use crate::host_tools::{self, Group};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::arch::Arch;
use crate::build::manifest::{self, ImageInfo};
use crate::build::plan::read_key;
use crate::cli::UploadArgs;
use crate::commands::{UsageError, file_stem, guest_agent_conf, publish, same_file};
use crate::disk::guard::{Teardown, Undo};
use crate::disk::{binfmt, chroot, export, loopback, mount};
use crate::image::{self, inspect, patch};
use crate::run::check_cancelled;
use crate::remote::controller;
use crate::settings::Settings;

/// Everything `upload` will do, resolved before the image is touched.
struct Request {
    input: PathBuf,
    info: Option<ImageInfo>,
    dest: PathBuf,
    guest_agent: Option<String>,
    key: Option<String>,
    user: Option<String>,
    script: Option<String>,
}

/// Runs `dbimage upload`.
pub fn run(args: UploadArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    // Scratch directories go there: it must be private first.
    crate::settings::secure_work_dir(&settings.work_dir).map_err(|e| UsageError(e.to_string()))?;
    host_tools::require(&[Group::Image], &[])?;
    let req = plan(&args, &settings)?;
    let patches = patch_copy(&req, &settings)?;
    println!("{}", req.dest.display());
    for p in &patches {
        println!("  {p}");
    }
    if args.no_publish {
        return Ok(());
    }
    // The Glance name follows the input's (the same image, for another cloud).
    let name = match &req.info {
        Some(info) => info.name.clone(),
        None => file_stem(&req.input)?,
    };
    // A foreign input's patched manifest is minimal (no catalog row): the
    // target then comes from -d and -v alone.
    let info = if req.info.is_some() { publish::read_manifest(&req.dest)? } else { None };
    publish::publish_file(&settings, &req.dest, &name, info.as_ref(), Some(&args.db), Some(&args.db_version), &args.publish)
}

/// `-f`: a path, or a file name under the images directory.
fn find_input(file: &Path, images_dir: &Path) -> anyhow::Result<PathBuf> {
    if file.exists() {
        return Ok(file.to_path_buf());
    }
    let under = images_dir.join(file);
    if file.components().count() == 1 && under.exists() {
        return Ok(under);
    }
    Err(UsageError(format!(
        "-f {}: no such file (nor {}); pass a path or a file name under the images directory",
        file.display(),
        under.display()
    ))
    .into())
}

/// Checks every input and resolves keys, names and the guest agent
/// configuration; nothing on the host changes.
fn plan(args: &UploadArgs, settings: &Settings) -> anyhow::Result<Request> {
    let input = find_input(&args.file, &settings.images_dir)?;
    let id = image::identify(&input)?;
    if id.format != "qcow2" {
        return Err(UsageError(format!(
            "{}: is {}, not qcow2; convert it with `qemu-img convert -O qcow2` first",
            input.display(),
            id.format
        ))
        .into());
    }
    let info = publish::read_manifest(&input)?;
    publish::check_target(settings, info.as_ref(), &args.db, &args.db_version)?;
    if let Some(ds) = info.as_ref().map(|i| &i.datastore) {
        let asked = if args.community { "community" } else if args.enterprise { "enterprise" } else { "" };
        if !asked.is_empty() && ds.source.to_string() != asked {
            return Err(UsageError(format!(
                "the image's manifest says its database comes from {}, not the {asked} edition; drop -c/-e",
                ds.source
            ))
            .into());
        }
    }

    let outdir = args.outdir.clone().unwrap_or_else(|| settings.images_dir.clone());
    let dest = outdir.join(format!("{}-patched.qcow2", file_stem(&input)?));
    if same_file(&dest, &input) {
        return Err(UsageError(format!("{} would overwrite the input; pass -o with another directory", dest.display())).into());
    }
    if dest.exists() && !args.force {
        return Err(UsageError(format!("{} exists; pass --force to replace it", dest.display())).into());
    }

    let controller = controller::fetch(settings)?;
    let guest_agent = guest_agent_conf(settings, controller.as_ref().map(|c| c.guest_agent_conf.as_str()))?;
    if !args.no_publish {
        publish::check_credentials_visibility(guest_agent.is_some(), &args.publish)?;
    }
    if guest_agent.is_none() {
        tracing::warn!(
            "no controller and no guest_agent values in the settings: the image's guest agent configuration is left as it is"
        );
    }

    let key = publish::prepare_cloud(args.key.as_deref(), &args.publish.cloud, !args.no_publish)?
        .as_deref()
        .map(read_key)
        .transpose()?;
    // The controller's key joins the user's, as in make.
    let key = match (key, controller.and_then(|c| c.public_key)) {
        (Some(k), Some(c)) => Some(format!("{k}\n{c}")),
        (k, c) => k.or(c),
    };
    Ok(Request { input, info, dest, guest_agent, key, user: args.user.clone(), script: args.script.clone() })
}

/// Copies, patches and renames into place; returns what was done.
fn patch_copy(req: &Request, settings: &Settings) -> anyhow::Result<Vec<String>> {
    let outdir = req.dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(outdir).with_context(|| format!("creating {}", outdir.display()))?;
    fs::create_dir_all(&settings.work_dir).with_context(|| format!("creating {}", settings.work_dir.display()))?;
    let work = settings.work_dir.join(format!("upload-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut td = Teardown::new(Some(work.join("state.json")));
    td.push(Undo::RemoveDir { path: work.clone() });

    let name = req.dest.file_name().and_then(|n| n.to_str()).unwrap_or("image.qcow2");
    let tmp = outdir.join(format!(".{name}.partial-{}", std::process::id()));
    let tmp_undo = Undo::RemoveFile { path: tmp.clone() };
    td.push(tmp_undo.clone());
    fs::copy(&req.input, &tmp).with_context(|| format!("copying {} to {}", req.input.display(), tmp.display()))?;
    let copied = td.mark();

    let raw = work.join("disk.raw");
    export::export_raw(&mut td, &tmp, "qcow2", &raw, export::Access::ReadWrite)?;
    check_cancelled()?;
    let root_part = inspect::locate_root(&raw, &req.input)?;
    let device = loopback::attach_range(&mut td, &raw, root_part.start, root_part.size, false)?;
    let root = work.join("root");
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let fstype = root_part.filesystem.map(|f| f.name()).unwrap_or("ext4");
    // A filesystem with errors is not mounted: the kernel's ext4 is not
    // hardened against crafted metadata.
    fsck::check_root(&device, &root_part, &req.input)?;
    mount::foreign(&mut td, &device, &root, fstype, req.script.is_some())?;
    tracing::info!("root filesystem: partition {} ({fstype}) of {}", root_part.number, req.input.display());

    let mut done = Vec::new();
    // Every path in the image is resolved by descriptor below its root.
    let tree = ImageRoot::open(&root)?;
    if let Some(conf) = &req.guest_agent {
        done.push(patch::write_guest_agent(&tree, conf)?);
    }
    done.extend(patch::reset_identity(&tree)?);
    if let Some(key) = &req.key {
        let user = req.user.clone().unwrap_or_else(|| patch::default_user(&tree));
        done.push(patch::authorize_key(&tree, &user, key)?);
    }
    drop(tree);
    check_cancelled()?;
    if let Some(script) = &req.script {
        done.push(run_script(&mut td, &root, script)?);
    }
    // Unmount, detach and stop the daemon, which flushes the copy.
    td.unwind_to(copied).map_err(anyhow::Error::msg)?;
    check_cancelled()?;

    // The patched copy must still be a sound image before it replaces anything.
    // Our failure, not the user's input: a plain error, not exit code 2.
    image::identify(&tmp).map_err(|e| anyhow::anyhow!("the patched copy fails qemu-img check: {e}"))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
    let sha256 = manifest::sha256_file(&tmp)?;
    let manifest_text = patched_manifest(req, &sha256, &done)?;
    let manifest_dest = manifest::path_beside(&req.dest);
    let manifest_tmp = outdir.join(format!(".{name}.json.partial-{}", std::process::id()));
    td.push(Undo::RemoveFile { path: manifest_tmp.clone() });
    fs::write(&manifest_tmp, manifest_text).with_context(|| format!("writing {}", manifest_tmp.display()))?;
    fs::rename(&tmp, &req.dest).with_context(|| format!("renaming into {}", req.dest.display()))?;
    td.forget(&tmp_undo);
    fs::rename(&manifest_tmp, &manifest_dest).with_context(|| format!("renaming into {}", manifest_dest.display()))?;
    td.forget(&Undo::RemoveFile { path: manifest_tmp });
    // Dropping the stack removes the work directory.
    Ok(done)
}

/// Runs `-s` in a chroot of the image (through qemu-user for a foreign
/// architecture), showing its output; a failure aborts the upload.
fn run_script(td: &mut Teardown, root: &Path, script: &str) -> anyhow::Result<String> {
    let arch = image_arch(root);
    if let Some(arch) = arch
        && Some(arch) != Arch::host()
    {
        binfmt::ensure(arch)?;
    }
    let mark = chroot::enter(td, root, None)?;
    // The text may hold secrets: it goes to the image's /tmp as a file (not
    // into process arguments), and only its digest into logs and manifest.
    let digest = &crate::digest::sha256(script.as_bytes())[..16];
    let name = format!(".dbimage-script-{}", std::process::id());
    let tree = ImageRoot::open(root)?;
    let tmp = tree.mkdir_all("tmp", 0o755)?;
    tree.replace(&tmp, &format!("/tmp/{name}"), &name, script.as_bytes(), 0o700, (0, 0))?;
    tracing::info!("running the -s script in the image (sha256 {digest}…)");
    let result = chroot::command(root, ["/bin/sh".to_string(), format!("/tmp/{name}")], &[]).output();
    let removed = tree.remove("tmp", &name);
    td.unwind_to(mark).map_err(anyhow::Error::msg)?;
    let out = result.map_err(|e| anyhow::anyhow!("-s command failed, nothing published: {e}"))?;
    removed?;
    if !out.trim().is_empty() {
        println!("{}", out.trim_end());
    }
    Ok(format!("ran the -s script in the image (sha256 {digest}…, exit 0)"))
}

/// The image's architecture, from its shell binary (a regular file in
/// Debian; read by descriptor, so no symlink can lead outside the image).
fn image_arch(root: &Path) -> Option<Arch> {
    let dash = ImageRoot::open(root).ok()?.read("usr/bin/dash", 64 << 20).ok()??;
    inspect::elf_arch(&dash[..dash.len().min(64)])?.parse().ok()
}

/// The input's manifest (or a minimal one) with the patches recorded and
/// the new file's checksum.
fn patched_manifest(req: &Request, sha256: &str, done: &[String]) -> anyhow::Result<String> {
    let mut m: serde_json::Value = match fs::read(manifest::path_beside(&req.input)) {
        Ok(raw) => serde_json::from_slice(&raw).context("reading the input's manifest")?,
        Err(_) => serde_json::json!({ "name": file_stem(&req.input)? }),
    };
    let mut patched = BTreeMap::new();
    patched.insert("from", serde_json::json!(req.input.display().to_string()));
    patched.insert("patches", serde_json::json!(done));
    patched.insert("dbimage_version", serde_json::json!(env!("CARGO_PKG_VERSION")));
    m["patched"] = serde_json::json!(patched);
    m["sha256"] = serde_json::json!(sha256);
    Ok(serde_json::to_string_pretty(&m)? + "\n")
}
