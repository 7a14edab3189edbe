//! Disks and trees on the host: the teardown stack, loop devices, mounts,
//! the chroot, partition layout and bootloader, and QCOW2 conversion.

pub mod binfmt;
pub mod chroot;
pub mod export;
pub mod guard;
pub mod image_root;
pub mod layout;
pub mod loopback;
pub mod mount;
pub mod namespace;
pub mod qcow2;
