//! OS primitives the capabilities and the CSI services are built on: no
//! grants, no plugins, only syscalls and ioctls on descriptors.

pub mod btrfs;
