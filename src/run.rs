//! The one way dbimage runs other programs.
//!
//! Every external command goes through [`Cmd::run`] (or [`Cmd::output`]):
//! the command line is logged, its output is streamed line by line into the
//! log, registered secrets are redacted from both, a failure becomes a
//! [`RunError`] naming the command and its last output lines, and a pending
//! Ctrl-C or SIGTERM ends the child (its whole process group) promptly.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How many trailing output lines an error keeps.
const TAIL_LINES: usize = 15;

/// Set by the SIGINT/SIGTERM handler; checked by the runner and the pipeline.
static CANCELLED: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();

/// Errors from running an external command.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started at all.
    #[error("cannot run `{cmd}`: {source} (is it installed and on PATH?)")]
    Spawn {
        /// The redacted command line.
        cmd: String,
        /// Why the spawn failed.
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}){}", fmt_tail(tail))]
    Failed {
        /// The redacted command line.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its last output lines, redacted.
        tail: Vec<String>,
    },
    /// Ctrl-C or SIGTERM arrived; the program was stopped.
    #[error("interrupted while running `{cmd}`")]
    Interrupted {
        /// The redacted command line.
        cmd: String,
    },
    /// The program ran longer than its [`Limits::wall`] and was killed.
    #[error("`{cmd}` took longer than {} s and was stopped", after.as_secs())]
    TimedOut {
        /// The redacted command line.
        cmd: String,
        /// The wall-clock bound it exceeded.
        after: Duration,
    },
    /// Output was not UTF-8 or could not be read.
    #[error("reading output of `{cmd}`: {source}")]
    Io {
        /// The redacted command line.
        cmd: String,
        /// The read error.
        source: std::io::Error,
    },
}

fn fmt_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output:\n    {}", tail.join("\n    "))
    }
}

/// Installs the SIGINT/SIGTERM handlers that turn a signal into cancellation.
///
/// A second signal of the same kind is not special: teardown always runs.
pub fn install_signal_handlers() -> std::io::Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&CANCELLED))?;
    }
    Ok(())
}

/// True once Ctrl-C or SIGTERM has arrived.
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Returns an error if the user asked us to stop; call between steps.
pub fn check_cancelled() -> Result<(), Interrupted> {
    if cancelled() { Err(Interrupted) } else { Ok(()) }
}

/// The user pressed Ctrl-C or sent SIGTERM.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by signal; cleaning up")]
pub struct Interrupted;

/// Registers a value that must never appear in logs or error messages.
pub fn add_secret(secret: impl Into<String>) {
    let secret = secret.into();
    if secret.len() < 4 {
        return; // redacting tiny strings would mangle every line
    }
    let lock = SECRETS.get_or_init(|| RwLock::new(Vec::new()));
    if let Ok(mut v) = lock.write() {
        v.push(secret);
    }
}

/// Replaces every registered secret in `text` with `***`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Some(lock) = SECRETS.get()
        && let Ok(v) = lock.read()
    {
        for s in v.iter() {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Bounds for a program that reads untrusted input (a crafted image can
/// make qemu-img allocate or loop without end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space, in bytes (`RLIMIT_AS`).
    pub memory: u64,
    /// Processor time (`RLIMIT_CPU`).
    pub cpu: Duration,
    /// Wall-clock time, after which its process group is killed.
    pub wall: Duration,
}

/// A command to run, built fluently.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    stdin_null: bool,
    limits: Option<Limits>,
}

impl Cmd {
    /// Starts a command for `program`.
    pub fn new(program: impl Into<OsString>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            stdin_null: true,
            limits: None,
        }
    }

    /// Runs the program as the first process of a PID namespace of its
    /// own (`unshare --pid --fork --kill-child`): when it ends, or dbimage
    /// dies (even by SIGKILL), the kernel ends everything it started, so no
    /// orphaned apt, dpkg or hook outlives the build.
    pub fn contained(mut self) -> Cmd {
        let inner = std::mem::replace(&mut self.program, OsString::from("unshare"));
        let flags = ["--pid", "--fork", "--kill-child"].map(OsString::from);
        self.args = flags.into_iter().chain(std::iter::once(inner)).chain(std::mem::take(&mut self.args)).collect();
        self
    }

    /// Bounds the program's memory, processor and wall-clock time.
    pub fn limits(mut self, limits: Limits) -> Cmd {
        self.limits = Some(limits);
        self
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets several environment variables for the child.
    pub fn envs<I, K, V>(mut self, vars: I) -> Cmd
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Starts the child with an empty environment (plus what `env` adds).
    pub fn env_clear(mut self) -> Cmd {
        self.env_clear = true;
        self
    }

    /// The command line as logged: redacted, arguments quoted when needed.
    pub fn display(&self) -> String {
        let mut parts = vec![self.program.to_string_lossy().into_owned()];
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                parts.push(format!("'{}'", a.replace('\'', r"'\''")));
            } else {
                parts.push(a.into_owned());
            }
        }
        redact(&parts.join(" "))
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.stdin_null {
            c.stdin(Stdio::null());
        }
        // Own process group: we decide when the child stops, and can stop
        // everything it started with one killpg.
        c.process_group(0);
        let limits = self.limits;
        // SAFETY: between fork and exec only async-signal-safe calls
        // (prctl, setrlimit) run; nothing allocates.
        unsafe {
            c.pre_exec(move || {
                // Dies with dbimage, even on SIGKILL: no orphaned apt or qemu-img.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if let Some(l) = limits {
                    use nix::sys::resource::{Resource, setrlimit};
                    setrlimit(Resource::RLIMIT_AS, l.memory, l.memory)?;
                    setrlimit(Resource::RLIMIT_CPU, l.cpu.as_secs(), l.cpu.as_secs())?;
                }
                Ok(())
            });
        }
        c
    }

    /// Runs the command to completion, streaming stdout and stderr to the log.
    pub fn run(&self) -> Result<(), RunError> {
        self.execute(false).map(|_| ())
    }

    /// Runs the command and returns its stdout (stderr goes to the log).
    pub fn output(&self) -> Result<String, RunError> {
        self.execute(true)
    }

    fn execute(&self, capture: bool) -> Result<String, RunError> {
        let shown = self.display();
        if cancelled() {
            return Err(RunError::Interrupted { cmd: shown });
        }
        tracing::debug!(target: "cmd", "$ {shown}");
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn { cmd: shown.clone(), source })?;

        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let err_thread = child.stderr.take().map(|s| stream_lines(s, Arc::clone(&tail)));
        let mut captured = String::new();
        let out_thread = match child.stdout.take() {
            Some(mut s) if capture => {
                // Small outputs only (package lists, probes): read them whole.
                let h = thread::spawn(move || {
                    let mut buf = String::new();
                    s.read_to_string(&mut buf).map(|_| buf)
                });
                Some(Err(h))
            }
            Some(s) => Some(Ok(stream_lines(s, Arc::clone(&tail)))),
            None => None,
        };

        let wall = self.limits.map(|l| l.wall);
        let status = wait_cancellable(&mut child, wall);
        if let Some(h) = err_thread {
            let _ = h.join();
        }
        match out_thread {
            Some(Ok(h)) => {
                let _ = h.join();
            }
            Some(Err(h)) => match h.join() {
                Ok(Ok(s)) => captured = s,
                Ok(Err(source)) => return Err(RunError::Io { cmd: shown, source }),
                Err(_) => {}
            },
            None => {}
        }
        let status = match status {
            Ended::Exited(s) => s,
            Ended::Stopped => return Err(RunError::Interrupted { cmd: shown }),
            Ended::TimedOut(after) => return Err(RunError::TimedOut { cmd: shown, after }),
        };
        if status.success() {
            Ok(captured)
        } else {
            let mut tail: Vec<String> = tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
            // Captured output is not in the tail; a failure shows its end too.
            let out: Vec<String> = captured.lines().rev().take(TAIL_LINES).map(redact).collect();
            tail.splice(0..0, out.into_iter().rev());
            let skip = tail.len().saturating_sub(TAIL_LINES);
            Err(RunError::Failed { cmd: shown, status, tail: tail.split_off(skip) })
        }
    }
}

/// Copies a child's output into the log, keeping the last lines for errors.
fn stream_lines<R: Read + Send + 'static>(
    reader: R,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = redact(String::from_utf8_lossy(&raw).trim_end());
            tracing::debug!(target: "cmd", "  {line}");
            if let Ok(mut t) = tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    })
}

/// How a child ended.
enum Ended {
    Exited(ExitStatus),
    /// Cancelled (or it could not be waited for).
    Stopped,
    TimedOut(Duration),
}

/// Waits for the child; on cancellation stops its process group (TERM, then
/// KILL after a grace period); past `wall` kills it at once.
fn wait_cancellable(child: &mut Child, wall: Option<Duration>) -> Ended {
    let pgid = Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let mut term_sent: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return if term_sent.is_some() { Ended::Stopped } else { Ended::Exited(status) };
            }
            Ok(None) => {}
            Err(_) => return Ended::Stopped,
        }
        if let Some(wall) = wall
            && started.elapsed() > wall
        {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            return Ended::TimedOut(wall);
        }
        if cancelled() {
            match term_sent {
                None => {
                    let _ = killpg(pgid, Signal::SIGTERM);
                    term_sent = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(5) => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                Some(_) => {}
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_tail() {
        let err = Cmd::new("sh")
            .args(["-c", "echo first; echo second >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`sh -c 'echo first; echo second >&2; exit 3'` failed"), "{msg}");
        assert!(msg.contains("first") && msg.contains("second"), "{msg}");
    }

    /// Processes whose command line is exactly `argv` (NUL-separated).
    fn running(argv: &[u8]) -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == argv))
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    }

    #[test]
    fn a_contained_program_takes_its_descendants_along() {
        // The shell leaves a sleeping grandchild behind and exits; the
        // duration marks it as this test's.
        let leave = |secs: &str| format!("sleep {secs} >/dev/null 2>&1 & exit 0");
        Cmd::new("sh").args(["-c", &leave("297.25")]).contained().run().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(running(b"sleep\0297.25\0").is_empty(), "the grandchild outlived its namespace");
        // Without it, the grandchild stays (which is what the test must see fail).
        Cmd::new("sh").args(["-c", &leave("297.5")]).run().unwrap();
        let left = running(b"sleep\0297.5\0");
        assert_eq!(left.len(), 1, "an uncontained grandchild is left");
        nix::sys::signal::kill(Pid::from_raw(left[0]), Signal::SIGKILL).unwrap();
        assert_eq!(Cmd::new("true").contained().display(), "unshare --pid --fork --kill-child true");
    }

    #[test]
    fn a_failure_shows_captured_output_too() {
        let err = Cmd::new("sh").args(["-c", "echo on-stdout; echo on-stderr >&2; exit 3"]).output().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("on-stdout") && msg.contains("on-stderr"), "{msg}");
    }

    #[test]
    fn output_captures_stdout() {
        let out = Cmd::new("sh").args(["-c", "echo hi; echo noise >&2"]).output().unwrap();
        assert_eq!(out, "hi\n");
    }

    #[test]
    fn limits_bound_time_and_memory() {
        let limits = Limits { memory: 256 << 20, cpu: Duration::from_secs(10), wall: Duration::from_secs(1) };
        let err = Cmd::new("sleep").arg("30").limits(limits).run().unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("took longer than 1 s"), "{err}");
        // 512 MiB cannot be allocated under a 256 MiB address space.
        let big = Limits { wall: Duration::from_secs(30), ..limits };
        let err = Cmd::new("python3").args(["-c", "b = bytearray(512 << 20)"]).limits(big).run().unwrap_err();
        assert!(err.to_string().contains("MemoryError"), "{err}");
        assert_eq!(Cmd::new("true").limits(big).output().unwrap(), "");
    }

    #[test]
    fn missing_program_says_so() {
        let err = Cmd::new("/nonexistent/dbimage-tool").run().unwrap_err();
        assert!(err.to_string().contains("is it installed"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_from_command_and_output() {
        add_secret("hunter2-very-secret");
        let err = Cmd::new("sh")
            .args(["-c", "echo token=hunter2-very-secret; exit 1"])
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("hunter2-very-secret"), "{msg}");
        assert!(msg.contains("token=***"), "{msg}");
    }
}
