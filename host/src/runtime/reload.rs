//! Hot reload: every few seconds, look at the config file and at each
//! plugin's `.wasm`; when one changed, load the new version and hand the
//! new plugin set over to be swapped in. A version that fails to load is
//! logged and skipped while the old one keeps serving (one from a registry
//! is tried again every little while: the registry may come back). Polling metadata
//! (device, inode, size, mtime) follows a ConfigMap's `..data` symlink
//! swap as well as a file copied over in place, with no extra dependency.
//!
//! Each plugin reloads on its own: its load (pull, compile, the new
//! version's `info()` under `runtime.checkTimeoutSeconds`) runs as a task of
//! its own and is swapped in the moment it is done, so a version that hangs
//! in its checks delays only its own reload, never another plugin's.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Loader, Plugin};
use crate::config::{Config, Overrides, PluginConfig};

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// The version of a plugin last tried: its config entry and file.
#[derive(Debug, Clone, PartialEq)]
struct Version {
    config: PluginConfig,
    file: Option<Stamp>,
}

impl Version {
    fn of(config: &PluginConfig) -> Version {
        Version {
            config: config.clone(),
            file: stamp(&config.path),
        }
    }
}

pub struct Watcher {
    loader: Arc<Loader>,
    path: PathBuf,
    overrides: Overrides,
    config: Config,
    config_file: Option<Stamp>,
    /// Serving now.
    loaded: HashMap<String, Arc<Plugin>>,
    /// Last tried, loaded or not: a broken version is tried once...
    tried: HashMap<String, Version>,
    /// ...except one pulled from a registry, which may have been down:
    /// tried again from this time on.
    retry_pull: HashMap<String, Instant>,
    /// Plugins with a load running: a newer version waits for it to end.
    loading: HashSet<String>,
}

/// A load that ended, sent back by its task.
struct Loaded {
    name: String,
    pulled: bool,
    result: anyhow::Result<Arc<Plugin>>,
}

/// How long a failed pull waits before it is tried again.
const RETRY_PULL: Duration = Duration::from_secs(15);

impl Watcher {
    pub fn new(
        loader: Arc<Loader>,
        path: PathBuf,
        overrides: Overrides,
        config: Config,
        plugins: &[Arc<Plugin>],
    ) -> Watcher {
        let tried = config
            .plugins
            .iter()
            .map(|p| (p.name.clone(), Version::of(p)))
            .collect();
        Watcher {
            loader,
            config_file: stamp(&path),
            path,
            overrides,
            config,
            loaded: plugins
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            tried,
            retry_pull: HashMap::new(),
            loading: HashSet::new(),
        }
    }

    /// Checks every `interval`, calling `swap` with each new plugin set.
    pub async fn run(mut self, interval: Duration, swap: impl Fn(Vec<Arc<Plugin>>) + Send) {
        let (done, mut finished) = mpsc::unbounded_channel();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = tokio::select! {
                _ = ticker.tick() => self.check(&done),
                Some(loaded) = finished.recv() => self.finish(loaded),
            };
            if changed {
                swap(self.serving());
            }
        }
    }

    /// One look: starts a load for each plugin whose version changed and
    /// drops the plugins the config no longer names. True when that changed
    /// the plugin set.
    fn check(&mut self, done: &mpsc::UnboundedSender<Loaded>) -> bool {
        self.reread_config();
        let wanted: Vec<PluginConfig> = self.config.plugins.clone();
        for p in &wanted {
            if self.loading.contains(&p.name) {
                continue;
            }
            let version = Version::of(p);
            let retry_due = self
                .retry_pull
                .get(&p.name)
                .is_some_and(|at| *at <= Instant::now());
            if self.tried.get(&p.name) == Some(&version) && !retry_due {
                continue;
            }
            self.tried.insert(p.name.clone(), version);
            self.retry_pull.remove(&p.name);
            self.loading.insert(p.name.clone());
            self.start_load(p.clone(), done.clone());
        }
        let names: Vec<&String> = wanted.iter().map(|p| &p.name).collect();
        let before = self.loaded.len();
        self.loaded.retain(|name, _| names.contains(&name));
        self.tried.retain(|name, _| names.contains(&name));
        self.retry_pull.retain(|name, _| names.contains(&name));
        if self.loaded.len() != before {
            tracing::info!("plugins removed from the config are unloaded");
            return true;
        }
        false
    }

    /// Loads one plugin in a task of its own; a panic in the load is a
    /// failed load, so the plugin is never left marked as loading.
    fn start_load(&self, config: PluginConfig, done: mpsc::UnboundedSender<Loaded>) {
        let loader = self.loader.clone();
        tokio::spawn(async move {
            let name = config.name.clone();
            let pulled = config.source.is_some();
            let result = tokio::spawn(async move { loader.load(&config).await })
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("loading {name} failed: {e}")));
            let _ = done.send(Loaded {
                name,
                pulled,
                result,
            });
        });
    }

    /// Takes an ended load; true when a new version was swapped in.
    fn finish(&mut self, loaded: Loaded) -> bool {
        let Loaded {
            name,
            pulled,
            result,
        } = loaded;
        self.loading.remove(&name);
        if !self.config.plugins.iter().any(|p| p.name == name) {
            // Removed from the config while it loaded.
            return false;
        }
        match result {
            Ok(plugin) => {
                tracing::info!(plugin = %name, "plugin reloaded: new calls use the new version");
                self.loaded.insert(name, plugin);
                true
            }
            Err(e) => {
                if pulled {
                    self.retry_pull
                        .insert(name.clone(), Instant::now() + RETRY_PULL);
                }
                tracing::error!(
                    plugin = %name,
                    error = format!("{e:#}"),
                    "new plugin version rejected; the previous one (if any) keeps serving"
                );
                false
            }
        }
    }

    /// The serving plugins, in the config's order.
    fn serving(&self) -> Vec<Arc<Plugin>> {
        self.config
            .plugins
            .iter()
            .filter_map(|p| self.loaded.get(&p.name).cloned())
            .collect()
    }

    /// Takes a changed config file when it is valid and fits the engine.
    fn reread_config(&mut self) {
        let now = stamp(&self.path);
        if now == self.config_file {
            return;
        }
        self.config_file = now;
        let config = match Config::load(&self.path, &self.overrides) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "changed config rejected; keeping the running one"
                );
                return;
            }
        };
        if let Err(e) = self.loader.check_fits(&config) {
            tracing::error!(
                error = format!("{e:#}"),
                "changed config rejected; keeping the running one"
            );
            return;
        }
        if config.driver != self.config.driver || config.runtime != self.config.runtime {
            tracing::warn!(
                "driver or runtime settings changed: they apply at the next restart (plugins reload now)"
            );
        }
        tracing::info!(config = %self.path.display(), "config changed");
        self.config.plugins = config.plugins;
    }
}
