//! `wasmcsi-plugin-sdk`: what every wasmcsi storage plugin needs, once.
//!
//! - [`bindings`]: the Rust bindings of `wit/plugin.wit` (`wasmcsi:plugin@0.2.0`),
//!   and of the `wasi:http` it imports;
//! - [`Identity`], [`Controller`], [`Node`]: one trait per exported
//!   interface; every call but `info` answers UNIMPLEMENTED until the
//!   plugin says otherwise, and [`export!`] makes a type the component;
//! - [`error`]: WIT errors with context, I/O errors mapped to codes;
//! - [`capacity`]: sizes rounded, fitted to the CO's range, refused with
//!   OUT_OF_RANGE before anything is made;
//! - [`id`]: stable volume ids from CSI names; [`page`]: paging tokens;
//!   [`stats`]: statfs to volume stats; [`files`]: state kept in files
//!   under the root, crash-safe and idempotent;
//! - [`http`]: a blocking request over the standard wasi:http;
//! - [`host`]: the host's capabilities behind a trait, so plugin logic runs
//!   natively in tests against [`fake`] (feature `fake`).
//!
//! ```ignore
//! struct Mine;
//! impl wasmcsi_plugin_sdk::Identity for Mine { fn info() -> PluginInfo { .. } }
//! impl wasmcsi_plugin_sdk::Controller for Mine { /* what it supports */ }
//! impl wasmcsi_plugin_sdk::Node for Mine {}
//! wasmcsi_plugin_sdk::export!(Mine);
//! ```

/// Generated from `wit/`: imports as plain functions (`wasmcsi::plugin::*`),
/// exports as `Guest` traits (`exports::wasmcsi::plugin::*`).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "wasmcsi_plugin_sdk::bindings",
        // wasi:http and what it uses (io, clocks), for `http`.
        generate_all,
        // Old parsers trip on WASI's unstable timezone import unless its
        // feature is on; nothing here uses it.
        features: ["clocks-timezone"],
    });
}

pub mod capacity;
pub mod error;
#[cfg(all(feature = "fake", not(target_family = "wasm")))]
pub mod fake;
pub mod files;
pub mod host;
pub mod http;
pub mod id;
pub mod page;
mod plugin;
pub mod stats;

pub use error::{Context, Error, ErrorCode, Result};
pub use plugin::{Controller, Identity, Node};

/// The types plugins name most, in one `use`.
pub mod types {
    pub use crate::bindings::exports::wasmcsi::plugin::controller::{
        CreateGroupSnapshotRequest, CreateSnapshotRequest, CreateVolumeRequest, ExpandRequest,
        ExpandResult, SnapshotFilter, SnapshotPage, VolumePage,
    };
    pub use crate::bindings::exports::wasmcsi::plugin::identity::{Features, PluginInfo};
    pub use crate::bindings::exports::wasmcsi::plugin::node::{
        ExpandRequest as NodeExpandRequest, PublishRequest, StageRequest, VolumeStats,
    };
    pub use crate::bindings::wasmcsi::plugin::types::*;
}

/// The value of `key` in a key-value list (parameters, settings,
/// contexts), trimmed; an empty value counts as absent.
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Makes `$ty` (implementing [`Identity`], [`Controller`] and [`Node`])
/// the component's exports. One line, at the plugin crate's root.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        $crate::bindings::export_bindings!($ty with_types_in $crate::bindings);
    };
}
