//! OS primitives the capabilities and the CSI services are built on:
//! confinement by descriptor, loop devices, btrfs ioctls, growing a
//! filesystem, running a tool on a descriptor, the mount table, shared
//! syncs (group commit), the reaping of stale qgroups and the hand-off of
//! blocking work. No grants and no plugins here: the units in
//! `capabilities` decide what a plugin may do; these only do it.

pub mod beneath;
pub mod blocking;
pub mod btrfs;
pub mod command;
pub mod group_sync;
pub mod grow;
pub mod loopdev;
pub mod mountinfo;
pub mod qgroup_reaper;

/// Errors are the capabilities' (a WIT error code and a message), the
/// form every caller hands on.
pub(crate) use crate::capabilities::{CapError, ErrorCode};
