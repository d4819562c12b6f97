//! Plugin (WIT) values as CSI protobuf messages. A value a plugin returned
//! comes here only after `returns` has checked it, so nothing is cut or
//! saturated silently on its way to the CO.

use std::collections::HashMap;

use crate::dispatch::global_id;
use crate::proto;
use crate::runtime::Plugin;
use crate::wit::wasmcsi::plugin::types as wit;

pub(crate) fn map(pairs: Vec<(String, String)>) -> HashMap<String, String> {
    pairs.into_iter().collect()
}

/// Parameters or secrets as sorted pairs (stable for the plugin).
pub(crate) fn pairs(map: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}

/// A host-made byte count as CSI's int64 (plugin-made ones go through
/// `returns::bytes`, which refuses what does not fit).
pub(crate) fn bytes(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn content_source(
    plugin: &Plugin,
    source: Option<wit::ContentSource>,
) -> Option<proto::VolumeContentSource> {
    use proto::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let kind = match source? {
        wit::ContentSource::Snapshot(id) => Type::Snapshot(SnapshotSource {
            snapshot_id: global_id(plugin, &id),
        }),
        wit::ContentSource::Volume(id) => Type::Volume(VolumeSource {
            volume_id: global_id(plugin, &id),
        }),
    };
    Some(proto::VolumeContentSource { r#type: Some(kind) })
}

pub(crate) fn volume(
    plugin: &Plugin,
    v: wit::Volume,
    topology: Option<proto::Topology>,
) -> proto::Volume {
    proto::Volume {
        capacity_bytes: bytes(v.capacity_bytes),
        volume_id: global_id(plugin, &v.volume_id),
        volume_context: map(v.volume_context),
        content_source: content_source(plugin, v.content_source),
        accessible_topology: topology.into_iter().collect(),
    }
}

fn timestamp(seconds: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

pub(crate) fn snapshot(plugin: &Plugin, s: wit::Snapshot) -> proto::Snapshot {
    proto::Snapshot {
        size_bytes: bytes(s.size_bytes),
        snapshot_id: global_id(plugin, &s.snapshot_id),
        source_volume_id: global_id(plugin, &s.source_volume_id),
        creation_time: Some(timestamp(s.creation_time)),
        ready_to_use: s.ready_to_use,
        group_snapshot_id: s
            .group_snapshot_id
            .map(|g| global_id(plugin, &g))
            .unwrap_or_default(),
    }
}

pub(crate) fn group_snapshot(plugin: &Plugin, g: wit::GroupSnapshot) -> proto::VolumeGroupSnapshot {
    proto::VolumeGroupSnapshot {
        group_snapshot_id: global_id(plugin, &g.group_snapshot_id),
        snapshots: g
            .snapshots
            .into_iter()
            .map(|s| snapshot(plugin, s))
            .collect(),
        creation_time: Some(timestamp(g.creation_time)),
        ready_to_use: g.ready_to_use,
    }
}
