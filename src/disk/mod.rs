//! Disks: teardown stack, loop devices, mounts, chroot, partition layout, qcow2.

pub mod guard;
