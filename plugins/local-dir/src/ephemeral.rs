//! CSI inline ephemeral volumes: a sized image or subvolume declared in the
//! pod spec (`csi: {driver: ..., volumeAttributes: {size: 1Gi}}`), living
//! and dying with the pod. kubelet neither creates nor stages it: its
//! NodePublishVolume carries `csi.storage.k8s.io/ephemeral: "true"` and a
//! volume id of kubelet's own (`csi-<hex>`), and its NodeUnpublishVolume
//! only that id and the target.
//!
//! Publish is CreateVolume then NodeStageVolume at the target, by the same
//! code and rules as a PVC's volume (size bounds, room, mode, fsType): the
//! volume named `inline-<kubelet id>`, so its local id is derived from
//! kubelet's and unpublish finds it again with nothing else to go by.
//! Unpublish unmounts the target and deletes the volume.
//!
//! After a crash: a publish cut short leaves a volume half made, which the
//! next publish of the same id finishes (create redoes an interrupted
//! create) or kubelet's unpublish removes (kubelet unpublishes a publish
//! whose outcome it does not know, also after a node restart). A publish
//! that fails for good removes what it made: kubelet does not unpublish it.

use crate::backend;
use crate::controller;
use crate::env::Env;
use crate::error::{invalid, Context, Result};
use crate::exports::wasmcsi::plugin::controller::CreateVolumeRequest;
use crate::exports::wasmcsi::plugin::node::{PublishRequest, StageRequest};
use crate::id;
use crate::node;
use crate::size;
use crate::store;
use crate::wasmcsi::plugin::types::{AccessType, CapacityRange, KeyValues};

/// The volume context key kubelet sets on inline volumes.
const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// The pod's volume attribute that sizes the volume (a quantity).
const SIZE: &str = "size";
/// The host's attribute naming the plugin; not ours to read.
const PLUGIN: &str = "plugin";
/// Inline volumes' names, apart from any PVC's (`pvc-<uid>`).
const NAME_PREFIX: &str = "inline-";

pub fn is_inline(context: &KeyValues) -> bool {
    context.iter().any(|(k, v)| k == EPHEMERAL && v == "true")
}

/// kubelet's ids for inline volumes: `csi-` and a hex digest.
pub fn is_inline_id(id: &str) -> bool {
    id.strip_prefix("csi-").is_some_and(|hash| {
        (1..=128).contains(&hash.len()) && hash.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// The local id of the volume behind kubelet's id.
pub fn local_id(kubelet_id: &str) -> Result<String> {
    id::from_name(&format!("{NAME_PREFIX}{kubelet_id}"))
}

pub fn publish(env: &Env, req: PublishRequest) -> Result<()> {
    let kubelet_id = req.volume_id.as_str();
    if !is_inline_id(kubelet_id) {
        return Err(invalid(format!(
            "inline volume id {kubelet_id:?} is not kubelet's csi-<hex digest>"
        )));
    }
    if matches!(req.capability.access_type, AccessType::Block) {
        return Err(invalid(
            "an inline volume is a filesystem, not a block device",
        ));
    }
    if req.read_only {
        return Err(invalid(
            "an inline volume starts empty: a read-only one would stay empty",
        ));
    }
    let (required, parameters) = attributes(&req.volume_context)?;
    let volume = controller::create_volume(
        env,
        CreateVolumeRequest {
            name: format!("{NAME_PREFIX}{kubelet_id}"),
            capacity: CapacityRange {
                required_bytes: required,
                limit_bytes: None,
            },
            capabilities: vec![req.capability.clone()],
            parameters,
            secrets: Vec::new(),
            content_source: None,
        },
    )
    .context(|| format!("inline volume {kubelet_id}"))?;
    let id = volume.volume_id;
    // The target is the volume's only mount: stage it right there.
    let staged = node::stage_volume(
        env,
        StageRequest {
            volume_id: id.clone(),
            staging_path: req.target_path.clone(),
            capability: req.capability,
            publish_context: Vec::new(),
            volume_context: volume.volume_context,
            secrets: Vec::new(),
        },
    );
    if let Err(e) = staged {
        if let Err(undo) = remove(env, &id, &req.target_path) {
            env.warn(
                "inline volume: undoing a failed publish failed",
                &[("volume", &id), ("error", &undo.message)],
            );
        }
        return Err(e);
    }
    env.info(
        "inline volume published",
        &[
            ("volume", &id),
            ("kubelet id", kubelet_id),
            ("target", &req.target_path),
        ],
    );
    Ok(())
}

pub fn unpublish(env: &Env, kubelet_id: &str, target: &str) -> Result<()> {
    let id = local_id(kubelet_id)?;
    remove(env, &id, target)?;
    env.info(
        "inline volume unpublished and deleted",
        &[("volume", &id), ("kubelet id", kubelet_id)],
    );
    Ok(())
}

/// Unmounts the target, lets go of the volume's loop device and deletes it;
/// each step succeeds on what is already gone.
fn remove(env: &Env, id: &str, target: &str) -> Result<()> {
    env.host
        .unmount(target, true)
        .context(|| format!("inline volume {id}: unmounting {target}"))?;
    if store::exists(&env.layout.dir(id))? {
        backend::release_all(env, id)?;
        controller::delete_volume(env, id.to_string())?;
    }
    Ok(())
}

/// The size the pod asks (`size`, a quantity; unset: the default size) and
/// the rest of its attributes as CreateVolume parameters (mode, fsType).
fn attributes(context: &KeyValues) -> Result<(Option<u64>, KeyValues)> {
    let mut required = None;
    let mut parameters = Vec::new();
    for (key, value) in context {
        match key.as_str() {
            SIZE => {
                required = Some(size::parse_quantity(value).filter(|n| *n > 0).ok_or_else(
                    || {
                        invalid(format!(
                            "volume attribute size={value:?} is not a quantity such as 1Gi"
                        ))
                    },
                )?)
            }
            PLUGIN => {}
            _ => parameters.push((key.clone(), value.clone())),
        }
    }
    Ok((required, parameters))
}
