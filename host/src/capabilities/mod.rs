//! Host capabilities lent to plugins: one unit per WIT interface, named
//! after it (`mount`, `fs_info`, `images`, `btrfs`, `quota`, `log`,
//! `environment`, and `http` for wasi:http). Each unit owns its grant (the
//! serde section of the config and its validation), its state built once
//! per plugin at load, a narrow per-call view that implements the WIT
//! `Host` trait, and its own `add_to_linker`. A unit never reads another's
//! grant: what it needs of one is handed to it when `Grants` is built.
//!
//! `root` is the plugin's root directory (the config's `fs` grant), which
//! `fs_info`, `images`, `btrfs`, `quota`, `environment` and the WASI
//! preopen share. Units know nothing of the runtime that holds a call's
//! state: it only says how to reach `CallCaps` (`HasCallCaps`), so imports
//! go one way, runtime → capabilities → wit.

pub mod btrfs;
pub mod call_paths;
pub mod copies;
pub mod environment;
pub mod fs_info;
pub mod http;
pub mod images;
pub mod log;
pub mod mount;
pub mod mount_options;
pub mod netmount;
pub mod quota;
pub mod root;
pub mod tmpfs;

// The OS primitives the units are built on, at their old paths too.
pub use crate::sys::{beneath, blocking, command, grow, loopdev};

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use wasmtime::component::{HasData, Linker};

use crate::config::PluginConfig;
use crate::wit::wasmcsi::plugin::types::Error as WitError;
pub use crate::wit::wasmcsi::plugin::types::ErrorCode;

/// Everything one plugin was granted, built once at load and shared by all
/// its calls: each unit's own state, `None` where it is not granted.
pub struct Grants {
    /// The plugin's name, for messages.
    pub plugin: Arc<str>,
    /// The plugin's root directory (`fs` grant), also its WASI preopen.
    pub root: Option<Arc<root::PluginRoot>>,
    pub environment: environment::EnvironmentCap,
    pub log: log::LogCap,
    pub fs_info: Option<Arc<fs_info::FsInfoCap>>,
    pub images: Option<Arc<images::ImagesCap>>,
    pub btrfs: Option<Arc<root::PluginRoot>>,
    pub quota: Option<Arc<quota::QuotaCap>>,
    pub mount: Option<Arc<mount::MountCap>>,
    pub http: Option<Arc<http::HttpCap>>,
}

impl Grants {
    /// Builds every granted unit's state from the plugin's config.
    pub fn from_config(config: &PluginConfig, node_id: &str) -> Result<Grants> {
        let caps = &config.capabilities;
        let plugin: Arc<str> = config.name.as_str().into();
        let root = caps
            .fs
            .as_ref()
            .map(|grant| root::PluginRoot::new(grant, config.limits.max_loop_devices))
            .transpose()?
            .map(Arc::new);
        let quota = match (&caps.quota, &root) {
            (Some(grant), Some(root)) => Some(Arc::new(quota::QuotaCap::new(grant, root.clone())?)),
            _ => None,
        };
        let mount = caps
            .mount
            .as_ref()
            .map(|m| mount::MountCap::new(m, root.clone(), &config.name).map(Arc::new))
            .transpose()?;
        // What fs-info and images may look at beneath the mount prefixes,
        // handed over now rather than read from the mount grant per call.
        let mount_prefixes = mount.as_ref().map(|m| m.prefixes());
        Ok(Grants {
            environment: environment::EnvironmentCap::new(
                config.settings_map(),
                node_id,
                root.as_deref(),
            ),
            log: log::LogCap::new(caps.log.as_ref(), &config.name),
            fs_info: fs_info::FsInfoCap::new(root.clone(), mount_prefixes.clone()),
            images: root
                .clone()
                .map(|root| Arc::new(images::ImagesCap::new(root, mount_prefixes))),
            // Subvolumes beneath the root: the root is all `btrfs` needs.
            btrfs: root.clone(),
            http: caps
                .http
                .as_ref()
                .map(|g| http::HttpCap::new(g).map(Arc::new))
                .transpose()?,
            quota,
            mount,
            root,
            plugin,
        })
    }
}

/// What one call's capabilities work with: the plugin's grants, the paths
/// the call may mount on, the call's log budget and when the host ends the
/// call. Each unit's view borrows only its own part of it.
pub struct CallCaps {
    pub grants: Arc<Grants>,
    pub mounts: call_paths::CallPaths,
    pub log: log::CallLog,
    pub ends: Instant,
}

/// How a unit reaches the call's `CallCaps` in the embedder's store data
/// (wasmtime-wasi's `WasiView` in small).
pub trait HasCallCaps: Send + 'static {
    /// The call's capabilities.
    fn call_caps(&mut self) -> &mut CallCaps;
}

/// The `types` interface: types only, no functions.
pub struct Types;

impl HasData for Types {
    type Data<'a> = TypesView;
}

/// The (empty) view of the `types` interface.
pub struct TypesView;

impl crate::wit::wasmcsi::plugin::types::Host for TypesView {}

/// Links the `types` interface (no functions, but the world imports it).
pub fn add_types_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    crate::wit::wasmcsi::plugin::types::add_to_linker::<T, Types>(linker, |_| TypesView)
}

/// The message for a call to a unit the plugin was not granted.
pub(crate) fn granted<'a, C>(
    cap: Option<&'a C>,
    capability: &str,
    plugin: &str,
) -> Result<&'a C, CapError> {
    cap.ok_or_else(|| CapError::not_granted(capability, plugin))
}

/// A capability call's failure, returned to the plugin as a WIT error.
#[derive(Debug, Clone)]
pub struct CapError {
    pub code: ErrorCode,
    pub message: String,
}

impl CapError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CapError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn not_granted(capability: &str, plugin: &str) -> Self {
        Self::denied(format!(
            "capability {capability} is not granted to plugin {plugin}"
        ))
    }
}

impl From<CapError> for WitError {
    fn from(e: CapError) -> WitError {
        WitError {
            code: e.code,
            message: e.message,
        }
    }
}

/// Result type of every host function with a fallible WIT signature.
pub type CapResult<T> = std::result::Result<T, WitError>;
