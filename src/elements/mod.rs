//! DIB-format (diskimage-builder) elements: finding them, expanding their
//! dependencies, and listing what they contribute to a build.
//!
//! This module only reads directories and files; running hooks, sourcing
//! environment files and installing packages is the executor's job. Its parts:
//!
//! - [`discover`]: the element search path and the [`Library`] of elements.
//! - [`graph`]: [`Library::resolve`], the dependency closure in build order.
//! - [`hooks`]: the phases, their merged hook lists, `environment.d` and `static/`.
//! - [`packages`]: `package-installs.yaml` turned into a [`PackagePlan`].
//!
//! Where DIB's behaviour is odd or version-dependent, the choice made here is
//! written next to the code that makes it.

pub mod discover;
pub mod graph;
pub mod hooks;
pub mod packages;

use std::path::PathBuf;

pub use discover::{Element, Library, search_path};
pub use hooks::{Phase, environment_files, hooks, static_dirs};
pub use packages::package_plan;

/// Errors in element discovery and resolution; all of them are the user's to
/// fix, which is why the command layer maps them to the usage exit code.
#[derive(Debug, thiserror::Error)]
pub enum ElementError {
    /// An element named on the command line or in an `element-deps` file does
    /// not exist in any element directory and nothing provides it.
    #[error(
        "element '{name}'{} not found in {searched}; check the name, or add the directory \
         that contains it to ELEMENTS_PATH (colon-separated)",
        required_by.as_ref().map(|r| format!(" (required by '{r}')")).unwrap_or_default()
    )]
    Missing {
        /// The element that was looked for.
        name: String,
        /// The element whose `element-deps` names it; `None` if it was requested directly.
        required_by: Option<String>,
        /// The element directories that were searched, colon-separated.
        searched: String,
    },
    /// The `element-deps` files form a cycle.
    #[error(
        "element dependency cycle: {}; remove one of these entries from its element-deps file",
        path.join(" -> ")
    )]
    Cycle {
        /// The elements around the cycle, the first repeated at the end.
        path: Vec<String>,
    },
    /// `element-provides` makes the element set ambiguous.
    #[error("element-provides conflict over '{name}': {detail}")]
    Conflict {
        /// The provided name in dispute.
        name: String,
        /// What the conflict is and how to resolve it.
        detail: String,
    },
    /// Two elements ship a file with the same name in the same hook directory;
    /// DIB merges those directories into one, so one would overwrite the other.
    #[error(
        "{dir}/{name} exists in two elements ({} and {}); rename one of them, hook file \
         names must be unique across all elements",
        first.display(),
        second.display()
    )]
    DuplicateHook {
        /// The hook directory, e.g. `install.d` or `environment.d`.
        dir: String,
        /// The clashing file name.
        name: String,
        /// The first element's file.
        first: PathBuf,
        /// The second element's file.
        second: PathBuf,
    },
    /// A `package-installs.yaml` (or `.json`) file is malformed or uses
    /// something we do not support.
    #[error("{}: {msg}", file.display())]
    BadPackageInstalls {
        /// The file.
        file: PathBuf,
        /// What is wrong and what to do about it.
        msg: String,
    },
    /// A file or directory of an element could not be read.
    #[error("cannot read {}: {source}; check that it exists and is readable", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A directory on the element search path does not exist.
    #[error(
        "element directory {} does not exist or is not a directory; fix or remove it in \
         ELEMENTS_PATH",
        path.display()
    )]
    NoSuchPathDir {
        /// The directory.
        path: PathBuf,
    },
}
