//! CSI GroupController: snapshots of several volumes cut at one point in
//! time, delegated to the one plugin that owns all of them.

use std::collections::HashSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::{call_plugin, done_if_gone, require, resolve, resolve_to_delete, PluginCall};
use super::controller::plugin_parameters;
use super::{convert, deadline, traced, validate, Driver};
use crate::proto::group_controller_server::GroupController;
use crate::proto::group_controller_service_capability::{rpc, Rpc, Type as CapType};
use crate::proto::*;
use crate::returns;
use crate::runtime::Plugin;
use crate::wit::exports::wasmcsi::plugin::controller as wit_ctl;
use crate::wit::exports::wasmcsi::plugin::identity::Features;

pub(crate) struct GroupControllerService(pub(crate) Arc<Driver>);

/// Most volumes one group takes (the host's multi-copy bound as well):
/// each member freezes a filesystem or holds a lock while the group is cut.
const MAX_MEMBERS: usize = 64;

/// The plugin-local ids of a group's member snapshots as the CO gave them;
/// an id of another plugin (or no plugin's) cannot be one of the group's.
fn local_snapshot_ids(
    driver: &Driver,
    plugin: &Plugin,
    ids: &[String],
) -> Result<Vec<String>, Status> {
    ids.iter()
        .map(|id| match driver.dispatch.for_id(id) {
            Some((owner, local)) if owner.name == plugin.name => Ok(local.to_string()),
            _ => Err(Status::invalid_argument(format!(
                "snapshot {id} is not one of plugin {}'s, so not in this group",
                plugin.name
            ))),
        })
        .collect()
}

impl GroupControllerService {
    fn driver(&self) -> &Driver {
        &self.0
    }

    /// The one plugin owning every source volume, and their local ids.
    fn owner_of(&self, sources: &[String]) -> Result<(Arc<Plugin>, Vec<String>), Status> {
        if sources.is_empty() {
            return Err(Status::invalid_argument("source_volume_ids is required"));
        }
        if sources.len() > MAX_MEMBERS {
            return Err(Status::invalid_argument(format!(
                "{} source volumes; a group snapshot takes at most {MAX_MEMBERS}",
                sources.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut owner: Option<Arc<Plugin>> = None;
        let mut locals = Vec::with_capacity(sources.len());
        for id in sources {
            let id = validate::required(id, "source_volume_ids entry")?;
            if !seen.insert(id) {
                return Err(Status::invalid_argument(format!(
                    "volume {id} is named twice in source_volume_ids"
                )));
            }
            let (plugin, local) = resolve(&self.driver().dispatch, "volume", id)?;
            if let Some(first) = &owner {
                if first.name != plugin.name {
                    return Err(Status::failed_precondition(format!(
                        "volumes of plugins {} and {} cannot be snapshotted together",
                        first.name, plugin.name
                    )));
                }
            }
            locals.push(local.to_string());
            owner.get_or_insert(plugin);
        }
        let plugin = owner.expect("at least one source");
        require(&plugin, Features::GROUP_SNAPSHOTS)?;
        Ok((plugin, locals))
    }
}

/// What a group snapshot locks: its name, then every source (which is not
/// deleted or expanded while it is copied) in a fixed order, so two groups
/// sharing volumes cannot each hold what the other waits for.
fn group_locks(plugin: &Plugin, name: &str, sources: &[String]) -> Vec<String> {
    let mut ordered = sources.to_vec();
    ordered.sort();
    std::iter::once(format!("group-snapshot {}/{name}", plugin.name))
        .chain(ordered)
        .collect()
}

fn rpc_capability(kind: rpc::Type) -> GroupControllerServiceCapability {
    GroupControllerServiceCapability {
        r#type: Some(CapType::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<GroupControllerGetCapabilitiesResponse>, Status> {
        let grouping = self.driver().dispatch.any_has(Features::GROUP_SNAPSHOTS);
        Ok(Response::new(GroupControllerGetCapabilitiesResponse {
            capabilities: grouping
                .then(|| rpc_capability(rpc::Type::CreateDeleteGetVolumeGroupSnapshot))
                .into_iter()
                .collect(),
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<CreateVolumeGroupSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("CreateVolumeGroupSnapshot", &req.name.clone(), async move {
            let name = validate::required(&req.name, "name")?.to_string();
            let (plugin, locals) = self.owner_of(&req.source_volume_ids)?;
            let locks = group_locks(&plugin, &name, &req.source_volume_ids);
            let call = wit_ctl::CreateGroupSnapshotRequest {
                name,
                source_volume_ids: locals.clone(),
                parameters: plugin_parameters(&req.parameters),
                secrets: convert::pairs(&req.secrets),
            };
            let group = call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "create-group-snapshot", deadline).locking(locks),
                move |p: &wit_ctl::Guest, s| {
                    Box::pin(async move { p.call_create_group_snapshot(s, &call).await })
                },
            )
            .await?;
            returns::group_snapshot(&plugin.name, &group, Some(&locals))?;
            Ok(CreateVolumeGroupSnapshotResponse {
                group_snapshot: Some(convert::group_snapshot(&plugin, group)),
            })
        })
        .await
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<DeleteVolumeGroupSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced(
            "DeleteVolumeGroupSnapshot",
            &req.group_snapshot_id.clone(),
            async move {
                let id = validate::required(&req.group_snapshot_id, "group_snapshot_id")?;
                let dispatch = &self.driver().dispatch;
                let Some((plugin, local)) = resolve_to_delete(dispatch, "group snapshot", id)?
                else {
                    return Ok(DeleteVolumeGroupSnapshotResponse {});
                };
                require(&plugin, Features::GROUP_SNAPSHOTS)?;
                let members = local_snapshot_ids(self.driver(), &plugin, &req.snapshot_ids)?;
                let (local, secrets) = (local.to_string(), convert::pairs(&req.secrets));
                done_if_gone(
                    call_plugin(
                        dispatch,
                        PluginCall::new(&plugin, "delete-group-snapshot", deadline).locking([id]),
                        move |p: &wit_ctl::Guest, s| {
                            Box::pin(async move {
                                p.call_delete_group_snapshot(s, &local, &members, &secrets)
                                    .await
                            })
                        },
                    )
                    .await,
                )?;
                Ok(DeleteVolumeGroupSnapshotResponse {})
            },
        )
        .await
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<GetVolumeGroupSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced(
            "GetVolumeGroupSnapshot",
            &req.group_snapshot_id.clone(),
            async move {
                let id = validate::required(&req.group_snapshot_id, "group_snapshot_id")?;
                let (plugin, local) = resolve(&self.driver().dispatch, "group snapshot", id)?;
                require(&plugin, Features::GROUP_SNAPSHOTS)?;
                let members = local_snapshot_ids(self.driver(), &plugin, &req.snapshot_ids)?;
                let asked = local.to_string();
                let (local, secrets) = (asked.clone(), convert::pairs(&req.secrets));
                let group = call_plugin(
                    &self.driver().dispatch,
                    PluginCall::new(&plugin, "get-group-snapshot", deadline),
                    move |p: &wit_ctl::Guest, s| {
                        Box::pin(async move {
                            p.call_get_group_snapshot(s, &local, &members, &secrets)
                                .await
                        })
                    },
                )
                .await?;
                returns::group_snapshot(&plugin.name, &group, None)?;
                if group.group_snapshot_id != asked {
                    return Err(Status::internal(format!(
                        "plugin {} answered another group than {asked} (a bug in the plugin)",
                        plugin.name
                    )));
                }
                Ok(GetVolumeGroupSnapshotResponse {
                    group_snapshot: Some(convert::group_snapshot(&plugin, group)),
                })
            },
        )
        .await
    }
}
