//! The host's capabilities behind one trait, so a plugin's logic runs
//! natively against a fake host in tests (see `fake`, feature `fake`).
//! `Wasm` forwards to the component's real imports.

use std::time::{Duration, Instant};

use crate::bindings::wasmcsi::plugin::fs_info::FsStats;
use crate::bindings::wasmcsi::plugin::images::CopyMethod;
use crate::bindings::wasmcsi::plugin::log::Level;
use crate::bindings::wasmcsi::plugin::mount::MountEntry;
use crate::bindings::wasmcsi::plugin::quota::{QuotaKind, Usage};
use crate::bindings::wasmcsi::plugin::{btrfs, environment, fs_info, images, log, mount, quota};
use crate::error::Result;
use crate::http::{Request, Response};

/// One method per WIT import, same names and meaning (see plugin.wit);
/// a capability the config does not grant answers an error at run time.
pub trait Host {
    fn settings(&self) -> Vec<(String, String)>;
    fn node_id(&self) -> String;
    fn root(&self) -> Option<String>;
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]);

    fn statfs(&self, path: &str) -> Result<FsStats>;
    fn filesystem_type(&self, path: &str) -> Result<String>;
    fn make_filesystem(&self, image: &str, fs_type: &str) -> Result<()>;
    fn probe_filesystem(&self, image: &str) -> Result<Option<String>>;
    fn check_filesystem(&self, image: &str, fs_type: &str) -> Result<()>;
    fn grow_filesystem(&self, device: &str, mount_path: &str, fs_type: &str) -> Result<()>;
    fn attach_loop(&self, image: &str) -> Result<String>;
    fn find_loop(&self, image: &str) -> Result<Option<String>>;
    fn refresh_loop(&self, device: &str) -> Result<()>;
    fn detach_loop(&self, device: &str) -> Result<()>;
    fn create_subvolume(&self, path: &str) -> Result<()>;
    fn delete_subvolume(&self, path: &str) -> Result<()>;
    fn snapshot_subvolume(&self, source: &str, path: &str) -> Result<()>;

    fn copy_image(&self, source: &str, destination: &str) -> Result<CopyMethod>;
    fn read_only_snapshot(&self, source: &str, path: &str) -> Result<()>;
    /// (source, destination) pairs copied as one point in time.
    fn copy_images(&self, pairs: &[(String, String)]) -> Result<Vec<CopyMethod>>;
    fn read_only_snapshots(&self, pairs: &[(String, String)]) -> Result<()>;
    fn new_filesystem_uuid(&self, image: &str, fs_type: &str) -> Result<()>;
    fn allocated_bytes(&self, path: &str) -> Result<u64>;

    fn set_limit(&self, kind: QuotaKind, path: &str, bytes: u64) -> Result<()>;
    fn get_usage(&self, kind: QuotaKind, path: &str) -> Result<Usage>;

    fn mount(&self, source: &str, target: &str, fs_type: &str, options: &[String]) -> Result<()>;
    fn bind(&self, source: &str, target: &str, read_only: bool) -> Result<()>;
    fn unmount(&self, target: &str, remove_target: bool) -> Result<()>;
    fn mounted_at(&self, target: &str) -> Result<Option<MountEntry>>;
    /// A tmpfs this plugin mounted, given new options (`size=`) in place.
    fn reconfigure(&self, target: &str, options: &[String]) -> Result<()>;

    fn send(&self, req: Request) -> Result<Response>;

    /// The clock and sleeps, so tests can run time (retries, deadlines)
    /// without waiting.
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
    /// Time left before the host ends this call (it traps past it);
    /// unbounded off the host, as in native tests.
    fn time_left(&self) -> Duration {
        Duration::MAX
    }
}

/// `Host::log` with borrowed fields.
pub fn log(host: &dyn Host, level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    host.log(level, message, &fields);
}

/// The real host, through the component's imports.
pub struct Wasm;

impl Host for Wasm {
    fn settings(&self) -> Vec<(String, String)> {
        environment::settings()
    }
    fn node_id(&self) -> String {
        environment::node_id()
    }
    fn root(&self) -> Option<String> {
        environment::root()
    }
    fn time_left(&self) -> Duration {
        Duration::from_millis(environment::time_left_ms())
    }
    fn log(&self, level: Level, message: &str, fields: &[(String, String)]) {
        log::log(level, message, fields)
    }

    fn statfs(&self, path: &str) -> Result<FsStats> {
        fs_info::statfs(path)
    }
    fn filesystem_type(&self, path: &str) -> Result<String> {
        fs_info::filesystem_type(path)
    }
    fn make_filesystem(&self, image: &str, fs_type: &str) -> Result<()> {
        images::make_filesystem(image, fs_type)
    }
    fn probe_filesystem(&self, image: &str) -> Result<Option<String>> {
        images::probe_filesystem(image)
    }
    fn check_filesystem(&self, image: &str, fs_type: &str) -> Result<()> {
        images::check_filesystem(image, fs_type)
    }
    fn grow_filesystem(&self, device: &str, mount_path: &str, fs_type: &str) -> Result<()> {
        images::grow_filesystem(device, mount_path, fs_type)
    }
    fn attach_loop(&self, image: &str) -> Result<String> {
        images::attach_loop(image)
    }
    fn find_loop(&self, image: &str) -> Result<Option<String>> {
        images::find_loop(image)
    }
    fn refresh_loop(&self, device: &str) -> Result<()> {
        images::refresh_loop(device)
    }
    fn detach_loop(&self, device: &str) -> Result<()> {
        images::detach_loop(device)
    }
    fn create_subvolume(&self, path: &str) -> Result<()> {
        btrfs::create_subvolume(path)
    }
    fn delete_subvolume(&self, path: &str) -> Result<()> {
        btrfs::delete_subvolume(path)
    }
    fn snapshot_subvolume(&self, source: &str, path: &str) -> Result<()> {
        btrfs::snapshot_subvolume(source, path)
    }

    fn copy_image(&self, source: &str, destination: &str) -> Result<CopyMethod> {
        images::copy_image(source, destination)
    }
    fn read_only_snapshot(&self, source: &str, path: &str) -> Result<()> {
        btrfs::read_only_snapshot(source, path)
    }
    fn copy_images(&self, pairs: &[(String, String)]) -> Result<Vec<CopyMethod>> {
        images::copy_images(&to_pairs(pairs, |source, destination| images::CopyPair {
            source,
            destination,
        }))
    }
    fn read_only_snapshots(&self, pairs: &[(String, String)]) -> Result<()> {
        btrfs::read_only_snapshots(&to_pairs(pairs, |source, destination| {
            btrfs::SnapshotPair {
                source,
                destination,
            }
        }))
    }
    fn new_filesystem_uuid(&self, image: &str, fs_type: &str) -> Result<()> {
        images::new_filesystem_uuid(image, fs_type)
    }
    fn allocated_bytes(&self, path: &str) -> Result<u64> {
        images::allocated_bytes(path)
    }

    fn set_limit(&self, kind: QuotaKind, path: &str, bytes: u64) -> Result<()> {
        quota::set_limit(kind, path, bytes)
    }
    fn get_usage(&self, kind: QuotaKind, path: &str) -> Result<Usage> {
        quota::get_usage(kind, path)
    }

    fn mount(&self, source: &str, target: &str, fs_type: &str, options: &[String]) -> Result<()> {
        mount::mount(source, target, fs_type, options)
    }
    fn bind(&self, source: &str, target: &str, read_only: bool) -> Result<()> {
        mount::bind(source, target, read_only)
    }
    fn unmount(&self, target: &str, remove_target: bool) -> Result<()> {
        mount::unmount(target, remove_target)
    }
    fn mounted_at(&self, target: &str) -> Result<Option<MountEntry>> {
        mount::mounted_at(target)
    }
    fn reconfigure(&self, target: &str, options: &[String]) -> Result<()> {
        mount::reconfigure(target, options)
    }

    fn send(&self, req: Request) -> Result<Response> {
        crate::http::send(&req)
    }
}

/// (source, destination) pairs as one of the WIT's pair records.
fn to_pairs<T>(pairs: &[(String, String)], make: impl Fn(String, String) -> T) -> Vec<T> {
    pairs
        .iter()
        .map(|(source, destination)| make(source.clone(), destination.clone()))
        .collect()
}
