//! The JSON manifest written beside every image.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::plan::Install;
use crate::catalog::{DbRequest, Resolved};

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

/// Parses `dpkg-query -W -f '${Package}\t${Version}\n'` output.
pub fn parse_package_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, v)| (p.trim().to_string(), v.trim().to_string()))
        .filter(|(p, v)| !p.is_empty() && !v.is_empty())
        .collect()
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
