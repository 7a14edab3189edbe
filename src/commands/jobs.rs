//! `dbimage jobs [show ID]`: what the build farm did and is doing.

use std::fmt::Write;

use serde_json::json;

use crate::cli::{Format, JobsArgs, JobsCommand};
use crate::queue::{Job, Queue, State, Transition};
use crate::settings::Settings;

/// Runs `dbimage jobs`.
pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let mut queue = Queue::connect(settings.queue.as_ref())?;
    match args.command {
        Some(JobsCommand::Show { id }) => {
            let job = queue.job(id)?;
            let history = queue.history(id)?;
            match args.format {
                Format::Json => println!("{:#}", json!({"job": job, "history": history})),
                Format::Table => print!("{}", show(&job, &history)),
            }
        }
        None => {
            let jobs: Vec<Job> = queue
                .jobs()?
                .into_iter()
                .filter(|j| args.state.is_empty() || args.state.contains(&j.state))
                .collect();
            match args.format {
                Format::Json => println!("{:#}", json!(jobs)),
                Format::Table => print!("{}", table(&jobs)),
            }
        }
    }
    Ok(())
}

/// The job list as aligned columns.
fn table(jobs: &[Job]) -> String {
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.to_string(),
                j.state.to_string(),
                format!("{}/{}", j.attempts, j.max_attempts),
                j.host.clone().unwrap_or_else(|| "-".into()),
                j.updated_at.clone(),
                j.command_line(),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "TRIES", "HOST", "UPDATED", "COMMAND"].map(String::from);
    let mut width = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in width.iter().zip(row) {
            let _ = write!(out, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", row[5]);
    }
    out
}

/// One job for people: fields, history, log tail.
fn show(job: &Job, history: &[Transition]) -> String {
    let mut out = String::new();
    let field = |out: &mut String, name: &str, value: Option<&str>| {
        if let Some(v) = value {
            let _ = writeln!(out, "{name:<13}{v}");
        }
    };
    field(&mut out, "job", Some(&job.id.to_string()));
    field(&mut out, "command", Some(&format!("dbimage {}", job.command_line())));
    field(&mut out, "state", Some(job.state.as_str()));
    field(&mut out, "attempts", Some(&format!("{} of {}", job.attempts, job.max_attempts)));
    field(&mut out, "submitted", Some(&format!("{} from {}", job.submitted_at, job.submitted_by)));
    field(&mut out, "host", job.host.as_deref());
    field(&mut out, "worker", job.worker.as_deref());
    field(&mut out, "started", job.started_at.as_deref());
    field(&mut out, "heartbeat", job.heartbeat_at.as_deref().filter(|_| job.state == State::Running));
    field(&mut out, "retry at", job.retry_at.as_deref());
    field(&mut out, "finished", job.finished_at.as_deref());
    field(&mut out, "error", job.error.as_deref());
    let _ = writeln!(out, "\nhistory:");
    for t in history {
        let mut line = format!("  {}  {:<9}  {}", t.at, t.state.as_str(), t.host);
        if let Some(a) = t.attempt {
            let _ = write!(line, "  attempt {a}");
        }
        if let Some(w) = &t.worker {
            let _ = write!(line, "  ({w})");
        }
        if let Some(n) = &t.note {
            let _ = write!(line, ": {n}");
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some(tail) = &job.log_tail {
        let _ = writeln!(out, "\nlog tail:");
        for l in tail.lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}
