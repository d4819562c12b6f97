//! What one call knows of the world: the host, the root and its layout.
//! Built per call, since instances are not reused.

use crate::config::Settings;
use crate::error::{precondition, Result};
use crate::host::{self, Host};
use crate::store::Layout;
use crate::wasmcsi::plugin::log::Level;

pub struct Env {
    pub host: Box<dyn Host>,
    pub layout: Layout,
}

impl Env {
    /// The environment of an exported call, on the real host.
    pub fn load() -> Result<Env> {
        Env::with_host(Box::new(host::Wasm))
    }

    /// Every call but `info` needs the root: without the fs capability
    /// there is nowhere to keep volumes.
    pub fn with_host(host: Box<dyn Host>) -> Result<Env> {
        let root = host
            .root()
            .ok_or_else(|| precondition("local-dir needs the fs capability (a root directory)"))?;
        if !root.starts_with('/') {
            return Err(precondition(format!(
                "local-dir root {root:?} is not an absolute path"
            )));
        }
        Ok(Env {
            layout: Layout::new(&root),
            host,
        })
    }

    /// Parsed on demand: calls that do not need settings keep working
    /// (e.g. unpublish during cleanup) even if the config has a typo.
    pub fn settings(&self) -> Result<Settings> {
        Settings::parse(&self.host.settings())
    }

    pub fn node_id(&self) -> String {
        self.host.node_id()
    }

    pub fn info(&self, message: &str, fields: &[(&str, &str)]) {
        self.log(Level::Info, message, fields)
    }

    pub fn warn(&self, message: &str, fields: &[(&str, &str)]) {
        self.log(Level::Warn, message, fields)
    }

    pub fn debug(&self, message: &str, fields: &[(&str, &str)]) {
        self.log(Level::Debug, message, fields)
    }

    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        host::log(&*self.host, level, message, fields)
    }
}
