//! Database flavors: the predefined tables (`flavors/<db>.yaml`), the
//! overlay of customized values that `flavor change` writes
//! (`<custom_flavors_dir>/<db>.yaml`), their merge, and the flavors Nova
//! gets from them.
//!
//! Both files map a flavor name to its attributes; the predefined file
//! gives all of them, the overlay only the changed ones. The format and the
//! origin of the predefined values are in `flavors/README.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::CatalogError;
use crate::settings::Settings;

/// Nova sizes disks in whole GB of this many MB.
const MB_PER_GB: u64 = 1024;

/// The value of `flavor change` that restores an attribute's default.
pub const RESTORE: i64 = -1;

/// Errors loading, changing or saving flavors.
#[derive(Debug, thiserror::Error)]
pub enum FlavorError {
    /// A flavor file cannot be read or is invalid (naming the file), or
    /// `-d` names a database without one: the catalog's errors.
    #[error(transparent)]
    File(#[from] CatalogError),
    /// `-f` names no flavor of the database.
    #[error("{db} has no flavor '{flavor}'; use one of: {}", known.join(", "))]
    UnknownFlavor {
        /// The database.
        db: String,
        /// What was asked for.
        flavor: String,
        /// Its flavors.
        known: Vec<String>,
    },
    /// A value given to `flavor change` is outside its attribute's range.
    #[error(
        "{attr} {value} is out of range; use {} to {}, or -1 to restore the default",
        attr.range().start(),
        attr.range().end()
    )]
    OutOfRange {
        /// The attribute.
        attr: Attr,
        /// The value given.
        value: i64,
    },
    /// The overlay cannot be written or removed; it is as it was.
    #[error("cannot update {}: {error}; nothing was changed", path.display())]
    Write {
        /// The overlay file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

impl FlavorError {
    /// Whether the user has to fix something (input or a data file), as
    /// opposed to the overlay failing to be written.
    pub fn is_usage(&self) -> bool {
        !matches!(self, FlavorError::Write { .. })
    }
}

/// One attribute of a flavor; serialized as its key in the flavor files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Attr {
    /// Virtual CPUs.
    #[serde(rename = "vcpus")]
    Vcpus,
    /// RAM in GB.
    #[serde(rename = "memory_gb")]
    Memory,
    /// Root disk in MB, a multiple of 1024.
    #[serde(rename = "root_mb")]
    Root,
    /// Database disk in MB.
    #[serde(rename = "db_disk_mb")]
    DbDisk,
    /// Backup storage in MB.
    #[serde(rename = "backup_mb")]
    Backup,
}

impl Attr {
    /// Every attribute, in column order.
    pub const ALL: [Attr; 5] = [
        Attr::Vcpus,
        Attr::Memory,
        Attr::Root,
        Attr::DbDisk,
        Attr::Backup,
    ];

    /// The key in the flavor files and in JSON/YAML output.
    pub fn key(self) -> &'static str {
        match self {
            Attr::Vcpus => "vcpus",
            Attr::Memory => "memory_gb",
            Attr::Root => "root_mb",
            Attr::DbDisk => "db_disk_mb",
            Attr::Backup => "backup_mb",
        }
    }

    /// The values a flavor may have.
    pub fn range(self) -> RangeInclusive<u64> {
        match self {
            Attr::Vcpus => 1..=256,
            Attr::Memory => 1..=1024,
            Attr::Root => 1024..=2_097_152,
            Attr::DbDisk | Attr::Backup => 0..=16_777_216,
        }
    }

    /// Why `value` is not allowed in a file, if it is not.
    fn problem(self, value: u64) -> Option<String> {
        let range = self.range();
        if !range.contains(&value) {
            Some(format!(
                "{self} {value} is out of range {} to {}",
                range.start(),
                range.end()
            ))
        } else if self == Attr::Root && !value.is_multiple_of(MB_PER_GB) {
            Some(format!(
                "{self} {value} is not a multiple of {MB_PER_GB} (Nova sizes root disks in whole GB)"
            ))
        } else {
            None
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// All attributes of one flavor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes([u64; Attr::ALL.len()]);

impl Sizes {
    /// The value of `attr`.
    pub fn get(&self, attr: Attr) -> u64 {
        self.0[attr as usize]
    }
}

impl Serialize for Sizes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(Attr::ALL.iter().map(|&a| (a, self.get(a))))
    }
}

/// Attribute values as a file gives them: all of them (predefined) or
/// only the customized ones (overlay).
type Values = BTreeMap<Attr, u64>;

/// One flavor: its predefined values and the customized ones over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flavor {
    /// The name `-f` takes (`small`); Nova's is `<db>.<name>`.
    pub name: String,
    /// The values of `flavors/<db>.yaml`.
    pub predefined: Sizes,
    /// The overlay's values, each differing from the predefined one.
    pub custom: Values,
}

impl Flavor {
    /// The values in effect: the customized ones, else the predefined.
    pub fn current(&self) -> Sizes {
        let mut sizes = self.predefined;
        for (&attr, &value) in &self.custom {
            sizes.0[attr as usize] = value;
        }
        sizes
    }
}

/// A value `flavor change` adjusted instead of taking it as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounded {
    /// The attribute.
    pub attr: Attr,
    /// What was given.
    pub given: u64,
    /// What was kept.
    pub used: u64,
}

/// What [`FlavorTable::save`] did with the overlay file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Written with the customized values.
    Written,
    /// Removed: every value is the predefined one again.
    Removed,
    /// Nothing is customized and there was no file.
    NoOverlay,
}

/// A flavor as Nova creates it (`POST /flavors`, then its extra specs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NovaFlavor {
    /// `<db>.<flavor>`, e.g. `mysql.small`.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// RAM in MB.
    pub ram_mb: u64,
    /// Root disk in GB.
    pub disk_gb: u64,
    /// The database disk in GB, rounded up.
    pub ephemeral_gb: u64,
    /// `dbimage:database_disk_mb` and `dbimage:backup_size_mb`, exact to
    /// the MB.
    pub extra_specs: BTreeMap<String, String>,
}

/// One database's flavors, predefined and customized, merged.
#[derive(Debug, Clone)]
pub struct FlavorTable {
    db: String,
    overlay: PathBuf,
    flavors: Vec<Flavor>,
}

impl FlavorTable {
    /// Loads `db`'s flavors from the directories the settings name.
    pub fn for_settings(settings: &Settings, db: &str) -> Result<FlavorTable, FlavorError> {
        FlavorTable::load(
            &settings.data_dir.join("flavors"),
            &settings.custom_flavors_dir,
            db,
        )
    }

    /// Loads and validates `<predefined_dir>/<db>.yaml` and, if it exists,
    /// the overlay `<custom_dir>/<db>.yaml`.
    pub fn load(
        predefined_dir: &Path,
        custom_dir: &Path,
        db: &str,
    ) -> Result<FlavorTable, FlavorError> {
        let path = predefined_dir.join(format!("{db}.yaml"));
        if !valid_name(db) || !path.is_file() {
            let known = known_dbs(predefined_dir)?;
            return Err(CatalogError::UnknownDb {
                db: db.to_string(),
                known,
            }
            .into());
        }
        let mut flavors = Vec::new();
        for (name, values) in read(&path)?.unwrap_or_default().0 {
            let invalid = |msg: String| {
                FlavorError::from(CatalogError::Invalid {
                    path: path.clone(),
                    msg,
                })
            };
            if !valid_name(&name) {
                return Err(invalid(format!(
                    "flavor name '{name}': use lowercase letters, digits, '-' and '_'"
                )));
            }
            let mut sizes = Sizes([0; Attr::ALL.len()]);
            for attr in Attr::ALL {
                let value = *values
                    .get(&attr)
                    .ok_or_else(|| invalid(format!("{name}: {attr} is missing")))?;
                if let Some(problem) = attr.problem(value) {
                    return Err(invalid(format!("{name}: {problem}")));
                }
                sizes.0[attr as usize] = value;
            }
            flavors.push(Flavor {
                name,
                predefined: sizes,
                custom: Values::new(),
            });
        }
        if flavors.is_empty() {
            return Err(CatalogError::Invalid {
                path,
                msg: "no flavors".into(),
            }
            .into());
        }
        let mut table = FlavorTable {
            db: db.to_string(),
            overlay: custom_dir.join(format!("{db}.yaml")),
            flavors,
        };
        table.apply_overlay()?;
        Ok(table)
    }

    /// The database.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// The overlay file, whether or not it exists.
    pub fn overlay_path(&self) -> &Path {
        &self.overlay
    }

    /// The flavors, in the predefined file's order.
    pub fn flavors(&self) -> &[Flavor] {
        &self.flavors
    }

    /// Whether any value is customized.
    pub fn is_customized(&self) -> bool {
        self.flavors.iter().any(|f| !f.custom.is_empty())
    }

    /// The flavor called `name`, or an error listing the known ones.
    pub fn get(&self, name: &str) -> Result<&Flavor, FlavorError> {
        self.index(name).map(|i| &self.flavors[i])
    }

    /// Sets attributes of one flavor in memory ([`RESTORE`] restores the
    /// predefined value); [`FlavorTable::save`] writes them. Either every
    /// change is valid and applied, or none is.
    ///
    /// A root disk that is not whole GB is rounded up, and said so in the
    /// result. A value equal to the predefined one is not kept as
    /// customized.
    pub fn change(
        &mut self,
        name: &str,
        changes: &[(Attr, i64)],
    ) -> Result<Vec<Rounded>, FlavorError> {
        let index = self.index(name)?;
        let mut rounded = Vec::new();
        let mut checked = Vec::with_capacity(changes.len());
        for &(attr, value) in changes {
            if value == RESTORE {
                checked.push((attr, None));
                continue;
            }
            let given = u64::try_from(value)
                .ok()
                .filter(|v| attr.range().contains(v))
                .ok_or(FlavorError::OutOfRange { attr, value })?;
            let used = if attr == Attr::Root {
                given.next_multiple_of(MB_PER_GB)
            } else {
                given
            };
            if used != given {
                rounded.push(Rounded { attr, given, used });
            }
            checked.push((attr, Some(used)));
        }
        let flavor = &mut self.flavors[index];
        for (attr, value) in checked {
            match value.filter(|&v| v != flavor.predefined.get(attr)) {
                Some(v) => flavor.custom.insert(attr, v),
                None => flavor.custom.remove(&attr),
            };
        }
        Ok(rounded)
    }

    /// Writes the overlay atomically (a temporary file in its directory,
    /// renamed over it), or removes it when nothing is customized.
    pub fn save(&self) -> Result<Saved, FlavorError> {
        let write_err = |error| FlavorError::Write {
            path: self.overlay.clone(),
            error,
        };
        let custom: Vec<(&str, &Values)> = self
            .flavors
            .iter()
            .filter(|f| !f.custom.is_empty())
            .map(|f| (f.name.as_str(), &f.custom))
            .collect();
        if custom.is_empty() {
            return match std::fs::remove_file(&self.overlay) {
                Ok(()) => Ok(Saved::Removed),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::NoOverlay),
                Err(e) => Err(write_err(e)),
            };
        }
        let yaml = serde_saphyr::to_string(&Ordered(custom))
            .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
        let text = format!(
            "# {}'s customized flavors, written by `dbimage flavor change` over the\n\
             # predefined flavors/{}.yaml; -1 for an attribute restores its default.\n{yaml}",
            self.db, self.db
        );
        // Not secret, and `flavor show` may run as another user.
        crate::atomic::write_file(&self.overlay, text.as_bytes(), 0o644).map_err(write_err)?;
        Ok(Saved::Written)
    }

    /// The flavors Nova gets: current values, named `<db>.<flavor>`.
    pub fn nova_flavors(&self) -> Vec<NovaFlavor> {
        self.flavors
            .iter()
            .map(|f| {
                let s = f.current();
                NovaFlavor {
                    name: format!("{}.{}", self.db, f.name),
                    // At most 256: checked on load and change.
                    vcpus: s.get(Attr::Vcpus) as u32,
                    ram_mb: s.get(Attr::Memory) * MB_PER_GB,
                    disk_gb: s.get(Attr::Root).div_ceil(MB_PER_GB),
                    ephemeral_gb: s.get(Attr::DbDisk).div_ceil(MB_PER_GB),
                    extra_specs: BTreeMap::from([
                        (
                            "dbimage:backup_size_mb".to_string(),
                            s.get(Attr::Backup).to_string(),
                        ),
                        (
                            "dbimage:database_disk_mb".to_string(),
                            s.get(Attr::DbDisk).to_string(),
                        ),
                    ]),
                }
            })
            .collect()
    }

    /// Position of the flavor called `name`, or an error listing the known
    /// ones.
    fn index(&self, name: &str) -> Result<usize, FlavorError> {
        self.flavors
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| FlavorError::UnknownFlavor {
                db: self.db.clone(),
                flavor: name.to_string(),
                known: self.flavors.iter().map(|f| f.name.clone()).collect(),
            })
    }

    /// Merges the overlay, if there is one, checking it like a predefined
    /// file.
    fn apply_overlay(&mut self) -> Result<(), FlavorError> {
        let path = self.overlay.clone();
        let Some(Ordered(entries)) = read(&path)? else {
            return Ok(());
        };
        let invalid = |msg: String| {
            FlavorError::from(CatalogError::Invalid {
                path: path.clone(),
                msg,
            })
        };
        for (name, values) in entries {
            let Ok(index) = self.index(&name) else {
                let known: Vec<&str> = self.flavors.iter().map(|f| f.name.as_str()).collect();
                return Err(invalid(format!(
                    "flavor '{name}' is not one of {}'s ({}); remove it from this file",
                    self.db,
                    known.join(", ")
                )));
            };
            let flavor = &mut self.flavors[index];
            for (attr, value) in values {
                if let Some(problem) = attr.problem(value) {
                    return Err(invalid(format!(
                        "{name}: {problem}; fix it, or remove it to restore the default"
                    )));
                }
                if value != flavor.predefined.get(attr) {
                    flavor.custom.insert(attr, value);
                }
            }
        }
        Ok(())
    }
}

/// The current flavors of `db` as Nova gets them (see
/// [`FlavorTable::nova_flavors`]).
pub fn nova_flavors(settings: &Settings, db: &str) -> Result<Vec<NovaFlavor>, FlavorError> {
    Ok(FlavorTable::for_settings(settings, db)?.nova_flavors())
}

/// A name usable as a file stem and in a Nova flavor name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The databases with a predefined flavor file, sorted.
fn known_dbs(dir: &Path) -> Result<Vec<String>, CatalogError> {
    let read_err = |error| CatalogError::Read {
        path: dir.to_path_buf(),
        error,
    };
    let mut dbs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.extension().is_some_and(|e| e == "yaml")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            dbs.push(stem.to_string());
        }
    }
    dbs.sort();
    Ok(dbs)
}

/// Reads a flavor file; `None` if it does not exist.
fn read(path: &Path) -> Result<Option<Ordered<String, Values>>, CatalogError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(CatalogError::Read {
                path: path.to_path_buf(),
                error,
            });
        }
    };
    // An overlay whose last value was restored by hand may be left empty.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Some(Ordered(Vec::new())));
    }
    serde_saphyr::from_str(&text)
        .map(Some)
        .map_err(|e| CatalogError::Invalid {
            path: path.to_path_buf(),
            msg: super::datastores::parse_message(&e.to_string()),
        })
}

/// A YAML mapping in file order: flavors are shown as the file lists them,
/// which serde's own maps (sorted or hashed) would lose.
struct Ordered<K, V>(Vec<(K, V)>);

impl<K, V> Default for Ordered<K, V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<String, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = Ordered<String, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of flavor names to their attributes")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered<String, V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

impl<K: Serialize, V: Serialize> Serialize for Ordered<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const PREDEFINED: &str = "\
tiny:  {vcpus: 2, memory_gb: 2, root_mb: 6144, db_disk_mb: 10240, backup_mb: 20480}
small: {vcpus: 4, memory_gb: 4, root_mb: 6144, db_disk_mb: 25600, backup_mb: 51200}
";

    /// A predefined `db.yaml` and an empty overlay directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(predefined: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("predefined")).unwrap();
            std::fs::write(dir.path().join("predefined/db.yaml"), predefined).unwrap();
            Fixture { dir }
        }
        fn overlay(&self) -> PathBuf {
            self.dir.path().join("custom/db.yaml")
        }
        fn write_overlay(&self, text: &str) {
            std::fs::create_dir_all(self.dir.path().join("custom")).unwrap();
            std::fs::write(self.overlay(), text).unwrap();
        }
        fn load(&self, db: &str) -> Result<FlavorTable, FlavorError> {
            FlavorTable::load(
                &self.dir.path().join("predefined"),
                &self.dir.path().join("custom"),
                db,
            )
        }
    }

    fn message(e: FlavorError) -> String {
        e.to_string()
    }

    #[test]
    fn shipped_tables_load_with_the_originals_values() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("flavors");
        let none = tempfile::tempdir().unwrap();
        for db in ["mariadb", "mongodb", "mysql", "postgresql", "redis"] {
            let t = FlavorTable::load(&dir, none.path(), db).unwrap();
            let names: Vec<&str> = t.flavors().iter().map(|f| f.name.as_str()).collect();
            assert_eq!(
                names,
                ["tiny", "small", "medium", "large", "xlarge"],
                "{db}"
            );
            assert!(!t.is_customized());
        }
        let sizes = |db: &str, name: &str| {
            let t = FlavorTable::load(&dir, none.path(), db).unwrap();
            let s = t.get(name).unwrap().current();
            [Attr::Vcpus, Attr::Memory, Attr::Root].map(|a| s.get(a))
        };
        assert_eq!(sizes("redis", "tiny"), [2, 2, 6144]);
        assert_eq!(sizes("redis", "xlarge"), [32, 32, 10240]);
        assert_eq!(sizes("postgresql", "large"), [16, 16, 8192]);
        assert_eq!(sizes("mysql", "xlarge"), [32, 32, 16384]);
        assert_eq!(sizes("mongodb", "xlarge"), [32, 16, 16384]);
    }

    #[test]
    fn overlay_is_merged_over_predefined() {
        let fx = Fixture::new(PREDEFINED);
        // A value equal to the predefined one does not count as customized.
        fx.write_overlay("small: {vcpus: 8, root_mb: 6144}\n");
        let t = fx.load("db").unwrap();
        let small = t.get("small").unwrap();
        assert_eq!(small.current().get(Attr::Vcpus), 8);
        assert_eq!(small.predefined.get(Attr::Vcpus), 4);
        assert_eq!(small.custom, Values::from([(Attr::Vcpus, 8)]));
        assert!(t.get("tiny").unwrap().custom.is_empty());
        assert!(t.is_customized());
    }

    #[test]
    fn bad_files_are_named() {
        let fx = Fixture::new("tiny: {vcpus: 2, memory_gb: 2, root_mb: 6144, db_disk_mb: 1}\n");
        let e = message(fx.load("db").unwrap_err());
        assert!(
            e.contains("predefined/db.yaml") && e.contains("tiny: backup_mb is missing"),
            "{e}"
        );
        let fx =
            Fixture::new(&PREDEFINED.replace("6144, db_disk_mb: 10240", "5000, db_disk_mb: 10240"));
        let e = message(fx.load("db").unwrap_err());
        assert!(e.contains("root_mb 5000 is not a multiple of 1024"), "{e}");
        let fx = Fixture::new("tiny: {vcpus: 2, colour: red}\n");
        let e = message(fx.load("db").unwrap_err());
        assert!(e.contains("predefined/db.yaml") && !e.contains('\n'), "{e}");

        let fx = Fixture::new(PREDEFINED);
        for (overlay, want) in [
            (
                "huge: {vcpus: 8}\n",
                "flavor 'huge' is not one of db's (tiny, small)",
            ),
            (
                "tiny: {vcpus: 0}\n",
                "tiny: vcpus 0 is out of range 1 to 256",
            ),
            ("tiny: {root_mb: 2000}\n", "root_mb 2000 is not a multiple"),
        ] {
            fx.write_overlay(overlay);
            let e = fx.load("db").unwrap_err();
            assert!(e.is_usage());
            let e = message(e);
            assert!(
                e.starts_with(&fx.overlay().display().to_string()) && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_db_and_flavor_list_the_known_ones() {
        let fx = Fixture::new(PREDEFINED);
        for db in ["nosuch", "../predefined/db", ""] {
            let e = message(fx.load(db).unwrap_err());
            assert!(
                e.starts_with("unknown database") && e.ends_with("use one of: db"),
                "{e}"
            );
        }
        let mut t = fx.load("db").unwrap();
        let e = message(t.get("huge").unwrap_err());
        assert_eq!(e, "db has no flavor 'huge'; use one of: tiny, small");
        assert!(matches!(
            t.change("huge", &[(Attr::Vcpus, 2)]),
            Err(FlavorError::UnknownFlavor { .. })
        ));
    }

    #[test]
    fn change_checks_ranges_and_applies_all_or_nothing() {
        let fx = Fixture::new(PREDEFINED);
        let mut t = fx.load("db").unwrap();
        for (attr, bad) in [
            (Attr::Vcpus, 0),
            (Attr::Vcpus, 257),
            (Attr::Memory, 1025),
            (Attr::Root, 1023),
            (Attr::Root, 2_097_153),
            (Attr::DbDisk, 16_777_217),
            (Attr::Backup, -2),
        ] {
            // The valid first change must not be applied either.
            let e = t
                .change("tiny", &[(Attr::Memory, 8), (attr, bad)])
                .unwrap_err();
            assert!(matches!(e, FlavorError::OutOfRange { .. }), "{attr} {bad}");
            assert!(
                e.to_string().ends_with("or -1 to restore the default"),
                "{e}"
            );
            assert!(!t.is_customized(), "{attr} {bad}");
        }
        let edges = [
            (Attr::Vcpus, 256),
            (Attr::Memory, 1),
            (Attr::Root, 2_097_152),
            (Attr::DbDisk, 0),
            (Attr::Backup, 16_777_216),
        ];
        assert_eq!(t.change("tiny", &edges).unwrap(), []);
        assert_eq!(t.get("tiny").unwrap().custom.len(), 5);
    }

    #[test]
    fn root_is_rounded_up_to_whole_gb() {
        let fx = Fixture::new(PREDEFINED);
        let mut t = fx.load("db").unwrap();
        let rounded = t
            .change("tiny", &[(Attr::Root, 5000), (Attr::DbDisk, 5000)])
            .unwrap();
        assert_eq!(
            rounded,
            [Rounded {
                attr: Attr::Root,
                given: 5000,
                used: 5120
            }]
        );
        let current = t.get("tiny").unwrap().current();
        assert_eq!(
            (current.get(Attr::Root), current.get(Attr::DbDisk)),
            (5120, 5000)
        );
        // Rounded onto the predefined value: not customized.
        t.change("small", &[(Attr::Root, 6000)]).unwrap();
        assert!(!t.get("small").unwrap().custom.contains_key(&Attr::Root));
    }

    #[test]
    fn restore_and_overlay_removal() {
        let fx = Fixture::new(PREDEFINED);
        let mut t = fx.load("db").unwrap();
        t.change("tiny", &[(Attr::Vcpus, 8), (Attr::Backup, 0)])
            .unwrap();
        t.change("small", &[(Attr::Memory, 16)]).unwrap();
        assert_eq!(t.save().unwrap(), Saved::Written);
        let text = std::fs::read_to_string(fx.overlay()).unwrap();
        assert!(
            text.find("tiny").unwrap() < text.find("small").unwrap(),
            "file order:\n{text}"
        );

        let mut t = fx.load("db").unwrap();
        assert_eq!(t.get("tiny").unwrap().custom.len(), 2);
        t.change("tiny", &[(Attr::Vcpus, RESTORE)]).unwrap();
        assert_eq!(
            t.get("tiny").unwrap().custom,
            Values::from([(Attr::Backup, 0)])
        );
        // Setting the predefined value is a restore too.
        t.change("tiny", &[(Attr::Backup, 20480)]).unwrap();
        t.save().unwrap();
        assert!(
            !fx.load("db")
                .unwrap()
                .get("tiny")
                .unwrap()
                .custom
                .contains_key(&Attr::Backup)
        );

        let mut t = fx.load("db").unwrap();
        t.change("small", &[(Attr::Memory, RESTORE)]).unwrap();
        assert!(!t.is_customized());
        assert_eq!(t.save().unwrap(), Saved::Removed);
        assert!(!fx.overlay().exists());
        assert_eq!(t.save().unwrap(), Saved::NoOverlay);
    }

    #[test]
    fn saved_overlay_is_readable_by_others() {
        let fx = Fixture::new(PREDEFINED);
        let mut t = fx.load("db").unwrap();
        t.change("tiny", &[(Attr::Vcpus, 3)]).unwrap();
        t.save().unwrap();
        let mode = std::fs::metadata(fx.overlay())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let leftovers = std::fs::read_dir(fx.overlay().parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(leftovers, 1, "no temporary file left");
    }

    #[test]
    fn nova_flavors_round_disks_up_and_carry_exact_sizes() {
        let fx = Fixture::new(PREDEFINED);
        let mut t = fx.load("db").unwrap();
        t.change("tiny", &[(Attr::DbDisk, 10241), (Attr::Backup, 7)])
            .unwrap();
        let nova = t.nova_flavors();
        assert_eq!(nova.len(), 2);
        assert_eq!(
            nova[0],
            NovaFlavor {
                name: "db.tiny".into(),
                vcpus: 2,
                ram_mb: 2048,
                disk_gb: 6,
                ephemeral_gb: 11,
                extra_specs: BTreeMap::from([
                    ("dbimage:backup_size_mb".into(), "7".into()),
                    ("dbimage:database_disk_mb".into(), "10241".into()),
                ]),
            }
        );
        assert_eq!(
            (nova[1].name.as_str(), nova[1].ephemeral_gb),
            ("db.small", 25)
        );
    }
}
