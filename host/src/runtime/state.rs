//! The data of one call's store: WASI context (only the plugin root is
//! visible, through `preopens`), the grants the capabilities check, and the
//! call's limits: memory, the WASI handles it may hold, its log budget.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limits::MemoryLimiter;
use crate::capabilities::call_paths::CallPaths;
use crate::capabilities::http::CallHttp;
use crate::capabilities::log::CallLog;
use crate::capabilities::root::PluginRoot;
use crate::capabilities::{CallCaps, Grants, HasCallCaps};
use crate::config::Limits;

/// How much of a plugin's stderr (panic messages) is kept for the error.
/// Past it the stream is closed to the plugin: a write fails, no more is
/// stored.
const STDERR_CAPTURE: usize = 16 << 10;

tokio::task_local! {
    /// The paths the CO named in the node call this task is making: the
    /// mount authority of the plugin call's state (see `call_paths`). They
    /// travel with the request's task rather than through every layer
    /// between the CSI service and the store; a call made where none was
    /// set (controller, identity, a plugin's load) gets none.
    static CALL_PATHS: CallPaths;
}

/// Runs `work` (a plugin call) with the mount authority of `paths`.
pub async fn with_call_paths<F: std::future::Future>(paths: CallPaths, work: F) -> F::Output {
    CALL_PATHS.scope(paths, work).await
}

/// The mount authority of the call this task is making (none outside
/// `with_call_paths`), taken before the call leaves for its own thread.
pub fn call_paths() -> CallPaths {
    CALL_PATHS
        .try_with(CallPaths::clone)
        .unwrap_or_else(|_| CallPaths::none())
}

pub struct CallState {
    /// What the capabilities see: each unit's view borrows its part.
    pub caps: CallCaps,
    pub limiter: MemoryLimiter,
    pub stderr: MemoryOutputPipe,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// Where the plugin's wasi:http requests go: the `http` capability.
    http_hooks: CallHttp,
    /// Every WASI handle of the call (descriptors, streams, pollables),
    /// bounded by `limits.maxOpenHandles`: a guest that opens one more file
    /// than that traps, and only its own call fails.
    table: ResourceTable,
}

impl CallState {
    pub fn new(
        grants: Arc<Grants>,
        limits: &Limits,
        ends: Instant,
        mounts: CallPaths,
    ) -> anyhow::Result<CallState> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut wasi = WasiCtx::builder();
        // No environment, no arguments, no network, no stdin/stdout: only
        // stderr (captured). The granted root comes from `preopens`. No
        // socket can even be created (each would be a host descriptor).
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // A call runs on a thread of its own (`call_threads`): file
            // work blocks that thread instead of a hand-off to tokio's
            // blocking pool per operation.
            .allow_blocking_current_thread(true);
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_open_handles as usize);
        let http_hooks = CallHttp::new(&grants.plugin, grants.http.clone(), ends);
        Ok(CallState {
            caps: CallCaps {
                mounts,
                log: CallLog::new(&grants.plugin, limits),
                grants,
                ends,
            },
            limiter: MemoryLimiter::new(limits.memory_bytes),
            stderr,
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            http_hooks,
            table,
        })
    }

    /// The plugin's root beside the resource table WASI uses, borrowed
    /// together (the preopens need both).
    pub fn fs_and_table(&mut self) -> (Option<&PluginRoot>, &mut ResourceTable) {
        (self.caps.grants.root.as_deref(), &mut self.table)
    }

    /// What the plugin wrote to stderr, e.g. a panic message.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }
}

impl HasCallCaps for CallState {
    fn call_caps(&mut self) -> &mut CallCaps {
        &mut self.caps
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}
