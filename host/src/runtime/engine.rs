//! The one wasmtime engine of the process and the linker every plugin is
//! instantiated against.

use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::state::CallState;
use crate::capabilities::{self as caps, HasCallCaps};

/// The epoch advances this often; call deadlines are counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Up to this much of a memory (or table) slot stays resident between
/// calls: the pages a call dirtied are reset to the original image in place
/// instead of being released, so the next instance in the slot takes no page
/// faults. A Rust plugin's 1 MiB stack plus data and first heap fit.
/// PAGEMAP_SCAN (Linux 6.7+) limits the reset to the pages a call actually
/// touched; without it the whole span is reset, still cheaper than faults.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Core instances and tables one component may hold. A Rust plugin has
/// 3-4 instances; a componentize-py (CPython) plugin 14: libc, libpython
/// and the runtime are dynamically linked modules, each its own instance.
/// Slots are address space, reserved, not memory.
const MAX_CORE_INSTANCES: u32 = 32;
const MAX_TABLES: u32 = 32;

/// What the engine must be sized for, summed over all plugins.
#[derive(Debug, Clone, Copy)]
pub struct EngineSizing {
    /// Instances alive at once (the sum of plugins' concurrent calls).
    pub instances: u32,
    /// Largest linear memory any plugin may have.
    pub max_memory_bytes: u64,
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Builds the engine, with the pooling allocator when the system allows it
/// (it reserves address space up front) and the on-demand one otherwise.
pub fn build(sizing: EngineSizing) -> Result<Engine> {
    let mut pooled = base_config();
    let mut pool = PoolingAllocationConfig::default();
    let n = sizing.instances.max(1);
    pool.total_component_instances(n)
        .total_core_instances(n * MAX_CORE_INSTANCES)
        .max_core_instances_per_component(MAX_CORE_INSTANCES)
        .total_memories(n * 2)
        .max_memories_per_component(2)
        .total_tables(n * MAX_TABLES)
        .max_tables_per_component(MAX_TABLES)
        .max_memory_size(usize::try_from(sizing.max_memory_bytes).unwrap_or(usize::MAX))
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES);
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = match Engine::new(&pooled) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::warn!(error = %e, "pooling allocator unavailable, using on-demand allocation");
            Engine::new(&base_config())
                .map_err(anyhow::Error::from)
                .context("creating the wasm engine")?
        }
    };
    start_epoch_ticker(&engine);
    // A call thread for every instance the engine can hold.
    super::call_threads::reserve(n as usize);
    Ok(engine)
}

/// A thread that advances the epoch until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// The linker with WASI (what Rust's std imports) and every host
/// capability, one unit at a time.
pub fn linker(engine: &Engine) -> Result<Linker<CallState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    super::preopens::add_to_linker(&mut linker)?;
    link_capabilities(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking host capabilities")?;
    Ok(linker)
}

/// Our own interfaces and wasi:http, one unit each (the world's
/// `add_to_linker` would want one type for all of them).
fn link_capabilities<T: HasCallCaps + wasmtime_wasi_http::WasiHttpView>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    caps::http::add_to_linker(linker)?;
    caps::add_types_to_linker(linker)?;
    caps::log::add_to_linker(linker)?;
    caps::environment::add_to_linker(linker)?;
    caps::fs_info::add_to_linker(linker)?;
    caps::images::add_to_linker(linker)?;
    caps::btrfs::add_to_linker(linker)?;
    caps::quota::add_to_linker(linker)?;
    caps::mount::add_to_linker(linker)?;
    Ok(())
}
