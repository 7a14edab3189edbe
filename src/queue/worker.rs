//! `dbimage worker`: take jobs from the queue and run each as a child
//! `dbimage` process, up to N at once.
//!
//! Each child runs in its own process group with its output in a log file
//! per attempt, and gets SIGTERM if the worker dies (`PR_SET_PDEATHSIG`),
//! so a killed worker leaves no build behind; its jobs' leases then expire
//! and other workers take them up. On SIGTERM or Ctrl-C the worker takes
//! no new job, stops its running ones (they clean up as after any
//! SIGTERM), and hands them back to the queue without counting the attempt.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::{Delivery, Job, Outcome, Queue, QueueError, Start};
use crate::run::{cancelled, redact};
use crate::settings::QueueSettings;

/// How many log lines a job's record keeps.
const TAIL_LINES: usize = 20;

/// What `dbimage worker` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Jobs run at once.
    pub concurrency: usize,
    /// Where each attempt's log is written (`job-<id>-<attempt>.log`).
    pub log_dir: PathBuf,
    /// Exit once the queue has nothing to hand out and no job is running.
    pub drain: bool,
}

/// A job this worker runs.
struct Running {
    delivery: Delivery,
    job: Job,
    attempt: u32,
    child: Child,
    log: PathBuf,
    started: Instant,
    last_beat: Instant,
    /// Its lease passed to another worker (or the job ended elsewhere).
    lost: bool,
}

/// Runs the worker until SIGTERM/Ctrl-C (or, with `drain`, until idle).
pub fn run(settings: Option<&QueueSettings>, opts: &Options) -> anyhow::Result<()> {
    let mut queue = Queue::connect(settings)?;
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("cannot create the job log directory {}", opts.log_dir.display()))?;
    let name = format!("{}:{}:{:04x}", queue.host(), std::process::id(), uuid::Uuid::new_v4().as_u128() as u16);
    let beat_every = Duration::from_secs(queue.lease) / 3;
    info!("worker {name}: up to {} job(s) at once, lease {} s, logs in {}", opts.concurrency, queue.lease, opts.log_dir.display());
    let mut running: Vec<Running> = Vec::new();
    let mut dead = 0usize;
    while !cancelled() {
        match tick(&mut queue, &name, opts, &mut running, beat_every, &mut dead) {
            Ok(true) => {}
            Ok(false) => break,
            // A signal interrupts a blocking read: not a queue problem.
            Err(_) if cancelled() => break,
            Err(e) => recover(&mut queue, settings, &e),
        }
    }
    if !running.is_empty() {
        info!("stopping {} running job(s) and handing them back", running.len());
        for r in &running {
            terminate(&r.child);
        }
    }
    // Leases are renewed while the jobs clean up. If the queue stays out of
    // reach for a lease, stop trying: the leases expire and other workers
    // take the jobs up, as after a crash.
    let mut failing_since: Option<Instant> = None;
    while !running.is_empty() {
        match reap(&mut queue, &name, &mut running, true, &mut dead)
            .and_then(|()| heartbeat(&mut queue, &name, &mut running, beat_every))
        {
            Ok(()) => failing_since = None,
            Err(e) if failing_since.is_some_and(|t| t.elapsed() >= beat_every * 3) => {
                anyhow::bail!("{e}; {} job(s) not handed back: their leases will expire", running.len());
            }
            Err(e) => {
                failing_since.get_or_insert_with(Instant::now);
                recover(&mut queue, settings, &e);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    queue.leave(&name)?;
    if opts.drain && dead > 0 {
        anyhow::bail!("{dead} job(s) ended in the dead-letter list; `dbimage jobs --state dead` lists them");
    }
    info!("worker {name}: stopped");
    Ok(())
}

/// One round: reap finished jobs, renew leases, take a job if there is
/// room. False when a draining worker has nothing left to do.
fn tick(
    queue: &mut Queue,
    name: &str,
    opts: &Options,
    running: &mut Vec<Running>,
    beat_every: Duration,
    dead: &mut usize,
) -> Result<bool, QueueError> {
    reap(queue, name, running, false, dead)?;
    heartbeat(queue, name, running, beat_every)?;
    queue.promote()?;
    if running.len() >= opts.concurrency {
        std::thread::sleep(Duration::from_millis(50));
        return Ok(true);
    }
    // Short waits while jobs run, so that one ending is noticed soon; a
    // draining worker asks again sooner before deciding it is done.
    let wait = match (running.is_empty(), opts.drain) {
        (false, _) => 100,
        (true, true) => 500,
        (true, false) => 2000,
    };
    let Some(delivery) = queue.take(name, Duration::from_millis(wait))? else {
        // A draining worker also waits for the retries still to come.
        return Ok(!(opts.drain && running.is_empty() && queue.waiting()? == 0));
    };
    match queue.start(name, &delivery)? {
        Start::Run(attempt) => {
            let job = queue.job(delivery.job)?;
            let log = opts.log_dir.join(format!("job-{}-{attempt}.log", job.id));
            match spawn(&job, &log) {
                Ok(child) => {
                    info!("job {} ({}): attempt {attempt} of {} started", job.id, job.command_line(), job.max_attempts);
                    let now = Instant::now();
                    running.push(Running { delivery, job, attempt, child, log, started: now, last_beat: now, lost: false });
                }
                Err(e) => {
                    let error = format!("cannot start dbimage: {e}");
                    warn!("job {}: {error}", job.id);
                    if queue.finish(name, &delivery, Outcome::Fail, &error, "")? == "dead" {
                        *dead += 1;
                    }
                }
            }
        }
        Start::Skip(state) => info!("job {}: a second delivery; it is {state}, not run again", delivery.job),
        Start::Dead(why) => {
            *dead += 1;
            warn!("job {}: dead: {why}", delivery.job);
        }
    }
    Ok(true)
}

/// Records every job whose process ended. `stopping`: the worker stopped
/// them, so a failure is a hand-back, not the job's.
/// Counts the jobs that went to the dead-letter list in `dead`.
fn reap(
    queue: &mut Queue,
    name: &str,
    running: &mut Vec<Running>,
    stopping: bool,
    dead: &mut usize,
) -> Result<(), QueueError> {
    let mut i = 0;
    while i < running.len() {
        let status = match running[i].child.try_wait() {
            Ok(Some(s)) => s,
            Ok(None) => {
                i += 1;
                continue;
            }
            Err(e) => {
                warn!("job {}: cannot wait for its process: {e}", running[i].job.id);
                i += 1;
                continue;
            }
        };
        let r = &running[i];
        let tail = log_tail(&r.log);
        let (outcome, error) = if status.success() {
            (Outcome::Ok, String::new())
        } else if stopping || r.lost {
            (Outcome::HandBack, String::new())
        } else {
            (Outcome::Fail, failure(&r.log, status))
        };
        let state = queue.finish(name, &r.delivery, outcome, &error, &tail)?;
        let secs = r.started.elapsed().as_secs_f64();
        match state.as_str() {
            "succeeded" => info!("job {}: succeeded in {secs:.1} s", r.job.id),
            "already" => info!("job {}: another attempt had already succeeded; this one is not recorded", r.job.id),
            "lost" => info!("job {}: stopped; another worker holds it now", r.job.id),
            "queued" => info!("job {}: handed back to the queue", r.job.id),
            "failed" => warn!("job {}: attempt {} of {} failed: {error}; it will be retried later", r.job.id, r.attempt, r.job.max_attempts),
            _ => {
                *dead += usize::from(state == "dead");
                warn!("job {}: {state} after {} attempts: {error}", r.job.id, r.attempt);
            }
        }
        running.swap_remove(i);
    }
    Ok(())
}

/// Renews the leases that are due; stops a job whose lease was lost.
fn heartbeat(queue: &mut Queue, name: &str, running: &mut [Running], every: Duration) -> Result<(), QueueError> {
    for r in running.iter_mut().filter(|r| !r.lost && r.last_beat.elapsed() >= every) {
        r.last_beat = Instant::now();
        if !queue.heartbeat(name, &r.delivery, &log_tail(&r.log))? {
            warn!("job {}: the lease passed to another worker; stopping this attempt", r.job.id);
            r.lost = true;
            terminate(&r.child);
        }
    }
    Ok(())
}

/// After a failed queue command: wait, then reconnect (jobs keep running;
/// a job that ends meanwhile is recorded on a later round).
fn recover(queue: &mut Queue, settings: Option<&QueueSettings>, e: &QueueError) {
    warn!("{e}; reconnecting in 2 s (running jobs go on)");
    std::thread::sleep(Duration::from_secs(2));
    match Queue::connect(settings) {
        Ok(q) => *queue = q,
        Err(e) => warn!("{e}"),
    }
}

/// Starts `dbimage <kind> <args…>` for a job, its output in `log`.
fn spawn(job: &Job, log: &Path) -> std::io::Result<Child> {
    let out = File::create(log)?;
    let parent = nix::unistd::getpid();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(job.kind.as_str())
        .args(&job.args)
        .env("DBIMAGE_JOB_ID", job.id.to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: only async-signal-safe system calls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own group, so the worker alone decides when it stops; and
            // SIGTERM when the worker dies, even by SIGKILL.
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            if nix::unistd::getppid() != parent {
                nix::sys::signal::raise(Signal::SIGTERM)?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM to a job's process group.
fn terminate(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

/// The last lines of an attempt's log, redacted.
fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    redact(&lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n"))
}

/// Why an attempt failed: the command's `error:` line, else its status.
fn failure(log: &Path, status: ExitStatus) -> String {
    let tail = log_tail(log);
    if let Some(line) = tail.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
        return line.to_string();
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("dbimage exited with status {code}"),
        (None, Some(sig)) => format!("dbimage was killed by signal {sig}"),
        _ => "dbimage failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_its_error_line_or_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("job.log");
        std::fs::write(&log, "converting\nerror: /srv/x.vmdk: not a disk image; check the file\n").unwrap();
        let status = ExitStatus::from_raw(2 << 8);
        assert_eq!(failure(&log, status), "/srv/x.vmdk: not a disk image; check the file");
        std::fs::write(&log, "working\n").unwrap();
        assert_eq!(failure(&log, status), "dbimage exited with status 2");
        assert_eq!(failure(&log, ExitStatus::from_raw(9)), "dbimage was killed by signal 9");
    }

    #[test]
    fn the_log_tail_is_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("job.log");
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log);
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.starts_with("line 31\n") && tail.ends_with("line 50"), "{tail}");
        assert_eq!(log_tail(&dir.path().join("missing")), "");
    }
}
