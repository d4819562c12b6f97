//! Routing between CSI and plugins: which plugin serves a request, how
//! volume ids carry the plugin name, and the per-volume locks. Refusals are
//! [`DispatchError`]s; the CSI layer gives them their gRPC codes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::is_plugin_name;
use crate::locks::{KeyGuard, KeyedLocks};
use crate::runtime::Plugin;
use crate::wit::exports::wasmcsi::plugin::identity::Features;

/// StorageClass parameter that picks a plugin when several are loaded.
pub(crate) const PLUGIN_PARAMETER: &str = "plugin";
/// Separates the plugin name from the plugin's own id in CSI ids.
const ID_SEPARATOR: char = ':';
/// How long a call waits for another call on the same volume.
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);
/// How long before the caller's deadline a lock wait ends (at most).
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Why a request found no plugin, or no turn on its volume.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DispatchError {
    #[error(
        "parameter {}={name:?} names no loaded plugin (loaded: {loaded})",
        PLUGIN_PARAMETER
    )]
    UnknownPlugin { name: String, loaded: String },
    #[error(
        "several plugins are loaded ({loaded}): set the StorageClass parameter {}",
        PLUGIN_PARAMETER
    )]
    PluginNotNamed { loaded: String },
    #[error(
        "no plugin of this driver takes inline ephemeral volumes (loaded: {loaded}; \
         a plugin's config allows them with inlineVolumes: true)"
    )]
    NoInlinePlugin { loaded: String },
    #[error(
        "volume attribute {}={name:?}: inline volumes of this driver go to plugin {inline}",
        PLUGIN_PARAMETER
    )]
    NotTheInlinePlugin { name: String, inline: String },
    /// Another call on the key held it past the wait.
    #[error("an operation on {key} is already in progress")]
    Busy { key: String },
}

pub(crate) struct Dispatcher {
    /// Swapped whole on reload; a call keeps the plugin it picked, so calls
    /// in flight finish on the version they started on.
    set: RwLock<Arc<PluginSet>>,
    locks: KeyedLocks,
}

struct PluginSet {
    plugins: Arc<Vec<Arc<Plugin>>>,
    by_name: HashMap<String, Arc<Plugin>>,
}

impl PluginSet {
    fn names(&self) -> String {
        self.plugins
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn new(plugins: Vec<Arc<Plugin>>) -> PluginSet {
        let by_name = plugins
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        PluginSet {
            plugins: Arc::new(plugins),
            by_name,
        }
    }
}

impl Dispatcher {
    pub(crate) fn new(plugins: Vec<Arc<Plugin>>) -> Dispatcher {
        Dispatcher {
            set: RwLock::new(Arc::new(PluginSet::new(plugins))),
            locks: KeyedLocks::default(),
        }
    }

    /// Puts a new plugin set in place at once (hot reload).
    pub(crate) fn replace(&self, plugins: Vec<Arc<Plugin>>) {
        let set = Arc::new(PluginSet::new(plugins));
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    fn current(&self) -> Arc<PluginSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The plugins loaded now, in config order.
    pub(crate) fn plugins(&self) -> Arc<Vec<Arc<Plugin>>> {
        self.current().plugins.clone()
    }

    pub(crate) fn any_has(&self, feature: Features) -> bool {
        self.plugins().iter().any(|p| p.has(feature))
    }

    /// Whether any plugin offers the SINGLE_NODE_{SINGLE,MULTI}_WRITER modes,
    /// which CSI gates behind a capability of their own.
    pub(crate) fn offers_single_node_writer_modes(&self) -> bool {
        use crate::wit::wasmcsi::plugin::types::AccessMode;
        self.plugins().iter().any(|p| {
            p.info
                .access_modes
                .contains(&AccessMode::SingleNodeMultiWriter)
                || p.info
                    .access_modes
                    .contains(&AccessMode::SingleNodeSingleWriter)
        })
    }

    /// The plugin a StorageClass names, or the only one.
    pub(crate) fn for_parameters(
        &self,
        parameters: &HashMap<String, String>,
    ) -> Result<Arc<Plugin>, DispatchError> {
        let set = self.current();
        match parameters.get(PLUGIN_PARAMETER) {
            Some(name) => {
                set.by_name
                    .get(name)
                    .cloned()
                    .ok_or_else(|| DispatchError::UnknownPlugin {
                        name: name.clone(),
                        loaded: set.names(),
                    })
            }
            None if set.plugins.len() == 1 => Ok(set.plugins[0].clone()),
            None => Err(DispatchError::PluginNotNamed {
                loaded: set.names(),
            }),
        }
    }

    /// The plugin that takes an inline ephemeral volume with this volume
    /// context (the pod's volumeAttributes): the one whose config allows
    /// them, which a `plugin` attribute may name.
    pub(crate) fn for_inline(
        &self,
        context: &HashMap<String, String>,
    ) -> Result<Arc<Plugin>, DispatchError> {
        let set = self.current();
        let inline = set.plugins.iter().find(|p| p.inline_volumes);
        match (inline, context.get(PLUGIN_PARAMETER)) {
            (None, _) => Err(DispatchError::NoInlinePlugin {
                loaded: set.names(),
            }),
            (Some(p), Some(name)) if *name != p.name => Err(DispatchError::NotTheInlinePlugin {
                name: name.clone(),
                inline: p.name.clone(),
            }),
            (Some(p), _) => Ok(p.clone()),
        }
    }

    /// The plugin of an inline volume by kubelet's id (`csi-<hash>`, not in
    /// our `<plugin>:<id>` form): the one that takes them, if any.
    pub(crate) fn inline_for_id<'a>(&self, id: &'a str) -> Option<(Arc<Plugin>, &'a str)> {
        if !is_inline_id(id) {
            return None;
        }
        let set = self.current();
        let plugin = set.plugins.iter().find(|p| p.inline_volumes)?.clone();
        Some((plugin, id))
    }

    /// Splits a CSI volume or snapshot id into its plugin and the plugin's
    /// own id; `None` when no loaded plugin made it.
    pub(crate) fn for_id<'a>(&self, id: &'a str) -> Option<(Arc<Plugin>, &'a str)> {
        let (name, local) = id.split_once(ID_SEPARATOR)?;
        let plugin = self.current().by_name.get(name)?.clone();
        (!local.is_empty()).then_some((plugin, local))
    }

    /// For an id in our `<plugin>:<id>` form whose plugin is not loaded
    /// (renamed or removed from the config): that plugin's name and the
    /// plugins loaded now. `None` when a loaded plugin owns the id, or when
    /// the id is not in our form at all (no plugin of ours made it).
    pub(crate) fn unloaded_plugin<'a>(&self, id: &'a str) -> Option<(&'a str, String)> {
        let (name, local) = id.split_once(ID_SEPARATOR)?;
        let set = self.current();
        (is_plugin_name(name) && !local.is_empty() && !set.by_name.contains_key(name))
            .then(|| (name, set.names()))
    }

    /// Serialises operations on one key (a volume id, or a name being created).
    pub(crate) async fn lock(
        &self,
        key: &str,
        deadline: Option<Duration>,
    ) -> Result<KeyGuard<'_>, DispatchError> {
        // Give up a little before the caller does: ABORTED tells it the
        // volume is busy, its own timeout would tell it nothing.
        let wait = match deadline {
            Some(d) => d.saturating_sub((d / 5).min(ANSWER_MARGIN)),
            None => DEFAULT_LOCK_WAIT,
        }
        .min(DEFAULT_LOCK_WAIT);
        self.locks
            .lock(key, wait)
            .await
            .ok_or_else(|| DispatchError::Busy {
                key: key.to_string(),
            })
    }
}

/// The CSI volume context key kubelet sets on inline ephemeral volumes.
pub(crate) const EPHEMERAL_CONTEXT: &str = "csi.storage.k8s.io/ephemeral";

/// Whether a NodePublishVolume is for an inline ephemeral volume.
pub(crate) fn is_inline(context: &HashMap<String, String>) -> bool {
    context.get(EPHEMERAL_CONTEXT).is_some_and(|v| v == "true")
}

/// The ids kubelet gives inline volumes: `csi-` and a hex digest (a plugin
/// gets the id as its own, so it must be a safe path component).
pub(crate) fn is_inline_id(id: &str) -> bool {
    id.strip_prefix("csi-").is_some_and(|hash| {
        (1..=128).contains(&hash.len()) && hash.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// The CSI id of a plugin's volume or snapshot.
pub(crate) fn global_id(plugin: &Plugin, local: &str) -> String {
    format!("{}{ID_SEPARATOR}{local}", plugin.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_of_an_unloaded_plugin_follows_the_config_name_rule() {
        let dispatch = Dispatcher::new(vec![]);
        assert_eq!(
            dispatch.unloaded_plugin("gone-1:vol"),
            Some(("gone-1", String::new()))
        );
        // Not a name the config takes, so no plugin of ours made the id.
        assert_eq!(dispatch.unloaded_plugin("Gone:vol"), None);
        assert_eq!(
            dispatch.unloaded_plugin(&format!("{}:vol", "a".repeat(31))),
            None
        );
        assert_eq!(dispatch.unloaded_plugin("gone:"), None);
    }
}
