//! `local-dir`: wasmcsi storage plugin whose volumes live in a directory of
//! the node — as loop-mounted image files (`image` mode) or as btrfs
//! subvolumes with a qgroup limit (`subvolume` mode).
//!
//! Every call runs in a fresh instance, so all state is on disk under
//! `<root>/volumes/<local-id>/`; see `store` for the layout and `meta` for
//! the record that makes retries after a crash finish the job.
//!
//! Pure logic (`config`, `meta`, `store`) has unit tests that run
//! natively. Host capabilities are reached through the SDK's `Host` trait,
//! so whole calls are tested natively too (`flows`) against the SDK's fake
//! host, which injects failures and crashes.
//!
//! The bindings, errors, size rules, ids, paging and the host trait are
//! the SDK's (`wasmcsi-plugin-sdk`); the modules here name them by the
//! short crate paths below.

use wasmcsi_plugin_sdk::bindings::{exports, wasmcsi};
#[cfg(test)]
use wasmcsi_plugin_sdk::fake;
use wasmcsi_plugin_sdk::{capacity as size, error, host, id, page};

mod backend;
mod config;
mod controller;
mod env;
mod ephemeral;
mod group;
mod identity;
mod meta;
mod node;
mod snapshot;
mod store;

#[cfg(test)]
mod flows;

/// The component: one stateless type implementing the three exports.
struct LocalDir;

wasmcsi_plugin_sdk::export!(LocalDir);
