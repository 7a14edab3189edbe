//! The make pipeline: base tree → element phases → disk → bootloader →
//! QCOW2 and manifest. Every host side effect sits on one teardown stack,
//! so success, failure, Ctrl-C and SIGTERM all leave the host as it was.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::guest_agent;
use super::manifest::{self, Manifest, Sizes};
use super::phases::{self, PhaseRunner};
use super::plan::{Install, Plan};
use crate::clock::today;
use super::{tarball, vendor};
use super::rootfs::{self, BaseSpec};
use crate::disk::guard::{Teardown, Undo};
use crate::disk::layout::{self, Layout};
use crate::disk::{chroot, loopback, mount, qcow2};
use crate::elements::{Element, Phase};
use crate::image::patch;
use crate::run::{self, Cmd};

/// What a successful build produced.
#[derive(Debug)]
pub struct Outcome {
    /// The QCOW2 image.
    pub image: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// QCOW2 size in bytes.
    pub size: u64,
    /// Wall time per step.
    pub timings: Vec<(String, Duration)>,
}

/// Phases run on the tree up to the database's own install step (the
/// packages of install.d include the database's; a `-p` tarball's setup.sh
/// runs right after install.d).
const TREE_PHASES: [Phase; 4] = [Phase::Root, Phase::ExtraData, Phase::PreInstall, Phase::Install];
/// Phases run on the tree after the database is in.
const TREE_PHASES_AFTER_DB: [Phase; 2] = [Phase::PostInstall, Phase::PostRoot];
/// Phases run on the mounted disk.
const DISK_PHASES: [Phase; 3] = [Phase::BlockDevice, Phase::PreFinalise, Phase::Finalise];

/// Times named steps and announces them.
struct Steps {
    timings: Vec<(String, Duration)>,
}

impl Steps {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        run::check_cancelled()?;
        tracing::info!("==> {name}");
        let start = Instant::now();
        let out = f()?;
        self.timings.push((name.to_string(), start.elapsed()));
        Ok(out)
    }
}

/// Builds the image described by `plan`.
pub fn build(plan: &Plan, elements: &[Element]) -> anyhow::Result<Outcome> {
    // A host that cannot check Debian's signatures is refused before
    // anything is made.
    let keyring =
        rootfs::Keyring::open(&plan.debian_keyring).map_err(|e| crate::commands::UsageError(e.to_string()))?;
    crate::settings::secure_work_dir(&plan.work_dir).map_err(|e| crate::commands::UsageError(e.to_string()))?;
    if plan.emulated {
        crate::disk::binfmt::ensure(plan.request.arch)?;
    }
    let work = plan.work_dir.join(format!("{}-{}", plan.name, std::process::id()));
    fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut td = Teardown::new(Some(work.join("state.json")));
    td.push(Undo::RemoveDir { path: work.clone() });
    let outdir = plan.output.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(outdir).with_context(|| format!("creating {}", outdir.display()))?;

    let mut steps = Steps { timings: Vec::new() };
    let tree = work.join("tree");
    let ds = &plan.datastore;
    let arch = plan.request.arch;
    let env: Vec<(String, String)> = plan.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();

    // 1. Base tree.
    let base = BaseSpec {
        distro: "debian".into(),
        release: ds.release.clone(),
        arch,
        mirror: plan.mirror.clone(),
        include: Vec::new(),
        keyring,
    };
    steps.run("base tree", || {
        let (tarball, hit) = rootfs::ensure_base(&mut td, &base, &plan.cache_dir)?;
        tracing::info!("    {} ({})", tarball.display(), if hit { "cached" } else { "new" });
        rootfs::unpack(&tarball, &tree)?;
        rootfs::write_apt_sources(&tree, &ds.release, &plan.mirror, plan.security_mirror.as_deref())?;
        Ok(())
    })?;

    // A vendor key that cannot be had or does not match stops the build
    // before any package is installed.
    let vendor_key = match &ds.repo {
        Some(repo) => Some(vendor::fetch_key(repo, &plan.data_dir, &work)?),
        None => None,
    };

    // 2. Element phases on the tree, with apt's downloads cached.
    let hooks_dir = work.join("hooks");
    PhaseRunner::merge_elements(elements, &hooks_dir)?;
    let mut phases = PhaseRunner {
        elements,
        hooks_dir,
        env: env.clone(),
        packages: &plan.packages,
        uninstall: &plan.uninstall,
        timings: Vec::new(),
    };
    let apt_cache = plan.cache_dir.join("apt").join(format!("{}-{}", ds.release, arch.debian()));
    let (installed, origins, agent_packages) = steps.run("elements", || {
        let _cache_lock = lock_cache(&apt_cache)?;
        let _pip_lock = plan.guest_agent.as_ref().map(|a| lock_cache(&a.pip_cache)).transpose()?;
        phases::copy_static(elements, &tree)?;
        let mark = phases::enter(&mut td, &phases, &tree, Some(&apt_cache))?;
        let pkg_mark = td.mark();
        if let (Some(repo), Some(key)) = (&ds.repo, &vendor_key) {
            vendor::configure(&mut td, &tree, &ds.db, repo, key)?;
        }
        rootfs::apt_update(&tree, &env, &ds.release, arch)?;
        stage_package(&mut td, &plan.install, &tree)?;
        if let Some(agent) = &plan.guest_agent {
            agent.stage(&mut td, &tree)?;
        }
        phases.run_all(&TREE_PHASES, &tree)?;
        if let Install::Tarball { .. } = plan.install {
            run_setup_script(&tree, &env)?;
        }
        phases.run_all(&TREE_PHASES_AFTER_DB, &tree)?;
        if let Some(conf) = &plan.guest_agent_conf {
            let root = crate::disk::image_root::ImageRoot::open(&tree)?;
            tracing::info!("    {}", patch::write_guest_agent(&root, conf)?);
        }
        let agent_packages =
            plan.guest_agent.as_ref().map(|_| guest_agent::installed_packages(&tree, &env)).transpose()?;
        let origins = match &ds.repo {
            Some(_) => vendor::origins(
                &chroot::command(
                    &tree,
                    ["apt-cache", "policy"].into_iter().map(String::from).chain(ds.packages.iter().cloned()),
                    &env,
                )
                .output()?,
            ),
            None => Default::default(),
        };
        td.unwind_to(pkg_mark).map_err(anyhow::Error::msg)?;
        let list = chroot::command(&tree, ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"], &env)
            .output()?;
        td.unwind_to(mark).map_err(anyhow::Error::msg)?;
        Ok((manifest::parse_package_list(&list), origins, agent_packages))
    })?;

    // 3. Disk: size, table, loop devices, filesystem, copy.
    let tree_bytes = rootfs::tree_size(&tree)?;
    let size_mib = plan.size_mib.unwrap_or_else(|| layout::size_for_tree(tree_bytes));
    let disk_layout = Layout::for_arch(arch, size_mib);
    let raw = work.join("disk.raw");
    let root_uuid = uuid::Uuid::new_v4().to_string();
    let mnt = work.join("mnt");
    let disk_mark = td.mark();
    let dev = steps.run("disk", || {
        tracing::info!("    {size_mib} MiB for a {} MiB tree", tree_bytes / (1024 * 1024));
        layout::write_disk(&raw, &disk_layout)?;
        let dev = loopback::attach(&mut td, &raw, disk_layout.partitions.len())?;
        let root_dev = &dev.partitions[disk_layout.root().number as usize - 1];
        layout::mkfs_root(root_dev, &root_uuid)?;
        fs::create_dir_all(&mnt)?;
        mount::filesystem(&mut td, root_dev, &mnt, "ext4")?;
        Cmd::new("cp").args(["-a", "--sparse=always"]).arg(format!("{}/.", tree.display())).arg(&mnt).run()?;
        Ok(dev)
    })?;
    // The tree is on the disk now; free its space early.
    Undo::RemoveDir { path: tree.clone() }.undo().map_err(anyhow::Error::msg)?;

    // The image carries its own manifest (what `dbimage inspect` shows).
    let (y, m, d) = today();
    let mut man = Manifest {
        name: plan.name.clone(),
        dbimage_version: env!("CARGO_PKG_VERSION").into(),
        created: format!("{y:04}-{m:02}-{d:02}"),
        request: plan.request.clone(),
        datastore: ds.clone(),
        install: plan.install.clone(),
        database_packages: ds
            .packages
            .iter()
            .filter_map(|p| installed.get(p).map(|v| (p.clone(), v.clone())))
            .collect(),
        elements: plan.elements.iter().map(|e| (e.name.clone(), e.path.display().to_string())).collect(),
        origins,
        packages: installed,
        user: plan.user.clone(),
        authorized_key: plan.ssh_key.is_some(),
        guest_agent: plan.guest_agent.as_ref().zip(agent_packages).map(|(agent, python_packages)| {
            manifest::GuestAgent {
                source: agent.source.clone(),
                configured: plan.guest_agent_conf.is_some(),
                python_packages,
            }
        }),
        sizes: Sizes { tree: tree_bytes, disk: disk_layout.size, qcow2: None },
        sha256: None,
        compression: format!("{:?}", plan.compression).to_lowercase(),
        timings: Vec::new(),
    };
    let embedded = mnt.join(manifest::EMBEDDED_PATH);
    if let Some(dir) = embedded.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&embedded, serde_json::to_vec_pretty(&man)?)?;

    // 4. Bootloader and finalise on the mounted disk.
    steps.run("finalise", || {
        phases.env.push(("IMAGE_BLOCK_DEVICE".into(), dev.device.display().to_string()));
        phases.env.push(("DIB_ROOT_FS_UUID".into(), root_uuid.clone()));
        let mark = phases::enter(&mut td, &phases, &mnt, None)?;
        phases.run_all(&DISK_PHASES, &mnt)?;
        td.unwind_to(mark).map_err(anyhow::Error::msg)?;
        phases.run(Phase::Cleanup, &mnt)?;
        Ok(())
    })?;
    td.unwind_to(disk_mark).map_err(anyhow::Error::msg)?;

    // 5. QCOW2 and manifest, written beside the destination and renamed
    // into place only when complete.
    let partial = outdir.join(format!(".{}.qcow2.partial", plan.name));
    let undo_partial = Undo::RemoveFile { path: partial.clone() };
    td.push(undo_partial.clone());
    steps.run("convert", || {
        let _ = fs::remove_file(&partial);
        qcow2::convert(&raw, "raw", &partial, plan.compression)?;
        Ok(())
    })?;
    let qcow2_size = fs::metadata(&partial)?.len();
    man.sizes.qcow2 = Some(qcow2_size);
    man.sha256 = Some(manifest::sha256_file(&partial)?);
    let mut timings = steps.timings;
    timings.extend(phases.timings.iter().map(|(n, d)| (format!("  {n}"), *d)));
    man.timings = timings.iter().map(|(n, d)| (n.trim().to_string(), d.as_secs_f64())).collect();
    let man_partial = outdir.join(format!(".{}.json.partial", plan.name));
    let undo_man = Undo::RemoveFile { path: man_partial.clone() };
    td.push(undo_man.clone());
    fs::write(&man_partial, serde_json::to_vec_pretty(&man)?)?;
    run::check_cancelled()?;
    fs::rename(&partial, &plan.output)?;
    td.forget(&undo_partial);
    fs::rename(&man_partial, &plan.manifest)?;
    td.forget(&undo_man);
    drop(td);

    Ok(Outcome { image: plan.output.clone(), manifest: plan.manifest.clone(), size: qcow2_size, timings })
}

/// Takes a cache shared by builds (apt's packages of one
/// release/architecture, pip's wheels) for the element phases. apt locks
/// its archive directory and fails at once when another build holds it,
/// and pip's wheel directory is not safe to fill from two builds at once,
/// so builds sharing a cache wait here for each other instead (polling, so
/// that Ctrl-C still works while waiting).
fn lock_cache(cache: &Path) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = cache.with_extension("lock");
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut told = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if !told {
                    tracing::info!("waiting for another build using the cache {}", cache.display());
                    told = true;
                }
                run::check_cancelled()?;
                std::thread::sleep(Duration::from_millis(500));
                file = f;
            }
            Err((_, e)) => return Err(anyhow::anyhow!("locking {}: {e}", path.display())),
        }
    }
}

/// Puts the user's `-p` file where the chroot sees it: a .deb copied for
/// apt, a tarball safely unpacked. Removed again before the disk is made.
fn stage_package(td: &mut Teardown, install: &Install, tree: &Path) -> anyhow::Result<()> {
    let dir = Install::dir_in_tree(tree);
    match install {
        Install::Catalog => return Ok(()),
        Install::Deb { path, .. } => {
            fs::create_dir_all(&dir)?;
            td.push(Undo::RemoveDir { path: dir.clone() });
            let name = path.file_name().unwrap_or_default();
            fs::copy(path, dir.join(name))
                .with_context(|| format!("copying {} into the image", path.display()))?;
        }
        Install::Tarball { path } => {
            fs::create_dir_all(&dir)?;
            td.push(Undo::RemoveDir { path: dir.clone() });
            let summary = tarball::unpack(path, &dir, &tarball::Limits::default())
                .with_context(|| format!("unpacking {}", path.display()))?;
            tracing::info!("    unpacked {} ({} entries, {} bytes)", path.display(), summary.entries, summary.bytes);
        }
    }
    Ok(())
}

/// Runs a `-p` tarball's `setup.sh` in the chroot, from its own directory.
fn run_setup_script(tree: &Path, env: &[(String, String)]) -> anyhow::Result<()> {
    tracing::info!("==> setup.sh from the package tarball");
    let dir = Install::dir_in_tree(tree);
    let inside = format!("/{}", dir.strip_prefix(tree).unwrap_or(&dir).display());
    chroot::command(tree, ["/bin/sh", "-c", "cd \"$0\" && if [ -x setup.sh ]; then exec ./setup.sh; else exec /bin/sh setup.sh; fi", &inside], env)
        .run()
        .context("the package's setup.sh failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_cache_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("apt/bookworm-amd64");
        let held = lock_cache(&cache).unwrap();
        // Another open file description cannot take it while it is held.
        let other = fs::File::options().write(true).open(cache.with_extension("lock")).unwrap();
        assert!(nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
        assert!(lock_cache(&cache).is_ok());
    }
}
