//! The make pipeline: plan, base tree, element phases, disk, manifest.

pub mod guest_agent;
pub mod manifest;
pub mod phases;
pub mod pipeline;
pub mod plan;
pub mod rootfs;
pub mod tarball;
pub mod vendor;
