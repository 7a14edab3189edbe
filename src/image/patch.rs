//! Changes `dbimage upload` makes inside a mounted root filesystem. Each
//! returns a one-line description for the output and the new manifest;
//! none prints a secret (the guest agent configuration holds credentials).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};

use super::inspect::{PasswdEntry, parse_passwd};

/// Where Trove's guest agent reads its configuration.
pub const GUEST_AGENT_CONF: &str = "etc/trove/conf.d/trove-guestagent.conf";

/// Errors patching a tree.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// A file in the image could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file, inside the image.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The user for `-b` does not exist in the image.
    #[error("the image has no user {user} (its /etc/passwd has: {known}); pass -b with one of them")]
    NoSuchUser {
        /// The user asked for.
        user: String,
        /// Users with a home under /home.
        known: String,
    },
    /// A path dbimage writes to is a symlink in the image: following it
    /// would reach the host's files.
    #[error("/{0} is a symbolic link in the image; refusing to write through it")]
    Symlink(String),
    /// The guest agent template does not render with the settings' values.
    #[error("guest agent template {template}: {msg}; set the value under guest_agent in the settings file")]
    Template {
        /// The template file.
        template: PathBuf,
        /// What is wrong (e.g. the undefined variable).
        msg: String,
    },
}

fn io_err(root: &Path, path: &Path) -> impl FnOnce(io::Error) -> PatchError {
    let inside = format!("/{}", path.strip_prefix(root).unwrap_or(path).display());
    move |source| PatchError::Io { path: inside, source }
}

/// `root`/`rel`, checked so that no existing component below `root` is a
/// symlink: the image is foreign data, and a link like `etc/ssh -> /etc/ssh`
/// would otherwise make dbimage change the host.
fn inside(root: &Path, rel: &str) -> Result<PathBuf, PatchError> {
    let mut path = root.to_path_buf();
    let mut shown = PathBuf::new();
    for part in Path::new(rel).components() {
        path.push(part);
        shown.push(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Err(PatchError::Symlink(shown.display().to_string())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(root, &path)(e)),
        }
    }
    Ok(path)
}

/// Renders the guest agent template with `values` (strict: a variable the
/// settings lack is an error, found before the image is touched).
pub fn render_guest_agent(template: &Path, values: &BTreeMap<String, String>) -> Result<String, PatchError> {
    let err = |msg: String| PatchError::Template { template: template.to_path_buf(), msg };
    let text = fs::read_to_string(template).map_err(|e| err(e.to_string()))?;
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
pub fn write_guest_agent(root: &Path, text: &str) -> Result<String, PatchError> {
    let path = inside(root, GUEST_AGENT_CONF)?;
    let dir = path.parent().unwrap_or(root);
    fs::create_dir_all(dir).map_err(io_err(root, dir))?;
    let owner = fs::metadata(dir).map_err(io_err(root, dir))?;
    fs::write(&path, text).map_err(io_err(root, &path))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).map_err(io_err(root, &path))?;
    chown(&path, Some(owner.uid()), Some(owner.gid())).map_err(io_err(root, &path))?;
    Ok(format!("guest agent configuration written to /{GUEST_AGENT_CONF}"))
}

/// Removes the SSH host keys (regenerated at first boot: clones must not
/// share them) and empties machine-id (regenerated too).
pub fn reset_identity(root: &Path) -> Result<Vec<String>, PatchError> {
    let ssh = inside(root, "etc/ssh")?;
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(&ssh) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("ssh_host_") {
                fs::remove_file(e.path()).map_err(io_err(root, &e.path()))?;
                removed.push(name);
            }
        }
    }
    removed.sort();
    let mut done = vec![if removed.is_empty() {
        "no SSH host keys to remove".to_string()
    } else {
        format!("SSH host keys removed ({})", removed.join(", "))
    }];
    let machine_id = inside(root, "etc/machine-id")?;
    if machine_id.exists() {
        fs::write(&machine_id, b"").map_err(io_err(root, &machine_id))?;
        done.push("machine-id emptied".into());
    }
    Ok(done)
}

/// The users of the image's /etc/passwd.
fn users(root: &Path) -> Result<Vec<PasswdEntry>, PatchError> {
    let passwd = inside(root, "etc/passwd")?;
    Ok(parse_passwd(&fs::read_to_string(&passwd).map_err(io_err(root, &passwd))?))
}

/// The image's cloud user: the one its embedded manifest names, else the
/// first user with a home under /home, else `debian`.
pub fn default_user(root: &Path) -> String {
    let from_manifest = inside(root, crate::build::manifest::EMBEDDED_PATH)
        .ok()
        .and_then(|p| fs::read(p).ok())
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
pub fn authorize_key(root: &Path, user: &str, key: &str) -> Result<String, PatchError> {
    let all = users(root)?;
    let Some(u) = all.iter().find(|u| u.name == user) else {
        let known: Vec<&str> = all.iter().filter(|u| u.uid >= 1000 || u.uid == 0).map(|u| u.name.as_str()).collect();
        return Err(PatchError::NoSuchUser { user: user.into(), known: known.join(", ") });
    };
    let home = u.home.trim_matches('/');
    let ssh = inside(root, &format!("{home}/.ssh"))?;
    fs::create_dir_all(&ssh).map_err(io_err(root, &ssh))?;
    let file = inside(root, &format!("{home}/.ssh/authorized_keys"))?;
    fs::write(&file, format!("{}\n", key.trim())).map_err(io_err(root, &file))?;
    for (path, mode) in [(&ssh, 0o700), (&file, 0o600)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(root, path))?;
        chown(path, Some(u.uid), Some(u.gid)).map_err(io_err(root, path))?;
    }
    Ok(format!("authorized_keys of {user} set to the given key (/{}/.ssh/authorized_keys, 0600)", u.home.trim_matches('/')))
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

    #[test]
    fn identity_is_reset() {
        let t = tree();
        let done = reset_identity(t.path()).unwrap();
        assert!(done[0].contains("ssh_host_ed25519_key, ssh_host_ed25519_key.pub"), "{done:?}");
        assert!(t.path().join("etc/ssh/sshd_config").exists());
        assert_eq!(fs::read(t.path().join("etc/machine-id")).unwrap(), b"");
    }

    #[test]
    fn key_goes_to_the_image_user_with_its_ids() {
        let t = tree();
        assert_eq!(default_user(t.path()), "dba");
        authorize_key(t.path(), "dba", "ssh-ed25519 AAAA dba@x").unwrap();
        let f = t.path().join("home/dba/.ssh/authorized_keys");
        let meta = fs::metadata(&f).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o600, 1001, 1002));
        assert_eq!(fs::read_to_string(&f).unwrap(), "ssh-ed25519 AAAA dba@x\n");
        let err = authorize_key(t.path(), "nobody", "k").unwrap_err().to_string();
        assert!(err.contains("no user nobody") && err.contains("dba"), "{err}");
    }

    #[test]
    fn symlinks_out_of_the_image_are_refused() {
        let t = tree();
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("ssh_host_rsa_key"), "host's own").unwrap();
        fs::remove_dir_all(t.path().join("etc/ssh")).unwrap();
        std::os::unix::fs::symlink(host.path(), t.path().join("etc/ssh")).unwrap();
        let err = reset_identity(t.path()).unwrap_err().to_string();
        assert!(err.contains("/etc/ssh is a symbolic link"), "{err}");
        assert!(host.path().join("ssh_host_rsa_key").exists(), "host file touched");
        std::os::unix::fs::symlink(host.path(), t.path().join("home/dba/.ssh")).unwrap();
        assert!(authorize_key(t.path(), "dba", "k").is_err());
        assert!(!host.path().join("authorized_keys").exists());
    }

    #[test]
    fn guest_agent_config_is_owned_like_its_directory() {
        let t = tree();
        let conf_d = t.path().join("etc/trove/conf.d");
        fs::create_dir_all(&conf_d).unwrap();
        chown(&conf_d, Some(1001), Some(1002)).unwrap();
        write_guest_agent(t.path(), "[DEFAULT]\n").unwrap();
        let meta = fs::metadata(conf_d.join("trove-guestagent.conf")).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o640, 1001, 1002));
        // A directory it has to make itself is root's.
        let t = tree();
        write_guest_agent(t.path(), "[DEFAULT]\n").unwrap();
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
