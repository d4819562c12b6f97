//! What local-dir is and offers; the host asks once at load time.

use crate::backend;
use crate::config::{FsType, Mode, Settings, ACCESS_MODES};
use crate::exports::wasmcsi::plugin::identity::{Features, PluginInfo};
use crate::host::{self, Host};
use crate::size::MIB;
use crate::LocalDir;

impl wasmcsi_plugin_sdk::Identity for LocalDir {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "local-dir".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            features: Features::NODE_LOCAL
                | Features::STAGE
                | Features::CONTROLLER_EXPAND
                | Features::NODE_EXPAND
                | Features::LIST_VOLUMES
                | Features::GET_CAPACITY
                | Features::VOLUME_STATS
                | Features::BLOCK
                | Features::SNAPSHOTS
                | Features::RESTORE_SNAPSHOT
                | Features::CLONE_VOLUME
                | Features::GROUP_SNAPSHOTS,
            access_modes: ACCESS_MODES.to_vec(),
            min_volume_bytes: min_volume_bytes(&host::Wasm),
        }
    }
}

/// The smallest volume that can be made in the configured mode whatever
/// the filesystem a StorageClass picks: XFS images need 300 MiB (the
/// host reports it as GetCapacity's minimum_volume_size).
fn min_volume_bytes(host: &dyn Host) -> u64 {
    let mode = Settings::parse(&host.settings())
        .map(|s| s.mode)
        .unwrap_or(Mode::Image);
    match backend::for_mode(mode) {
        Ok(b) => [Some(FsType::Xfs), Some(FsType::Ext4)]
            .into_iter()
            .map(|fs| b.min_bytes(fs).0)
            .max()
            .unwrap_or(MIB),
        Err(_) => MIB,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Fake;

    #[test]
    fn minimum_follows_the_mode() {
        let fake = Fake::new("/nowhere", "xfs");
        assert_eq!(min_volume_bytes(&fake), 300 * MIB);
        fake.st().settings.push(("mode".into(), "subvolume".into()));
        assert_eq!(min_volume_bytes(&fake), MIB);
    }
}
