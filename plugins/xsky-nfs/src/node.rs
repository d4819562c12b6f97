//! Node export: NFS mounts of the quota tree through the host's `mount`
//! capability (type `nfs`), stats through `fs.statfs`. Nothing here talks
//! to XMS: the volume context says what to mount.

use crate::error::{fail, invalid, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::node::{PublishRequest, VolumeStats};
use crate::host::{Host, Wasm};
use crate::params;
use crate::wasmcsi::plugin::types::{AccessMode, AccessType};
use crate::XskyNfs;
use wasmcsi_plugin_sdk::stats;

/// No stage step and no node expansion (NFS clients see the array's new
/// size): the SDK's UNIMPLEMENTED, and the features say so.
impl wasmcsi_plugin_sdk::Node for XskyNfs {
    fn publish_volume(req: PublishRequest) -> Result<()> {
        publish_volume(&Wasm, req)
    }
    fn unpublish_volume(_volume_id: String, target_path: String) -> Result<()> {
        Wasm.unmount(&target_path, true)
            .context(|| format!("unmounting {target_path}"))
    }
    fn get_volume_stats(
        volume_id: String,
        volume_path: String,
        _staging_path: Option<String>,
    ) -> Result<VolumeStats> {
        get_volume_stats(&Wasm, &volume_id, &volume_path)
    }
}

/// The NFS source, type and options for a publish request.
pub fn mount_plan(req: &PublishRequest) -> Result<(String, Vec<String>)> {
    let ctx = &req.volume_context;
    let server = params::get(ctx, "server").ok_or_else(|| {
        invalid(format!(
            "volume {}: the volume context has no server",
            req.volume_id
        ))
    })?;
    let share = params::get(ctx, "share").ok_or_else(|| {
        invalid(format!(
            "volume {}: the volume context has no share",
            req.volume_id
        ))
    })?;
    if !share.starts_with('/') || server.contains(char::is_whitespace) || server.contains(',') {
        return Err(invalid(format!(
            "volume {}: bad server {server:?} or share {share:?}",
            req.volume_id
        )));
    }
    let mut options: Vec<String> = params::get(ctx, "mountOptions")
        .unwrap_or("")
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect();
    if let AccessType::Mount(m) = &req.capability.access_type {
        for flag in &m.mount_flags {
            if !options.contains(flag) {
                options.push(flag.clone());
            }
        }
    } else {
        return Err(invalid(
            "xsky-nfs volumes are NFS file systems: block access is not supported",
        ));
    }
    let reader_only = matches!(
        req.capability.access_mode,
        AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly
    );
    if (req.read_only || reader_only) && !options.iter().any(|o| o == "ro") {
        options.retain(|o| o != "rw");
        options.push("ro".into());
    }
    Ok((format!("{server}:{share}"), options))
}

pub fn publish_volume(host: &dyn Host, req: PublishRequest) -> Result<()> {
    let (source, options) = mount_plan(&req)?;
    host.mount(&source, &req.target_path, "nfs", &options)
        .context(|| format!("mounting {source} on {}", req.target_path))
}

/// Stats of a published volume, and its condition. Only a path where an
/// NFS export of the array is mounted is the volume's (the share is
/// `/sdsfs/<folder>[/<quota tree>]`): an unmounted path, or one with
/// something else on it, is NOT_FOUND rather than the stats of whatever
/// filesystem holds it. Mounted but not answering statfs (a stale or
/// unreachable export) is an abnormal condition. A statfs that hangs on a
/// dead server is bounded by the host's call timeout, not here.
pub fn get_volume_stats(
    host: &dyn Host,
    volume_id: &str,
    volume_path: &str,
) -> Result<VolumeStats> {
    let entry = host
        .mounted_at(volume_path)
        .context(|| format!("volume {volume_id}: looking at {volume_path}"))?;
    let Some(entry) = entry else {
        return Err(fail(
            ErrorCode::NotFound,
            format!("volume {volume_id} is not mounted at {volume_path}"),
        ));
    };
    if !is_array_export(&entry.source) {
        return Err(fail(
            ErrorCode::NotFound,
            format!(
                "volume {volume_id} is not mounted at {volume_path}: {} ({}) is",
                entry.source, entry.fs_type
            ),
        ));
    }
    Ok(match host.statfs(volume_path) {
        Ok(st) => VolumeStats {
            message: format!("{} mounted and answering", entry.source),
            ..stats::from_statfs(&st)
        },
        Err(e) => stats::unhealthy(format!(
            "{} is mounted at {volume_path} but does not answer: {}",
            entry.source, e.message
        )),
    })
}

/// `host:/sdsfs/<folder>[/<tree>]`, as publish mounts it.
pub fn is_array_export(source: &str) -> bool {
    match source.split_once(":/") {
        Some((host, path)) => {
            !host.is_empty()
                && path
                    .trim_end_matches('/')
                    .strip_prefix("sdsfs/")
                    .is_some_and(|rest| !rest.is_empty())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_exports() {
        assert!(is_array_export("10.0.0.9:/sdsfs/csi-fs/pvc-1_w0123abcd"));
        assert!(is_array_export("10.0.0.9:/sdsfs/pvc-f/"));
        assert!(!is_array_export("10.0.0.9:/sdsfs/"));
        assert!(!is_array_export("/dev/sda1"));
        assert!(!is_array_export("tmpfs"));
        assert!(!is_array_export("10.0.0.9:/export/x"));
    }
}
