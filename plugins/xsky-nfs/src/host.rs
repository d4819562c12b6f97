//! The host's capabilities this plugin uses, behind one trait so the logic
//! can run natively against a fake in tests. `Wasm` forwards to the imports.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::wasmcsi::plugin::fs::FsStats;
use crate::wasmcsi::plugin::http::{Request, Response};
use crate::wasmcsi::plugin::log::Level;
use crate::wasmcsi::plugin::mount::MountEntry;
use crate::wasmcsi::plugin::{environment, fs, http, log, mount};

pub trait Host {
    fn settings(&self) -> Vec<(String, String)>;
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]);
    fn send(&self, req: Request) -> Result<Response>;
    fn mount(&self, source: &str, target: &str, fs_type: &str, options: &[String]) -> Result<()>;
    fn unmount(&self, target: &str, remove_target: bool) -> Result<()>;
    fn mounted_at(&self, target: &str) -> Result<Option<MountEntry>>;
    fn statfs(&self, path: &str) -> Result<FsStats>;
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

pub struct Wasm;

impl Host for Wasm {
    fn settings(&self) -> Vec<(String, String)> {
        environment::settings()
    }
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]) {
        log::log(level, message, fields)
    }
    fn send(&self, req: Request) -> Result<Response> {
        http::send(&req)
    }
    fn mount(&self, source: &str, target: &str, fs_type: &str, options: &[String]) -> Result<()> {
        mount::mount(source, target, fs_type, options)
    }
    fn unmount(&self, target: &str, remove_target: bool) -> Result<()> {
        mount::unmount(target, remove_target)
    }
    fn mounted_at(&self, target: &str) -> Result<Option<MountEntry>> {
        mount::mounted_at(target)
    }
    fn statfs(&self, path: &str) -> Result<FsStats> {
        fs::statfs(path)
    }
}

/// `log` with string fields.
pub fn log(host: &dyn Host, level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    host.log(level, message, &fields);
}
