//! Running element phases: packages, then hooks in DIB's order, inside the
//! chroot (`/tmp/in_target.d`) or outside it (`TARGET_ROOT`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::disk::chroot;
use crate::disk::guard::{Mark, Teardown, Undo};
use crate::disk::mount;
use crate::elements::{self, Element, Phase};
use crate::run::{self, Cmd};

/// Where the merged hooks appear inside the chroot.
const IN_TARGET: &str = "tmp/in_target.d";

/// Sources every `environment.d` file, then runs the hook given as `$0`.
const HOOK_WRAPPER: &str = r#"for f in "$DIB_HOOKS_ENV"/*; do [ -f "$f" ] && . "$f"; done; exec "$0""#;

/// Everything the phases of one tree share.
pub struct PhaseRunner<'a> {
    /// The chosen elements, in dependency order.
    pub elements: &'a [Element],
    /// The merged hooks directory (`TMP_HOOKS_PATH`).
    pub hooks_dir: PathBuf,
    /// Variables for every hook.
    pub env: Vec<(String, String)>,
    /// Per-phase packages (keys are phase directory names).
    pub packages: &'a std::collections::BTreeMap<String, Vec<String>>,
    /// Per-phase removals.
    pub uninstall: &'a std::collections::BTreeMap<String, Vec<String>>,
    /// Timings of the phases run so far.
    pub timings: Vec<(String, Duration)>,
}

impl<'a> PhaseRunner<'a> {
    /// Merges every element's files into `hooks_dir`, later elements
    /// overriding earlier ones file by file, as DIB's `TMP_HOOKS_PATH`.
    pub fn merge_elements(elements: &[Element], hooks_dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(hooks_dir)
            .with_context(|| format!("creating {}", hooks_dir.display()))?;
        for e in elements {
            Cmd::new("cp")
                .args(["-R", "--preserve=mode,timestamps,links"])
                .arg(format!("{}/.", e.path.display()))
                .arg(hooks_dir)
                .run()?;
        }
        Ok(())
    }

    /// Makes the hooks visible at `/tmp/in_target.d` in `root`; undone with
    /// the rest of the chroot.
    pub fn expose(&self, td: &mut Teardown, root: &Path) -> anyhow::Result<()> {
        let target = root.join(IN_TARGET);
        fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        td.push(Undo::RemoveDir { path: target.clone() });
        mount::bind(td, &self.hooks_dir, &target)?;
        Ok(())
    }

    /// Runs one phase: its packages (chroot phases), then its hooks.
    pub fn run(&mut self, phase: Phase, root: &Path) -> anyhow::Result<()> {
        run::check_cancelled()?;
        let start = Instant::now();
        let hooks = elements::hooks(self.elements, phase)?;
        let name = phase.dir_name();
        let install = self.packages.get(name).filter(|p| !p.is_empty());
        let remove = self.uninstall.get(name).filter(|p| !p.is_empty());
        if hooks.is_empty() && install.is_none() && remove.is_none() {
            return Ok(());
        }
        tracing::info!("==> {name}: {} hook(s){}", hooks.len(), match install {
            Some(p) => format!(", {} package(s)", p.len()),
            None => String::new(),
        });
        if let Some(pkgs) = install {
            apt(root, &self.env, "install", pkgs)
                .with_context(|| format!("installing packages for {name}"))?;
        }
        for hook in &hooks {
            run::check_cancelled()?;
            tracing::info!("    {}/{} ({})", name, hook.name, hook.element);
            let cmd = if phase.in_chroot() {
                let inside = format!("/{IN_TARGET}/{name}/{}", hook.name);
                chroot::command(root, ["/bin/bash", "-c", HOOK_WRAPPER, &inside], &self.env)
                    .env("DIB_HOOKS_ENV", format!("/{IN_TARGET}/environment.d"))
                    .env("TMP_HOOKS_PATH", format!("/{IN_TARGET}"))
            } else {
                let path = self.hooks_dir.join(name).join(&hook.name);
                Cmd::new("/bin/bash")
                    .arg("-c")
                    .arg(HOOK_WRAPPER)
                    .arg(&path)
                    .envs(self.env.iter().cloned())
                    .env("DIB_HOOKS_ENV", self.hooks_dir.join("environment.d"))
                    .env("TMP_HOOKS_PATH", &self.hooks_dir)
                    .env("TARGET_ROOT", root)
                    .env("TMP_MOUNT_PATH", root)
            };
            cmd.run().with_context(|| {
                format!("hook {name}/{} of element {} failed", hook.name, hook.element)
            })?;
        }
        if let Some(pkgs) = remove {
            apt(root, &self.env, "purge", pkgs)
                .with_context(|| format!("removing packages for {name}"))?;
        }
        self.timings.push((name.to_string(), start.elapsed()));
        Ok(())
    }

    /// Runs `phases` in order against `root`.
    pub fn run_all(&mut self, phases: &[Phase], root: &Path) -> anyhow::Result<()> {
        for p in phases {
            self.run(*p, root)?;
        }
        Ok(())
    }
}

/// `apt-get install|purge` in the chroot, never asking, keeping our configs.
pub fn apt(root: &Path, env: &[(String, String)], verb: &str, pkgs: &[String]) -> anyhow::Result<()> {
    chroot::command(
        root,
        [
            "apt-get",
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            verb,
        ]
        .into_iter()
        .map(String::from)
        .chain(pkgs.iter().cloned()),
        env,
    )
    .run()?;
    Ok(())
}

/// Copies every element's `static/` tree into `root`, in element order.
pub fn copy_static(elements: &[Element], root: &Path) -> anyhow::Result<()> {
    for dir in elements::static_dirs(elements) {
        Cmd::new("cp")
            .args(["-R", "--preserve=mode,timestamps,links"])
            .arg(format!("{}/.", dir.display()))
            .arg(root)
            .run()?;
    }
    Ok(())
}

/// Enters the chroot and exposes the hooks; returns the mark to unwind to.
pub fn enter(
    td: &mut Teardown,
    runner: &PhaseRunner<'_>,
    root: &Path,
    apt_cache: Option<&Path>,
) -> anyhow::Result<Mark> {
    let mark = chroot::enter(td, root, apt_cache)?;
    if let Err(e) = runner.expose(td, root) {
        let _ = td.unwind_to(mark);
        return Err(e);
    }
    Ok(mark)
}
