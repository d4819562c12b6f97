//! What xsky-nfs is and offers; the host asks once at load time.

use crate::exports::wasmcsi::plugin::identity::{Features, PluginInfo};
use crate::wasmcsi::plugin::types::AccessMode;
use crate::XskyNfs;
use wasmcsi_plugin_sdk::capacity::MIB;

impl wasmcsi_plugin_sdk::Identity for XskyNfs {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "xsky-nfs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Snapshots, and volumes restored from them (the mode that
            // can says so per request); no volume clones, no
            // list-volumes; expansion is the controller's alone (NFS grows
            // online).
            features: Features::CONTROLLER_EXPAND
                | Features::GET_CAPACITY
                | Features::VOLUME_STATS
                | Features::SNAPSHOTS
                | Features::RESTORE_SNAPSHOT,
            access_modes: vec![
                AccessMode::SingleNodeWriter,
                AccessMode::SingleNodeReaderOnly,
                AccessMode::MultiNodeReaderOnly,
                AccessMode::MultiNodeSingleWriter,
                AccessMode::MultiNodeMultiWriter,
                AccessMode::SingleNodeSingleWriter,
                AccessMode::SingleNodeMultiWriter,
            ],
            min_volume_bytes: MIB,
        }
    }
}
