//! Finding elements: the search path and the library of elements on it.
//!
//! Precedence differs from DIB in one respect. DIB's `ELEMENTS_PATH` is
//! first-wins and DIB puts its own elements last, so user elements override
//! built-in ones. Here the built-in directory comes first and a *later*
//! directory overrides an earlier one: the user's elements still override the
//! built-in ones, but among several `ELEMENTS_PATH` entries the last one wins.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use super::ElementError;

/// One element: a directory whose name is the element's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The element's name (its directory's name).
    pub name: String,
    /// The element's directory.
    pub path: PathBuf,
    /// Names from `element-deps`, sorted and without duplicates.
    pub deps: Vec<String>,
    /// Names from `element-provides`, sorted and without duplicates.
    pub provides: Vec<String>,
}

impl Element {
    /// Reads the element in directory `path`.
    pub fn load(path: &Path) -> Result<Element, ElementError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Element {
            name,
            path: path.to_path_buf(),
            deps: read_name_list(&path.join("element-deps"))?,
            provides: read_name_list(&path.join("element-provides"))?,
        })
    }
}

/// Every element visible on a search path, after overrides.
#[derive(Debug, Clone, Default)]
pub struct Library {
    elements: BTreeMap<String, Element>,
    dirs: Vec<PathBuf>,
}

impl Library {
    /// Reads every element in `dirs`; for a name found in several directories,
    /// the last directory's element wins.
    pub fn discover(dirs: &[PathBuf]) -> Result<Library, ElementError> {
        let mut elements: BTreeMap<String, Element> = BTreeMap::new();
        for dir in dirs {
            if !dir.is_dir() {
                return Err(ElementError::NoSuchPathDir { path: dir.clone() });
            }
            for path in element_dirs(dir)? {
                let element = Element::load(&path)?;
                if let Some(old) = elements.get(&element.name) {
                    tracing::info!(
                        "element {} overrides {}",
                        element.path.display(),
                        old.path.display()
                    );
                }
                elements.insert(element.name.clone(), element);
            }
        }
        Ok(Library {
            elements,
            dirs: dirs.to_vec(),
        })
    }

    /// The element called `name`, if any directory has one.
    pub fn get(&self, name: &str) -> Option<&Element> {
        self.elements.get(name)
    }

    #[cfg(test)]
    /// All elements, sorted by name.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.elements.values()
    }

    /// The searched directories as one colon-separated string, for messages.
    pub fn dirs_display(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        if dirs.is_empty() {
            "(no directories)".to_string()
        } else {
            dirs.join(":")
        }
    }
}

/// The element search path: `builtin`, then each non-empty entry of the
/// colon-separated `ELEMENTS_PATH` environment variable.
pub fn search_path(builtin: &Path) -> Vec<PathBuf> {
    search_path_from(builtin, std::env::var_os("ELEMENTS_PATH").as_deref())
}

/// [`search_path`] with the variable's value passed in, so tests need not
/// touch the process environment.
fn search_path_from(builtin: &Path, elements_path: Option<&OsStr>) -> Vec<PathBuf> {
    let mut dirs = vec![builtin.to_path_buf()];
    if let Some(value) = elements_path {
        dirs.extend(std::env::split_paths(value).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

/// The element directories directly inside `dir`, sorted so that discovery
/// (and its override messages) does not depend on directory order.
fn element_dirs(dir: &Path) -> Result<Vec<PathBuf>, ElementError> {
    let io_err = |source| ElementError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        // Dot-directories are VCS or editor metadata, never elements.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // is_dir follows symlinks, as DIB does, so an element can be linked in.
        if path.is_dir() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads an `element-deps`/`element-provides` file: names separated by
/// whitespace or newlines, `#` starting a comment. A missing file is empty.
fn read_name_list(path: &Path) -> Result<Vec<String>, ElementError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ElementError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut names: Vec<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Helpers shared by the element tests of this module's siblings.
#[cfg(test)]
pub(crate) mod testutil {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    /// Creates element `name` under `dir` with the given deps and provides.
    pub fn element(dir: &Path, name: &str, deps: &[&str], provides: &[&str]) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(&path).unwrap();
        if !deps.is_empty() {
            fs::write(path.join("element-deps"), deps.join("\n") + "\n").unwrap();
        }
        if !provides.is_empty() {
            fs::write(path.join("element-provides"), provides.join("\n") + "\n").unwrap();
        }
        path
    }

    /// Writes `rel` under `base` with `mode`, creating parent directories.
    pub fn file(base: &Path, rel: &str, body: &str, mode: u32) -> PathBuf {
        let path = base.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::element;
    use super::*;

    #[test]
    fn later_directory_overrides_earlier() {
        let builtin = tempfile::tempdir().unwrap();
        let user = tempfile::tempdir().unwrap();
        element(builtin.path(), "vm", &["base"], &[]);
        element(builtin.path(), "base", &[], &[]);
        element(user.path(), "vm", &["custom"], &[]);

        let lib =
            Library::discover(&[builtin.path().to_path_buf(), user.path().to_path_buf()]).unwrap();
        let vm = lib.get("vm").unwrap();
        assert_eq!(vm.path, user.path().join("vm"));
        assert_eq!(vm.deps, vec!["custom"]);
        assert_eq!(lib.get("base").unwrap().path, builtin.path().join("base"));
        assert_eq!(lib.elements().count(), 2);
    }

    #[test]
    fn search_path_appends_elements_path_entries() {
        let builtin = Path::new("/data/elements");
        assert_eq!(
            search_path_from(builtin, None),
            vec![PathBuf::from("/data/elements")]
        );
        let dirs = search_path_from(builtin, Some(OsStr::new("/a::/b:")));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/data/elements"),
                PathBuf::from("/a"),
                PathBuf::from("/b")
            ]
        );
    }

    #[test]
    fn missing_path_directory_is_named() {
        let builtin = tempfile::tempdir().unwrap();
        let gone = builtin.path().join("nope");
        let err = Library::discover(&[builtin.path().to_path_buf(), gone.clone()]).unwrap_err();
        assert!(matches!(&err, ElementError::NoSuchPathDir { path } if *path == gone));
        let msg = err.to_string();
        assert!(msg.contains(&gone.display().to_string()), "{msg}");
        assert!(msg.contains("ELEMENTS_PATH"), "{msg}");
    }

    #[test]
    fn name_lists_skip_comments_and_blanks() {
        let dir = tempfile::tempdir().unwrap();
        let path = element(dir.path(), "x", &[], &[]);
        std::fs::write(
            path.join("element-deps"),
            "# leading comment\nb\n\n  a  # why a\nb\n",
        )
        .unwrap();
        std::fs::write(path.join("element-provides"), "operating-system\n").unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("README"), "not an element").unwrap();

        let lib = Library::discover(&[dir.path().to_path_buf()]).unwrap();
        let x = lib.get("x").unwrap();
        assert_eq!(x.deps, vec!["a", "b"]);
        assert_eq!(x.provides, vec!["operating-system"]);
        assert_eq!(lib.elements().count(), 1);
    }

    #[test]
    fn reads_the_shipped_elements() {
        let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("elements");
        assert!(builtin.is_dir(), "the shipped elements are missing: {}", builtin.display());
        let lib = Library::discover(&[builtin]).unwrap();
        for e in ["debian", "vm", "cloud-init-datasources"] {
            assert!(lib.get(e).is_some(), "shipped element {e} not found");
        }
    }
}
