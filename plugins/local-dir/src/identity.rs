//! What local-dir is and offers; the host asks once at load time.

use crate::config::ACCESS_MODES;
use crate::exports::wasmcsi::plugin::identity::{Features, Guest, PluginInfo};
use crate::size::MIB;
use crate::LocalDir;

impl Guest for LocalDir {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "local-dir".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // No snapshots and no clone: those calls answer UNIMPLEMENTED.
            features: Features::NODE_LOCAL
                | Features::STAGE
                | Features::CONTROLLER_EXPAND
                | Features::NODE_EXPAND
                | Features::LIST_VOLUMES
                | Features::GET_CAPACITY
                | Features::VOLUME_STATS
                | Features::BLOCK
                | Features::CLONE,
            access_modes: ACCESS_MODES.to_vec(),
            min_volume_bytes: MIB,
        }
    }
}
