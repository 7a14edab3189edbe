//! A wall-clock limit for a whole test binary. One hang (a build that never
//! ends, a guest that never answers) would otherwise eat CI's whole time
//! and say nothing; instead the binary fails loudly after
//! `DBIMAGE_TEST_BINARY_TIMEOUT` seconds, naming the tests still running
//! and what each was waiting for, and ends the processes the tests started
//! (by PID, and only those that are still its own children).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Longer than any binary of the suite takes on two cores, well inside
/// CI's 90 minutes.
const DEFAULT_LIMIT_SECS: u64 = 30 * 60;

/// How long a process gets to clean up after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(30);

/// Exit status of a binary that ran out of time (as coreutils `timeout`).
const EXIT_TIMED_OUT: i32 = 124;

static START: Once = Once::new();

/// Set once the limit is reached: from then on the binary must end with
/// [`EXIT_TIMED_OUT`], even when the tests finish because their processes
/// were ended.
static EXPIRED: AtomicBool = AtomicBool::new(false);

/// A test thread's name and the waits it is in, innermost last.
struct Test {
    name: String,
    waits: Vec<(String, Instant)>,
}

static TESTS: Mutex<Vec<(ThreadId, Test)>> = Mutex::new(Vec::new());

/// The calling thread's entry in `tests`.
fn mine<'a>(tests: &'a mut [(ThreadId, Test)], id: ThreadId) -> Option<&'a mut Test> {
    tests.iter_mut().find(|(t, _)| *t == id).map(|(_, test)| test)
}

/// Processes the tests started: PID → (leads its own group, what it is).
static CHILDREN: Mutex<BTreeMap<u32, (bool, String)>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the test from the list when its thread ends (the harness runs
/// each test on a thread of its own).
/// (It keeps the id: `thread::current` is gone while a thread's locals
/// are dropped.)
struct Mark(ThreadId);

impl Drop for Mark {
    fn drop(&mut self) {
        let id = self.0;
        lock(&TESTS).retain(|(t, _)| *t != id);
    }
}

thread_local! {
    static MARK: Mark = Mark(std::thread::current().id());
}

/// Starts the binary's watchdog (once) and counts the calling thread's
/// test as running until the thread ends.
pub fn watch() {
    START.call_once(|| {
        let limit = limit();
        // SAFETY: registers a plain function; it only reads an atomic and sleeps.
        unsafe { nix::libc::atexit(hold_exit_while_expiring) };
        std::thread::Builder::new()
            .name("dbimage-test-watchdog".into())
            .spawn(move || {
                std::thread::sleep(limit);
                expire(limit);
            })
            .expect("start the test watchdog thread");
    });
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("an unnamed thread").to_string();
    let mut tests = lock(&TESTS);
    if mine(&mut tests, thread.id()).is_none() {
        tests.push((thread.id(), Test { name, waits: Vec::new() }));
    }
    drop(tests);
    MARK.with(|_| {});
}

/// Runs when the harness exits: while the watchdog ends the tests'
/// processes, the binary must not exit 0; the watchdog exits instead.
extern "C" fn hold_exit_while_expiring() {
    while EXPIRED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn limit() -> Duration {
    let secs = match std::env::var("DBIMAGE_TEST_BINARY_TIMEOUT") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            panic!("DBIMAGE_TEST_BINARY_TIMEOUT={v:?}: give the limit in whole seconds")
        }),
        Err(_) => DEFAULT_LIMIT_SECS,
    };
    Duration::from_secs(secs)
}

/// While it lives, the calling test is waiting for `what`.
pub struct Waiting(ThreadId);

/// Records that the calling test waits for `what` until the guard drops.
pub fn waiting_for(what: impl Into<String>) -> Waiting {
    watch();
    let id = std::thread::current().id();
    if let Some(t) = mine(&mut lock(&TESTS), id) {
        t.waits.push((what.into(), Instant::now()));
    }
    Waiting(id)
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(t) = mine(&mut lock(&TESTS), self.0) {
            t.waits.pop();
        }
    }
}

/// A process a test started: in a process group of its own, ended with
/// everything in that group if the test panics or the binary runs out of
/// time before it exited.
pub struct Spawned {
    child: Child,
    what: String,
}

/// Starts `c` in a process group of its own and tracks it.
pub fn spawn(mut c: Command) -> Spawned {
    watch();
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let what = format!("{c:?}");
    let child = c.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    lock(&CHILDREN).insert(child.id(), (true, what.clone()));
    Spawned { child, what }
}

/// Tracks a process started elsewhere (a server a fixture ends itself), so
/// that a binary running out of time ends it too.
pub fn track(child: &Child, what: &str) {
    watch();
    lock(&CHILDREN).insert(child.id(), (false, what.to_string()));
}

/// Stops tracking a process (its owner ended it).
pub fn untrack(child: &Child) {
    lock(&CHILDREN).remove(&child.id());
}

impl Spawned {
    /// Waits for the process, the wait recorded for the watchdog.
    pub fn wait(&mut self) -> ExitStatus {
        let _w = waiting_for(format!("{} to exit", self.what));
        let status = self.child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what));
        while EXPIRED.load(Ordering::SeqCst) {
            // Ended by the watchdog: the test must not go on and pass.
            std::thread::park();
        }
        status
    }

    /// Collects its piped stdout and stderr and waits for it.
    pub fn output(&mut self) -> Output {
        let _w = waiting_for(format!("{} to exit", self.what));
        let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(self.child.stdout.take().map(|s| Box::new(s) as _));
        let err = drain(self.child.stderr.take().map(|s| Box::new(s) as _));
        let status = self.wait();
        Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
    }
}

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            eprintln!("--- ending {} (pid {}): its test did not wait for it", self.what, self.child.id());
            end(self.child.id(), true);
            let _ = self.child.wait();
        }
        lock(&CHILDREN).remove(&self.child.id());
    }
}

/// SIGTERM to the process (its group if it leads one), time to clean up,
/// then SIGKILL to it and everything below it.
fn end(pid: u32, group: bool) {
    end_all(&[(pid, group)]);
}

/// [`end`] for several processes at once: one grace period for all.
fn end_all(procs: &[(u32, bool)]) {
    for (pid, group) in procs {
        signal(*pid, *group, Signal::SIGTERM);
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline && procs.iter().any(|(p, _)| alive(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (pid, group) in procs.iter().filter(|(p, _)| alive(*p)) {
        for below in super::sshd::descendants(*pid) {
            signal(below, false, Signal::SIGKILL);
        }
        signal(*pid, *group, Signal::SIGKILL);
    }
}

fn signal(pid: u32, group: bool, s: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = if group { killpg(Pid::from_raw(raw), s) } else { kill(Pid::from_raw(raw), s) };
}

/// Running (not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Still a child of this process: a PID that was reaped and reused by
/// someone else's process is never signalled.
fn ours(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1));
    ppid == Some(&std::process::id().to_string())
}

/// The limit is reached: say what was running and waited for, end the
/// tests' processes, and fail the binary.
fn expire(limit: Duration) -> ! {
    EXPIRED.store(true, Ordering::SeqCst);
    let binary = std::env::args().next().unwrap_or_default();
    let mut report = format!(
        "\n=== TIMEOUT: {binary} ran longer than {} s (DBIMAGE_TEST_BINARY_TIMEOUT)\n",
        limit.as_secs()
    );
    for (_, t) in lock(&TESTS).iter() {
        report.push_str(&format!("  test {} is still running", t.name));
        match t.waits.last() {
            Some((what, since)) => report.push_str(&format!(", waiting for {what} (for {} s)\n", since.elapsed().as_secs())),
            None => report.push_str(" (not in a recorded wait)\n"),
        }
    }
    let children: Vec<(u32, bool, String)> = lock(&CHILDREN)
        .iter()
        .filter(|(p, _)| ours(**p) && alive(**p))
        .map(|(p, (g, w))| (*p, *g, w.clone()))
        .collect();
    for (pid, _, what) in &children {
        report.push_str(&format!("  ending pid {pid}: {what}\n"));
    }
    say(&report);
    end_all(&children.iter().map(|(p, g, _)| (*p, *g)).collect::<Vec<_>>());
    say(&format!("=== TIMEOUT: {binary} failed\n"));
    // SAFETY: ends the process at once; no exit handler runs (the one of
    // this module would wait forever, and the main thread may be exiting).
    unsafe { nix::libc::_exit(EXIT_TIMED_OUT) }
}

/// To stderr and stdout: the harness captures a test's output, not this
/// thread's, and either may be what the log keeps.
fn say(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
    let _ = std::io::stdout().write_all(text.as_bytes());
    let _ = std::io::stdout().flush();
}

/// Runs a command for a test with its output captured, like
/// `Command::output`, tracked so the watchdog can name and end it.
pub fn output(mut c: Command) -> Output {
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn(c).output()
}
