//! Routing between CSI and plugins: which plugin serves a request, how
//! volume ids carry the plugin name, and the per-volume locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use crate::locks::{KeyGuard, KeyedLocks};
use crate::runtime::bindings::exports::wasmcsi::plugin::identity::Features;
use crate::runtime::Plugin;

/// StorageClass parameter that picks a plugin when several are loaded.
pub const PLUGIN_PARAMETER: &str = "plugin";
/// Separates the plugin name from the plugin's own id in CSI ids.
const ID_SEPARATOR: char = ':';
/// How long a call waits for another call on the same volume.
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

pub struct Dispatcher {
    plugins: Vec<Arc<Plugin>>,
    by_name: HashMap<String, Arc<Plugin>>,
    locks: KeyedLocks,
}

impl Dispatcher {
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Dispatcher {
        let by_name = plugins
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        Dispatcher {
            plugins,
            by_name,
            locks: KeyedLocks::default(),
        }
    }

    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    pub fn any_has(&self, feature: Features) -> bool {
        self.plugins.iter().any(|p| p.has(feature))
    }

    /// Whether any plugin offers the SINGLE_NODE_{SINGLE,MULTI}_WRITER modes,
    /// which CSI gates behind a capability of their own.
    pub fn offers_single_node_writer_modes(&self) -> bool {
        use crate::runtime::bindings::wasmcsi::plugin::types::AccessMode;
        self.plugins.iter().any(|p| {
            p.info
                .access_modes
                .contains(&AccessMode::SingleNodeMultiWriter)
                || p.info
                    .access_modes
                    .contains(&AccessMode::SingleNodeSingleWriter)
        })
    }

    /// The plugin a StorageClass names, or the only one.
    pub fn for_parameters(
        &self,
        parameters: &HashMap<String, String>,
    ) -> Result<Arc<Plugin>, Status> {
        match parameters.get(PLUGIN_PARAMETER) {
            Some(name) => self.by_name.get(name).cloned().ok_or_else(|| {
                Status::invalid_argument(format!(
                    "parameter {PLUGIN_PARAMETER}={name:?} names no loaded plugin (loaded: {})",
                    self.names()
                ))
            }),
            None if self.plugins.len() == 1 => Ok(self.plugins[0].clone()),
            None => Err(Status::invalid_argument(format!(
                "several plugins are loaded ({}): set the StorageClass parameter {PLUGIN_PARAMETER}",
                self.names()
            ))),
        }
    }

    /// Splits a CSI volume or snapshot id into its plugin and the plugin's
    /// own id; `None` when no loaded plugin made it.
    pub fn for_id<'a>(&self, id: &'a str) -> Option<(Arc<Plugin>, &'a str)> {
        let (name, local) = id.split_once(ID_SEPARATOR)?;
        let plugin = self.by_name.get(name)?;
        (!local.is_empty()).then(|| (plugin.clone(), local))
    }

    /// Serialises operations on one key (a volume id, or a name being created).
    pub async fn lock(
        &self,
        key: &str,
        deadline: Option<Duration>,
    ) -> Result<KeyGuard<'_>, Status> {
        let wait = deadline.unwrap_or(DEFAULT_LOCK_WAIT).min(DEFAULT_LOCK_WAIT);
        self.locks
            .lock(key, wait)
            .await
            .ok_or_else(|| Status::aborted(format!("an operation on {key} is already in progress")))
    }

    fn names(&self) -> String {
        self.plugins
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The CSI id of a plugin's volume or snapshot.
pub fn global_id(plugin: &Plugin, local: &str) -> String {
    format!("{}{ID_SEPARATOR}{local}", plugin.name)
}
