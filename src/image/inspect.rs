//! What an image holds, read without root: partitions, architecture, OS
//! release, database packages, kernel, the embedded dbimage manifest and
//! the SSH keys that let people in.
//!
//! The root filesystem is chosen by content: the first ext2/3/4 partition
//! that has `/etc/os-release`. Paths inside it are resolved by `ext4-view`
//! the way Linux would inside a chroot: symlinks are followed, relative
//! ones from their directory and absolute ones from the image's root, so
//! `/etc/os-release -> ../usr/lib/os-release` and merged-/usr links like
//! `/bin -> usr/bin` work and never reach the host's files.
//!
//! Anything missing or unreadable inside the root filesystem is not an
//! error: the field is left empty and, when it is surprising, a line is
//! added to `warnings`.
//!
//! # JSON shape (`dbimage inspect -f json`), schema 1
//!
//! Fields are only ever added within a schema version; sizes and offsets
//! are bytes.
//!
//! ```text
//! {
//!   "schema": 1,
//!   "image": "path as given",
//!   "format": "qcow2",                      // qemu-img's format name
//!   "virtual_size": 1543503872,
//!   "partition_table": "gpt",               // gpt | mbr | none
//!   "partitions": [
//!     { "number": 1, "type": "BIOS boot",
//!       "type_id": "21686148-6449-6E6F-744E-656564454649",  // or "0x83"; null: whole disk
//!       "name": null, "start": 1048576, "size": 1048576,
//!       "filesystem": null }                // ext2|ext3|ext4|swap|vfat|null
//!   ],
//!   "root_partition": 2,                    // 0: the whole disk is the filesystem
//!   "architecture": { "name": "amd64", "elf": "amd64",
//!                     "elf_file": "/usr/bin/dash", "dpkg": "amd64" },
//!   "os": { "path": "/usr/lib/os-release", "pretty_name": "...", "id": "debian",
//!           "version_id": "12", "version_codename": "bookworm" },
//!   "database": { "source": "manifest",     // manifest | scan
//!                 "packages": [ { "name": "postgresql-15", "version": "15.14-0+deb12u1",
//!                                 "architecture": "amd64" } ] },   // version null: not installed
//!   "kernel": { "files": ["/boot/vmlinuz-6.1.0-28-amd64"],
//!               "packages": [ { "name": "linux-image-amd64", "version": "...", "architecture": "amd64" } ] },
//!   "manifest": { ... } | null,             // /etc/dbimage/manifest.json, whole
//!   "users": [ { "user": "debian", "uid": 1000, "home": "/home/debian",
//!                "file": "/home/debian/.ssh/authorized_keys", "mode": "0600",
//!                "owner_uid": 1000, "invalid_lines": 0,
//!                "keys": [ { "type": "ssh-ed25519", "comment": "alice@laptop",
//!                            "options": ["no-port-forwarding"] } ] } ],
//!   "warnings": [ "..." ]
//! }
//! ```
//!
//! Key material and option values (`command="..."`) are never reported.

use std::fs::File;
use std::path::Path;

use ext4_view::{Ext4, Ext4Error};
use indicatif::HumanBytes;
use serde::Serialize;

use super::partitions::{self, Layout, Partition, TableKind};
use super::{ImageError, RawImage};
use crate::arch::Arch;
use crate::build::manifest;

/// Version of the JSON shape; bumped only when a field changes meaning or
/// disappears.
pub const SCHEMA: u32 = 1;

/// Everything `dbimage inspect` reports about one image.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The image path as given.
    pub image: String,
    /// qemu-img's name for the input format.
    pub format: String,
    /// Disk size the guest sees, in bytes.
    pub virtual_size: u64,
    /// The partition table kind.
    pub partition_table: TableKind,
    /// Every partition, in table order.
    pub partitions: Vec<Partition>,
    /// Number of the partition holding the root filesystem (0: whole disk).
    pub root_partition: u32,
    /// CPU architecture of the installed system.
    pub architecture: Architecture,
    /// `/etc/os-release`.
    pub os: OsRelease,
    /// The database packages and their installed versions.
    pub database: Database,
    /// Installed kernels.
    pub kernel: Kernel,
    /// The embedded dbimage manifest, whole, if there is one.
    pub manifest: Option<serde_json::Value>,
    /// Users that have an `authorized_keys` file.
    pub users: Vec<UserKeys>,
    /// Things that look wrong but did not stop the inspection.
    pub warnings: Vec<String>,
}

/// The installed system's CPU architecture, from two independent sources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Architecture {
    /// The answer: from the ELF header if readable, else from dpkg; in
    /// dbimage's spelling (`amd64`, `ppc64le`) when it is one we build.
    pub name: Option<String>,
    /// From the ELF header of `/bin/sh` (or `/usr/bin/dpkg`).
    pub elf: Option<String>,
    /// The binary whose ELF header was read, symlinks resolved.
    pub elf_file: Option<String>,
    /// dpkg's native architecture, in Debian's spelling (`ppc64el`).
    pub dpkg: Option<String>,
}

/// The fields of os-release that identify a release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OsRelease {
    /// The file actually read, symlinks resolved.
    pub path: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// `ID`.
    pub id: Option<String>,
    /// `VERSION_ID`.
    pub version_id: Option<String>,
    /// `VERSION_CODENAME`.
    pub version_codename: Option<String>,
}

/// A package as dpkg records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Installed version; `None` when the manifest names a package that
    /// dpkg does not have installed.
    pub version: Option<String>,
    /// Package architecture (`amd64`, `all`).
    pub architecture: Option<String>,
}

/// How the database packages were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseSource {
    /// The packages named by the embedded manifest's `datastore.packages`.
    Manifest,
    /// No manifest: installed server packages of the databases we know.
    Scan,
}

/// The database packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Database {
    /// How [`Database::packages`] was chosen.
    pub source: DatabaseSource,
    /// The packages, with versions.
    pub packages: Vec<Package>,
}

/// Installed kernels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kernel {
    /// `/boot/vmlinuz-*` (and `vmlinux-*`, as on ppc64el).
    pub files: Vec<String>,
    /// Installed `linux-image-*` packages.
    pub packages: Vec<Package>,
}

/// One user's `authorized_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserKeys {
    /// Login name.
    pub user: String,
    /// The user's uid.
    pub uid: u32,
    /// Home directory from /etc/passwd.
    pub home: String,
    /// The authorized_keys path.
    pub file: String,
    /// Permission bits in octal (`0600`).
    pub mode: String,
    /// The file owner's uid.
    pub owner_uid: u32,
    /// The keys, without their key material.
    pub keys: Vec<AuthorizedKey>,
    /// Non-comment lines that are not a key sshd would accept.
    pub invalid_lines: usize,
}

/// One line of an `authorized_keys` file, minus the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizedKey {
    /// Key type (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, ...).
    #[serde(rename = "type")]
    pub key_type: String,
    /// The comment after the key, if any.
    pub comment: Option<String>,
    /// Names of the options before the key; values are left out because
    /// `command="..."` and `environment="..."` may hold secrets.
    pub options: Vec<String>,
}

/// Inspects the image at `image` (any format qemu-img reads).
pub fn inspect(image: &Path) -> Result<Report, ImageError> {
    let raw = RawImage::open(image)?;
    let file = File::open(raw.raw_path()).map_err(|source| ImageError::Io {
        path: raw.raw_path().to_path_buf(),
        source,
    })?;
    let layout = partitions::read_layout(&file, image)?;
    let mut warnings = Vec::new();
    for p in &layout.partitions {
        if p.start.saturating_add(p.size) > layout.disk_size {
            warnings.push(format!(
                "partition {} ends past the end of the disk: the image may be truncated",
                p.number
            ));
        }
    }
    let (root, fs) = find_root(&file, &layout, image, &mut warnings)?;

    let mut report = Report {
        schema: SCHEMA,
        image: image.display().to_string(),
        format: raw.format.clone(),
        virtual_size: raw.virtual_size,
        partition_table: layout.table,
        partitions: layout.partitions.clone(),
        root_partition: root,
        architecture: Architecture::default(),
        os: OsRelease::default(),
        database: Database {
            source: DatabaseSource::Scan,
            packages: Vec::new(),
        },
        kernel: Kernel::default(),
        manifest: None,
        users: Vec::new(),
        warnings,
    };
    read_root(&fs, &mut report);
    Ok(report)
}

/// The partition holding the Linux root of the raw disk at `raw`, chosen
/// by content (an ext filesystem with `/etc/os-release`), not position:
/// our GPT layout, DIB's MBR one (root first), PReP before root, or a
/// whole-disk filesystem. `image` names the disk in messages.
pub fn locate_root(raw: &Path, image: &Path) -> Result<Partition, ImageError> {
    let file = File::open(raw).map_err(|source| ImageError::Io { path: raw.to_path_buf(), source })?;
    let layout = partitions::read_layout(&file, image)?;
    let (number, _) = find_root(&file, &layout, image, &mut Vec::new())?;
    layout
        .partitions
        .into_iter()
        .find(|p| p.number == number)
        .ok_or_else(|| ImageError::NoLinuxRoot { path: image.to_path_buf(), seen: format!("partition {number} vanished") })
}

/// The first ext partition with `/etc/os-release`, and its filesystem.
fn find_root(
    file: &File,
    layout: &Layout,
    image: &Path,
    warnings: &mut Vec<String>,
) -> Result<(u32, Ext4), ImageError> {
    let mut found: Option<(u32, Ext4)> = None;
    let mut seen = Vec::new();
    for p in &layout.partitions {
        let mut line = format!("#{} {} {}", p.number, p.type_name, HumanBytes(p.size));
        match p.filesystem {
            Some(f) if f.is_ext() => {
                line.push(' ');
                line.push_str(f.name());
                match partitions::open_ext4(file, p) {
                    // symlink_metadata: a dangling os-release link still
                    // marks a Linux root (its contents get a warning).
                    Ok(fs) => match fs.symlink_metadata("/etc/os-release").map(|_| true) {
                        Ok(true) => match &found {
                            None => found = Some((p.number, fs)),
                            Some((n, _)) => warnings.push(format!(
                                "partition {} also holds a Linux root; using partition {n}",
                                p.number
                            )),
                        },
                        Ok(_) => {}
                        Err(e) if is_absent(&e) => line.push_str(" without /etc/os-release"),
                        Err(e) => line.push_str(&format!(" (unreadable: {e})")),
                    },
                    Err(e) => line.push_str(&format!(" (unreadable: {e})")),
                }
            }
            Some(f) => {
                line.push(' ');
                line.push_str(f.name());
            }
            None => line.push_str(" no filesystem"),
        }
        seen.push(line);
    }
    found.ok_or_else(|| ImageError::NoLinuxRoot {
        path: image.to_path_buf(),
        seen: if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        },
    })
}

/// Fills in everything that comes from inside the root filesystem.
fn read_root(fs: &Ext4, report: &mut Report) {
    let warnings = &mut report.warnings;

    if let Some(text) = read_text(fs, "/etc/os-release", warnings) {
        report.os = parse_os_release(&text);
        report.os.path = fs
            .canonicalize("/etc/os-release")
            .ok()
            .map(|p| p.display().to_string());
    } else {
        warnings.push("/etc/os-release cannot be read".into());
    }

    let installed = match read_text(fs, "/var/lib/dpkg/status", warnings) {
        Some(text) => parse_dpkg_status(&text),
        None => {
            warnings.push("no /var/lib/dpkg/status: package versions unknown".into());
            Vec::new()
        }
    };

    report.architecture = read_architecture(fs, &installed, warnings);

    let manifest_path = format!("/{}", manifest::EMBEDDED_PATH);
    report.manifest = read_text(fs, &manifest_path, warnings).and_then(|text| {
        serde_json::from_str(&text)
            .map_err(|e| warnings.push(format!("{manifest_path} is not valid JSON: {e}")))
            .ok()
    });

    report.database = database_packages(report.manifest.as_ref(), &installed, warnings);

    report.kernel = Kernel {
        files: kernel_files(fs, warnings),
        packages: installed
            .iter()
            .filter(|p| p.name.starts_with("linux-image-"))
            .cloned()
            .collect(),
    };

    report.users = match read_text(fs, "/etc/passwd", warnings) {
        Some(text) => parse_passwd(&text)
            .into_iter()
            .filter_map(|u| user_keys(fs, u, warnings))
            .collect(),
        None => {
            warnings.push("no /etc/passwd".into());
            Vec::new()
        }
    };
}

/// True for errors that just mean "not there".
fn is_absent(e: &Ext4Error) -> bool {
    matches!(e, Ext4Error::NotFound | Ext4Error::NotADirectory)
}

/// A file's text (lossy UTF-8), `None` if absent; other failures become
/// warnings.
fn read_text(fs: &Ext4, path: &str, warnings: &mut Vec<String>) -> Option<String> {
    match fs.read(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if is_absent(&e) => None,
        Err(e) => {
            warnings.push(format!("reading {path}: {e}"));
            None
        }
    }
}

/// The first `n` bytes of a file (fewer if it is shorter).
fn read_head(fs: &Ext4, path: &str, n: usize) -> Result<Vec<u8>, Ext4Error> {
    let mut f = fs.open(path)?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = f.read_bytes(&mut buf[got..])?;
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    Ok(buf)
}

fn read_architecture(fs: &Ext4, installed: &[Package], warnings: &mut Vec<String>) -> Architecture {
    let mut arch = Architecture::default();
    for path in ["/bin/sh", "/usr/bin/dpkg"] {
        match read_head(fs, path, 20) {
            Ok(head) => {
                if let Some(name) = elf_arch(&head) {
                    arch.elf = Some(name);
                    arch.elf_file = Some(
                        fs.canonicalize(path)
                            .map(|p| p.display().to_string())
                            .unwrap_or(path.into()),
                    );
                    break;
                }
                warnings.push(format!("{path} is not an ELF binary"));
            }
            Err(e) if is_absent(&e) => {}
            Err(e) => warnings.push(format!("reading {path}: {e}")),
        }
    }
    arch.dpkg = read_text(fs, "/var/lib/dpkg/arch", warnings)
        .and_then(|t| {
            t.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(String::from)
        })
        .or_else(|| dpkg_arch_from_status(installed));

    let dpkg_ours = arch.dpkg.as_deref().map(our_arch_name);
    if let (Some(elf), Some(dpkg)) = (&arch.elf, &dpkg_ours)
        && elf != dpkg
    {
        warnings.push(format!(
            "{} is {elf} but dpkg says {}",
            arch.elf_file.as_deref().unwrap_or("the shell"),
            arch.dpkg.as_deref().unwrap_or_default()
        ));
    }
    arch.name = arch.elf.clone().or(dpkg_ours);
    if arch.name.is_none() {
        warnings
            .push("architecture unknown: no readable /bin/sh, /usr/bin/dpkg or dpkg data".into());
    }
    arch
}

/// dbimage's name for a Debian architecture when it is one we build,
/// else the Debian name unchanged.
fn our_arch_name(debian: &str) -> String {
    debian
        .parse::<Arch>()
        .map(|a| a.name().to_string())
        .unwrap_or_else(|_| debian.to_string())
}

/// The native architecture as dpkg's own package (or any binary package)
/// records it, for images without `/var/lib/dpkg/arch`.
fn dpkg_arch_from_status(installed: &[Package]) -> Option<String> {
    let binary = |p: &&Package| p.architecture.as_deref().is_some_and(|a| a != "all");
    installed
        .iter()
        .filter(binary)
        .find(|p| p.name == "dpkg")
        .or_else(|| installed.iter().find(binary))
        .and_then(|p| p.architecture.clone())
}

/// The architecture named by an ELF header's `e_machine`, in dbimage's
/// spelling for the ones we build and Debian's for the rest.
pub fn elf_arch(head: &[u8]) -> Option<String> {
    if head.len() < 20 || head[..4] != *b"\x7fELF" {
        return None;
    }
    let little = match head[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let machine = if little {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    let name = match (machine, little) {
        (0x3E, _) => "amd64",
        (0x15, true) => "ppc64le",
        (0x15, false) => "ppc64",
        (0x14, _) => "powerpc",
        (0xB7, _) => "arm64",
        (0x28, _) => "arm",
        (0x03, _) => "i386",
        (0x16, _) => "s390x",
        (0xF3, _) => "riscv64",
        (m, _) => return Some(format!("unknown (e_machine 0x{m:x})")),
    };
    Some(name.to_string())
}

/// Parses os-release: `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        let slot = match key.trim() {
            "PRETTY_NAME" => &mut os.pretty_name,
            "ID" => &mut os.id,
            "VERSION_ID" => &mut os.version_id,
            "VERSION_CODENAME" => &mut os.version_codename,
            _ => continue,
        };
        *slot = Some(value).filter(|v| !v.is_empty());
    }
    os
}

/// Removes shell-style quotes around an os-release value.
fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return if q == '"' {
                inner
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\")
                    .replace("\\$", "$")
                    .replace("\\`", "`")
            } else {
                inner.to_string()
            };
        }
    }
    v.to_string()
}

/// The installed packages in a dpkg status file (`Status: ... installed`);
/// removed packages whose config files remain are left out.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut installed) = (None, None, None, false);
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue; // continuation of a multi-line field
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Package" => name = Some(value.to_string()),
                "Version" => version = Some(value.to_string()),
                "Architecture" => arch = Some(value.to_string()),
                "Status" => installed = value.split_whitespace().nth(2) == Some("installed"),
                _ => {}
            }
        }
        if let (Some(name), Some(version), true) = (name, version, installed) {
            out.push(Package {
                name,
                version: Some(version),
                architecture: arch,
            });
        }
    }
    out
}

/// Server packages of the databases dbimage builds, for images without a
/// manifest. `postgresql-*` is narrowed to `postgresql-<version>` so the
/// client and common packages are not mistaken for the server.
pub fn is_database_package(name: &str) -> bool {
    let pg_version = name
        .strip_prefix("postgresql-")
        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'));
    pg_version
        || name.starts_with("mariadb-server")
        || name.starts_with("mysql-server")
        || name == "redis-server"
        || name.starts_with("mongodb-org-server")
}

fn database_packages(
    manifest: Option<&serde_json::Value>,
    installed: &[Package],
    warnings: &mut Vec<String>,
) -> Database {
    let named: Option<Vec<&str>> = manifest
        .and_then(|m| m.pointer("/datastore/packages"))
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect());
    match named {
        Some(names) => {
            let packages = names
                .into_iter()
                .map(|n| {
                    installed
                        .iter()
                        .find(|p| p.name == n)
                        .cloned()
                        .unwrap_or_else(|| {
                            warnings
                                .push(format!("the manifest names {n}, which is not installed"));
                            Package {
                                name: n.to_string(),
                                version: None,
                                architecture: None,
                            }
                        })
                })
                .collect();
            Database {
                source: DatabaseSource::Manifest,
                packages,
            }
        }
        None => {
            let packages: Vec<_> = installed
                .iter()
                .filter(|p| is_database_package(&p.name))
                .cloned()
                .collect();
            // With no package data at all, the missing dpkg status has
            // already been reported.
            if packages.is_empty() && !installed.is_empty() {
                warnings.push("no database server package is installed".into());
            }
            Database {
                source: DatabaseSource::Scan,
                packages,
            }
        }
    }
}

fn kernel_files(fs: &Ext4, warnings: &mut Vec<String>) -> Vec<String> {
    let entries = match fs.read_dir("/boot") {
        Ok(d) => d,
        Err(e) if is_absent(&e) => return Vec::new(),
        Err(e) => {
            warnings.push(format!("reading /boot: {e}"));
            return Vec::new();
        }
    };
    let mut files: Vec<String> = entries
        .filter_map(|e| {
            e.map_err(|e| warnings.push(format!("reading /boot: {e}")))
                .ok()
        })
        .filter_map(|e| e.file_name().as_str().ok().map(String::from))
        .filter(|n| n.starts_with("vmlinuz-") || n.starts_with("vmlinux-"))
        .map(|n| format!("/boot/{n}"))
        .collect();
    files.sort();
    files
}

/// One /etc/passwd entry, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Parses /etc/passwd, skipping malformed lines and NIS `+`/`-` entries.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with(['#', '+', '-']))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() != 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].into(),
            })
        })
        .collect()
}

fn user_keys(fs: &Ext4, user: PasswdEntry, warnings: &mut Vec<String>) -> Option<UserKeys> {
    if !user.home.starts_with('/') {
        return None;
    }
    let file = format!("{}/.ssh/authorized_keys", user.home.trim_end_matches('/'));
    let meta = match fs.metadata(file.as_str()) {
        Ok(m) => m,
        Err(e) if is_absent(&e) => return None,
        Err(e) => {
            warnings.push(format!("{}: reading {file}: {e}", user.name));
            return None;
        }
    };
    if !meta.file_type().is_regular_file() {
        warnings.push(format!("{}: {file} is not a regular file", user.name));
        return None;
    }
    let text = read_text(fs, &file, warnings)?;
    let (keys, invalid_lines) = parse_authorized_keys(&text);
    let mode = meta.mode();
    if mode & 0o077 != 0 {
        warnings.push(format!(
            "{}: {file} has mode {mode:04o}, expected 0600",
            user.name
        ));
    }
    if meta.uid() != user.uid && meta.uid() != 0 {
        warnings.push(format!(
            "{}: {file} is owned by uid {}, not {}: sshd will ignore it",
            user.name,
            meta.uid(),
            user.uid
        ));
    }
    Some(UserKeys {
        user: user.name,
        uid: user.uid,
        home: user.home,
        file,
        mode: format!("{mode:04o}"),
        owner_uid: meta.uid(),
        keys,
        invalid_lines,
    })
}

/// True for the key types sshd accepts in authorized_keys.
fn is_key_type(token: &str) -> bool {
    ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"]
        .iter()
        .any(|p| token.starts_with(p))
}

/// Splits on blanks outside double quotes (`command="a b"` is one token).
fn tokens(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (None, false, false);
    for (i, c) in line.char_indices() {
        if start.is_none() && !c.is_whitespace() {
            start = Some(i);
        }
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c.is_whitespace()
            && !quoted
            && let Some(s) = start.take()
        {
            out.push((s, &line[s..i]));
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

/// Option names from an authorized_keys options field (`a,b="x,y",c`).
fn option_names(field: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut cur, mut quoted, mut in_value) = (String::new(), false, false);
    for c in field.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                names.push(std::mem::take(&mut cur));
                in_value = false;
            }
            '=' if !quoted => in_value = true,
            _ if !in_value => cur.push(c),
            _ => {}
        }
    }
    names.push(cur);
    names.retain(|n| !n.is_empty());
    names
}

/// The keys in an authorized_keys file (type, comment, option names) and
/// the number of non-comment lines that hold no key.
pub fn parse_authorized_keys(text: &str) -> (Vec<AuthorizedKey>, usize) {
    let mut keys = Vec::new();
    let mut invalid = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let toks = tokens(line);
        // The type is the first or, after an options field, the second
        // token; the key material must follow it.
        let Some(i) = toks
            .iter()
            .take(2)
            .position(|(_, t)| is_key_type(t))
            .filter(|&i| i + 1 < toks.len())
        else {
            invalid += 1;
            continue;
        };
        let comment = toks
            .get(i + 2)
            .map(|&(at, _)| line[at..].trim().to_string());
        keys.push(AuthorizedKey {
            key_type: toks[i].1.to_string(),
            comment,
            options: if i == 1 {
                option_names(toks[0].1)
            } else {
                Vec::new()
            },
        });
    }
    (keys, invalid)
}

#[cfg(test)]
mod tests {
    use super::super::partitions::fixtures::*;
    use super::*;

    const MANIFEST: &str = r#"{"name": "redis-7.0-test", "created": "2026-11-24",
        "datastore": {"db": "redis", "version": "7.0", "source": "distro",
                      "release": "bookworm", "arch": "amd64",
                      "packages": ["redis-server", "redis-tools"]}}"#;

    fn host_arch() -> String {
        our_arch_name(host_dpkg_arch())
    }

    #[test]
    fn inspect_gpt_image_reports_everything() {
        let dir = tempfile::tempdir().unwrap();
        let img = gpt_disk(dir.path(), None);
        let r = inspect(&img).unwrap();
        assert_eq!(r.format, "raw");
        assert_eq!(r.virtual_size, 27 * MIB);
        assert_eq!(r.partition_table, TableKind::Gpt);
        assert_eq!(r.partitions.len(), 2);
        assert_eq!(r.root_partition, 2);

        assert_eq!(
            r.os.path.as_deref(),
            Some("/usr/lib/os-release"),
            "symlink resolved"
        );
        assert_eq!(
            r.os.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(r.os.version_codename.as_deref(), Some("bookworm"));
        assert_eq!(r.os.id.as_deref(), Some("debian"));

        assert_eq!(r.architecture.elf.as_deref(), Some(host_arch().as_str()));
        assert_eq!(r.architecture.elf_file.as_deref(), Some("/usr/bin/dash"));
        assert_eq!(r.architecture.dpkg.as_deref(), Some(host_dpkg_arch()));
        assert_eq!(r.architecture.name, Some(host_arch()));

        assert_eq!(r.database.source, DatabaseSource::Scan);
        let db: Vec<_> = r
            .database
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_deref()))
            .collect();
        assert_eq!(db, [("redis-server", Some("5:7.0.15-1~deb12u1"))]);

        assert_eq!(r.kernel.files, [format!("/boot/vmlinuz-{KERNEL}")]);
        let kp: Vec<_> = r.kernel.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            kp,
            [
                format!("linux-image-{KERNEL}").as_str(),
                "linux-image-amd64"
            ]
        );
        assert!(r.manifest.is_none());

        assert_eq!(r.users.len(), 2, "{:?}", r.users);
        let root = &r.users[0];
        assert_eq!(
            (root.user.as_str(), root.mode.as_str(), root.owner_uid),
            ("root", "0644", 0)
        );
        assert_eq!(root.keys[0].key_type, "ecdsa-sha2-nistp256");
        assert_eq!(root.keys[0].comment, None);
        let deb = &r.users[1];
        assert_eq!(deb.user, "debian");
        assert_eq!(deb.file, "/home/debian/.ssh/authorized_keys");
        assert_eq!(
            (deb.mode.as_str(), deb.owner_uid, deb.uid),
            ("0600", DEBIAN_UID, DEBIAN_UID)
        );
        let types: Vec<_> = deb.keys.iter().map(|k| k.key_type.as_str()).collect();
        assert_eq!(types, ["ssh-ed25519", "ssh-rsa"]);
        assert_eq!(deb.keys[0].comment.as_deref(), Some("alice@laptop"));
        assert_eq!(deb.keys[1].comment.as_deref(), Some("bob key"));
        assert_eq!(deb.keys[1].options, ["no-port-forwarding", "command"]);

        assert_eq!(
            r.warnings,
            ["root: /root/.ssh/authorized_keys has mode 0644, expected 0600"]
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("SECRET"), "no key material in the report");
        assert!(!json.contains("echo a b"), "no option values in the report");
    }

    #[test]
    fn inspect_qcow2_gives_the_same_report() {
        let dir = tempfile::tempdir().unwrap();
        let raw = gpt_disk(dir.path(), Some(MANIFEST));
        let qcow2 = qcow2(&raw);
        let a = inspect(&raw).unwrap();
        let b = inspect(&qcow2).unwrap();
        assert_eq!(b.format, "qcow2");
        let strip = |r: &Report| {
            let mut v = serde_json::to_value(r).unwrap();
            v["image"] = serde_json::Value::Null;
            v["format"] = serde_json::Value::Null;
            v
        };
        assert_eq!(strip(&a), strip(&b));
        assert!(b.manifest.is_some());
        assert_eq!(b.database.source, DatabaseSource::Manifest);
        let db: Vec<_> = b
            .database
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.is_some()))
            .collect();
        assert_eq!(db, [("redis-server", true), ("redis-tools", false)]);
        assert!(
            b.warnings
                .iter()
                .any(|w| w.contains("redis-tools, which is not installed")),
            "{:?}",
            b.warnings
        );
    }

    #[test]
    fn inspect_whole_disk_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let tree = root_tree(dir.path(), "tree", None);
        let img = ext4(dir.path(), "whole.ext4", Some(&tree), 24);
        let r = inspect(&img).unwrap();
        assert_eq!((r.partition_table, r.root_partition), (TableKind::None, 0));
        assert_eq!(r.os.version_codename.as_deref(), Some("bookworm"));
    }

    #[test]
    fn inspect_resolves_symlinks_inside_the_image_only() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let tree = root_tree(dir.path(), "tree", None);
        // Absolute links must resolve from the image's root, never the
        // host's: the host has its own /etc/os-release and /etc/passwd.
        std::fs::remove_file(tree.join("etc/os-release")).unwrap();
        symlink("/usr/lib/os-release", tree.join("etc/os-release")).unwrap();
        std::fs::remove_file(tree.join("usr/bin/sh")).unwrap();
        symlink("/../../usr/bin/dash", tree.join("usr/bin/sh")).unwrap();
        std::fs::rename(tree.join("etc/passwd"), tree.join("usr/lib/passwd")).unwrap();
        symlink("/usr/lib/passwd", tree.join("etc/passwd")).unwrap();
        let img = ext4(dir.path(), "abs.ext4", Some(&tree), 24);
        let r = inspect(&img).unwrap();
        assert_eq!(r.os.path.as_deref(), Some("/usr/lib/os-release"));
        assert_eq!(r.os.version_codename.as_deref(), Some("bookworm"));
        assert_eq!(r.architecture.elf_file.as_deref(), Some("/usr/bin/dash"));
        assert_eq!(r.users.len(), 2);

        // A dangling os-release link still marks the root; the gap is a warning.
        std::fs::remove_file(tree.join("usr/lib/os-release")).unwrap();
        let img = ext4(dir.path(), "dangling.ext4", Some(&tree), 24);
        let r = inspect(&img).unwrap();
        assert_eq!(r.os, OsRelease::default());
        assert!(
            r.warnings
                .contains(&"/etc/os-release cannot be read".to_string()),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn inspect_chooses_the_root_by_content_not_position() {
        let dir = tempfile::tempdir().unwrap();
        let data_tree = dir.path().join("data");
        std::fs::create_dir_all(data_tree.join("etc")).unwrap();
        std::fs::write(data_tree.join("etc/not-os-release"), "x").unwrap();
        let data = ext4(dir.path(), "data.ext4", Some(&data_tree), 8);
        let tree = root_tree(dir.path(), "tree", None);
        let root = ext4(dir.path(), "root.ext4", Some(&tree), 24);
        let img = disk(
            dir.path(),
            "two.raw",
            34,
            Some("label: dos\nstart=2048,size=16384,type=83\nstart=18432,size=49152,type=83\n"),
            &[(MIB, &data), (9 * MIB, &root)],
        );
        let r = inspect(&img).unwrap();
        assert_eq!(r.root_partition, 2);
    }

    #[test]
    fn inspect_errors_are_bad_input_and_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let check = |path: &Path, want: &str| {
            let err = inspect(path).unwrap_err();
            let msg = err.to_string();
            assert!(err.is_bad_input(), "{msg}");
            assert!(msg.contains(want), "{msg} should mention {want}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        };
        check(&d.join("missing.qcow2"), "no such file");

        let empty = d.join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        check(&empty, "not a disk image");

        let random = d.join("random.img");
        let bytes: Vec<u8> = (0..MIB)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&random, bytes).unwrap();
        check(&random, "not a disk image");

        let swap = disk(
            d,
            "swap.raw",
            8,
            Some("label: gpt\nstart=2048,size=4096,type=S\nstart=6144,type=L\n"),
            &[],
        );
        check(&swap, "no Linux root filesystem found");
        let err = inspect(&swap).unwrap_err().to_string();
        assert!(
            err.contains("#1 Linux swap 2.00 MiB no filesystem, #2 Linux filesystem"),
            "{err}"
        );

        let raw = gpt_disk(d, None);
        let good = qcow2(&raw);
        let cut = d.join("cut.qcow2");
        std::fs::copy(&good, &cut).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
        f.set_len(f.metadata().unwrap().len() / 2).unwrap();
        check(&cut, "truncated qcow2");

        let header_only = d.join("header.qcow2");
        std::fs::write(&header_only, &std::fs::read(&good).unwrap()[..100]).unwrap();
        check(&header_only, "truncated qcow2");
    }

    #[test]
    fn inspect_parses_elf_headers() {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[18] = 0x3E;
        assert_eq!(elf_arch(&h).as_deref(), Some("amd64"));
        h[18] = 0x15;
        assert_eq!(elf_arch(&h).as_deref(), Some("ppc64le"));
        h[5] = 2;
        h[18] = 0;
        h[19] = 0x15;
        assert_eq!(elf_arch(&h).as_deref(), Some("ppc64"));
        assert_eq!(elf_arch(b"#!/bin/sh\nexec true\n"), None);
        assert_eq!(our_arch_name("ppc64el"), "ppc64le");
        assert_eq!(our_arch_name("arm64"), "arm64");
    }

    #[test]
    fn inspect_parses_os_release() {
        let os = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nID=debian\nVERSION_CODENAME='trixie'\n# c\n",
        );
        assert_eq!(
            os.pretty_name.as_deref(),
            Some("Debian GNU/Linux trixie/sid")
        );
        assert_eq!(os.version_codename.as_deref(), Some("trixie"));
        assert_eq!(os.version_id, None);
    }

    #[test]
    fn inspect_parses_dpkg_status() {
        let text = "Package: dpkg\nStatus: install ok installed\nArchitecture: ppc64el\nVersion: 1.21\n\
                    Description: x\n Version: 9\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                    Package: postgresql-15\nStatus: hold ok installed\nVersion: 15.14-0+deb12u1\n";
        let p = parse_dpkg_status(text);
        let names: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("dpkg", Some("1.21")),
                ("postgresql-15", Some("15.14-0+deb12u1"))
            ]
        );
        assert_eq!(dpkg_arch_from_status(&p).as_deref(), Some("ppc64el"));
        for yes in [
            "postgresql-15",
            "postgresql-9.6",
            "mariadb-server",
            "mariadb-server-10.11",
            "mysql-server-8.0",
            "redis-server",
            "mongodb-org-server",
        ] {
            assert!(is_database_package(yes), "{yes}");
        }
        for no in [
            "postgresql-common",
            "postgresql-client-15",
            "redis-tools",
            "mariadb-client",
            "postgresql-",
        ] {
            assert!(!is_database_package(no), "{no}");
        }
    }

    #[test]
    fn inspect_parses_authorized_keys_without_key_material() {
        let (keys, invalid) = parse_authorized_keys(
            "# comment\n\n\
             ssh-ed25519 AAAA a@b  with  spaces\n\
             from=\"10.0.0.1,10.0.0.2\",no-pty sk-ssh-ed25519@openssh.com AAAA\n\
             command=\"echo x y\" ssh-rsa AAAA c\n\
             garbage line here\n\
             ssh-rsa\n",
        );
        assert_eq!(invalid, 2);
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].comment.as_deref(), Some("a@b  with  spaces"));
        assert_eq!(keys[1].key_type, "sk-ssh-ed25519@openssh.com");
        assert_eq!(keys[1].options, ["from", "no-pty"]);
        assert_eq!(keys[1].comment, None);
        assert_eq!(
            (keys[2].options.as_slice(), keys[2].comment.as_deref()),
            (["command".to_string()].as_slice(), Some("c"))
        );
    }

    #[test]
    fn inspect_parses_passwd() {
        let u = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n+nis\nbad:line\nx:x:notanumber:0::/h:/bin/sh\n",
        );
        assert_eq!(
            u,
            [PasswdEntry {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into()
            }]
        );
    }
}
