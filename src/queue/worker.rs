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
    /// When its lease was last renewed (or the job started).
    renewed: Instant,
    /// When its lease is next due for renewal.
    next_beat: Instant,
    /// Its lease passed to another worker (or the job ended elsewhere), or
    /// could not be renewed: the worker stopped it.
    lost: bool,
}

/// A worker's state between rounds.
struct Worker<'a> {
    queue: Queue,
    settings: Option<&'a QueueSettings>,
    opts: &'a Options,
    name: String,
    lease: Duration,
    running: Vec<Running>,
    /// Jobs of this worker that ended in the dead-letter list.
    dead: usize,
    /// Why the worker must stop (a job could not be started).
    fatal: Option<String>,
}

/// Runs the worker until SIGTERM/Ctrl-C (or, with `drain`, until idle).
pub fn run(settings: Option<&QueueSettings>, opts: &Options) -> anyhow::Result<()> {
    let mut queue = Queue::connect(settings)?;
    queue.join()?;
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("cannot create the job log directory {}", opts.log_dir.display()))?;
    let name = format!("{}:{}:{:04x}", queue.host(), std::process::id(), uuid::Uuid::new_v4().as_u128() as u16);
    let lease = Duration::from_secs(queue.lease);
    info!("worker {name}: up to {} job(s) at once, lease {} s, logs in {}", opts.concurrency, queue.lease, opts.log_dir.display());
    let mut w = Worker { queue, settings, opts, name, lease, running: Vec::new(), dead: 0, fatal: None };
    while !cancelled() && w.fatal.is_none() {
        w.fence();
        match w.tick() {
            Ok(true) => {}
            Ok(false) => break,
            // A signal can end a blocking read early: not a queue problem.
            Err(_) if cancelled() => break,
            Err(e) => w.recover(&e)?,
        }
    }
    w.shut_down()?;
    if let Some(why) = w.fatal {
        anyhow::bail!("{why}; the worker stopped (its jobs were handed back)");
    }
    if opts.drain && w.dead > 0 {
        anyhow::bail!("{} job(s) ended in the dead-letter list; `dbimage jobs --state dead` lists them", w.dead);
    }
    info!("worker {}: stopped", w.name);
    Ok(())
}

impl Worker<'_> {
    /// One round: reap finished jobs, renew leases, requeue due retries,
    /// take a job if there is room. False when a draining worker has
    /// nothing left to do.
    fn tick(&mut self) -> Result<bool, QueueError> {
        self.reap(false)?;
        self.heartbeat(false)?;
        self.queue.promote()?;
        if self.running.len() >= self.opts.concurrency {
            std::thread::sleep(Duration::from_millis(50));
            return Ok(true);
        }
        // Short waits while jobs run, so that one ending is noticed soon; a
        // draining worker asks again sooner before deciding it is done.
        let wait = match (self.running.is_empty(), self.opts.drain) {
            (false, _) => 100,
            (true, true) => 500,
            (true, false) => 2000,
        };
        let Some(delivery) = self.queue.take(&self.name, Duration::from_millis(wait))? else {
            // A draining worker also waits for the retries still to come.
            return Ok(!(self.opts.drain && self.running.is_empty() && self.queue.waiting()? == 0));
        };
        match self.queue.start(&self.name, &delivery)? {
            Start::Run(attempt) => self.launch(delivery, attempt)?,
            Start::Skip(state) if state == "missing" => {
                warn!("job {}: its record is gone from Redis (evicted or deleted?); the delivery is dropped", delivery.job);
            }
            Start::Skip(state) if state == "mine" => {}
            Start::Skip(state) => info!("job {}: a second delivery; it is {state}, not run again", delivery.job),
            Start::Dead(why) => {
                self.dead += 1;
                warn!("job {}: dead: {why}", delivery.job);
            }
        }
        Ok(true)
    }

    /// Starts a delivered job's process. If it cannot start (the binary
    /// or the log directory gone), the job is handed back, not failed, and
    /// the worker stops: that is this server's fault, not the job's.
    fn launch(&mut self, delivery: Delivery, attempt: u32) -> Result<(), QueueError> {
        let job = self.queue.job(delivery.job)?;
        let log = self.opts.log_dir.join(format!("job-{}-{attempt}.log", job.id));
        match spawn(&job, &log) {
            Ok(child) => {
                info!("job {} ({}): attempt {attempt} of {} started", job.id, job.command_line(), job.max_attempts);
                let now = Instant::now();
                let next_beat = now + self.lease / 3;
                self.running.push(Running { delivery, job, attempt, child, log, started: now, renewed: now, next_beat, lost: false });
            }
            Err(e) => {
                let why = format!("cannot start dbimage for job {}: {e}", job.id);
                self.queue.finish(&self.name, &delivery, Outcome::HandBack, "", "")?;
                self.fatal = Some(why);
            }
        }
        Ok(())
    }

    /// Records every job whose process ended. `stopping`: the worker stopped
    /// them, so a failure is a hand-back, not the job's.
    fn reap(&mut self, stopping: bool) -> Result<(), QueueError> {
        let mut i = 0;
        while i < self.running.len() {
            let status = match self.running[i].child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Err(e) => {
                    warn!("job {}: cannot wait for its process: {e}", self.running[i].job.id);
                    i += 1;
                    continue;
                }
            };
            let r = &self.running[i];
            let tail = log_tail(&r.log);
            let (outcome, error) = if status.success() {
                (Outcome::Ok, String::new())
            } else if stopping || r.lost {
                (Outcome::HandBack, String::new())
            } else {
                (Outcome::Fail, failure(&r.log, status))
            };
            let state = self.queue.finish(&self.name, &r.delivery, outcome, &error, &tail)?;
            let (id, secs) = (r.job.id, r.started.elapsed().as_secs_f64());
            match state.as_str() {
                "succeeded" => info!("job {id}: succeeded in {secs:.1} s"),
                "already" => info!("job {id}: another attempt had already succeeded; this one is not recorded"),
                "lost" => info!("job {id}: stopped; another worker holds it now"),
                "queued" => info!("job {id}: handed back to the queue"),
                "failed" => {
                    warn!("job {id}: attempt {} of {} failed: {error}; it will be retried later", r.attempt, r.job.max_attempts);
                }
                "missing" => warn!("job {id}: its record is gone from Redis (evicted or deleted?); nothing recorded"),
                _ => {
                    self.dead += usize::from(state == "dead");
                    warn!("job {id}: {state} after {} attempts: {error}", r.attempt);
                }
            }
            self.running.swap_remove(i);
        }
        Ok(())
    }

    /// Renews the leases that are due (all of them with `all`); stops a
    /// job whose lease was lost. A lease is due well before it expires, and
    /// stays due until a renewal succeeds.
    fn heartbeat(&mut self, all: bool) -> Result<(), QueueError> {
        let now = Instant::now();
        for r in self.running.iter_mut().filter(|r| !r.lost && (all || r.next_beat <= now)) {
            if self.queue.heartbeat(&self.name, &r.delivery, &log_tail(&r.log))? {
                r.renewed = Instant::now();
                r.next_beat = r.renewed + self.lease / 3;
            } else {
                warn!("job {}: the lease passed to another worker; stopping this attempt", r.job.id);
                r.lost = true;
                terminate(&r.child);
            }
        }
        Ok(())
    }

    /// Stops the jobs whose lease could not be renewed for two thirds of a
    /// lease (the queue out of reach), before it expires and another worker
    /// may take them up.
    fn fence(&mut self) {
        let limit = self.lease * 2 / 3;
        for r in self.running.iter_mut().filter(|r| !r.lost && r.renewed.elapsed() >= limit) {
            warn!("job {}: its lease could not be renewed for {} s; stopping this attempt", r.job.id, limit.as_secs());
            r.lost = true;
            terminate(&r.child);
        }
    }

    /// Waits without letting a lease run out unnoticed: a flat sleep here
    /// delayed stopping a job past two thirds of its lease, close to the
    /// moment another worker may take it up.
    fn pause_fencing(&mut self, how_long: Duration) {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            self.fence();
            std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
        }
    }

    /// After a failed queue command: wait, reconnect, and renew every lease
    /// at once (jobs keep running meanwhile). An error that waiting cannot
    /// cure (permissions, a key of another type) ends the worker.
    fn recover(&mut self, e: &QueueError) -> anyhow::Result<()> {
        if !e.is_transient() {
            return Err(anyhow::anyhow!("{e}"));
        }
        warn!("{e}; reconnecting in 2 s (running jobs go on)");
        self.pause_fencing(Duration::from_secs(2));
        // A server that came back empty needs the consumer group again.
        match Queue::connect(self.settings).and_then(|mut q| q.join().map(|()| q)) {
            Ok(q) => {
                self.queue = q;
                if let Err(e) = self.heartbeat(true) {
                    warn!("{e}");
                }
            }
            Err(e) => warn!("{e}"),
        }
        Ok(())
    }

    /// Stops every running job and hands it back (unless it finished
    /// anyway). Leases are renewed while the jobs clean up; if the queue
    /// stays out of reach for a lease, the worker gives up: the leases
    /// expire and other workers take the jobs up, as after a crash.
    fn shut_down(&mut self) -> anyhow::Result<()> {
        if !self.running.is_empty() {
            info!("stopping {} running job(s) and handing them back", self.running.len());
            for r in &self.running {
                terminate(&r.child);
            }
        }
        let mut failing_since: Option<Instant> = None;
        while !self.running.is_empty() {
            match self.reap(true).and_then(|()| self.heartbeat(false)) {
                Ok(()) => failing_since = None,
                Err(e) if failing_since.is_some_and(|t| t.elapsed() >= self.lease) => {
                    anyhow::bail!("{e}; {} job(s) not handed back: their leases will expire", self.running.len());
                }
                Err(e) => {
                    failing_since.get_or_insert_with(Instant::now);
                    self.recover(&e)?;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.queue.leave(&self.name)?;
        Ok(())
    }
}

/// Starts `dbimage <kind> <args…>` for a job, its output appended to `log`
/// (an attempt handed back and run again keeps its first part).
fn spawn(job: &Job, log: &Path) -> std::io::Result<Child> {
    let out = crate::logging::private_file(log, true)?;
    let parent = nix::unistd::getpid();
    // This very binary, even if a package upgrade replaced the file.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(job.kind.as_str())
        .args(&job.args)
        .env("DBIMAGE_JOB_ID", job.id.to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // The queue's credentials are the worker's, not the job's.
    for var in ["DBIMAGE_REDIS_URL", "DBIMAGE_REDIS_USER", "DBIMAGE_REDIS_PASSWORD", "DBIMAGE_REDIS_PASSWORD_FILE"] {
        cmd.env_remove(var);
    }
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
