//! `xsky-nfs`: wasmcsi storage plugin for XSKY SDS file storage through the
//! XMS REST API (see `shared/xms/README.md`). A volume is a quota tree
//! inside the folder behind a "home share" (`VIP:/sdsfs/<folder>/`); pods
//! mount `VIP:/sdsfs/<folder>/<quota-tree>` over NFS. Expansion patches the
//! quota tree's size on the array: NFS sees the new size online, so no node
//! step is needed.
//!
//! Every call runs in a fresh instance and keeps no state: the volume id
//! carries the quota tree id (and the XMS servers when the StorageClass
//! named others than the plugin settings). XMS is reached only through the
//! host's `http` capability, mounts through `mount`, stats through `fs`.
//!
//! Modules: `params` (StorageClass parameters, settings, secrets),
//! `client` (one XMS conversation: failover, re-login, retries, deadline),
//! `xms` (the operations, typed), `volume` (ids and names), `controller`,
//! `node`, `identity`. Host imports sit behind `host::Host`.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

mod client;
mod controller;
mod error;
mod folder;
mod host;
mod identity;
mod node;
mod params;
mod volume;
mod xms;

/// The component: one stateless type implementing the three exports.
struct XskyNfs;

export!(XskyNfs);
