//! A real Redis for the build farm tests: Debian's redis-server on a free
//! port of 127.0.0.1, with its own configuration (no persistence, the
//! `default` user off, an ACL user with a password), optionally TLS only
//! with a CA made here; ended by its PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sshd::free_port;

/// The ACL user the tests log in as.
pub const USER: &str = "farm";
/// Its password (never expected in any output).
pub const PASSWORD: &str = "farm-Secret-7391";

/// One running redis-server; stopped on drop.
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its files: configuration, log, certificates.
    pub dir: tempfile::TempDir,
    /// The CA certificate, when it speaks TLS.
    pub ca: Option<PathBuf>,
    child: Child,
}

impl Redis {
    /// Starts redis-server (TLS only when `tls`) and waits until it is ready.
    pub fn start(tls: bool) -> Redis {
        let dir = tempfile::Builder::new().prefix("dbimage-redis-").tempdir().unwrap();
        let d = dir.path();
        let ca = tls.then(|| {
            let sh = |cmd: &str| super::sh(&format!("cd {} && {cmd} 2>/dev/null", d.display()));
            sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=dbimage-test-ca");
            sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
            sh("printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext");
            sh("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext");
            d.join("ca.crt")
        });
        // A port found free may be taken before redis binds it (tests run
        // in parallel): redis then exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let listen = if tls {
                format!(
                    "port 0\ntls-port {port}\ntls-cert-file {d}/server.crt\ntls-key-file {d}/server.key\n\
                     tls-ca-cert-file {d}/ca.crt\ntls-auth-clients no\n",
                    d = d.display()
                )
            } else {
                format!("port {port}\n")
            };
            let config = d.join("redis.conf");
            std::fs::write(
                &config,
                format!(
                    "{listen}bind 127.0.0.1\nsave \"\"\nappendonly no\ndir {d}\ndaemonize no\n\
                     user default off\nuser {USER} on >{PASSWORD} ~* &* +@all\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join("redis.log")).unwrap();
            let mut child = Command::new("redis-server")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("redis-server (scripts/setup-host installs it)");
            super::watchdog::track(&child, &format!("redis-server on port {port}"));
            let _w = super::waiting_for(format!("redis-server to listen on 127.0.0.1:{port}"));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    super::watchdog::untrack(&child);
                    break; // the port was taken: try another
                }
                let log = std::fs::read_to_string(d.join("redis.log")).unwrap_or_default();
                if log.contains("Ready to accept connections") {
                    return Redis { port, dir, ca, child };
                }
                assert!(Instant::now() < deadline, "redis-server did not start:\n{log}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("redis-server did not start: {}", std::fs::read_to_string(d.join("redis.log")).unwrap_or_default());
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::watchdog::untrack(&self.child);
    }

    /// Starts the server again after [`Redis::crash`], on the same port
    /// with the same configuration, empty.
    pub fn restart(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("redis.log")).unwrap();
        self.child = Command::new("redis-server")
            .arg(d.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        super::watchdog::track(&self.child, &format!("redis-server on port {}", self.port));
        let _w = super::waiting_for(format!("redis-server to come back on 127.0.0.1:{}", self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(d.join("redis.log")).unwrap_or_default().contains("Ready to accept connections") {
            assert!(self.child.try_wait().unwrap().is_none() && Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Points `dbimage` at this server under a key prefix of its own.
    pub fn env(&self, c: &mut Command, prefix: &str) {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        c.env("DBIMAGE_REDIS_URL", format!("{scheme}://127.0.0.1:{}/0", self.port))
            .env("DBIMAGE_REDIS_USER", USER)
            .env("DBIMAGE_REDIS_PASSWORD", PASSWORD)
            .env("DBIMAGE_QUEUE_PREFIX", prefix);
        match &self.ca {
            Some(ca) => c.env("DBIMAGE_REDIS_CA", ca),
            None => c.env_remove("DBIMAGE_REDIS_CA"),
        };
    }

    /// Runs a redis-cli command as the test user; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--user", USER, "--pass", PASSWORD, "--no-auth-warning"]);
        if let Some(ca) = &self.ca {
            c.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = c.args(args).output().unwrap();
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::watchdog::untrack(&self.child);
    }
}
