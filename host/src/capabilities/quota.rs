//! The `quota` capability: size limits on directories under the plugin
//! root, enforced by the kernel. btrfs qgroups today; project quotas
//! (XFS/ext4) are the next kind and answer `unimplemented` until then.

use std::path::Path;
use std::sync::Arc;

use super::fs::FsCap;
use super::{command, CapError, CapResult};
use crate::runtime::bindings::wasmcsi::plugin::quota::{Host, QuotaKind, Usage};
use crate::runtime::bindings::wasmcsi::plugin::types::ErrorCode;
use crate::runtime::state::CallState;

pub struct QuotaCap {
    fs: Arc<FsCap>,
}

impl QuotaCap {
    pub fn new(fs: Arc<FsCap>) -> QuotaCap {
        QuotaCap { fs }
    }
}

fn project_quota_not_yet() -> CapError {
    CapError::new(
        ErrorCode::Unimplemented,
        "project quotas (XFS/ext4) are not implemented yet",
    )
}

/// The qgroup id (`0/<subvolume id>`) of a subvolume.
async fn qgroup_of(path: &Path) -> Result<String, CapError> {
    let path = path.to_string_lossy();
    let id = command::run("btrfs", &["inspect-internal", "rootid", &path])
        .await
        .map_err(|e| {
            CapError::invalid(format!("{path} is not a btrfs subvolume: {}", e.message))
        })?;
    Ok(format!("0/{}", id.trim()))
}

async fn btrfs_set_limit(path: &Path, bytes: u64) -> Result<(), CapError> {
    qgroup_of(path).await?;
    let p = path.to_string_lossy();
    let limit = bytes.to_string();
    let args = ["qgroup", "limit", limit.as_str(), p.as_ref()];
    if command::run("btrfs", &args).await.is_ok() {
        return Ok(());
    }
    // Most likely quotas are off on this filesystem: turn them on once.
    command::run("btrfs", &["quota", "enable", &p]).await?;
    command::run("btrfs", &args).await.map(drop)
}

async fn btrfs_usage(path: &Path) -> Result<Usage, CapError> {
    let qgroup = qgroup_of(path).await?;
    let p = path.to_string_lossy();
    // Accounting is updated at transaction commit.
    command::run("btrfs", &["filesystem", "sync", &p]).await?;
    let out = command::run("btrfs", &["qgroup", "show", "-reF", "--raw", &p]).await?;
    parse_qgroup_show(&out, &qgroup)
        .ok_or_else(|| CapError::not_found(format!("no qgroup {qgroup} for {p} (quotas enabled?)")))
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
        let quota = self.quota_cap()?;
        let dir = quota.fs.under_root(&path)?;
        match kind {
            QuotaKind::BtrfsQgroup => Ok(btrfs_set_limit(&dir, bytes).await?),
            QuotaKind::Project => Err(project_quota_not_yet().into()),
        }
    }

    async fn get_usage(&mut self, kind: QuotaKind, path: String) -> CapResult<Usage> {
        let quota = self.quota_cap()?;
        let dir = quota.fs.under_root(&path)?;
        match kind {
            QuotaKind::BtrfsQgroup => Ok(btrfs_usage(&dir).await?),
            QuotaKind::Project => Err(project_quota_not_yet().into()),
        }
    }
}

impl CallState {
    fn quota_cap(&self) -> Result<&QuotaCap, CapError> {
        self.grants
            .quota
            .as_ref()
            .ok_or_else(|| CapError::not_granted("quota", &self.grants.plugin))
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
