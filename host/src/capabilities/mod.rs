//! Host capabilities lent to plugins. Each module is one self-contained
//! unit: its grant (built once per plugin from the config), its bounds
//! checks, and its implementation of the WIT host trait on `CallCaps`, the
//! part of a call's state that capabilities see. They know nothing of the
//! runtime that holds it: imports go one way, runtime → capabilities → wit.

pub mod beneath;
pub mod blocking;
pub mod btrfs;
pub mod call_paths;
pub mod command;
pub mod copies;
pub mod environment;
pub mod fs;
pub mod group_sync;
pub mod grow;
pub mod http;
pub mod images;
pub mod log;
pub mod loopdev;
pub mod mount;
pub mod mount_options;
pub mod netmount;
pub mod qgroup_reaper;
pub mod quota;
pub mod subvolumes;
pub mod tmpfs;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::config::PluginConfig;
use crate::wit::wasmcsi::plugin::types::Error as WitError;
pub use crate::wit::wasmcsi::plugin::types::ErrorCode;

/// What one call's capabilities work with: the plugin's grants, the paths
/// the call may mount on, the call's log budget and when the host ends the
/// call.
pub struct CallCaps {
    pub grants: Arc<Grants>,
    pub mounts: call_paths::CallPaths,
    pub log: log::CallLog,
    pub ends: Instant,
}

impl crate::wit::wasmcsi::plugin::types::Host for CallCaps {}

/// Everything one plugin was granted, shared by all its calls.
pub struct Grants {
    pub plugin: String,
    pub node_id: String,
    pub settings: Vec<(String, String)>,
    pub fs: Option<Arc<fs::FsCap>>,
    pub quota: Option<quota::QuotaCap>,
    pub mount: Option<Arc<mount::MountCap>>,
    pub http: Option<Arc<http::HttpCap>>,
    pub log: bool,
}

impl Grants {
    pub fn from_config(config: &PluginConfig, node_id: &str) -> Result<Grants> {
        let caps = &config.capabilities;
        let fs = caps
            .fs
            .as_ref()
            .map(|grant| fs::FsCap::new(grant, config.limits.max_loop_devices))
            .transpose()?
            .map(Arc::new);
        let quota = match (&caps.quota, &fs) {
            (Some(grant), Some(fs)) => Some(quota::QuotaCap::new(grant, fs.clone())?),
            _ => None,
        };
        Ok(Grants {
            plugin: config.name.clone(),
            node_id: node_id.to_string(),
            settings: config.settings_map(),
            mount: caps
                .mount
                .as_ref()
                .map(|m| mount::MountCap::new(m, fs.clone(), &config.name).map(Arc::new))
                .transpose()?,
            http: caps
                .http
                .as_ref()
                .map(|g| http::HttpCap::new(g).map(Arc::new))
                .transpose()?,
            log: caps.log.is_some(),
            quota,
            fs,
        })
    }
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
