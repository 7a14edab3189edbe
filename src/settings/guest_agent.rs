//! `guest_agent_install:`: which Trove guest agent the `trove-guest-agent`
//! element installs, so that it matches the controller's Trove release.
//! `DBIMAGE_GUEST_AGENT_*` variables override the file.
//!
//! Only the shape is checked here (every command reads the settings);
//! whether a file exists is checked when a build plans to use it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SettingsError;

/// Trove's release in `tests/openstack/requirements.lock`, which the test
/// cloud runs and from which the element's `constraints.txt` is derived.
pub const DEFAULT_TROVE_VERSION: &str = "26.0.0";

/// The file's `guest_agent_install:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InstallFile {
    version: Option<String>,
    git: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    file: Option<PathBuf>,
    constraints: Option<PathBuf>,
}

/// Where the guest agent's Python package comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentSource {
    /// `trove==VERSION` from PyPI.
    Pypi {
        /// The release, e.g. `26.0.0`.
        version: String,
    },
    /// A git repository at a tag, branch or commit.
    Git {
        /// The repository, as git (and pip) take it.
        url: String,
        /// The tag, branch or commit.
        #[serde(rename = "ref")]
        git_ref: String,
    },
    /// A wheel or sdist on this host.
    File {
        /// The file.
        path: PathBuf,
    },
}

/// How the guest agent is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAgentInstall {
    /// The package.
    pub source: AgentSource,
    /// A pip constraints file to use instead of the element's.
    pub constraints: Option<PathBuf>,
}

impl Default for GuestAgentInstall {
    fn default() -> Self {
        GuestAgentInstall {
            source: AgentSource::Pypi { version: DEFAULT_TROVE_VERSION.into() },
            constraints: None,
        }
    }
}

/// The environment's overrides, by the file key they replace.
const ENV: [(&str, &str); 5] = [
    ("version", "DBIMAGE_GUEST_AGENT_VERSION"),
    ("git", "DBIMAGE_GUEST_AGENT_GIT"),
    ("ref", "DBIMAGE_GUEST_AGENT_REF"),
    ("file", "DBIMAGE_GUEST_AGENT_FILE"),
    ("constraints", "DBIMAGE_GUEST_AGENT_CONSTRAINTS"),
];

impl GuestAgentInstall {
    /// The file's section with the environment (`env`, empty values unset)
    /// applied: a source named in the environment replaces the file's
    /// entirely; `from` names the settings file in errors.
    pub(super) fn resolve(
        file: Option<InstallFile>,
        from: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GuestAgentInstall, SettingsError> {
        let var = |key: &str| ENV.iter().find(|(k, _)| *k == key).and_then(|(_, name)| env(name));
        let from_env = InstallFile {
            version: var("version"),
            git: var("git"),
            git_ref: var("ref"),
            file: var("file").map(PathBuf::from),
            constraints: var("constraints").map(PathBuf::from),
        };
        let file = file.unwrap_or_default();
        let source = match source_of(&from_env) {
            Ok(Some(s)) => s,
            Ok(None) => source_of(&file)
                .map_err(|msg| bad(format!("guest_agent_install in {from}"), msg))?
                .unwrap_or_else(|| GuestAgentInstall::default().source),
            Err(msg) => return Err(bad("the DBIMAGE_GUEST_AGENT_* variables".into(), msg)),
        };
        Ok(GuestAgentInstall { source, constraints: from_env.constraints.or(file.constraints) })
    }
}

fn bad(from: String, msg: String) -> SettingsError {
    SettingsError::GuestAgentInstall { from, msg }
}

/// The one source a section names, if any.
fn source_of(f: &InstallFile) -> Result<Option<AgentSource>, String> {
    let named = [f.version.is_some(), f.git.is_some(), f.file.is_some()];
    if named.iter().filter(|n| **n).count() > 1 {
        return Err("give one of version, git (with ref) or file".into());
    }
    if f.git_ref.is_some() && f.git.is_none() {
        return Err("ref goes with git (the repository it is a ref of)".into());
    }
    if let Some(version) = &f.version {
        check_version(version)?;
        return Ok(Some(AgentSource::Pypi { version: version.clone() }));
    }
    if let Some(url) = &f.git {
        let Some(git_ref) = &f.git_ref else {
            return Err(format!(
                "git {url} needs a ref: the tag, branch or commit of the controller's Trove (e.g. {DEFAULT_TROVE_VERSION})"
            ));
        };
        for (what, v) in [("git", url), ("ref", git_ref)] {
            if v.starts_with('-') || v.chars().any(char::is_whitespace) {
                return Err(format!("{what} {v:?} must not start with '-' or hold spaces"));
            }
        }
        return Ok(Some(AgentSource::Git { url: url.clone(), git_ref: git_ref.clone() }));
    }
    Ok(f.file.clone().map(|path| AgentSource::File { path }))
}

/// A PyPI release number (PEP 440's characters, starting with a digit),
/// so that it cannot turn into a pip option or another requirement.
fn check_version(v: &str) -> Result<(), String> {
    let ok = v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '!' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("version {v:?} is not a release number like {DEFAULT_TROVE_VERSION}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str, env: &[(&str, &str)]) -> Result<GuestAgentInstall, String> {
        let file: Option<InstallFile> = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        GuestAgentInstall::resolve(file, "settings.yaml", |k| {
            env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        })
        .map_err(|e| e.to_string())
    }

    fn pypi(v: &str) -> AgentSource {
        AgentSource::Pypi { version: v.into() }
    }

    #[test]
    fn default_is_the_test_clouds_trove() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openstack/requirements.lock"))
            .unwrap();
        assert!(lock.lines().any(|l| l == format!("trove=={DEFAULT_TROVE_VERSION}")), "lock and default differ");
        assert_eq!(parse("~", &[]).unwrap(), GuestAgentInstall::default());
        assert_eq!(parse("{}", &[]).unwrap().source, pypi(DEFAULT_TROVE_VERSION));
    }

    #[test]
    fn each_source_and_constraints() {
        assert_eq!(parse("version: '25.0.1'", &[]).unwrap().source, pypi("25.0.1"));
        let g = parse("git: https://opendev.org/openstack/trove\nref: stable/2025.2\nconstraints: /srv/uc.txt", &[])
            .unwrap();
        assert_eq!(
            g.source,
            AgentSource::Git { url: "https://opendev.org/openstack/trove".into(), git_ref: "stable/2025.2".into() }
        );
        assert_eq!(g.constraints, Some(PathBuf::from("/srv/uc.txt")));
        let f = parse("file: dist/trove-26.0.0-py3-none-any.whl", &[]).unwrap();
        assert_eq!(f.source, AgentSource::File { path: "dist/trove-26.0.0-py3-none-any.whl".into() });
        assert_eq!(f.constraints, None);
    }

    #[test]
    fn environment_replaces_the_files_source() {
        let yaml = "git: https://example.org/trove.git\nref: '26.0.0'\nconstraints: /a.txt";
        let s = parse(yaml, &[("DBIMAGE_GUEST_AGENT_VERSION", "24.0.0")]).unwrap();
        assert_eq!(s.source, pypi("24.0.0"), "the file's ref does not leak into the environment's source");
        assert_eq!(s.constraints, Some(PathBuf::from("/a.txt")));
        let s = parse(yaml, &[("DBIMAGE_GUEST_AGENT_FILE", "/t.whl"), ("DBIMAGE_GUEST_AGENT_CONSTRAINTS", "/b.txt")])
            .unwrap();
        assert_eq!(s.source, AgentSource::File { path: "/t.whl".into() });
        assert_eq!(s.constraints, Some(PathBuf::from("/b.txt")));
        let s = parse("", &[("DBIMAGE_GUEST_AGENT_GIT", "file:///srv/trove"), ("DBIMAGE_GUEST_AGENT_REF", "abc123")])
            .unwrap();
        assert_eq!(s.source, AgentSource::Git { url: "file:///srv/trove".into(), git_ref: "abc123".into() });
    }

    #[test]
    fn bad_values_are_one_line_errors_naming_their_origin() {
        for (yaml, env, want) in [
            ("version: '26.0.0'\nfile: x.whl", &[][..], "settings.yaml: give one of version"),
            ("git: https://x/trove", &[], "needs a ref"),
            ("ref: '26.0.0'", &[], "ref goes with git"),
            ("version: '26.0.0 --index-url http://evil'", &[], "not a release number"),
            ("version: '>=26'", &[], "not a release number"),
            ("git: https://x/trove\nref: --upload-pack=evil", &[], "must not start with '-'"),
            ("", &[("DBIMAGE_GUEST_AGENT_REF", "26.0.0")], "DBIMAGE_GUEST_AGENT_* variables: ref goes with git"),
            ("", &[("DBIMAGE_GUEST_AGENT_VERSION", "1"), ("DBIMAGE_GUEST_AGENT_GIT", "u")], "give one of"),
        ] {
            let err = parse(yaml, env).unwrap_err();
            assert!(err.contains(want), "{yaml:?} {env:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        assert!(parse("versoin: '26.0.0'", &[]).is_err(), "unknown keys are refused");
    }
}
