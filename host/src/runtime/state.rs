//! The data of one call's store: WASI context (only the plugin root is
//! visible), the grants the capabilities check, and the call's limits.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::limits::MemoryLimiter;
use crate::capabilities::Grants;

/// How much of a plugin's stderr (panic messages) is kept for the error.
const STDERR_CAPTURE: usize = 16 << 10;

pub struct CallState {
    pub grants: Arc<Grants>,
    pub limiter: MemoryLimiter,
    pub stderr: MemoryOutputPipe,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl CallState {
    pub fn new(grants: Arc<Grants>, memory_bytes: u64) -> anyhow::Result<CallState> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut wasi = WasiCtx::builder();
        // No environment, no arguments, no network, no stdin/stdout: only
        // stderr (captured) and the granted root at its own path.
        wasi.stderr(stderr.clone());
        if let Some(fs) = &grants.fs {
            let root = fs.root.to_string_lossy();
            wasi.preopened_dir(&fs.root, root.as_ref(), FsPerms::ReadWrite)
                .map_err(anyhow::Error::from)?;
        }
        Ok(CallState {
            grants,
            limiter: MemoryLimiter::new(memory_bytes),
            stderr,
            wasi: wasi.build(),
            table: ResourceTable::new(),
        })
    }

    /// What the plugin wrote to stderr, e.g. a panic message.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
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

impl super::bindings::wasmcsi::plugin::types::Host for CallState {}
