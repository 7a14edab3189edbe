//! `package-installs.yaml`: the packages each element wants installed or
//! removed, filtered for the target and grouped by phase.
//!
//! The format is DIB's `package-installs` element's. Each top-level key is a
//! package; its value is empty (install in `install.d`), a map of options, or
//! a list of such maps (each one considered separately, so one package can
//! carry different conditions for different targets). Options:
//!
//! - `phase`: `pre-install.d`, `install.d` (default) or `post-install.d`.
//! - `uninstall`: remove instead of install. DIB looks only at whether the key
//!   is present; here `uninstall: false` means install, and an empty value
//!   means remove.
//! - `arch` / `not-arch`: comma-separated architectures to install for / not
//!   for (at most one of them). `amd64` and `x86_64` name the same
//!   architecture, as do `ppc64el` and `ppc64le`; other names never match.
//! - `when`: `VAR = value` or `VAR != value` (or a list of them, all of which
//!   must hold), checked against the build environment; a variable that is not
//!   set is an error, as in DIB.
//! - `dib_python_version`: install only if it equals `DIB_PYTHON_VERSION`.
//! - `installtype`: install only if it equals the element's install type
//!   (`DIB_INSTALLTYPE_<element>`, else `DIB_DEFAULT_INSTALLTYPE`, else `source`).
//!
//! A `package-installs.json` file is read too, as DIB does. Not supported:
//! DIB's `pkg-map` element (per-distribution package name mapping), so names
//! must be the target distribution's own; the deprecated
//! `package-installs-<element>` files; and any other option key, which is an
//! error rather than being ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ElementError;
use super::discover::Element;
use super::hooks::Phase;
use crate::arch::Arch;

/// The option keys we understand, for the error message about other keys.
const KEYS: &str = "phase, uninstall, arch, not-arch, when, dib_python_version, installtype";

/// What to install and remove in each phase, over all elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackagePlan {
    /// Packages to install at the start of each phase, sorted, no duplicates.
    pub install: BTreeMap<Phase, Vec<String>>,
    /// Packages to remove in each phase (after that phase's installs), sorted,
    /// no duplicates.
    pub uninstall: BTreeMap<Phase, Vec<String>>,
}

#[cfg(test)]
impl PackagePlan {
    /// The packages to install in `phase`.
    pub fn install_in(&self, phase: Phase) -> &[String] {
        self.install
            .get(&phase)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The packages to remove in `phase`.
    pub fn uninstall_in(&self, phase: Phase) -> &[String] {
        self.uninstall
            .get(&phase)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether there is nothing to install or remove at all.
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.uninstall.is_empty()
    }
}

/// Reads every element's package list and keeps the entries that apply to
/// `arch` and to the build environment `env`.
pub fn package_plan(
    elements: &[Element],
    arch: Arch,
    env: &BTreeMap<String, String>,
) -> Result<PackagePlan, ElementError> {
    let mut install: BTreeMap<Phase, BTreeSet<String>> = BTreeMap::new();
    let mut uninstall: BTreeMap<Phase, BTreeSet<String>> = BTreeMap::new();
    for element in elements {
        for file in ["package-installs.yaml", "package-installs.json"] {
            let path = element.path.join(file);
            let Some(doc) = read_doc(&path)? else {
                continue;
            };
            let ctx = Context {
                file: &path,
                element: &element.name,
                arch,
                env,
            };
            for entry in ctx.entries(doc)? {
                let target = if entry.uninstall {
                    &mut uninstall
                } else {
                    &mut install
                };
                target.entry(entry.phase).or_default().insert(entry.package);
            }
        }
    }
    let flatten = |m: BTreeMap<Phase, BTreeSet<String>>| {
        m.into_iter()
            .map(|(phase, pkgs)| (phase, pkgs.into_iter().collect()))
            .collect()
    };
    Ok(PackagePlan {
        install: flatten(install),
        uninstall: flatten(uninstall),
    })
}

/// One package that applies, and what to do with it.
struct Entry {
    package: String,
    phase: Phase,
    uninstall: bool,
}

/// What a file's entries are checked against, and where errors point.
struct Context<'a> {
    file: &'a Path,
    element: &'a str,
    arch: Arch,
    env: &'a BTreeMap<String, String>,
}

impl Context<'_> {
    fn bad(&self, msg: String) -> ElementError {
        ElementError::BadPackageInstalls {
            file: self.file.to_path_buf(),
            msg,
        }
    }

    /// The applicable entries of a parsed file.
    fn entries(&self, doc: Value) -> Result<Vec<Entry>, ElementError> {
        let map = match doc {
            Value::Null => return Ok(Vec::new()),
            Value::Object(map) => map,
            _ => {
                return Err(self.bad(
                    "expected a mapping of package names to options; see the package-installs \
                     format in DIB's documentation"
                        .to_string(),
                ));
            }
        };
        let mut out = Vec::new();
        for (package, spec) in map {
            if package.is_empty() || package.chars().any(char::is_whitespace) {
                return Err(self.bad(format!(
                    "'{package}' is not a package name; use one package per key"
                )));
            }
            let options: Vec<Map<String, Value>> = match spec {
                Value::Null => vec![Map::new()],
                Value::String(s) if s.is_empty() => vec![Map::new()],
                Value::Object(m) => vec![m],
                Value::Array(items) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::Null => Ok(Map::new()),
                        Value::Object(m) => Ok(m),
                        _ => Err(self.bad(format!(
                            "package '{package}': each list item must be a mapping of options \
                             ({KEYS})"
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(self.bad(format!(
                        "package '{package}': expected nothing, a mapping of options ({KEYS}) \
                         or a list of such mappings"
                    )));
                }
            };
            for opts in options {
                if let Some(entry) = self.entry(&package, &opts)? {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// The entry for one option map, or `None` if its conditions exclude it.
    fn entry(
        &self,
        package: &str,
        opts: &Map<String, Value>,
    ) -> Result<Option<Entry>, ElementError> {
        let bad = |what: String| self.bad(format!("package '{package}': {what}"));
        if let Some(key) = opts
            .keys()
            .find(|k| !KEYS.split(", ").any(|s| s == k.as_str()))
        {
            return Err(bad(format!("unsupported option '{key}'; use only {KEYS}")));
        }

        let phase = match opts.get("phase") {
            None | Some(Value::Null) => Phase::Install,
            Some(Value::String(s)) => match Phase::from_dir_name(s) {
                Some(p @ (Phase::PreInstall | Phase::Install | Phase::PostInstall)) => p,
                _ => {
                    return Err(bad(format!(
                        "phase '{s}' is not one packages are installed in; use pre-install.d, \
                         install.d or post-install.d"
                    )));
                }
            },
            Some(_) => return Err(bad("phase must be a string such as install.d".to_string())),
        };

        let uninstall = match opts.get("uninstall") {
            None => false,
            Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => true,
                "false" | "no" | "off" => false,
                _ => return Err(bad(format!("uninstall must be true or false, not '{s}'"))),
            },
            Some(other) => {
                return Err(bad(format!("uninstall must be true or false, not {other}")));
            }
        };

        let arch = self.string_opt(package, opts, "arch")?;
        let not_arch = self.string_opt(package, opts, "not-arch")?;
        let arch_ok = match (arch, not_arch) {
            (Some(_), Some(_)) => {
                return Err(bad("give either arch or not-arch, not both".to_string()));
            }
            (Some(list), None) => arch_in_list(self.arch, &list),
            (None, Some(list)) => !arch_in_list(self.arch, &list),
            (None, None) => true,
        };

        let python_ok = match opts.get("dib_python_version") {
            None | Some(Value::Null) => true,
            Some(v @ (Value::String(_) | Value::Number(_))) => {
                let want = scalar_text(v);
                want.is_empty()
                    || self
                        .env
                        .get("DIB_PYTHON_VERSION")
                        .map(String::as_str)
                        .unwrap_or("")
                        == want
            }
            Some(_) => {
                return Err(bad(
                    "dib_python_version must be a version such as 3".to_string()
                ));
            }
        };

        let installtype_ok = match self.string_opt(package, opts, "installtype")? {
            None => true,
            Some(want) => {
                let var = format!("DIB_INSTALLTYPE_{}", self.element.replace('-', "_"));
                let have = self
                    .env
                    .get(&var)
                    .or_else(|| self.env.get("DIB_DEFAULT_INSTALLTYPE"))
                    .map(String::as_str)
                    .unwrap_or("source");
                want == have
            }
        };

        let statements: Vec<String> = match opts.get("when") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(bad("when must be a string or a list of strings".to_string())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("when must be a string or a list of strings".to_string())),
        };
        let mut when_ok = true;
        for statement in &statements {
            // Every statement is checked, even after one fails, so that a
            // malformed one is reported whatever the environment.
            when_ok &= self.when(package, statement)?;
        }

        Ok(
            (arch_ok && python_ok && installtype_ok && when_ok).then(|| Entry {
                package: package.to_string(),
                phase,
                uninstall,
            }),
        )
    }

    /// An option that must be a string if present.
    fn string_opt(
        &self,
        package: &str,
        opts: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<String>, ElementError> {
        match opts.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(format!(
                "package '{package}': {key} must be a string (comma-separated for arch lists)"
            ))),
        }
    }

    /// Evaluates one `VAR = value` / `VAR != value` statement.
    fn when(&self, package: &str, statement: &str) -> Result<bool, ElementError> {
        let (var, negate, value) = if let Some((var, value)) = statement.split_once("!=") {
            (var, true, value)
        } else if let Some((var, value)) = statement.split_once('=') {
            (var, false, value)
        } else {
            return Err(self.bad(format!(
                "package '{package}': cannot read when '{statement}'; write VAR = value or \
                 VAR != value"
            )));
        };
        let var = var.trim();
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(self.bad(format!(
                "package '{package}': '{var}' in when '{statement}' is not a variable name; \
                 write VAR = value or VAR != value"
            )));
        }
        let Some(actual) = self.env.get(var) else {
            return Err(self.bad(format!(
                "package '{package}': when '{statement}' needs {var}, which is not set; set it \
                 in the build environment"
            )));
        };
        Ok((actual == value.trim()) != negate)
    }
}

/// Whether `arch` is named in a comma-separated list of DIB architecture names.
fn arch_in_list(arch: Arch, list: &str) -> bool {
    list.split(',')
        .filter_map(|name| name.trim().parse::<Arch>().ok())
        .any(|a| a == arch)
}

/// A string or number as the text Python's `str()` would give.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses `path` if it exists; an empty file is an empty list.
fn read_doc(path: &Path) -> Result<Option<Value>, ElementError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ElementError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let has_content = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if !has_content {
        return Ok(Some(Value::Null));
    }
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_str::<Value>(&text).map_err(|e| e.to_string())
    };
    parsed
        .map(Some)
        .map_err(|msg| ElementError::BadPackageInstalls {
            file: PathBuf::from(path),
            msg: format!(
                "not valid {}: {}; fix the syntax",
                syntax_name(path),
                one_line(&msg)
            ),
        })
}

/// The syntax `path` is parsed as, for messages.
fn syntax_name(path: &Path) -> &'static str {
    if path.extension().is_some_and(|e| e == "json") {
        "JSON"
    } else {
        "YAML"
    }
}

/// The first line of a parser message: the rest is a source snippet, which
/// would break the one-line error convention.
fn one_line(msg: &str) -> String {
    let first = msg
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("parse error");
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::discover::Library;
    use super::super::discover::testutil::{element, file};
    use super::*;

    fn plan_for(yaml: &str, arch: Arch, env: &[(&str, &str)]) -> Result<PackagePlan, ElementError> {
        let dir = tempfile::tempdir().unwrap();
        let e = element(dir.path(), "elem", &[], &[]);
        file(&e, "package-installs.yaml", yaml, 0o644);
        let lib = Library::discover(&[dir.path().to_path_buf()]).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        package_plan(&[lib.get("elem").unwrap().clone()], arch, &env)
    }

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn null_empty_and_map_forms() {
        let plan = plan_for(
            "b-pkg:\na-pkg: ''\ngrub2:\n  phase: pre-install.d\nnm:\n  uninstall: true\n\
             late:\n  phase: post-install.d\n  uninstall:\nkept:\n  uninstall: false\n",
            Arch::Amd64,
            &[],
        )
        .unwrap();
        assert_eq!(
            plan.install_in(Phase::Install),
            v(&["a-pkg", "b-pkg", "kept"])
        );
        assert_eq!(plan.install_in(Phase::PreInstall), v(&["grub2"]));
        assert_eq!(plan.uninstall_in(Phase::Install), v(&["nm"]));
        assert_eq!(plan.uninstall_in(Phase::PostInstall), v(&["late"]));
        assert!(plan.install_in(Phase::PostInstall).is_empty());
    }

    #[test]
    fn arch_and_not_arch() {
        let yaml = "both-spellings:\n  arch: \"x86_64, ppc64le\"\n\
                    debian-amd:\n  arch: amd64\n\
                    power-only:\n  arch: ppc64el\n\
                    not-power:\n  not-arch: ppc64le, arm64\n\
                    arm-only:\n  arch: arm64\n";
        let amd = plan_for(yaml, Arch::Amd64, &[]).unwrap();
        assert_eq!(
            amd.install_in(Phase::Install),
            v(&["both-spellings", "debian-amd", "not-power"])
        );
        let ppc = plan_for(yaml, Arch::Ppc64le, &[]).unwrap();
        assert_eq!(
            ppc.install_in(Phase::Install),
            v(&["both-spellings", "power-only"])
        );

        let err =
            plan_for("x:\n  arch: amd64\n  not-arch: ppc64el\n", Arch::Amd64, &[]).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn list_form_and_when() {
        let yaml = "linux-image:\n\
                    \x20 - not-arch: ppc64el\n\
                    \x20   when: DIB_KERNEL = generic\n\
                    \x20 - arch: ppc64el\n\
                    \x20   when:\n\
                    \x20     - DIB_RELEASE != bookworm\n\
                    \x20     - DIB_KERNEL=generic\n\
                    \x20   phase: post-install.d\n\
                    feature:\n  when: DIB_FEATURE=1\n\
                    no-feature:\n  when: DIB_FEATURE != 1\n";
        let env = [
            ("DIB_KERNEL", "generic"),
            ("DIB_RELEASE", "trixie"),
            ("DIB_FEATURE", "1"),
        ];
        let amd = plan_for(yaml, Arch::Amd64, &env).unwrap();
        assert_eq!(
            amd.install_in(Phase::Install),
            v(&["feature", "linux-image"])
        );
        assert!(amd.install_in(Phase::PostInstall).is_empty());

        let ppc = plan_for(yaml, Arch::Ppc64le, &env).unwrap();
        assert_eq!(ppc.install_in(Phase::Install), v(&["feature"]));
        assert_eq!(ppc.install_in(Phase::PostInstall), v(&["linux-image"]));

        let env = [
            ("DIB_KERNEL", "generic"),
            ("DIB_RELEASE", "bookworm"),
            ("DIB_FEATURE", "0"),
        ];
        let ppc = plan_for(yaml, Arch::Ppc64le, &env).unwrap();
        assert_eq!(ppc.install_in(Phase::Install), v(&["no-feature"]));
        assert!(ppc.install_in(Phase::PostInstall).is_empty());
    }

    #[test]
    fn when_with_unset_variable_is_an_error() {
        let err = plan_for("p:\n  when: MISSING_VAR = 1\n", Arch::Amd64, &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("MISSING_VAR"), "{msg}");
        assert!(msg.contains("package-installs.yaml"), "{msg}");

        let err = plan_for("p:\n  when: just words\n", Arch::Amd64, &[]).unwrap_err();
        assert!(err.to_string().contains("VAR = value"), "{err}");
    }

    #[test]
    fn python_version_and_installtype() {
        let yaml = "python3-dev:\n  dib_python_version: 3\npython-dev:\n  dib_python_version: 2\n\
                    from-source:\n  installtype: source\nfrom-package:\n  installtype: package\n";
        let plan = plan_for(yaml, Arch::Amd64, &[("DIB_PYTHON_VERSION", "3")]).unwrap();
        assert_eq!(
            plan.install_in(Phase::Install),
            v(&["from-source", "python3-dev"])
        );
        let plan = plan_for(yaml, Arch::Amd64, &[("DIB_INSTALLTYPE_elem", "package")]).unwrap();
        assert_eq!(plan.install_in(Phase::Install), v(&["from-package"]));
    }

    #[test]
    fn unsupported_keys_and_phases_name_the_file() {
        let err = plan_for("p:\n  pkg-map: x\n", Arch::Amd64, &[]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ElementError::BadPackageInstalls { .. }));
        assert!(msg.contains("package-installs.yaml"), "{msg}");
        assert!(msg.contains("'pkg-map'"), "{msg}");

        let err = plan_for("p:\n  phase: finalise.d\n", Arch::Amd64, &[]).unwrap_err();
        assert!(err.to_string().contains("finalise.d"), "{err}");

        let err = plan_for("- a\n- b\n", Arch::Amd64, &[]).unwrap_err();
        assert!(err.to_string().contains("mapping"), "{err}");

        let err = plan_for("p: [unclosed\n", Arch::Amd64, &[]).unwrap_err();
        assert!(err.to_string().contains("not valid YAML"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn merges_elements_and_deduplicates() {
        let dir = tempfile::tempdir().unwrap();
        let a = element(dir.path(), "a", &[], &[]);
        let b = element(dir.path(), "b", &[], &[]);
        element(dir.path(), "c", &[], &[]);
        file(&a, "package-installs.yaml", "# comment only\n", 0o644);
        file(&b, "package-installs.yaml", "sudo:\nless:\n", 0o644);
        file(
            &b,
            "package-installs.json",
            "{\"sudo\": null, \"curl\": {\"phase\": \"pre-install.d\"}}",
            0o644,
        );
        file(&a, "static/placeholder", "", 0o644);
        let lib = Library::discover(&[dir.path().to_path_buf()]).unwrap();
        let elements: Vec<Element> = lib.elements().cloned().collect();
        let plan = package_plan(&elements, Arch::Amd64, &BTreeMap::new()).unwrap();
        assert_eq!(plan.install_in(Phase::Install), v(&["less", "sudo"]));
        assert_eq!(plan.install_in(Phase::PreInstall), v(&["curl"]));
        assert!(plan.uninstall.is_empty());
        assert!(!plan.is_empty());
    }

    #[test]
    fn shipped_vm_element_per_arch() {
        let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("elements");
        let installs = builtin.join("vm/package-installs.yaml");
        assert!(installs.is_file(), "the shipped vm element lacks {}", installs.display());
        let lib = Library::discover(&[builtin]).unwrap();
        let vm = [lib.get("vm").unwrap().clone()];
        let amd = package_plan(&vm, Arch::Amd64, &BTreeMap::new()).unwrap();
        let ppc = package_plan(&vm, Arch::Ppc64le, &BTreeMap::new()).unwrap();
        assert_ne!(amd, ppc);
    }
}
