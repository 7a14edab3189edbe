//! Which cloud to talk to and how to log in: `clouds.yaml` (+ `secure.yaml`)
//! the way openstacksdk finds them, or `OS_*` environment variables.
//!
//! Selection: `--os-cloud` or `OS_CLOUD` names an entry of `clouds.yaml`;
//! without a name, `OS_AUTH_URL` and its sibling variables describe the
//! cloud. Nothing else is guessed: a build that silently published to the
//! wrong cloud would be worse than an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::CloudError;

/// How to authenticate against Keystone v3.
#[derive(Clone)]
pub enum Credentials {
    /// A user name (or id) and password, scoped to a project.
    Password {
        /// User name (with `user_domain`) or id.
        user: NameOrId,
        /// The password.
        password: String,
        /// Project to scope the token to (name with domain, or id).
        project: Option<NameOrId>,
    },
    /// An application credential (already scoped to its project).
    ApplicationCredential {
        /// The credential's id, or its name with the owning user.
        credential: AppCredRef,
        /// The secret.
        secret: String,
    },
}

/// A Keystone object given by id, or by name within a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameOrId {
    /// By id.
    Id(String),
    /// By name, within a domain (default: the `default` domain).
    Name {
        /// The object's name.
        name: String,
        /// Its domain.
        domain: Domain,
    },
}

/// A Keystone domain, by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// By id (`default` is the id of the `Default` domain).
    Id(String),
    /// By name.
    Name(String),
}

/// An application credential by id, or by name with its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCredRef {
    /// By id: enough on its own.
    Id(String),
    /// By name: Keystone also needs the owning user.
    Name {
        /// The credential's name.
        name: String,
        /// Its user.
        user: NameOrId,
    },
}

/// Everything needed to reach one cloud.
#[derive(Clone)]
pub struct CloudConfig {
    /// Where the settings came from, for messages (`clouds.yaml: NAME` or
    /// `OS_* variables`).
    pub origin: String,
    /// Keystone's v3 endpoint.
    pub auth_url: String,
    /// How to log in.
    pub credentials: Credentials,
    /// Region to pick endpoints from (any region when unset).
    pub region: Option<String>,
    /// Endpoint interface: public, internal or admin.
    pub interface: String,
    /// Extra CA bundle (PEM) to trust.
    pub cacert: Option<PathBuf>,
    /// False to skip TLS verification (`verify: false` / `OS_INSECURE`).
    pub verify: bool,
}

// Deliberately no Debug derive: the password must not be printable.
impl std::fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudConfig")
            .field("origin", &self.origin)
            .field("auth_url", &self.auth_url)
            .field("region", &self.region)
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

/// One entry of `clouds.yaml` as written by people (every field optional).
#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: BTreeMap<String, Value>,
    auth_type: Option<String>,
    region_name: Option<String>,
    interface: Option<String>,
    endpoint_type: Option<String>,
    cacert: Option<PathBuf>,
    verify: Option<bool>,
    insecure: Option<bool>,
    identity_api_version: Option<Value>,
}

/// Where a cloud can be chosen from, in order.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--os-cloud` or `OS_CLOUD`.
    pub cloud: Option<String>,
    /// `--os-region-name`: overrides the region of the cloud entry.
    pub region: Option<String>,
}

/// Files searched for `clouds.yaml`, in openstacksdk's order.
fn search_paths(base: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let var = if base == "clouds" { "OS_CLIENT_CONFIG_FILE" } else { "OS_CLIENT_SECURE_FILE" };
    if let Some(f) = env(var) {
        out.push(PathBuf::from(f));
    }
    out.push(PathBuf::from(format!("{base}.yaml")));
    if let Some(home) = env("HOME") {
        out.push(Path::new(&home).join(format!(".config/openstack/{base}.yaml")));
    }
    out.push(PathBuf::from(format!("/etc/openstack/{base}.yaml")));
    out
}

/// The `clouds:` mapping of a file, with the file's path.
type CloudsFile = (PathBuf, serde_json::Map<String, Value>);

/// Reads the first existing file of `paths` as a YAML mapping of clouds.
fn read_clouds(paths: &[PathBuf]) -> Result<Option<CloudsFile>, CloudError> {
    let Some(path) = paths.iter().find(|p| p.is_file()) else { return Ok(None) };
    let invalid = |msg: String| CloudError::Config(format!("{}: {msg}; fix the file", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    match doc.get("clouds") {
        Some(Value::Object(m)) => Ok(Some((path.clone(), m.clone()))),
        None | Some(Value::Null) => Ok(Some((path.clone(), serde_json::Map::new()))),
        Some(_) => Err(invalid("'clouds' is not a mapping".into())),
    }
}

/// Merges `over` into `base`, recursively for mappings (secure.yaml's rule).
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// Resolves the cloud to use from the flags, the environment and the files.
pub fn resolve(sel: &Selection) -> Result<CloudConfig, CloudError> {
    resolve_with(sel, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// [`resolve`] with the environment as a function, for tests.
fn resolve_with(sel: &Selection, env: &dyn Fn(&str) -> Option<String>) -> Result<CloudConfig, CloudError> {
    let name = sel.cloud.clone().or_else(|| env("OS_CLOUD"));
    let mut config = match name {
        Some(name) => from_files(&name, env)?,
        None if env("OS_AUTH_URL").is_some() => from_env(env)?,
        None => {
            return Err(CloudError::Config(
                "no cloud configured: set OS_CLOUD (or pass --os-cloud) to a clouds.yaml entry, or set \
                 OS_AUTH_URL and the other OS_* variables; pass -I to build without publishing"
                    .into(),
            ));
        }
    };
    if let Some(r) = &sel.region {
        config.region = Some(r.clone());
    }
    Ok(config)
}

fn from_files(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<CloudConfig, CloudError> {
    let paths = search_paths("clouds", env);
    let Some((path, clouds)) = read_clouds(&paths)? else {
        let tried: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(CloudError::Config(format!(
            "cloud {name:?} asked for, but no clouds.yaml was found (looked at {}); create one or set OS_CLIENT_CONFIG_FILE",
            tried.join(", ")
        )));
    };
    let Some(mut entry) = clouds.get(name).cloned() else {
        let known: Vec<&str> = clouds.keys().map(String::as_str).collect();
        return Err(CloudError::Config(format!(
            "no cloud {name:?} in {} (it has: {}); check OS_CLOUD / --os-cloud",
            path.display(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    };
    if let Some((_, secure)) = read_clouds(&search_paths("secure", env))?
        && let Some(extra) = secure.get(name)
    {
        merge(&mut entry, extra.clone());
    }
    let origin = format!("cloud {name:?} in {}", path.display());
    let entry: Entry = serde_json::from_value(entry)
        .map_err(|e| CloudError::Config(format!("{origin}: {e}; fix the entry")))?;
    from_entry(entry, origin)
}

/// The `OS_*` variables as if they were a clouds.yaml entry.
fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<CloudConfig, CloudError> {
    let mut auth = BTreeMap::new();
    for (var, key) in [
        ("OS_AUTH_URL", "auth_url"),
        ("OS_USERNAME", "username"),
        ("OS_USER_ID", "user_id"),
        ("OS_PASSWORD", "password"),
        ("OS_PROJECT_NAME", "project_name"),
        ("OS_TENANT_NAME", "project_name"),
        ("OS_PROJECT_ID", "project_id"),
        ("OS_USER_DOMAIN_NAME", "user_domain_name"),
        ("OS_USER_DOMAIN_ID", "user_domain_id"),
        ("OS_PROJECT_DOMAIN_NAME", "project_domain_name"),
        ("OS_PROJECT_DOMAIN_ID", "project_domain_id"),
        ("OS_DOMAIN_NAME", "domain_name"),
        ("OS_APPLICATION_CREDENTIAL_ID", "application_credential_id"),
        ("OS_APPLICATION_CREDENTIAL_NAME", "application_credential_name"),
        ("OS_APPLICATION_CREDENTIAL_SECRET", "application_credential_secret"),
    ] {
        if let Some(v) = env(var) {
            auth.entry(key.to_string()).or_insert(Value::String(v));
        }
    }
    let truthy = |v: String| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes");
    let entry = Entry {
        auth,
        auth_type: env("OS_AUTH_TYPE"),
        region_name: env("OS_REGION_NAME"),
        interface: env("OS_INTERFACE").or_else(|| env("OS_ENDPOINT_TYPE")),
        cacert: env("OS_CACERT").map(PathBuf::from),
        insecure: env("OS_INSECURE").map(truthy),
        identity_api_version: env("OS_IDENTITY_API_VERSION").map(Value::String),
        ..Entry::default()
    };
    from_entry(entry, "OS_* variables".into())
}

fn from_entry(mut e: Entry, origin: String) -> Result<CloudConfig, CloudError> {
    let bad = |msg: &str| CloudError::Config(format!("{origin}: {msg}"));
    if let Some(v) = &e.identity_api_version {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !v.starts_with('3') {
            return Err(bad(&format!("identity_api_version {v} is not supported; dbimage speaks Keystone v3")));
        }
    }
    let mut take = |k: &str| match e.auth.remove(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let auth_url = take("auth_url").ok_or_else(|| bad("auth.auth_url is missing"))?;
    let domain_name = take("domain_name");
    let domain_id = take("domain_id");
    // A specific user_/project_domain wins over the shared domain_*.
    let domain = |name: Option<String>, id: Option<String>| match (id, name) {
        (Some(id), _) => Domain::Id(id),
        (None, Some(name)) => Domain::Name(name),
        (None, None) => match (&domain_id, &domain_name) {
            (Some(id), _) => Domain::Id(id.clone()),
            (None, Some(name)) => Domain::Name(name.clone()),
            (None, None) => Domain::Id("default".into()),
        },
    };
    let user = match (take("user_id"), take("username")) {
        (Some(id), _) => Some(NameOrId::Id(id)),
        (None, Some(name)) => {
            Some(NameOrId::Name { name, domain: domain(take("user_domain_name"), take("user_domain_id")) })
        }
        (None, None) => None,
    };
    let auth_type = e.auth_type.clone().unwrap_or_default();
    let credentials = if auth_type.contains("applicationcredential") || auth_type == "application_credential" {
        let secret = take("application_credential_secret")
            .ok_or_else(|| bad("auth.application_credential_secret is missing"))?;
        let credential = match (take("application_credential_id"), take("application_credential_name")) {
            (Some(id), _) => AppCredRef::Id(id),
            (None, Some(name)) => AppCredRef::Name {
                name,
                user: user.ok_or_else(|| bad("an application credential given by name needs auth.username or auth.user_id"))?,
            },
            (None, None) => return Err(bad("auth.application_credential_id (or _name) is missing")),
        };
        Credentials::ApplicationCredential { credential, secret }
    } else if matches!(auth_type.as_str(), "" | "password" | "v3password") {
        let user = user.ok_or_else(|| bad("auth.username (or auth.user_id) is missing"))?;
        let password = take("password").ok_or_else(|| {
            bad("auth.password is missing; put it in the entry, in secure.yaml, or in OS_PASSWORD")
        })?;
        let project = match (take("project_id"), take("project_name")) {
            (Some(id), _) => Some(NameOrId::Id(id)),
            (None, Some(name)) => Some(NameOrId::Name {
                name,
                domain: domain(take("project_domain_name"), take("project_domain_id")),
            }),
            (None, None) => None,
        };
        Credentials::Password { user, password, project }
    } else {
        return Err(bad(&format!(
            "auth_type {auth_type:?} is not supported; use password or v3applicationcredential"
        )));
    };
    let interface = e.interface.take().or(e.endpoint_type.take()).unwrap_or_else(|| "public".into());
    let interface = interface.trim_end_matches("URL").to_ascii_lowercase();
    if !matches!(interface.as_str(), "public" | "internal" | "admin") {
        return Err(bad(&format!("interface {interface:?} must be public, internal or admin")));
    }
    Ok(CloudConfig {
        origin,
        auth_url,
        credentials,
        region: e.region_name.filter(|r| !r.is_empty()),
        interface,
        cacert: e.cacert,
        verify: e.verify.unwrap_or(true) && !e.insecure.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const CLOUDS: &str = "clouds:\n  a:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n      username: admin\n      project_name: admin\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n  app:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: http://127.0.0.1:5000\n      application_credential_id: abc\n      application_credential_secret: s3cr3t\n    interface: internal\n    verify: false\n";

    #[test]
    fn clouds_yaml_with_secure_yaml_password() {
        let dir = tempfile::tempdir().unwrap();
        let c = write(dir.path(), "clouds.yaml", CLOUDS);
        let s = write(dir.path(), "secure.yaml", "clouds:\n  a:\n    auth:\n      password: pw\n");
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", c.to_str().unwrap()), ("OS_CLIENT_SECURE_FILE", s.to_str().unwrap()), ("OS_CLOUD", "a")]);
        let cfg = resolve_with(&Selection::default(), &env).unwrap();
        assert_eq!(cfg.region.as_deref(), Some("RegionOne"));
        assert_eq!(cfg.interface, "public");
        let Credentials::Password { user, password, project } = cfg.credentials else { panic!() };
        assert_eq!(password, "pw");
        assert!(matches!(user, NameOrId::Name { ref name, .. } if name == "admin"));
        assert!(project.is_some());
    }

    #[test]
    fn application_credential_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let c = write(dir.path(), "clouds.yaml", CLOUDS);
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", c.to_str().unwrap()), ("OS_CLOUD", "a")]);
        let sel = Selection { cloud: Some("app".into()), region: Some("Two".into()) };
        let cfg = resolve_with(&sel, &env).unwrap();
        assert!(matches!(cfg.credentials, Credentials::ApplicationCredential { credential: AppCredRef::Id(ref id), .. } if id == "abc"));
        assert_eq!(cfg.interface, "internal");
        assert!(!cfg.verify);
        assert_eq!(cfg.region.as_deref(), Some("Two"));
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = write(dir.path(), "clouds.yaml", CLOUDS);
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", c.to_str().unwrap()), ("OS_CLOUD", "nope")]);
        let err = resolve_with(&Selection::default(), &env).unwrap_err().to_string();
        assert!(err.contains("no cloud \"nope\"") && err.contains("a, app"), "{err}");
        // Cloud "a" has no password anywhere.
        let env = env_of(&[("OS_CLIENT_CONFIG_FILE", c.to_str().unwrap()), ("OS_CLOUD", "a"), ("HOME", "/nonexistent")]);
        let err = resolve_with(&Selection::default(), &env).unwrap_err().to_string();
        assert!(err.contains("auth.password is missing"), "{err}");
        let err = resolve_with(&Selection::default(), &env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("no cloud configured"), "{err}");
    }

    #[test]
    fn os_variables() {
        let env = env_of(&[
            ("OS_AUTH_URL", "https://keystone:5000/v3"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p4ss"),
            ("OS_PROJECT_ID", "pid"),
            ("OS_REGION_NAME", "R"),
            ("OS_INTERFACE", "internalURL"),
            ("OS_CACERT", "/etc/ca.pem"),
        ]);
        let cfg = resolve_with(&Selection::default(), &env).unwrap();
        assert_eq!(cfg.origin, "OS_* variables");
        assert_eq!(cfg.interface, "internal");
        assert_eq!(cfg.cacert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let Credentials::Password { user, project, .. } = cfg.credentials else { panic!() };
        assert_eq!(user, NameOrId::Name { name: "u".into(), domain: Domain::Id("default".into()) });
        assert_eq!(project, Some(NameOrId::Id("pid".into())));
    }
}
