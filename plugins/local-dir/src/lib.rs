//! `local-dir`: wasmcsi storage plugin whose volumes live in a directory of
//! the node — as loop-mounted image files (`image` mode) or as btrfs
//! subvolumes with a qgroup limit (`subvolume` mode).
//!
//! Every call runs in a fresh instance, so all state is on disk under
//! `<root>/volumes/<local-id>/`; see `store` for the layout and `meta` for
//! the record that makes retries after a crash finish the job.
//!
//! Pure logic (`config`, `size`, `id`, `meta`, `page`, `store`) has unit
//! tests that run natively. Host capabilities are reached through the
//! `host::Host` trait, so whole calls are tested natively too (`flows`)
//! against a fake host (`fake`) that injects failures and crashes.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

mod backend;
mod config;
mod controller;
mod env;
mod error;
mod group;
mod host;
mod id;
mod identity;
mod meta;
mod node;
mod page;
mod size;
mod snapshot;
mod store;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod flows;

/// The component: one stateless type implementing the three exports.
struct LocalDir;

export!(LocalDir);
