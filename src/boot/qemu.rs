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

use crate::arch::Arch;

/// The emulator for amd64 guests.
pub const QEMU_X86_64: &str = "qemu-system-x86_64";

/// The emulator for ppc64le guests.
pub const QEMU_PPC64: &str = "qemu-system-ppc64";

/// How QEMU emulates the machine an image of one architecture boots on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// The emulator.
    pub program: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// Board and CPU.
    board: &'static [&'static str],
    /// The guest's device for the console that `-serial` captures; the
    /// image's kernel command line names the same one.
    pub console_tty: &'static str,
    /// Guest memory in MiB unless asked otherwise.
    pub memory_mib: u32,
    /// How many times longer than an amd64 guest it takes to answer.
    pub slowdown: u32,
}

/// amd64 guests.
pub const AMD64: Machine = Machine {
    program: QEMU_X86_64,
    package: "qemu-system-x86",
    // `max` exposes every instruction TCG emulates (AVX and up on QEMU >=
    // 7.2), which some database builds require: MongoDB >= 5 will not
    // start on the default qemu64 CPU.
    board: &["-cpu", "max"],
    console_tty: "ttyS0",
    memory_mib: 1024,
    slowdown: 1,
};

/// ppc64le guests: a paravirtualized POWER9 partition, SLOF as firmware.
pub const PPC64LE: Machine = Machine {
    program: QEMU_PPC64,
    package: "qemu-system-ppc",
    // TCG cannot emulate the Spectre mitigations and the count-cache flush
    // assist that pseries asks for by default; marking them broken/off up
    // front keeps QEMU's log free of a warning per capability (the same
    // set QEMU's own tests use).
    board: &[
        "-M",
        "pseries,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off",
        "-cpu",
        "POWER9",
    ],
    // spapr-vty, the hypervisor console, is the only console a pseries
    // guest has; the image's kernel writes to it as hvc0.
    console_tty: "hvc0",
    // Debian's ppc64el kernel and initramfs are larger, and 64 KiB pages
    // make every process cost more memory.
    memory_mib: 2048,
    // Measured by hand: cloud-init reached after about 90 s against 30 s
    // for amd64, both under TCG.
    slowdown: 3,
};

impl Machine {
    /// The machine that boots images of `arch`.
    pub fn of(arch: Arch) -> Machine {
        match arch {
            Arch::Amd64 => AMD64,
            Arch::Ppc64le => PPC64LE,
        }
    }
}

/// How long QEMU gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The emulated machine.
    pub machine: Machine,
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
    /// File that receives the guest's console ([`Machine::console_tty`]).
    pub console_log: PathBuf,
    /// File that receives QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
}

impl QemuConfig {
    /// The arguments after the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut serial = OsString::from("file:");
        serial.push(&self.console_log);
        let mut args: Vec<OsString> = Vec::new();
        let mut add = |a: &str| args.push(a.into());
        // Software emulation works on any host, including CI runners and
        // containers without /dev/kvm.
        add("-accel");
        add("tcg");
        self.machine.board.iter().for_each(|a| add(a));
        add("-m");
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
        args.extend(disk(&self.image, "root", "format=qcow2", ",bootindex=0"));
        args.extend(disk(&self.seed, "seed", "format=raw,readonly=on", ""));
        args.push("-serial".into());
        args.push(serial);
        args
    }
}

/// `-drive` and `-device` for one virtio-blk-pci disk. The boot disk is
/// named explicitly: otherwise the firmware (SLOF in particular) picks
/// whichever disk it finds first, possibly the seed.
fn disk(file: &std::path::Path, id: &str, options: &str, device_extra: &str) -> [OsString; 4] {
    let mut drive = OsString::from("file=");
    drive.push(escape_commas(file.as_os_str()));
    drive.push(format!(",if=none,id={id},{options}"));
    let device = format!("virtio-blk-pci,drive={id}{device_extra}");
    ["-drive".into(), drive, "-device".into(), device.into()]
}

/// QEMU reads a comma in an option value as the start of the next option
/// unless it is doubled: a file name must not be able to add options.
fn escape_commas(value: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
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
            machine: AMD64,
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

    fn shown(cfg: &QemuConfig) -> Vec<String> {
        cfg.args().iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    fn has_pair(args: &[String], a: &str, b: &str) -> bool {
        args.windows(2).any(|w| w[0] == a && w[1] == b)
    }

    #[test]
    fn boot_qemu_args_are_safe_and_complete() {
        let args = shown(&config());
        let has_pair = |a: &str, b: &str| has_pair(&args, a, b);
        assert!(has_pair("-accel", "tcg"), "{args:?}");
        assert!(has_pair("-cpu", "max"), "{args:?}");
        assert!(has_pair("-m", "1024") && has_pair("-smp", "2"), "{args:?}");
        assert!(
            args.iter().any(|a| a == "-snapshot"),
            "the image must never be written"
        );
        assert!(
            has_pair("-drive", "file=/i/pg 15.qcow2,if=none,id=root,format=qcow2"),
            "{args:?}"
        );
        assert!(has_pair("-device", "virtio-blk-pci,drive=root,bootindex=0"), "{args:?}");
        assert!(has_pair(
            "-drive",
            "file=/t/seed.img,if=none,id=seed,format=raw,readonly=on"
        ));
        assert!(has_pair("-device", "virtio-blk-pci,drive=seed"), "{args:?}");
        assert!(has_pair(
            "-nic",
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40123-:5432"
        ));
        assert!(has_pair("-serial", "file:/t/console.log"));
        assert!(has_pair("-monitor", "none"));
    }

    #[test]
    fn boot_qemu_args_for_ppc64le_are_a_pseries_power9() {
        let cfg = QemuConfig { machine: Machine::of(Arch::Ppc64le), memory_mib: 2048, ..config() };
        let args = shown(&cfg);
        assert_eq!(cfg.machine.program, "qemu-system-ppc64");
        assert!(has_pair(&args, "-accel", "tcg"), "{args:?}");
        assert!(args.windows(2).any(|w| w[0] == "-M" && w[1].starts_with("pseries,")), "{args:?}");
        assert!(has_pair(&args, "-cpu", "POWER9") && has_pair(&args, "-m", "2048"), "{args:?}");
        assert!(has_pair(&args, "-device", "virtio-blk-pci,drive=root,bootindex=0"), "{args:?}");
        // Same network as amd64: only 127.0.0.1 on the host side.
        assert!(has_pair(&args, "-nic", "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40123-:5432"));
        assert_eq!(cfg.machine.console_tty, "hvc0");
        assert_eq!(Machine::of(Arch::Amd64), AMD64);
    }

    #[test]
    fn boot_qemu_file_names_cannot_add_options() {
        let cfg = QemuConfig { image: "/i/a,snapshot=off,file.locking=off.qcow2".into(), ..config() };
        let args = shown(&cfg);
        assert!(
            has_pair(&args, "-drive", "file=/i/a,,snapshot=off,,file.locking=off.qcow2,if=none,id=root,format=qcow2"),
            "{args:?}"
        );
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
