//! The HTTP layer: one reqwest client per cloud, JSON helpers that turn
//! error statuses into [`CloudError`]s carrying the service's own message,
//! and request logging without headers (the token lives there).
//!
//! The calls are synchronous for their callers but run on reqwest's async
//! client inside one small runtime: reqwest's blocking client drops the
//! response when the server answers before the request body is sent (Glance
//! does, with 413 for a quota), so an upload error would lose its reason.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{CloudConfig, CloudError};

/// How long a JSON call may take. Uploads have no overall limit: a 4 GB
/// image over a slow link legitimately takes long, and stalls are caught by
/// the connection itself.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `fut` on the shared runtime (see [`crate::runtime`]).
pub fn block_on<F: Future>(fut: F) -> Result<F::Output, CloudError> {
    crate::runtime::block_on(fut).map_err(|e| CloudError::Failed(format!("{e}")))
}

/// Builds the client for one cloud: its CA bundle, verification setting and
/// timeouts.
pub fn client(cfg: &CloudConfig) -> Result<Client, CloudError> {
    // A redirect would carry X-Auth-Token (and a 307 on /auth/tokens the
    // password) to wherever the Location points: none is followed, and
    // `send` reports the 3xx with its Location instead.
    let mut b = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("dbimage/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &cfg.cacert {
        let pem = std::fs::read(ca).map_err(|e| {
            CloudError::Config(format!("{}: cacert {}: {e}; fix the path", cfg.origin, ca.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            CloudError::Config(format!("{}: cacert {} is not a PEM bundle: {e}", cfg.origin, ca.display()))
        })?;
        b = b.tls_certs_merge(certs);
    }
    if !cfg.verify {
        tracing::warn!("TLS certificate verification is off for {} (verify: false)", cfg.origin);
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| CloudError::Config(format!("{}: cannot set up HTTPS: {e}", cfg.origin)))
}

/// One service endpoint with the token to call it.
pub struct Service<'a> {
    /// Display name for messages: "Glance", "Trove", "Nova".
    pub name: &'static str,
    /// Base URL without a trailing slash.
    pub base: String,
    client: &'a Client,
    token: &'a str,
    headers: Vec<(&'static str, String)>,
}

impl<'a> Service<'a> {
    /// A service at `base` called with `token`.
    pub fn new(name: &'static str, base: String, client: &'a Client, token: &'a str) -> Service<'a> {
        Service { name, base: base.trim_end_matches('/').to_string(), client, token, headers: Vec::new() }
    }

    /// Adds a header sent with every request (e.g. a microversion).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Service<'a> {
        self.headers.push((name, value.into()));
        self
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with the token and the service's headers.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.client.request(method, self.url(path)).header("X-Auth-Token", self.token);
        for (k, v) in &self.headers {
            r = r.header(*k, v);
        }
        r
    }

    /// Sends `req`, returning the response when its status is a success.
    pub fn send(&self, method: &Method, path: &str, req: RequestBuilder) -> Result<Response, CloudError> {
        send(self.name, method, &self.url(path), req)
    }

    /// GET, decoding the JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CloudError> {
        let req = self.request(Method::GET, path).timeout(CALL_TIMEOUT);
        json(self.name, &self.url(path), self.send(&Method::GET, path, req)?)
    }

    /// POST a JSON body, decoding the JSON answer.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, CloudError> {
        let req = self.request(Method::POST, path).json(body).timeout(CALL_TIMEOUT);
        json(self.name, &self.url(path), self.send(&Method::POST, path, req)?)
    }

    /// POST a JSON body, ignoring the answer's body (Trove answers 202 with none).
    pub fn post_no_answer<B: Serialize>(&self, path: &str, body: &B) -> Result<(), CloudError> {
        let req = self.request(Method::POST, path).json(body).timeout(CALL_TIMEOUT);
        self.send(&Method::POST, path, req).map(drop)
    }

    /// PATCH with a JSON body and the given content type; the answer is ignored.
    pub fn patch<B: Serialize>(&self, path: &str, content_type: &str, body: &B) -> Result<(), CloudError> {
        let data = serde_json::to_vec(body).map_err(|e| CloudError::Failed(format!("encoding a request: {e}")))?;
        let req = self
            .request(Method::PATCH, path)
            .header("Content-Type", content_type)
            .body(data)
            .timeout(CALL_TIMEOUT);
        self.send(&Method::PATCH, path, req).map(drop)
    }

    /// DELETE; a 404 counts as done (deleting is idempotent).
    pub fn delete(&self, path: &str) -> Result<(), CloudError> {
        let req = self.request(Method::DELETE, path).timeout(CALL_TIMEOUT);
        match self.send(&Method::DELETE, path, req) {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Sends a request and maps transport errors and error statuses.
pub fn send(service: &str, method: &Method, url: &str, req: RequestBuilder) -> Result<Response, CloudError> {
    let started = Instant::now();
    let resp = block_on(async move { req.send().await })?.map_err(|e| connect_error(service, url, &e))?;
    let status = resp.status();
    tracing::debug!(target: "http", "{method} {url} → {} in {} ms", status.as_u16(), started.elapsed().as_millis());
    if status.is_success() {
        return Ok(resp);
    }
    let redirect = status.is_redirection().then(|| redirect_message(&resp));
    let body = block_on(async move { resp.text().await })?.unwrap_or_default();
    Err(CloudError::Http {
        service: service.to_string(),
        method: method.to_string(),
        url: url.to_string(),
        status: status.as_u16(),
        message: redirect.unwrap_or_else(|| message_of(status, &body)),
    })
}

fn redirect_message(resp: &Response) -> String {
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "nowhere (no Location header)".into());
    crate::run::redact(&format!(
        "redirected to {location:?}, which dbimage does not follow (the token or password would go along); \
         use the final URL in auth_url or the service catalog"
    ))
}

/// Warns, once per run, when credentials are about to travel in clear text
/// to another machine.
pub fn warn_if_cleartext(service: &str, url: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if cleartext_to_other_host(url) {
        WARNED.call_once(|| {
            tracing::warn!("{service} is at {url}: plain http to another host sends the password and token unencrypted; use https");
        });
    }
}

/// Whether `url` is plain `http://` to a host other than this one.
fn cleartext_to_other_host(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    if u.scheme() != "http" {
        return false;
    }
    let host = u.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !(host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost")),
    }
}

/// Decodes a JSON answer.
pub fn json<T: DeserializeOwned>(service: &str, url: &str, resp: Response) -> Result<T, CloudError> {
    let bytes = block_on(async move { resp.bytes().await })?
        .map_err(|e| CloudError::Failed(format!("{service}: reading the answer from {url}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CloudError::Failed(format!(
            "{service} gave an answer dbimage does not understand at {url}: {e} (body starts {:?})",
            String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
        ))
    })
}

/// A transport error as a one-line reason with a hint.
pub fn connect_error(service: &str, url: &str, e: &reqwest::Error) -> CloudError {
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain = format!("{chain}: {s}");
        src = s.source();
    }
    let hint = if e.is_timeout() {
        "timed out; is the service overloaded or the address wrong?"
    } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("TLS") {
        "TLS failed; set cacert in clouds.yaml (or OS_CACERT) to the CA that signed the service's certificate"
    } else if e.is_connect() {
        "is the service running and its catalog URL right?"
    } else {
        "the connection broke"
    };
    CloudError::Connect { service: service.to_string(), url: url.to_string(), message: format!("{chain}; {hint}") }
}

/// The explanation in an OpenStack error body, which comes in several shapes:
/// `{"error": {"message"}}` (Keystone), `{"badRequest": {"message"}}` (Nova,
/// Trove), or plain text / HTML from webob (Glance).
pub fn message_of(status: StatusCode, body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| find_message(&v));
    let text = from_json.unwrap_or_else(|| plain(body));
    let text = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    crate::run::redact(&text)
}

fn find_message(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => {
            for key in ["message", "title", "detail", "explanation"] {
                if let Some(Value::String(s)) = m.get(key) {
                    return Some(s.trim().to_string());
                }
            }
            m.values().find_map(find_message)
        }
        _ => None,
    }
}

/// Text of an HTML/plain error page: tags dropped, whitespace collapsed,
/// the status line that webob repeats removed, cut to a readable length.
fn plain(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut text = words.join(" ");
    // "413 Request Entity Too Large 413 Request Entity Too Large Image exceeds…"
    if let Some((head, _)) = text.split_once(' ')
        && head.len() == 3
        && head.chars().all(|c| c.is_ascii_digit())
    {
        let parts: Vec<&str> = text.split(head).map(str::trim).filter(|s| !s.is_empty()).collect();
        if let Some(last) = parts.last() {
            text = last.to_string();
        }
    }
    if text.chars().count() > 300 {
        text = text.chars().take(300).collect::<String>() + "…";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_each_shape() {
        let s = StatusCode::BAD_REQUEST;
        assert_eq!(message_of(s, r#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#), "The request you have made requires authentication.");
        assert_eq!(message_of(s, r#"{"badRequest":{"message":"Image abc not found","code":400}}"#), "Image abc not found");
        let html = "<html>\n <head>\n  <title>413 Request Entity Too Large</title>\n </head>\n <body>\n  <h1>413 Request Entity Too Large</h1>\n  Image exceeds the storage quota<br /><br />\n </body>\n</html>";
        assert_eq!(message_of(StatusCode::PAYLOAD_TOO_LARGE, html), "Request Entity Too Large Image exceeds the storage quota");
        assert_eq!(message_of(StatusCode::NOT_FOUND, ""), "Not Found");
    }

    #[test]
    fn cleartext_only_to_other_hosts() {
        assert!(cleartext_to_other_host("http://keystone.example:5000/v3"));
        assert!(cleartext_to_other_host("http://10.0.0.5/identity"));
        assert!(!cleartext_to_other_host("https://keystone.example:5000/v3"));
        assert!(!cleartext_to_other_host("http://127.0.0.1:5000/v3"));
        assert!(!cleartext_to_other_host("http://[::1]:5000/v3"));
        assert!(!cleartext_to_other_host("http://localhost/identity"));
    }
}
