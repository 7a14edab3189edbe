//! A real OpenSSH server for the tests: Debian's sshd, started on a free
//! port of 127.0.0.1 with its own host key, its own client key and its own
//! configuration (never the machine's), and ended by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One running sshd; stopped on drop.
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its files: keys, configuration, log, known_hosts.
    pub dir: tempfile::TempDir,
    /// The private key that logs in as root.
    pub client_key: PathBuf,
    /// A known_hosts file holding its host key.
    pub known_hosts: PathBuf,
    /// Its host public key file.
    pub host_pub: PathBuf,
    child: Child,
}

impl Sshd {
    /// Starts sshd and waits until it accepts connections.
    pub fn start() -> Sshd {
        let dir = tempfile::Builder::new().prefix("dbimage-sshd-").tempdir().unwrap();
        let d = dir.path();
        let host_key = d.join("host_key");
        let client_key = d.join("client_key");
        super::ssh_keygen(&host_key, "test-host");
        let client_pub = super::ssh_keygen(&client_key, "test-client");
        std::fs::write(d.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
        // sshd running as root insists on its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_pub = host_key.with_extension("pub");
        let key = std::fs::read_to_string(&host_pub).unwrap();
        // A port found free may be taken before sshd binds it (tests run in
        // parallel): sshd then exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                     AuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxSessions 64\n\
                     MaxStartups 64\nLogLevel VERBOSE\n",
                    hk = host_key.display(),
                    pid = d.join("sshd.pid").display(),
                    ak = d.join("authorized_keys").display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start /usr/sbin/sshd (openssh-server; scripts/setup-host installs it)");
            super::watchdog::track(&child, &format!("sshd on port {port}"));
            let _w = super::waiting_for(format!("sshd to listen on 127.0.0.1:{port}"));
            // Its own word that it listens, not a probe another process could answer.
            let ready = format!("Server listening on 127.0.0.1 port {port}.");
            let deadline = Instant::now() + Duration::from_secs(20);
            let log_text = || std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
            loop {
                if log_text().contains(&ready) {
                    let known_hosts = d.join("known_hosts");
                    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {}", key.trim())).unwrap();
                    return Sshd { port, dir, client_key, known_hosts, host_pub, child };
                }
                if child.try_wait().unwrap().is_some() {
                    super::watchdog::untrack(&child);
                    eprintln!("sshd on port {port} exited: {}", log_text());
                    break;
                }
                assert!(Instant::now() < deadline, "sshd did not start: {}", log_text());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("sshd could not start on any of 5 free ports");
    }

    /// sshd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Points a dbimage command at this server as its build VM (`-i
    /// 127.0.0.1`) with dbimage's known_hosts set to `known_hosts`.
    pub fn as_dibvm(&self, c: &mut Command, known_hosts: &Path) {
        c.env("DBIMAGE_KNOWN_HOSTS", known_hosts)
            .env("DBIMAGE_DIB_PORT", self.port.to_string())
            .env("DBIMAGE_DIB_USER", "root")
            .env("DBIMAGE_DIB_PRIVATE_SSH_KEY", &self.client_key);
    }

    /// Points a dbimage command at this server as the Trove controller.
    pub fn as_controller(&self, c: &mut Command, guest_agent_conf: &Path, public_key: Option<&Path>) {
        c.env("DBIMAGE_KNOWN_HOSTS", &self.known_hosts)
            .env("DBIMAGE_CONTROLLER_IP", "127.0.0.1")
            .env("DBIMAGE_CTRL_PORT", self.port.to_string())
            .env("DBIMAGE_CTRL_USER", "root")
            .env("DBIMAGE_CTRL_PRIVATE_SSH_KEY", &self.client_key)
            .env("DBIMAGE_CTRL_GUEST_AGENT_CONF", guest_agent_conf);
        if let Some(k) = public_key {
            c.env("DBIMAGE_CTRL_PUBLIC_KEY", k);
        }
    }

    /// Kills the server's per-connection processes, as a network drop
    /// would end them; the listener stays up.
    pub fn drop_connections(&self) -> usize {
        let ours = descendants(self.child.id());
        let mut n = 0;
        for pid in ours {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sshd" {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                n += 1;
            }
        }
        n
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sshd log (port {}):\n{}", self.port, self.log());
        }
        // The connections' processes too, all started by this server.
        for pid in descendants(self.child.id()) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::watchdog::untrack(&self.child);
    }
}

/// A port on 127.0.0.1 nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every process below `pid`, children first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // The fields after the command name, which may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
            parents.entry(ppid).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in parents.get(&p).into_iter().flatten() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}
