//! The `quota` capability: size limits on btrfs subvolumes strictly
//! beneath the plugin root, enforced by the kernel (qgroups), set by ioctl
//! on the subvolume's descriptor. Quotas are never turned on as a side
//! effect of a call: that is an explicit act of the config, done at load
//! (`quota.enableBtrfsQuotas`). Project quotas (XFS/ext4) are the next kind
//! and answer `unimplemented` until then.

use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::Context;

use super::command::{self, FD_ARG};
use super::fs::FsCap;
use super::{blocking, btrfs, CapError, CapResult, Grants};
use crate::config::QuotaGrant;
use crate::runtime::bindings::wasmcsi::plugin::quota::{Host, QuotaKind, Usage};
use crate::runtime::bindings::wasmcsi::plugin::types::ErrorCode;
use crate::runtime::state::CallState;

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

/// Reads `referenced` and `max referenced` of one qgroup from
/// `btrfs qgroup show -re --raw` output.
fn parse_qgroup_show(out: &str, qgroup: &str) -> Option<Usage> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(qgroup))?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    let used_bytes = cols.get(1)?.parse().ok()?;
    let limit_bytes = cols.get(3).and_then(|v| v.parse().ok());
    Some(Usage {
        limit_bytes,
        used_bytes,
    })
}

impl Host for CallState {
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
        let (sub, id) = blocking::run(move || {
            let sub = quota_fs(&grants)?.subvolume(&path)?;
            let id = btrfs::subvolume_id(sub.as_fd())?;
            Ok((sub, id))
        })
        .await?;
        // No forced commit: figures are as of the last transaction (at most
        // the commit interval old), which is what a stats poll needs.
        let out = command::run_on_fd_ok(
            "btrfs",
            &["qgroup", "show", "-reF", "--raw", FD_ARG],
            sub.as_fd(),
        )
        .await?;
        let qgroup = format!("0/{id}");
        Ok(parse_qgroup_show(&out, &qgroup).ok_or_else(|| {
            CapError::not_found(format!("no qgroup {qgroup} (are quotas enabled?)"))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qgroup_show() {
        let out = "Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path \n\
                   --------    ----------    ---------  --------------  -------------   ---- \n\
                   0/5              16384        16384            none           none   <toplevel>\n\
                   0/256         10469376     10469376        10485760           none   v1\n";
        let u = parse_qgroup_show(out, "0/256").unwrap();
        assert_eq!((u.used_bytes, u.limit_bytes), (10469376, Some(10485760)));
        let top = parse_qgroup_show(out, "0/5").unwrap();
        assert_eq!(top.limit_bytes, None);
        assert!(parse_qgroup_show(out, "0/257").is_none());
    }
}
