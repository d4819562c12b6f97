//! The `environment` capability, always granted: the plugin's settings,
//! the node id, the granted root and the call's time left.

use super::CallCaps;
use crate::wit::wasmcsi::plugin::environment::Host;

impl Host for CallCaps {
    async fn settings(&mut self) -> Vec<(String, String)> {
        self.grants.settings.clone()
    }

    async fn node_id(&mut self) -> String {
        self.grants.node_id.clone()
    }

    async fn time_left_ms(&mut self) -> u64 {
        let left = self
            .ends
            .saturating_duration_since(std::time::Instant::now());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
    }

    async fn root(&mut self) -> Option<String> {
        self.grants
            .fs
            .as_ref()
            .map(|fs| fs.root.path().to_string_lossy().into_owned())
    }
}
