//! Where partitions are made: disk size, the GPT layout per architecture,
//! writing the table, and making the root filesystem.
//!
//! amd64: a 1 MiB BIOS boot partition (GRUB's core image lives there on
//! GPT) then the root filesystem. ppc64le: an 8 MiB PReP partition (the
//! firmware loads GRUB from it) then the root filesystem. Both are GPT
//! with a protective MBR; partitions start on 1 MiB boundaries.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use gpt::partition_types::{self, Type};
use serde::Serialize;

use crate::arch::Arch;
use crate::run::{Cmd, RunError};

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

/// Errors making the disk.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The disk file could not be created or written.
    #[error("writing disk image {path}: {source}")]
    Io {
        /// The disk file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The gpt crate refused the table.
    #[error("writing the partition table of {path}: {msg}")]
    Gpt {
        /// The disk file.
        path: PathBuf,
        /// What gpt said.
        msg: String,
    },
    /// mkfs failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// GRUB's core image on a BIOS machine with a GPT disk.
    BiosBoot,
    /// PowerPC PReP boot partition holding GRUB for IEEE 1275 firmware.
    Prep,
    /// The root filesystem.
    Root,
}

impl Role {
    fn gpt_type(self) -> Type {
        match self {
            Role::BiosBoot => partition_types::BIOS,
            Role::Prep => partition_types::PPC_BOOT,
            Role::Root => partition_types::LINUX_FS,
        }
    }
}

/// One planned partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based number in the table (`/dev/loopNpX`).
    pub number: u32,
    /// GPT partition name.
    pub name: &'static str,
    /// What it holds.
    pub role: Role,
    /// First sector (512 bytes).
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
}

#[cfg(test)]
impl Partition {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// The whole disk: its size and partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Total size in bytes.
    pub size: u64,
    /// Partitions in table order.
    pub partitions: Vec<Partition>,
}

impl Layout {
    /// The GPT layout for `arch` on a disk of `size_mib` MiB.
    pub fn for_arch(arch: Arch, size_mib: u64) -> Layout {
        let (boot_role, boot_name, boot_mib) = match arch {
            Arch::Amd64 => (Role::BiosBoot, "BIOS-BOOT", 1),
            Arch::Ppc64le => (Role::Prep, "PReP", 8),
        };
        let size = size_mib * MIB;
        let boot_first = MIB / SECTOR;
        let boot_last = boot_first + boot_mib * MIB / SECTOR - 1;
        // The backup GPT takes the last 33 sectors; stay clear of them and
        // keep the end aligned too.
        let root_first = boot_last + 1;
        let root_last = size / SECTOR - MIB / SECTOR - 1;
        Layout {
            size,
            partitions: vec![
                Partition {
                    number: 1,
                    name: boot_name,
                    role: boot_role,
                    first_lba: boot_first,
                    last_lba: boot_last,
                },
                Partition {
                    number: 2,
                    name: "root",
                    role: Role::Root,
                    first_lba: root_first,
                    last_lba: root_last,
                },
            ],
        }
    }

    /// The root filesystem's partition.
    pub fn root(&self) -> &Partition {
        // for_arch always makes one; keep the lookup total anyway.
        self.partitions
            .iter()
            .find(|p| p.role == Role::Root)
            .unwrap_or(&self.partitions[self.partitions.len() - 1])
    }
}

/// Disk size in MiB for a tree of `tree_bytes`: a quarter more for
/// filesystem overhead and first-boot growth, plus room for the boot
/// partition and GPT, rounded up to 64 MiB. cloud-init grows the root
/// filesystem to the flavor's disk at first boot, so small is right.
pub fn size_for_tree(tree_bytes: u64) -> u64 {
    let want = tree_bytes + tree_bytes / 4 + 256 * MIB;
    want.div_ceil(64 * MIB) * 64
}

/// Creates `path` as a sparse file of the layout's size and writes a
/// protective MBR and the GPT.
pub fn write_disk(path: &Path, layout: &Layout) -> Result<(), LayoutError> {
    let io_err = |source| LayoutError::Io { path: path.to_path_buf(), source };
    let gpt_err = |e: &dyn std::fmt::Display| LayoutError::Gpt {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err)?;
    file.set_len(layout.size).map_err(io_err)?;

    let sectors = layout.size / SECTOR;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut file).map_err(|e| gpt_err(&e))?;

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, None)
        .map_err(|e| gpt_err(&e))?;
    for p in &layout.partitions {
        disk.add_partition_at(
            p.name,
            p.number,
            p.first_lba,
            p.last_lba - p.first_lba + 1,
            p.role.gpt_type(),
            0,
        )
        .map_err(|e| gpt_err(&e))?;
    }
    let file = disk.write().map_err(|e| gpt_err(&e))?;
    file.sync_all().map_err(io_err)
}

/// Makes the root ext4 filesystem with a known UUID and DIB's label.
pub fn mkfs_root(device: &Path, uuid: &str) -> Result<(), LayoutError> {
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "cloudimg-rootfs", "-U", uuid])
        // No lazy init: the guest must not pay for it at first boot.
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(device)
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd64_layout_is_aligned_and_fits() {
        let l = Layout::for_arch(Arch::Amd64, 2048);
        assert_eq!(l.size, 2048 * MIB);
        let [boot, root] = &l.partitions[..] else { panic!("two partitions") };
        assert_eq!(boot.role, Role::BiosBoot);
        assert_eq!(boot.first_lba * SECTOR, MIB);
        assert_eq!(boot.bytes(), MIB);
        assert_eq!(root.first_lba, boot.last_lba + 1);
        assert_eq!(root.first_lba * SECTOR % MIB, 0, "root aligned to 1 MiB");
        assert!((root.last_lba + 1) * SECTOR + 33 * SECTOR <= l.size, "clear of backup GPT");
        assert_eq!(l.root().number, 2);
    }

    #[test]
    fn ppc64le_has_prep_first() {
        let l = Layout::for_arch(Arch::Ppc64le, 1024);
        assert_eq!(l.partitions[0].role, Role::Prep);
        assert_eq!(l.partitions[0].bytes(), 8 * MIB);
        assert_eq!(l.root().number, 2);
    }

    #[test]
    fn size_has_headroom_and_rounds() {
        let gib = 1024 * MIB;
        let s = size_for_tree(gib);
        assert_eq!(s % 64, 0);
        assert!(s * MIB >= gib + gib / 4 + 256 * MIB);
        assert!(s * MIB < gib + gib / 4 + 256 * MIB + 64 * MIB);
        assert_eq!(size_for_tree(0), 256);
    }

    #[test]
    fn written_table_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let layout = Layout::for_arch(Arch::Amd64, 128);
        write_disk(&path, &layout).unwrap();
        let disk = gpt::GptConfig::new().writable(false).open(&path).unwrap();
        let parts = disk.partitions();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[&1].part_type_guid, partition_types::BIOS);
        assert_eq!(parts[&2].part_type_guid, partition_types::LINUX_FS);
        assert_eq!(parts[&2].first_lba, layout.root().first_lba);
        assert_eq!(parts[&2].last_lba, layout.root().last_lba);
        // sparse: the file takes almost no space.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 < MIB);
        // sfdisk agrees the table is valid.
        let out = Cmd::new("sfdisk").arg("--dump").arg(&path).output().unwrap();
        assert!(out.contains("label: gpt"), "{out}");
        assert!(write_disk(&path, &layout).is_err(), "never overwrites");
    }
}
