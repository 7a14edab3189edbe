//! The JSON manifest written beside every image.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::Install;
use crate::catalog::{DbRequest, Resolved};
use crate::settings::AgentSource;

/// What an image is and how it was made.
///
/// A copy is embedded in the image at [`EMBEDDED_PATH`]; that copy lacks
/// what only exists after conversion (the QCOW2's size and checksum).
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// Image name.
    pub name: String,
    /// The dbimage version that built it.
    pub dbimage_version: String,
    /// UTC date of the build.
    pub created: String,
    /// The request as given (normalised).
    pub request: DbRequest,
    /// The catalog row it resolved to (what `dbimage test` reads).
    pub datastore: Resolved,
    /// Where the database came from: the catalog, or the user's -p file.
    pub install: Install,
    /// Installed versions of the database's packages.
    pub database_packages: BTreeMap<String, String>,
    /// For packages from a vendor repository: the source each came from.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<String, String>,
    /// Elements in the order they were applied, with their source directory.
    pub elements: Vec<(String, String)>,
    /// Every installed package and its version.
    pub packages: BTreeMap<String, String>,
    /// The database user and whether an SSH key was installed for it.
    pub user: String,
    /// True when `-k` put a key in the user's authorized_keys.
    pub authorized_key: bool,
    /// The Trove guest agent, when the image has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<GuestAgent>,
    /// Sizes in bytes.
    pub sizes: Sizes,
    /// SHA-256 of the QCOW2 file (absent inside the image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// QCOW2 compression type.
    pub compression: String,
    /// Wall time per phase, in seconds.
    pub timings: Vec<(String, f64)>,
}

/// The Trove guest agent in an image.
#[derive(Debug, Serialize)]
pub struct GuestAgent {
    /// Where its package came from.
    pub source: AgentSource,
    /// Whether its configuration was written at build time.
    pub configured: bool,
    /// The Python packages of its virtualenv and their versions.
    pub python_packages: BTreeMap<String, String>,
}

/// Sizes recorded in the manifest.
#[derive(Debug, Serialize, Deserialize)]
pub struct Sizes {
    /// The root tree before it went onto the disk.
    pub tree: u64,
    /// The disk's virtual size.
    pub disk: u64,
    /// The QCOW2 file (absent inside the image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qcow2: Option<u64>,
}

/// Where the image carries its own manifest.
pub const EMBEDDED_PATH: &str = "etc/dbimage/manifest.json";

/// The part of a manifest that later commands (`test`, `publish`) read; the
/// rest is ignored so that manifests can grow without breaking them.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    /// Image name.
    pub name: String,
    /// The catalog row the image was built from.
    pub datastore: Resolved,
    /// SHA-256 of the QCOW2 file.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The manifest beside an image: `images/NAME.qcow2` → `images/NAME.json`.
pub fn path_beside(image: &Path) -> std::path::PathBuf {
    image.with_extension("json")
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No manifest beside the image.
    #[error("no manifest for {image}: expected {expected} (written by `dbimage make` beside the image)")]
    Missing {
        /// The image.
        image: std::path::PathBuf,
        /// Where the manifest should be.
        expected: std::path::PathBuf,
    },
    /// It exists but cannot be read or parsed.
    #[error("{path} is not a readable dbimage manifest: {msg}")]
    Invalid {
        /// The manifest.
        path: std::path::PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Reads the manifest beside `image`.
pub fn read_beside(image: &Path) -> Result<ImageInfo, ManifestError> {
    let path = path_beside(image);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ManifestError::Missing { image: image.to_path_buf(), expected: path });
        }
        Err(e) => return Err(ManifestError::Invalid { path, msg: e.to_string() }),
    };
    serde_json::from_slice(&raw).map_err(|e| ManifestError::Invalid { path, msg: e.to_string() })
}

/// Parses `dpkg-query -W -f '${Package}\t${Version}\n'` output.
pub fn parse_package_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, v)| (p.trim().to_string(), v.trim().to_string()))
        .filter(|(p, v)| !p.is_empty() && !v.is_empty())
        .collect()
}

/// SHA-256 of a file (the one definition is in `digest`).
pub use crate::digest::sha256_file;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_sits_beside_the_image() {
        assert_eq!(path_beside(Path::new("images/pg-15.qcow2")), Path::new("images/pg-15.json"));
    }

    #[test]
    fn missing_manifest_names_the_expected_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("redis-7.qcow2");
        let msg = read_beside(&image).unwrap_err().to_string();
        assert!(msg.contains(&format!("expected {}", dir.path().join("redis-7.json").display())), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn manifest_reads_only_what_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("redis-7.qcow2");
        let json = r#"{
            "name": "redis-7", "sha256": "ab", "built": {"by": "x"},
            "datastore": {
                "db": "redis", "version": "7.0", "source": "distro", "release": "bookworm",
                "arch": "amd64", "packages": ["redis-server"], "service": "redis-server",
                "trove_manager": "redis", "element": "redis", "port": 6379,
                "test": {"guest_setup": "true", "probe": ["redis-cli", "-p", "{port}", "ping"]}
            }
        }"#;
        std::fs::write(path_beside(&image), json).unwrap();
        let info = read_beside(&image).unwrap();
        assert_eq!((info.datastore.db.as_str(), info.datastore.port), ("redis", 6379));
        assert_eq!(info.sha256.as_deref(), Some("ab"));
        assert!(info.datastore.test.env.is_empty());
    }

    #[test]
    fn parses_dpkg_query() {
        let m = parse_package_list("bash\t5.2.15-2+b7\npostgresql-15\t15.14-0+deb12u1\nbroken\n\t1\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["postgresql-15"], "15.14-0+deb12u1");
    }

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
