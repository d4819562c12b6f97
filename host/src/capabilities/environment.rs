//! The `environment` unit, always granted: the plugin's settings, the node
//! id, the granted root and the call's time left.

use std::time::Instant;

use wasmtime::component::{HasData, Linker};

use super::root::PluginRoot;
use super::{CallCaps, HasCallCaps};
use crate::wit::wasmcsi::plugin::environment::{self as wit, Host};

/// What `environment` answers, built once per plugin.
pub struct EnvironmentCap {
    settings: Vec<(String, String)>,
    node_id: String,
    root: Option<String>,
}

impl EnvironmentCap {
    /// The plugin's settings, the node's id and the root's path, if any.
    pub fn new(
        settings: Vec<(String, String)>,
        node_id: &str,
        root: Option<&PluginRoot>,
    ) -> EnvironmentCap {
        EnvironmentCap {
            settings,
            node_id: node_id.to_string(),
            root: root.map(|root| root.root.path().to_string_lossy().into_owned()),
        }
    }
}

/// The `environment` interface as the linker sees it.
pub struct Environment;

impl HasData for Environment {
    type Data<'a> = EnvironmentView<'a>;
}

/// One call's view of `environment`: the plugin's answers and the call's end.
pub struct EnvironmentView<'a> {
    cap: &'a EnvironmentCap,
    ends: Instant,
}

impl<'a> EnvironmentView<'a> {
    /// The view of the call's `environment` state.
    pub fn of(call: &'a CallCaps) -> EnvironmentView<'a> {
        EnvironmentView {
            cap: &call.grants.environment,
            ends: call.ends,
        }
    }
}

/// Links `environment`.
pub fn add_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Environment>(linker, |t| EnvironmentView::of(t.call_caps()))
}

impl Host for EnvironmentView<'_> {
    async fn settings(&mut self) -> Vec<(String, String)> {
        self.cap.settings.clone()
    }

    async fn node_id(&mut self) -> String {
        self.cap.node_id.clone()
    }

    async fn time_left_ms(&mut self) -> u64 {
        let left = self.ends.saturating_duration_since(Instant::now());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
    }

    async fn root(&mut self) -> Option<String> {
        self.cap.root.clone()
    }
}
