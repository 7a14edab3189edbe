//! `dbimage make -i HOST`: the build runs on a build VM over SSH
//! (`playbooks/dibvm.yaml`) and the image comes back into the local
//! images directory, complete and checked, or not at all.

use std::path::{Path, PathBuf};

use minijinja::Value;

use super::playbook::{Playbook, PlaybookError, TaskError, Vars};
use super::ssh::{Connection, Target, quote};
use crate::arch::Arch;
use crate::build::manifest;
use crate::build::plan::Plan;
use crate::cli::{Compression, MakeArgs};
use crate::commands::UsageError;
use crate::run::Cmd;
use crate::settings::{AgentSource, Settings};

/// The playbook's file name under `playbooks/`.
const PLAYBOOK: &str = "dibvm.yaml";

/// Commands a build needs on the VM, with the Debian package providing each.
const TOOLS: [&str; 12] = [
    "debootstrap:debootstrap",
    "qemu-img:qemu-utils",
    "mkfs.ext4:e2fsprogs",
    "mkfs.vfat:dosfstools",
    "mcopy:mtools",
    "sfdisk:fdisk",
    "losetup:mount",
    "tar:tar",
    "gpg:gnupg",
    "xz:xz-utils",
    "update-binfmts:binfmt-support",
    "qemu-ppc64le-static:qemu-user-static",
];

/// What the remote build needs from the local side besides `args`.
pub struct Request<'a> {
    /// The validated local plan (name, output paths).
    pub plan: &'a Plan,
    /// Public keys for the image's user (the user's and the controller's).
    pub keys: Option<&'a str>,
}

/// The connection to the build VM and its architecture, opened before
/// planning so the VM's architecture is the default target.
pub struct BuildVm {
    conn: Connection,
    playbook: Playbook,
    /// The VM's architecture, when dbimage knows it.
    pub arch: Option<Arch>,
}

impl BuildVm {
    /// Connects to `host` (an address or `dibvm`) and asks its architecture.
    pub fn connect(host: &str, settings: &Settings) -> anyhow::Result<BuildVm> {
        let playbook = Playbook::load(&settings.data_dir.join("playbooks").join(PLAYBOOK))?;
        let target: Target = super::resolve_target(host, settings)?;
        let conn = Connection::open(&target)?;
        let uname = conn.run("uname -m", &mut Default::default())?;
        let arch = uname.stdout.trim().parse::<Arch>().ok();
        tracing::info!("build VM {target}: {}", uname.stdout.trim());
        Ok(BuildVm { conn, playbook, arch })
    }

    /// Runs the build on the VM and moves the image and its manifest into
    /// the plan's output paths; returns the image path.
    pub fn build(mut self, args: &MakeArgs, settings: &Settings, req: &Request<'_>) -> anyhow::Result<PathBuf> {
        let outdir = req.plan.output.parent().unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&outdir)?;
        // Fetched files land here first; dropped on any failure.
        let fetch_dir = tempfile::Builder::new().prefix(".dbimage-fetch-").tempdir_in(&outdir)?;
        let stage = tempfile::Builder::new().prefix("dbimage-remote-").tempdir()?;
        let work = format!("/var/tmp/dbimage-remote-{}", uuid::Uuid::new_v4().simple());

        let mut make = vec!["make".to_string()];
        let mut env = remote_env(settings, &work);
        stage_request(args, req, stage.path(), &work, &mut make, &mut env)?;
        // Sourced by the build: values (DIB_* may hold credentials) stay out
        // of the VM's process list and of the logs.
        let env_file: String = env.iter().map(|(k, v)| format!("{k}={}\n", quote(v))).collect();
        crate::atomic::write_file(&stage.path().join("env"), env_file.as_bytes(), 0o600)?;

        let mut vars = Vars::new();
        let mut set = |k: &str, v: Value| vars.insert(k.to_string(), v);
        set("work", Value::from(work.as_str()));
        set("data_dir", Value::from(settings.data_dir.display().to_string()));
        set("stage", Value::from(stage.path().display().to_string()));
        set("binary", Value::from(std::env::current_exe()?.display().to_string()));
        set("local_arch", Value::from(Arch::host().map_or(std::env::consts::ARCH, Arch::uname)));
        set("version", Value::from(env!("CARGO_PKG_VERSION")));
        set("make_args", Value::from(make[1..].iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")));
        set("fetch_dir", Value::from(fetch_dir.path().display().to_string()));
        set("tools", Value::from_iter(TOOLS));
        if let Some(p) = &args.package {
            set("package", Value::from(std::path::absolute(p)?.display().to_string()));
            set("package_name", Value::from(file_name(p)));
        }

        let host = self.conn.target().to_string();
        let mut show = |line: &str| {
            if !line.trim().is_empty() {
                tracing::info!("[{host}] {line}");
            }
        };
        if let Err(e) = self.playbook.run(&mut self.conn, &mut vars, &mut show) {
            if e.is_lost() {
                tracing::warn!("if {host} could not be reached again, remove {work} there by hand");
            }
            if let PlaybookError::Task { error: TaskError::Refused(_), .. } = &e {
                return Err(UsageError(format!("the build VM {e}")).into());
            }
            return Err(e.into());
        }
        self.conn.close();
        crate::run::check_cancelled()?;

        let name = vars
            .get("built")
            .and_then(|b| b.get_attr("stdout").ok())
            .and_then(|s| s.as_str().map(str::to_string))
            .unwrap_or_default();
        image_name(&name).map_err(|e| UsageError(format!("refusing the build VM's image name: {e}; nothing was kept")))?;
        let image = fetch_dir.path().join(&name);
        let info = manifest::read_beside(&image)?;
        let sum = manifest::sha256_file(&image)?;
        if info.sha256.as_deref() != Some(sum.as_str()) {
            anyhow::bail!(
                "the image fetched from the build VM does not match its manifest's sha256 (transfer damaged?); \
                 nothing was kept, run the build again"
            );
        }
        // The VM's clock may have named it differently; keep the VM's name.
        let dest = outdir.join(&name);
        if dest != req.plan.output && dest.exists() && !args.force {
            anyhow::bail!("{} already exists; remove it or pass --force to replace it", dest.display());
        }
        std::fs::rename(manifest::path_beside(&image), manifest::path_beside(&dest))?;
        std::fs::rename(&image, &dest)?;
        Ok(dest)
    }
}

/// Checks the image file name the build VM reported: it becomes a local
/// path, so one plain component ending in `.qcow2`.
fn image_name(name: &str) -> Result<(), String> {
    super::playbook::check_plain_name(name)?;
    if name.strip_suffix(".qcow2").is_none_or(str::is_empty) {
        return Err(format!("{name:?} does not end in .qcow2"));
    }
    Ok(())
}

/// The remote build's environment: the data files just copied and the
/// deployer's build settings, so the VM builds what this host would.
fn remote_env(settings: &Settings, work: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("DBIMAGE_SETTINGS".to_string(), format!("{work}/request/settings.json")),
        ("DBIMAGE_DATA_DIR".to_string(), format!("{work}/data")),
        ("DBIMAGE_MIRROR".to_string(), settings.mirror.clone()),
        ("DBIMAGE_SECURITY_MIRROR".to_string(), settings.security_mirror.clone()),
        ("DBIMAGE_SECURITY".to_string(), if settings.security { "yes" } else { "no" }.to_string()),
        ("DBIMAGE_SECURITY_SKIP".to_string(), settings.security_skip.join(",")),
        ("DBIMAGE_SOURCE".to_string(), settings.source.clone()),
    ];
    env.extend(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("DIB_")),
    );
    env
}

/// Puts the request's files into `stage` (copied to `<work>/request`) and
/// the matching arguments into `make`.
fn stage_request(
    args: &MakeArgs,
    req: &Request<'_>,
    stage: &Path,
    work: &str,
    make: &mut Vec<String>,
    env: &mut Vec<(String, String)>,
) -> anyhow::Result<()> {
    let remote = |name: &str| format!("{work}/request/{name}");
    // An empty settings file: the VM's own settings file must not apply.
    crate::atomic::write_file(&stage.join("settings.json"), b"{}\n", 0o644)?;
    let plan = req.plan;
    make.extend(["-d".into(), plan.request.db.clone(), "-a".into(), plan.request.arch.to_string()]);
    if let Some(v) = &args.db_version {
        make.extend(["-v".into(), v.clone()]);
    }
    if args.community {
        make.push("-c".into());
    }
    if args.enterprise {
        make.push("-e".into());
    }
    make.extend(["-r".into(), plan.datastore.release.clone(), "-b".into(), plan.user.clone()]);
    if let Some(keys) = req.keys {
        crate::atomic::write_file(&stage.join("keys.pub"), format!("{keys}\n").as_bytes(), 0o600)?;
        make.extend(["-k".into(), remote("keys.pub")]);
    }
    if let Some(agent) = &plan.guest_agent {
        make.push("--guest-agent".into());
        if let Some(conf) = &plan.guest_agent_conf {
            crate::atomic::write_file(&stage.join("guest-agent.conf"), conf.as_bytes(), 0o600)?;
            make.extend(["--guest-agent-config".into(), remote("guest-agent.conf")]);
        }
        // The agent's source as resolved here; files travel with the request.
        match &agent.source {
            AgentSource::Pypi { version } => env.push(("DBIMAGE_GUEST_AGENT_VERSION".into(), version.clone())),
            AgentSource::Git { url, git_ref } => {
                env.push(("DBIMAGE_GUEST_AGENT_GIT".into(), url.clone()));
                env.push(("DBIMAGE_GUEST_AGENT_REF".into(), git_ref.clone()));
            }
            AgentSource::File { path } => {
                let name = format!("agent/{}", file_name(path));
                copy_into(path, &stage.join(&name))?;
                env.push(("DBIMAGE_GUEST_AGENT_FILE".into(), remote(&name)));
            }
        }
        copy_into(&agent.constraints, &stage.join("agent/constraints.txt"))?;
        env.push(("DBIMAGE_GUEST_AGENT_CONSTRAINTS".into(), remote("agent/constraints.txt")));
    }
    if let Some(p) = &args.package {
        make.extend(["-p".into(), remote(&file_name(p))]);
    }
    for e in &args.elements {
        make.extend(["-x".into(), e.clone()]);
    }
    make.extend([
        "--compression".into(),
        match args.compression {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
        .into(),
    ]);
    if let Some(s) = args.size {
        make.extend(["--size".into(), s.to_string()]);
    }
    make.extend(["-I".into(), "-o".into(), format!("{work}/out")]);
    // User elements (ELEMENTS_PATH) travel as numbered directories, in order.
    let mut paths = Vec::new();
    let builtin = plan.data_dir.join("elements");
    for (i, dir) in crate::elements::search_path(&builtin).iter().skip(1).enumerate() {
        if !dir.is_dir() {
            continue;
        }
        let to = stage.join(format!("elements-path/{i}"));
        std::fs::create_dir_all(&to)?;
        Cmd::new("cp").args(["-a", "--"]).arg(dir.join(".")).arg(&to).run()?;
        paths.push(remote(&format!("elements-path/{i}")));
    }
    if !paths.is_empty() {
        env.push(("ELEMENTS_PATH".into(), paths.join(":")));
    }
    Ok(())
}

fn copy_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to).map_err(|e| anyhow::anyhow!("copying {} for the build VM: {e}", from.display()))?;
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vms_image_name_is_one_plain_qcow2_name() {
        image_name("postgresql-15-dib-2026-11-24.qcow2").unwrap();
        for bad in ["../x.qcow2", "/etc/x.qcow2", "sub/x.qcow2", ".x.qcow2", "a.qcow2\nb.qcow2", "x.sh", ".qcow2", ""] {
            let e = image_name(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad:?}: {e}");
        }
    }
}
