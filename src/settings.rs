//! Settings: a YAML file (the successor of the original `dbimagerc`) with
//! `DBIMAGE_*` environment variables taking precedence.
//!
//! The file is the first of `$DBIMAGE_SETTINGS`, `./dbimage.yaml`,
//! `~/.config/dbimage/settings.yaml`, `/etc/dbimage/settings.yaml` that exists.

mod guest_agent;
mod queue;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::arch::Arch;

pub use guest_agent::{AgentSource, GuestAgentInstall};
pub use queue::{Password, QueueSettings};

/// Errors reading the settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file exists but cannot be read or parsed.
    #[error("settings file {path}: {msg}; fix or remove it")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// No directory with `datastores/` and `elements/` was found.
    #[error(
        "cannot find dbimage's data files (datastores/, elements/); run from the project \
         directory or set DBIMAGE_DATA_DIR"
    )]
    NoDataDir,
    /// An environment variable has a value dbimage cannot use.
    #[error("{0}")]
    Env(String),
    /// A `security_skip` entry is not `release/arch`.
    #[error(
        "security_skip entry {entry:?} (from {from}) is not release/arch, e.g. bookworm/ppc64el; \
         '*' matches any release or architecture"
    )]
    BadSecuritySkip {
        /// The entry.
        entry: String,
        /// The settings file or the environment variable.
        from: String,
    },
    /// The work directory could be written by someone else: whoever can
    /// plant files there chooses what dbimage (root) mounts, runs and undoes.
    #[error(
        "work directory {path} {why}, so another user could plant what dbimage runs as root; check what \
         is inside, then `chown {uid} {path} && chmod 0700 {path}` (or remove it, or set work_dir / \
         DBIMAGE_WORK_DIR elsewhere)",
        path = path.display()
    )]
    UnsafeWorkDir {
        /// The work directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
        /// The effective uid it must belong to.
        uid: u32,
    },
    /// `guest_agent_install` (or its variables) names no usable source.
    #[error("{from}: {msg}")]
    GuestAgentInstall {
        /// The settings file or the variables.
        from: String,
        /// What is wrong.
        msg: String,
    },
}

/// Pairs whose security suite is left out unless the settings say
/// otherwise: the ppc64el index of bookworm-security has been seen stale on
/// deb.debian.org's mirrors (size mismatches, by-hash 404s) for long enough
/// to break every build.
const DEFAULT_SECURITY_SKIP: [&str; 1] = ["bookworm/ppc64el"];

/// The settings file's shape; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    data_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    images_dir: Option<PathBuf>,
    mirror: Option<String>,
    security_mirror: Option<String>,
    security: Option<bool>,
    security_skip: Option<Vec<String>>,
    source: Option<String>,
    custom_flavors_dir: Option<PathBuf>,
    guest_agent: Option<std::collections::BTreeMap<String, String>>,
    dibvm: Option<HostFile>,
    controller: Option<ControllerFile>,
    known_hosts: Option<PathBuf>,
    debian_keyring: Option<PathBuf>,
    guest_agent_install: Option<guest_agent::InstallFile>,
    rotate: Option<bool>,
    queue: Option<queue::QueueFile>,
}

/// A remote host's SSH settings in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    host: Option<String>,
    user: Option<String>,
    port: Option<u16>,
    key: Option<PathBuf>,
    sudo: Option<bool>,
    connect_timeout: Option<u64>,
}

/// The controller's section: its SSH settings and where its files are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerFile {
    #[serde(flatten)]
    ssh: HostFile,
    guest_agent_conf: Option<String>,
    public_key: Option<String>,
}

/// How to reach a remote host over SSH (the build VM or the controller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteHost {
    /// Address or name; for the build VM `-i` gives it.
    pub host: Option<String>,
    /// Login user (default: ssh's own default).
    pub user: Option<String>,
    /// SSH port (default 22).
    pub port: Option<u16>,
    /// Private key file (default: ssh's own keys and agent).
    pub key: Option<PathBuf>,
    /// Whether tasks marked `become` run through `sudo -n` (ignored for root).
    pub sudo: bool,
    /// Seconds to wait for the connection.
    pub connect_timeout: u64,
}

/// The Trove controller that guest images are built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// How to reach it; `host` is always set.
    pub ssh: RemoteHost,
    /// The guest agent configuration file on the controller.
    pub guest_agent_conf: String,
    /// A public key on the controller to authorize in images, if any.
    pub public_key: Option<String>,
}

/// Where the original looked for the guest agent configuration: the one
/// Trove's task manager hands to new guests.
const DEFAULT_GUEST_AGENT_CONF: &str = "/etc/trove/trove-guestagent.conf";

/// Where the debian-archive-keyring package puts Debian's archive keys.
const DEFAULT_DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `datastores/`, `elements/`, `flavors/`, `playbooks/` live.
    pub data_dir: PathBuf,
    /// Root tree tarballs and apt's downloaded packages.
    pub cache_dir: PathBuf,
    /// Per-build scratch directories (and their state files).
    pub work_dir: PathBuf,
    /// Default output directory for images.
    pub images_dir: PathBuf,
    /// Debian mirror for the image's tree.
    pub mirror: String,
    /// Debian security mirror.
    pub security_mirror: String,
    /// Whether the release's security suite is added to the image's sources.
    pub security: bool,
    /// `release/arch` pairs built without the security suite, whatever
    /// `security` says (`DBIMAGE_SECURITY_SKIP`, comma-separated).
    pub security_skip: Vec<String>,
    /// The `<source>` part of image names (`DBIMAGE_SOURCE`).
    pub source: String,
    /// Where `flavor change` keeps customized flavors, `<db>.yaml` each
    /// (`DBIMAGE_CUSTOM_FLAVORS_DIR`; default `<data_dir>/flavors/custom`).
    pub custom_flavors_dir: PathBuf,
    /// Values for the Trove guest agent template (`dbimage upload`); they
    /// may hold credentials and are never printed.
    pub guest_agent: std::collections::BTreeMap<String, String>,
    /// SSH settings for the remote build VM (`make -i`).
    pub dibvm: RemoteHost,
    /// The Trove controller, when one is configured.
    pub controller: Option<Controller>,
    /// The known_hosts file dbimage keeps for its remote hosts
    /// (`DBIMAGE_KNOWN_HOSTS`; default `~/.config/dbimage/known_hosts`).
    pub known_hosts: PathBuf,
    /// The keyring debootstrap checks Debian's Release files against
    /// (`debian_keyring`, `DBIMAGE_DEBIAN_KEYRING`; default the
    /// debian-archive-keyring package's).
    pub debian_keyring: PathBuf,
    /// Which guest agent the `trove-guest-agent` element installs
    /// (`guest_agent_install`, `DBIMAGE_GUEST_AGENT_*`).
    pub guest_agent_install: GuestAgentInstall,
    /// Whether publishing rotates images (`<base>-latest`) when `--rotate`
    /// is not given (`DBIMAGE_ROTATE`).
    pub rotate: bool,
    /// The build farm's Redis queue (`queue:`, `DBIMAGE_REDIS_URL`), if any.
    pub queue: Option<QueueSettings>,
}

impl Settings {
    /// Reads the settings file (if any) and applies the environment.
    pub fn load() -> Result<Settings, SettingsError> {
        let path = find_file();
        let file = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| SettingsError::Invalid {
                    path: p.clone(),
                    msg: e.to_string(),
                })?;
                serde_saphyr::from_str::<File>(&text).map_err(|e| SettingsError::Invalid {
                    path: p.clone(),
                    msg: e.to_string(),
                })?
            }
            None => File::default(),
        };
        let data_dir = env_path("DBIMAGE_DATA_DIR")
            .or(file.data_dir)
            .or_else(find_data_dir)
            .ok_or(SettingsError::NoDataDir)?;
        // Set but empty means "skip nothing", so read the variable directly.
        let (security_skip, skip_from) = match std::env::var("DBIMAGE_SECURITY_SKIP") {
            Ok(v) => (
                v.split([',', ' '])
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect(),
                "DBIMAGE_SECURITY_SKIP".to_string(),
            ),
            Err(_) => match file.security_skip {
                Some(list) => (
                    list,
                    path.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                ),
                None => (
                    DEFAULT_SECURITY_SKIP
                        .iter()
                        .map(|e| e.to_string())
                        .collect(),
                    String::new(),
                ),
            },
        };
        for entry in &security_skip {
            parse_skip(entry).ok_or_else(|| SettingsError::BadSecuritySkip {
                entry: entry.clone(),
                from: skip_from.clone(),
            })?;
        }
        let guest_agent_install = GuestAgentInstall::resolve(
            file.guest_agent_install,
            &path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            env_str,
        )?;
        let queue = QueueSettings::resolve(
            file.queue,
            &path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "DBIMAGE_REDIS_URL".into()),
        )?;
        let images_dir = env_path("DBIMAGE_IMAGES_DIR")
            .or(file.images_dir)
            .unwrap_or_else(|| data_dir.join("images"));
        Ok(Settings {
            cache_dir: env_path("DBIMAGE_CACHE_DIR")
                .or(file.cache_dir)
                .unwrap_or_else(|| PathBuf::from("/var/cache/dbimage")),
            work_dir: env_path("DBIMAGE_WORK_DIR")
                .or(file.work_dir)
                .unwrap_or_else(|| PathBuf::from("/var/tmp/dbimage")),
            images_dir,
            mirror: env_str("DBIMAGE_MIRROR")
                .or(file.mirror)
                .unwrap_or_else(|| "http://deb.debian.org/debian".into()),
            security_mirror: env_str("DBIMAGE_SECURITY_MIRROR")
                .or(file.security_mirror)
                .unwrap_or_else(|| "http://deb.debian.org/debian-security".into()),
            security: env_bool("DBIMAGE_SECURITY")
                .or(file.security)
                .unwrap_or(true),
            security_skip,
            source: env_str("DBIMAGE_SOURCE")
                .or(file.source)
                .unwrap_or_else(|| "-dib".into()),
            custom_flavors_dir: env_path("DBIMAGE_CUSTOM_FLAVORS_DIR")
                .or(file.custom_flavors_dir)
                .unwrap_or_else(|| data_dir.join("flavors").join("custom")),
            guest_agent: file.guest_agent.unwrap_or_default(),
            dibvm: remote_host(file.dibvm.unwrap_or_default(), "DIB")?,
            controller: controller(file.controller)?,
            known_hosts: env_path("DBIMAGE_KNOWN_HOSTS")
                .or(file.known_hosts)
                .unwrap_or_else(|| {
                    env_path("HOME").unwrap_or_else(|| PathBuf::from("/root")).join(".config/dbimage/known_hosts")
                }),
            debian_keyring: env_path("DBIMAGE_DEBIAN_KEYRING")
                .or(file.debian_keyring)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DEBIAN_KEYRING)),
            guest_agent_install,
            rotate: env_bool("DBIMAGE_ROTATE")
                .or(file.rotate)
                .unwrap_or(false),
            queue,
            data_dir,
        })
    }
}

/// Makes `dir` the work directory of this user alone: created 0700 when
/// missing; an existing one must be a directory (not a link) owned by the
/// effective uid and writable by no one else, as must its parent unless
/// sticky (`/var/tmp`).
pub fn secure_work_dir(dir: &Path) -> Result<(), SettingsError> {
    if let Err(e) = dir.symlink_metadata()
        && e.kind() == std::io::ErrorKind::NotFound
    {
        create_private_dir(dir)?;
    }
    check_work_dir(dir)
}

fn create_private_dir(dir: &Path) -> Result<(), SettingsError> {
    use std::os::unix::fs::DirBuilderExt;
    let unusable = |e: std::io::Error| SettingsError::UnsafeWorkDir {
        path: dir.to_path_buf(),
        why: format!("cannot be created ({e})"),
        uid: nix::unistd::geteuid().as_raw(),
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(unusable)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Someone made it first: the checks decide.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(unusable(e)),
        _ => Ok(()),
    }
}

/// Refuses an existing work directory someone else could write (see
/// [`secure_work_dir`]).
pub fn check_work_dir(dir: &Path) -> Result<(), SettingsError> {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::geteuid().as_raw();
    let refuse = |why: String| SettingsError::UnsafeWorkDir { path: dir.to_path_buf(), why, uid };
    let meta = dir.symlink_metadata().map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    if meta.uid() != uid {
        return Err(refuse(format!("belongs to uid {}, not {uid}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!("is writable by others (mode {:04o})", meta.mode() & 0o7777)));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(p) = parent.metadata()
        && p.mode() & 0o022 != 0
        && p.mode() & 0o1000 == 0
    {
        return Err(refuse(format!("is in {}, which others can write without the sticky bit", parent.display())));
    }
    Ok(())
}

impl Settings {
    /// Whether images of `release` for `arch` get the security suite.
    pub fn security_for(&self, release: &str, arch: Arch) -> bool {
        self.security
            && !self
                .security_skip
                .iter()
                .filter_map(|e| parse_skip(e))
                .any(|(r, a)| (r == "*" || r == release) && a.is_none_or(|a| a == arch))
    }
}

/// `release/arch` (either part `*`; Debian's or our arch spelling) →
/// (release, arch or any).
fn parse_skip(entry: &str) -> Option<(&str, Option<Arch>)> {
    let (release, arch) = entry.trim().split_once('/')?;
    if release.is_empty() {
        return None;
    }
    let arch = if arch == "*" {
        None
    } else {
        Some(arch.parse::<Arch>().ok()?)
    };
    Some((release, arch))
}

/// Applies the original's environment variables (`DBIMAGE_<prefix>_*`) to a
/// host's file settings. Passwords are refused: dbimage logs in with keys only.
fn remote_host(file: HostFile, prefix: &str) -> Result<RemoteHost, SettingsError> {
    if env_str(&format!("DBIMAGE_{prefix}_PASSWD")).is_some() {
        return Err(SettingsError::Env(format!(
            "DBIMAGE_{prefix}_PASSWD is set, but dbimage logs in with SSH keys only; unset it and set \
             DBIMAGE_{prefix}_PRIVATE_SSH_KEY (or use ssh-agent)"
        )));
    }
    let port = match env_str(&format!("DBIMAGE_{prefix}_PORT")) {
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            SettingsError::Env(format!("DBIMAGE_{prefix}_PORT={p:?} is not a port number"))
        })?),
        None => file.port,
    };
    let sudo = env_bool(&format!("DBIMAGE_{prefix}_SUDO")).or(file.sudo).unwrap_or(true);
    Ok(RemoteHost {
        host: file.host,
        user: env_str(&format!("DBIMAGE_{prefix}_USER")).or(file.user),
        port,
        key: env_path(&format!("DBIMAGE_{prefix}_PRIVATE_SSH_KEY")).or(file.key),
        sudo,
        connect_timeout: file.connect_timeout.unwrap_or(15),
    })
}

/// The controller section with its environment aliases; `None` when no host is set.
fn controller(file: Option<ControllerFile>) -> Result<Option<Controller>, SettingsError> {
    let file = file.unwrap_or_default();
    let mut ssh = remote_host(file.ssh, "CTRL")?;
    ssh.host = env_str("DBIMAGE_CONTROLLER_IP").or_else(|| env_str("DBIMAGE_CONTROLLER")).or(ssh.host);
    if ssh.host.is_none() {
        return Ok(None);
    }
    Ok(Some(Controller {
        ssh,
        guest_agent_conf: env_str("DBIMAGE_CTRL_GUEST_AGENT_CONF")
            .or(file.guest_agent_conf)
            .unwrap_or_else(|| DEFAULT_GUEST_AGENT_CONF.into()),
        public_key: env_str("DBIMAGE_CTRL_PUBLIC_KEY").or(file.public_key),
    }))
}

fn env_str(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// A yes/no variable: `0`, `no`, `false`, `off` are no, anything else yes.
fn env_bool(key: &str) -> Option<bool> {
    env_str(key).map(|v| !matches!(v.as_str(), "0" | "no" | "false" | "off"))
}

fn env_path(key: &str) -> Option<PathBuf> {
    env_str(key).map(PathBuf::from)
}

fn find_file() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = env_path("DBIMAGE_SETTINGS") {
        return Some(p); // named explicitly: a missing file is reported by read
    }
    candidates.push(PathBuf::from("dbimage.yaml"));
    if let Some(home) = env_path("HOME") {
        candidates.push(home.join(".config/dbimage/settings.yaml"));
    }
    candidates.push(PathBuf::from("/etc/dbimage/settings.yaml"));
    candidates.into_iter().find(|p| p.is_file())
}

fn is_data_dir(dir: &Path) -> bool {
    dir.join("datastores").is_dir() && dir.join("elements").is_dir()
}

/// The current directory, or the nearest ancestor of the executable (a
/// `target/*/dbimage` inside the project) holding the data files, or the
/// installed location.
fn find_data_dir() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    cwd.into_iter()
        .chain(
            exe.iter()
                .flat_map(|e| e.ancestors().skip(1).map(Path::to_path_buf)),
        )
        .chain([PathBuf::from("/usr/share/dbimage")])
        .find(|d| is_data_dir(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_skip(skip: &[&str]) -> Settings {
        Settings {
            data_dir: PathBuf::new(),
            cache_dir: PathBuf::new(),
            work_dir: PathBuf::new(),
            images_dir: PathBuf::new(),
            mirror: String::new(),
            security_mirror: String::new(),
            security: true,
            security_skip: skip.iter().map(|s| s.to_string()).collect(),
            source: String::new(),
            custom_flavors_dir: PathBuf::new(),
            guest_agent: Default::default(),
            dibvm: Default::default(),
            controller: None,
            known_hosts: PathBuf::new(),
            debian_keyring: PathBuf::new(),
            guest_agent_install: Default::default(),
            rotate: false,
            queue: None,
        }
    }

    #[test]
    fn the_work_directory_is_made_private_and_a_shared_one_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/work");
        secure_work_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        secure_work_dir(&dir).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = secure_work_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("writable by others (mode 0777)") && e.contains("chmod 0700") && !e.contains('\n'), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // The owner is checked too (root's test run gives it away).
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = secure_work_dir(&dir).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }

        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path().join("a"), &link).unwrap();
        assert!(secure_work_dir(&link).unwrap_err().to_string().contains("symbolic link"));
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = secure_work_dir(&open.join("work")).unwrap_err().to_string();
        assert!(e.contains("without the sticky bit"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        secure_work_dir(&open.join("work")).unwrap();
    }

    #[test]
    fn security_skip_is_per_release_and_arch() {
        let s = with_skip(&DEFAULT_SECURITY_SKIP);
        assert!(!s.security_for("bookworm", Arch::Ppc64le));
        assert!(s.security_for("bookworm", Arch::Amd64));
        assert!(s.security_for("trixie", Arch::Ppc64le));
        let s = with_skip(&["trixie/ppc64le", "*/amd64"]);
        assert!(!s.security_for("trixie", Arch::Ppc64le));
        assert!(!s.security_for("bookworm", Arch::Amd64));
        assert!(s.security_for("bookworm", Arch::Ppc64le));
        let s = with_skip(&["bookworm/*"]);
        assert!(!s.security_for("bookworm", Arch::Amd64));
        let mut s = with_skip(&[]);
        assert!(s.security_for("bookworm", Arch::Ppc64le));
        s.security = false;
        assert!(
            !s.security_for("trixie", Arch::Amd64),
            "DBIMAGE_SECURITY=no wins"
        );
        assert!(parse_skip("bookworm").is_none());
        assert!(parse_skip("bookworm/arm64").is_none());
        assert!(parse_skip("/ppc64el").is_none());
    }
}
