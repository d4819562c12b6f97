//! One loaded plugin: compiled once at load, then a fresh store and
//! instance from its `InstancePre` for every call, bounded in memory, time
//! and concurrency. A failing call (trap, deadline, memory) costs that call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmtime::component::{Component, Instance, InstancePre, Linker};
use wasmtime::{Store, Trap, UpdateDeadline};

use super::budget::Budget;
use super::call_threads;
use super::state::CallState;
use crate::capabilities::call_paths::CallPaths;
use crate::capabilities::Grants;
use crate::config::{Limits, PluginConfig};
use crate::wit::exports::wasmcsi::plugin::identity::{Features, PluginInfo};
use crate::wit::exports::wasmcsi::plugin::{controller, identity, node};
use crate::wit::wasmcsi::plugin::types::Error as PluginError;

/// How much earlier than the caller's deadline a call is ended, at most.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Why a plugin call did not produce an answer of the plugin's own.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    /// The plugin answered with an error (its message cut when shown).
    #[error("{}", crate::text::clip(&.0.message, super::limits::MAX_ERROR_MESSAGE))]
    Plugin(PluginError),
    #[error("plugin {plugin} did not finish {op} within {after:?}")]
    Deadline {
        plugin: String,
        op: &'static str,
        after: Duration,
    },
    #[error("plugin {plugin} ran out of memory in {op}: {detail}")]
    Memory {
        plugin: String,
        op: &'static str,
        detail: String,
    },
    #[error("plugin {plugin} held more than {limit} WASI handles (open files, directories, streams) at once in {op}: limits.maxOpenHandles")]
    Handles {
        plugin: String,
        op: &'static str,
        limit: u32,
    },
    #[error("plugin {plugin} failed in {op}: {detail}")]
    Crashed {
        plugin: String,
        op: &'static str,
        detail: String,
    },
    #[error("plugin {plugin} could not be instantiated: {detail}")]
    Instantiate { plugin: String, detail: String },
}

/// What an operation closure returns, given an interface and its store.
pub type CallFuture<'a, R> =
    Pin<Box<dyn Future<Output = wasmtime::Result<Result<R, PluginError>>> + Send + 'a>>;

/// The plugin world's exported interfaces, as a call sees them.
pub type Identity = identity::Guest;
pub type Controller = controller::Guest;
pub type Node = node::Guest;

/// Where each exported interface's functions sit, resolved (and
/// type-checked) once at load.
pub struct ExportIndices {
    identity: identity::GuestIndices,
    controller: controller::GuestIndices,
    node: node::GuestIndices,
}

/// An exported interface a call can use. A call loads only the interface
/// it needs from its fresh instance: loading type-checks each function
/// again, and the whole world would be three times the work.
pub trait Exports: Sized + Send + Sync + 'static {
    fn load(
        indices: &ExportIndices,
        store: &mut Store<CallState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self>;
}

macro_rules! exports {
    ($interface:ty, $field:ident) => {
        impl Exports for $interface {
            fn load(
                indices: &ExportIndices,
                store: &mut Store<CallState>,
                instance: &Instance,
            ) -> wasmtime::Result<Self> {
                indices.$field.load(store, instance)
            }
        }
    };
}
exports!(Identity, identity);
exports!(Controller, controller);
exports!(Node, node);

pub struct Plugin {
    pub name: String,
    pub info: PluginInfo,
    /// The config allows CSI inline ephemeral volumes (`inlineVolumes`).
    pub inline_volumes: bool,
    instancing: Arc<Instancing>,
    /// The plugin name's call and instance slots, shared with every other
    /// version loaded under that name.
    budget: Arc<Budget>,
}

/// What a call's thread needs of the plugin to make and run an instance.
/// Shared, not borrowed: a call stuck in a system call outlives its caller.
struct Instancing {
    name: String,
    pre: InstancePre<CallState>,
    exports: ExportIndices,
    grants: Arc<Grants>,
    limits: Limits,
}

/// Which of the plugin's slots a run takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A call: a call slot, then an instance slot.
    Call,
    /// A load's check: an instance slot of the few kept for checks, so that
    /// a plugin whose calls are all busy can still be reloaded.
    Check,
}

impl Plugin {
    /// Links a compiled plugin, then asks who it is: `info()` must answer
    /// within `check_deadline`, whatever the plugin's call timeout.
    pub async fn new(
        linker: &Linker<CallState>,
        component: &Component,
        config: &PluginConfig,
        node_id: &str,
        budget: Arc<Budget>,
        check_deadline: Duration,
    ) -> Result<Plugin> {
        let pre = linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "linking {}: was it built against this host's wasmcsi:plugin@{} WIT?",
                    config.origin(),
                    super::contract::VERSION
                )
            })?;
        let exports = export_indices(&pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} does not export the plugin world", config.origin()))?;
        let grants = Arc::new(Grants::from_config(config, node_id)?);
        let mut plugin = Plugin {
            name: config.name.clone(),
            inline_volumes: config.inline_volumes,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                features: Features::empty(),
                access_modes: Vec::new(),
                min_volume_bytes: 0,
            },
            instancing: Arc::new(Instancing {
                name: config.name.clone(),
                pre,
                exports,
                grants,
                limits: config.limits.clone(),
            }),
            budget,
        };
        plugin.info = plugin
            .run(
                "info",
                Some(check_deadline),
                Slot::Check,
                |p: &Identity, s| Box::pin(async move { Ok(Ok(p.call_info(s).await?)) }),
            )
            .await
            .map_err(|e| anyhow::anyhow!("asking the plugin who it is: {e}"))?;
        crate::returns::plugin_info(&plugin.name, &plugin.info)
            .map_err(|e| anyhow::anyhow!("asking the plugin who it is: {}", e.message()))?;
        Ok(plugin)
    }

    pub fn has(&self, feature: Features) -> bool {
        self.info.features.contains(feature)
    }

    /// Runs one operation on a fresh instance, through the interface `E`
    /// the closure takes. `deadline` (the gRPC deadline) can only shorten
    /// the plugin's configured timeout.
    pub async fn call<E, R, F>(
        &self,
        op: &'static str,
        deadline: Option<Duration>,
        f: F,
    ) -> Result<R, CallFailure>
    where
        E: Exports,
        R: Send + 'static,
        F: for<'a> FnOnce(&'a E, &'a mut Store<CallState>) -> CallFuture<'a, R> + Send + 'static,
    {
        self.run(op, deadline, Slot::Call, f).await
    }

    async fn run<E, R, F>(
        &self,
        op: &'static str,
        deadline: Option<Duration>,
        slot: Slot,
        f: F,
    ) -> Result<R, CallFailure>
    where
        E: Exports,
        R: Send + 'static,
        F: for<'a> FnOnce(&'a E, &'a mut Store<CallState>) -> CallFuture<'a, R> + Send + 'static,
    {
        // The caller's deadline less a margin, so that DEADLINE_EXCEEDED
        // reaches it before it gives up on its own (and sees only CANCELLED).
        let answer_by = deadline.map(|d| d.saturating_sub((d / 10).min(DEADLINE_MARGIN)));
        let timeout = Duration::from_secs(self.instancing.limits.call_timeout_seconds)
            .min(answer_by.unwrap_or(Duration::MAX));
        let deadline_failure = || CallFailure::Deadline {
            plugin: self.name.clone(),
            op,
            after: timeout,
        };
        // One end for the whole call, the wait for a permit included.
        let ends = Instant::now() + timeout;
        // Taken here: the request's task-local does not cross to the
        // call's thread.
        let paths = super::state::call_paths();
        let instancing = self.instancing.clone();
        let work = async {
            let call_slot = match slot {
                Slot::Call => Some(self.budget.call().await),
                Slot::Check => None,
            };
            let instance_slot = self.budget.instance().await;
            let on_thread = call_threads::run(async move {
                // Declared before the store, so dropped after it: the slots
                // are free only once the instance is gone, however long
                // after its caller gave up that is.
                let _slots = (call_slot, instance_slot);
                instancing.call(op, paths, ends, timeout, f).await
            });
            on_thread.await.unwrap_or_else(|e| {
                Err(CallFailure::Crashed {
                    plugin: self.name.clone(),
                    op,
                    detail: e.to_string(),
                })
            })
        };
        // The epoch deadline stops wasm code; this also answers the caller
        // on time while a host capability (a stuck mount, say) holds the
        // call's thread.
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(deadline_failure()));
        self.count(op, &result, started.elapsed());
        result
    }

    /// Per-plugin call metrics: outcome counts and durations.
    fn count<R>(&self, op: &'static str, result: &Result<R, CallFailure>, took: Duration) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(CallFailure::Plugin(_)) => "plugin_error",
            Err(CallFailure::Deadline { .. }) => "deadline",
            Err(CallFailure::Memory { .. }) => "memory",
            Err(CallFailure::Handles { .. }) => "handles",
            Err(CallFailure::Crashed { .. }) => "trap",
            Err(CallFailure::Instantiate { .. }) => "instantiate",
        };
        crate::metrics::plugin_call(&self.name, op, outcome, took);
    }
}

impl Instancing {
    /// One call on a fresh instance, run to its end on the current thread
    /// (a call thread: WASI file work and capability system calls block it).
    async fn call<E, R, F>(
        &self,
        op: &'static str,
        paths: CallPaths,
        ends: Instant,
        timeout: Duration,
        f: F,
    ) -> Result<R, CallFailure>
    where
        E: Exports,
        F: for<'a> FnOnce(&'a E, &'a mut Store<CallState>) -> CallFuture<'a, R>,
    {
        let state =
            CallState::new(self.grants.clone(), &self.limits, ends, paths).map_err(|e| {
                CallFailure::Instantiate {
                    plugin: self.name.clone(),
                    detail: format!("{e:#}"),
                }
            })?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // The call has its thread to itself: the guest need not yield to an
        // executor; past the deadline it traps.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= ends {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(e) => return Err(self.classify(op, e, &store, timeout)),
        };
        let exports = match E::load(&self.exports, &mut store, &instance) {
            Ok(exports) => exports,
            Err(e) => return Err(self.classify(op, e, &store, timeout)),
        };
        let result = f(&exports, &mut store).await;
        crate::metrics::plugin_memory_high_water(
            &self.name,
            store.data().limiter.high_water as u64,
        );
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(plugin_error)) => Err(CallFailure::Plugin(plugin_error)),
            Err(e) => Err(self.classify(op, e, &store, timeout)),
        }
    }

    fn classify(
        &self,
        op: &'static str,
        error: wasmtime::Error,
        store: &Store<CallState>,
        timeout: Duration,
    ) -> CallFailure {
        let plugin = self.name.clone();
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return CallFailure::Deadline {
                plugin,
                op,
                after: timeout,
            };
        }
        // The outer error only says "error while executing at wasm
        // backtrace"; the root cause says what happened (a trap code or the
        // limiter's message). The full chain goes to the log.
        let cause = error.root_cause().to_string();
        tracing::debug!(plugin = %plugin, op, error = format!("{error:?}"), "plugin call trapped");
        if store.data().limiter.exhausted {
            tracing::warn!(plugin = %plugin, op, %cause, "plugin call ran out of memory");
            return CallFailure::Memory {
                plugin,
                op,
                detail: cause,
            };
        }
        // The handle table is full: wasmtime-wasi traps rather than answer
        // the guest's open with an error.
        if let Some(wasmtime::component::ResourceTableError::Full) =
            error.root_cause().downcast_ref()
        {
            tracing::warn!(plugin = %plugin, op, "plugin call held too many WASI handles");
            return CallFailure::Handles {
                plugin,
                op,
                limit: self.limits.max_open_handles,
            };
        }
        // For a Rust panic, stderr says why; the trap only says "unreachable".
        let detail = match panic_reason(&store.data().stderr_text()) {
            Some(line) => format!("{line} ({cause})"),
            None => cause,
        };
        tracing::warn!(plugin = %plugin, op, %detail, "plugin call failed");
        CallFailure::Crashed { plugin, op, detail }
    }
}

fn export_indices(pre: &InstancePre<CallState>) -> wasmtime::Result<ExportIndices> {
    Ok(ExportIndices {
        identity: identity::GuestIndices::new(pre)?,
        controller: controller::GuestIndices::new(pre)?,
        node: node::GuestIndices::new(pre)?,
    })
}

/// The last meaningful line a plugin wrote to stderr: for a Rust panic,
/// its message (std's hint about RUST_BACKTRACE says nothing about why).
fn panic_reason(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
}

#[cfg(test)]
mod tests {
    use super::panic_reason;

    #[test]
    fn the_panic_message_is_the_reason_not_the_backtrace_hint() {
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(panic_reason(stderr), Some("boom"));
        assert_eq!(panic_reason("  \n"), None);
    }
}
