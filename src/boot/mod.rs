//! Booting images under QEMU. (Being written.)
