//! One trait per exported WIT interface, with every call a plugin may
//! leave out answering UNIMPLEMENTED, so a plugin writes only what it
//! supports. Blanket impls turn them into the generated `Guest` traits
//! that `export!` needs. Signatures are the WIT's (see `wit/plugin.wit`).

use crate::bindings::exports::wasmcsi::plugin::{controller, identity, node};
use crate::error::{unimplemented, Result};
use crate::types::*;

/// What the plugin is: asked once when the host loads it.
pub trait Identity {
    fn info() -> PluginInfo;
}

/// The controller calls. The host only makes those the plugin's features
/// (`PluginInfo::features`) promise, and create/delete always.
pub trait Controller {
    fn create_volume(_req: CreateVolumeRequest) -> Result<Volume> {
        Err(unimplemented("controller.create-volume"))
    }
    fn delete_volume(_volume_id: String, _secrets: Secrets) -> Result<()> {
        Err(unimplemented("controller.delete-volume"))
    }
    fn expand_volume(_req: ExpandRequest) -> Result<ExpandResult> {
        Err(unimplemented("controller.expand-volume"))
    }
    fn get_volume(_volume_id: String, _secrets: Secrets) -> Result<Volume> {
        Err(unimplemented("controller.get-volume"))
    }
    fn list_volumes(_starting_token: String, _max_entries: u32) -> Result<VolumePage> {
        Err(unimplemented("controller.list-volumes"))
    }
    fn get_capacity(_parameters: KeyValues) -> Result<u64> {
        Err(unimplemented("controller.get-capacity"))
    }
    fn create_snapshot(_req: CreateSnapshotRequest) -> Result<Snapshot> {
        Err(unimplemented("controller.create-snapshot"))
    }
    fn delete_snapshot(_snapshot_id: String, _secrets: Secrets) -> Result<()> {
        Err(unimplemented("controller.delete-snapshot"))
    }
    fn list_snapshots(_filter: SnapshotFilter) -> Result<SnapshotPage> {
        Err(unimplemented("controller.list-snapshots"))
    }
    fn create_group_snapshot(_req: CreateGroupSnapshotRequest) -> Result<GroupSnapshot> {
        Err(unimplemented("controller.create-group-snapshot"))
    }
    fn delete_group_snapshot(
        _group_snapshot_id: String,
        _snapshot_ids: Vec<String>,
        _secrets: Secrets,
    ) -> Result<()> {
        Err(unimplemented("controller.delete-group-snapshot"))
    }
    fn get_group_snapshot(
        _group_snapshot_id: String,
        _snapshot_ids: Vec<String>,
        _secrets: Secrets,
    ) -> Result<GroupSnapshot> {
        Err(unimplemented("controller.get-group-snapshot"))
    }
}

/// The node calls; all idempotent.
pub trait Node {
    fn stage_volume(_req: StageRequest) -> Result<()> {
        Err(unimplemented("node.stage-volume"))
    }
    fn unstage_volume(_volume_id: String, _staging_path: String) -> Result<()> {
        Err(unimplemented("node.unstage-volume"))
    }
    fn publish_volume(_req: PublishRequest) -> Result<()> {
        Err(unimplemented("node.publish-volume"))
    }
    fn unpublish_volume(_volume_id: String, _target_path: String) -> Result<()> {
        Err(unimplemented("node.unpublish-volume"))
    }
    fn expand_volume(_req: NodeExpandRequest) -> Result<u64> {
        Err(unimplemented("node.expand-volume"))
    }
    fn get_volume_stats(
        _volume_id: String,
        _volume_path: String,
        _staging_path: Option<String>,
    ) -> Result<VolumeStats> {
        Err(unimplemented("node.get-volume-stats"))
    }
}

impl<T: Identity> identity::Guest for T {
    fn info() -> PluginInfo {
        T::info()
    }
}

impl<T: Controller> controller::Guest for T {
    fn create_volume(req: CreateVolumeRequest) -> Result<Volume> {
        T::create_volume(req)
    }
    fn delete_volume(volume_id: String, secrets: Secrets) -> Result<()> {
        T::delete_volume(volume_id, secrets)
    }
    fn expand_volume(req: ExpandRequest) -> Result<ExpandResult> {
        T::expand_volume(req)
    }
    fn get_volume(volume_id: String, secrets: Secrets) -> Result<Volume> {
        T::get_volume(volume_id, secrets)
    }
    fn list_volumes(starting_token: String, max_entries: u32) -> Result<VolumePage> {
        T::list_volumes(starting_token, max_entries)
    }
    fn get_capacity(parameters: KeyValues) -> Result<u64> {
        T::get_capacity(parameters)
    }
    fn create_snapshot(req: CreateSnapshotRequest) -> Result<Snapshot> {
        T::create_snapshot(req)
    }
    fn delete_snapshot(snapshot_id: String, secrets: Secrets) -> Result<()> {
        T::delete_snapshot(snapshot_id, secrets)
    }
    fn list_snapshots(filter: SnapshotFilter) -> Result<SnapshotPage> {
        T::list_snapshots(filter)
    }
    fn create_group_snapshot(req: CreateGroupSnapshotRequest) -> Result<GroupSnapshot> {
        T::create_group_snapshot(req)
    }
    fn delete_group_snapshot(
        id: String,
        snapshot_ids: Vec<String>,
        secrets: Secrets,
    ) -> Result<()> {
        T::delete_group_snapshot(id, snapshot_ids, secrets)
    }
    fn get_group_snapshot(
        id: String,
        snapshot_ids: Vec<String>,
        secrets: Secrets,
    ) -> Result<GroupSnapshot> {
        T::get_group_snapshot(id, snapshot_ids, secrets)
    }
}

impl<T: Node> node::Guest for T {
    fn stage_volume(req: StageRequest) -> Result<()> {
        T::stage_volume(req)
    }
    fn unstage_volume(volume_id: String, staging_path: String) -> Result<()> {
        T::unstage_volume(volume_id, staging_path)
    }
    fn publish_volume(req: PublishRequest) -> Result<()> {
        T::publish_volume(req)
    }
    fn unpublish_volume(volume_id: String, target_path: String) -> Result<()> {
        T::unpublish_volume(volume_id, target_path)
    }
    fn expand_volume(req: NodeExpandRequest) -> Result<u64> {
        T::expand_volume(req)
    }
    fn get_volume_stats(
        volume_id: String,
        volume_path: String,
        staging_path: Option<String>,
    ) -> Result<VolumeStats> {
        T::get_volume_stats(volume_id, volume_path, staging_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    struct Nothing;
    impl Controller for Nothing {}
    impl Node for Nothing {}

    #[test]
    fn unwritten_calls_answer_unimplemented_naming_the_call() {
        let e = <Nothing as controller::Guest>::list_volumes(String::new(), 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unimplemented);
        assert!(
            e.message.contains("controller.list-volumes"),
            "{}",
            e.message
        );
        let e = <Nothing as node::Guest>::expand_volume(NodeExpandRequest {
            volume_id: "v".into(),
            volume_path: "/p".into(),
            staging_path: None,
            capacity: CapacityRange {
                required_bytes: None,
                limit_bytes: None,
            },
            capability: None,
            secrets: vec![],
        })
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unimplemented);
        assert!(e.message.contains("node.expand-volume"), "{}", e.message);
    }
}
