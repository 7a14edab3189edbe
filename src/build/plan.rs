//! Plan, then act: every input of `dbimage make` resolved and checked into
//! a [`Plan`] before anything on the host changes.

use crate::host_tools::{self, Group};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::arch::Arch;
use crate::catalog::{Catalog, DbRequest, Resolved, Source};
use crate::cli::{Compression, MakeArgs};
use crate::commands::UsageError;
use crate::elements::{self, Element, Library};
use crate::run::Cmd;
use crate::settings::Settings;

use super::guest_agent::{self, GuestAgentPlan};
use super::tarball;

/// The OS element every build starts from.
const OS_ELEMENT: &str = "debian";
/// Elements every image gets besides the OS and the datastore.
const BASE_ELEMENTS: [&str; 3] = ["vm", "cloud-init-datasources", "db-user"];
/// Debian's cloud images call their user this.
const DEFAULT_USER: &str = "debian";

/// A fully resolved `make` request.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// What was asked, normalised.
    pub request: DbRequest,
    /// The catalog row it resolved to.
    pub datastore: Resolved,
    /// Where the database's bits come from.
    pub install: Install,
    /// Image name (`<db>-<version>[-c|-e]<source>-<date>`).
    pub name: String,
    /// Final QCOW2 path.
    pub output: PathBuf,
    /// Final manifest path.
    pub manifest: PathBuf,
    /// Elements in dependency order, with where each was found.
    pub elements: Vec<PlannedElement>,
    /// Packages per phase from the elements plus the database's.
    pub packages: BTreeMap<String, Vec<String>>,
    /// Packages removed per phase.
    pub uninstall: BTreeMap<String, Vec<String>>,
    /// The database user.
    pub user: String,
    /// Public key for that user, if any.
    pub ssh_key: Option<String>,
    /// Debian mirror.
    pub mirror: String,
    /// Security mirror, or none when disabled.
    pub security_mirror: Option<String>,
    /// QCOW2 compression.
    #[serde(serialize_with = "ser_compression")]
    pub compression: Compression,
    /// Forced disk size in MiB.
    pub size_mib: Option<u64>,
    /// Publish after building (no `-I`).
    pub publish: bool,
    /// Replace an existing image of the same name.
    pub force: bool,
    /// Variables every hook sees.
    pub env: BTreeMap<String, String>,
    /// Where datastores/, elements/ and the vendor keys live.
    pub data_dir: PathBuf,
    /// Cache directory (base trees, packages).
    pub cache_dir: PathBuf,
    /// Parent of this build's work directory.
    pub work_dir: PathBuf,
    /// Debian's archive keyring, which debootstrap checks the base against.
    pub debian_keyring: PathBuf,
    /// Whether the target architecture needs qemu-user on this host.
    pub emulated: bool,
    /// How the `trove-guest-agent` element installs the agent; `None`
    /// when the element is off.
    pub guest_agent: Option<GuestAgentPlan>,
    /// The agent's configuration, written to the image when set (filled
    /// by the command; never serialized: it holds credentials).
    #[serde(skip)]
    pub guest_agent_conf: Option<String>,
}

/// Where the chroot sees the user's package (`-p`).
const PACKAGE_DIR_IN_TREE: &str = "/tmp/dbimage-pkg";

/// How the database gets into the image.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Install {
    /// The catalog row's packages (the distro's or a vendor repository's).
    Catalog,
    /// The user's .deb, installed by apt with its dependencies from Debian.
    Deb {
        /// The file on the host.
        path: PathBuf,
        /// Its package name.
        package: String,
        /// Its version.
        version: String,
    },
    /// The user's tarball; its `setup.sh` runs in the chroot.
    Tarball {
        /// The file on the host.
        path: PathBuf,
    },
}

impl Install {
    /// Checks a `-p` file now, so a bad one fails before anything is built.
    fn inspect(path: &Path, arch: Arch) -> anyhow::Result<Install> {
        let shown = path.display();
        if !path.is_file() {
            return Err(UsageError(format!("-p {shown}: no such file")).into());
        }
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.ends_with(".deb") {
            host_tools::require(&[Group::Deb], &[])?;
            let fields = Cmd::new("dpkg-deb")
                .args(["--field"])
                .arg(path)
                .args(["Package", "Version", "Architecture"])
                .output()
                .map_err(|e| {
                    UsageError(format!("-p {shown} is not a valid Debian package: {}", first_line(&e.to_string())))
                })?;
            let field = |key: &str| {
                fields
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}: ")))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_string()
            };
            let (package, version, deb_arch) = (field("Package"), field("Version"), field("Architecture"));
            if package.is_empty() || version.is_empty() {
                return Err(UsageError(format!("-p {shown} has no Package or Version field; is it a .deb?")).into());
            }
            if deb_arch != "all" && deb_arch != arch.debian() {
                return Err(UsageError(format!(
                    "-p {shown} is built for {deb_arch}, the image is {}; use the package for {} or pass -a",
                    arch,
                    arch.debian()
                ))
                .into());
            }
            return Ok(Install::Deb { path: path.to_path_buf(), package, version });
        }
        tarball::detect(path).map_err(|e| UsageError(format!("-p {shown}: {e}")))?;
        tarball::check(path, &tarball::Limits::default()).map_err(|e| UsageError(format!("-p {shown}: {e}")))?;
        Ok(Install::Tarball { path: path.to_path_buf() })
    }

    /// Where a `-p` .deb appears inside the chroot, for apt.
    pub fn deb_path_in_tree(path: &Path) -> String {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{PACKAGE_DIR_IN_TREE}/{name}")
    }

    /// The scratch directory for the user's package, inside the tree.
    pub fn dir_in_tree(tree: &Path) -> PathBuf {
        tree.join(PACKAGE_DIR_IN_TREE.trim_start_matches('/'))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// An element chosen for the build.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedElement {
    /// Its name.
    pub name: String,
    /// The directory it was found in.
    pub path: PathBuf,
}

fn ser_compression<S: serde::Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match c {
        Compression::Zlib => "zlib",
        Compression::Zstd => "zstd",
    })
}

impl Plan {
    /// The groups of host programs building this plan needs: on this host,
    /// or (`remote`) on a build VM, with only SSH and the publish check here.
    pub fn host_tools(&self, remote: bool) -> Vec<Group> {
        if remote {
            return if self.publish { vec![Group::Remote, Group::Publish] } else { vec![Group::Remote] };
        }
        let mut groups = vec![Group::Build];
        if self.emulated {
            groups.push(Group::Foreign);
        }
        if self.datastore.repo.is_some() {
            groups.push(Group::Vendor);
        }
        if matches!(self.install, Install::Deb { .. }) {
            groups.push(Group::Deb);
        }
        groups
    }

    /// Adds a public key (the controller's) to the ones the user gets.
    pub fn add_ssh_key(&mut self, key: &str) {
        let keys = match self.ssh_key.take() {
            Some(k) => format!("{k}\n{}", key.trim()),
            None => key.trim().to_string(),
        };
        self.env.insert("DIB_DBIMAGE_SSH_KEY".into(), keys.clone());
        self.ssh_key = Some(keys);
    }

    /// Resolves `args` against the settings, catalog and elements.
    pub fn new(args: &MakeArgs, settings: &Settings) -> anyhow::Result<(Plan, Vec<Element>)> {
        let host = Arch::host();
        let arch = args.arch.or(host).ok_or_else(|| {
            UsageError("cannot tell this host's architecture; pass -a amd64 or -a ppc64le".into())
        })?;
        let emulated = host != Some(arch);
        // A remote build VM checks its own emulation.
        if emulated && args.dibvm.is_none() {
            check_binfmt(arch)?;
        }
        let source = if args.community {
            Source::Community
        } else if args.enterprise {
            Source::Enterprise
        } else {
            Source::Distro
        };
        let request = DbRequest {
            db: args.db.clone(),
            version: args.db_version.clone(),
            source,
            release: args.release.clone(),
            arch,
        };
        let catalog = Catalog::load(&settings.data_dir.join("datastores"))?;
        let (datastore, db_install) = match &args.package {
            None => (catalog.resolve(&request)?, Install::Catalog),
            Some(path) => {
                let mut ds = catalog.resolve_own_package(&request)?;
                let install = Install::inspect(path, arch)?;
                if let Install::Deb { package, .. } = &install {
                    ds.packages = vec![package.clone()];
                }
                (ds, install)
            }
        };

        let user = args.user.clone().unwrap_or_else(|| DEFAULT_USER.to_string());
        check_user_name(&user)?;
        let ssh_key = args.key.as_deref().map(read_key).transpose()?;

        let outdir = args.outdir.clone().unwrap_or_else(|| settings.images_dir.clone());
        let name = image_name(&datastore, &settings.source, crate::clock::today());
        let output = outdir.join(format!("{name}.qcow2"));
        let manifest = outdir.join(format!("{name}.json"));
        if !args.force && !args.dry_run {
            for p in [&output, &manifest] {
                if p.exists() {
                    return Err(UsageError(format!(
                        "{} already exists; remove it or pass --force to replace it",
                        p.display()
                    ))
                    .into());
                }
            }
        }

        let mut env = BTreeMap::new();
        env.insert("DISTRO_NAME".into(), "debian".into());
        env.insert("DIB_RELEASE".into(), datastore.release.clone());
        env.insert("ARCH".into(), arch.debian().into());
        env.insert("DIB_DBIMAGE_USER".into(), user.clone());
        env.insert("DBIMAGE_DB".into(), datastore.db.clone());
        env.insert("DBIMAGE_DB_VERSION".into(), datastore.version.clone());
        env.insert("DBIMAGE_DB_SERVICE".into(), datastore.service.clone());
        env.insert("DBIMAGE_DB_PACKAGES".into(), datastore.packages.join(" "));
        if let Some(k) = &ssh_key {
            env.insert("DIB_DBIMAGE_SSH_KEY".into(), k.clone());
        }
        // The request's own DIB_* variables reach hooks as in DIB.
        for (k, v) in std::env::vars() {
            if k.starts_with("DIB_") {
                env.entry(k).or_insert(v);
            }
        }

        let library = Library::discover(&elements::search_path(&settings.data_dir.join("elements")))?;
        let mut wanted: Vec<String> = vec![OS_ELEMENT.to_string()];
        wanted.extend(BASE_ELEMENTS.iter().map(|s| s.to_string()));
        wanted.push(datastore.element.clone());
        wanted.extend(args.elements.iter().cloned());
        if wants_guest_agent(args, arch)? && !wanted.iter().any(|e| e == guest_agent::ELEMENT) {
            wanted.push(guest_agent::ELEMENT.to_string());
        }
        let chosen = library.resolve(&wanted)?;
        // Two elements shipping the same environment.d file is an error in
        // DIB; find it now rather than in the middle of the build.
        elements::environment_files(&chosen)?;
        let pkg_plan = elements::package_plan(&chosen, arch, &env)?;
        let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (phase, list) in pkg_plan.install {
            packages.entry(phase.dir_name().to_string()).or_default().extend(list);
        }
        let install = packages.entry(elements::Phase::Install.dir_name().to_string()).or_default();
        let db_packages = match &db_install {
            Install::Deb { path, .. } => vec![Install::deb_path_in_tree(path)],
            Install::Tarball { .. } => Vec::new(),
            Install::Catalog => datastore.packages.clone(),
        };
        for p in db_packages {
            if !install.contains(&p) {
                install.push(p);
            }
        }
        let uninstall = pkg_plan
            .uninstall
            .into_iter()
            .map(|(phase, list)| (phase.dir_name().to_string(), list))
            .collect();

        let agent_element = chosen.iter().find(|e| e.name == guest_agent::ELEMENT);
        if args.no_guest_agent && agent_element.is_some() {
            return Err(UsageError(format!(
                "another element depends on {}; drop --no-guest-agent or that element",
                guest_agent::ELEMENT
            ))
            .into());
        }
        let guest_agent = agent_element
            .map(|e| GuestAgentPlan::new(&settings.guest_agent_install, &e.path, &settings.cache_dir))
            .transpose()?;
        if guest_agent.is_some() {
            env.insert("DBIMAGE_GUEST_AGENT_DIR".into(), guest_agent::STAGE_IN_TREE.into());
        }

        let security_mirror =
            settings.security_for(&datastore.release, arch).then(|| settings.security_mirror.clone());
        let plan = Plan {
            elements: chosen
                .iter()
                .map(|e| PlannedElement { name: e.name.clone(), path: e.path.clone() })
                .collect(),
            request,
            datastore,
            install: db_install,
            name,
            output,
            manifest,
            packages,
            uninstall,
            user,
            ssh_key,
            mirror: settings.mirror.clone(),
            security_mirror,
            compression: args.compression,
            size_mib: args.size,
            publish: !args.image_only,
            force: args.force,
            env,
            data_dir: settings.data_dir.clone(),
            cache_dir: settings.cache_dir.clone(),
            work_dir: settings.work_dir.clone(),
            debian_keyring: settings.debian_keyring.clone(),
            emulated,
            guest_agent,
            guest_agent_conf: None,
        };
        Ok((plan, chosen))
    }
}

/// `<db>-<version>[-c|-e]<source>-<YYYY-MM-DD>`.
pub fn image_name(ds: &Resolved, source_tag: &str, date: (i64, u32, u32)) -> String {
    let (y, m, d) = date;
    format!(
        "{}-{}{}{}-{y:04}-{m:02}-{d:02}",
        ds.db,
        ds.version,
        ds.source.name_suffix(),
        source_tag
    )
}

/// Whether the build gets the Trove guest agent: when asked for
/// (`--guest-agent`, `-x trove-guest-agent`), else whenever an amd64 image
/// is published to Trove (no `-I`) unless `--no-guest-agent`. ppc64le gets
/// it only when asked: several of its dependencies have no ppc64le wheels
/// and the image has no compiler, so the default would fail the build.
fn wants_guest_agent(args: &MakeArgs, arch: Arch) -> Result<bool, UsageError> {
    let asked = args.guest_agent || args.elements.iter().any(|e| e == guest_agent::ELEMENT);
    if asked && args.no_guest_agent {
        return Err(UsageError(format!("--no-guest-agent contradicts -x {}", guest_agent::ELEMENT)));
    }
    let by_default = !args.image_only && !args.no_guest_agent;
    if by_default && !asked && arch == Arch::Ppc64le {
        tracing::warn!(
            "the Trove guest agent is left out of ppc64le images by default (some of its dependencies need a \
             compiler there); pass --guest-agent to try, or --no-guest-agent to silence this"
        );
        return Ok(false);
    }
    Ok(asked || by_default)
}

fn check_user_name(user: &str) -> Result<(), UsageError> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "-b {user:?} is not a valid user name; use lower-case letters, digits, '-' and '_'"
        )))
    }
}

/// Whether `s` looks like one OpenSSH public key line.
fn looks_like_key(s: &str) -> bool {
    let mut parts = s.split_whitespace();
    matches!(parts.next(), Some(t) if t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"))
        && parts.next().is_some()
}

/// Whether a `-k` value names a cloud keypair: no such file, not a key, and
/// shaped like a Nova keypair name.
pub fn is_keypair_name(value: &str) -> bool {
    !Path::new(value).exists()
        && !looks_like_key(value)
        && !value.is_empty()
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ' | '@'))
}

/// `-k`: a public key file, or the key itself.
pub fn read_key(value: &str) -> anyhow::Result<String> {
    let path = Path::new(value);
    let key = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading public key {}", path.display()))?
            .trim()
            .to_string()
    } else {
        value.trim().to_string()
    };
    // A file may hold several keys, as an authorized_keys file does.
    let lines: Vec<&str> = key.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if !lines.is_empty() && lines.iter().all(|l| looks_like_key(l)) && (lines.len() == 1 || path.is_file()) {
        return Ok(lines.join("\n"));
    }
    if path.is_file() {
        Err(UsageError(format!(
            "-k {value}: the file is not an OpenSSH public key (one per line, 'ssh-ed25519 AAAA…'); pass the .pub file"
        ))
        .into())
    } else {
        Err(UsageError(format!(
            "-k {value}: no such key file and not a public key; pass a .pub file or the key itself (cloud keypairs need a configured cloud)"
        ))
        .into())
    }
}

/// A foreign architecture runs through qemu-user. Planning only looks, so
/// `--dry-run` changes nothing: the build registers an installed but
/// unregistered qemu-user itself (`disk::binfmt::ensure`).
fn check_binfmt(arch: Arch) -> Result<(), UsageError> {
    use crate::disk::binfmt::{self, Emulation};
    match binfmt::status(arch) {
        Emulation::Enabled => {
            tracing::info!("{arch} binaries run through qemu-user on this host");
            Ok(())
        }
        Emulation::Registrable { interpreter } => {
            tracing::info!(
                "qemu-user for {arch} ({}) is installed but not registered; the build will register it",
                interpreter.display()
            );
            Ok(())
        }
        Emulation::NoFixBinary => Err(UsageError(binfmt::BinfmtError::NoFixBinary(arch).to_string())),
        Emulation::Missing => Err(UsageError(binfmt::missing_message(arch))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: Source) -> Resolved {
        Resolved { source, ..Resolved::example() }
    }

    #[test]
    fn name_rule() {
        assert_eq!(image_name(&row(Source::Distro), "-dib", (2026, 11, 4)), "postgresql-15-dib-2026-11-04");
        assert_eq!(image_name(&row(Source::Community), "-dib", (2026, 1, 24)), "postgresql-15-c-dib-2026-01-24");
        assert_eq!(image_name(&row(Source::Enterprise), "-acme", (2027, 12, 31)), "postgresql-15-e-acme-2027-12-31");
    }

    fn make_args(extra: &[&str]) -> Result<MakeArgs, clap::Error> {
        use clap::Parser;
        let argv = ["dbimage", "make", "-d", "postgresql"].iter().chain(extra);
        match crate::cli::Cli::try_parse_from(argv)?.command {
            crate::cli::Command::Make(m) => Ok(m),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn guest_agent_when_publishing_or_asked() {
        let wants = |extra: &[&str]| wants_guest_agent(&make_args(extra).unwrap(), Arch::Amd64);
        assert!(wants(&[]).unwrap(), "publishing to Trove");
        let ppc = |extra: &[&str]| wants_guest_agent(&make_args(extra).unwrap(), Arch::Ppc64le).unwrap();
        assert!(!ppc(&[]), "ppc64le only when asked");
        assert!(ppc(&["--guest-agent"]));
        assert!(!wants(&["-I"]).unwrap());
        assert!(wants(&["-I", "--guest-agent"]).unwrap());
        assert!(wants(&["-I", "-x", "trove-guest-agent"]).unwrap());
        assert!(!wants(&["--no-guest-agent"]).unwrap());
        assert!(!wants(&["-I", "--no-guest-agent"]).unwrap());
        let err = wants(&["-x", "trove-guest-agent", "--no-guest-agent"]).unwrap_err().to_string();
        assert!(err.contains("contradicts"), "{err}");
        assert!(make_args(&["--guest-agent", "--no-guest-agent"]).is_err());
    }

    #[test]
    fn keys_and_users() {
        assert!(read_key("ssh-ed25519 AAAAC3Nz user@host").is_ok());
        let err = read_key("/nonexistent/key.pub").unwrap_err().to_string();
        assert!(err.contains("no such key file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("id.pub");
        std::fs::write(&f, "ssh-rsa AAAAB3 me\n").unwrap();
        assert_eq!(read_key(f.to_str().unwrap()).unwrap(), "ssh-rsa AAAAB3 me");
        std::fs::write(&f, "ssh-rsa AAAAB3 me\n\nssh-ed25519 AAAAC3 ctl\n").unwrap();
        assert_eq!(read_key(f.to_str().unwrap()).unwrap(), "ssh-rsa AAAAB3 me\nssh-ed25519 AAAAC3 ctl");
        assert!(read_key("ssh-rsa AAAAB3 me\nssh-rsa AAAAB3 you").is_err(), "several keys only from a file");
        std::fs::write(&f, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        assert!(read_key(f.to_str().unwrap()).is_err());
        assert!(check_user_name("debian").is_ok());
        assert!(check_user_name("Root;rm").is_err());
        assert!(check_user_name("").is_err());
    }
}
