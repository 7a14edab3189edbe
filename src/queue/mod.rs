//! The build farm's job queue, on Redis.
//!
//! Jobs are hashes (`<prefix>:job:<id>`) with a history list each; a Redis
//! stream (`<prefix>:stream`) carries deliveries to the `workers` consumer
//! group. A delivery stays in the group's pending list until the attempt
//! ends, and its worker renews its idle time (its lease) with a heartbeat;
//! a worker that dies stops renewing, and after `lease` seconds another
//! worker claims the delivery (`XAUTOCLAIM`). Every state change is one Lua
//! script, so two workers can never both record a job's success, and a
//! delivery of a job that is done is acknowledged without running it.

pub mod job;
pub mod worker;

use std::collections::HashMap;
use std::time::Duration;

use redis::{Script, Value};

use crate::settings::{Password, QueueSettings};
pub use job::{Job, Kind, State, Transition};

/// The consumer group every worker reads from.
const GROUP: &str = "workers";

/// Errors talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No `queue:` section and no `DBIMAGE_REDIS_URL`.
    #[error("no build farm queue is configured; set queue.url in the settings (or DBIMAGE_REDIS_URL)")]
    NotConfigured,
    /// The password file cannot be read.
    #[error("queue password file {path}: {msg}")]
    PasswordFile {
        /// The file.
        path: String,
        /// Why.
        msg: String,
    },
    /// The CA file cannot be read, or is given for a plain `redis://` URL.
    #[error("queue ca_file {path}: {msg}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        msg: String,
    },
    /// Connecting or logging in failed.
    #[error("cannot reach the queue at {url}: {err}; check queue.url, username and password")]
    Connect {
        /// The URL without credentials.
        url: String,
        /// Redis's error.
        err: redis::RedisError,
    },
    /// The server is too old for the commands the queue needs.
    #[error("the queue's Redis is version {0}; dbimage needs Redis 6.2 or newer (XAUTOCLAIM)")]
    Unsupported(String),
    /// A command failed.
    #[error("queue: {0}")]
    Redis(#[from] redis::RedisError),
    /// No job with this number.
    #[error("no job {0} in the queue; `dbimage jobs` lists them")]
    NoSuchJob(u64),
    /// `queue retry` of a job that is not dead.
    #[error("job {id} is {state}, not dead; only jobs in the dead-letter list can be retried")]
    NotDead {
        /// The job.
        id: u64,
        /// Its state.
        state: String,
    },
}

impl QueueError {
    /// Whether the request or the settings are at fault (exit code 2).
    pub fn is_usage(&self) -> bool {
        !matches!(self, QueueError::Connect { .. } | QueueError::Redis(_))
    }

    /// Whether waiting and reconnecting may cure it (the connection, not
    /// permissions or data).
    pub fn is_transient(&self) -> bool {
        let e = match self {
            QueueError::Connect { err, .. } | QueueError::Redis(err) => err,
            _ => return false,
        };
        e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || matches!(e.code(), Some("LOADING" | "BUSY"))
    }
}

/// A delivery of a job to a worker: the stream entry and the job it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream entry ID.
    pub entry: String,
    /// The job's number.
    pub job: u64,
}

/// What `start` decided for a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Run it: this is attempt N.
    Run(u32),
    /// Not run: the job is already in this state (or superseded).
    Skip(String),
    /// Too many attempts were lost with their workers: now dead.
    Dead(String),
}

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited 0.
    Ok,
    /// The command failed.
    Fail,
    /// The worker stopped the command to shut down: not the job's fault.
    HandBack,
}

/// An open connection to the queue.
pub struct Queue {
    conn: redis::Connection,
    keys: Keys,
    scripts: Scripts,
    /// Attempts a new job gets unless it says otherwise.
    max_attempts: u32,
    /// The lease, in seconds.
    pub lease: u64,
    /// The wait before a failed job's first retry, in milliseconds.
    retry_delay_ms: u64,
    host: String,
}

impl Queue {
    /// Connects (TLS and ACL login as configured) and checks the server
    /// can hold the queue.
    pub fn connect(settings: Option<&QueueSettings>) -> Result<Queue, QueueError> {
        let s = settings.ok_or(QueueError::NotConfigured)?;
        let shown = without_credentials(&s.url);
        let connect_err = |err| QueueError::Connect { url: shown.clone(), err };
        let mut redis_info = redis::IntoConnectionInfo::into_connection_info(s.url.as_str()).map_err(connect_err)?;
        if let Some(pw) = redis_info.redis_settings().password() {
            crate::run::add_secret(pw);
        }
        let mut rs = redis_info.redis_settings().clone();
        if let Some(user) = &s.username {
            rs = rs.set_username(user);
        }
        if let Some(pw) = &s.password {
            let pw = read_password(pw)?;
            crate::run::add_secret(&pw);
            rs = rs.set_password(pw);
        }
        redis_info = redis_info.set_redis_settings(rs);
        let client = match &s.ca_file {
            Some(ca) => {
                let shown_ca = ca.display().to_string();
                if !s.url.starts_with("rediss://") {
                    return Err(QueueError::CaFile { path: shown_ca, msg: "set, but the url is not rediss:// (TLS)".into() });
                }
                let pem = std::fs::read(ca).map_err(|e| QueueError::CaFile { path: shown_ca, msg: e.to_string() })?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(redis_info, certs)
            }
            None => redis::Client::open(redis_info),
        }
        .map_err(connect_err)?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(10)).map_err(connect_err)?;
        // Short enough for a worker to notice a silent server well within a
        // lease; longer than the longest blocking read (2 s).
        conn.set_read_timeout(Some(Duration::from_secs((s.lease / 4).max(3)))).map_err(connect_err)?;
        let mut queue = Queue {
            conn,
            keys: Keys { prefix: s.prefix.clone() },
            scripts: Scripts::load(),
            max_attempts: s.max_attempts,
            lease: s.lease,
            retry_delay_ms: s.retry_delay * 1000,
            host: hostname(),
        };
        let info: String = redis::cmd("INFO").arg("server").query(&mut queue.conn).map_err(connect_err)?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("0")
            .trim()
            .to_string();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        if (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (6, 2) {
            return Err(QueueError::Unsupported(version));
        }
        Ok(queue)
    }

    /// Makes sure the stream and its consumer group exist (for the
    /// commands that write; reading a farm never creates one).
    pub fn join(&mut self) -> Result<(), QueueError> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut self.conn);
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Puts a job on the queue; returns its number.
    pub fn submit(&mut self, kind: Kind, args: &[String], max_attempts: Option<u32>) -> Result<u64, QueueError> {
        let id: u64 = redis::cmd("INCR").arg(self.keys.seq()).query(&mut self.conn)?;
        let args = serde_json::Value::from(args.to_vec()).to_string();
        let _: i64 = self
            .scripts
            .submit
            .key(self.keys.job(id))
            .key(self.keys.history(id))
            .key(self.keys.stream())
            .key(self.keys.index())
            .arg(id)
            .arg(kind.as_str())
            .arg(args)
            .arg(max_attempts.unwrap_or(self.max_attempts))
            .arg(crate::clock::now_rfc3339())
            .arg(&self.host)
            .invoke(&mut self.conn)?;
        Ok(id)
    }

    /// Puts the failed jobs whose retry time has come back on the stream.
    pub fn promote(&mut self) -> Result<(), QueueError> {
        let _: i64 = self
            .scripts
            .promote
            .key(self.keys.delayed())
            .key(self.keys.stream())
            .arg(crate::clock::now_millis())
            .arg(&self.keys.prefix)
            .invoke(&mut self.conn)?;
        Ok(())
    }

    /// How many failed jobs wait for their retry time.
    pub fn waiting(&mut self) -> Result<u64, QueueError> {
        Ok(redis::cmd("ZCARD").arg(self.keys.delayed()).query(&mut self.conn)?)
    }

    /// The next delivery for `worker`: first one whose lease expired (its
    /// worker died), else a new one, waiting up to `block` for it.
    pub fn take(&mut self, worker: &str, block: Duration) -> Result<Option<Delivery>, QueueError> {
        // XAUTOCLAIM looks at a few pending entries per call (ten per
        // COUNT): follow its cursor through the whole pending list.
        let mut cursor = "0-0".to_string();
        loop {
            let claimed: Value = redis::cmd("XAUTOCLAIM")
                .arg(self.keys.stream())
                .arg(GROUP)
                .arg(worker)
                .arg(self.lease * 1000)
                .arg(&cursor)
                .arg("COUNT")
                .arg(1)
                .query(&mut self.conn)?;
            let Value::Array(parts) = &claimed else { break };
            if let Some(d) = parts.get(1).and_then(|e| entries(e).into_iter().next()) {
                return Ok(Some(d));
            }
            match parts.first().map(redis::from_redis_value_ref::<String>) {
                Some(Ok(next)) if next != "0-0" => cursor = next,
                _ => break,
            }
        }
        let read: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(worker)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(self.keys.stream())
            .arg(">")
            .query(&mut self.conn)?;
        // [[stream, [entries]]] (RESP2) or {stream: [entries]} (RESP3).
        let streams: Vec<Value> = match read {
            Value::Array(s) => s.into_iter().filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            }).collect(),
            Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        };
        Ok(streams.iter().flat_map(entries).next())
    }

    /// Records that `worker` starts a delivery, or why it must not.
    pub fn start(&mut self, worker: &str, d: &Delivery) -> Result<Start, QueueError> {
        let mut inv = self.scripts.start.prepare_invoke();
        self.keys.state_keys(&mut inv, d.job);
        let (what, detail): (String, String) = inv
            .arg(GROUP)
            .arg(&d.entry)
            .arg(worker)
            .arg(&self.host)
            .arg(crate::clock::now_rfc3339())
            .invoke(&mut self.conn)?;
        Ok(match what.as_str() {
            "run" => Start::Run(detail.parse().unwrap_or(1)),
            "dead" => Start::Dead(detail),
            _ => Start::Skip(detail),
        })
    }

    /// Renews `worker`'s lease on a delivery and stores the log tail;
    /// false when the job is no longer this worker's to run.
    pub fn heartbeat(&mut self, worker: &str, d: &Delivery, log_tail: &str) -> Result<bool, QueueError> {
        let kept: i64 = self
            .scripts
            .heartbeat
            .key(self.keys.job(d.job))
            .key(self.keys.history(d.job))
            .key(self.keys.stream())
            .arg(GROUP)
            .arg(&d.entry)
            .arg(worker)
            .arg(crate::clock::now_rfc3339())
            .arg(log_tail)
            .invoke(&mut self.conn)?;
        Ok(kept == 1)
    }

    /// Records how an attempt ended; returns the job's resulting state
    /// (`already` when another attempt had succeeded first, `lost` when
    /// the lease had passed to another worker).
    pub fn finish(
        &mut self,
        worker: &str,
        d: &Delivery,
        outcome: Outcome,
        error: &str,
        log_tail: &str,
    ) -> Result<String, QueueError> {
        let outcome = match outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::HandBack => "handback",
        };
        let mut inv = self.scripts.finish.prepare_invoke();
        self.keys.state_keys(&mut inv, d.job);
        Ok(inv
            .arg(GROUP)
            .arg(&d.entry)
            .arg(worker)
            .arg(&self.host)
            .arg(crate::clock::now_rfc3339())
            .arg(outcome)
            .arg(error)
            .arg(log_tail)
            .arg(self.retry_delay_ms)
            .arg(crate::clock::now_millis())
            .invoke(&mut self.conn)?)
    }

    /// Puts a dead job back on the queue with its attempts reset.
    pub fn retry(&mut self, id: u64) -> Result<(), QueueError> {
        let mut inv = self.scripts.retry.prepare_invoke();
        self.keys.state_keys(&mut inv, id);
        let before: String = inv
            .arg(id)
            .arg(crate::clock::now_rfc3339())
            .arg(&self.host)
            .invoke(&mut self.conn)?;
        match before.as_str() {
            "" => Err(QueueError::NoSuchJob(id)),
            "dead" => Ok(()),
            _ => Err(QueueError::NotDead { id, state: before }),
        }
    }

    /// One job's record.
    pub fn job(&mut self, id: u64) -> Result<Job, QueueError> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(self.keys.job(id)).query(&mut self.conn)?;
        Job::from_fields(fields).ok_or(QueueError::NoSuchJob(id))
    }

    /// One job's state history, oldest first.
    pub fn history(&mut self, id: u64) -> Result<Vec<Transition>, QueueError> {
        let raw: Vec<String> = redis::cmd("LRANGE").arg(self.keys.history(id)).arg(0).arg(-1).query(&mut self.conn)?;
        Ok(raw.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
    }

    /// Every job, oldest first.
    pub fn jobs(&mut self) -> Result<Vec<Job>, QueueError> {
        let ids: Vec<u64> = redis::cmd("ZRANGE").arg(self.keys.index()).arg(0).arg(-1).query(&mut self.conn)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.keys.job(*id));
        }
        let all: Vec<HashMap<String, String>> = pipe.query(&mut self.conn)?;
        Ok(all.into_iter().filter_map(Job::from_fields).collect())
    }

    /// Removes `worker` from the consumer group when it holds no delivery
    /// (a worker that holds one leaves it for the others to claim).
    pub fn leave(&mut self, worker: &str) -> Result<(), QueueError> {
        let pending: Value = redis::cmd("XPENDING")
            .arg(self.keys.stream())
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(worker)
            .query(&mut self.conn)?;
        if matches!(&pending, Value::Array(p) if p.is_empty()) {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(self.keys.stream())
                .arg(GROUP)
                .arg(worker)
                .query(&mut self.conn)?;
        }
        Ok(())
    }

    /// This host's name, as recorded in job histories.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// The names of the keys, all under the farm's prefix.
struct Keys {
    prefix: String,
}

impl Keys {
    fn stream(&self) -> String {
        format!("{}:stream", self.prefix)
    }
    fn seq(&self) -> String {
        format!("{}:seq", self.prefix)
    }
    fn job(&self, id: u64) -> String {
        format!("{}:job:{id}", self.prefix)
    }
    fn history(&self, id: u64) -> String {
        format!("{}:job:{id}:history", self.prefix)
    }
    fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    fn index(&self) -> String {
        format!("{}:jobs", self.prefix)
    }
    fn delayed(&self) -> String {
        format!("{}:delayed", self.prefix)
    }
    /// The KEYS of a script that changes a job's state: the job, its
    /// history, the stream, the dead-letter list and the delayed retries.
    fn state_keys(&self, inv: &mut redis::ScriptInvocation<'_>, id: u64) {
        inv.key(self.job(id)).key(self.history(id)).key(self.stream()).key(self.dead()).key(self.delayed());
    }
}

/// The Lua scripts, one per state change.
struct Scripts {
    submit: Script,
    start: Script,
    heartbeat: Script,
    finish: Script,
    retry: Script,
    promote: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            submit: script(include_str!("lua/submit.lua")),
            start: script(include_str!("lua/start.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            finish: script(include_str!("lua/finish.lua")),
            retry: script(include_str!("lua/retry.lua")),
            promote: script(include_str!("lua/promote.lua")),
        }
    }
}

/// A script with the shared prelude in front.
fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/prelude.lua")))
}

/// Deliveries in a list of stream entries (`[id, [field, value, …]]`).
fn entries(v: &Value) -> Vec<Delivery> {
    let Value::Array(list) = v else { return Vec::new() };
    list.iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let entry: String = redis::from_redis_value_ref(parts.first()?).ok()?;
            let fields: Vec<String> = redis::from_redis_value_ref(parts.get(1)?).ok()?;
            let job = fields.chunks(2).find(|kv| kv[0] == "job")?.get(1)?.parse().ok()?;
            Some(Delivery { entry, job })
        })
        .collect()
}

/// The password's value, from the settings or the first line of its file.
fn read_password(pw: &Password) -> Result<String, QueueError> {
    match pw {
        Password::Value(v) => Ok(v.clone()),
        Password::File(path) => std::fs::read_to_string(path)
            .map(|t| t.lines().next().unwrap_or_default().to_string())
            .map_err(|e| QueueError::PasswordFile { path: path.display().to_string(), msg: e.to_string() }),
    }
}

/// `redis://user:pw@host:6379/0` → `redis://host:6379/0`, for messages.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, rest))) => format!("{scheme}://{rest}"),
        _ => url.to_string(),
    }
}

/// The kernel's host name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(without_credentials("redis://farm:pw@q.example:6379/2"), "redis://q.example:6379/2");
        assert_eq!(without_credentials("rediss://q.example"), "rediss://q.example");
    }

    #[test]
    fn deliveries_from_stream_entries() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let list = Value::Array(vec![
            Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("job"), bulk("17")])]),
            Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("other"), bulk("x")])]),
        ]);
        assert_eq!(entries(&list), vec![Delivery { entry: "1-0".into(), job: 17 }]);
        assert!(entries(&Value::Nil).is_empty());
    }
}
