//! The catalog of supported databases (`datastores/*.yaml`) and its
//! resolution from a request (database, version, source, release, arch)
//! into exactly one row; and the database flavors (`flavors/*.yaml`).

pub mod datastores;
pub mod flavors;

pub use datastores::{Catalog, CatalogError};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::arch::Arch;

/// Where a database package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The Debian release's own package.
    Distro,
    /// The vendor's community edition (`-c`).
    Community,
    /// The vendor's enterprise edition (`-e`).
    Enterprise,
}

impl Source {
    /// The image-name suffix: `-c`, `-e` or nothing.
    pub fn name_suffix(self) -> &'static str {
        match self {
            Source::Distro => "",
            Source::Community => "-c",
            Source::Enterprise => "-e",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Distro => "distro",
            Source::Community => "community",
            Source::Enterprise => "enterprise",
        })
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRequest {
    /// Database name, e.g. `postgresql`.
    pub db: String,
    /// Version as typed (`15`, `10.11.6`), if any.
    pub version: Option<String>,
    /// Distro, community or enterprise.
    pub source: Source,
    /// Debian release, if forced with `-r`.
    pub release: Option<String>,
    /// Target architecture.
    pub arch: Arch,
}

/// How `dbimage test` makes a booted image's database reachable and asks it.
///
/// Strings may use `{host}`, `{port}` and `{password}`; `{password}` is a
/// fresh random value per test run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// Shell script run as root in the guest by cloud-init (`runcmd`), to
    /// open the database to the forwarded port and set `{password}`.
    pub guest_setup: String,
    /// Host command that succeeds once the database answers (a real client).
    pub probe: Vec<String>,
    /// Environment for the probe.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A vendor's apt repository that provides a community or enterprise
/// edition, used for that build only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorRepo {
    /// Repository base URL (`deb URL SUITE COMPONENTS`).
    pub url: String,
    /// Suite (distribution) name.
    pub suite: String,
    /// Components.
    pub components: Vec<String>,
    /// ASCII-armoured signing key: a file under `datastores/keys/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Or a URL to fetch the key from at build time (needs `fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_url: Option<String>,
    /// The signing key's fingerprint; checked before the key is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// apt pin for this repository (`o=Origin`, `n=suite`…); default: its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// Pin-Priority of the repository's packages.
    #[serde(default = "default_pin_priority")]
    pub pin_priority: i32,
    /// Leave the repository configured in the final image.
    #[serde(default)]
    pub keep: bool,
    /// Terms of use printed before building (enterprise editions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<String>,
}

fn default_pin_priority() -> i32 {
    // Above 1000: the vendor's packages win even over a newer Debian version.
    1001
}

/// One fully resolved catalog row: everything the build needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Database name.
    pub db: String,
    /// The catalog's version string (`15`, `10.11`).
    pub version: String,
    /// Where the packages come from.
    pub source: Source,
    /// Debian release (`bookworm`).
    pub release: String,
    /// Target architecture.
    pub arch: Arch,
    /// Packages that install the database.
    pub packages: Vec<String>,
    /// systemd service name.
    pub service: String,
    /// Trove's manager name for the datastore.
    pub trove_manager: String,
    /// Element that installs and enables the database.
    pub element: String,
    /// TCP port the database listens on.
    pub port: u16,
    /// How to check a booted image.
    pub test: TestSpec,
    /// The vendor repository the packages come from, if not Debian's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<VendorRepo>,
}

#[cfg(test)]
impl Resolved {
    /// A PostgreSQL 15 row for tests elsewhere in the crate.
    pub fn example() -> Resolved {
        Resolved {
            db: "postgresql".into(),
            version: "15".into(),
            source: Source::Distro,
            release: "bookworm".into(),
            arch: Arch::Amd64,
            packages: vec!["postgresql-15".into()],
            service: "postgresql".into(),
            trove_manager: "postgresql".into(),
            element: "postgresql".into(),
            port: 5432,
            test: TestSpec { guest_setup: String::new(), probe: vec![], env: BTreeMap::new() },
            repo: None,
        }
    }
}
