//! The `quota` capability: size limits on btrfs subvolumes strictly
//! beneath the plugin root, enforced by the kernel (qgroups), set by ioctl
//! on the subvolume's descriptor. Quotas are never turned on as a side
//! effect of a call: that is an explicit act of the config, done at load
//! (`quota.enableBtrfsQuotas`). Project quotas (XFS/ext4) are the next kind
//! and answer `unimplemented` until then.

use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::Context;

use super::fs::FsCap;
use super::{blocking, btrfs, CallCaps, CapError, CapResult, Grants};
use crate::config::QuotaGrant;
use crate::wit::wasmcsi::plugin::quota::{Host, QuotaKind, Usage};
use crate::wit::wasmcsi::plugin::types::ErrorCode;

pub struct QuotaCap {
    fs: Arc<FsCap>,
}

impl QuotaCap {
    /// The grant; with `enableBtrfsQuotas`, turns quotas on for the root's
    /// btrfs filesystem now, once, as the operator asked.
    pub fn new(grant: &QuotaGrant, fs: Arc<FsCap>) -> anyhow::Result<QuotaCap> {
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

fn quota_fs(grants: &Grants) -> Result<&FsCap, CapError> {
    grants
        .quota
        .as_ref()
        .map(|q| q.fs.as_ref())
        .ok_or_else(|| CapError::not_granted("quota", &grants.plugin))
}

impl Host for CallCaps {
    async fn set_limit(&mut self, kind: QuotaKind, path: String, bytes: u64) -> CapResult<()> {
        if kind == QuotaKind::Project {
            return Err(project_quota_not_yet().into());
        }
        let grants = self.grants.clone();
        Ok(blocking::run(move || {
            let sub = quota_fs(&grants)?.subvolume(&path)?;
            let id = btrfs::subvolume_id(sub.as_fd())?;
            btrfs::limit(sub.as_fd(), id, bytes)
        })
        .await?)
    }

    async fn get_usage(&mut self, kind: QuotaKind, path: String) -> CapResult<Usage> {
        if kind == QuotaKind::Project {
            return Err(project_quota_not_yet().into());
        }
        let grants = self.grants.clone();
        // No forced commit: figures are as of the last transaction (at most
        // the commit interval old), which is what a stats poll needs.
        Ok(blocking::run(move || {
            let sub = quota_fs(&grants)?.subvolume(&path)?;
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
