//! Turning plugin configs into loaded plugins: read and verify the `.wasm`,
//! compile it (or take it from the cache), link it. One loader per process
//! holds the engine, the linker and the cache, for start-up and reloads.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use super::budget::{Budgets, CHECK_SLOTS};
use super::cache::{ComponentCache, Origin};
use super::engine::{self, EngineSizing};
use super::state::CallState;
use super::Plugin;
use crate::config::{Config, PluginConfig, RegistriesConfig};

/// The engine is sized for this many times the instances the plugins may
/// hold (`budget`): each plugin is held to its own share, and the rest is
/// room for a reload that raises limits, or for a removed plugin's last
/// calls beside its successor's.
const RELOAD_HEADROOM: u32 = 2;

pub struct Loader {
    engine: Engine,
    linker: Linker<CallState>,
    cache: Option<ComponentCache>,
    node_id: String,
    sizing: EngineSizing,
    /// Registry access for plugins with an OCI `source`.
    registries: RegistriesConfig,
    /// Each plugin name's call and instance slots, across its versions.
    budgets: Budgets,
    /// How long a new version's `info()` may take.
    check_deadline: Duration,
}

/// What one config asks of the engine.
fn sizing_of(config: &Config) -> EngineSizing {
    EngineSizing {
        instances: config
            .plugins
            .iter()
            .map(|p| p.limits.max_concurrent_calls + CHECK_SLOTS)
            .sum(),
        max_memory_bytes: config
            .plugins
            .iter()
            .map(|p| p.limits.memory_bytes)
            .max()
            .unwrap_or(0),
    }
}

impl Loader {
    pub fn new(config: &Config) -> Result<Loader> {
        let wanted = sizing_of(config);
        let sizing = EngineSizing {
            instances: wanted.instances * RELOAD_HEADROOM,
            ..wanted
        };
        let engine = engine::build(sizing)?;
        let linker = engine::linker(&engine)?;
        let cache = match &config.runtime.cache_dir {
            Some(dir) => match ComponentCache::open(dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "plugin cache disabled");
                    None
                }
            },
            None => None,
        };
        Ok(Loader {
            engine,
            linker,
            cache,
            node_id: config.driver.node_id.clone(),
            sizing,
            registries: config.runtime.registries.clone(),
            budgets: Budgets::default(),
            check_deadline: Duration::from_secs(config.runtime.check_timeout_seconds),
        })
    }

    /// The linker plugins are instantiated against (benchmarks build on it).
    pub fn linker(&self) -> &Linker<CallState> {
        &self.linker
    }

    /// Whether a new config's limits fit the running engine; a reload that
    /// needs a bigger one is refused (it takes a restart).
    pub fn check_fits(&self, config: &Config) -> Result<()> {
        let wanted = sizing_of(config);
        if wanted.instances * RELOAD_HEADROOM > self.sizing.instances
            || wanted.max_memory_bytes > self.sizing.max_memory_bytes
        {
            bail!(
                "the new limits ({} instances, {} bytes of memory) exceed what the engine was sized for at start ({} instances, {} bytes): restart the driver to apply them",
                wanted.instances,
                wanted.max_memory_bytes,
                self.sizing.instances / RELOAD_HEADROOM,
                self.sizing.max_memory_bytes
            );
        }
        Ok(())
    }

    /// Loads every plugin of a config; the first failure names its plugin.
    pub async fn load_all(&self, config: &Config) -> Result<Vec<Arc<Plugin>>> {
        let mut plugins = Vec::new();
        for p in &config.plugins {
            plugins.push(self.load(p).await?);
        }
        Ok(plugins)
    }

    pub async fn load(&self, config: &PluginConfig) -> Result<Arc<Plugin>> {
        self.load_inner(config)
            .await
            .with_context(|| format!("loading plugin {} from {}", config.name, config.origin()))
    }

    async fn load_inner(&self, config: &PluginConfig) -> Result<Arc<Plugin>> {
        let started = Instant::now();
        let (component, origin) = self.component(config).await?;
        let source = match origin {
            Origin::Compiled => "compile",
            Origin::Cache => "cache",
        };
        crate::metrics::plugin_loaded(&config.name, source, started.elapsed());
        super::contract::check(&component, &self.engine)?;
        let budget = self
            .budgets
            .of(&config.name, config.limits.max_concurrent_calls);
        let plugin = Plugin::new(
            &self.linker,
            &component,
            config,
            &self.node_id,
            budget.clone(),
            self.check_deadline,
        )
        .await?;
        // The version's limit applies from the moment it can serve; one
        // that failed its checks leaves the serving one's limit in place.
        if budget.max_calls() != config.limits.max_concurrent_calls {
            tracing::info!(
                plugin = %config.name,
                from = budget.max_calls(),
                to = config.limits.max_concurrent_calls,
                "maxConcurrentCalls changed: calls in flight finish, new ones wait below the new limit"
            );
            budget.set_max_calls(config.limits.max_concurrent_calls);
        }
        tracing::info!(
            plugin = %plugin.name,
            reports = %plugin.info.name,
            version = %plugin.info.version,
            features = ?plugin.info.features,
            from = ?origin,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        Ok(Arc::new(plugin))
    }

    /// The compiled component: from the cache when there is one.
    pub async fn component(&self, config: &PluginConfig) -> Result<(Component, Origin)> {
        let (bytes, digest) = match &config.source {
            Some(source) => {
                let cache_dir = self.cache.as_ref().map(|c| c.dir());
                let pulled = super::oci::fetch(source, &self.registries, cache_dir).await?;
                (pulled.wasm, Some(pulled.sha256))
            }
            None => (read_verified(&config.path, config.sha256.as_deref())?, None),
        };
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || -> Result<(Component, Origin)> {
            match cache {
                Some(cache) => {
                    let digest = digest.unwrap_or_else(|| hex::encode(Sha256::digest(&bytes)));
                    cache.component(&engine, &bytes, &digest)
                }
                None => Component::new(&engine, &bytes)
                    .map(|c| (c, Origin::Compiled))
                    .map_err(anyhow::Error::from)
                    .context("compiling"),
            }
        })
        .await?
    }
}

/// The file's bytes, refused when they do not match a configured pin.
pub fn read_verified(path: &Path, sha256: Option<&str>) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
    if let Some(want) = sha256.filter(|s| !s.is_empty()) {
        let got = hex::encode(Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(want) {
            bail!(
                "{} has sha256 {got}, but the config pins {want}: refusing it",
                path.display()
            );
        }
    }
    Ok(bytes)
}
