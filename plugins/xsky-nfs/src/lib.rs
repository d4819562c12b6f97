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
//! `node`, `identity`. Host imports sit behind the SDK's `host::Host`;
//! bindings, errors, size rules and stats are the SDK's
//! (`wasmcsi-plugin-sdk`), named by the short crate paths below.

use wasmcsi_plugin_sdk::bindings::{exports, wasmcsi};
use wasmcsi_plugin_sdk::{error, host};

mod client;
mod controller;
mod folder;
mod identity;
mod model;
mod node;
mod params;
mod rules;
mod volume;
mod xms;

/// The component: one stateless type implementing the three exports.
struct XskyNfs;

wasmcsi_plugin_sdk::export!(XskyNfs);
