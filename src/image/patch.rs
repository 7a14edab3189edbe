//! Changes `dbimage upload` makes inside a mounted root filesystem. Each
//! returns a one-line description for the output and the new manifest;
//! none prints a secret (the guest agent configuration holds credentials).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::inspect::{PasswdEntry, parse_passwd};
use crate::disk::image_root::{ImageRoot, RootError};

/// Where Trove's guest agent reads its configuration.
pub const GUEST_AGENT_CONF: &str = "etc/trove/conf.d/trove-guestagent.conf";

/// How the patch list (and a manifest) says the configuration was written.
pub const GUEST_AGENT_WRITTEN: &str = "guest agent configuration written to";

/// The most of /etc/passwd or the embedded manifest dbimage reads.
const READ_LIMIT: u64 = 16 << 20;

/// Errors patching a tree.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// A path in the image could not be used safely, or at all.
    #[error(transparent)]
    Root(#[from] RootError),
    /// The user for `-b` does not exist in the image.
    #[error("the image has no user {user} (its /etc/passwd has: {known}); pass -b with one of them")]
    NoSuchUser {
        /// The user asked for.
        user: String,
        /// Users with a home under /home.
        known: String,
    },
    /// The user's home in the image's /etc/passwd is not a plain absolute path.
    #[error("the home of {user} in the image's /etc/passwd ({home:?}) is not a plain absolute path; refusing to use it")]
    BadHome {
        /// The user.
        user: String,
        /// The home as written.
        home: String,
    },
    /// The guest agent template does not render with the settings' values.
    #[error("guest agent template {template}: {msg}; set the value under guest_agent in the settings file")]
    Template {
        /// The template file.
        template: PathBuf,
        /// What is wrong (e.g. the undefined variable).
        msg: String,
    },
    /// The template could not be read.
    #[error("guest agent template {}: {source}", template.display())]
    Io {
        /// The template file.
        template: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl PatchError {
    /// True when the image's own content is the problem (crafted or broken).
    pub fn is_bad_input(&self) -> bool {
        match self {
            PatchError::Root(e) => !matches!(e, RootError::Io { .. }),
            PatchError::NoSuchUser { .. } | PatchError::BadHome { .. } => true,
            PatchError::Template { .. } | PatchError::Io { .. } => false,
        }
    }
}

/// Renders the guest agent template with `values` (strict: a variable the
/// settings lack is an error, found before the image is touched).
pub fn render_guest_agent(template: &Path, values: &BTreeMap<String, String>) -> Result<String, PatchError> {
    let err = |msg: String| PatchError::Template { template: template.to_path_buf(), msg };
    let text = fs::read_to_string(template).map_err(|source| PatchError::Io { template: template.to_path_buf(), source })?;
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("guest-agent", &text).map_err(|e| err(e.to_string()))?;
    let tmpl = env.get_template("guest-agent").map_err(|e| err(e.to_string()))?;
    let mut out = tmpl.render(minijinja::context! { guest_agent => values }).map_err(|e| err(e.to_string()))?;
    // Jinja drops the template's final newline.
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// Writes the guest agent configuration, mode 0640 (it holds credentials)
/// and owned like its directory, so the agent's user reads it whether the
/// image runs the agent as `trove` (ours) or as another user (DIB's).
pub fn write_guest_agent(root: &ImageRoot, text: &str) -> Result<String, PatchError> {
    let (dir_rel, name) = GUEST_AGENT_CONF.rsplit_once('/').unwrap_or(("", GUEST_AGENT_CONF));
    let dir = root.mkdir_all(dir_rel, 0o755)?;
    let owner = root.owner(&dir, dir_rel)?;
    root.replace(&dir, &format!("/{GUEST_AGENT_CONF}"), name, text.as_bytes(), 0o640, owner)?;
    Ok(format!("{GUEST_AGENT_WRITTEN} /{GUEST_AGENT_CONF}"))
}

/// Removes the SSH host keys (regenerated at first boot: clones must not
/// share them) and empties machine-id (regenerated too).
pub fn reset_identity(root: &ImageRoot) -> Result<Vec<String>, PatchError> {
    let removed: Vec<String> = root.list("etc/ssh")?.into_iter().filter(|n| n.starts_with("ssh_host_")).collect();
    for name in &removed {
        root.remove("etc/ssh", name)?;
    }
    let mut done = vec![if removed.is_empty() {
        "no SSH host keys to remove".to_string()
    } else {
        format!("SSH host keys removed ({})", removed.join(", "))
    }];
    if root.list("etc")?.iter().any(|n| n == "machine-id") {
        let etc = root.mkdir_all("etc", 0o755)?;
        root.replace(&etc, "/etc/machine-id", "machine-id", b"", 0o444, (0, 0))?;
        done.push("machine-id emptied".into());
    }
    Ok(done)
}

/// The users of the image's /etc/passwd.
fn users(root: &ImageRoot) -> Result<Vec<PasswdEntry>, PatchError> {
    let raw = root.read("etc/passwd", READ_LIMIT)?.unwrap_or_default();
    Ok(parse_passwd(&String::from_utf8_lossy(&raw)))
}

/// The image's cloud user: the one its embedded manifest names, else the
/// first user with a home under /home, else `debian`.
pub fn default_user(root: &ImageRoot) -> String {
    let from_manifest = root
        .read(crate::build::manifest::EMBEDDED_PATH, READ_LIMIT)
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .and_then(|m| m.get("user").and_then(|u| u.as_str()).map(str::to_string));
    from_manifest
        .or_else(|| {
            users(root)
                .ok()?
                .into_iter()
                .find(|u| u.uid >= 1000 && u.home.starts_with("/home/"))
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "debian".into())
}

/// Puts `key` in `user`'s authorized_keys (replacing the file: the image
/// is being given to another cloud's DBA), owned by the image's uid/gid for
/// that user, mode 0600 in a 0700 `.ssh`.
pub fn authorize_key(root: &ImageRoot, user: &str, key: &str) -> Result<String, PatchError> {
    let all = users(root)?;
    let Some(u) = all.iter().find(|u| u.name == user) else {
        let known: Vec<&str> = all.iter().filter(|u| u.uid >= 1000 || u.uid == 0).map(|u| u.name.as_str()).collect();
        return Err(PatchError::NoSuchUser { user: user.into(), known: known.join(", ") });
    };
    let plain_home = u.home.starts_with('/')
        && Path::new(&u.home).components().skip(1).all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain_home || u.home.trim_matches('/').is_empty() {
        return Err(PatchError::BadHome { user: user.into(), home: u.home.clone() });
    }
    let home = u.home.trim_matches('/');
    let ids = (u.uid, u.gid);
    root.mkdir_all(home, 0o755)?;
    let ssh_rel = format!("{home}/.ssh");
    let ssh = root.mkdir_all(&ssh_rel, 0o700)?;
    root.set_dir(&ssh, &format!("/{ssh_rel}"), 0o700, ids)?;
    let shown = format!("/{ssh_rel}/authorized_keys");
    root.replace(&ssh, &shown, "authorized_keys", format!("{}\n", key.trim()).as_bytes(), 0o600, ids)?;
    Ok(format!("authorized_keys of {user} set to the given key ({shown}, 0600)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("etc/ssh")).unwrap();
        fs::create_dir_all(r.join("home/dba")).unwrap();
        fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\ndba:x:1001:1002::/home/dba:/bin/bash\n").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key.pub"), "k").unwrap();
        fs::write(r.join("etc/ssh/sshd_config"), "c").unwrap();
        fs::write(r.join("etc/machine-id"), "0123\n").unwrap();
        t
    }

    use std::os::unix::fs::{MetadataExt, chown};

    fn open(t: &tempfile::TempDir) -> ImageRoot {
        ImageRoot::open(t.path()).unwrap()
    }

    #[test]
    fn identity_is_reset() {
        let t = tree();
        let done = reset_identity(&open(&t)).unwrap();
        assert!(done[0].contains("ssh_host_ed25519_key, ssh_host_ed25519_key.pub"), "{done:?}");
        assert!(t.path().join("etc/ssh/sshd_config").exists());
        assert_eq!(fs::read(t.path().join("etc/machine-id")).unwrap(), b"");
    }

    #[test]
    fn key_goes_to_the_image_user_with_its_ids() {
        let t = tree();
        assert_eq!(default_user(&open(&t)), "dba");
        authorize_key(&open(&t), "dba", "ssh-ed25519 AAAA dba@x").unwrap();
        let f = t.path().join("home/dba/.ssh/authorized_keys");
        let meta = fs::metadata(&f).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o600, 1001, 1002));
        assert_eq!(fs::read_to_string(&f).unwrap(), "ssh-ed25519 AAAA dba@x\n");
        let ssh = fs::metadata(t.path().join("home/dba/.ssh")).unwrap();
        assert_eq!((ssh.mode() & 0o777, ssh.uid(), ssh.gid()), (0o700, 1001, 1002));
        let err = authorize_key(&open(&t), "nobody", "k").unwrap_err().to_string();
        assert!(err.contains("no user nobody") && err.contains("dba"), "{err}");
    }

    #[test]
    fn symlinks_out_of_the_image_are_refused() {
        let t = tree();
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("ssh_host_rsa_key"), "host's own").unwrap();
        fs::remove_dir_all(t.path().join("etc/ssh")).unwrap();
        std::os::unix::fs::symlink(host.path(), t.path().join("etc/ssh")).unwrap();
        let err = reset_identity(&open(&t)).unwrap_err().to_string();
        assert!(err.contains("/etc/ssh goes through a symbolic link"), "{err}");
        assert!(host.path().join("ssh_host_rsa_key").exists(), "host file touched");
        std::os::unix::fs::symlink(host.path(), t.path().join("home/dba/.ssh")).unwrap();
        assert!(authorize_key(&open(&t), "dba", "k").is_err());
        assert!(!host.path().join("authorized_keys").exists());
    }

    #[test]
    fn a_home_that_climbs_out_of_the_image_is_refused() {
        let t = tree();
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join(".ssh/authorized_keys");
        fs::create_dir_all(victim.parent().unwrap()).unwrap();
        fs::write(&victim, "host's key\n").unwrap();
        let climb = format!("/home/../../../../../..{}", host.path().display());
        fs::write(t.path().join("etc/passwd"), format!("dba:x:1001:1002::{climb}:/bin/bash\n")).unwrap();
        let err = authorize_key(&open(&t), "dba", "k").unwrap_err();
        assert!(matches!(err, PatchError::BadHome { .. }) && err.is_bad_input(), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "host's key\n");
        // Relative homes are refused too, and so is an empty one.
        for home in ["home/dba", "", "/"] {
            fs::write(t.path().join("etc/passwd"), format!("dba:x:1001:1002::{home}:/bin/bash\n")).unwrap();
            assert!(matches!(authorize_key(&open(&t), "dba", "k"), Err(PatchError::BadHome { .. })), "{home:?}");
        }
    }

    #[test]
    fn guest_agent_config_is_owned_like_its_directory() {
        let t = tree();
        let conf_d = t.path().join("etc/trove/conf.d");
        fs::create_dir_all(&conf_d).unwrap();
        chown(&conf_d, Some(1001), Some(1002)).unwrap();
        write_guest_agent(&open(&t), "[DEFAULT]\n").unwrap();
        let meta = fs::metadata(conf_d.join("trove-guestagent.conf")).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o640, 1001, 1002));
        // A directory it has to make itself is root's.
        let t = tree();
        write_guest_agent(&open(&t), "[DEFAULT]\n").unwrap();
        let meta = fs::metadata(t.path().join(GUEST_AGENT_CONF)).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o640, 0, 0));
    }

    #[test]
    fn template_is_strict() {
        let t = tempfile::tempdir().unwrap();
        let tpl = t.path().join("t.j2");
        fs::write(&tpl, "[DEFAULT]\ntransport_url = {{ guest_agent.transport_url }}\n").unwrap();
        let mut v = BTreeMap::new();
        let err = render_guest_agent(&tpl, &v).unwrap_err().to_string();
        assert!(err.contains("undefined") || err.contains("transport_url"), "{err}");
        v.insert("transport_url".to_string(), "rabbit://h".to_string());
        assert_eq!(render_guest_agent(&tpl, &v).unwrap(), "[DEFAULT]\ntransport_url = rabbit://h\n");
    }
}
