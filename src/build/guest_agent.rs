//! The `trove-guest-agent` element's inputs: which agent to install
//! (checked while planning), staged in the tree together with the host's
//! pip cache for the element's hook, and what the hook put in the
//! virtualenv (for the manifest).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::commands::UsageError;
use crate::disk::chroot;
use crate::disk::guard::{Teardown, Undo};
use crate::disk::mount;
use crate::run::Cmd;
use crate::settings::{AgentSource, GuestAgentInstall};

/// The element's name.
pub const ELEMENT: &str = "trove-guest-agent";
/// Where the hook finds the staged inputs (`DBIMAGE_GUEST_AGENT_DIR`).
pub const STAGE_IN_TREE: &str = "/tmp/dbimage-guest-agent";
/// The virtualenv the hook makes.
const VENV: &str = "/opt/trove-guestagent";
/// File names pip installs from.
const PACKAGE_SUFFIXES: [&str; 3] = [".whl", ".tar.gz", ".zip"];

/// How the element installs the agent, resolved and checked.
#[derive(Debug, Clone, Serialize)]
pub struct GuestAgentPlan {
    /// The package.
    pub source: AgentSource,
    /// The pip constraints file: the settings' or the element's.
    pub constraints: PathBuf,
    /// pip's cache on the host, seen by the hook while it runs.
    pub pip_cache: PathBuf,
}

impl GuestAgentPlan {
    /// Checks `install` now, so a missing file or tool fails before the
    /// build: files must exist (and are made absolute), the element must
    /// ship constraints unless the settings name some, and a git checkout
    /// or an sdist needs what builds its wheel on this host.
    pub fn new(install: &GuestAgentInstall, element_dir: &Path, cache_dir: &Path) -> Result<GuestAgentPlan, UsageError> {
        let source = match &install.source {
            AgentSource::File { path } => {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if !PACKAGE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                    return Err(UsageError(format!(
                        "guest agent package {}: not a wheel (.whl) or sdist (.tar.gz, .zip)",
                        path.display()
                    )));
                }
                let path = existing_file(path, "guest agent package")?;
                if !is_wheel(&path) {
                    check_host_tools(&["python3"], "an sdist")?;
                }
                AgentSource::File { path }
            }
            AgentSource::Git { .. } => {
                check_host_tools(&["git", "python3"], "a git checkout")?;
                install.source.clone()
            }
            AgentSource::Pypi { .. } => install.source.clone(),
        };
        let constraints = match &install.constraints {
            Some(path) => existing_file(path, "guest agent constraints")?,
            None => {
                let own = element_dir.join("constraints.txt");
                if !own.is_file() {
                    return Err(UsageError(format!(
                        "element {} has no constraints.txt; add one or set guest_agent_install.constraints",
                        element_dir.display()
                    )));
                }
                own
            }
        };
        Ok(GuestAgentPlan { source, constraints, pip_cache: cache_dir.join("pip") })
    }

    /// Puts the hook's inputs at [`STAGE_IN_TREE`] in `tree` (the constraints,
    /// `requirements.txt`, the agent's wheel under `dist/` unless it comes
    /// from PyPI, the host's CA bundle) and bind-mounts the pip cache at
    /// `pip-cache/` in it; all undone through `td`, so neither the inputs
    /// nor the cache stay in the image.
    pub fn stage(&self, td: &mut Teardown, tree: &Path) -> anyhow::Result<()> {
        let dir = tree.join(STAGE_IN_TREE.trim_start_matches('/'));
        let dist = dir.join("dist");
        fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
        td.push(Undo::RemoveDir { path: dir.clone() });
        fs::copy(&self.constraints, dir.join("constraints.txt"))
            .with_context(|| format!("copying {} into the image", self.constraints.display()))?;
        fs::create_dir_all(&self.pip_cache).with_context(|| format!("creating {}", self.pip_cache.display()))?;
        let requirement = match &self.source {
            AgentSource::Pypi { version } => format!("trove=={version}"),
            AgentSource::File { path } if is_wheel(path) => {
                let name = path.file_name().unwrap_or_default();
                fs::copy(path, dist.join(name)).with_context(|| format!("copying {} into the image", path.display()))?;
                format!("{STAGE_IN_TREE}/dist/{}", name.to_string_lossy())
            }
            AgentSource::File { path } => {
                let wheel = host_wheel(&path.to_string_lossy(), &self.pip_cache, &dist)?;
                format!("{STAGE_IN_TREE}/dist/{wheel}")
            }
            AgentSource::Git { url, git_ref } => {
                let url = url.strip_prefix("git+").unwrap_or(url);
                let wheel = host_wheel(&format!("git+{url}@{git_ref}"), &self.pip_cache, &dist)?;
                format!("{STAGE_IN_TREE}/dist/{wheel}")
            }
        };
        tracing::info!("    guest agent: {requirement}");
        fs::write(dir.join("requirements.txt"), format!("{requirement}\n"))
            .with_context(|| format!("writing {}", dir.display()))?;
        if let Some(bundle) = host_ca_bundle() {
            fs::copy(&bundle, dir.join("ca-certificates.crt"))
                .with_context(|| format!("copying {} into the image", bundle.display()))?;
        }
        let cache_in_tree = dir.join("pip-cache");
        fs::create_dir(&cache_in_tree).with_context(|| format!("creating {}", cache_in_tree.display()))?;
        mount::bind(td, &self.pip_cache, &cache_in_tree)?;
        Ok(())
    }
}

fn is_wheel(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "whl")
}

fn existing_file(path: &Path, what: &str) -> Result<PathBuf, UsageError> {
    if !path.is_file() {
        return Err(UsageError(format!("{what} {}: no such file", path.display())));
    }
    fs::canonicalize(path).map_err(|e| UsageError(format!("{what} {}: {e}", path.display())))
}

/// `programs` (with pip for python3) answer on this host.
fn check_host_tools(programs: &[&str], what: &str) -> Result<(), UsageError> {
    for program in programs {
        let args: &[&str] = if *program == "python3" { &["-m", "pip", "--version"] } else { &["--version"] };
        Cmd::new(program).args(args).output().map_err(|_| {
            UsageError(format!(
                "the guest agent from {what} is built into a wheel on this host, which needs {} \
                 (apt-get install git python3-pip)",
                programs.iter().map(|p| if *p == "python3" { "python3 -m pip" } else { p }).collect::<Vec<_>>().join(" and ")
            ))
        })?;
    }
    Ok(())
}

/// The CA certificates this host's pip trusts: pip's own setting, else
/// OpenSSL's, else Debian's bundle. pip in the chroot uses them instead of
/// its built-in list, so a build behind a TLS-inspecting proxy whose CA the
/// host trusts downloads as the host does.
fn host_ca_bundle() -> Option<PathBuf> {
    ["PIP_CERT", "SSL_CERT_FILE"]
        .iter()
        .filter_map(|k| std::env::var_os(k).map(PathBuf::from))
        .chain([PathBuf::from("/etc/ssl/certs/ca-certificates.crt")])
        .find(|p| p.is_file())
}

/// Builds the agent's wheel from `spec` (an sdist, or `git+URL@REF`) on
/// the host: the image has no git, and pbr needs the repository's history
/// for the version. Trove is pure Python, so the wheel fits any image.
/// Returns its file name in `out`.
fn host_wheel(spec: &str, pip_cache: &Path, out: &Path) -> anyhow::Result<String> {
    Cmd::new("python3")
        .args(["-m", "pip", "wheel", "--no-deps", "--no-input", "--disable-pip-version-check", "--progress-bar", "off"])
        .arg("--wheel-dir")
        .arg(out)
        .arg(spec)
        .env("PIP_CACHE_DIR", pip_cache.join("http"))
        .run()
        .with_context(|| format!("building the guest agent's wheel from {spec}"))?;
    let wheels: Vec<String> = fs::read_dir(out)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        _ => anyhow::bail!("building the guest agent's wheel from {spec} left {} wheels, not one", wheels.len()),
    }
}

/// One line of `pip list --format=json`.
#[derive(Deserialize)]
struct PipPackage {
    name: String,
    version: String,
}

/// The Python packages in the agent's virtualenv and their versions.
pub fn installed_packages(tree: &Path, env: &[(String, String)]) -> anyhow::Result<BTreeMap<String, String>> {
    let python = format!("{VENV}/bin/python3");
    let out = chroot::command(tree, [python.as_str(), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"], env)
        .output()?;
    let list: Vec<PipPackage> = serde_json::from_str(&out).context("reading pip list of the guest agent")?;
    Ok(list.into_iter().map(|p| (p.name, p.version)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.split_once("=="))
            .map(|(n, v)| (n.to_lowercase().replace('_', "-"), v.to_string()))
            .collect()
    }

    /// The shipped constraints are the lock's pins, without trove (the
    /// source setting chooses it).
    #[test]
    fn element_constraints_follow_the_lock() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lock = pins(&fs::read_to_string(root.join("tests/openstack/requirements.lock")).unwrap());
        let ours = pins(&fs::read_to_string(root.join("elements/trove-guest-agent/constraints.txt")).unwrap());
        assert!(ours.len() > 100, "{}", ours.len());
        assert!(!ours.contains_key("trove"));
        for (name, version) in &ours {
            assert_eq!(lock.get(name), Some(version), "{name}");
        }
    }

    #[test]
    fn staging_is_undone_and_the_cache_outlives_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("tmp")).unwrap();
        let wheel = dir.path().join("trove-26.0.0-py3-none-any.whl");
        fs::write(&wheel, "wheel").unwrap();
        let constraints = dir.path().join("c.txt");
        fs::write(&constraints, "six==1.17.0\n").unwrap();
        let plan = GuestAgentPlan {
            source: AgentSource::File { path: wheel },
            constraints,
            pip_cache: dir.path().join("cache/pip"),
        };
        let stage = tree.join("tmp/dbimage-guest-agent");
        {
            let mut td = Teardown::new(None);
            plan.stage(&mut td, &tree).unwrap();
            assert_eq!(
                fs::read_to_string(stage.join("requirements.txt")).unwrap(),
                "/tmp/dbimage-guest-agent/dist/trove-26.0.0-py3-none-any.whl\n"
            );
            assert_eq!(fs::read(stage.join("dist/trove-26.0.0-py3-none-any.whl")).unwrap(), b"wheel");
            assert_eq!(fs::read_to_string(stage.join("constraints.txt")).unwrap(), "six==1.17.0\n");
            // What pip writes in the chroot lands in the host's cache.
            fs::write(stage.join("pip-cache/probe"), "cached").unwrap();
            assert!(plan.pip_cache.join("probe").is_file());
        }
        assert!(!stage.exists(), "staged inputs left in the tree");
        assert_eq!(fs::read_to_string(plan.pip_cache.join("probe")).unwrap(), "cached");
    }

    /// A git source becomes a wheel on the host, through git and pip
    /// (which fetches the build backend from PyPI, as a build does).
    #[test]
    fn git_checkout_becomes_a_wheel_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("trove");
        fs::create_dir(&repo).unwrap();
        fs::write(
            repo.join("pyproject.toml"),
            "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\
             [project]\nname = \"trove\"\nversion = \"26.0.1\"\n\
             [project.scripts]\ntrove-guestagent = \"trove_stub:main\"\n",
        )
        .unwrap();
        fs::write(repo.join("trove_stub.py"), "def main():\n    pass\n").unwrap();
        let git = |args: &[&str]| {
            Cmd::new("git").arg("-C").arg(&repo).args(["-c", "user.name=t", "-c", "user.email=t@t"]).args(args).run().unwrap()
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "stub"]);
        git(&["tag", "26.0.1"]);
        let out = dir.path().join("dist");
        fs::create_dir(&out).unwrap();
        let spec = format!("git+file://{}@26.0.1", repo.display());
        let wheel = host_wheel(&spec, &dir.path().join("cache"), &out).unwrap();
        assert_eq!(wheel, "trove-26.0.1-py3-none-any.whl");
        let err = host_wheel(&format!("git+file://{}@no-such-tag", repo.display()), &dir.path().join("cache"), &out)
            .unwrap_err();
        assert!(format!("{err:#}").contains("no-such-tag"), "{err:#}");
    }

    #[test]
    fn plan_checks_files_now() {
        let dir = tempfile::tempdir().unwrap();
        let element = dir.path().join("trove-guest-agent");
        fs::create_dir(&element).unwrap();
        let cache = dir.path().join("cache");
        let pypi = GuestAgentInstall::default();
        let err = GuestAgentPlan::new(&pypi, &element, &cache).unwrap_err().to_string();
        assert!(err.contains("has no constraints.txt"), "{err}");
        fs::write(element.join("constraints.txt"), "six==1.17.0\n").unwrap();
        let plan = GuestAgentPlan::new(&pypi, &element, &cache).unwrap();
        assert_eq!((plan.constraints, plan.pip_cache), (element.join("constraints.txt"), cache.join("pip")));

        let file = |p: &Path| GuestAgentInstall { source: AgentSource::File { path: p.into() }, constraints: None };
        let wheel = dir.path().join("trove-26.0.0-py3-none-any.whl");
        let err = GuestAgentPlan::new(&file(&wheel), &element, &cache).unwrap_err().to_string();
        assert_eq!(err, format!("guest agent package {}: no such file", wheel.display()));
        fs::write(&wheel, "").unwrap();
        assert!(GuestAgentPlan::new(&file(&wheel), &element, &cache).is_ok());
        let deb = dir.path().join("trove.deb");
        fs::write(&deb, "").unwrap();
        let err = GuestAgentPlan::new(&file(&deb), &element, &cache).unwrap_err().to_string();
        assert!(err.contains("not a wheel (.whl) or sdist"), "{err}");

        let other = GuestAgentInstall { constraints: Some(dir.path().join("uc.txt")), ..pypi };
        let err = GuestAgentPlan::new(&other, &element, &cache).unwrap_err().to_string();
        assert!(err.starts_with("guest agent constraints ") && err.ends_with("uc.txt: no such file"), "{err}");
    }
}
