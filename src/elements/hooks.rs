//! Build phases and the hooks, environment files and static trees that the
//! elements contribute to them.
//!
//! DIB copies every element's hook directories into one merged tree and runs
//! each phase's directory with `dib-run-parts`. The functions here compute the
//! same result without copying:
//!
//! - A file name may appear in a given directory of only one element; DIB
//!   aborts on a duplicate ("There is a duplicated hook in your elements").
//!   That applies to every file, executable or not, and to `environment.d`.
//! - Hooks are the executable regular files (symlinks followed) whose names
//!   match `^[0-9A-Za-z_-]+$`; others are skipped (DIB skips them silently,
//!   we warn).
//! - Hooks run in `LC_ALL=C sort -n` order: by leading number, then bytewise.
//!   So `9-x` runs before `10-y`, and names without a number sort as 0.
//! - `environment.d` files (executable or not) whose names match
//!   `^[0-9A-Za-z_.-]+$` are sourced before every phase. DIB sorts their full
//!   paths with `sort -n`; a path starts with `/`, never a digit, so that is a
//!   plain bytewise order of the names.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ElementError;
use super::discover::Element;

/// A build phase: one hook directory, run at a fixed point of the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// `root.d`: create the initial root tree (outside the chroot).
    Root,
    /// `extra-data.d`: copy data from the host into the hooks tree (outside).
    ExtraData,
    /// `pre-install.d`: prepare package sources (in the chroot).
    PreInstall,
    /// `install.d`: install and configure software (in the chroot).
    Install,
    /// `post-install.d`: tidy up after installing (in the chroot).
    PostInstall,
    /// `post-root.d`: work on the finished tree from the host (outside).
    PostRoot,
    /// `block-device.d`: customise the block device (outside).
    BlockDevice,
    /// `pre-finalise.d`: after the tree is copied into the mounted image (outside).
    PreFinalise,
    /// `finalise.d`: final tuning inside the image, e.g. the bootloader (in the chroot).
    Finalise,
    /// `cleanup.d`: clean the image's tree from the host (outside).
    Cleanup,
}

impl Phase {
    /// Every phase, in the order DIB's `disk-image-create` runs them.
    pub const ALL: [Phase; 10] = [
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
        Phase::BlockDevice,
        Phase::PreFinalise,
        Phase::Finalise,
        Phase::Cleanup,
    ];

    /// The hook directory's name inside an element, e.g. `install.d`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Phase::Root => "root.d",
            Phase::ExtraData => "extra-data.d",
            Phase::PreInstall => "pre-install.d",
            Phase::Install => "install.d",
            Phase::PostInstall => "post-install.d",
            Phase::PostRoot => "post-root.d",
            Phase::BlockDevice => "block-device.d",
            Phase::PreFinalise => "pre-finalise.d",
            Phase::Finalise => "finalise.d",
            Phase::Cleanup => "cleanup.d",
        }
    }

    /// Whether the phase's hooks run inside the image's chroot. DIB runs
    /// `pre-finalise.d` with `run_d` (on the host), unlike `finalise.d`.
    pub fn in_chroot(self) -> bool {
        matches!(
            self,
            Phase::PreInstall | Phase::Install | Phase::PostInstall | Phase::Finalise
        )
    }

    /// The phase whose directory is called `name` (`install.d`), if any.
    pub fn from_dir_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.dir_name() == name)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// One hook script to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The element it comes from.
    pub element: String,
    /// Its file name, e.g. `50-bootloader`.
    pub name: String,
    /// Its full path.
    pub path: PathBuf,
}

/// All elements' hooks for `phase`, merged and in run order.
pub fn hooks(elements: &[Element], phase: Phase) -> Result<Vec<Hook>, ElementError> {
    let mut out = Vec::new();
    for (name, (element, path)) in merged_dir(elements, phase.dir_name())? {
        let mode = std::fs::metadata(&path)
            .map_err(|source| ElementError::Io {
                path: path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o111 == 0 {
            tracing::warn!(
                "skipping {}: not executable (chmod +x to run it)",
                path.display()
            );
            continue;
        }
        if !valid_name(&name, false) {
            tracing::warn!(
                "skipping {}: hook names may only contain letters, digits, '-' and '_'",
                path.display()
            );
            continue;
        }
        out.push(Hook {
            element: element.to_string(),
            name,
            path,
        });
    }
    out.sort_by(|a, b| run_parts_cmp(&a.name, &b.name));
    Ok(out)
}

/// All elements' `environment.d` files, merged, in the order to source them.
pub fn environment_files(elements: &[Element]) -> Result<Vec<PathBuf>, ElementError> {
    let mut out = Vec::new();
    // The map is keyed by file name, so this is already DIB's bytewise order.
    for (name, (_, path)) in merged_dir(elements, "environment.d")? {
        if valid_name(&name, true) {
            out.push(path);
        } else {
            tracing::warn!(
                "skipping {}: environment file names may only contain letters, digits, \
                 '.', '-' and '_'",
                path.display()
            );
        }
    }
    Ok(out)
}

/// The elements' `static/` trees, in element order: copy them into the
/// image's root in this order, so with [`Library::resolve`](super::Library::resolve)'s
/// order an element's files win over those of the elements it depends on.
pub fn static_dirs(elements: &[Element]) -> Vec<PathBuf> {
    elements
        .iter()
        .map(|e| e.path.join("static"))
        .filter(|p| p.is_dir())
        .collect()
}

/// The regular files (symlinks followed) in every element's `dir`, by file
/// name, with the element each came from; a name in two elements is an error.
fn merged_dir<'a>(
    elements: &'a [Element],
    dir: &str,
) -> Result<BTreeMap<String, (&'a str, PathBuf)>, ElementError> {
    let mut merged: BTreeMap<String, (&'a str, PathBuf)> = BTreeMap::new();
    for element in elements {
        let hook_dir = element.path.join(dir);
        if !hook_dir.is_dir() {
            continue;
        }
        for path in regular_files(&hook_dir)? {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else { continue };
            if let Some((_, first)) = merged.get(&name) {
                return Err(ElementError::DuplicateHook {
                    dir: dir.to_string(),
                    name,
                    first: first.clone(),
                    second: path,
                });
            }
            merged.insert(name, (element.name.as_str(), path));
        }
    }
    Ok(merged)
}

/// Regular files directly in `dir`, sorted; subdirectories are not hooks.
fn regular_files(dir: &Path) -> Result<Vec<PathBuf>, ElementError> {
    let io_err = |source| ElementError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        if path.is_file() {
            out.push(path);
        } else {
            tracing::debug!("ignoring {}: not a regular file", path.display());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `name` matches dib-run-parts' file name pattern (`.` is allowed
/// only for environment files).
fn valid_name(name: &str, allow_dot: bool) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (allow_dot && c == '.'))
}

/// `LC_ALL=C sort -n` for two lines: compare their leading numbers, then,
/// when those are equal, the whole lines bytewise.
fn run_parts_cmp(a: &str, b: &str) -> Ordering {
    leading_number(a)
        .cmp(&leading_number(b))
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// A line's leading number as `sort -n` reads it (optional `-`, digits,
/// optional `.` and digits; no number means 0), in a form that orders
/// correctly without overflowing on long digit runs.
fn leading_number(s: &str) -> Number<'_> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let int = rest[..int_len].trim_start_matches('0');
    let frac = match rest[int_len..].strip_prefix('.') {
        Some(after) => {
            let len = after.bytes().take_while(u8::is_ascii_digit).count();
            after[..len].trim_end_matches('0')
        }
        None => "",
    };
    let zero = int.is_empty() && frac.is_empty();
    Number {
        negative: negative && !zero,
        int,
        frac,
    }
}

/// A decimal number split into sign, integer digits (no leading zeros) and
/// fraction digits (no trailing zeros).
#[derive(PartialEq, Eq)]
struct Number<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
}

impl Ord for Number<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let magnitude = || {
            self.int
                .len()
                .cmp(&other.int.len())
                .then_with(|| self.int.cmp(other.int))
                .then_with(|| self.frac.cmp(other.frac))
        };
        match (self.negative, other.negative) {
            (false, false) => magnitude(),
            (true, true) => magnitude().reverse(),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
        }
    }
}

impl PartialOrd for Number<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::super::discover::Library;
    use super::super::discover::testutil::{element, file};
    use super::*;

    fn load(dir: &Path, names: &[&str]) -> Vec<Element> {
        let lib = Library::discover(&[dir.to_path_buf()]).unwrap();
        names.iter().map(|n| lib.get(n).unwrap().clone()).collect()
    }

    #[test]
    fn phases_follow_dib() {
        let dirs: Vec<&str> = Phase::ALL.iter().map(|p| p.dir_name()).collect();
        assert_eq!(
            dirs,
            vec![
                "root.d",
                "extra-data.d",
                "pre-install.d",
                "install.d",
                "post-install.d",
                "post-root.d",
                "block-device.d",
                "pre-finalise.d",
                "finalise.d",
                "cleanup.d"
            ]
        );
        let inside: Vec<Phase> = Phase::ALL.into_iter().filter(|p| p.in_chroot()).collect();
        assert_eq!(
            inside,
            vec![
                Phase::PreInstall,
                Phase::Install,
                Phase::PostInstall,
                Phase::Finalise
            ]
        );
        assert_eq!(Phase::from_dir_name("post-root.d"), Some(Phase::PostRoot));
        assert_eq!(Phase::from_dir_name("post-root"), None);
        let mut sorted = Phase::ALL;
        sorted.sort();
        assert_eq!(sorted, Phase::ALL);
    }

    #[test]
    fn hooks_merge_across_elements_in_run_parts_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = element(dir.path(), "a", &[], &[]);
        let b = element(dir.path(), "b", &[], &[]);
        file(&a, "install.d/50-a", "#!/bin/sh\n", 0o755);
        file(&a, "install.d/9-a", "#!/bin/sh\n", 0o755);
        file(&b, "install.d/10-b", "#!/bin/sh\n", 0o755);
        file(&b, "install.d/50-B", "#!/bin/sh\n", 0o755);
        file(&b, "install.d/setup", "#!/bin/sh\n", 0o755);
        file(&b, "finalise.d/90-b", "#!/bin/sh\n", 0o755);

        let elements = load(dir.path(), &["a", "b"]);
        let got = hooks(&elements, Phase::Install).unwrap();
        let names: Vec<&str> = got.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, vec!["setup", "9-a", "10-b", "50-B", "50-a"]);
        assert_eq!(got[1].element, "a");
        assert_eq!(got[1].path, a.join("install.d/9-a"));
        assert_eq!(got[2].element, "b");
        assert!(hooks(&elements, Phase::Root).unwrap().is_empty());
    }

    #[test]
    fn duplicate_hook_name_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = element(dir.path(), "a", &[], &[]);
        let b = element(dir.path(), "b", &[], &[]);
        file(&a, "install.d/50-setup", "", 0o755);
        // Non-executable still collides: DIB merges every file.
        file(&b, "install.d/50-setup", "", 0o644);

        let elements = load(dir.path(), &["a", "b"]);
        let err = hooks(&elements, Phase::Install).unwrap_err();
        assert!(matches!(&err, ElementError::DuplicateHook { dir, name, .. }
            if dir == "install.d" && name == "50-setup"));
        let msg = err.to_string();
        assert!(msg.contains("install.d/50-setup"), "{msg}");
        assert!(msg.contains(&a.display().to_string()), "{msg}");
        assert!(msg.contains(&b.display().to_string()), "{msg}");
        // Other phases are unaffected.
        assert!(hooks(&elements, Phase::Finalise).unwrap().is_empty());
    }

    #[test]
    fn non_executable_and_oddly_named_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = element(dir.path(), "a", &[], &[]);
        file(&a, "post-install.d/10-run", "", 0o700);
        file(&a, "post-install.d/20-data", "", 0o644);
        file(&a, "post-install.d/30-script.sh", "", 0o755);
        file(&a, "post-install.d/subdir/40-nested", "", 0o755);

        let elements = load(dir.path(), &["a"]);
        let got = hooks(&elements, Phase::PostInstall).unwrap();
        let names: Vec<&str> = got.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, vec!["10-run"]);
    }

    #[test]
    fn environment_files_sorted_by_name_across_elements() {
        let dir = tempfile::tempdir().unwrap();
        let a = element(dir.path(), "a", &[], &[]);
        let b = element(dir.path(), "b", &[], &[]);
        file(&a, "environment.d/20-a.bash", "", 0o644);
        file(&a, "environment.d/9-a", "", 0o644);
        file(&b, "environment.d/10-b.bash", "", 0o644);
        file(&b, "environment.d/bad name", "", 0o644);

        let elements = load(dir.path(), &["b", "a"]);
        let got = environment_files(&elements).unwrap();
        // Bytewise, as DIB's `sort -n` over full paths turns out to be.
        assert_eq!(
            got,
            vec![
                b.join("environment.d/10-b.bash"),
                a.join("environment.d/20-a.bash"),
                a.join("environment.d/9-a"),
            ]
        );
    }

    #[test]
    fn environment_duplicates_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = element(dir.path(), "a", &[], &[]);
        let b = element(dir.path(), "b", &[], &[]);
        file(&a, "environment.d/10-env", "", 0o644);
        file(&b, "environment.d/10-env", "", 0o644);
        let elements = load(dir.path(), &["a", "b"]);
        let err = environment_files(&elements).unwrap_err();
        assert!(matches!(err, ElementError::DuplicateHook { dir, .. } if dir == "environment.d"));
    }

    #[test]
    fn static_dirs_in_element_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = element(dir.path(), "a", &[], &[]);
        let b = element(dir.path(), "b", &[], &[]);
        element(dir.path(), "c", &[], &[]);
        file(&a, "static/etc/a.conf", "", 0o644);
        file(&b, "static/etc/b.conf", "", 0o644);
        let elements = load(dir.path(), &["b", "c", "a"]);
        assert_eq!(
            static_dirs(&elements),
            vec![b.join("static"), a.join("static")]
        );
    }

    #[test]
    fn run_parts_order_matches_sort_n() {
        let mut names = vec![
            "100-z", "20-a", "x", "-5-neg", "020-b", "3", "1.5-a", "1-a", "0-a",
        ];
        names.sort_by(|a, b| run_parts_cmp(a, b));
        assert_eq!(
            names,
            vec![
                "-5-neg", "0-a", "x", "1-a", "1.5-a", "3", "020-b", "20-a", "100-z"
            ]
        );
    }
}
