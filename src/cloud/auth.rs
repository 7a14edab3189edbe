//! Keystone v3: log in, keep the token, pick endpoints from the catalog.

use reqwest::{Client, Method};
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::{AppCredRef, CloudConfig, Credentials, Domain, NameOrId};
use super::http::{self, Service};
use super::CloudError;

/// A logged-in session: the token, its project and the service catalog.
pub struct Session {
    client: Client,
    token: String,
    /// The project the token is scoped to.
    pub project_id: String,
    catalog: Vec<CatalogEntry>,
    region: Option<String>,
    interface: String,
    /// Where the credentials came from, for messages.
    pub origin: String,
}

#[derive(Debug, Deserialize)]
struct TokenBody {
    token: Token,
}

#[derive(Debug, Deserialize)]
struct Token {
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
    project: Option<IdOnly>,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Debug, Deserialize)]
struct CatalogEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

fn domain_json(d: &Domain) -> Value {
    match d {
        Domain::Id(id) => json!({ "id": id }),
        Domain::Name(name) => json!({ "name": name }),
    }
}

fn named_json(n: &NameOrId) -> Value {
    match n {
        NameOrId::Id(id) => json!({ "id": id }),
        NameOrId::Name { name, domain } => json!({ "name": name, "domain": domain_json(domain) }),
    }
}

/// The body of `POST /v3/auth/tokens` for these credentials.
fn auth_body(creds: &Credentials) -> Value {
    match creds {
        Credentials::Password { user, password, project } => {
            let mut user = named_json(user);
            user["password"] = json!(password);
            let mut auth = json!({ "identity": { "methods": ["password"], "password": { "user": user } } });
            if let Some(p) = project {
                auth["scope"] = json!({ "project": named_json(p) });
            }
            json!({ "auth": auth })
        }
        Credentials::ApplicationCredential { credential, secret } => {
            let mut cred = match credential {
                AppCredRef::Id(id) => json!({ "id": id }),
                AppCredRef::Name { name, user } => json!({ "name": name, "user": named_json(user) }),
            };
            cred["secret"] = json!(secret);
            json!({ "auth": { "identity": { "methods": ["application_credential"], "application_credential": cred } } })
        }
    }
}

/// Keystone's v3 root: `auth_url` as given, with `/v3` added when missing.
fn v3_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") { base.to_string() } else { format!("{base}/v3") }
}

impl Session {
    /// Logs in. Wrong credentials give [`CloudError::Auth`]; an unknown
    /// region is reported here, before any work depends on it.
    pub fn login(cfg: &CloudConfig) -> Result<Session, CloudError> {
        match &cfg.credentials {
            Credentials::Password { password, .. } => crate::run::add_secret(password.clone()),
            Credentials::ApplicationCredential { secret, .. } => crate::run::add_secret(secret.clone()),
        }
        let client = http::client(cfg)?;
        let url = format!("{}/auth/tokens", v3_url(&cfg.auth_url));
        http::warn_if_cleartext("Keystone", &url);
        let req = client.post(&url).json(&auth_body(&cfg.credentials)).timeout(std::time::Duration::from_secs(60));
        let resp = match http::send("Keystone", &Method::POST, &url, req) {
            Ok(r) => r,
            Err(CloudError::Http { status, message, url, .. }) if status == 401 || status == 403 => {
                return Err(CloudError::Auth { url, status, message, origin: cfg.origin.clone() });
            }
            Err(CloudError::Http { status: 404, url, .. }) => {
                return Err(CloudError::Config(format!(
                    "{url} is not a Keystone v3 token URL (HTTP 404); check auth_url of {}",
                    cfg.origin
                )));
            }
            Err(e) => return Err(e),
        };
        let token = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| CloudError::Failed(format!("Keystone at {url} answered without a token")))?;
        crate::run::add_secret(token.clone());
        let body: TokenBody = http::json("Keystone", &url, resp)?;
        let project_id = body.token.project.map(|p| p.id).ok_or_else(|| {
            CloudError::Config(format!(
                "the token from {} is not scoped to a project; set project_name (or project_id) for the cloud",
                cfg.origin
            ))
        })?;
        let session = Session {
            client,
            token,
            project_id,
            catalog: body.token.catalog,
            region: cfg.region.clone(),
            interface: cfg.interface.clone(),
            origin: cfg.origin.clone(),
        };
        session.check_region()?;
        tracing::debug!("logged in to {} (project {})", cfg.origin, session.project_id);
        Ok(session)
    }

    fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .catalog
            .iter()
            .flat_map(|e| &e.endpoints)
            .filter_map(|e| e.region_id.clone().or_else(|| e.region.clone()))
            .collect();
        r.sort();
        r.dedup();
        r
    }

    fn check_region(&self) -> Result<(), CloudError> {
        let Some(want) = &self.region else { return Ok(()) };
        let known = self.regions();
        if known.iter().any(|r| r == want) {
            return Ok(());
        }
        Err(CloudError::Catalog(format!(
            "region {want:?} is not in the service catalog of {} (it has: {}); fix region_name or --os-region-name",
            self.origin,
            if known.is_empty() { "no regions".into() } else { known.join(", ") }
        )))
    }

    /// The URL of a service (`image`, `database`, `compute`) for the chosen
    /// interface and region.
    pub fn endpoint(&self, service_type: &str) -> Result<String, CloudError> {
        let entry = self.catalog.iter().find(|e| e.kind == service_type).ok_or_else(|| {
            CloudError::Catalog(format!(
                "the cloud ({}) has no {service_type} service in its catalog; is it deployed?",
                self.origin
            ))
        })?;
        let in_region = |e: &&Endpoint| match &self.region {
            None => true,
            Some(r) => e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r),
        };
        entry
            .endpoints
            .iter()
            .filter(in_region)
            .find(|e| e.interface == self.interface)
            .map(|e| e.url.trim_end_matches('/').to_string())
            .ok_or_else(|| {
                CloudError::Catalog(format!(
                    "the {service_type} service has no {} endpoint{} in the catalog of {}",
                    self.interface,
                    self.region.as_ref().map(|r| format!(" in region {r}")).unwrap_or_default(),
                    self.origin
                ))
            })
    }

    /// A [`Service`] for `service_type`, with `suffix` appended to its
    /// catalog URL unless the URL already ends with it.
    pub fn service(&self, name: &'static str, service_type: &str, suffix: &str) -> Result<Service<'_>, CloudError> {
        let mut base = self.endpoint(service_type)?;
        if !suffix.is_empty() && !base.ends_with(suffix) {
            base.push_str(suffix);
        }
        Ok(Service::new(name, base, &self.client, &self.token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    #[test]
    fn auth_bodies() {
        let b = auth_body(&Credentials::Password {
            user: NameOrId::Name { name: "admin".into(), domain: Domain::Name("Default".into()) },
            password: "pw".into(),
            project: Some(NameOrId::Id("p1".into())),
        });
        assert_eq!(b["auth"]["identity"]["password"]["user"]["domain"]["name"], "Default");
        assert_eq!(b["auth"]["identity"]["password"]["user"]["password"], "pw");
        assert_eq!(b["auth"]["scope"]["project"]["id"], "p1");
        let b = auth_body(&Credentials::ApplicationCredential { credential: AppCredRef::Id("c".into()), secret: "s".into() });
        assert_eq!(b["auth"]["identity"]["methods"][0], "application_credential");
        assert_eq!(b["auth"]["identity"]["application_credential"]["secret"], "s");
        assert!(b["auth"].get("scope").is_none());
    }

    /// Accepts one connection on `listener` (within 20 s), reads the
    /// request and answers `response`; returns the request as text.
    fn answer_once(listener: TcpListener, response: String) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (mut conn, _) = accept_within(&listener, Duration::from_secs(20)).expect("no request came");
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body up to Content-Length.
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            conn.write_all(response.as_bytes()).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        })
    }

    fn accept_within(listener: &TcpListener, wait: Duration) -> Option<(std::net::TcpStream, std::net::SocketAddr)> {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((s, a)) => {
                    s.set_nonblocking(false).unwrap();
                    return Some((s, a));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("accept: {e}"),
            }
        }
        None
    }

    fn redirect_to(location: &str) -> String {
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    #[test]
    fn redirects_carry_neither_password_nor_token() {
        let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
        let location = format!("http://{}/v3/auth/tokens", elsewhere.local_addr().unwrap());

        // Keystone answers the login with a 307: the password must not follow.
        let keystone = TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = CloudConfig {
            origin: "test cloud".into(),
            auth_url: format!("http://{}/v3", keystone.local_addr().unwrap()),
            credentials: Credentials::Password {
                user: NameOrId::Id("u1".into()),
                password: "redirect-Pa55word".into(),
                project: Some(NameOrId::Id("p1".into())),
            },
            region: None,
            interface: "public".into(),
            cacert: None,
            verify: true,
        };
        let server = answer_once(keystone, redirect_to(&location));
        let err = Session::login(&cfg).err().expect("a redirect is not a login").to_string();
        assert!(server.join().unwrap().contains("redirect-Pa55word"), "Keystone itself got the login");
        assert!(err.contains("HTTP 307") && err.contains(&location), "{err}");
        assert!(!err.contains("redirect-Pa55word"), "{err}");

        // A service answers a call with a 307: the token must not follow.
        let glance = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", glance.local_addr().unwrap());
        let client = http::client(&cfg).unwrap();
        let svc = Service::new("Glance", base, &client, "tok-REDIRECT-1234");
        let server = answer_once(glance, redirect_to(&location));
        let err = svc.get::<Value>("/v2/images").unwrap_err().to_string();
        assert!(server.join().unwrap().contains("tok-REDIRECT-1234"));
        assert!(err.contains("HTTP 307") && err.contains(&location), "{err}");

        assert!(
            accept_within(&elsewhere, Duration::from_millis(500)).is_none(),
            "the redirect target was contacted"
        );
    }

    #[test]
    fn v3_suffix() {
        assert_eq!(v3_url("http://k:5000"), "http://k:5000/v3");
        assert_eq!(v3_url("http://k:5000/v3/"), "http://k:5000/v3");
    }
}
