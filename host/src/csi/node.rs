//! CSI Node: stage, publish, expand and measure volumes on this node.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::{call_plugin, require, PluginCall};
use super::holders::{Holder, Records, Role};
use super::{convert, deadline, mounts, off_workers, traced, validate, Driver};
use crate::capabilities::call_paths::CallPaths;
use crate::dispatch;
use crate::proto::node_server::Node;
use crate::proto::node_service_capability::{rpc, Rpc, Type as CapType};
use crate::proto::*;
use crate::returns;
use crate::runtime::Plugin;
use crate::wit::exports::wasmcsi::plugin::identity::Features;
use crate::wit::exports::wasmcsi::plugin::node as wit_node;
use crate::wit::wasmcsi::plugin::types as wit;

pub(crate) struct NodeService(pub(crate) Arc<Driver>);

impl NodeService {
    fn driver(&self) -> &Driver {
        &self.0
    }

    /// The plugin of a volume: ours by its `<plugin>:<id>`, or an inline
    /// volume by kubelet's `csi-<hash>`, which the plugin gets whole.
    fn volume<'a>(&self, id: &'a str) -> Result<(Arc<Plugin>, &'a str), Status> {
        let dispatch = &self.driver().dispatch;
        dispatch
            .for_id(id)
            .or_else(|| dispatch.inline_for_id(id))
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))
    }

    /// The plugin of a NodePublishVolume: for an inline ephemeral volume the
    /// plugin that takes them (the id is kubelet's), else by the id.
    fn publishing<'a>(
        &self,
        id: &'a str,
        context: &HashMap<String, String>,
    ) -> Result<(Arc<Plugin>, &'a str, bool), Status> {
        if !dispatch::is_inline(context) {
            let (plugin, local) = self.volume(id)?;
            return Ok((plugin, local, false));
        }
        let plugin = self.driver().dispatch.for_inline(context)?;
        if !dispatch::is_inline_id(id) {
            return Err(Status::invalid_argument(format!(
                "inline volume id {id:?} is not kubelet's csi-<hex digest>"
            )));
        }
        Ok((plugin, id, true))
    }

    /// The id is ours but its plugin is no longer loaded.
    fn is_orphan(&self, id: &str) -> bool {
        let dispatch = &self.driver().dispatch;
        dispatch.for_id(id).is_none() && dispatch.unloaded_plugin(id).is_some()
    }

    /// The plugin of a volume being unpublished or unstaged; `None` when the
    /// id is ours but its plugin is no longer loaded, after the host took
    /// down what is mounted at `path` itself: a NOT_FOUND would leave the
    /// pod stuck in Terminating.
    async fn volume_or_orphan<'a>(
        &self,
        id: &'a str,
        path: &str,
        remove: bool,
    ) -> Result<Option<(Arc<Plugin>, &'a str)>, Status> {
        let dispatch = &self.driver().dispatch;
        if let Some(found) = dispatch.for_id(id).or_else(|| dispatch.inline_for_id(id)) {
            return Ok(Some(found));
        }
        let Some((name, _)) = self.driver().dispatch.unloaded_plugin(id) else {
            return Err(Status::not_found(format!("volume {id} does not exist")));
        };
        tracing::warn!(
            plugin = name,
            path,
            "the volume's plugin is not loaded: the host unmounts it"
        );
        let config = self.driver().config.clone();
        let path = path.to_string();
        off_workers(None, move || {
            let prefixes = mounts::granted_prefixes(&config);
            mounts::unmount_orphan(&path, &prefixes, remove)
        })
        .await?;
        Ok(None)
    }
}

/// SINGLE_NODE_SINGLE_WRITER allows one publication on the node: another
/// mount of the volume (what is mounted at `probe`), under the granted
/// prefixes and not at `target` or `staging`, is FAILED_PRECONDITION. Read
/// from the mount table, so it holds across driver restarts.
/// Blocking: run it off the async workers.
fn check_single_writer(
    config: &crate::config::Config,
    id: &str,
    probe: &str,
    target: &str,
    staging: Option<&str>,
) -> Result<(), Status> {
    let Some(probe) = mounts::resolved(probe) else {
        return Ok(());
    };
    let target = mounts::resolved(target).unwrap_or_else(|| target.into());
    let staging = staging.and_then(mounts::resolved);
    let mut except = vec![target.as_path()];
    except.extend(staging.as_deref());
    let prefixes = mounts::granted_prefixes(config);
    match mounts::elsewhere(&mounts::table()?, &probe, &except, &prefixes) {
        Some(other) => Err(Status::failed_precondition(format!(
            "volume {id} is SINGLE_NODE_SINGLE_WRITER and already published at {}",
            other.display()
        ))),
        None => Ok(()),
    }
}

/// A capability the plugin cannot serve fails node calls as the spec says.
fn check_supported(plugin: &Plugin, cap: &wit::VolumeCapability) -> Result<(), Status> {
    match validate::unsupported(plugin, cap) {
        Some(why) => Err(Status::failed_precondition(why)),
        None => Ok(()),
    }
}

/// What holds each of `paths`, read once from the mount table.
async fn holders_of(
    records: &Records,
    deadline: Option<std::time::Duration>,
    paths: Vec<String>,
) -> Result<Vec<Holder>, Status> {
    let records = records.clone();
    off_workers(deadline, move || {
        let table = mounts::table()?;
        paths.iter().map(|p| records.holder(&table, p)).collect()
    })
    .await
}

/// What holds one path (`holders_of` for a single path).
async fn holder_of(
    records: &Records,
    deadline: Option<std::time::Duration>,
    path: &str,
) -> Result<Holder, Status> {
    let mut held = holders_of(records, deadline, vec![path.into()]).await?;
    Ok(held.pop().expect("one path asked"))
}

/// Records that volume `id` holds `path` after a call that succeeded.
async fn record(
    records: &Records,
    deadline: Option<std::time::Duration>,
    id: &str,
    path: &str,
    role: Role,
    block: bool,
) -> Result<(), Status> {
    let (records, id, path) = (records.clone(), id.to_string(), path.to_string());
    off_workers(deadline, move || records.record(&id, &path, role, block)).await
}

/// Forgets `path` after an unstage or unpublish that succeeded.
async fn forget(
    records: &Records,
    deadline: Option<std::time::Duration>,
    path: &str,
) -> Result<(), Status> {
    let (records, path) = (records.clone(), path.to_string());
    off_workers(deadline, move || records.forget(&path)).await
}

/// Volume `id` published with `block` access while a capability of the
/// other kind serves it (staged or published) would expose one device to
/// a filesystem and to raw writes at once.
async fn check_one_access_type(
    records: &Records,
    deadline: Option<std::time::Duration>,
    id: &str,
    block: bool,
) -> Result<(), Status> {
    let (records, owned) = (records.clone(), id.to_string());
    let live = off_workers(deadline, move || {
        records.of_volume(&mounts::table()?, &owned)
    })
    .await?;
    match live.iter().find(|r| r.block != block) {
        Some(other) => Err(Status::failed_precondition(format!(
            "volume {id} is {} at {} for {} access: it cannot serve {} access at the same time",
            match other.role {
                Role::Staging => "staged",
                Role::Target => "published",
            },
            other.path.display(),
            access(other.block),
            access(block)
        ))),
        None => Ok(()),
    }
}

/// Whether an unstage or unpublish of `id` at `path` may go ahead: not
/// when the path holds another volume's mount or one this driver did not
/// make. The spec's answer for a volume that is not staged (published)
/// there is OK, so the call answers OK and leaves the mount alone.
/// For a volume whose plugin is not loaded any more, a mount without a
/// record (made before the driver kept records) is taken as the volume's,
/// so its pod can still terminate.
async fn untouchable(
    records: &Records,
    deadline: Option<std::time::Duration>,
    id: &str,
    path: &str,
    what: &str,
    orphan: bool,
) -> Result<bool, Status> {
    let held = holder_of(records, deadline, path).await?;
    if held.is_free_or(id) || (orphan && matches!(held, Holder::Foreign(_))) {
        return Ok(true);
    }
    tracing::warn!(
        path,
        "{what} of volume {id} leaves the mount alone: {}",
        held.describe(std::path::Path::new(path))
    );
    Ok(false)
}

/// Before a publish of `id`: the target holds nothing or `id` already
/// (another volume's mount is ALREADY_EXISTS, a mount this driver did not
/// make FAILED_PRECONDITION), and the staging path holds `id`, staged for
/// the same access type.
async fn check_publish_paths(
    records: &Records,
    deadline: Option<std::time::Duration>,
    id: &str,
    target: &str,
    staging: Option<&str>,
    block: bool,
) -> Result<(), Status> {
    let mut paths = vec![target.to_string()];
    paths.extend(staging.map(str::to_string));
    let held = holders_of(records, deadline, paths).await?;
    let target_path = std::path::Path::new(target);
    match &held[0] {
        Holder::Volume(r) if r.volume != id => {
            return Err(Status::already_exists(format!(
                "cannot publish volume {id}: {}",
                held[0].describe(target_path)
            )))
        }
        Holder::Foreign(_) => {
            return Err(Status::failed_precondition(format!(
                "cannot publish volume {id}: {}",
                held[0].describe(target_path)
            )))
        }
        _ => {}
    }
    if let (Some(staging), Some(holder)) = (staging, held.get(1)) {
        match holder {
            Holder::Volume(r) if r.volume == id && r.block != block => {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is staged at {staging} for {} access: it cannot be published for {} access",
                    access(r.block),
                    access(block)
                )))
            }
            h if !h.is_free_or(id) => {
                return Err(Status::failed_precondition(format!(
                    "cannot publish volume {id} from its staging path: {}",
                    h.describe(std::path::Path::new(staging))
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The spec's NOT_FOUND for stats and expand: `path` does not exist, or
/// holds another volume or a mount this driver did not make for `id`.
async fn check_volume_at(
    records: &Records,
    deadline: Option<std::time::Duration>,
    id: &str,
    path: &str,
) -> Result<(), Status> {
    let exists = {
        let probe = path.to_string();
        off_workers(deadline, move || {
            let path = std::path::Path::new(&probe);
            Ok(path.is_absolute() && path.exists())
        })
        .await?
    };
    if !exists {
        return Err(Status::not_found(format!(
            "volume {id} is not at {path}: the path does not exist on this node"
        )));
    }
    check_holds(records, deadline, id, path).await
}

/// NOT_FOUND when `path` holds another volume or a mount this driver did
/// not make for `id`.
async fn check_holds(
    records: &Records,
    deadline: Option<std::time::Duration>,
    id: &str,
    path: &str,
) -> Result<(), Status> {
    let held = holder_of(records, deadline, path).await?;
    if held.is_free_or(id) {
        return Ok(());
    }
    Err(Status::not_found(format!(
        "volume {id} is not at {path}: {}",
        held.describe(std::path::Path::new(path))
    )))
}

fn access(block: bool) -> &'static str {
    if block {
        "block"
    } else {
        "mount"
    }
}

fn is_block(cap: &wit::VolumeCapability) -> bool {
    matches!(cap.access_type, wit::AccessType::Block)
}

fn node_capability(kind: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(CapType::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

fn usage(unit: volume_usage::Unit, total: u64, available: u64, used: u64) -> VolumeUsage {
    VolumeUsage {
        available: convert::bytes(available),
        total: convert::bytes(total),
        used: convert::bytes(used),
        unit: unit as i32,
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("NodeStageVolume", &req.volume_id.clone(), async move {
            let id = validate::required(&req.volume_id, "volume_id")?;
            let staging_path = validate::required(&req.staging_target_path, "staging_target_path")?;
            let capability = validate::one_capability(req.volume_capability.as_ref())?;
            let (plugin, local) = self.volume(id)?;
            if !plugin.has(Features::STAGE) {
                return Ok(NodeStageVolumeResponse {});
            }
            check_supported(&plugin, &capability)?;
            let _guard = self.driver().dispatch.lock(id, deadline).await?;
            let records = &self.driver().holders;
            let block = is_block(&capability);
            let held = holder_of(records, deadline, staging_path).await?;
            match &held {
                Holder::Volume(r) if r.volume == id && r.block != block => {
                    return Err(Status::already_exists(format!(
                        "volume {id} is already staged at {staging_path} for {} access, not {}",
                        access(r.block),
                        access(block)
                    )));
                }
                h if !h.is_free_or(id) => {
                    return Err(Status::already_exists(format!(
                        "cannot stage volume {id}: {}",
                        h.describe(std::path::Path::new(staging_path))
                    )));
                }
                _ => {}
            }
            let call = wit_node::StageRequest {
                volume_id: local.to_string(),
                staging_path: staging_path.to_string(),
                capability,
                publish_context: convert::pairs(&req.publish_context),
                volume_context: convert::pairs(&req.volume_context),
                secrets: convert::pairs(&req.secrets),
            };
            call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "stage-volume", deadline)
                    .lending(CallPaths::stage(staging_path)),
                move |p: &wit_node::Guest, s| {
                    Box::pin(async move { p.call_stage_volume(s, &call).await })
                },
            )
            .await?;
            record(records, deadline, id, staging_path, Role::Staging, block).await?;
            Ok(NodeStageVolumeResponse {})
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("NodeUnstageVolume", &req.volume_id.clone(), async move {
            let id = validate::required(&req.volume_id, "volume_id")?;
            let staging_path =
                validate::required(&req.staging_target_path, "staging_target_path")?.to_string();
            let _guard = self.driver().dispatch.lock(id, deadline).await?;
            let records = &self.driver().holders;
            let orphan = self.is_orphan(id);
            if !untouchable(records, deadline, id, &staging_path, "unstage", orphan).await? {
                return Ok(NodeUnstageVolumeResponse {});
            }
            let Some((plugin, local)) = self.volume_or_orphan(id, &staging_path, false).await?
            else {
                forget(records, deadline, &staging_path).await?;
                return Ok(NodeUnstageVolumeResponse {});
            };
            if !plugin.has(Features::STAGE) {
                return Ok(NodeUnstageVolumeResponse {});
            }
            let (local, path) = (local.to_string(), staging_path.clone());
            call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "unstage-volume", deadline)
                    .lending(CallPaths::unstage(&staging_path)),
                move |p: &wit_node::Guest, s| {
                    Box::pin(async move { p.call_unstage_volume(s, &local, &path).await })
                },
            )
            .await?;
            forget(records, deadline, &staging_path).await?;
            Ok(NodeUnstageVolumeResponse {})
        })
        .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("NodePublishVolume", &req.volume_id.clone(), async move {
            let id = validate::required(&req.volume_id, "volume_id")?;
            let target_path = validate::required(&req.target_path, "target_path")?.to_string();
            let capability = validate::one_capability(req.volume_capability.as_ref())?;
            let (plugin, local, inline) = self.publishing(id, &req.volume_context)?;
            // kubelet does not stage inline volumes: the plugin makes and
            // mounts one at the target in this call.
            let staging_path = if plugin.has(Features::STAGE) && !inline {
                if req.staging_target_path.is_empty() {
                    return Err(Status::failed_precondition(
                        "staging_target_path is required: this volume is staged first (STAGE_UNSTAGE_VOLUME)",
                    ));
                }
                Some(req.staging_target_path.clone())
            } else {
                None
            };
            check_supported(&plugin, &capability)?;
            let _guard = self.driver().dispatch.lock(id, deadline).await?;
            let records = &self.driver().holders;
            let block = is_block(&capability);
            check_publish_paths(records, deadline, id, &target_path, staging_path.as_deref(), block)
                .await?;
            check_one_access_type(records, deadline, id, block).await?;
            let single_writer =
                capability.access_mode == wit::AccessMode::SingleNodeSingleWriter;
            // Known before the call when the volume is staged: the staging
            // mount is the volume. Otherwise the new mount at the target
            // tells, after the call.
            let config = self.driver().config.clone();
            let (staged, was_published) = if single_writer {
                let (config, id) = (config.clone(), id.to_string());
                let (staging, target) = (staging_path.clone(), target_path.clone());
                off_workers(deadline, move || {
                    let table = mounts::table()?;
                    let is_mount = |path: &str| {
                        mounts::resolved(path).is_some_and(|p| mounts::at(&table, &p).is_some())
                    };
                    let staged = staging.filter(|s| is_mount(s));
                    let was_published = is_mount(&target);
                    if let Some(staging) = &staged {
                        check_single_writer(&config, &id, staging, &target, Some(staging))?;
                    }
                    Ok((staged, was_published))
                })
                .await?
            } else {
                (None, false)
            };
            let check_after = single_writer && staged.is_none() && !was_published;
            let (target, staging) = (target_path.clone(), staging_path.clone());
            let call = wit_node::PublishRequest {
                volume_id: local.to_string(),
                staging_path,
                target_path,
                capability,
                read_only: req.readonly,
                publish_context: convert::pairs(&req.publish_context),
                volume_context: convert::pairs(&req.volume_context),
                secrets: convert::pairs(&req.secrets),
            };
            let paths = CallPaths::publish(&call.target_path, call.staging_path.as_deref());
            call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "publish-volume", deadline).lending(paths),
                move |p: &wit_node::Guest, s| {
                    Box::pin(async move { p.call_publish_volume(s, &call).await })
                },
            )
            .await?;
            if check_after {
                let (id_owned, target_owned) = (id.to_string(), target.clone());
                let checked = off_workers(deadline, move || {
                    check_single_writer(
                        &config,
                        &id_owned,
                        &target_owned,
                        &target_owned,
                        staging.as_deref(),
                    )
                })
                .await;
                if let Err(refused) = checked {
                    // Undo this call's mount; the earlier publication stays.
                    let (local, target) = (local.to_string(), target.clone());
                    call_plugin(
                        &self.driver().dispatch,
                        PluginCall::new(&plugin, "unpublish-volume", deadline)
                            .lending(CallPaths::unpublish(&target)),
                        move |p: &wit_node::Guest, s| {
                            Box::pin(async move { p.call_unpublish_volume(s, &local, &target).await })
                        },
                    )
                    .await?;
                    return Err(refused);
                }
            }
            record(records, deadline, id, &target, Role::Target, block).await?;
            Ok(NodePublishVolumeResponse {})
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("NodeUnpublishVolume", &req.volume_id.clone(), async move {
            let id = validate::required(&req.volume_id, "volume_id")?;
            let target_path = validate::required(&req.target_path, "target_path")?.to_string();
            let _guard = self.driver().dispatch.lock(id, deadline).await?;
            let records = &self.driver().holders;
            let orphan = self.is_orphan(id);
            if !untouchable(records, deadline, id, &target_path, "unpublish", orphan).await? {
                return Ok(NodeUnpublishVolumeResponse {});
            }
            let Some((plugin, local)) = self.volume_or_orphan(id, &target_path, true).await? else {
                forget(records, deadline, &target_path).await?;
                return Ok(NodeUnpublishVolumeResponse {});
            };
            let (local, path) = (local.to_string(), target_path.clone());
            call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "unpublish-volume", deadline)
                    .lending(CallPaths::unpublish(&target_path)),
                move |p: &wit_node::Guest, s| {
                    Box::pin(async move { p.call_unpublish_volume(s, &local, &path).await })
                },
            )
            .await?;
            forget(records, deadline, &target_path).await?;
            Ok(NodeUnpublishVolumeResponse {})
        })
        .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("NodeGetVolumeStats", &req.volume_id.clone(), async move {
            let id = validate::required(&req.volume_id, "volume_id")?;
            let volume_path = validate::required(&req.volume_path, "volume_path")?.to_string();
            let (plugin, local) = self.volume(id)?;
            // The spec's NOT_FOUND: no volume at that path on this node.
            check_volume_at(&self.driver().holders, deadline, id, &volume_path).await?;
            require(&plugin, Features::VOLUME_STATS)?;
            let local = local.to_string();
            let staging =
                (!req.staging_target_path.is_empty()).then(|| req.staging_target_path.clone());
            // Stats only read: no lock, so a slow stage never delays kubelet's polling.
            let paths = CallPaths::stats(&volume_path, staging.as_deref());
            let stats = call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "get-volume-stats", deadline).lending(paths),
                move |p: &wit_node::Guest, s| {
                    Box::pin(async move {
                        p.call_get_volume_stats(s, &local, &volume_path, staging.as_deref())
                            .await
                    })
                },
            )
            .await?;
            returns::stats(&plugin.name, &stats)?;
            Ok(NodeGetVolumeStatsResponse {
                usage: vec![
                    usage(
                        volume_usage::Unit::Bytes,
                        stats.total_bytes,
                        stats.available_bytes,
                        stats.used_bytes,
                    ),
                    usage(
                        volume_usage::Unit::Inodes,
                        stats.total_inodes,
                        stats.available_inodes,
                        stats.used_inodes,
                    ),
                ],
                volume_condition: Some(VolumeCondition {
                    abnormal: !stats.healthy,
                    message: returns::condition_message(&stats.message),
                }),
            })
        })
        .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("NodeExpandVolume", &req.volume_id.clone(), async move {
            let id = validate::required(&req.volume_id, "volume_id")?;
            let volume_path = validate::required(&req.volume_path, "volume_path")?.to_string();
            let capacity = validate::capacity(req.capacity_range.as_ref())?;
            let capability = req
                .volume_capability
                .as_ref()
                .map(validate::capability)
                .transpose()?;
            let (plugin, local) = self.volume(id)?;
            if !plugin.has(Features::NODE_EXPAND) {
                // The controller did all the work; report what was asked.
                let bytes = capacity.required_bytes.unwrap_or(0);
                return Ok(NodeExpandVolumeResponse {
                    capacity_bytes: convert::bytes(bytes),
                });
            }
            let _guard = self.driver().dispatch.lock(id, deadline).await?;
            check_holds(&self.driver().holders, deadline, id, &volume_path).await?;
            let call = wit_node::ExpandRequest {
                volume_id: local.to_string(),
                volume_path,
                staging_path: (!req.staging_target_path.is_empty())
                    .then(|| req.staging_target_path.clone()),
                capacity,
                capability,
                secrets: convert::pairs(&req.secrets),
            };
            let paths = CallPaths::expand(&call.volume_path, call.staging_path.as_deref());
            let bytes = call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "node-expand-volume", deadline).lending(paths),
                move |p: &wit_node::Guest, s| {
                    Box::pin(async move { p.call_expand_volume(s, &call).await })
                },
            )
            .await?;
            Ok(NodeExpandVolumeResponse {
                capacity_bytes: returns::bytes(&plugin.name, "an expanded capacity of", bytes)?,
            })
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let d = &self.driver().dispatch;
        let wanted = [
            (d.any_has(Features::STAGE), rpc::Type::StageUnstageVolume),
            (d.any_has(Features::VOLUME_STATS), rpc::Type::GetVolumeStats),
            (
                d.any_has(Features::VOLUME_STATS),
                rpc::Type::VolumeCondition,
            ),
            (d.any_has(Features::NODE_EXPAND), rpc::Type::ExpandVolume),
            (
                d.offers_single_node_writer_modes(),
                rpc::Type::SingleNodeMultiWriter,
            ),
        ];
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: wanted
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, k)| node_capability(k))
                .collect(),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let d = self.driver();
        let accessible_topology = d.dispatch.any_has(Features::NODE_LOCAL).then(|| Topology {
            segments: HashMap::from([(d.topology_key().to_string(), d.node_id().to_string())]),
        });
        Ok(Response::new(NodeGetInfoResponse {
            node_id: d.node_id().to_string(),
            max_volumes_per_node: 0,
            accessible_topology,
        }))
    }
}
