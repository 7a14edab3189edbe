//! Expanding requested elements into the full, ordered element set.
//!
//! Semantics follow DIB's `element-info`: the set is the transitive closure
//! over `element-deps`; a name that some element in the set lists in
//! `element-provides` is satisfied by that element and is not itself included
//! (it need not even exist); requesting an element that another included
//! element provides is an error. Two deliberate differences: two elements
//! providing the same name is an error here (DIB silently takes both), and
//! dependency cycles are rejected (some DIB versions tolerate them).
//!
//! DIB's expansion is a single pass whose result can depend on the order it
//! meets names in (an element met before its provider keeps its dependencies).
//! Here the provided names are iterated to a fixed point instead, so the
//! result depends only on the element files.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::ElementError;
use super::discover::{Element, Library};

/// One pass over the dependency graph with a given set of provided names.
struct Walk<'a> {
    /// Elements in the set, by name.
    included: BTreeMap<&'a str, &'a Element>,
    /// Names found nowhere, with the element that asked for them.
    missing: Vec<(String, Option<String>)>,
    /// Names that were not expanded because they were taken to be provided.
    skipped: BTreeSet<String>,
}

impl Library {
    /// The requested elements and everything they depend on, dependencies
    /// before dependents (ties broken alphabetically).
    pub fn resolve(&self, requested: &[String]) -> Result<Vec<Element>, ElementError> {
        let requested: BTreeSet<&str> = requested.iter().map(String::as_str).collect();

        // Provided names only ever grow, so this terminates.
        let mut provided_guess: BTreeSet<String> = BTreeSet::new();
        let walk = loop {
            let walk = self.walk(&requested, &provided_guess);
            let provided: BTreeSet<String> = providers(&walk.included).into_keys().collect();
            if provided.is_subset(&provided_guess) {
                break walk;
            }
            provided_guess.extend(provided);
        };

        if let Some((name, required_by)) = walk.missing.first() {
            return Err(ElementError::Missing {
                name: name.clone(),
                required_by: required_by.clone(),
                searched: self.dirs_display(),
            });
        }

        let providers = providers(&walk.included);
        for (name, by) in &providers {
            if by.len() > 1 {
                let quoted: Vec<String> = by.iter().map(|b| format!("'{b}'")).collect();
                return Err(ElementError::Conflict {
                    name: name.clone(),
                    detail: format!(
                        "{} all provide it; include only one of them",
                        quoted.join(", ")
                    ),
                });
            }
        }
        for name in &requested {
            if let Some(by) = providers.get(*name) {
                return Err(ElementError::Conflict {
                    name: name.to_string(),
                    detail: format!(
                        "it was requested, but '{}' (also in the image) provides it; \
                         request only one of the two",
                        by.join("', '")
                    ),
                });
            }
        }
        if let Some(name) = walk.skipped.iter().find(|n| !providers.contains_key(*n)) {
            return Err(ElementError::Conflict {
                name: name.clone(),
                detail: "it is provided only by elements that element-provides itself \
                         removes from the image; request the intended provider explicitly"
                    .to_string(),
            });
        }

        let order = build_order(&walk.included, &providers)?;
        Ok(order
            .into_iter()
            .map(|name| walk.included[name].clone())
            .collect())
    }

    /// Breadth-first closure from `requested`, not expanding `provided` names
    /// (unless requested, so that the conflict is reported, as DIB does).
    fn walk<'a>(&'a self, requested: &BTreeSet<&str>, provided: &BTreeSet<String>) -> Walk<'a> {
        let mut walk = Walk {
            included: BTreeMap::new(),
            missing: Vec::new(),
            skipped: BTreeSet::new(),
        };
        let mut queue: VecDeque<(String, Option<String>)> =
            requested.iter().map(|r| (r.to_string(), None)).collect();
        while let Some((name, required_by)) = queue.pop_front() {
            if walk.included.contains_key(name.as_str()) {
                continue;
            }
            let is_requested = requested.contains(name.as_str());
            if provided.contains(&name) && !is_requested {
                walk.skipped.insert(name);
                continue;
            }
            match self.get(&name) {
                Some(element) => {
                    walk.included.insert(element.name.as_str(), element);
                    for dep in &element.deps {
                        queue.push_back((dep.clone(), Some(element.name.clone())));
                    }
                }
                None if provided.contains(&name) => {
                    walk.skipped.insert(name);
                }
                None => {
                    if !walk.missing.iter().any(|(m, _)| *m == name) {
                        walk.missing.push((name, required_by));
                    }
                }
            }
        }
        walk
    }
}

/// Provided name -> the included elements providing it (an element providing
/// its own name is ignored: that says nothing).
fn providers(included: &BTreeMap<&str, &Element>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for element in included.values() {
        for p in element.provides.iter().filter(|p| **p != element.name) {
            out.entry(p.clone()).or_default().push(element.name.clone());
        }
    }
    out
}

/// Topological order of `included`, each element after what it depends on; a
/// dependency satisfied through `element-provides` orders after its provider.
fn build_order<'a>(
    included: &BTreeMap<&'a str, &'a Element>,
    providers: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<&'a str>, ElementError> {
    let mut deps: BTreeMap<&'a str, BTreeSet<&'a str>> = BTreeMap::new();
    for (&name, element) in included {
        let mut targets = BTreeSet::new();
        for dep in &element.deps {
            let target = if let Some((&t, _)) = included.get_key_value(dep.as_str()) {
                Some(t)
            } else {
                providers
                    .get(dep)
                    .and_then(|by| by.first())
                    .and_then(|p| included.get_key_value(p.as_str()))
                    .map(|(&t, _)| t)
                    // Depending on something one provides oneself is not a loop.
                    .filter(|&t| t != name)
            };
            targets.extend(target);
        }
        deps.insert(name, targets);
    }

    if let Some(path) = find_cycle(&deps) {
        return Err(ElementError::Cycle { path });
    }

    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    for (&name, targets) in &deps {
        waiting.insert(name, targets.len());
        for &t in targets {
            dependents.entry(t).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(&name, _)| name)
        .collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(name) = ready.pop_first() {
        order.push(name);
        for &d in dependents.get(name).map(Vec::as_slice).unwrap_or_default() {
            if let Some(n) = waiting.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(d);
                }
            }
        }
    }
    Ok(order)
}

/// The first dependency cycle found (searching in name order), as the path
/// around it with the starting element repeated at the end.
fn find_cycle(deps: &BTreeMap<&str, BTreeSet<&str>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for &start in deps.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Iterative DFS: (node, its remaining deps) with the path kept as the stack.
        let mut stack: Vec<(&str, Vec<&str>)> = Vec::new();
        marks.insert(start, Mark::Active);
        stack.push((start, deps[start].iter().rev().copied().collect()));
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match marks.get(next) {
                    Some(Mark::Active) => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut path: Vec<String> =
                            stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                        path.push(next.to_string());
                        return Some(path);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(next, Mark::Active);
                        let next_deps = deps.get(next).map(|d| d.iter().rev().copied().collect());
                        stack.push((next, next_deps.unwrap_or_default()));
                    }
                },
                None => {
                    marks.insert(node, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::discover::testutil::element;
    use super::*;

    fn names(elements: &[Element]) -> Vec<&str> {
        elements.iter().map(|e| e.name.as_str()).collect()
    }

    fn req(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn library(build: impl FnOnce(&std::path::Path)) -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let lib = Library::discover(&[dir.path().to_path_buf()]).unwrap();
        (dir, lib)
    }

    #[test]
    fn closure_in_dependency_order() {
        let (_d, lib) = library(|d| {
            element(d, "mariadb", &["datastore", "vm"], &[]);
            element(d, "datastore", &["debian"], &[]);
            element(d, "vm", &["debian"], &[]);
            element(d, "debian", &[], &[]);
            element(d, "unused", &[], &[]);
        });
        let out = lib.resolve(&req(&["mariadb"])).unwrap();
        assert_eq!(names(&out), vec!["debian", "datastore", "vm", "mariadb"]);
    }

    #[test]
    fn order_is_alphabetical_among_independent_elements() {
        let (_d, lib) = library(|d| {
            element(d, "zeta", &[], &[]);
            element(d, "alpha", &["zeta"], &[]);
            element(d, "mid", &[], &[]);
        });
        let out = lib.resolve(&req(&["mid", "alpha", "mid"])).unwrap();
        assert_eq!(names(&out), vec!["mid", "zeta", "alpha"]);
    }

    #[test]
    fn provided_dependency_need_not_exist() {
        let (_d, lib) = library(|d| {
            element(d, "vm", &["operating-system"], &[]);
            element(d, "debian", &[], &["operating-system"]);
        });
        let out = lib.resolve(&req(&["vm", "debian"])).unwrap();
        // vm's dependency is met by debian, so debian orders first.
        assert_eq!(names(&out), vec!["debian", "vm"]);
    }

    #[test]
    fn provider_replaces_an_existing_element_and_its_deps() {
        let (_d, lib) = library(|d| {
            element(d, "app", &["block-device", "zzz-later"], &[]);
            element(d, "block-device", &["parted"], &[]);
            element(d, "parted", &[], &[]);
            element(d, "zzz-later", &["block-device-gpt"], &[]);
            element(d, "block-device-gpt", &[], &["block-device"]);
        });
        let out = lib.resolve(&req(&["app"])).unwrap();
        assert_eq!(names(&out), vec!["block-device-gpt", "zzz-later", "app"]);
    }

    #[test]
    fn unprovided_missing_dependency_is_an_error() {
        let (dir, lib) = library(|d| {
            element(d, "vm", &["operating-system"], &[]);
        });
        let err = lib.resolve(&req(&["vm"])).unwrap_err();
        match &err {
            ElementError::Missing {
                name, required_by, ..
            } => {
                assert_eq!(name, "operating-system");
                assert_eq!(required_by.as_deref(), Some("vm"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("'operating-system' (required by 'vm')"),
            "{msg}"
        );
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("ELEMENTS_PATH"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn missing_requested_element_text() {
        let (_d, lib) = library(|d| {
            element(d, "vm", &[], &[]);
        });
        let err = lib.resolve(&req(&["mysql"])).unwrap_err();
        assert!(matches!(
            &err,
            ElementError::Missing {
                required_by: None,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.starts_with("element 'mysql' not found in "), "{msg}");
    }

    #[test]
    fn two_providers_conflict() {
        let (_d, lib) = library(|d| {
            element(d, "debian", &[], &["operating-system"]);
            element(d, "ubuntu", &[], &["operating-system"]);
        });
        let err = lib.resolve(&req(&["debian", "ubuntu"])).unwrap_err();
        assert!(matches!(&err, ElementError::Conflict { name, .. } if name == "operating-system"));
        let msg = err.to_string();
        assert!(msg.contains("'debian', 'ubuntu'"), "{msg}");
    }

    #[test]
    fn requested_and_provided_conflict() {
        let (_d, lib) = library(|d| {
            element(d, "block-device-mbr", &[], &[]);
            element(d, "block-device-gpt", &[], &["block-device-mbr"]);
        });
        let err = lib
            .resolve(&req(&["block-device-mbr", "block-device-gpt"]))
            .unwrap_err();
        assert!(
            matches!(&err, ElementError::Conflict { name, .. } if name == "block-device-mbr"),
            "{err}"
        );
        assert!(err.to_string().contains("'block-device-gpt'"));
    }

    #[test]
    fn two_element_cycle() {
        let (_d, lib) = library(|d| {
            element(d, "a", &["b"], &[]);
            element(d, "b", &["a"], &[]);
        });
        let err = lib.resolve(&req(&["a"])).unwrap_err();
        assert!(matches!(&err, ElementError::Cycle { path } if path == &["a", "b", "a"]));
        assert!(
            err.to_string()
                .starts_with("element dependency cycle: a -> b -> a")
        );
    }

    #[test]
    fn self_cycle() {
        let (_d, lib) = library(|d| {
            element(d, "a", &["a"], &[]);
        });
        let err = lib.resolve(&req(&["a"])).unwrap_err();
        assert!(matches!(&err, ElementError::Cycle { path } if path == &["a", "a"]));
    }

    #[test]
    fn longer_cycle_reports_only_the_loop() {
        let (_d, lib) = library(|d| {
            element(d, "top", &["x"], &[]);
            element(d, "x", &["y"], &[]);
            element(d, "y", &["z"], &[]);
            element(d, "z", &["x"], &[]);
        });
        let err = lib.resolve(&req(&["top"])).unwrap_err();
        assert!(matches!(&err, ElementError::Cycle { path } if path == &["x", "y", "z", "x"]));
    }

    #[test]
    fn shipped_elements_resolve() {
        let builtin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("elements");
        // The elements ship in the repository: missing ones are a failure,
        // not a reason to skip.
        for e in ["mariadb", "debian", "vm"] {
            assert!(builtin.join(e).is_dir(), "the shipped element {e} is missing from {}", builtin.display());
        }
        let lib = Library::discover(&[builtin]).unwrap();
        let out = lib.resolve(&req(&["debian", "vm", "mariadb"])).unwrap();
        let order = names(&out);
        let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
        assert!(pos("datastore") < pos("mariadb"));
    }
}
