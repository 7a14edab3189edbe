//! The `queue:` section: where the build farm's Redis is and how jobs are
//! retried. `DBIMAGE_REDIS_*` and `DBIMAGE_QUEUE_*` take precedence.

use std::path::PathBuf;

use serde::Deserialize;

use super::{SettingsError, env_path, env_str};

/// The section in the settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueueFile {
    url: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    prefix: Option<String>,
    max_attempts: Option<u32>,
    lease: Option<u64>,
    retry_delay: Option<u64>,
}

/// Where the queue's password comes from (a password in the URL is used
/// as it is); a file is read only when the queue is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// `DBIMAGE_REDIS_PASSWORD`.
    Value(String),
    /// `password_file` / `DBIMAGE_REDIS_PASSWORD_FILE`: its first line.
    File(PathBuf),
}

/// The build farm's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// `redis://host:port/db`, or `rediss://…` for TLS.
    pub url: String,
    /// ACL user name.
    pub username: Option<String>,
    /// ACL password (or the `default` user's with no user name).
    pub password: Option<Password>,
    /// PEM file of the CA that signed the server's certificate (TLS),
    /// instead of the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key dbimage uses, so several farms can share a server.
    pub prefix: String,
    /// How many times a job runs before it goes to the dead-letter list.
    pub max_attempts: u32,
    /// Seconds a worker's hold on a job lasts without a heartbeat; after
    /// that another worker takes the job up.
    pub lease: u64,
    /// Seconds before a failed job's first retry; each later one waits
    /// twice as long (at most an hour). 0 retries at once.
    pub retry_delay: u64,
}

/// Default for `max_attempts`.
const MAX_ATTEMPTS: u32 = 3;
/// Default for `lease`, in seconds.
const LEASE: u64 = 60;
/// Default for `retry_delay`, in seconds.
const RETRY_DELAY: u64 = 30;

impl QueueSettings {
    /// The section and its variables; `None` when no URL is set.
    pub(super) fn resolve(file: Option<QueueFile>, from: &str) -> Result<Option<QueueSettings>, SettingsError> {
        let file = file.unwrap_or_default();
        let Some(url) = env_str("DBIMAGE_REDIS_URL").or(file.url) else {
            return Ok(None);
        };
        let bad = |msg: String| SettingsError::Invalid { path: from.into(), msg };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(bad("queue url must be redis://[user:password@]host:port/db, or rediss://… for TLS".into()));
        }
        let number = |var: &str, value: Option<u64>, default: u64| -> Result<u64, SettingsError> {
            match env_str(var) {
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| SettingsError::Env(format!("{var}={v:?} is not a whole number of seconds or attempts"))),
                None => Ok(value.unwrap_or(default)),
            }
        };
        let max_attempts = number("DBIMAGE_QUEUE_MAX_ATTEMPTS", file.max_attempts.map(u64::from), MAX_ATTEMPTS.into())?;
        let lease = number("DBIMAGE_QUEUE_LEASE", file.lease, LEASE)?;
        let retry_delay = number("DBIMAGE_QUEUE_RETRY_DELAY", file.retry_delay, RETRY_DELAY)?;
        if max_attempts == 0 || lease < 3 || retry_delay > 3600 {
            return Err(bad(format!(
                "queue max_attempts {max_attempts}, lease {lease} s, retry_delay {retry_delay} s: \
                 need at least 1 attempt, a lease of at least 3 s and a retry delay of at most 3600 s"
            )));
        }
        let password = env_str("DBIMAGE_REDIS_PASSWORD")
            .map(Password::Value)
            .or_else(|| env_path("DBIMAGE_REDIS_PASSWORD_FILE").or(file.password_file).map(Password::File));
        Ok(Some(QueueSettings {
            url,
            username: env_str("DBIMAGE_REDIS_USER").or(file.username),
            password,
            ca_file: env_path("DBIMAGE_REDIS_CA").or(file.ca_file),
            prefix: env_str("DBIMAGE_QUEUE_PREFIX").or(file.prefix).unwrap_or_else(|| "dbimage".into()),
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
            lease,
            retry_delay,
        }))
    }
}
