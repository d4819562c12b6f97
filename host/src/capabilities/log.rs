//! The `log` capability: plugin lines into the host's tracing, tagged with
//! the plugin's name. Without the grant, lines are dropped silently.

use crate::runtime::bindings::wasmcsi::plugin::log::{Host, Level};
use crate::runtime::state::CallState;

/// Longer messages are cut, so a plugin cannot flood the log with one line.
const MAX_MESSAGE: usize = 4096;

impl Host for CallState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        if !self.grants.log {
            return;
        }
        let plugin = self.grants.plugin.as_str();
        let message: String = message.chars().take(MAX_MESSAGE).collect();
        let fields = fields
            .iter()
            .take(32)
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        match level {
            Level::Trace => tracing::trace!(plugin, %fields, "{message}"),
            Level::Debug => tracing::debug!(plugin, %fields, "{message}"),
            Level::Info => tracing::info!(plugin, %fields, "{message}"),
            Level::Warn => tracing::warn!(plugin, %fields, "{message}"),
            Level::Error => tracing::error!(plugin, %fields, "{message}"),
        }
    }
}
