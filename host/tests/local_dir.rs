//! local-dir end to end: real host, real plugin, real loop devices, XFS,
//! ext4 and btrfs. Capacity must be enforced by the kernel before and
//! after expansion.

mod common;

use common::*;
use tonic::Code;
use wasmcsi::proto::*;

/// Create → stage → publish → fill → expand → fill more → stats → tear
/// down, in one mode. Returns what the kernel let us write before and after.
async fn lifecycle(
    d: &mut TestDriver,
    params: &[(&str, &str)],
    first: u64,
    second: u64,
) -> (u64, u64) {
    let vol = d
        .client
        .controller
        .create_volume(create_req("pvc-life", first, params))
        .await
        .expect("create")
        .into_inner()
        .volume
        .unwrap();
    assert!(vol.capacity_bytes as u64 >= first);
    let id = vol.volume_id.clone();
    assert!(id.starts_with("local-dir:"), "{id}");
    let topo = &vol.accessible_topology[0].segments;
    assert_eq!(
        topo.get("topology.wasmcsi.io/node").map(String::as_str),
        Some("test-node")
    );

    let (staging, target) = (d.staging("life"), d.target("life"));
    std::fs::create_dir_all(&staging).unwrap();
    d.client
        .node
        .node_stage_volume(stage_req(&id, &staging))
        .await
        .expect("stage");
    d.client
        .node
        .node_publish_volume(publish_req(&id, &staging, &target, false))
        .await
        .expect("publish");
    assert!(mounted(&target));

    // Fill: the kernel must refuse writes at the volume's size.
    let (before, err) = fill(&target, "fill-1", 2 * vol.capacity_bytes as u64);
    let err = err.expect("writing past the capacity must fail");
    assert!(
        matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)),
        "unexpected error {err:?}"
    );
    assert!(
        before <= vol.capacity_bytes as u64,
        "wrote {before} > capacity {}",
        vol.capacity_bytes
    );
    assert!(
        before >= vol.capacity_bytes as u64 * 8 / 10,
        "only {before} of {} bytes usable",
        vol.capacity_bytes
    );

    // Expand: the controller step asks for the node step.
    let expanded = d
        .client
        .controller
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: range(second),
            volume_capability: Some(rw()),
            ..Default::default()
        })
        .await
        .expect("controller expand")
        .into_inner();
    assert!(expanded.capacity_bytes as u64 >= second);
    assert!(expanded.node_expansion_required);
    let node_expand = NodeExpandVolumeRequest {
        volume_id: id.clone(),
        volume_path: target.display().to_string(),
        staging_target_path: staging.display().to_string(),
        capacity_range: range(second),
        volume_capability: Some(rw()),
        ..Default::default()
    };
    let grown = match d.client.node.node_expand_volume(node_expand.clone()).await {
        Ok(r) => r.into_inner().capacity_bytes as u64,
        Err(s) if s.code() == Code::FailedPrecondition => {
            // This kernel refuses online ext4 growth: the volume grows
            // offline when it is staged next, as after a pod restart.
            restage(d, &id, &staging, &target).await;
            expanded.capacity_bytes as u64
        }
        Err(s) => panic!("node expand: {s:?}"),
    };
    assert!(grown >= second);
    // Retrying the node step is harmless.
    if let Ok(r) = d.client.node.node_expand_volume(node_expand).await {
        assert_eq!(r.into_inner().capacity_bytes as u64, grown);
    }
    let node = NodeExpandVolumeResponse {
        capacity_bytes: grown as i64,
    };

    // The new room is really usable, and still bounded.
    let (after, err) = fill(&target, "fill-2", 2 * second);
    assert!(err.is_some(), "the expanded volume must still be bounded");
    let total = before + after;
    assert!(
        total > vol.capacity_bytes as u64,
        "expansion gave no room: {total}"
    );
    assert!(total <= node.capacity_bytes as u64);

    let stats = d
        .client
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    let bytes = &stats.usage[0];
    assert!(
        bytes.total as u64 > vol.capacity_bytes as u64,
        "stats total {} not grown",
        bytes.total
    );
    assert!(bytes.total as u64 <= node.capacity_bytes as u64);
    assert!(
        bytes.used as u64 >= total * 9 / 10,
        "used {} vs written {total}",
        bytes.used
    );
    // btrfs has no fixed inode count (statfs reports 0); the others do.
    let on_btrfs = params.contains(&("mode", "subvolume"));
    assert!(on_btrfs || stats.usage[1].total > 0, "inode stats missing");
    assert!(!stats.volume_condition.unwrap().abnormal);

    // Tear down; nothing may be left behind.
    d.unpublish(&id, &target).await.expect("unpublish");
    assert!(!mounted(&target));
    d.unstage(&id, &staging).await.expect("unstage");
    assert!(!mounted(&staging));
    d.delete(&id).await.expect("delete");
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());
    (before, after)
}

async fn restage(
    d: &mut TestDriver,
    id: &str,
    staging: &std::path::Path,
    target: &std::path::Path,
) {
    d.unpublish(id, target).await.expect("unpublish");
    d.unstage(id, staging).await.expect("unstage");
    publish(d, id, staging, target).await;
}

#[tokio::test]
async fn image_xfs_capacity_enforced_and_expanded_online() {
    let mut d = TestDriver::start(Options::default()).await;
    lifecycle(&mut d, &[], 512 * MIB, GIB).await;
    assert!(
        d.loop_devices().is_empty(),
        "loop devices leaked: {:?}",
        d.loop_devices()
    );
}

#[tokio::test]
async fn image_ext4_capacity_enforced_and_expanded() {
    let mut d = TestDriver::start(Options::default()).await;
    lifecycle(&mut d, &[("fsType", "ext4")], 64 * MIB, 160 * MIB).await;
    assert!(
        d.loop_devices().is_empty(),
        "loop devices leaked: {:?}",
        d.loop_devices()
    );
}

#[tokio::test]
async fn btrfs_subvolume_qgroup_enforced_and_raised() {
    let mut d = TestDriver::start(Options {
        btrfs_root: true,
        ..Default::default()
    })
    .await;
    lifecycle(&mut d, &[("mode", "subvolume")], 64 * MIB, 128 * MIB).await;
}

/// A PVC cloned from another (dataSource: PersistentVolumeClaim): a btrfs
/// snapshot of the source, with the source's data and its own enforced
/// limit, independent of the source from then on.
#[tokio::test]
async fn btrfs_subvolume_clone_has_the_data_and_its_own_limit() {
    let mut d = TestDriver::start(Options {
        btrfs_root: true,
        ..Default::default()
    })
    .await;
    let params = [("mode", "subvolume")];
    let controller = d.client.controller.clone();
    let volume = |name: &str, source: Option<&str>| {
        let mut req = create_req(name, 64 * MIB, &params);
        req.volume_content_source = source.map(|id| VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(
                volume_content_source::VolumeSource {
                    volume_id: id.into(),
                },
            )),
        });
        let mut controller = controller.clone();
        async move {
            controller
                .create_volume(req)
                .await
                .map(|r| r.into_inner().volume.unwrap())
        }
    };
    let source = volume("pvc-source", None).await.expect("create the source");
    let (src_staging, src_target) = (d.staging("src"), d.target("src"));
    publish(&mut d, &source.volume_id, &src_staging, &src_target).await;
    std::fs::write(src_target.join("hello"), "written before the clone").unwrap();

    let clone = volume("pvc-clone", Some(&source.volume_id))
        .await
        .expect("clone");
    assert_eq!(clone.capacity_bytes, source.capacity_bytes);
    let from = clone
        .content_source
        .as_ref()
        .and_then(|c| c.r#type.as_ref());
    assert!(
        matches!(from, Some(volume_content_source::Type::Volume(v)) if v.volume_id == source.volume_id),
        "{from:?}"
    );
    std::fs::write(src_target.join("later"), "written after the clone").unwrap();
    let (staging, target) = (d.staging("clone"), d.target("clone"));
    publish(&mut d, &clone.volume_id, &staging, &target).await;
    assert_eq!(
        std::fs::read_to_string(target.join("hello")).unwrap(),
        "written before the clone"
    );
    assert!(
        !target.join("later").exists(),
        "the clone sees later writes"
    );

    // Its own limit: the kernel stops writes at the clone's size.
    let (written, err) = fill(&target, "fill", 2 * clone.capacity_bytes as u64);
    let err = err.expect("writing past the clone's capacity must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err:?}");
    assert!(written <= clone.capacity_bytes as u64, "wrote {written}");

    // The source goes first; the clone keeps its data.
    d.unpublish(&source.volume_id, &src_target).await.unwrap();
    d.unstage(&source.volume_id, &src_staging).await.unwrap();
    d.delete(&source.volume_id)
        .await
        .expect("delete the source");
    assert_eq!(
        std::fs::read_to_string(target.join("hello")).unwrap(),
        "written before the clone"
    );
    d.unpublish(&clone.volume_id, &target).await.unwrap();
    d.unstage(&clone.volume_id, &staging).await.unwrap();
    d.delete(&clone.volume_id).await.expect("delete the clone");
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());
}

/// Stages and publishes a volume read-write.
async fn publish(
    d: &mut TestDriver,
    id: &str,
    staging: &std::path::Path,
    target: &std::path::Path,
) {
    std::fs::create_dir_all(staging).unwrap();
    d.client
        .node
        .node_stage_volume(stage_req(id, staging))
        .await
        .expect("stage");
    d.client
        .node
        .node_publish_volume(publish_req(id, staging, target, false))
        .await
        .expect("publish");
}

#[tokio::test]
async fn image_block_volume_is_the_loop_device() {
    use std::os::unix::fs::FileTypeExt;
    let mut d = TestDriver::start(Options::default()).await;
    let mut req = create_req("pvc-block", 64 * MIB, &[]);
    req.volume_capabilities = vec![block_cap()];
    let vol = d
        .client
        .controller
        .create_volume(req)
        .await
        .expect("create block")
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id;
    let (staging, target) = (d.staging("blk"), d.kubelet.join("pods/blk/dev"));
    std::fs::create_dir_all(&staging).unwrap();
    let mut stage = stage_req(&id, &staging);
    stage.volume_capability = Some(block_cap());
    d.client
        .node
        .node_stage_volume(stage)
        .await
        .expect("stage block");
    let mut publish = publish_req(&id, &staging, &target, false);
    publish.volume_capability = Some(block_cap());
    d.client
        .node
        .node_publish_volume(publish)
        .await
        .expect("publish block");
    let meta = std::fs::metadata(&target).unwrap();
    assert!(
        meta.file_type().is_block_device(),
        "{} is not a block device",
        target.display()
    );
    // The device is exactly the volume's size.
    let size = run("blockdev", &["--getsize64", target.to_str().unwrap()]);
    assert_eq!(size.trim().parse::<i64>().unwrap(), vol.capacity_bytes);

    d.unpublish(&id, &target).await.expect("unpublish block");
    assert!(!target.exists(), "the target file is removed");
    d.unstage(&id, &staging).await.expect("unstage block");
    d.delete(&id).await.expect("delete block");
    assert!(d.loop_devices().is_empty());
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());
}
