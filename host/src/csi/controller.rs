//! CSI Controller: volume and snapshot lifecycle, delegated to plugins.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::{call_plugin, done_if_gone, require, resolve, resolve_to_delete, PluginCall};
use super::{convert, deadline, holders, mounts, off_workers, traced, validate, Driver};
use crate::dispatch::PLUGIN_PARAMETER;
use crate::proto::controller_server::Controller;
use crate::proto::controller_service_capability::{rpc, Rpc, Type as CapType};
use crate::proto::*;
use crate::returns;
use crate::runtime::Plugin;
use crate::wit::exports::wasmcsi::plugin::controller as wit_ctl;
use crate::wit::exports::wasmcsi::plugin::identity::Features;
use crate::wit::wasmcsi::plugin::types as wit;

pub(crate) struct ControllerService(pub(crate) Arc<Driver>);

/// The CSI id of a create's content source, if it has one.
fn source_id(source: Option<&VolumeContentSource>) -> Option<&str> {
    use volume_content_source::Type;
    match source?.r#type.as_ref()? {
        Type::Snapshot(s) => Some(&s.snapshot_id),
        Type::Volume(v) => Some(&v.volume_id),
    }
}

/// Parameters a plugin never sees: the host's own, and the metadata the
/// external-provisioner adds (`csi.storage.k8s.io/pvc/name`, ...).
pub(super) fn plugin_parameters(parameters: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut out: Vec<_> = parameters
        .iter()
        .filter(|(k, _)| k.as_str() != PLUGIN_PARAMETER && !k.starts_with("csi.storage.k8s.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort();
    out
}

impl ControllerService {
    fn driver(&self) -> &Driver {
        &self.0
    }

    /// The topology of volumes a node-local plugin makes on this node.
    fn topology_of(&self, plugin: &Plugin) -> Option<Topology> {
        plugin.has(Features::NODE_LOCAL).then(|| Topology {
            segments: HashMap::from([(
                self.driver().topology_key().to_string(),
                self.driver().node_id().to_string(),
            )]),
        })
    }

    /// An RPC no loaded plugin offers is one the driver does not advertise:
    /// UNIMPLEMENTED, not an empty answer.
    fn check_offered(&self, feature: Features, what: &str) -> Result<(), Status> {
        if self.driver().dispatch.any_has(feature) {
            Ok(())
        } else {
            Err(Status::unimplemented(format!(
                "no loaded plugin can {what}"
            )))
        }
    }

    fn is_this_node(&self, topology: &Topology) -> bool {
        topology
            .segments
            .get(self.driver().topology_key())
            .map(String::as_str)
            == Some(self.driver().node_id())
    }

    /// For node-local plugins the volume is made here, so the requirements
    /// must allow this node.
    fn check_topology(
        &self,
        plugin: &Plugin,
        req: Option<&TopologyRequirement>,
    ) -> Result<(), Status> {
        if !plugin.has(Features::NODE_LOCAL) {
            return Ok(());
        }
        if self.driver().node_id().is_empty() {
            return Err(Status::failed_precondition(format!(
                "plugin {} makes node-local volumes: this driver instance needs a node id",
                plugin.name
            )));
        }
        let Some(req) = req else { return Ok(()) };
        let candidates: Vec<&Topology> = if req.requisite.is_empty() {
            req.preferred.iter().collect()
        } else {
            req.requisite.iter().collect()
        };
        if candidates.is_empty() || candidates.iter().any(|t| self.is_this_node(t)) {
            Ok(())
        } else {
            Err(Status::resource_exhausted(format!(
                "volumes of plugin {} can only be made on node {} ({}={}), which the accessibility requirements exclude",
                plugin.name,
                self.driver().node_id(),
                self.driver().topology_key(),
                self.driver().node_id()
            )))
        }
    }

    fn content_source(
        &self,
        plugin: &Plugin,
        source: Option<&VolumeContentSource>,
    ) -> Result<Option<wit::ContentSource>, Status> {
        use volume_content_source::Type;
        let Some(kind) = source.and_then(|s| s.r#type.as_ref()) else {
            return Ok(None);
        };
        let (id, make, feature, what): (&str, fn(String) -> wit::ContentSource, _, _) = match kind {
            Type::Snapshot(s) => (
                &s.snapshot_id,
                wit::ContentSource::Snapshot,
                Features::RESTORE_SNAPSHOT,
                "a snapshot",
            ),
            Type::Volume(v) => (
                &v.volume_id,
                wit::ContentSource::Volume,
                Features::CLONE_VOLUME,
                "another volume",
            ),
        };
        if !plugin.has(feature) {
            return Err(Status::invalid_argument(format!(
                "plugin {} cannot create volumes from {what}",
                plugin.name
            )));
        }
        match self.driver().dispatch.for_id(id) {
            Some((owner, local)) if owner.name == plugin.name => Ok(Some(make(local.to_string()))),
            Some((owner, _)) => Err(Status::invalid_argument(format!(
                "source {id} belongs to plugin {}, not {}",
                owner.name, plugin.name
            ))),
            None => Err(Status::not_found(format!("source {id} does not exist"))),
        }
    }

    /// Walks plugins with `feature` in order, one page at a time; tokens are
    /// `<plugin>:<plugin's token>`.
    async fn paginate<T, F, Fut>(
        &self,
        feature: Features,
        starting_token: &str,
        max_entries: u32,
        mut fetch: F,
    ) -> Result<(Vec<T>, String), Status>
    where
        F: FnMut(Arc<Plugin>, String, u32) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
    {
        let plugins: Vec<Arc<Plugin>> = self
            .driver()
            .dispatch
            .plugins()
            .iter()
            .filter(|p| p.has(feature))
            .cloned()
            .collect();
        let (mut index, mut token) = if starting_token.is_empty() {
            (0, String::new())
        } else {
            let (name, token) = starting_token.split_once(':').ok_or_else(|| {
                Status::aborted(format!("invalid starting_token {starting_token:?}"))
            })?;
            let index = plugins.iter().position(|p| p.name == name).ok_or_else(|| {
                Status::aborted(format!("invalid starting_token {starting_token:?}"))
            })?;
            (index, token.to_string())
        };
        let mut entries = Vec::new();
        while index < plugins.len() {
            let plugin = plugins[index].clone();
            if max_entries != 0 && entries.len() >= max_entries as usize {
                return Ok((entries, format!("{}:{token}", plugin.name)));
            }
            // Never more than a bounded page, even when the CO set no limit.
            let ask = returns::page_ask(max_entries, entries.len());
            let (page, next) = fetch(plugin.clone(), token.clone(), ask).await?;
            entries.extend(page);
            if !next.is_empty() {
                return Ok((entries, format!("{}:{next}", plugin.name)));
            }
            index += 1;
            token.clear();
        }
        Ok((entries, String::new()))
    }
}

fn rpc_capability(kind: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(CapType::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

/// A volume staged or published on this node is in use: deleting it would
/// pull its data from under a pod. FAILED_PRECONDITION, which the CO
/// retries after unpublish and unstage. Known from the node's own records,
/// so this holds where the controller runs beside the node service.
async fn check_not_in_use(
    records: &holders::Records,
    deadline: Option<std::time::Duration>,
    id: &str,
) -> Result<(), Status> {
    let (records, owned) = (records.clone(), id.to_string());
    let live = off_workers(deadline, move || {
        records.of_volume(&mounts::table()?, &owned)
    })
    .await?;
    match live.first() {
        Some(r) => Err(Status::failed_precondition(format!(
            "volume {id} is in use: {} at {} on this node",
            match r.role {
                holders::Role::Staging => "staged",
                holders::Role::Target => "published",
            },
            r.path.display()
        ))),
        None => Ok(()),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("CreateVolume", &req.name.clone(), async move {
            let name = validate::required(&req.name, "name")?.to_string();
            let capabilities = validate::capabilities(&req.volume_capabilities)?;
            let capacity = validate::capacity(req.capacity_range.as_ref())?;
            let plugin = self.driver().dispatch.for_parameters(&req.parameters)?;
            for cap in &capabilities {
                if let Some(why) = validate::unsupported(&plugin, cap) {
                    return Err(Status::invalid_argument(why));
                }
            }
            self.check_topology(&plugin, req.accessibility_requirements.as_ref())?;
            let content_source =
                self.content_source(&plugin, req.volume_content_source.as_ref())?;
            let name_key = format!("name {}/{name}", plugin.name);
            // The source (volume or snapshot) cannot be deleted, or a volume
            // source expanded, while it is being copied.
            let source_key = source_id(req.volume_content_source.as_ref());
            let call = wit_ctl::CreateVolumeRequest {
                name,
                capacity,
                capabilities,
                parameters: plugin_parameters(&req.parameters),
                secrets: convert::pairs(&req.secrets),
                content_source,
            };
            let volume = call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "create-volume", deadline)
                    .locking([name_key.as_str()].into_iter().chain(source_key)),
                move |p: &wit_ctl::Guest, s| {
                    Box::pin(async move { p.call_create_volume(s, &call).await })
                },
            )
            .await?;
            returns::created_volume(&plugin.name, &volume, &capacity)?;
            let topology = self.topology_of(&plugin);
            Ok(CreateVolumeResponse {
                volume: Some(convert::volume(&plugin, volume, topology)),
            })
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("DeleteVolume", &req.volume_id.clone(), async move {
            let id = validate::required(&req.volume_id, "volume_id")?;
            let dispatch = &self.driver().dispatch;
            let Some((plugin, local)) = resolve_to_delete(dispatch, "volume", id)? else {
                return Ok(DeleteVolumeResponse {});
            };
            // Locked here: the in-use check holds only while nobody stages.
            let _guard = dispatch.lock(id, deadline).await?;
            check_not_in_use(&self.driver().holders, deadline, id).await?;
            let (local, secrets) = (local.to_string(), convert::pairs(&req.secrets));
            done_if_gone(
                call_plugin(
                    dispatch,
                    PluginCall::new(&plugin, "delete-volume", deadline),
                    move |p: &wit_ctl::Guest, s| {
                        Box::pin(async move { p.call_delete_volume(s, &local, &secrets).await })
                    },
                )
                .await,
            )?;
            Ok(DeleteVolumeResponse {})
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "wasmcsi volumes need no controller publish",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "wasmcsi volumes need no controller unpublish",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced(
            "ValidateVolumeCapabilities",
            &req.volume_id.clone(),
            async move {
                let id = validate::required(&req.volume_id, "volume_id")?;
                let capabilities = validate::capabilities(&req.volume_capabilities)?;
                let dispatch = &self.driver().dispatch;
                let (plugin, local) = resolve(dispatch, "volume", id)?;
                let (local, secrets) = (local.to_string(), convert::pairs(&req.secrets));
                call_plugin(
                    dispatch,
                    PluginCall::new(&plugin, "get-volume", deadline),
                    move |p: &wit_ctl::Guest, s| {
                        Box::pin(async move { p.call_get_volume(s, &local, &secrets).await })
                    },
                )
                .await?;
                let refused: Vec<String> = capabilities
                    .iter()
                    .filter_map(|c| validate::unsupported(&plugin, c))
                    .collect();
                if !refused.is_empty() {
                    return Ok(ValidateVolumeCapabilitiesResponse {
                        confirmed: None,
                        message: refused.join("; "),
                    });
                }
                Ok(ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(validate_volume_capabilities_response::Confirmed {
                        volume_context: req.volume_context,
                        volume_capabilities: req.volume_capabilities,
                        parameters: req.parameters,
                        mutable_parameters: req.mutable_parameters,
                    }),
                    message: String::new(),
                })
            },
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("ListVolumes", "", async move {
            self.check_offered(Features::LIST_VOLUMES, "list volumes")?;
            let max = validate::max_entries(req.max_entries)?;
            let (entries, next_token) = self
                .paginate(
                    Features::LIST_VOLUMES,
                    &req.starting_token,
                    max,
                    |plugin, token, max| async move {
                        let page = call_plugin(
                            &self.driver().dispatch,
                            PluginCall::new(&plugin, "list-volumes", deadline),
                            move |p: &wit_ctl::Guest, s| {
                                Box::pin(async move { p.call_list_volumes(s, &token, max).await })
                            },
                        )
                        .await?;
                        returns::page(
                            &plugin.name,
                            "volumes",
                            page.volumes.len(),
                            max,
                            &page.next_token,
                        )?;
                        for v in &page.volumes {
                            returns::volume(&plugin.name, v)?;
                        }
                        let topology = self.topology_of(&plugin);
                        let entries = page
                            .volumes
                            .into_iter()
                            .map(|v| list_volumes_response::Entry {
                                volume: Some(convert::volume(&plugin, v, topology.clone())),
                                status: None,
                            })
                            .collect();
                        Ok((entries, page.next_token))
                    },
                )
                .await?;
            Ok(ListVolumesResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("GetCapacity", "", async move {
            let mut caps = vec![];
            for cap in &req.volume_capabilities {
                caps.push(validate::capability(cap)?);
            }
            let plugin = self.driver().dispatch.for_parameters(&req.parameters)?;
            require(&plugin, Features::GET_CAPACITY)?;
            let minimum_volume_size = Some(convert::bytes(plugin.info.min_volume_bytes));
            // No room for volumes the plugin cannot make (block from a
            // file-only plugin, an access mode it lacks): the CSI spec's
            // capacity "for volumes that satisfy ALL the capabilities".
            if caps
                .iter()
                .any(|c| validate::unsupported(&plugin, c).is_some())
            {
                return Ok(GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: None,
                    minimum_volume_size,
                });
            }
            // A node-local plugin has nothing to offer on another node.
            if let Some(topology) = &req.accessible_topology {
                if plugin.has(Features::NODE_LOCAL) && !self.is_this_node(topology) {
                    return Ok(GetCapacityResponse {
                        available_capacity: 0,
                        maximum_volume_size: None,
                        minimum_volume_size,
                    });
                }
            }
            let parameters = plugin_parameters(&req.parameters);
            let available = call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "get-capacity", deadline),
                move |p: &wit_ctl::Guest, s| {
                    Box::pin(async move { p.call_get_capacity(s, &parameters).await })
                },
            )
            .await?;
            Ok(GetCapacityResponse {
                available_capacity: returns::bytes(
                    &plugin.name,
                    "an available capacity of",
                    available,
                )?,
                maximum_volume_size: None,
                minimum_volume_size,
            })
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let d = &self.driver().dispatch;
        let mut kinds = vec![rpc::Type::CreateDeleteVolume];
        let wanted = [
            (
                d.any_has(Features::CONTROLLER_EXPAND) || d.any_has(Features::NODE_EXPAND),
                rpc::Type::ExpandVolume,
            ),
            (d.any_has(Features::LIST_VOLUMES), rpc::Type::ListVolumes),
            (d.any_has(Features::GET_CAPACITY), rpc::Type::GetCapacity),
            (
                d.any_has(Features::SNAPSHOTS),
                rpc::Type::CreateDeleteSnapshot,
            ),
            (d.any_has(Features::SNAPSHOTS), rpc::Type::ListSnapshots),
            (d.any_has(Features::SNAPSHOTS), rpc::Type::GetSnapshot),
            (d.any_has(Features::CLONE_VOLUME), rpc::Type::CloneVolume),
            (
                d.offers_single_node_writer_modes(),
                rpc::Type::SingleNodeMultiWriter,
            ),
        ];
        kinds.extend(wanted.into_iter().filter(|(on, _)| *on).map(|(_, k)| k));
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: kinds.into_iter().map(rpc_capability).collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced(
            "CreateSnapshot",
            &req.source_volume_id.clone(),
            async move {
                let name = validate::required(&req.name, "name")?.to_string();
                let source = validate::required(&req.source_volume_id, "source_volume_id")?;
                let dispatch = &self.driver().dispatch;
                let (plugin, local) = resolve(dispatch, "volume", source)?;
                let name_key = format!("snapshot {}/{name}", plugin.name);
                let call = wit_ctl::CreateSnapshotRequest {
                    source_volume_id: local.to_string(),
                    name,
                    parameters: plugin_parameters(&req.parameters),
                    secrets: convert::pairs(&req.secrets),
                };
                let snapshot = call_plugin(
                    dispatch,
                    PluginCall::new(&plugin, "create-snapshot", deadline)
                        .gated(Features::SNAPSHOTS)
                        // The source cannot be deleted or expanded while it is copied.
                        .locking([name_key.as_str(), source]),
                    move |p: &wit_ctl::Guest, s| {
                        Box::pin(async move { p.call_create_snapshot(s, &call).await })
                    },
                )
                .await?;
                returns::snapshot(&plugin.name, &snapshot)?;
                Ok(CreateSnapshotResponse {
                    snapshot: Some(convert::snapshot(&plugin, snapshot)),
                })
            },
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("DeleteSnapshot", &req.snapshot_id.clone(), async move {
            self.check_offered(Features::SNAPSHOTS, "take snapshots")?;
            let id = validate::required(&req.snapshot_id, "snapshot_id")?;
            let dispatch = &self.driver().dispatch;
            let Some((plugin, local)) = resolve_to_delete(dispatch, "snapshot", id)? else {
                return Ok(DeleteSnapshotResponse {});
            };
            let (local, secrets) = (local.to_string(), convert::pairs(&req.secrets));
            done_if_gone(
                call_plugin(
                    dispatch,
                    PluginCall::new(&plugin, "delete-snapshot", deadline)
                        .gated(Features::SNAPSHOTS)
                        .locking([id]),
                    move |p: &wit_ctl::Guest, s| {
                        Box::pin(async move { p.call_delete_snapshot(s, &local, &secrets).await })
                    },
                )
                .await,
            )?;
            Ok(DeleteSnapshotResponse {})
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("ListSnapshots", &req.source_volume_id.clone(), async move {
            self.check_offered(Features::SNAPSHOTS, "take snapshots")?;
            let max = validate::max_entries(req.max_entries)?;
            // A filter on an id no plugin made matches nothing.
            let wanted = [&req.snapshot_id, &req.source_volume_id];
            let mut filter_plugin = None;
            for id in wanted.iter().filter(|id| !id.is_empty()) {
                match self.driver().dispatch.for_id(id) {
                    Some((plugin, _)) => filter_plugin = Some(plugin.name.clone()),
                    None => {
                        return Ok(ListSnapshotsResponse {
                            entries: vec![],
                            next_token: String::new(),
                        })
                    }
                }
            }
            let local = |id: &str| -> Option<String> {
                (!id.is_empty()).then(|| {
                    id.split_once(':')
                        .map(|(_, l)| l.to_string())
                        .unwrap_or_default()
                })
            };
            let (snapshot_id, source_volume_id) =
                (local(&req.snapshot_id), local(&req.source_volume_id));
            let secrets = convert::pairs(&req.secrets);
            let (entries, next_token) = self
                .paginate(
                    Features::SNAPSHOTS,
                    &req.starting_token,
                    max,
                    |plugin, token, max| {
                        let filter = wit_ctl::SnapshotFilter {
                            snapshot_id: snapshot_id.clone(),
                            source_volume_id: source_volume_id.clone(),
                            starting_token: token,
                            max_entries: max,
                            secrets: secrets.clone(),
                        };
                        let skip = filter_plugin.as_ref().is_some_and(|f| *f != plugin.name);
                        async move {
                            if skip {
                                return Ok((vec![], String::new()));
                            }
                            let page = call_plugin(
                                &self.driver().dispatch,
                                PluginCall::new(&plugin, "list-snapshots", deadline),
                                move |p: &wit_ctl::Guest, s| {
                                    Box::pin(async move { p.call_list_snapshots(s, &filter).await })
                                },
                            )
                            .await?;
                            returns::page(
                                &plugin.name,
                                "snapshots",
                                page.snapshots.len(),
                                max,
                                &page.next_token,
                            )?;
                            for s in &page.snapshots {
                                returns::snapshot(&plugin.name, s)?;
                            }
                            let entries = page
                                .snapshots
                                .into_iter()
                                .map(|s| list_snapshots_response::Entry {
                                    snapshot: Some(convert::snapshot(&plugin, s)),
                                })
                                .collect();
                            Ok((entries, page.next_token))
                        }
                    },
                )
                .await?;
            Ok(ListSnapshotsResponse {
                entries,
                next_token,
            })
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced(
            "ControllerExpandVolume",
            &req.volume_id.clone(),
            async move {
                let id = validate::required(&req.volume_id, "volume_id")?;
                let range = req
                    .capacity_range
                    .as_ref()
                    .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
                let capacity = validate::capacity(Some(range))?;
                let Some(required) = capacity.required_bytes.or(capacity.limit_bytes) else {
                    return Err(Status::invalid_argument(
                        "capacity_range must set required_bytes or limit_bytes",
                    ));
                };
                let capability = req
                    .volume_capability
                    .as_ref()
                    .map(validate::capability)
                    .transpose()?;
                let dispatch = &self.driver().dispatch;
                let (plugin, local) = resolve(dispatch, "volume", id)?;
                if !plugin.has(Features::CONTROLLER_EXPAND) && plugin.has(Features::NODE_EXPAND) {
                    // Nothing to do centrally: the node grows it.
                    return Ok(ControllerExpandVolumeResponse {
                        capacity_bytes: convert::bytes(required),
                        node_expansion_required: true,
                    });
                }
                let call = wit_ctl::ExpandRequest {
                    volume_id: local.to_string(),
                    capacity,
                    capability,
                    secrets: convert::pairs(&req.secrets),
                };
                let result = call_plugin(
                    dispatch,
                    PluginCall::new(&plugin, "controller-expand-volume", deadline)
                        .gated(Features::CONTROLLER_EXPAND)
                        .locking([id]),
                    move |p: &wit_ctl::Guest, s| {
                        Box::pin(async move { p.call_expand_volume(s, &call).await })
                    },
                )
                .await?;
                Ok(ControllerExpandVolumeResponse {
                    capacity_bytes: returns::expanded(
                        &plugin.name,
                        result.capacity_bytes,
                        &capacity,
                    )?,
                    node_expansion_required: result.node_expansion_required,
                })
            },
        )
        .await
    }

    async fn controller_get_volume(
        &self,
        _request: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("ControllerGetVolume is not offered"))
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        let deadline = deadline(&request);
        let req = request.into_inner();
        traced("GetSnapshot", &req.snapshot_id.clone(), async move {
            let id = validate::required(&req.snapshot_id, "snapshot_id")?;
            let (plugin, local) = resolve(&self.driver().dispatch, "snapshot", id)?;
            // The plugin's list filtered on the one id is its get.
            let filter = wit_ctl::SnapshotFilter {
                snapshot_id: Some(local.to_string()),
                source_volume_id: None,
                starting_token: String::new(),
                max_entries: 1,
                secrets: convert::pairs(&req.secrets),
            };
            let page = call_plugin(
                &self.driver().dispatch,
                PluginCall::new(&plugin, "list-snapshots", deadline).gated(Features::SNAPSHOTS),
                move |p: &wit_ctl::Guest, s| {
                    Box::pin(async move { p.call_list_snapshots(s, &filter).await })
                },
            )
            .await?;
            let snapshot = page
                .snapshots
                .into_iter()
                .find(|s| s.snapshot_id == local)
                .ok_or_else(|| Status::not_found(format!("snapshot {id} does not exist")))?;
            Ok(GetSnapshotResponse {
                snapshot: Some(convert::snapshot(&plugin, snapshot)),
            })
        })
        .await
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not offered",
        ))
    }
}
