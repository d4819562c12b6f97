//! local-dir group snapshots end to end: the real binary over gRPC, real
//! loop devices, XFS and btrfs. A group is one point in time across its
//! volumes (checked with a writer that orders its writes across them),
//! each member restores like any snapshot, and members go only with their
//! group.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tonic::Code;
use wasmcsi::proto::*;

async fn create(d: &mut TestDriver, name: &str, params: &[(&str, &str)]) -> String {
    d.client
        .controller
        .create_volume(create_req(name, 300 * MIB, params))
        .await
        .unwrap_or_else(|s| panic!("create {name}: {s:?}\n{}", d.logs()))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

async fn restore(d: &mut TestDriver, name: &str, snapshot_id: &str) -> String {
    let mut req = create_req(name, 300 * MIB, &[]);
    req.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snapshot_id.into(),
            },
        )),
    });
    d.client
        .controller
        .create_volume(req)
        .await
        .unwrap_or_else(|s| panic!("restore {name}: {s:?}\n{}", d.logs()))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

async fn publish(d: &mut TestDriver, id: &str, name: &str) -> (PathBuf, PathBuf) {
    let (staging, target) = (d.staging(name), d.target(name));
    std::fs::create_dir_all(&staging).unwrap();
    d.client
        .node
        .node_stage_volume(stage_req(id, &staging))
        .await
        .unwrap_or_else(|s| panic!("stage {id}: {s:?}\n{}", d.logs()));
    d.client
        .node
        .node_publish_volume(publish_req(id, &staging, &target, false))
        .await
        .expect("publish");
    (staging, target)
}

async fn unpublish(d: &mut TestDriver, id: &str, (staging, target): &(PathBuf, PathBuf)) {
    d.unpublish(id, target).await.expect("unpublish");
    d.unstage(id, staging).await.expect("unstage");
}

async fn cut(
    d: &mut TestDriver,
    name: &str,
    sources: &[&str],
) -> Result<VolumeGroupSnapshot, tonic::Status> {
    d.client
        .group_controller
        .create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
            name: name.into(),
            source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().group_snapshot.unwrap())
}

async fn delete_group(d: &mut TestDriver, g: &VolumeGroupSnapshot) -> Result<(), tonic::Status> {
    d.client
        .group_controller
        .delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: g.group_snapshot_id.clone(),
            snapshot_ids: g.snapshots.iter().map(|s| s.snapshot_id.clone()).collect(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

fn member_of<'g>(g: &'g VolumeGroupSnapshot, volume: &str) -> &'g Snapshot {
    g.snapshots
        .iter()
        .find(|s| s.source_volume_id == volume)
        .unwrap_or_else(|| panic!("no member of {volume} in {g:?}"))
}

fn seq(target: &Path) -> u64 {
    std::fs::read_to_string(target.join("seq"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0)
}

/// Writes 1, 2, 3... to `a/seq` then to `b/seq`, each done before the
/// next: at every instant `a` holds n and `b` holds n or n-1. A cut that is
/// one point in time keeps that; copies taken one after the other can
/// catch `b` ahead of `a`.
fn ordered_writer(a: PathBuf, b: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            // Whole values only: written aside, then renamed over.
            for dir in [&a, &b] {
                let mut f = std::fs::File::create(dir.join("seq.new")).unwrap();
                writeln!(f, "{n}").unwrap();
                f.sync_all().unwrap();
                std::fs::rename(dir.join("seq.new"), dir.join("seq")).unwrap();
            }
        }
        n
    })
}

/// Image mode: two mounted volumes under write load cut as one; members
/// restore to that point, are listed with their group, and are deleted
/// only with it.
#[tokio::test]
async fn image_group_snapshot_is_one_point_in_time() {
    let mut d = TestDriver::start(Options::default()).await;
    let a = create(&mut d, "pvc-a", &[]).await;
    let b = create(&mut d, "pvc-b", &[]).await;
    let pa = publish(&mut d, &a, "a").await;
    let pb = publish(&mut d, &b, "b").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = ordered_writer(pa.1.clone(), pb.1.clone(), stop.clone());
    while seq(&pb.1) < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let group = cut(&mut d, "grp-1", &[&a, &b])
        .await
        .unwrap_or_else(|s| panic!("group snapshot: {s:?}\n{}", d.logs()));
    stop.store(true, Ordering::Relaxed);
    let written = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    assert!(group.ready_to_use && group.creation_time.is_some());
    assert_eq!(group.snapshots.len(), 2);
    for s in &group.snapshots {
        assert_eq!(s.group_snapshot_id, group.group_snapshot_id);
        assert!(s.ready_to_use);
    }

    // Restored, each holds the cut's point: a at n, b at n or n-1.
    let ra = restore(&mut d, "pvc-ra", &member_of(&group, &a).snapshot_id).await;
    let rb = restore(&mut d, "pvc-rb", &member_of(&group, &b).snapshot_id).await;
    let pra = publish(&mut d, &ra, "ra").await;
    let prb = publish(&mut d, &rb, "rb").await;
    let (at_a, at_b) = (seq(&pra.1), seq(&prb.1));
    eprintln!("cut at a={at_a} b={at_b}, {written} written in all");
    assert!(at_b >= 20, "the cut lost writes made before it: b={at_b}");
    assert!(
        at_a == at_b || at_a == at_b + 1,
        "not one point in time: a={at_a} b={at_b}"
    );
    assert!(at_a < written, "the cut is not of its moment");

    // Idempotent; the same name over other volumes is refused.
    let again = cut(&mut d, "grp-1", &[&b, &a]).await.expect("repeat");
    assert_eq!(again.group_snapshot_id, group.group_snapshot_id);
    assert_eq!(code(cut(&mut d, "grp-1", &[&a]).await), Code::AlreadyExists);

    // Members: listed with their group, not deleted alone.
    let member = member_of(&group, &a).snapshot_id.clone();
    let listed = d
        .client
        .controller
        .list_snapshots(ListSnapshotsRequest {
            snapshot_id: member.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let entry = listed.entries[0].snapshot.as_ref().unwrap();
    assert_eq!(entry.group_snapshot_id, group.group_snapshot_id);
    let alone = d
        .client
        .controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: member.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(alone), Code::InvalidArgument);

    // Get checks the members named; delete takes them all.
    let get = |ids: Vec<String>| GetVolumeGroupSnapshotRequest {
        group_snapshot_id: group.group_snapshot_id.clone(),
        snapshot_ids: ids,
        ..Default::default()
    };
    let got = d
        .client
        .group_controller
        .get_volume_group_snapshot(get(vec![]))
        .await
        .expect("get")
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got.snapshots.len(), 2);
    let wrong = d
        .client
        .group_controller
        .get_volume_group_snapshot(get(vec![member.clone()]))
        .await;
    assert_eq!(code(wrong), Code::InvalidArgument);
    delete_group(&mut d, &group).await.expect("delete group");
    delete_group(&mut d, &group).await.expect("delete again");
    let gone = d
        .client
        .group_controller
        .get_volume_group_snapshot(get(vec![]))
        .await;
    assert_eq!(code(gone), Code::NotFound);
    let left = d
        .client
        .controller
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.entries.len() == 1 && left.entries.is_empty(),
        "{left:?}"
    );

    for (id, p) in [(&ra, &pra), (&rb, &prb), (&a, &pa), (&b, &pb)] {
        unpublish(&mut d, id, p).await;
        d.delete(id).await.expect("delete");
    }
    assert!(d.loop_devices().is_empty());
}

/// Subvolume mode: btrfs snapshots one subvolume at a time, so a group of
/// volumes in use is refused, and a group of idle ones is cut.
#[tokio::test]
async fn subvolume_group_snapshot_only_of_idle_volumes() {
    let mut d = TestDriver::start(Options {
        btrfs_root: true,
        mode: "subvolume",
        ..Default::default()
    })
    .await;
    let a = create(&mut d, "pvc-a", &[]).await;
    let b = create(&mut d, "pvc-b", &[]).await;
    let pa = publish(&mut d, &a, "a").await;
    std::fs::write(pa.1.join("data"), "in a").unwrap();
    let busy = cut(&mut d, "grp-busy", &[&a, &b]).await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");
    assert!(busy.message().contains("mounted"), "{busy:?}");
    // Nothing of the refused group is left.
    let left = d
        .client
        .controller
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(left.entries.is_empty(), "{left:?}");
    // One volume alone is one point in time, in use or not.
    let single = cut(&mut d, "grp-one", &[&a]).await.expect("single");
    unpublish(&mut d, &a, &pa).await;
    let group = cut(&mut d, "grp-idle", &[&a, &b])
        .await
        .unwrap_or_else(|s| panic!("idle group: {s:?}\n{}", d.logs()));
    let ra = restore(&mut d, "pvc-ra", &member_of(&group, &a).snapshot_id).await;
    let pra = publish(&mut d, &ra, "ra").await;
    assert_eq!(std::fs::read_to_string(pra.1.join("data")).unwrap(), "in a");
    unpublish(&mut d, &ra, &pra).await;
    for g in [&group, &single] {
        delete_group(&mut d, g).await.expect("delete group");
    }
    for id in [&ra, &a, &b] {
        d.delete(id).await.expect("delete");
    }
}

/// What the driver offers, and the rules every plugin gets from the host.
#[tokio::test]
async fn group_controller_is_advertised_and_checks_its_input() {
    let mut d = TestDriver::start(Options::default()).await;
    let caps = d
        .client
        .identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let group_service = plugin_capability::service::Type::GroupControllerService as i32;
    assert!(caps.iter().any(|c| matches!(
        &c.r#type,
        Some(plugin_capability::Type::Service(s)) if s.r#type == group_service
    )));
    let rpcs = d
        .client
        .group_controller
        .group_controller_get_capabilities(GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(rpcs.len(), 1);

    let a = create(&mut d, "pvc-a", &[]).await;
    for (sources, want) in [
        (vec![], Code::InvalidArgument),
        (vec![a.as_str(), a.as_str()], Code::InvalidArgument),
        (vec![a.as_str(), ""], Code::InvalidArgument),
        (vec![a.as_str(), "local-dir:pvc-nowhere"], Code::NotFound),
        (vec![a.as_str(), "other-plugin:v"], Code::NotFound),
    ] {
        let got = cut(&mut d, "grp", &sources).await;
        assert_eq!(code(got), want, "{sources:?}");
    }
    assert_eq!(code(cut(&mut d, "", &[&a]).await), Code::InvalidArgument);
    let deleted = d
        .client
        .group_controller
        .delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: "not-ours".into(),
            ..Default::default()
        })
        .await;
    assert!(deleted.is_ok());
    d.delete(&a).await.unwrap();
}
