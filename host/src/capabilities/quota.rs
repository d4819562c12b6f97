//! The `quota` capability: size limits on btrfs subvolumes strictly
//! beneath the plugin root, enforced by the kernel (qgroups), set by ioctl
//! on the subvolume's descriptor. Quotas are never turned on as a side
//! effect of a call: that is an explicit act of the config, done at load
//! (`quota.enableBtrfsQuotas`). Project quotas (XFS/ext4) are the next kind
//! and answer `unimplemented` until then.

use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;
use wasmtime::component::{HasData, Linker};

use super::root::PluginRoot;
use super::{blocking, granted, CallCaps, CapError, CapResult, HasCallCaps};
use crate::config::env;
use crate::sys::btrfs;
use crate::wit::wasmcsi::plugin::quota::{self as wit, Host, QuotaKind, Usage};
use crate::wit::wasmcsi::plugin::types::ErrorCode;

/// The config's `capabilities.quota` (it needs `capabilities.fs`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuotaGrant {
    /// Turn btrfs quotas on for the root's filesystem at load. Quotas are
    /// a filesystem-wide setting (with a cost on every write), so the host
    /// never turns them on as a side effect of a plugin's call.
    #[serde(default, deserialize_with = "env::scalar")]
    pub enable_btrfs_quotas: bool,
}

/// The quota unit's state: the root whose subvolumes it limits.
pub struct QuotaCap {
    fs: Arc<PluginRoot>,
}

impl QuotaCap {
    /// The grant; with `enableBtrfsQuotas`, turns quotas on for the root's
    /// btrfs filesystem now, once, as the operator asked.
    pub fn new(grant: &QuotaGrant, fs: Arc<PluginRoot>) -> anyhow::Result<QuotaCap> {
        if grant.enable_btrfs_quotas {
            // ioctls need a real descriptor, not the root's O_PATH one.
            let root = rustix::fs::openat(
                fs.root.fd(),
                ".",
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .with_context(|| format!("opening {}", fs.root.path().display()))?;
            if btrfs::on_btrfs(root.as_fd()).map_err(|e| anyhow::anyhow!(e.message))? {
                btrfs::enable_quotas(root.as_fd())
                    .map_err(|e| anyhow::anyhow!(e.message))
                    .with_context(|| format!("on {}", fs.root.path().display()))?;
                tracing::info!(root = %fs.root.path().display(), "btrfs quotas enabled (enableBtrfsQuotas)");
            }
        }
        Ok(QuotaCap { fs })
    }
}

fn project_quota_not_yet() -> CapError {
    CapError::new(
        ErrorCode::Unimplemented,
        "project quotas (XFS/ext4) are not implemented yet",
    )
}

/// The `quota` interface as the linker sees it.
pub struct Quota;

impl HasData for Quota {
    type Data<'a> = QuotaView<'a>;
}

/// One call's view of `quota`: the unit's state, if granted.
pub struct QuotaView<'a> {
    cap: Option<&'a Arc<QuotaCap>>,
    plugin: &'a str,
}

impl<'a> QuotaView<'a> {
    /// The view of the call's `quota` state.
    pub fn of(call: &'a CallCaps) -> QuotaView<'a> {
        QuotaView {
            cap: call.grants.quota.as_ref(),
            plugin: &call.grants.plugin,
        }
    }

    fn cap(&self) -> Result<Arc<QuotaCap>, CapError> {
        granted(self.cap, "quota", self.plugin).cloned()
    }
}

/// Links `quota`.
pub fn add_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Quota>(linker, |t| QuotaView::of(t.call_caps()))
}

impl Host for QuotaView<'_> {
    async fn set_limit(&mut self, kind: QuotaKind, path: String, bytes: u64) -> CapResult<()> {
        if kind == QuotaKind::Project {
            return Err(project_quota_not_yet().into());
        }
        let cap = self.cap()?;
        Ok(blocking::run(move || {
            let sub = cap.fs.subvolume(&path)?;
            let id = btrfs::subvolume_id(sub.as_fd())?;
            btrfs::limit(sub.as_fd(), id, bytes)
        })
        .await?)
    }

    async fn get_usage(&mut self, kind: QuotaKind, path: String) -> CapResult<Usage> {
        if kind == QuotaKind::Project {
            return Err(project_quota_not_yet().into());
        }
        let cap = self.cap()?;
        // No forced commit: figures are as of the last transaction (at most
        // the commit interval old), which is what a stats poll needs.
        Ok(blocking::run(move || {
            let sub = cap.fs.subvolume(&path)?;
            let id = btrfs::subvolume_id(sub.as_fd())?;
            let usage = btrfs::qgroup_usage(sub.as_fd(), id)?.ok_or_else(|| {
                CapError::not_found(format!("no qgroup 0/{id} (are quotas enabled?)"))
            })?;
            Ok(Usage {
                used_bytes: usage.referenced,
                limit_bytes: usage.max_referenced,
            })
        })
        .await?)
    }
}
