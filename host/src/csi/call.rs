//! The one path from an RPC to its plugin: resolve the plugin → gate on
//! the feature the RPC needs → lock → call a fresh instance → map the
//! outcome to a gRPC status. Every plugin call of every service goes
//! through [`call_plugin`]; the resolvers and the gate beside it are the
//! pieces an RPC takes earlier when its own checks must come in between.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};
use wasmtime::Store;

use super::status;
use crate::capabilities::call_paths::CallPaths;
use crate::dispatch::Dispatcher;
use crate::locks::KeyGuard;
use crate::runtime::plugin::{CallFuture, Exports};
use crate::runtime::state::{with_call_paths, CallState};
use crate::runtime::Plugin;
use crate::wit::exports::wasmcsi::plugin::identity::Features;

/// What an RPC asks of its (already resolved) plugin, besides the call
/// itself: built with [`PluginCall::new`] and the `gated`, `locking` and
/// `lending` steps it needs.
pub(crate) struct PluginCall<'a> {
    plugin: &'a Plugin,
    /// The export, as errors and metrics name it ("delete-volume").
    op: &'static str,
    /// The caller's deadline: it bounds the lock waits and the call.
    deadline: Option<Duration>,
    gate: Option<Features>,
    locks: Vec<String>,
    paths: Option<CallPaths>,
}

impl<'a> PluginCall<'a> {
    pub(crate) fn new(plugin: &'a Plugin, op: &'static str, deadline: Option<Duration>) -> Self {
        PluginCall {
            plugin,
            op,
            deadline,
            gate: None,
            locks: Vec::new(),
            paths: None,
        }
    }

    /// The plugin must offer `feature` (refused as [`require`] says).
    pub(crate) fn gated(mut self, feature: Features) -> Self {
        self.gate = Some(feature);
        self
    }

    /// Holds these keys, taken in this order, for the length of the call.
    pub(crate) fn locking<K: Into<String>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.locks.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Lends the plugin the paths the CO named in a node call, and no
    /// others, for the length of the call.
    pub(crate) fn lending(mut self, paths: CallPaths) -> Self {
        self.paths = Some(paths);
        self
    }
}

/// The per-RPC skeleton: the feature gate, then the locks, then `run` on
/// a fresh instance of the plugin (through the exported interface `E` it
/// takes, with the paths lent), its failure mapped to the status naming
/// the plugin. An RPC whose own checks must run while it holds the lock,
/// or whose records must be written under it, takes the lock itself
/// (`Dispatcher::lock`) and passes none here.
///
/// ```ignore
/// call_plugin(dispatch, PluginCall::new(&plugin, "get-volume", deadline),
///     move |p: &wit_ctl::Guest, s| Box::pin(async move { p.call_get_volume(s, &id, &secrets).await }))
/// ```
pub(crate) async fn call_plugin<E, R, F>(
    dispatch: &Dispatcher,
    call: PluginCall<'_>,
    run: F,
) -> Result<R, Status>
where
    E: Exports,
    R: Send + 'static,
    // Sent once, whole, to the call's own thread (runtime::call_threads).
    F: for<'s> FnOnce(&'s E, &'s mut Store<CallState>) -> CallFuture<'s, R> + Send + 'static,
{
    let PluginCall {
        plugin,
        op,
        deadline,
        gate,
        locks,
        paths,
    } = call;
    if let Some(feature) = gate {
        require(plugin, feature)?;
    }
    // Held until the answer is mapped, released when the function ends.
    let mut held: Vec<KeyGuard<'_>> = Vec::with_capacity(locks.len());
    for key in &locks {
        held.push(dispatch.lock(key, deadline).await?);
    }
    let called = plugin.call(op, deadline, run);
    let answer = match paths {
        Some(paths) => with_call_paths(paths, called).await,
        None => called.await,
    };
    answer.map_err(status::of(&plugin.name))
}

/// Refuses an RPC a plugin does not offer, with the code the spec gives:
/// UNIMPLEMENTED for an RPC the plugin lacks, FAILED_PRECONDITION for the
/// group snapshots the driver advertises when any plugin takes them.
pub(crate) fn require(plugin: &Plugin, feature: Features) -> Result<(), Status> {
    if plugin.has(feature) {
        return Ok(());
    }
    let name = &plugin.name;
    let lacking = if feature == Features::SNAPSHOTS {
        "does not take snapshots"
    } else if feature == Features::GET_CAPACITY {
        "does not report capacity"
    } else if feature == Features::VOLUME_STATS {
        "does not report volume stats"
    } else if feature == Features::CONTROLLER_EXPAND {
        "cannot expand volumes"
    } else if feature == Features::GROUP_SNAPSHOTS {
        return Err(Status::failed_precondition(format!(
            "plugin {name} does not take group snapshots"
        )));
    } else {
        return Err(Status::unimplemented(format!(
            "plugin {name} does not offer {feature:?}"
        )));
    };
    Err(Status::unimplemented(format!("plugin {name} {lacking}")))
}

/// The plugin of a CSI id and the plugin's own id; NOT_FOUND naming
/// `what` ("volume", "snapshot") when no loaded plugin made it.
pub(crate) fn resolve<'a>(
    dispatch: &Dispatcher,
    what: &str,
    id: &'a str,
) -> Result<(Arc<Plugin>, &'a str), Status> {
    dispatch
        .for_id(id)
        .ok_or_else(|| Status::not_found(format!("{what} {id} does not exist")))
}

/// The plugin of an object to delete. `None`: no plugin of ours made the
/// id, so it names nothing and deleting it is done. An id of ours whose
/// plugin is not loaded is FAILED_PRECONDITION: answering OK would let the
/// CO drop its record and leave the data behind.
pub(crate) fn resolve_to_delete<'a>(
    dispatch: &Dispatcher,
    what: &str,
    id: &'a str,
) -> Result<Option<(Arc<Plugin>, &'a str)>, Status> {
    if let Some(found) = dispatch.for_id(id) {
        return Ok(Some(found));
    }
    match dispatch.unloaded_plugin(id) {
        Some((name, loaded)) => Err(Status::failed_precondition(format!(
            "{what} {id} belongs to plugin {name}, which is not loaded (loaded: {loaded}): \
             add {name} back to the config to delete it"
        ))),
        None => Ok(None),
    }
}

/// A delete's outcome: the plugin's NOT_FOUND means already gone, which
/// is what the delete was for.
pub(crate) fn done_if_gone(deleted: Result<(), Status>) -> Result<(), Status> {
    match deleted {
        Err(s) if s.code() == Code::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_of_an_unloaded_plugins_object_waits_for_it() {
        let dispatch = Dispatcher::new(vec![]);
        let Err(refused) = resolve_to_delete(&dispatch, "snapshot", "gone:s1") else {
            panic!("a delete of an unloaded plugin's snapshot went ahead");
        };
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert_eq!(
            refused.message(),
            "snapshot gone:s1 belongs to plugin gone, which is not loaded (loaded: ): \
             add gone back to the config to delete it"
        );
        // Not an id of ours: it names nothing, so the delete is done.
        assert!(resolve_to_delete(&dispatch, "volume", "csi-abc")
            .unwrap()
            .is_none());
        let Err(missing) = resolve(&dispatch, "volume", "gone:v1") else {
            panic!("an id of no loaded plugin resolved");
        };
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(missing.message(), "volume gone:v1 does not exist");
    }

    #[test]
    fn only_not_found_counts_as_deleted() {
        assert!(done_if_gone(Err(Status::not_found("p: no such volume"))).is_ok());
        let kept = done_if_gone(Err(Status::unavailable("p: array down"))).unwrap_err();
        assert_eq!(kept.code(), Code::Unavailable);
        assert!(done_if_gone(Ok(())).is_ok());
    }
}
