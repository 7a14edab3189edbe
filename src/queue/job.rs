//! A job as the queue records it: what to run, where it is in its life,
//! and the transitions that got it there.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a job runs: one of dbimage's own commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `dbimage make …`
    Make,
    /// `dbimage upload …`
    Upload,
    /// `dbimage import …`
    Import,
}

impl Kind {
    /// The subcommand's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Make => "make",
            Kind::Upload => "upload",
            Kind::Import => "import",
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for a worker (new, handed back, or retried by hand).
    Queued,
    /// A worker holds its lease and runs it.
    Running,
    /// Done; it never runs again.
    Succeeded,
    /// Its last attempt failed; it waits for a worker to try again.
    Failed,
    /// Failed `max_attempts` times: in the dead-letter list until `queue retry`.
    Dead,
}

impl State {
    /// The name stored in Redis and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Option<State> {
        [State::Queued, State::Running, State::Succeeded, State::Failed, State::Dead]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's record (the `<prefix>:job:<id>` hash).
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Its number, given by the queue.
    pub id: u64,
    /// Which command.
    pub kind: Kind,
    /// The command's arguments, as submitted.
    pub args: Vec<String>,
    /// Where it is now.
    pub state: State,
    /// Attempts started so far (a handed-back attempt does not count).
    pub attempts: u32,
    /// Attempts allowed before the dead-letter list.
    pub max_attempts: u32,
    /// When it was submitted.
    pub submitted_at: String,
    /// The host it was submitted from.
    pub submitted_by: String,
    /// When its state last changed.
    pub updated_at: String,
    /// The host of its current or last attempt.
    pub host: Option<String>,
    /// The worker of its current or last attempt (`host:pid:tag`).
    pub worker: Option<String>,
    /// When its current or last attempt started.
    pub started_at: Option<String>,
    /// When it succeeded or died.
    pub finished_at: Option<String>,
    /// Its last attempt's last heartbeat.
    pub heartbeat_at: Option<String>,
    /// When a failed job's next attempt may start.
    pub retry_at: Option<String>,
    /// The last error (a failed attempt's `error:` line).
    pub error: Option<String>,
    /// The last lines of its current or last attempt's log.
    pub log_tail: Option<String>,
}

impl Job {
    /// The job from its hash's fields; `None` when they are not a job's.
    pub fn from_fields(mut f: HashMap<String, String>) -> Option<Job> {
        let mut opt = |k: &str| f.remove(k).filter(|v| !v.is_empty());
        Some(Job {
            id: opt("id")?.parse().ok()?,
            kind: serde_json::from_value(serde_json::Value::String(opt("kind")?)).ok()?,
            args: serde_json::from_str(&opt("args")?).ok()?,
            state: State::parse(&opt("state")?)?,
            attempts: opt("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
            max_attempts: opt("max_attempts").and_then(|a| a.parse().ok()).unwrap_or(1),
            submitted_at: opt("submitted_at").unwrap_or_default(),
            submitted_by: opt("submitted_by").unwrap_or_default(),
            updated_at: opt("updated_at").unwrap_or_default(),
            host: opt("host"),
            worker: opt("worker"),
            started_at: opt("started_at"),
            finished_at: opt("finished_at"),
            heartbeat_at: opt("heartbeat_at"),
            retry_at: opt("retry_at").and_then(|ms| ms.parse::<u64>().ok()).map(|ms| crate::clock::rfc3339(ms / 1000)),
            error: opt("error"),
            log_tail: opt("log_tail"),
        })
    }

    /// `kind args…` on one line, for tables and logs.
    pub fn command_line(&self) -> String {
        std::iter::once(self.kind.as_str().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One entry of a job's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: State,
    /// When.
    pub at: String,
    /// The host that made the change.
    pub host: String,
    /// The worker involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The attempt it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Why (an error, a hand-back, a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_from_its_hash() {
        let fields: HashMap<String, String> = [
            ("id", "7"),
            ("kind", "import"),
            ("args", r#"["/srv/a.vmdk","--no-publish"]"#),
            ("state", "failed"),
            ("attempts", "2"),
            ("max_attempts", "3"),
            ("error", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let job = Job::from_fields(fields.clone()).unwrap();
        assert_eq!((job.id, job.kind, job.state, job.attempts), (7, Kind::Import, State::Failed, 2));
        assert_eq!(job.error, None, "an empty field is no value");
        assert_eq!(job.command_line(), "import /srv/a.vmdk --no-publish");
        let mut bad = fields;
        bad.insert("state".into(), "exploded".into());
        assert!(Job::from_fields(bad).is_none());
    }
}
