//! SSH sessions to one remote host, through the system `ssh` client (the
//! `openssh` crate): one multiplexed master connection per host, key-based,
//! strict host key checking against the known_hosts file dbimage keeps.
//!
//! Every remote command runs under a small shell watchdog: when the
//! connection drops (or dbimage dies), the command's stdin reaches EOF and
//! the watchdog ends the command's whole process group, so a remote build
//! never outlives the session that started it.

use std::collections::VecDeque;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::RemoteError;
use crate::run::{self, Cmd};
use crate::settings::RemoteHost;

/// How many trailing output lines an error keeps.
const TAIL_LINES: usize = 15;

/// An idle orphaned master (dbimage was SIGKILLed) exits after this long.
const MASTER_IDLE_SECS: usize = 60;

/// The wrapper every remote command runs in. `$1` is the command. Background
/// jobs of a non-interactive shell get /dev/null as stdin, hence the copy of
/// the session's stdin on fd 3 for the watchdog, which asks the command's
/// process group to stop and kills it 30 s later.
const WATCHDOG: &str = r#"exec 3<&0
setsid sh -c "$1" </dev/null &
pid=$!
{ cat <&3; kill -TERM "-$pid"; sleep 30; kill -KILL "-$pid"; } >/dev/null 2>&1 &
watch=$!
wait "$pid"; rc=$?
kill "$watch" 2>/dev/null
exit "$rc""#;

/// Where and how to reach one host.
#[derive(Debug, Clone)]
pub struct Target {
    /// The host's address or name.
    pub host: String,
    /// User, port, key, sudo and timeout.
    pub ssh: RemoteHost,
    /// The known_hosts file checked strictly.
    pub known_hosts: PathBuf,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(u) = &self.ssh.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.ssh.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// What a finished remote command left.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Its exit code (-1 when it was killed by a signal).
    pub rc: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Its last lines of output, both streams, redacted.
    pub tail: Vec<String>,
}

/// How to run one remote command.
#[derive(Default)]
pub struct Exec<'a> {
    /// Run it as root (through `sudo -n` unless the login user is root or
    /// the host's `sudo` setting is off).
    pub become_root: bool,
    /// Neither the command nor its output reaches the log.
    pub no_log: bool,
    /// Called with each output line as it arrives (both streams).
    pub on_line: Option<&'a mut dyn FnMut(&str)>,
    /// Let the command finish even after Ctrl-C or SIGTERM (cleanup).
    pub finish_when_cancelled: bool,
}

/// An open master connection to one host.
pub struct Connection {
    session: Option<Session>,
    target: Target,
    /// Whether the login user is root (no sudo needed).
    is_root: bool,
}

impl Connection {
    /// Connects to `target`, failing early with a clear reason (unknown host
    /// key, refused key, unreachable host).
    pub fn open(target: &Target) -> Result<Connection, RemoteError> {
        if let Some(k) = &target.ssh.key
            && !k.is_file()
        {
            return Err(RemoteError::Setup(format!(
                "SSH key {} for {target} does not exist; fix the key setting",
                k.display()
            )));
        }
        // Only dbimage's known_hosts decides: the system-wide file is off,
        // the user's own ssh configuration still applies.
        let mut config = tempfile::NamedTempFile::new().map_err(|e| RemoteError::Setup(e.to_string()))?;
        std::io::Write::write_all(&mut config, b"GlobalKnownHostsFile /dev/null\nInclude ~/.ssh/config\n")
            .map_err(|e| RemoteError::Setup(e.to_string()))?;
        let mut b = SessionBuilder::default();
        b.config_file(config.path())
            .known_hosts_check(KnownHosts::Strict)
            .user_known_hosts_file(&target.known_hosts)
            .connect_timeout(Duration::from_secs(target.ssh.connect_timeout.max(1)))
            .server_alive_interval(Duration::from_secs(15))
            // Not clean_history_control_directory: it removes the sockets of
            // every other session in the directory, concurrent ones included.
            .control_directory(std::env::temp_dir())
            .control_persist(ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(MASTER_IDLE_SECS).unwrap_or(std::num::NonZeroUsize::MIN),
            ));
        if let Some(u) = &target.ssh.user {
            b.user(u.clone());
        }
        if let Some(p) = target.ssh.port {
            b.port(p);
        }
        if let Some(k) = &target.ssh.key {
            b.keyfile(k);
        }
        tracing::info!("connecting to {target}");
        let session = crate::runtime::block_on(b.connect(&target.host))
            .map_err(|e| RemoteError::Setup(e.to_string()))?
            .map_err(|e| connect_error(target, &e))?;
        let mut conn = Connection { session: Some(session), target: target.clone(), is_root: false };
        let id = conn.exec("id -u", &mut Exec { no_log: true, ..Default::default() })?;
        conn.is_root = id.stdout.trim() == "0";
        if !conn.is_root && target.ssh.sudo && conn.exec("sudo -n true", &mut Exec { no_log: true, ..Default::default() })?.rc != 0 {
            return Err(RemoteError::Setup(format!(
                "{target}: the user needs passwordless sudo (NOPASSWD) for tasks run as root; or log in as \
                 root, or set sudo: false for this host"
            )));
        }
        Ok(conn)
    }

    /// The host this connection reaches.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn session(&self) -> Result<&Session, RemoteError> {
        self.session.as_ref().ok_or_else(|| RemoteError::Lost { host: self.target.to_string(), tail: vec![] })
    }

    /// The remote command line that runs `script` under the watchdog.
    fn command_line(&self, script: &str, become_root: bool) -> String {
        let sudo = if become_root && !self.is_root && self.target.ssh.sudo { "sudo -n " } else { "" };
        format!("{sudo}sh -c {} dbimage-task {}", quote(WATCHDOG), quote(script))
    }

    /// Runs `script` with `sh -c` on the host and returns its output; a
    /// non-zero exit is not an error here (the caller decides).
    pub fn exec(&self, script: &str, how: &mut Exec<'_>) -> Result<Output, RemoteError> {
        if !how.no_log {
            tracing::debug!("[{}] $ {}", self.target, run::redact(script));
        }
        let line = self.command_line(script, how.become_root);
        let session = self.session()?;
        let host = self.target.to_string();
        let no_log = how.no_log;
        let stoppable = !how.finish_when_cancelled;
        let on_line = &mut how.on_line;
        let fut = async {
            let mut child = session
                .raw_command(&line)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .await
                .map_err(|e| RemoteError::Lost { host: host.clone(), tail: vec![e.to_string()] })?;
            // Held open until the command ends: its EOF is the watchdog's signal.
            let mut stdin = child.stdin().take();
            let mut out = child.stdout().take().map(BufReader::new);
            let mut err = child.stderr().take().map(BufReader::new);
            let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
            let mut result = Output::default();
            let mut tail = VecDeque::new();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while out.is_some() || err.is_some() {
                tokio::select! {
                    n = next_line(&mut out, &mut out_buf), if out.is_some() => match n {
                        Some(l) => keep(&l, &mut result.stdout, &mut tail, no_log, on_line),
                        None => out = None,
                    },
                    n = next_line(&mut err, &mut err_buf), if err.is_some() => match n {
                        Some(l) => keep(&l, &mut result.stderr, &mut tail, no_log, on_line),
                        None => err = None,
                    },
                    _ = tick.tick() => if stoppable && run::cancelled() {
                        stdin = None; // the watchdog stops the command
                    },
                }
            }
            drop(stdin);
            result.tail = tail.into_iter().collect();
            Ok::<_, RemoteError>((child.wait().await, result))
        };
        let (status, mut result) = crate::runtime::block_on(fut).map_err(|e| RemoteError::Setup(e.to_string()))??;
        if stoppable && run::cancelled() {
            return Err(RemoteError::Interrupted);
        }
        result.rc = match self.exit_code(status) {
            Ok(rc) => rc,
            Err(_) => return Err(RemoteError::Lost { host, tail: result.tail }),
        };
        Ok(result)
    }

    /// Whether the master connection is still up.
    fn check(&self) -> Result<(), RemoteError> {
        let session = self.session()?;
        crate::runtime::block_on(session.check())
            .map_err(|e| RemoteError::Setup(e.to_string()))?
            .map_err(|_| RemoteError::Lost { host: self.target.to_string(), tail: vec![] })
    }

    /// Runs `script` and fails unless it exits 0.
    pub fn run(&self, script: &str, how: &mut Exec<'_>) -> Result<Output, RemoteError> {
        let out = self.exec(script, how)?;
        self.check_exit(out, how.no_log)
    }

    /// `out` when its command exited 0, else the failure naming this host
    /// (with its output's tail unless the command was `no_log`).
    pub fn check_exit(&self, out: Output, no_log: bool) -> Result<Output, RemoteError> {
        if out.rc == 0 {
            return Ok(out);
        }
        let tail = if no_log { vec!["(output hidden: no_log)".into()] } else { out.tail };
        Err(RemoteError::Failed { host: self.target.to_string(), rc: out.rc, tail })
    }

    /// Copies a local file or directory to `dest` on the host. A directory's
    /// contents go into `dest` (created); a file lands atomically at `dest`,
    /// with `mode` when given.
    pub fn upload(&self, src: &Path, dest: &str, mode: Option<u32>, become_root: bool) -> Result<(), RemoteError> {
        let meta = fs::metadata(src).map_err(|e| RemoteError::Setup(format!("{}: {e}", src.display())))?;
        let mut writer = None;
        let (script, feed): (String, OwnedFd) = if meta.is_dir() {
            let (read, write) = nix::unistd::pipe().map_err(|e| RemoteError::Setup(format!("pipe: {e}")))?;
            let dir = src.to_path_buf();
            writer = Some(std::thread::spawn(move || {
                let mut tar = tar::Builder::new(fs::File::from(write));
                tar.follow_symlinks(false);
                tar.append_dir_all(".", &dir).and_then(|_| tar.finish())
            }));
            (format!("mkdir -p {d} && tar -x --no-same-owner -C {d}", d = quote(dest)), read)
        } else {
            let file = fs::File::open(src).map_err(|e| RemoteError::Setup(format!("{}: {e}", src.display())))?;
            let mode = mode.unwrap_or(meta_mode(&meta));
            let tmp = format!("{dest}.dbimage-part");
            (
                format!(
                    "trap 'rm -f {t}' EXIT; mkdir -p \"$(dirname {d})\" && cat > {t} && chmod {mode:o} {t} && mv -fT {t} {d}",
                    d = quote(dest),
                    t = quote(&tmp)
                ),
                OwnedFd::from(file),
            )
        };
        tracing::debug!("[{}] copy {} -> {dest}", self.target, src.display());
        let sent = self.pipe(&script, Stdio::from(feed), Stdio::piped(), become_root);
        // A local read error can end the archive cleanly at a file boundary,
        // which tar accepts; the writer's own result tells.
        let written = writer.map(|w| w.join());
        sent?;
        match written {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(RemoteError::Setup(format!("copying {}: {e}", src.display()))),
            Some(Err(_)) => Err(RemoteError::Setup(format!("copying {}: the archiver failed", src.display()))),
        }
    }

    /// Copies a remote file to `dest`, through a new temporary file beside
    /// it, so `dest` appears complete or not at all.
    pub fn download(&self, src: &str, dest: &Path, become_root: bool) -> Result<u64, RemoteError> {
        let mut part = dest.as_os_str().to_owned();
        part.push(".dbimage-part");
        let part = PathBuf::from(part);
        // A new file, never through a symlink planted at its name.
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&part)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => RemoteError::Setup(format!(
                    "{} is in the way (left over, or planted); remove it and fetch again",
                    part.display()
                )),
                _ => RemoteError::Setup(format!("{}: {e}", part.display())),
            })?;
        tracing::debug!("[{}] fetch {src} -> {}", self.target, dest.display());
        let result = self
            .pipe(&format!("cat {}", quote(src)), Stdio::null(), Stdio::from(OwnedFd::from(file)), become_root)
            .and_then(|_| fs::rename(&part, dest).map_err(|e| RemoteError::Setup(format!("{}: {e}", dest.display()))));
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        result?;
        Ok(fs::metadata(dest).map(|m| m.len()).unwrap_or(0))
    }

    /// Runs `script` (no watchdog: its stdin is data) with the given stdin
    /// and stdout, failing with its stderr's tail.
    fn pipe(&self, script: &str, stdin: Stdio, stdout: Stdio, become_root: bool) -> Result<(), RemoteError> {
        let sudo = if become_root && !self.is_root && self.target.ssh.sudo { "sudo -n " } else { "" };
        let line = format!("{sudo}sh -c {}", quote(script));
        let session = self.session()?;
        let host = self.target.to_string();
        let (status, stderr) = crate::runtime::block_on(async {
            let mut child = session
                .raw_command(&line)
                .stdin(stdin)
                .stdout(stdout)
                .stderr(Stdio::piped())
                .spawn()
                .await
                .map_err(|e| RemoteError::Lost { host: host.clone(), tail: vec![e.to_string()] })?;
            let mut stderr = Vec::new();
            if let Some(mut e) = child.stderr().take() {
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut e, &mut stderr).await;
            }
            Ok::<_, RemoteError>((child.wait().await, stderr))
        })
        .map_err(|e| RemoteError::Setup(e.to_string()))??;
        let tail = last_lines(&String::from_utf8_lossy(&stderr));
        match self.exit_code(status) {
            Ok(0) => Ok(()),
            Ok(rc) => Err(RemoteError::Failed { host, rc, tail }),
            Err(_) => Err(RemoteError::Lost { host, tail }),
        }
    }

    /// A finished command's exit code; an error when the connection is gone.
    /// The mux client reports 255 both for a lost connection and for a
    /// command that exited 255, and 127 as "command not found".
    fn exit_code(&self, status: Result<std::process::ExitStatus, openssh::Error>) -> Result<i32, RemoteError> {
        match status {
            Ok(s) => Ok(s.code().unwrap_or(-1)),
            Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(127),
            Err(openssh::Error::RemoteProcessTerminated) => self.check().map(|_| 255),
            Err(_) => Err(RemoteError::Lost { host: self.target.to_string(), tail: vec![] }),
        }
    }

    /// Closes the master connection.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = crate::runtime::block_on(s.close());
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The next line of `reader` (lossy UTF-8, without its newline), or `None`
/// at the end or on a read error.
async fn next_line<R: tokio::io::AsyncRead + Unpin>(reader: &mut Option<BufReader<R>>, buf: &mut Vec<u8>) -> Option<String> {
    let r = reader.as_mut()?;
    // `buf` is cleared only once a line is taken: a call cancelled by
    // select! leaves what it read there, and this call continues it (a
    // last line without a newline was lost otherwise).
    match r.read_until(b'\n', buf).await {
        Err(_) => None,
        Ok(0) if buf.is_empty() => None,
        Ok(_) => {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            let line = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
            Some(line)
        }
    }
}

fn keep(line: &str, into: &mut String, tail: &mut VecDeque<String>, no_log: bool, on_line: &mut Option<&mut dyn FnMut(&str)>) {
    into.push_str(line);
    into.push('\n');
    if no_log {
        return;
    }
    let shown = run::redact(line);
    if let Some(f) = on_line.as_mut() {
        f(&shown);
    } else {
        tracing::debug!("  {shown}");
    }
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(shown);
}

fn last_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].iter().map(|l| run::redact(l)).collect()
}

fn meta_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// Quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Turns ssh's connection failure into an error that says what to do.
fn connect_error(target: &Target, e: &openssh::Error) -> RemoteError {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    let kh = target.known_hosts.display();
    if text.contains("IDENTIFICATION HAS CHANGED") {
        RemoteError::Setup(format!(
            "the host key of {target} differs from the one in {kh}: the host was reinstalled or someone is \
             in the middle; check it, remove the old line from {kh}, then run `dbimage playbook trust {}`",
            target.host
        ))
    } else if text.contains("Host key verification failed") || text.contains("No ") && text.contains("host key is known") {
        RemoteError::Setup(format!(
            "the host key of {target} is not in {kh}; check its fingerprint and run `dbimage playbook trust {}{}`",
            target.host,
            target.ssh.port.map(|p| format!(" --port {p}")).unwrap_or_default()
        ))
    } else if text.contains("UNPROTECTED PRIVATE KEY") || text.contains("bad permissions") || text.contains("Load key") {
        RemoteError::Setup(format!(
            "ssh cannot use the key {} for {target}: it must be readable by this user only (chmod 600)",
            target.ssh.key.as_ref().map(|k| k.display().to_string()).unwrap_or_default()
        ))
    } else if text.contains("Permission denied") {
        RemoteError::Setup(format!(
            "{target} refused the SSH key{}: check the user and that the key is in its authorized_keys",
            target.ssh.key.as_ref().map(|k| format!(" {}", k.display())).unwrap_or_default()
        ))
    } else {
        RemoteError::Setup(format!("cannot connect to {target}: {}", first_line(&text)))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim()
}

/// A host's SSH host keys as `ssh-keyscan` saw them.
#[derive(Debug)]
pub struct HostKeys {
    /// known_hosts lines.
    pub lines: Vec<String>,
    /// Their fingerprints (`ssh-keygen -l` lines), for the user to check.
    pub fingerprints: Vec<String>,
}

/// Asks `host` for its host keys; changes nothing.
pub fn scan(host: &str, port: Option<u16>) -> Result<HostKeys, RemoteError> {
    let mut scan = Cmd::new("ssh-keyscan").args(["-T", "10"]);
    if let Some(p) = port {
        scan = scan.arg("-p").arg(p.to_string());
    }
    let out = scan.arg(host).output().map_err(|e| RemoteError::Setup(e.to_string()))?;
    let lines: Vec<String> =
        out.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(|l| l.trim().to_string()).collect();
    if lines.is_empty() {
        return Err(RemoteError::Setup(format!(
            "{host} offered no host keys on port {}; is sshd running there?",
            port.unwrap_or(22)
        )));
    }
    let mut scratch = tempfile::NamedTempFile::new().map_err(|e| RemoteError::Setup(e.to_string()))?;
    std::io::Write::write_all(&mut scratch, (lines.join("\n") + "\n").as_bytes())
        .map_err(|e| RemoteError::Setup(e.to_string()))?;
    let prints = Cmd::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(scratch.path())
        .output()
        .map_err(|e| RemoteError::Setup(e.to_string()))?;
    Ok(HostKeys { lines, fingerprints: prints.lines().map(str::to_string).collect() })
}

/// Writes `keys` into `known_hosts` in place of any key it held for the
/// same host, atomically; returns how many old lines were replaced.
pub fn trust(keys: &HostKeys, known_hosts: &Path) -> Result<usize, RemoteError> {
    let hosts: Vec<&str> = keys.lines.iter().filter_map(|l| l.split_whitespace().next()).collect();
    let existing = fs::read_to_string(known_hosts).unwrap_or_default();
    let mut replaced = 0;
    let mut text = String::new();
    for line in existing.lines() {
        if line.split_whitespace().next().is_some_and(|h| hosts.contains(&h)) {
            replaced += 1;
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    for l in &keys.lines {
        text.push_str(l);
        text.push('\n');
    }
    crate::atomic::write_file(known_hosts, text.as_bytes(), 0o600)
        .map_err(|e| RemoteError::Setup(format!("{}: {e}", known_hosts.display())))?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusting_replaces_a_hosts_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("sub/known_hosts");
        fs::create_dir_all(kh.parent().unwrap()).unwrap();
        fs::write(&kh, "other ssh-ed25519 AAAA1\n[h]:2222 ssh-ed25519 OLD\n").unwrap();
        let keys = HostKeys { lines: vec!["[h]:2222 ssh-ed25519 NEW".into()], fingerprints: vec![] };
        assert_eq!(trust(&keys, &kh).unwrap(), 1);
        assert_eq!(fs::read_to_string(&kh).unwrap(), "other ssh-ed25519 AAAA1\n[h]:2222 ssh-ed25519 NEW\n");
    }

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "two words", "it's", "$HOME `x`", "", "a\nb"] {
            let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", quote(s))).output().unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn watchdog_ends_the_command_when_stdin_closes() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("t")
            .arg("echo started; sleep 30; echo never")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"ignored\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let t = std::time::Instant::now();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
        assert!(!out.status.success());
    }

    #[test]
    fn watchdog_passes_the_exit_code() {
        // stdin stays open until the command has ended, as in a session.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("t")
            .arg("echo out; echo err >&2; exit 7")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let status = child.wait().unwrap();
        drop(stdin);
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
        assert_eq!(status.code(), Some(7));
        let out = std::process::Output { status, stdout: stdout.into_bytes(), stderr: vec![] };
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    }
}
