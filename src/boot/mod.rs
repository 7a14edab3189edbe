//! Booting a built image under QEMU and waiting until its database answers
//! a real client from the host.
//!
//! [`boot_and_probe`] is the whole job: a cloud-init seed ([`seed`]) opens
//! the database to the forwarded port with a fresh password, QEMU
//! ([`qemu`]) boots the image as a throw-away snapshot, and the datastore's
//! probe is retried until it succeeds, the guest dies, or time runs out.
//! Everything it creates lives in one temporary directory and ends with it.

pub mod qemu;
pub mod seed;

use crate::host_tools;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::arch::Arch;
use crate::catalog::Resolved;
use crate::run::{Cmd, RunError};

use self::qemu::{Machine, Qemu, QemuConfig};
use self::seed::{SETUP_DONE_MARKER, SETUP_FAILED_MARKER, SeedError};

/// The only address the guest's database is ever exposed on.
pub const HOST: &str = "127.0.0.1";

/// Time between probe attempts.
const PROBE_INTERVAL: Duration = Duration::from_secs(3);

/// Time between "still waiting" lines.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Longest a single probe may take: QEMU's port forward accepts the TCP
/// connection before the guest does, so a client can wait forever for a
/// greeting that never comes.
const PROBE_LIMIT_SECS: u64 = 20;

/// How often the loop looks at QEMU, the console and the clock.
const TICK: Duration = Duration::from_millis(200);

/// How many console lines an error shows.
const CONSOLE_TAIL: usize = 20;

/// How many host ports are tried when QEMU finds each taken.
pub const PORT_TRIES: u32 = 5;

/// How long QEMU may take to listen on the forwarded port: it sets up the
/// forward before the guest runs, so this is QEMU's start-up alone.
const LISTEN_LIMIT: Duration = Duration::from_secs(60);

/// How long an amd64 guest gets to answer by default; other machines get
/// this times their [`Machine::slowdown`].
pub const AMD64_TIMEOUT: Duration = Duration::from_secs(600);

/// What QEMU says when the forwarded port cannot be bound.
const HOSTFWD_FAILED: &str = "Could not set up host forwarding rule";

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Give up when the database has not answered after this long.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of virtual CPUs.
    pub cpus: u32,
}

impl BootOptions {
    /// The defaults for an image of `arch`: an emulated POWER machine needs
    /// more time and memory than an amd64 one.
    pub fn for_arch(arch: Arch) -> BootOptions {
        let machine = Machine::of(arch);
        BootOptions {
            timeout: AMD64_TIMEOUT * machine.slowdown,
            memory_mib: machine.memory_mib,
            cpus: 2,
        }
    }
}

impl Default for BootOptions {
    fn default() -> BootOptions {
        BootOptions::for_arch(Arch::Amd64)
    }
}

/// What answered, and when.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// The database that answered.
    pub db: String,
    /// The host port (on [`HOST`]) that was forwarded to the database.
    pub port: u16,
    /// From starting QEMU to the first successful probe.
    pub elapsed: Duration,
    /// From starting QEMU to the guest reporting its setup done, if seen.
    pub setup_after: Option<Duration>,
    /// The successful probe's standard output, redacted.
    pub probe_stdout: String,
}

/// Why a boot test did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image file does not exist.
    #[error("image {} not found", path.display())]
    ImageMissing {
        /// The path given.
        path: PathBuf,
    },
    /// The datastore's probe names no program.
    #[error("the catalog gives {db} an empty test probe")]
    EmptyProbe {
        /// The database.
        db: String,
    },
    /// The probe's client program is not installed on this host.
    #[error("the {db} probe needs `{program}` on this host, and it is not on PATH; install {package}")]
    ProbeMissing {
        /// The database.
        db: String,
        /// The client program.
        program: String,
        /// The package that provides it.
        package: &'static str,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The cloud-init seed could not be built.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// QEMU could not be started.
    #[error("cannot start {program}: {source} (is {package} installed?)")]
    QemuSpawn {
        /// The emulator.
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// Why.
        source: io::Error,
    },
    /// QEMU stopped before the database answered.
    #[error(
        "QEMU exited early ({status}){}{}",
        fmt_lines("QEMU said", qemu_output),
        // Often QEMU failed before the guest ran; then no console is no news.
        fmt_lines("last console lines", console)
    )]
    QemuExited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of QEMU's own output, redacted.
        qemu_output: Vec<String>,
        /// The end of the serial console, redacted.
        console: Vec<String>,
    },
    /// Every host port tried was taken before QEMU could bind it.
    #[error(
        "QEMU could not bind a host port on {HOST} in {tries} tries (each was taken between finding it free and QEMU binding it){}",
        fmt_lines("QEMU said", qemu_output)
    )]
    NoPort {
        /// How many ports were tried.
        tries: u32,
        /// The end of QEMU's output on the last try, redacted.
        qemu_output: Vec<String>,
    },
    /// QEMU runs but never listened on the forwarded port.
    #[error("QEMU did not listen on {HOST}:{port} within {secs} s{}", fmt_lines("QEMU said", qemu_output))]
    NotListening {
        /// The host port.
        port: u16,
        /// How long it was given.
        secs: u64,
        /// The end of QEMU's output, redacted.
        qemu_output: Vec<String>,
    },
    /// The guest reported that the setup script failed.
    #[error("the guest setup for {db} failed ({detail}){}", fmt_console(console))]
    SetupFailed {
        /// The database.
        db: String,
        /// The marker line's detail, e.g. `exit 1`.
        detail: String,
        /// The end of the serial console, redacted.
        console: Vec<String>,
    },
    /// The database did not answer in time.
    #[error(
        "no answer from {db} on {HOST}:{port} after {secs} s{}{}",
        last_probe.as_ref().map(|p| format!("; last probe: {p}")).unwrap_or_default(),
        fmt_console(console)
    )]
    Timeout {
        /// The database.
        db: String,
        /// The forwarded host port.
        port: u16,
        /// The timeout in seconds.
        secs: u64,
        /// The last probe failure, redacted.
        last_probe: Option<String>,
        /// The end of the serial console, redacted.
        console: Vec<String>,
    },
    /// Ctrl-C or SIGTERM arrived; QEMU was stopped.
    #[error("interrupted by signal; QEMU stopped")]
    Interrupted,
}

fn fmt_lines(title: &str, lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; {title}:\n    {}", lines.join("\n    "))
    }
}

fn fmt_console(lines: &[String]) -> String {
    if lines.is_empty() {
        // Usually the kernel command line lacks console=ttyS0 (or hvc0).
        "; the guest's console stayed empty".to_string()
    } else {
        fmt_lines("last console lines", lines)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BootError {
    let what = what.into();
    move |source| BootError::Io { what, source }
}

/// Replaces `{name}` for every `(name, value)` in `vars`, in one pass so a
/// value is never itself expanded; unknown `{...}` stay as written, because
/// shell scripts have braces of their own.
pub fn substitute(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v, close))
        });
        match hit {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A free TCP port on [`HOST`], found by letting the kernel pick one.
///
/// The port is released before QEMU binds it, so something else may grab
/// it in between; [`start_qemu`] then tries another.
pub fn pick_host_port() -> io::Result<u16> {
    let listener = TcpListener::bind((HOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Starts QEMU with a host port from `pick`, and another one when QEMU
/// could not bind it (taken since it was found free), at most
/// [`PORT_TRIES`] times. Returns once QEMU itself listens on the port
/// (`config.host_port`).
pub fn start_qemu(
    config: &mut QemuConfig,
    mut pick: impl FnMut() -> io::Result<u16>,
) -> Result<Qemu, BootError> {
    let mut said = Vec::new();
    let Machine { program, package, .. } = config.machine;
    for _ in 0..PORT_TRIES {
        config.host_port = pick().map_err(io_err("finding a free port on 127.0.0.1"))?;
        let mut qemu = Qemu::spawn(program, config).map_err(|source| BootError::QemuSpawn { program, package, source })?;
        match qemu.wait_listening(config.host_port, LISTEN_LIMIT) {
            Ok(()) => return Ok(qemu),
            Err(status) => {
                said = tail_lines(&config.qemu_log, CONSOLE_TAIL);
                if !said.iter().any(|l| l.contains(HOSTFWD_FAILED)) {
                    return Err(early_exit(status, config, said));
                }
                tracing::warn!("QEMU could not bind {HOST}:{} (taken meanwhile); trying another port", config.host_port);
            }
        }
    }
    Err(BootError::NoPort { tries: PORT_TRIES, qemu_output: said })
}

/// [`BootError::QemuExited`], or a timeout when QEMU still runs.
fn early_exit(status: Option<std::process::ExitStatus>, config: &QemuConfig, said: Vec<String>) -> BootError {
    match status {
        Some(status) => BootError::QemuExited { status, qemu_output: said, console: tail_lines(&config.console_log, CONSOLE_TAIL) },
        None => BootError::NotListening { port: config.host_port, secs: LISTEN_LIMIT.as_secs(), qemu_output: said },
    }
}

/// A fresh random password, registered for redaction before it is returned.
fn fresh_password() -> String {
    let password = uuid::Uuid::new_v4().simple().to_string();
    crate::run::add_secret(password.clone());
    password
}

/// The guest setup script for `ds`, placeholders filled in.
fn guest_setup_script(ds: &Resolved, password: &str) -> String {
    let port = ds.port.to_string();
    substitute(
        &ds.test.guest_setup,
        &[("password", password), ("port", &port)],
    )
}

/// The probe command for `ds` against `HOST:port`, bounded in time by
/// coreutils `timeout`.
fn probe_cmd(ds: &Resolved, port: u16, password: &str, limit_secs: u64) -> Cmd {
    let port = port.to_string();
    let vars = [
        ("host", HOST),
        ("port", port.as_str()),
        ("password", password),
    ];
    let argv: Vec<String> = ds.test.probe.iter().map(|a| substitute(a, &vars)).collect();
    let env = ds
        .test
        .env
        .iter()
        .map(|(k, v)| (k.clone(), substitute(v, &vars)));
    Cmd::new("timeout")
        .args(["--kill-after=5".to_string(), limit_secs.to_string()])
        .args(argv)
        .envs(env)
}


/// Boots `image` (an image of `ds`) and waits until `ds`'s probe succeeds.
///
/// The image is opened read-only (`-snapshot`); QEMU and the temporary
/// directory are gone when this returns, whatever the outcome.
pub fn boot_and_probe(
    image: &Path,
    ds: &Resolved,
    opts: &BootOptions,
) -> Result<BootReport, BootError> {
    if !image.is_file() {
        return Err(BootError::ImageMissing {
            path: image.to_path_buf(),
        });
    }
    let Some(program) = ds.test.probe.first() else {
        return Err(BootError::EmptyProbe { db: ds.db.clone() });
    };
    if !host_tools::on_path(program) {
        return Err(BootError::ProbeMissing {
            db: ds.db.clone(),
            program: program.clone(),
            package: host_tools::package_of(program).unwrap_or("the package that provides it"),
        });
    }
    // QEMU resolves relative paths against its own cwd, which is ours, but
    // the log line is clearer with the full path.
    let image = std::path::absolute(image).map_err(io_err("resolving the image path"))?;

    let password = fresh_password();
    let dir = tempfile::Builder::new()
        .prefix("dbimage-test-")
        .tempdir()
        .map_err(io_err("creating a temporary directory"))?;
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let machine = Machine::of(ds.arch);
    let seed = seed::make_seed(
        dir.path(),
        &seed::user_data(&guest_setup_script(ds, &password), machine.console_tty),
        &seed::meta_data(&format!("dbimage-test-{}", &instance[..12])),
    )?;

    let mut config = QemuConfig {
        machine,
        image: image.clone(),
        seed,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        host_port: 0,
        guest_port: ds.port,
        console_log: dir.path().join("console.log"),
        qemu_log: dir.path().join("qemu.log"),
    };
    tracing::info!(
        "booting {} ({}) under {} (software emulation, usually a few minutes; at most {} s); {} port {}",
        image.display(),
        ds.arch,
        machine.program,
        opts.timeout.as_secs(),
        ds.db,
        ds.port
    );
    if crate::run::cancelled() {
        return Err(BootError::Interrupted);
    }
    let mut qemu = start_qemu(&mut config, pick_host_port)?;
    tracing::info!("{} port {} → {HOST}:{}", ds.db, ds.port, config.host_port);
    let result = wait_for_answer(&mut qemu, &config, ds, &password, opts.timeout);
    qemu.stop();
    drop(dir);
    result
}

fn wait_for_answer(
    qemu: &mut Qemu,
    config: &QemuConfig,
    ds: &Resolved,
    password: &str,
    timeout: Duration,
) -> Result<BootReport, BootError> {
    let start = Instant::now();
    let mut console = ConsoleWatch::new(config.console_log.clone());
    let mut setup_after = None;
    let mut next_probe = start;
    let mut next_progress = start + PROGRESS_INTERVAL;
    let mut last_probe: Option<String> = None;
    loop {
        if crate::run::cancelled() {
            return Err(BootError::Interrupted);
        }
        match qemu.try_wait() {
            Ok(Some(status)) => {
                return Err(BootError::QemuExited {
                    status,
                    qemu_output: tail_lines(&config.qemu_log, CONSOLE_TAIL),
                    console: tail_lines(&config.console_log, CONSOLE_TAIL),
                });
            }
            Ok(None) => {}
            Err(e) => return Err(io_err("watching QEMU")(e)),
        }
        match console.poll() {
            Marker::None => {}
            Marker::Done => {
                if setup_after.is_none() {
                    let after = start.elapsed();
                    tracing::info!("guest setup for {} done after {} s", ds.db, after.as_secs());
                    setup_after = Some(after);
                }
            }
            Marker::Failed(detail) => {
                return Err(BootError::SetupFailed {
                    db: ds.db.clone(),
                    detail,
                    console: tail_lines(&config.console_log, CONSOLE_TAIL),
                });
            }
        }
        let now = Instant::now();
        let remaining = timeout.saturating_sub(start.elapsed());
        if now >= next_probe && !remaining.is_zero() {
            let limit = remaining.as_secs().clamp(1, PROBE_LIMIT_SECS);
            match probe_cmd(ds, config.host_port, password, limit).output() {
                Ok(stdout) => {
                    let elapsed = start.elapsed();
                    let stdout = crate::run::redact(stdout.trim());
                    tracing::debug!(target: "cmd", "  {stdout}");
                    return Ok(BootReport {
                        db: ds.db.clone(),
                        port: config.host_port,
                        elapsed,
                        setup_after,
                        probe_stdout: stdout,
                    });
                }
                Err(RunError::Interrupted { .. }) => return Err(BootError::Interrupted),
                Err(e) => {
                    // Expected for most of the boot: the guest is not up yet.
                    let e = crate::run::redact(&e.to_string());
                    tracing::debug!("probe: not yet: {e}");
                    last_probe = Some(e);
                }
            }
            next_probe = Instant::now() + PROBE_INTERVAL;
        }
        if start.elapsed() >= timeout {
            return Err(BootError::Timeout {
                db: ds.db.clone(),
                port: config.host_port,
                secs: timeout.as_secs(),
                last_probe,
                console: tail_lines(&config.console_log, CONSOLE_TAIL),
            });
        }
        if Instant::now() >= next_progress {
            tracing::info!(
                "waiting for {} on {HOST}:{} ({} s)",
                ds.db,
                config.host_port,
                start.elapsed().as_secs()
            );
            next_progress += PROGRESS_INTERVAL;
        }
        thread::sleep(TICK);
    }
}

/// A setup marker seen on the console.
#[derive(Debug, PartialEq, Eq)]
enum Marker {
    None,
    Done,
    Failed(String),
}

/// Follows the console log as it grows, looking for the setup markers.
#[derive(Debug)]
struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl ConsoleWatch {
    fn new(path: PathBuf) -> ConsoleWatch {
        ConsoleWatch {
            path,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Reads what was appended since the last call; reports the first marker.
    fn poll(&mut self) -> Marker {
        let mut new = Vec::new();
        // The file appears only once QEMU opened it; not there yet is fine.
        let Ok(mut f) = File::open(&self.path) else {
            return Marker::None;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut new).is_err() {
            return Marker::None;
        }
        self.offset += new.len() as u64;
        self.partial.extend_from_slice(&new);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Marker::None;
        };
        let complete: Vec<u8> = self.partial.drain(..=last_nl).collect();
        let mut found = Marker::None;
        for line in String::from_utf8_lossy(&complete).lines() {
            let line = clean_line(line);
            let line = line.trim();
            if line == SETUP_DONE_MARKER && found == Marker::None {
                found = Marker::Done;
            } else if let Some(detail) = line.strip_prefix(SETUP_FAILED_MARKER) {
                return Marker::Failed(detail.trim().to_string());
            }
        }
        found
    }
}

/// Removes terminal escape sequences and control characters that the
/// firmware and systemd write to the serial console.
fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// The last `n` non-blank lines of a log file, cleaned and redacted.
fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(raw) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<String> = text
        .lines()
        .map(|l| crate::run::redact(clean_line(l).trim_end()))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;

    use super::*;
    use crate::catalog::TestSpec;

    fn postgres() -> Resolved {
        Resolved {
            test: TestSpec {
                guest_setup: "echo \"listen_addresses='*'\" >> conf; sed -i s/5432/{port}/ f\n\
                              su postgres -c \"psql -c \\\"ALTER USER postgres PASSWORD '{password}'\\\"\"\n\
                              for i in ${HOME}; do :; done\n"
                    .into(),
                probe: vec![
                    "psql".into(),
                    "-h".into(),
                    "{host}".into(),
                    "-p".into(),
                    "{port}".into(),
                    "-U".into(),
                    "postgres".into(),
                    "-tAc".into(),
                    "select version()".into(),
                ],
                env: BTreeMap::from([("PGPASSWORD".to_string(), "{password}".to_string())]),
            },
            ..Resolved::example()
        }
    }

    #[test]
    fn boot_substitute_fills_known_and_keeps_the_rest() {
        let vars = [("port", "5432"), ("password", "{port}")];
        assert_eq!(
            substitute("p={port} x={password}", &vars),
            "p=5432 x={port}"
        );
        assert_eq!(
            substitute("${HOME} {nope} {port", &vars),
            "${HOME} {nope} {port"
        );
        assert_eq!(substitute("{{port}}", &vars), "{5432}");
        assert_eq!(substitute("ünï{port}ç", &vars), "ünï5432ç");
        assert_eq!(substitute("", &vars), "");
    }

    #[test]
    fn boot_probe_gets_host_port_and_password() {
        let ds = postgres();
        let cmd = probe_cmd(&ds, 40123, "pw-0123456789", 20);
        let shown = format!("{cmd:?}");
        assert!(
            shown.contains("\"127.0.0.1\"") && shown.contains("\"40123\""),
            "{shown}"
        );
        assert!(
            shown.contains("(\"PGPASSWORD\", \"pw-0123456789\")"),
            "{shown}"
        );
        assert!(
            cmd.display()
                .starts_with("timeout --kill-after=5 20 psql -h 127.0.0.1")
        );
    }

    #[test]
    fn boot_seed_carries_the_substituted_setup() {
        let ds = postgres();
        let password = fresh_password();
        assert_eq!(password.len(), 32);
        assert_ne!(password, fresh_password());
        let dir = tempfile::tempdir().unwrap();
        let img = seed::make_seed(
            dir.path(),
            &seed::user_data(&guest_setup_script(&ds, &password), "ttyS0"),
            &seed::meta_data("dbimage-test-x"),
        )
        .unwrap();
        let ud = Cmd::new("mtype")
            .arg("-i")
            .arg(&img)
            .arg("::user-data")
            .output()
            .unwrap();
        let content = ud
            .lines()
            .find_map(|l| l.trim().strip_prefix("content: "))
            .unwrap();
        let script: String = serde_json::from_str(content).unwrap();
        assert!(
            script.contains(&format!("PASSWORD '{password}'")),
            "{script}"
        );
        assert!(
            script.contains("s/5432/5432/") && script.contains("${HOME}"),
            "{script}"
        );
        assert!(
            !script.contains("{password}") && !script.contains("{port}"),
            "{script}"
        );
        assert!(crate::run::redact(&ud).contains("PASSWORD '***'"));
    }

    #[test]
    fn boot_picks_a_free_local_port() {
        let port = pick_host_port().unwrap();
        assert_ne!(port, 0);
        // Released: QEMU must be able to bind it.
        TcpListener::bind((HOST, port)).unwrap();
    }

    /// A guest of `machine` with a blank disk (it boots nothing) in `dir`.
    fn blank_guest(dir: &Path, machine: Machine, memory_mib: u32) -> QemuConfig {
        let image = dir.join("blank.qcow2");
        Cmd::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&image).arg("16M").output().unwrap();
        let seed = dir.join("seed.img");
        std::fs::write(&seed, vec![0u8; 1 << 20]).unwrap();
        QemuConfig {
            machine,
            image,
            seed,
            memory_mib,
            cpus: 1,
            host_port: 0,
            guest_port: 22,
            console_log: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
        }
    }

    /// A real QEMU and a port this test holds: QEMU cannot bind it and
    /// another one is tried.
    #[test]
    fn boot_tries_another_port_when_qemu_cannot_bind() {
        let dir = tempfile::tempdir().unwrap();
        let held = TcpListener::bind((HOST, 0)).unwrap();
        let taken = held.local_addr().unwrap().port();
        let mut config = blank_guest(dir.path(), qemu::AMD64, 64);
        let mut picks = 0;
        let qemu = start_qemu(&mut config, || {
            picks += 1;
            if picks <= 2 { Ok(taken) } else { pick_host_port() }
        })
        .unwrap();
        assert_eq!(picks, 3);
        assert_ne!(config.host_port, taken);
        drop(qemu);

        let err = start_qemu(&mut config, || Ok(taken)).unwrap_err();
        assert!(matches!(err, BootError::NoPort { tries: PORT_TRIES, .. }), "{err}");
        assert!(err.to_string().contains(&format!("in {PORT_TRIES} tries")), "{err}");
        assert!(err.to_string().contains(HOSTFWD_FAILED), "{err}");
    }

    /// The real qemu-system-ppc64 takes the pseries arguments (board,
    /// capabilities, CPU, disks, NIC) and listens, without a warning.
    #[test]
    fn boot_ppc64le_qemu_starts_with_our_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = blank_guest(dir.path(), qemu::PPC64LE, 512);
        let mut qemu = start_qemu(&mut config, pick_host_port).unwrap();
        assert!(qemu.try_wait().unwrap().is_none());
        qemu.stop();
        let said = std::fs::read_to_string(&config.qemu_log).unwrap();
        assert!(!said.contains("warning"), "{said}");
    }

    #[test]
    fn boot_console_watch_finds_markers_across_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut w = ConsoleWatch::new(path.clone());
        assert_eq!(w.poll(), Marker::None, "missing file is not an error");
        let mut f = File::create(&path).unwrap();
        // The command line that prints the marker is not the marker.
        f.write_all(b"\x1b[0m[  OK  ] Started cloud-final\r\n+ echo DBIMAGE-SETUP-DONE\n")
            .unwrap();
        f.write_all(b"DBIMAGE-SETUP-DO").unwrap();
        assert_eq!(w.poll(), Marker::None);
        f.write_all(b"NE\r\n").unwrap();
        assert_eq!(w.poll(), Marker::Done);
        assert_eq!(w.poll(), Marker::None);
        f.write_all(b"DBIMAGE-SETUP-FAILED exit 2\n").unwrap();
        assert_eq!(w.poll(), Marker::Failed("exit 2".into()));
        let tail = tail_lines(&path, 2);
        assert_eq!(tail, ["DBIMAGE-SETUP-DONE", "DBIMAGE-SETUP-FAILED exit 2"]);
    }

    #[test]
    fn boot_refuses_missing_images_and_clients() {
        let mut ds = postgres();
        ds.arch = Arch::Ppc64le;
        let err = boot_and_probe(
            Path::new("/nonexistent.qcow2"),
            &ds,
            &BootOptions::for_arch(Arch::Ppc64le),
        )
        .unwrap_err();
        assert!(matches!(err, BootError::ImageMissing { .. }), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.qcow2");
        std::fs::write(&image, b"").unwrap();
        let mut ds = postgres();
        ds.test.probe[0] = "dbimage-no-such-client".into();
        let err = boot_and_probe(&image, &ds, &BootOptions::default()).unwrap_err();
        assert!(matches!(err, BootError::ProbeMissing { .. }), "{err}");
    }

    #[test]
    fn boot_emulated_power_gets_more_time_and_memory() {
        let amd64 = BootOptions::default();
        assert_eq!((amd64.timeout, amd64.memory_mib), (AMD64_TIMEOUT, 1024));
        let ppc = BootOptions::for_arch(Arch::Ppc64le);
        assert_eq!((ppc.timeout, ppc.memory_mib), (AMD64_TIMEOUT * 3, 2048));
    }
}
