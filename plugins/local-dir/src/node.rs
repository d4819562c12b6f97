//! Node export: stage, publish, expand and stats on the volume's node. All
//! calls are idempotent; undoing calls (unstage, unpublish) succeed for a
//! volume that is already gone, so pod teardown never gets stuck.

use crate::backend::{self, mounted_at, ExpandAt};
use crate::config::{self, Mode};
use crate::env::Env;
use crate::ephemeral;
use crate::error::{fail, invalid, precondition, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::node::{
    ExpandRequest, PublishRequest, StageRequest, VolumeStats,
};
use crate::id;
use crate::size::{self, Rules};
use crate::store;
use crate::wasmcsi::plugin::types::AccessType;
use crate::LocalDir;

impl wasmcsi_plugin_sdk::Node for LocalDir {
    fn stage_volume(req: StageRequest) -> Result<()> {
        stage_volume(&Env::load()?, req)
    }
    fn unstage_volume(volume_id: String, staging_path: String) -> Result<()> {
        unstage_volume(&Env::load()?, volume_id, staging_path)
    }
    fn publish_volume(req: PublishRequest) -> Result<()> {
        publish_volume(&Env::load()?, req)
    }
    fn unpublish_volume(volume_id: String, target_path: String) -> Result<()> {
        unpublish_volume(&Env::load()?, volume_id, target_path)
    }
    fn expand_volume(req: ExpandRequest) -> Result<u64> {
        expand_volume(&Env::load()?, req)
    }
    fn get_volume_stats(
        volume_id: String,
        volume_path: String,
        staging_path: Option<String>,
    ) -> Result<VolumeStats> {
        get_volume_stats(&Env::load()?, volume_id, volume_path, staging_path)
    }
}

pub fn stage_volume(env: &Env, req: StageRequest) -> Result<()> {
    let id = req.volume_id.as_str();
    id::check(id)?;
    config::check_access_mode(req.capability.access_mode).map_err(|e| precondition(e.message))?;
    let mut meta = store::ready_meta(&env.layout, id)?;
    backend::for_mode(meta.mode)?.stage(env, id, &mut meta, &req.staging_path, &req.capability)
}

pub fn unstage_volume(env: &Env, volume_id: String, staging_path: String) -> Result<()> {
    let id = volume_id.as_str();
    id::check(id)?;
    env.host
        .unmount(&staging_path, false)
        .context(|| format!("volume {id}: unmounting {staging_path}"))?;
    // Layout-based, so a missing meta does not leave a loop device.
    backend::release_all(env, id)?;
    env.info(
        "volume unstaged",
        &[("volume", id), ("staging", &staging_path)],
    );
    Ok(())
}

pub fn publish_volume(env: &Env, req: PublishRequest) -> Result<()> {
    if ephemeral::is_inline(&req.volume_context) {
        return ephemeral::publish(env, req);
    }
    let id = req.volume_id.as_str();
    id::check(id)?;
    let meta = store::ready_meta(&env.layout, id)?;
    let backend = backend::for_mode(meta.mode)?;
    let staging = req
        .staging_path
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            precondition(format!(
                "publish-volume {id}: no staging path; local-dir volumes are staged first"
            ))
        })?;
    let target = req.target_path.as_str();
    let read_only = req.read_only || config::read_only_mode(req.capability.access_mode);

    if let Some(entry) = mounted_at(env, target, id)? {
        if entry.read_only == read_only {
            return Ok(());
        }
        return Err(fail(
            ErrorCode::AlreadyExists,
            format!(
                "volume {id} is already published at {target} {}, not {}",
                rw(entry.read_only),
                rw(read_only)
            ),
        ));
    }
    let source = match req.capability.access_type {
        AccessType::Block => backend.block_device(env, id)?,
        AccessType::Mount(_) => {
            // Binding an unmounted staging directory would hand the pod
            // a plain node directory instead of the volume.
            if mounted_at(env, staging, id)?.is_none() {
                return Err(precondition(format!(
                    "volume {id} is not staged: nothing is mounted at {staging}"
                )));
            }
            staging.to_string()
        }
    };
    env.host.bind(&source, target, read_only).context(|| {
        format!(
            "volume {id}: bind-mounting {source} on {target} {}",
            rw(read_only)
        )
    })?;
    env.info("volume published", &[("volume", id), ("target", target)]);
    Ok(())
}

pub fn unpublish_volume(env: &Env, volume_id: String, target_path: String) -> Result<()> {
    if ephemeral::is_inline_id(&volume_id) {
        return ephemeral::unpublish(env, &volume_id, &target_path);
    }
    id::check(&volume_id)?;
    env.host
        .unmount(&target_path, true)
        .context(|| format!("volume {volume_id}: unmounting {target_path}"))
}

pub fn expand_volume(env: &Env, req: ExpandRequest) -> Result<u64> {
    let id = req.volume_id.as_str();
    id::check(id)?;
    let mut meta = store::ready_meta(&env.layout, id)?;
    let backend = backend::for_mode(meta.mode)?;
    let block = req
        .capability
        .as_ref()
        .map(|c| matches!(c.access_type, AccessType::Block));
    if block == Some(true) && meta.mode != Mode::Image {
        return Err(invalid(format!(
            "expand-volume {id}: a {} volume has no raw block access",
            meta.mode.as_str()
        )));
    }
    let (min, kind) = backend.min_bytes(meta.fs_type);
    let rules = Rules {
        unit: size::MIB,
        min,
        max: env.settings()?.max_volume_bytes,
        default: 0,
        kind,
    };
    let capacity = rules
        .for_expand(Some(meta.capacity_bytes), &req.capacity)
        .context(|| format!("expand-volume {id}"))?;
    if capacity > meta.capacity_bytes {
        crate::controller::check_room(env, &env.settings()?, id, capacity)
            .context(|| format!("expand-volume {id}"))?;
    }
    let at = ExpandAt {
        volume_path: &req.volume_path,
        staging_path: req.staging_path.as_deref().filter(|s| !s.is_empty()),
        block,
    };
    let usable = backend.expand(env, id, &mut meta, capacity, &at)?;
    env.info(
        "volume expanded",
        &[("volume", id), ("bytes", &usable.to_string())],
    );
    Ok(usable)
}

pub fn get_volume_stats(
    env: &Env,
    volume_id: String,
    volume_path: String,
    staging_path: Option<String>,
) -> Result<VolumeStats> {
    let volume_id = if ephemeral::is_inline_id(&volume_id) {
        ephemeral::local_id(&volume_id)?
    } else {
        volume_id
    };
    let id = volume_id.as_str();
    id::check(id)?;
    let meta = store::ready_meta(&env.layout, id)?;
    backend::for_mode(meta.mode)?.stats(env, id, &meta, &volume_path, staging_path.as_deref())
}

fn rw(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "read-write"
    }
}
