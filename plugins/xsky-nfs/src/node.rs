//! Node export: NFS mounts of the quota tree through the host's `mount`
//! capability (type `nfs`), stats through `fs.statfs`. Nothing here talks
//! to XMS: the volume context says what to mount.

use crate::error::{fail, invalid, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::node::{
    ExpandRequest, Guest, PublishRequest, StageRequest, VolumeStats,
};
use crate::host::{Host, Wasm};
use crate::params;
use crate::wasmcsi::plugin::types::{AccessMode, AccessType};
use crate::XskyNfs;

impl Guest for XskyNfs {
    fn stage_volume(_req: StageRequest) -> Result<()> {
        Err(fail(ErrorCode::Unimplemented, "xsky-nfs has no stage step"))
    }
    fn unstage_volume(_volume_id: String, _staging_path: String) -> Result<()> {
        Err(fail(ErrorCode::Unimplemented, "xsky-nfs has no stage step"))
    }
    fn publish_volume(req: PublishRequest) -> Result<()> {
        publish_volume(&Wasm, req)
    }
    fn unpublish_volume(_volume_id: String, target_path: String) -> Result<()> {
        Wasm.unmount(&target_path, true)
            .context(|| format!("unmounting {target_path}"))
    }
    fn expand_volume(_req: ExpandRequest) -> Result<u64> {
        Err(fail(
            ErrorCode::Unimplemented,
            "xsky-nfs volumes grow on the array; NFS clients see the new size without a node step",
        ))
    }
    fn get_volume_stats(
        _volume_id: String,
        volume_path: String,
        _staging_path: Option<String>,
    ) -> Result<VolumeStats> {
        get_volume_stats(&Wasm, &volume_path)
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

pub fn get_volume_stats(host: &dyn Host, volume_path: &str) -> Result<VolumeStats> {
    let st = host
        .statfs(volume_path)
        .context(|| format!("statfs {volume_path}"))?;
    Ok(VolumeStats {
        total_bytes: st.total_bytes,
        available_bytes: st.available_bytes,
        used_bytes: st.total_bytes.saturating_sub(st.free_bytes),
        total_inodes: st.total_inodes,
        available_inodes: st.free_inodes,
        used_inodes: st.total_inodes.saturating_sub(st.free_inodes),
        healthy: true,
        message: String::new(),
    })
}
