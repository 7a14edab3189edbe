//! Partition tables and filesystems of a raw disk image, read from its
//! bytes.
//!
//! GPT goes through the `gpt` crate; MBR (with logical partitions) is
//! small enough to read here; a disk with no table at all but an ext2/3/4
//! superblock at byte 1024 is one whole-disk filesystem. Filesystems are
//! recognised by their magic numbers only, and ext4 is opened with
//! `ext4-view` over a reader confined to the partition's bytes.

use std::collections::HashSet;
use std::error::Error;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ext4_view::{Ext4, Ext4Error, Ext4Read};
use gpt::disk::LogicalBlockSize;
use serde::Serialize;

use super::ImageError;

const MBR_TABLE: usize = 0x1BE;
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MBR_PROTECTIVE: u8 = 0xEE;
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
/// Far more logical partitions than any real disk has; stops a looping or
/// absurd EBR chain.
const MAX_LOGICAL: usize = 128;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// The only GPT entry size the `gpt` crate reads (it asserts on others).
const GPT_ENTRY_SIZE: u32 = 128;
/// 128 is standard; tools allow more, but not this many (8 MiB of entries).
const GPT_MAX_ENTRIES: u32 = 65536;
const EXT_SUPERBLOCK: u64 = 1024;
const EXT_MAGIC: [u8; 2] = [0x53, 0xEF];

/// Which kind of partition table the disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// GUID partition table (behind a protective MBR).
    Gpt,
    /// DOS/MBR table, possibly with logical partitions.
    Mbr,
    /// No table: the whole disk is one filesystem.
    None,
}

impl TableKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
            TableKind::None => "none",
        }
    }
}

/// A filesystem (or swap) recognised by its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext2: no journal.
    Ext2,
    /// ext3: a journal, no ext4-only feature.
    Ext3,
    /// ext4.
    Ext4,
    /// Linux swap.
    Swap,
    /// FAT12/16/32.
    Vfat,
}

impl Filesystem {
    /// The name used in reports (`ext4`, `swap`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext2 => "ext2",
            Filesystem::Ext3 => "ext3",
            Filesystem::Ext4 => "ext4",
            Filesystem::Swap => "swap",
            Filesystem::Vfat => "vfat",
        }
    }

    /// True for the ext family, which `ext4-view` reads.
    pub fn is_ext(self) -> bool {
        matches!(self, Filesystem::Ext2 | Filesystem::Ext3 | Filesystem::Ext4)
    }
}

/// One partition, or the whole disk when there is no table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based number as Linux numbers it (`sda2`); logical MBR partitions
    /// start at 5; 0 for a whole-disk filesystem.
    pub number: u32,
    /// Human name of the partition type (`BIOS boot`, `Linux filesystem`,
    /// `PReP boot`, `Linux swap`, ...), `unknown` if not in our table.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The raw type: GPT type GUID (upper case) or MBR code (`0x83`);
    /// `null` for a whole-disk filesystem.
    pub type_id: Option<String>,
    /// GPT partition name, when set.
    pub name: Option<String>,
    /// Offset from the start of the disk, in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// What its first bytes say it holds, if recognised.
    pub filesystem: Option<Filesystem>,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The table kind.
    pub table: TableKind,
    /// Size of the raw disk in bytes.
    pub disk_size: u64,
    /// Partitions in table order.
    pub partitions: Vec<Partition>,
}

/// Reads the partition table of the raw disk image open in `file`;
/// `path` is only for messages.
pub fn read_layout(file: &File, path: &Path) -> Result<Layout, ImageError> {
    let io_err = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let disk_size = file.metadata().map_err(io_err)?.len();
    let sector0 = read_probe(file, 0, 512).map_err(io_err)?;

    let mbr = sector0.as_deref().and_then(mbr_entries);
    let gpt_signed = [512u64, 4096]
        .iter()
        .map(|&o| read_probe(file, o, 8))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err)?
        .iter()
        .any(|s| s.as_deref() == Some(GPT_SIGNATURE.as_slice()));
    let protective = mbr
        .as_ref()
        .is_some_and(|e| e.iter().any(|e| e.kind == MBR_PROTECTIVE));

    let (table, mut partitions) = if protective || gpt_signed {
        (TableKind::Gpt, read_gpt(file, path, disk_size)?)
    } else if let Some(entries) = mbr.filter(|e| e.iter().any(|e| e.is_used())) {
        (TableKind::Mbr, read_mbr(file, &entries).map_err(io_err)?)
    } else if probe_filesystem(file, 0)
        .map_err(io_err)?
        .is_some_and(Filesystem::is_ext)
    {
        let whole = Partition {
            number: 0,
            type_name: "whole disk".into(),
            type_id: None,
            name: None,
            start: 0,
            size: disk_size,
            filesystem: None,
        };
        (TableKind::None, vec![whole])
    } else {
        return Err(ImageError::NotADiskImage {
            path: path.to_path_buf(),
            why: "no partition table and no ext4 filesystem".into(),
        });
    };
    for p in &mut partitions {
        p.filesystem = probe_filesystem(file, p.start).map_err(io_err)?;
    }
    Ok(Layout {
        table,
        disk_size,
        partitions,
    })
}

/// Opens the ext2/3/4 filesystem in `part` of the disk open in `file`.
pub fn open_ext4(file: &File, part: &Partition) -> Result<Ext4, Ext4Error> {
    let file = file.try_clone().map_err(|e| Ext4Error::Io(Box::new(e)))?;
    Ext4::load(Box::new(PartReader {
        file,
        offset: part.start,
        size: part.size,
    }))
}

/// An [`Ext4Read`] confined to one partition of a raw disk image, so a
/// corrupt filesystem cannot make us read its neighbours.
#[derive(Debug)]
pub struct PartReader {
    file: File,
    offset: u64,
    size: u64,
}

impl Ext4Read for PartReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn Error + Send + Sync + 'static>> {
        let len = dst.len() as u64;
        let at = start_byte
            .checked_add(len)
            .filter(|&end| end <= self.size)
            .and_then(|_| self.offset.checked_add(start_byte))
            .ok_or_else(|| {
                format!(
                    "read of {len} bytes at {start_byte} goes past the end of the {}-byte partition",
                    self.size
                )
            })?;
        self.file.read_exact_at(dst, at).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                format!("the disk ends inside the partition (reading {len} bytes at {at})").into()
            } else {
                Box::new(e) as Box<dyn Error + Send + Sync>
            }
        })
    }
}

/// `len` bytes at `offset`, or `None` if the file ends first.
fn read_probe(file: &File, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One of the four slots of an MBR or EBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MbrEntry {
    kind: u8,
    first_lba: u32,
    sectors: u32,
}

impl MbrEntry {
    fn is_used(&self) -> bool {
        self.kind != 0 && self.sectors != 0
    }
}

/// The four entries of a boot sector, or `None` when it is not an MBR:
/// no 0x55AA signature, or a boot flag other than 0x00/0x80 (which is how
/// random bytes and filesystem boot sectors usually give themselves away).
fn mbr_entries(sector: &[u8]) -> Option<[MbrEntry; 4]> {
    if sector.len() < 512 || sector[510..512] != MBR_SIGNATURE {
        return None;
    }
    let mut out = [MbrEntry {
        kind: 0,
        first_lba: 0,
        sectors: 0,
    }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let b = &sector[MBR_TABLE + 16 * i..MBR_TABLE + 16 * (i + 1)];
        if b[0] != 0 && b[0] != 0x80 {
            return None;
        }
        *e = MbrEntry {
            kind: b[4],
            first_lba: le32(b, 8),
            sectors: le32(b, 12),
        };
    }
    Some(out)
}

fn read_mbr(file: &File, entries: &[MbrEntry; 4]) -> io::Result<Vec<Partition>> {
    let mut parts = Vec::new();
    let mut logical = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if !e.is_used() {
            continue;
        }
        parts.push(mbr_partition(
            i as u32 + 1,
            e.kind,
            u64::from(e.first_lba),
            e.sectors,
        ));
        if MBR_EXTENDED.contains(&e.kind) && logical.is_empty() {
            logical = read_logical(file, u64::from(e.first_lba))?;
        }
    }
    parts.extend(logical);
    Ok(parts)
}

/// Follows the EBR chain of the extended partition starting at `base`.
fn read_logical(file: &File, base: u64) -> io::Result<Vec<Partition>> {
    let mut parts = Vec::new();
    let mut seen = HashSet::new();
    let mut ebr = base;
    while parts.len() < MAX_LOGICAL && seen.insert(ebr) {
        let Some(sector) = read_probe(file, ebr * 512, 512)? else {
            break;
        };
        let Some(entries) = mbr_entries(&sector) else {
            break;
        };
        let [this, next, ..] = entries;
        if this.is_used() {
            let number = 5 + parts.len() as u32;
            parts.push(mbr_partition(
                number,
                this.kind,
                ebr + u64::from(this.first_lba),
                this.sectors,
            ));
        }
        if !MBR_EXTENDED.contains(&next.kind) || next.first_lba == 0 {
            break;
        }
        // Links are relative to the extended partition, not to this EBR.
        ebr = base + u64::from(next.first_lba);
    }
    Ok(parts)
}

fn mbr_partition(number: u32, kind: u8, first_lba: u64, sectors: u32) -> Partition {
    Partition {
        number,
        type_name: mbr_type_name(kind).into(),
        type_id: Some(format!("0x{kind:02x}")),
        name: None,
        start: first_lba * 512,
        size: u64::from(sectors) * 512,
        filesystem: None,
    }
}

fn mbr_type_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0E => "FAT16",
        0x05 => "Extended",
        0x07 => "HPFS/NTFS/exFAT",
        0x0B | 0x0C => "W95 FAT32",
        0x0F => "W95 Extended (LBA)",
        0x41 => "PPC PReP boot",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8E => "Linux LVM",
        0xEE => "GPT protective",
        0xEF => "EFI (FAT-12/16/32)",
        0xFD => "Linux raid autodetect",
        _ => "unknown",
    }
}

fn read_gpt(file: &File, path: &Path, disk_size: u64) -> Result<Vec<Partition>, ImageError> {
    let io_err = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |why: String| ImageError::NotADiskImage {
        path: path.to_path_buf(),
        why: format!("its GPT cannot be read: {why}"),
    };
    let mut last_err = String::from("no GPT header");
    for lb in [LogicalBlockSize::Lb512, LogicalBlockSize::Lb4096] {
        let lb_bytes = u64::from(lb);
        if let Some(why) = unsupported_gpt_header(file, lb_bytes, disk_size).map_err(io_err)? {
            return Err(bad(why));
        }
        let device = file.try_clone().map_err(io_err)?;
        let disk = match gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb)
            .open_from_device(device)
        {
            Ok(d) => d,
            Err(e) => {
                last_err = e.to_string();
                continue;
            }
        };
        let mut parts = Vec::new();
        for (&number, p) in disk.partitions() {
            if !p.is_used() {
                continue;
            }
            let (start, size) = match (p.bytes_start(lb), p.bytes_len(lb)) {
                (Ok(s), Ok(l)) => (s, l),
                (Err(e), _) | (_, Err(e)) => return Err(bad(format!("partition {number}: {e}"))),
            };
            let guid = p.part_type_guid.guid.to_string().to_uppercase();
            parts.push(Partition {
                number,
                type_name: gpt_type_name(&guid).into(),
                type_id: Some(guid),
                name: Some(p.name.clone()).filter(|n| !n.is_empty()),
                start,
                size,
                filesystem: None,
            });
        }
        return Ok(parts);
    }
    Err(bad(last_err))
}

/// Why a GPT header (primary or backup) is one we refuse before the `gpt`
/// crate sees it: it asserts that entries are 128 bytes (a panic on any
/// other size), and reads every one of up to 2^32 entries (hours on a
/// forged count).
fn unsupported_gpt_header(file: &File, lb: u64, disk_size: u64) -> io::Result<Option<String>> {
    let backup = disk_size.checked_sub(lb);
    for at in [Some(lb), backup].into_iter().flatten() {
        let Some(h) = read_probe(file, at, 92)? else {
            continue;
        };
        if !h.starts_with(GPT_SIGNATURE) {
            continue;
        }
        let (count, size) = (le32(&h, 80), le32(&h, 84));
        if size != GPT_ENTRY_SIZE {
            return Ok(Some(format!(
                "{size}-byte partition entries are not supported"
            )));
        }
        if count > GPT_MAX_ENTRIES {
            return Ok(Some(format!(
                "{count} partition entries is implausibly many"
            )));
        }
    }
    Ok(None)
}

fn gpt_type_name(guid: &str) -> &'static str {
    match guid {
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "9E1A2D38-C612-4316-AA26-8B49521E5A8B" => "PReP boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "C31C45E6-3F39-412E-80FB-4809C4980599" => "Linux root (PPC64 LE)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "3B8F8425-20E0-4F3B-907F-1A25A76F98E8" => "Linux server data",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        _ => "unknown",
    }
}

/// Recognises the filesystem starting at byte `start`, if any.
fn probe_filesystem(file: &File, start: u64) -> io::Result<Option<Filesystem>> {
    if let Some(sb) = read_probe(file, start + EXT_SUPERBLOCK, 1024)?
        && sb[0x38..0x3A] == EXT_MAGIC
    {
        let compat = le32(&sb, 0x5C);
        let incompat = le32(&sb, 0x60);
        let ro_compat = le32(&sb, 0x64);
        // extents | 64bit | flex_bg, and huge_file | gdt_csum |
        // dir_nlink | extra_isize | metadata_csum: what makes it ext4.
        let ext4 = incompat & (0x40 | 0x80 | 0x200) != 0
            || ro_compat & (0x8 | 0x10 | 0x20 | 0x40 | 0x400) != 0;
        let fs = if ext4 {
            Filesystem::Ext4
        } else if compat & 0x4 != 0 {
            Filesystem::Ext3
        } else {
            Filesystem::Ext2
        };
        return Ok(Some(fs));
    }
    // The swap signature ends the first page; ppc64le uses 64 KiB pages.
    for page in [4096u64, 65536] {
        if let Some(sig) = read_probe(file, start + page - 10, 10)?
            && (sig == b"SWAPSPACE2" || sig == b"SWAP-SPACE")
        {
            return Ok(Some(Filesystem::Swap));
        }
    }
    if let Some(boot) = read_probe(file, start, 512)? {
        let fat = boot[510..512] == MBR_SIGNATURE
            && (boot[0x36..0x39] == *b"FAT" || boot[0x52..0x57] == *b"FAT32")
            && le16(&boot, 11).is_power_of_two();
        if fat {
            return Ok(Some(Filesystem::Vfat));
        }
    }
    Ok(None)
}

/// Builders of small disk images for tests: no root needed, only files,
/// `sfdisk`, `mkfs.ext4` and `debugfs`.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;

    /// One MiB.
    pub const MIB: u64 = 1 << 20;

    /// The uid given to the fixture user `debian`.
    pub const DEBIAN_UID: u32 = 1000;

    /// The kernel version in the fixture's /boot and dpkg status.
    pub const KERNEL: &str = "6.1.0-28-amd64";

    /// Debian's name for the host architecture, so the fixture's dpkg
    /// data agrees with the host's /bin/sh copied into it.
    pub fn host_dpkg_arch() -> &'static str {
        crate::arch::Arch::host()
            .map(|a| a.debian())
            .unwrap_or("amd64")
    }

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A minimal Debian root tree under `dir/name`; `manifest` becomes
    /// /etc/dbimage/manifest.json when given.
    pub fn root_tree(dir: &Path, name: &str, manifest: Option<&str>) -> PathBuf {
        let root = dir.join(name);
        write(
            &root.join("usr/lib/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n",
        );
        fs::create_dir_all(root.join("etc")).unwrap();
        // As on Debian: a relative link, resolved inside the image.
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        // Merged /usr: /bin is a link too, and sh a link within it.
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::copy("/bin/sh", root.join("usr/bin/dash")).unwrap();
        symlink("dash", root.join("usr/bin/sh")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();

        let arch = host_dpkg_arch();
        write(
            &root.join("var/lib/dpkg/status"),
            &format!(
                "Package: base-files\nStatus: install ok installed\nPriority: required\n\
                 Architecture: {arch}\nVersion: 12.4+deb12u8\nDescription: Debian base system\n \
                 miscellaneous files\n\n\
                 Package: redis-server\nStatus: install ok installed\nArchitecture: {arch}\n\
                 Version: 5:7.0.15-1~deb12u1\nDepends: redis-tools\n\n\
                 Package: postgresql-common\nStatus: install ok installed\nArchitecture: all\n\
                 Version: 248\n\n\
                 Package: mariadb-server\nStatus: deinstall ok config-files\nArchitecture: {arch}\n\
                 Version: 1:10.11.6-0+deb12u1\n\n\
                 Package: linux-image-{KERNEL}\nStatus: install ok installed\nArchitecture: {arch}\n\
                 Version: 6.1.119-1\n\n\
                 Package: linux-image-amd64\nStatus: install ok installed\nArchitecture: {arch}\n\
                 Version: 6.1.119-1\n"
            ),
        );
        write(
            &root.join("etc/passwd"),
            &format!(
                "root:x:0:0:root:/root:/bin/bash\n\
                 debian:x:{DEBIAN_UID}:{DEBIAN_UID}:Debian:/home/debian:/bin/bash\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        );
        let keys = root.join("home/debian/.ssh/authorized_keys");
        write(
            &keys,
            "# managed by dbimage\n\
             ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEYMATERIALSECRET alice@laptop\n\
             no-port-forwarding,command=\"echo a b\" ssh-rsa AAAAB3NzaC1yc2EKEYMATERIALSECRET bob key\n",
        );
        chmod(&keys, 0o600);
        chmod(&root.join("home/debian/.ssh"), 0o700);
        let root_keys = root.join("root/.ssh/authorized_keys");
        write(
            &root_keys,
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhKEYMATERIALSECRET\n",
        );
        chmod(&root_keys, 0o644);
        write(
            &root.join(format!("boot/vmlinuz-{KERNEL}")),
            "not really a kernel",
        );
        write(&root.join(format!("boot/config-{KERNEL}")), "CONFIG_X=y\n");
        if let Some(m) = manifest {
            write(&root.join("etc/dbimage/manifest.json"), m);
        }
        root
    }

    fn run(cmd: &mut Command) {
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An ext4 filesystem image of `size_mib` at `dir/name`, filled from
    /// `tree` if given; the fixture's authorized_keys get real owners.
    pub fn ext4(dir: &Path, name: &str, tree: Option<&Path>, size_mib: u64) -> PathBuf {
        let img = dir.join(name);
        fs::File::create(&img)
            .unwrap()
            .set_len(size_mib * MIB)
            .unwrap();
        let mut mkfs = Command::new("mkfs.ext4");
        mkfs.args(["-q", "-F"]);
        if let Some(t) = tree {
            mkfs.arg("-d").arg(t);
        }
        run(mkfs.arg(&img));
        // mkfs -d copies the owner of the source files, which is whoever
        // runs the tests; debugfs sets the owners a real image would have.
        for (path, uid) in [
            ("/home/debian/.ssh/authorized_keys", DEBIAN_UID),
            ("/root/.ssh/authorized_keys", 0),
        ] {
            if tree.is_some_and(|t| t.join(&path[1..]).exists()) {
                run(Command::new("debugfs")
                    .arg("-w")
                    .arg("-R")
                    .arg(format!("set_inode_field {path} uid {uid}"))
                    .arg(&img));
            }
        }
        img
    }

    /// A disk image of `size_mib` at `dir/name`, partitioned by the sfdisk
    /// `script` if given, with each `(offset, file)` copied in at `offset`.
    pub fn disk(
        dir: &Path,
        name: &str,
        size_mib: u64,
        script: Option<&str>,
        fills: &[(u64, &Path)],
    ) -> PathBuf {
        let img = dir.join(name);
        fs::File::create(&img)
            .unwrap()
            .set_len(size_mib * MIB)
            .unwrap();
        if let Some(script) = script {
            let mut child = Command::new("sfdisk")
                .arg("-q")
                .arg(&img)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "sfdisk: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let disk = fs::OpenOptions::new().write(true).open(&img).unwrap();
        for (offset, file) in fills {
            disk.write_all_at(&fs::read(file).unwrap(), *offset)
                .unwrap();
        }
        img
    }

    /// GPT: BIOS boot at 1 MiB, a 24 MiB root filesystem at 2 MiB.
    pub fn gpt_disk(dir: &Path, manifest: Option<&str>) -> PathBuf {
        let tree = root_tree(dir, "tree", manifest);
        let fs = ext4(dir, "root.ext4", Some(&tree), 24);
        disk(
            dir,
            "gpt.raw",
            27,
            Some(
                "label: gpt\nstart=2048,size=2048,type=21686148-6449-6E6F-744E-656564454649\n\
                 start=4096,size=49152,type=L\n",
            ),
            &[(2 * MIB, &fs)],
        )
    }

    /// Converts `raw` to QCOW2 beside it.
    pub fn qcow2(raw: &Path) -> PathBuf {
        let out = raw.with_extension("qcow2");
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(&out));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::fixtures::*;
    use super::*;

    fn layout(path: &Path) -> Result<Layout, ImageError> {
        read_layout(&File::open(path).unwrap(), path)
    }

    fn has_os_release(path: &Path, part: &Partition) -> bool {
        let fs = open_ext4(&File::open(path).unwrap(), part).unwrap();
        fs.exists("/etc/os-release").unwrap()
    }

    #[test]
    fn gpt_with_bios_boot_and_root() {
        let dir = tempfile::tempdir().unwrap();
        let img = gpt_disk(dir.path(), None);
        let l = layout(&img).unwrap();
        assert_eq!(l.table, TableKind::Gpt);
        assert_eq!(l.disk_size, 27 * MIB);
        let p = &l.partitions;
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].number, p[0].type_name.as_str()), (1, "BIOS boot"));
        assert_eq!((p[0].start, p[0].size, p[0].filesystem), (MIB, MIB, None));
        assert_eq!(
            (p[1].number, p[1].type_name.as_str()),
            (2, "Linux filesystem")
        );
        assert_eq!(
            p[1].type_id.as_deref(),
            Some("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        );
        assert_eq!((p[1].start, p[1].size), (2 * MIB, 24 * MIB));
        assert_eq!(p[1].filesystem, Some(Filesystem::Ext4));
        assert!(has_os_release(&img, &p[1]));
    }

    #[test]
    fn gpt_with_prep_before_root() {
        let dir = tempfile::tempdir().unwrap();
        let tree = root_tree(dir.path(), "tree", None);
        let fs = ext4(dir.path(), "root.ext4", Some(&tree), 24);
        let img = disk(
            dir.path(),
            "prep.raw",
            34,
            Some(
                "label: gpt\nstart=2048,size=16384,type=9E1A2D38-C612-4316-AA26-8B49521E5A8B\n\
                 start=18432,size=49152,type=L\n",
            ),
            &[(9 * MIB, &fs)],
        );
        let l = layout(&img).unwrap();
        assert_eq!(l.partitions[0].type_name, "PReP boot");
        assert_eq!(l.partitions[0].size, 8 * MIB);
        assert_eq!(l.partitions[1].start, 9 * MIB);
        assert!(has_os_release(&img, &l.partitions[1]));
    }

    #[test]
    fn mbr_with_prep_before_root() {
        let dir = tempfile::tempdir().unwrap();
        let tree = root_tree(dir.path(), "tree", None);
        let fs = ext4(dir.path(), "root.ext4", Some(&tree), 24);
        let img = disk(
            dir.path(),
            "mbr.raw",
            33,
            Some("label: dos\nstart=2048,size=16384,type=41\nstart=18432,size=49152,type=83\n"),
            &[(9 * MIB, &fs)],
        );
        let l = layout(&img).unwrap();
        assert_eq!(l.table, TableKind::Mbr);
        let p = &l.partitions;
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].type_name.as_str(), p[0].type_id.as_deref()),
            ("PPC PReP boot", Some("0x41"))
        );
        assert_eq!(
            (p[1].type_name.as_str(), p[1].start, p[1].size),
            ("Linux", 9 * MIB, 24 * MIB)
        );
        assert_eq!(p[1].filesystem, Some(Filesystem::Ext4));
        assert!(has_os_release(&img, &p[1]));
    }

    #[test]
    fn mbr_logical_partitions_are_numbered_from_5() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk(
            dir.path(),
            "ext.raw",
            12,
            Some(
                "label: dos\nstart=2048,size=4096,type=83\nstart=6144,size=16384,type=5\n\
                 start=8192,size=4096,type=82\nstart=14336,size=4096,type=83\n",
            ),
            &[],
        );
        let l = layout(&img).unwrap();
        let got: Vec<_> = l
            .partitions
            .iter()
            .map(|p| (p.number, p.type_name.as_str(), p.start))
            .collect();
        assert_eq!(
            got,
            [
                (1, "Linux", MIB),
                (2, "Extended", 3 * MIB),
                (5, "Linux swap", 4 * MIB),
                (6, "Linux", 7 * MIB)
            ]
        );
    }

    #[test]
    fn whole_disk_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let tree = root_tree(dir.path(), "tree", None);
        let img = ext4(dir.path(), "whole.ext4", Some(&tree), 24);
        let l = layout(&img).unwrap();
        assert_eq!(l.table, TableKind::None);
        assert_eq!(l.partitions.len(), 1);
        let p = &l.partitions[0];
        assert_eq!(
            (p.number, p.start, p.size, p.type_id.clone()),
            (0, 0, 24 * MIB, None)
        );
        assert_eq!(p.filesystem, Some(Filesystem::Ext4));
        assert!(has_os_release(&img, p));
    }

    #[test]
    fn swap_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk(
            dir.path(),
            "swap.raw",
            8,
            Some("label: gpt\nstart=2048,type=S\n"),
            &[],
        );
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(b"SWAPSPACE2", MIB + 4096 - 10).unwrap();
        let l = layout(&img).unwrap();
        assert_eq!(l.partitions[0].type_name, "Linux swap");
        assert_eq!(l.partitions[0].filesystem, Some(Filesystem::Swap));
    }

    #[test]
    fn random_bytes_and_blank_disks_are_not_images() {
        let dir = tempfile::tempdir().unwrap();
        let random = dir.path().join("random");
        let bytes: Vec<u8> = (0..MIB)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        fs::write(&random, bytes).unwrap();
        let blank = disk(dir.path(), "blank", 4, None, &[]);
        for img in [random, blank] {
            let err = layout(&img).unwrap_err();
            assert!(matches!(err, ImageError::NotADiskImage { .. }), "{err}");
            assert!(err.to_string().contains("no partition table"), "{err}");
        }
    }

    #[test]
    fn reader_stays_inside_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk(dir.path(), "d", 2, None, &[]);
        let mut r = PartReader {
            file: File::open(&img).unwrap(),
            offset: MIB,
            size: 4096,
        };
        let mut buf = [0u8; 512];
        assert!(r.read(3584, &mut buf).is_ok());
        let err = r.read(3585, &mut buf).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
        let mut r = PartReader {
            file: File::open(&img).unwrap(),
            offset: 2 * MIB - 256,
            size: 4096,
        };
        let err = r.read(0, &mut buf).unwrap_err();
        assert!(err.to_string().contains("disk ends"), "{err}");
    }

    #[test]
    fn forged_gpt_headers_are_refused_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let img = disk(
            dir.path(),
            "odd.raw",
            4,
            Some("label: gpt\nstart=2048,type=L\n"),
            &[],
        );
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&256u32.to_le_bytes(), 512 + 84).unwrap();
        let err = layout(&img).unwrap_err();
        assert!(
            err.to_string().contains("256-byte partition entries"),
            "{err}"
        );
        f.write_all_at(&128u32.to_le_bytes(), 512 + 84).unwrap();
        f.write_all_at(&u32::MAX.to_le_bytes(), 512 + 80).unwrap();
        let err = layout(&img).unwrap_err();
        assert!(err.to_string().contains("implausibly many"), "{err}");
    }
}
