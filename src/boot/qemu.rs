//! Running one QEMU guest for as long as a test needs it, and no longer.
//!
//! QEMU runs for minutes, so it does not go through [`crate::run::Cmd`]
//! (which waits for its child): it is started here, in its own process
//! group so a Ctrl-C on the terminal reaches only us, and [`Qemu`]'s Drop
//! stops it on every path out, including errors and cancellation.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The emulator for amd64 guests.
pub const QEMU_X86_64: &str = "qemu-system-x86_64";

/// How long QEMU gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QCOW2 image; opened with `-snapshot`, so it is never written.
    pub image: PathBuf,
    /// The raw cloud-init seed disk.
    pub seed: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Port on 127.0.0.1 forwarded to the guest.
    pub host_port: u16,
    /// The guest port it reaches.
    pub guest_port: u16,
    /// File that receives the guest's serial console (ttyS0).
    pub console_log: PathBuf,
    /// File that receives QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
}

impl QemuConfig {
    /// The arguments after the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut drive_image = OsString::from("file=");
        drive_image.push(&self.image);
        drive_image.push(",if=virtio,format=qcow2");
        let mut drive_seed = OsString::from("file=");
        drive_seed.push(&self.seed);
        drive_seed.push(",if=virtio,format=raw,readonly=on");
        let mut serial = OsString::from("file:");
        serial.push(&self.console_log);
        let mut args: Vec<OsString> = Vec::new();
        let mut add = |a: &str| args.push(a.into());
        // Software emulation works on any host, including CI runners and
        // containers without /dev/kvm. `max` exposes every instruction TCG
        // emulates (AVX and up on QEMU >= 7.2), which some database builds
        // require: MongoDB >= 5 will not start on the default qemu64 CPU.
        for a in ["-accel", "tcg", "-cpu", "max", "-m"] {
            add(a);
        }
        add(&self.memory_mib.to_string());
        add("-smp");
        add(&self.cpus.to_string());
        // -nographic keeps QEMU off any display; -display none and
        // -monitor none make sure nothing falls back to our terminal.
        for a in [
            "-nographic",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-snapshot",
        ] {
            add(a);
        }
        add("-nic");
        add(&format!(
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{}-:{}",
            self.host_port, self.guest_port
        ));
        args.push("-drive".into());
        args.push(drive_image);
        args.push("-drive".into());
        args.push(drive_seed);
        args.push("-serial".into());
        args.push(serial);
        args
    }
}

/// A running QEMU; dropping it stops the guest (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    exited: Option<ExitStatus>,
}

impl Qemu {
    /// Starts `program` (e.g. [`QEMU_X86_64`]) with `config`.
    pub fn spawn(program: &str, config: &QemuConfig) -> io::Result<Qemu> {
        let log = File::create(&config.qemu_log)?;
        let args = config.args();
        let shown: Vec<String> = std::iter::once(program.to_string())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        tracing::debug!(target: "cmd", "$ {}", crate::run::redact(&shown.join(" ")));
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()?;
        Ok(Qemu {
            child,
            exited: None,
        })
    }

    /// The exit status if QEMU has already stopped on its own.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Waits until QEMU itself listens on `port` of 127.0.0.1 (its socket,
    /// not another process's). Err with QEMU's exit status if it exited,
    /// or with None if it did not listen within `limit`.
    pub fn wait_listening(&mut self, port: u16, limit: Duration) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.try_wait() {
                return Err(Some(status));
            }
            if listens(self.child.id(), port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the guest now; the same as dropping it.
    pub fn stop(self) {}

    fn terminate(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        // Only ever our own child, by its PID: QEMU starts no helpers with
        // user-mode networking, so there is no group to clean up.
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < TERM_GRACE {
            if matches!(self.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("QEMU (pid {pid}) ignored SIGTERM; killing it");
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exited = Some(status);
        }
    }
}

/// Whether process `pid` holds a TCP socket listening on 127.0.0.1:`port`.
pub fn listens(pid: u32, port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1] == wanted && f[3] == "0A")
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            image: "/i/pg 15.qcow2".into(),
            seed: "/t/seed.img".into(),
            memory_mib: 1024,
            cpus: 2,
            host_port: 40123,
            guest_port: 5432,
            console_log: "/t/console.log".into(),
            qemu_log: "/t/qemu.log".into(),
        }
    }

    #[test]
    fn boot_qemu_args_are_safe_and_complete() {
        let args: Vec<String> = config()
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let has_pair = |a: &str, b: &str| args.windows(2).any(|w| w[0] == a && w[1] == b);
        assert!(has_pair("-accel", "tcg"), "{args:?}");
        assert!(has_pair("-m", "1024") && has_pair("-smp", "2"), "{args:?}");
        assert!(
            args.iter().any(|a| a == "-snapshot"),
            "the image must never be written"
        );
        assert!(
            has_pair("-drive", "file=/i/pg 15.qcow2,if=virtio,format=qcow2"),
            "{args:?}"
        );
        assert!(has_pair(
            "-drive",
            "file=/t/seed.img,if=virtio,format=raw,readonly=on"
        ));
        assert!(has_pair(
            "-nic",
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40123-:5432"
        ));
        assert!(has_pair("-serial", "file:/t/console.log"));
        assert!(has_pair("-monitor", "none"));
    }

    #[test]
    fn boot_guard_stops_the_child_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config();
        cfg.qemu_log = dir.path().join("qemu.log");
        // A stand-in that ignores its arguments and would run for a minute.
        let fake = dir.path().join("fake-qemu");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // Another test thread forking right after the write can briefly
        // hold the file open, which makes exec fail with ETXTBSY.
        let mut q = (0..50)
            .find_map(|_| match Qemu::spawn(fake.to_str().unwrap(), &cfg) {
                Ok(q) => Some(q),
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => {
                    thread::sleep(Duration::from_millis(20));
                    None
                }
                Err(e) => panic!("{e}"),
            })
            .unwrap();
        let pid = q.child.id();
        assert!(q.try_wait().unwrap().is_none());
        let start = Instant::now();
        drop(q);
        assert!(start.elapsed() < TERM_GRACE, "sleep obeys SIGTERM");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
