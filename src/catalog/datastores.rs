//! Loading `datastores/*.yaml` and resolving a [`DbRequest`] into one row.
//!
//! Each file describes one database: how it runs (service, element, port),
//! how `dbimage test` reaches it, and the table of supported builds
//! (source × release × arch × version → packages). The schema is documented
//! at the top of every file in `datastores/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DbRequest, Resolved, VendorRepo, Source, TestSpec};
use crate::arch::Arch;

/// Debian releases the catalog may name, oldest first; the order decides
/// which release is "newest".
pub const RELEASES: [&str; 2] = ["bookworm", "trixie"];

/// The release chosen when several match and `-r` is not given: the test
/// suite builds on it, so it is the best-exercised one.
pub const DEFAULT_RELEASE: &str = "bookworm";

/// Errors loading or resolving the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The directory or a file in it cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A file does not parse or breaks a rule of the schema.
    #[error("{}: {msg}", path.display())]
    Invalid {
        /// The offending file.
        path: PathBuf,
        /// What is wrong and, where it helps, how to fix it.
        msg: String,
    },
    /// The directory holds no `*.yaml` file.
    #[error("no datastores (*.yaml) in {}; set DBIMAGE_DATA_DIR to dbimage's data directory", dir.display())]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
    /// `-d` names no datastore.
    #[error("unknown database '{db}'; use one of: {}", known.join(", "))]
    UnknownDb {
        /// What was asked for.
        db: String,
        /// The datastores the catalog has.
        known: Vec<String>,
    },
    /// `-r` names a release the catalog does not know.
    #[error("unknown release '{release}'; use one of: {}", RELEASES.join(", "))]
    UnknownRelease {
        /// What was asked for.
        release: String,
    },
    /// `-v` is not a dotted version.
    #[error("bad version '{version}'; use dot-separated numbers such as 15 or 10.11")]
    BadVersion {
        /// What was asked for.
        version: String,
    },
    /// No row matches the request. The first line says what was asked and
    /// what to do; the supported table for that database follows.
    #[error("{summary}\n{table}")]
    NoMatch {
        /// One line: the request and the remedy.
        summary: String,
        /// The database's supported rows, aligned.
        table: String,
    },
}

/// One row of the supported-builds table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Database name.
    pub database: String,
    /// Where the packages come from.
    pub source: Source,
    /// Debian release.
    pub release: String,
    /// Architectures the packages exist for.
    pub arch: Vec<Arch>,
    /// The catalog's version (one or two dot components).
    pub version: String,
    /// Packages that install the database.
    pub packages: Vec<String>,
    /// Vendor repository providing them (community/enterprise rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<VendorRepo>,
}

/// One database, validated.
#[derive(Debug, Clone)]
pub struct Datastore {
    /// Name, as `-d` takes it.
    pub name: String,
    /// Trove's manager name.
    pub trove_manager: String,
    /// systemd unit.
    pub service: String,
    /// Element that installs and enables the database.
    pub element: String,
    /// TCP port.
    pub port: u16,
    /// Why there are no distro rows, if that is the case.
    pub distro_note: Option<String>,
    /// How `dbimage test` checks an image.
    pub test: TestSpec,
    /// Supported builds, sorted by source, release, version.
    pub rows: Vec<Row>,
}

/// All datastores, by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    datastores: BTreeMap<String, Datastore>,
}

/// A datastore file as written; validated into a [`Datastore`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatastoreFile {
    name: String,
    trove_manager: String,
    service: String,
    element: String,
    port: u16,
    #[serde(default)]
    distro_note: Option<String>,
    test: TestSpec,
    rows: Vec<RowFile>,
}

/// A row as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowFile {
    source: Source,
    release: String,
    arch: Vec<Arch>,
    version: String,
    packages: Vec<String>,
    #[serde(default)]
    repo: Option<VendorRepo>,
}

impl Catalog {
    /// Loads and validates every `*.yaml` in `dir`.
    pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        let read_err = |path: &Path, error| CatalogError::Read {
            path: path.to_path_buf(),
            error,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
            let path = entry.map_err(|e| read_err(dir, e))?.path();
            if path.extension().is_some_and(|e| e == "yaml") && path.is_file() {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(CatalogError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        // Sorted so that errors, like output, do not depend on directory order.
        files.sort();
        let mut datastores = BTreeMap::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            let ds = parse(&path, &text)?;
            datastores.insert(ds.name.clone(), ds);
        }
        Ok(Catalog { datastores })
    }

    /// The datastore called `db`, or an error listing the known ones.
    pub fn get(&self, db: &str) -> Result<&Datastore, CatalogError> {
        self.datastores
            .get(db)
            .ok_or_else(|| CatalogError::UnknownDb {
                db: db.to_string(),
                known: self.datastores.keys().cloned().collect(),
            })
    }

    /// Resolves a request into exactly one row.
    ///
    /// The version is cut to two components and matches a row when one
    /// component list is a prefix of the other. Among matching rows the
    /// default release wins, then the newest release, then the newest
    /// version.
    pub fn resolve(&self, req: &DbRequest) -> Result<Resolved, CatalogError> {
        let ds = self.get(&req.db)?;
        let wanted = req.version.as_deref().map(request_version).transpose()?;
        if let Some(r) = &req.release
            && release_rank(r).is_none()
        {
            return Err(CatalogError::UnknownRelease { release: r.clone() });
        }
        let best = ds
            .rows
            .iter()
            .filter(|row| row.source == req.source && row.arch.contains(&req.arch))
            .filter(|row| req.release.as_ref().is_none_or(|r| *r == row.release))
            .filter(|row| {
                wanted
                    .as_ref()
                    .is_none_or(|w| prefix_related(w, &components(&row.version)))
            })
            .max_by(|a, b| preference(a).cmp(&preference(b)));
        let Some(row) = best else {
            return Err(self.no_match(ds, req));
        };
        Ok(Resolved {
            db: ds.name.clone(),
            version: row.version.clone(),
            source: row.source,
            release: row.release.clone(),
            arch: req.arch,
            packages: row.packages.clone(),
            repo: row.repo.clone(),
            service: ds.service.clone(),
            trove_manager: ds.trove_manager.clone(),
            element: ds.element.clone(),
            port: ds.port,
            test: ds.test.clone(),
        })
    }

    /// Resolves a request whose database comes from the user's own package
    /// (`-p`): the datastore's service, element, port and test come from the
    /// catalog, the version is the request's (x.y), the release is `-r` or
    /// the default, and the package list is left for the caller to fill.
    pub fn resolve_own_package(&self, req: &DbRequest) -> Result<Resolved, CatalogError> {
        let ds = self.get(&req.db)?;
        let version = req.version.as_deref().map(request_version).transpose()?.ok_or_else(|| {
            CatalogError::BadVersion { version: String::new() }
        })?;
        let release = req.release.clone().unwrap_or_else(|| DEFAULT_RELEASE.to_string());
        if release_rank(&release).is_none() {
            return Err(CatalogError::UnknownRelease { release });
        }
        Ok(Resolved {
            db: ds.name.clone(),
            version: version.join("."),
            source: req.source,
            release,
            arch: req.arch,
            packages: Vec::new(),
            repo: None,
            service: ds.service.clone(),
            trove_manager: ds.trove_manager.clone(),
            element: ds.element.clone(),
            port: ds.port,
            test: ds.test.clone(),
        })
    }

    /// Every row of `db`, or of all datastores; an unknown `db` yields none
    /// (check it with [`Catalog::get`] first).
    pub fn rows<'a>(&'a self, db: Option<&'a str>) -> impl Iterator<Item = &'a Row> + 'a {
        self.datastores
            .values()
            .filter(move |ds| db.is_none_or(|d| d == ds.name))
            .flat_map(|ds| ds.rows.iter())
    }

    /// The supported table, aligned: DATABASE SOURCE RELEASE ARCH VERSION
    /// PACKAGES. A datastore without rows shows as one line of dashes, so
    /// that it is visibly known but unsupported.
    pub fn table(&self, db: Option<&str>) -> String {
        let mut lines: Vec<[String; 6]> = vec![[
            "DATABASE".into(),
            "SOURCE".into(),
            "RELEASE".into(),
            "ARCH".into(),
            "VERSION".into(),
            "PACKAGES".into(),
        ]];
        for ds in self
            .datastores
            .values()
            .filter(|ds| db.is_none_or(|d| d == ds.name))
        {
            if ds.rows.is_empty() {
                let dash = || "-".to_string();
                lines.push([ds.name.clone(), dash(), dash(), dash(), dash(), dash()]);
            }
            for row in &ds.rows {
                lines.push([
                    row.database.clone(),
                    row.source.to_string(),
                    row.release.clone(),
                    row.arch
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(","),
                    row.version.clone(),
                    row.packages.join(" "),
                ]);
            }
        }
        let mut widths = [0usize; 6];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let _ = write!(text, "{cell:<w$}");
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    fn no_match(&self, ds: &Datastore, req: &DbRequest) -> CatalogError {
        let mut summary = format!("no {}", ds.name);
        if let Some(v) = &req.version {
            let _ = write!(summary, " {v}");
        }
        let _ = write!(summary, " ({}) for ", req.source);
        if let Some(r) = &req.release {
            let _ = write!(summary, "{r}/");
        }
        let _ = write!(summary, "{}", req.arch);
        // The note explains an absence, so it only applies when distro rows
        // are what is missing.
        let no_distro = !ds.rows.iter().any(|r| r.source == Source::Distro);
        let note = ds
            .distro_note
            .as_deref()
            .filter(|_| req.source == Source::Distro && no_distro);
        if let Some(note) = note {
            let _ = write!(summary, ": {}", one_line(note));
        }
        if ds.rows.is_empty() {
            let _ = write!(summary, "; {} has no builds in the catalog yet", ds.name);
        } else if note.is_none() {
            summary.push_str("; pick one of the supported rows below");
        }
        let table = self.table(Some(&ds.name)).trim_end().to_string();
        CatalogError::NoMatch { summary, table }
    }
}

/// Orders rows by how much they are preferred; the greatest wins.
fn preference(row: &Row) -> (bool, Option<usize>, Vec<Component>) {
    (
        row.release == DEFAULT_RELEASE,
        release_rank(&row.release),
        version_key(&row.version),
    )
}

/// Position of a release in [`RELEASES`].
fn release_rank(release: &str) -> Option<usize> {
    RELEASES.iter().position(|r| *r == release)
}

/// A version component: numeric ones compare as numbers so that 10.11 is
/// newer than 10.5.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Component {
    Num(u64),
    Text(String),
}

fn version_key(version: &str) -> Vec<Component> {
    version
        .split('.')
        .map(|c| {
            c.parse()
                .map(Component::Num)
                .unwrap_or_else(|_| Component::Text(c.into()))
        })
        .collect()
}

fn components(version: &str) -> Vec<&str> {
    version.split('.').collect()
}

/// Whether `version` is one or more non-empty alphanumeric components.
fn valid_version(version: &str) -> bool {
    version
        .split('.')
        .all(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
}

/// The request's version cut to its first two components (`10.11.6` → `10.11`).
fn request_version(version: &str) -> Result<Vec<String>, CatalogError> {
    if !valid_version(version) {
        return Err(CatalogError::BadVersion {
            version: version.to_string(),
        });
    }
    Ok(version.split('.').take(2).map(str::to_string).collect())
}

/// A version as datastore versions are named: at most its first two
/// components (`10.11.6` → `10.11`, `15` → `15`).
pub fn two_components(version: &str) -> Result<String, CatalogError> {
    Ok(request_version(version)?.join("."))
}

/// Whether one component list is a prefix of the other; components compare
/// whole, so `1` is no prefix of `15`.
fn prefix_related<A: AsRef<str>, B: AsRef<str>>(a: &[A], b: &[B]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.as_ref() == y.as_ref())
}

/// Keeps an error message on one line, whatever the YAML's folding.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The parser's message without its multi-line source snippet: the first
/// line already has the position, and the error must stay one line.
pub(super) fn parse_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or_default();
    first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_string()
}

/// Parses and validates one file.
fn parse(path: &Path, text: &str) -> Result<Datastore, CatalogError> {
    let invalid = |msg: String| CatalogError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let file: DatastoreFile =
        serde_saphyr::from_str(text).map_err(|e| invalid(parse_message(&e.to_string())))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if file.name != stem {
        return Err(invalid(format!(
            "name '{}' differs from the file name; rename the file to {}.yaml or fix name",
            file.name, file.name
        )));
    }
    for (key, value) in [
        ("trove_manager", &file.trove_manager),
        ("service", &file.service),
        ("element", &file.element),
        ("test.guest_setup", &file.test.guest_setup),
    ] {
        if value.trim().is_empty() {
            return Err(invalid(format!("{key} is empty")));
        }
    }
    if file.port == 0 {
        return Err(invalid("port 0 is not a port".into()));
    }
    if file.test.probe.is_empty() {
        return Err(invalid(
            "test.probe is empty; give the client command that asks the database".into(),
        ));
    }

    let mut rows: Vec<Row> = Vec::with_capacity(file.rows.len());
    for (i, r) in file.rows.into_iter().enumerate() {
        let at = format!("rows[{i}] ({} {} {})", r.source, r.release, r.version);
        if release_rank(&r.release).is_none() {
            return Err(invalid(format!(
                "{at}: unknown release '{}'; use one of: {}",
                r.release,
                RELEASES.join(", ")
            )));
        }
        let parts = r.version.split('.').count();
        if !valid_version(&r.version) || parts > 2 {
            return Err(invalid(format!(
                "{at}: bad version '{}'; use one or two dot components such as 15 or 10.11",
                r.version
            )));
        }
        if r.arch.is_empty() {
            return Err(invalid(format!("{at}: arch is empty")));
        }
        if let Some(a) = r
            .arch
            .iter()
            .enumerate()
            .find_map(|(j, a)| r.arch[..j].contains(a).then_some(a))
        {
            return Err(invalid(format!("{at}: arch {a} is listed twice")));
        }
        if r.packages.is_empty() || r.packages.iter().any(|p| p.trim().is_empty()) {
            return Err(invalid(format!(
                "{at}: packages is empty or has an empty name"
            )));
        }
        if let Some(repo) = &r.repo {
            if r.source == Source::Distro {
                return Err(invalid(format!("{at}: distro rows take Debian's packages; remove repo or use source community/enterprise")));
            }
            match (&repo.key, &repo.key_url, &repo.fingerprint) {
                (Some(_), None, _) | (None, Some(_), Some(_)) => {}
                (None, Some(_), None) => {
                    return Err(invalid(format!("{at}: repo.key_url needs repo.fingerprint so a fetched key can be checked")));
                }
                _ => return Err(invalid(format!("{at}: repo needs exactly one of key (a file in datastores/keys/) or key_url"))),
            }
            if repo.url.trim().is_empty() || repo.suite.trim().is_empty() {
                return Err(invalid(format!("{at}: repo.url and repo.suite must be set")));
            }
        } else if r.source != Source::Distro {
            return Err(invalid(format!("{at}: {} rows need a repo (the vendor's apt repository)", r.source)));
        }
        let row = Row {
            database: file.name.clone(),
            source: r.source,
            release: r.release,
            arch: r.arch,
            version: r.version,
            packages: r.packages,
            repo: r.repo,
        };
        // Rows whose versions are prefix-related would both match the longer
        // one, and only one of them could ever be chosen.
        if let Some(other) = rows.iter().find(|o| {
            o.source == row.source
                && o.release == row.release
                && o.arch.iter().any(|a| row.arch.contains(a))
                && prefix_related(&components(&o.version), &components(&row.version))
        }) {
            let what = if other.version == row.version {
                "duplicates".to_string()
            } else {
                format!("overlaps version {} of", other.version)
            };
            return Err(invalid(format!(
                "{at}: {what} another {} {} row for the same arch; merge or remove one",
                row.source, row.release
            )));
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| {
        a.source
            .cmp(&b.source)
            .then_with(|| release_rank(&a.release).cmp(&release_rank(&b.release)))
            .then_with(|| version_key(&a.version).cmp(&version_key(&b.version)))
            .then_with(|| a.arch.cmp(&b.arch))
    });
    Ok(Datastore {
        name: file.name,
        trove_manager: file.trove_manager,
        service: file.service,
        element: file.element,
        port: file.port,
        distro_note: file.distro_note,
        test: file.test,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("datastores")).unwrap()
    }

    fn req(db: &str, version: Option<&str>, release: Option<&str>, arch: Arch) -> DbRequest {
        DbRequest {
            db: db.into(),
            version: version.map(Into::into),
            source: Source::Distro,
            release: release.map(Into::into),
            arch,
        }
    }

    fn distro(db: &str, version: Option<&str>, release: Option<&str>) -> DbRequest {
        req(db, version, release, Arch::Amd64)
    }

    fn no_match(cat: &Catalog, r: &DbRequest) -> String {
        match cat.resolve(r) {
            Err(e @ CatalogError::NoMatch { .. }) => e.to_string(),
            other => panic!("expected NoMatch for {r:?}, got {other:?}"),
        }
    }

    #[test]
    fn every_row_resolves_to_itself() {
        let cat = catalog();
        let rows: Vec<&Row> = cat.rows(None).collect();
        assert!(rows.len() >= 6, "expected the distro rows, got {rows:?}");
        for row in rows {
            for &arch in &row.arch {
                let r = DbRequest {
                    db: row.database.clone(),
                    version: Some(row.version.clone()),
                    source: row.source,
                    release: Some(row.release.clone()),
                    arch,
                };
                let got = cat.resolve(&r).unwrap();
                assert_eq!(
                    (
                        &got.db,
                        &got.version,
                        got.source,
                        &got.release,
                        got.arch,
                        &got.packages
                    ),
                    (
                        &row.database,
                        &row.version,
                        row.source,
                        &row.release,
                        arch,
                        &row.packages
                    ),
                );
                let ds = cat.get(&row.database).unwrap();
                assert_eq!(got.service, ds.service);
                assert_eq!(got.port, ds.port);
                assert!(!got.test.probe.is_empty());
            }
        }
    }

    #[test]
    fn known_facts() {
        let cat = catalog();
        let pg = cat.resolve(&distro("postgresql", None, None)).unwrap();
        assert_eq!(
            (pg.version.as_str(), pg.service.as_str(), pg.port),
            ("15", "postgresql", 5432)
        );
        assert_eq!(pg.packages, ["postgresql-15", "postgresql-client-15"]);
        let maria = cat.resolve(&distro("mariadb", None, None)).unwrap();
        assert_eq!(
            (maria.version.as_str(), maria.service.as_str()),
            ("10.11", "mariadb")
        );
        let redis = cat.resolve(&distro("redis", None, None)).unwrap();
        assert_eq!(
            (redis.version.as_str(), redis.service.as_str()),
            ("7.0", "redis-server")
        );
        for db in ["mariadb", "mongodb", "mysql", "postgresql", "redis"] {
            assert_eq!(cat.get(db).unwrap().trove_manager, db);
        }
    }

    #[test]
    fn version_is_cut_to_two_components() {
        let cat = catalog();
        let got = cat
            .resolve(&distro("postgresql", Some("15.4.2"), None))
            .unwrap();
        assert_eq!(
            (got.version.as_str(), got.release.as_str()),
            ("15", "bookworm")
        );
        let got = cat
            .resolve(&distro("mariadb", Some("10.11.6"), None))
            .unwrap();
        assert_eq!(got.version, "10.11");
        assert_eq!(request_version("10.11.6").unwrap(), ["10", "11"]);
        assert_eq!(request_version("15.4").unwrap(), ["15", "4"]);
    }

    #[test]
    fn prefixes_compare_components() {
        let cat = catalog();
        assert_eq!(
            cat.resolve(&distro("mariadb", Some("10"), None))
                .unwrap()
                .version,
            "10.11"
        );
        assert_eq!(
            cat.resolve(&distro("postgresql", Some("15.4"), None))
                .unwrap()
                .version,
            "15"
        );
        no_match(&cat, &distro("postgresql", Some("1"), None));
        no_match(&cat, &distro("mariadb", Some("10.1"), None));
        assert!(prefix_related(&["15"], &["15", "4"]));
        assert!(!prefix_related(&["1"], &["15"]));
    }

    #[test]
    fn release_preference() {
        let cat = catalog();
        let at = |v: Option<&str>, r: Option<&str>| {
            cat.resolve(&distro("postgresql", v, r)).unwrap().release
        };
        assert_eq!(at(Some("17"), None), "trixie");
        assert_eq!(at(Some("15"), None), "bookworm");
        assert_eq!(at(None, None), DEFAULT_RELEASE);
        assert_eq!(at(None, Some("trixie")), "trixie");
        assert_eq!(
            cat.resolve(&distro("mariadb", Some("11"), None))
                .unwrap()
                .version,
            "11.8"
        );
        assert_eq!(
            cat.resolve(&distro("redis", None, Some("trixie")))
                .unwrap()
                .version,
            "8.0"
        );
    }

    #[test]
    fn ppc64le_is_supported_by_every_distro_row() {
        let cat = catalog();
        for db in ["postgresql", "mariadb", "redis"] {
            let got = cat
                .resolve(&req(db, None, Some("trixie"), Arch::Ppc64le))
                .unwrap();
            assert_eq!(got.arch, Arch::Ppc64le);
        }
    }

    /// The first line is one line; the table (with its header) follows.
    fn assert_shape(msg: &str, db: &str) -> String {
        let (first, rest) = msg.split_once('\n').unwrap();
        assert!(rest.starts_with("DATABASE"), "{msg}");
        assert!(rest.lines().skip(1).all(|l| l.starts_with(db)), "{msg}");
        first.to_string()
    }

    #[test]
    fn own_package_takes_catalog_metadata_and_request_version() {
        let cat = catalog();
        let mut req = distro("mysql", Some("8.0.36"), None);
        let r = cat.resolve_own_package(&req).unwrap();
        assert_eq!((r.version.as_str(), r.release.as_str()), ("8.0", DEFAULT_RELEASE));
        assert_eq!((r.service.as_str(), r.port), ("mysql", 3306));
        assert!(r.packages.is_empty());
        req.release = Some("sid".into());
        assert!(cat.resolve_own_package(&req).is_err());
        assert!(cat.resolve_own_package(&distro("nosuchdb", Some("1"), None)).is_err());
    }

    #[test]
    fn no_match_errors() {
        let cat = catalog();
        let first = assert_shape(&no_match(&cat, &distro("mysql", None, None)), "mysql");
        assert!(
            first.starts_with("no mysql (distro) for amd64: Debian ships no MySQL server"),
            "{first}"
        );

        let first = assert_shape(
            &no_match(&cat, &distro("mongodb", Some("7.0"), None)),
            "mongodb",
        );
        assert!(first.contains("not packaged by Debian"), "{first}");

        let msg = no_match(&cat, &distro("postgresql", Some("13"), None));
        let first = assert_shape(&msg, "postgresql");
        assert_eq!(
            first,
            "no postgresql 13 (distro) for amd64; pick one of the supported rows below"
        );
        assert!(msg.contains("postgresql-15 postgresql-client-15"), "{msg}");
        assert!(msg.contains("trixie"), "{msg}");

        let first = assert_shape(
            &no_match(&cat, &distro("postgresql", Some("15"), Some("trixie"))),
            "postgresql",
        );
        assert_eq!(
            first,
            "no postgresql 15 (distro) for trixie/amd64; pick one of the supported rows below"
        );

        let mut community = distro("postgresql", Some("15"), None);
        community.source = Source::Community;
        let first = assert_shape(&no_match(&cat, &community), "postgresql");
        assert!(first.starts_with("no postgresql 15 (community)"), "{first}");
        // The PGDG rows provide the versions Debian 12 lacks.
        community.version = Some("16".into());
        let pgdg = cat.resolve(&community).unwrap();
        assert_eq!(pgdg.release, "bookworm");
        assert!(pgdg.repo.is_some_and(|r| r.url.contains("apt.postgresql.org")));
    }

    #[test]
    fn request_errors() {
        let cat = catalog();
        let e = cat
            .resolve(&distro("oracle", None, None))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown database 'oracle'; use one of: mariadb, mongodb, mysql, postgresql, redis"
        );
        let e = cat
            .resolve(&distro("postgresql", None, Some("sid")))
            .unwrap_err();
        assert!(matches!(e, CatalogError::UnknownRelease { .. }), "{e}");
        for v in ["", "15.", "1 5", ".15"] {
            let e = cat
                .resolve(&distro("postgresql", Some(v), None))
                .unwrap_err();
            assert!(matches!(e, CatalogError::BadVersion { .. }), "{v:?}: {e}");
        }
    }

    #[test]
    fn table_and_rows() {
        let cat = catalog();
        let table = cat.table(None);
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        let cols: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "DATABASE", "SOURCE", "RELEASE", "ARCH", "VERSION", "PACKAGES"
            ]
        );
        let at = header.find("VERSION").unwrap();
        for line in lines {
            assert!(!line.ends_with(' '));
            // Aligned: every version cell starts under the header.
            assert_ne!(line.as_bytes()[at], b' ', "{table}");
            assert_eq!(line.as_bytes()[at - 1], b' ', "{table}");
        }
        assert!(table.contains("mysql "), "{table}");
        let pg = cat.table(Some("postgresql"));
        assert_eq!(pg.lines().count(), 5, "{pg}");
        let json = serde_json::to_value(cat.rows(Some("redis")).collect::<Vec<_>>()).unwrap();
        assert_eq!(json[0]["database"], "redis");
        assert_eq!(json[0]["source"], "distro");
        assert_eq!(json[0]["arch"][1], "ppc64le");
        assert!(cat.rows(Some("mysql")).all(|r| r.source != Source::Distro));
    }

    const GOOD: &str = "name: x\ntrove_manager: x\nservice: x\nelement: x\nport: 1\n\
        test: {guest_setup: 'true', probe: ['true']}\nrows:\n";
    const ROW: &str =
        "  - {source: distro, release: bookworm, arch: [amd64], version: '1', packages: [x]}\n";

    fn load_one(name: &str, text: &str) -> Result<Catalog, CatalogError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), text).unwrap();
        Catalog::load(dir.path())
    }

    fn load_err(name: &str, text: &str) -> String {
        let e = load_one(name, text).unwrap_err();
        assert!(matches!(e, CatalogError::Invalid { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(name), "error does not name the file: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    #[test]
    fn load_accepts_a_minimal_file() {
        let cat = load_one("x.yaml", &format!("{GOOD}{ROW}")).unwrap();
        assert_eq!(
            cat.resolve(&distro("x", None, None)).unwrap().packages,
            ["x"]
        );
        // Only amd64 is listed, so ppc64le must not fall back to it.
        let e = cat
            .resolve(&req("x", None, None, Arch::Ppc64le))
            .unwrap_err();
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        assert_eq!(
            first,
            "no x (distro) for ppc64le; pick one of the supported rows below"
        );
    }

    #[test]
    fn load_errors() {
        let row = |s: &str| {
            format!(
                "{GOOD}{}",
                ROW.replace(
                    "release: bookworm, arch: [amd64], version: '1', packages: [x]",
                    s
                )
            )
        };
        let m = load_err("y.yaml", &format!("{GOOD}{ROW}"));
        assert!(m.contains("differs from the file name"), "{m}");
        let m = load_err("x.yaml", &format!("{GOOD}{ROW}{ROW}"));
        assert!(m.contains("duplicates"), "{m}");
        let m = load_err(
            "x.yaml",
            &format!("{GOOD}{ROW}{}", ROW.replace("'1'", "'1.2'")),
        );
        assert!(m.contains("overlaps"), "{m}");
        let m = load_err(
            "x.yaml",
            &row("release: bookworm, arch: [amd64], version: '1', packages: []"),
        );
        assert!(m.contains("packages is empty"), "{m}");
        let m = load_err(
            "x.yaml",
            &row("release: bookworm, arch: [arm64], version: '1', packages: [x]"),
        );
        assert!(m.contains("arm64"), "{m}");
        let m = load_err(
            "x.yaml",
            &row("release: sid, arch: [amd64], version: '1', packages: [x]"),
        );
        assert!(m.contains("unknown release 'sid'"), "{m}");
        let m = load_err(
            "x.yaml",
            &row("release: bookworm, arch: [amd64], version: '1.2.3', packages: [x]"),
        );
        assert!(m.contains("bad version"), "{m}");
        let m = load_err("x.yaml", &format!("{GOOD}{ROW}colour: red\n"));
        assert!(m.contains("colour"), "{m}");
        // Same version on different arches is not a duplicate.
        load_one(
            "x.yaml",
            &format!("{GOOD}{ROW}{}", ROW.replace("amd64", "ppc64le")),
        )
        .unwrap();
    }

    #[test]
    fn load_errors_for_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Catalog::load(dir.path()),
            Err(CatalogError::Empty { .. })
        ));
        let missing = dir.path().join("nope");
        assert!(matches!(
            Catalog::load(&missing),
            Err(CatalogError::Read { .. })
        ));
    }

    #[test]
    fn newest_version_wins_within_a_release() {
        let text = format!("{GOOD}{ROW}{}", ROW.replace("'1'", "'2'"));
        let cat = load_one("x.yaml", &text).unwrap();
        assert_eq!(cat.resolve(&distro("x", None, None)).unwrap().version, "2");
    }
}
