//! Every call acts on its own volume only, and odd sizes never save a bad
//! state: the rows of the issue "what a buggy CO or odd sizes still break",
//! each against the real binary, real mounts, both local-dir modes where
//! they apply.

mod common;

use std::path::Path;

use common::*;
use tonic::Code;
use wasmcsi::proto::volume_capability::access_mode::Mode;
use wasmcsi::proto::*;

const IMAGE: u64 = 300 * MIB;

fn btrfs() -> Options {
    Options {
        btrfs_root: true,
        mode: "subvolume",
        ..Default::default()
    }
}

fn image_on_ext4_root() -> Options {
    Options {
        ext4_root: true,
        ..Default::default()
    }
}

async fn create(d: &mut TestDriver, name: &str, bytes: u64) -> String {
    d.client
        .controller
        .create_volume(create_req(name, bytes, &[]))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}\n{}", d.logs()))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

async fn stage(d: &mut TestDriver, id: &str, staging: &Path) -> Result<(), tonic::Status> {
    std::fs::create_dir_all(staging).unwrap();
    d.client
        .node
        .node_stage_volume(stage_req(id, staging))
        .await
        .map(drop)
}

async fn publish(
    d: &mut TestDriver,
    id: &str,
    staging: &Path,
    target: &Path,
) -> Result<(), tonic::Status> {
    d.client
        .node
        .node_publish_volume(publish_req(id, staging, target, false))
        .await
        .map(drop)
}

async fn node_expand(
    d: &mut TestDriver,
    id: &str,
    path: &Path,
    bytes: u64,
) -> Result<i64, tonic::Status> {
    let req = NodeExpandVolumeRequest {
        volume_id: id.into(),
        volume_path: path.display().to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        volume_capability: Some(rw()),
        ..Default::default()
    };
    d.client
        .node
        .node_expand_volume(req)
        .await
        .map(|r| r.into_inner().capacity_bytes)
}

async fn stats(d: &mut TestDriver, id: &str, path: &Path) -> Result<(), tonic::Status> {
    let req = NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.display().to_string(),
        ..Default::default()
    };
    d.client.node.node_get_volume_stats(req).await.map(drop)
}

async fn capacity(d: &mut TestDriver, params: &[(&str, &str)]) -> u64 {
    let req = GetCapacityRequest {
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    d.client
        .controller
        .get_capacity(req)
        .await
        .unwrap_or_else(|e| panic!("get capacity: {e:?}"))
        .into_inner()
        .available_capacity as u64
}

async fn list_volumes(d: &mut TestDriver) -> Result<usize, tonic::Status> {
    d.client
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .map(|r| r.into_inner().entries.len())
}

fn write_marker(dir: &Path, text: &str) {
    std::fs::write(dir.join("marker"), text).unwrap();
}

fn marker(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("marker")).ok()
}

fn is_resource_or_range(code: Code) -> bool {
    matches!(code, Code::ResourceExhausted | Code::OutOfRange)
}

// ---- row 1: a size that cannot be had is never saved ----

#[tokio::test]
async fn row1_a_grow_past_the_root_is_refused_before_anything_is_saved() {
    let mut d = TestDriver::start(Options::default()).await;
    let id = create(&mut d, "pvc-grow", IMAGE).await;
    let (staging, target) = (d.staging("grow"), d.target("grow"));
    stage(&mut d, &id, &staging).await.expect("stage");
    publish(&mut d, &id, &staging, &target)
        .await
        .expect("publish");
    let huge = 1u64 << 50;
    let e = d.expand(&id, huge).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let e = node_expand(&mut d, &id, &target, huge).await.unwrap_err();
    assert!(is_resource_or_range(e.code()), "{e:?}");
    // i64::MAX: rounding up would pass what CSI can carry.
    let e = d.expand(&id, i64::MAX as u64).await.unwrap_err();
    assert!(is_resource_or_range(e.code()), "{e:?}");
    let e = node_expand(&mut d, &id, &target, i64::MAX as u64)
        .await
        .unwrap_err();
    assert!(is_resource_or_range(e.code()), "{e:?}");

    // The volume is as it was: its size, restageable, and the node still
    // makes volumes; the controller's listings answer.
    let listed = d
        .client
        .controller
        .list_volumes(ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .entries;
    let sizes: Vec<i64> = listed
        .iter()
        .filter_map(|e| e.volume.as_ref())
        .map(|v| v.capacity_bytes)
        .collect();
    assert_eq!(sizes, [IMAGE as i64]);
    d.unpublish(&id, &target).await.expect("unpublish");
    d.unstage(&id, &staging).await.expect("unstage");
    stage(&mut d, &id, &staging).await.expect("restage");
    assert!(capacity(&mut d, &[]).await > 0);
    create(&mut d, "pvc-after", IMAGE).await;
    assert_eq!(list_volumes(&mut d).await.expect("list"), 2);
    d.unstage(&id, &staging).await.expect("unstage");
}

// ---- row 2: a size past i64::MAX is OUT_OF_RANGE, nothing made ----

async fn huge_create_is_out_of_range_and_leaves_nothing(options: Options) {
    let mut d = TestDriver::start(options).await;
    let e = d
        .client
        .controller
        .create_volume(create_req("pvc-huge", i64::MAX as u64, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(d.volumes_on_disk().is_empty(), "{:?}", d.volumes_on_disk());
    assert_eq!(list_volumes(&mut d).await.expect("list"), 0);
}

#[tokio::test]
async fn row2_huge_create_subvolume() {
    huge_create_is_out_of_range_and_leaves_nothing(btrfs()).await;
}

#[tokio::test]
async fn row2_huge_create_image() {
    huge_create_is_out_of_range_and_leaves_nothing(Options::default()).await;
}

// ---- row 3: a staging path holds one volume ----

async fn a_staging_path_holds_one_volume(options: Options, size: u64) {
    let mut d = TestDriver::start(options).await;
    let one = create(&mut d, "pvc-cx1", size).await;
    let two = create(&mut d, "pvc-cx2", size).await;
    let staging = d.staging("shared");
    stage(&mut d, &one, &staging).await.expect("stage cx1");
    write_marker(&staging, "cx1");
    let e = stage(&mut d, &two, &staging).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains(&one), "names the holder: {e:?}");
    // cx2 published from cx1's staging path: refused, nothing mounted.
    let target = d.target("cx2");
    let e = publish(&mut d, &two, &staging, &target).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(!mounted(&target));
    // Unstaging cx2 there leaves cx1 alone.
    d.unstage(&two, &staging).await.expect("unstage cx2: OK");
    assert!(mounted(&staging));
    assert_eq!(marker(&staging).as_deref(), Some("cx1"));
    d.unstage(&one, &staging).await.expect("unstage cx1");
    assert!(!mounted(&staging));
}

#[tokio::test]
async fn row3_one_volume_per_staging_path_subvolume() {
    a_staging_path_holds_one_volume(btrfs(), 64 * MIB).await;
}

#[tokio::test]
async fn row3_one_volume_per_staging_path_image() {
    a_staging_path_holds_one_volume(Options::default(), IMAGE).await;
}

// ---- row 4: a target holds one volume; unpublish touches its own ----

async fn a_target_holds_one_volume(options: Options, size: u64) {
    let mut d = TestDriver::start(options).await;
    let a = create(&mut d, "pvc-a", size).await;
    let b = create(&mut d, "pvc-b", size).await;
    let (sa, ta) = (d.staging("a"), d.target("a"));
    let sb = d.staging("b");
    stage(&mut d, &a, &sa).await.expect("stage a");
    stage(&mut d, &b, &sb).await.expect("stage b");
    publish(&mut d, &a, &sa, &ta).await.expect("publish a");
    write_marker(&ta, "a");

    // B on A's target: ALREADY_EXISTS naming A; unpublish of B leaves A.
    let e = publish(&mut d, &b, &sb, &ta).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains(&a), "{e:?}");
    d.unpublish(&b, &ta).await.expect("unpublish b: OK");
    assert!(mounted(&ta));
    assert_eq!(marker(&ta).as_deref(), Some("a"));
    // Nor does B's unstage at A's staging path, nor stats or expand of B there.
    d.unstage(&b, &sa).await.expect("unstage b at a's path: OK");
    assert!(mounted(&sa));
    assert_eq!(code(stats(&mut d, &b, &ta).await), Code::NotFound);
    assert_eq!(
        code(node_expand(&mut d, &b, &ta, 2 * size).await),
        Code::NotFound
    );
    stats(&mut d, &a, &ta).await.expect("a's own stats");

    // A mount this driver did not make at a target.
    let foreign = d.target("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "foreign",
            &foreign.display().to_string(),
        ],
    );
    write_marker(&foreign, "theirs");
    let e = publish(&mut d, &b, &sb, &foreign).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    d.unpublish(&b, &foreign).await.expect("unpublish: OK");
    assert!(mounted(&foreign));
    assert_eq!(marker(&foreign).as_deref(), Some("theirs"));
    // And at a staging path.
    let e = stage(&mut d, &b, &foreign).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    d.unstage(&b, &foreign).await.expect("unstage: OK");
    assert!(mounted(&foreign));
    run("umount", &[&foreign.display().to_string()]);

    // Their own mounts still come down.
    d.unpublish(&a, &ta).await.expect("unpublish a");
    assert!(!mounted(&ta));
    d.unstage(&a, &sa).await.expect("unstage a");
    d.unstage(&b, &sb).await.expect("unstage b");
    assert!(!mounted(&sa) && !mounted(&sb));
}

#[tokio::test]
async fn row4_one_volume_per_target_image() {
    a_target_holds_one_volume(Options::default(), IMAGE).await;
}

#[tokio::test]
async fn row4_one_volume_per_target_subvolume() {
    a_target_holds_one_volume(btrfs(), 64 * MIB).await;
}

// ---- row 5: mount and block never serve one device at once ----

#[tokio::test]
async fn row5_a_mounted_volume_is_not_published_as_block() {
    let mut d = TestDriver::start(Options::default()).await;
    let mut req = create_req("pvc-both", IMAGE, &[]);
    req.volume_capabilities = vec![rw(), block_cap()];
    let id = d
        .client
        .controller
        .create_volume(req)
        .await
        .expect("create")
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let staging = d.staging("both");
    stage(&mut d, &id, &staging).await.expect("stage mount");
    let target = d.kubelet.join("pods/both/dev");
    let mut block = publish_req(&id, &staging, &target, false);
    block.volume_capability = Some(block_cap());
    let e = d.client.node.node_publish_volume(block).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(!mounted(&target));
    d.unstage(&id, &staging).await.expect("unstage");
}

// ---- row 6: the overcommit rule holds for expand, in both modes ----

async fn no_overcommit(options: Options, size: u64) {
    let mut d = TestDriver::start(options).await;
    let e = d
        .client
        .controller
        .create_volume(create_req("pvc-pib", 1 << 50, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(!e.message().contains("  "), "one space at a time: {e:?}");
    let id = create(&mut d, "pvc-small", size).await;
    let e = d.expand(&id, 200 * GIB).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let staging = d.staging("small");
    stage(&mut d, &id, &staging).await.expect("stage");
    let e = node_expand(&mut d, &id, &staging, 200 * GIB)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A growth that fits still works.
    d.expand(&id, size + 64 * MIB)
        .await
        .expect("expand within room");
    d.unstage(&id, &staging).await.expect("unstage");
}

#[tokio::test]
async fn row6_no_overcommit_on_expand_image() {
    no_overcommit(image_on_ext4_root(), IMAGE).await;
}

#[tokio::test]
async fn row6_no_overcommit_subvolume() {
    no_overcommit(btrfs(), 64 * MIB).await;
}

// ---- GetCapacity answers what CreateVolume accepts ----

async fn capacity_is_what_create_accepts(options: Options, params: &[(&str, &str)]) {
    let mut d = TestDriver::start(options).await;
    // Fill part of the root with plain data.
    let (written, _) = fill(&d.root, "filler", 700 * MIB);
    assert!(written >= 600 * MIB);
    let room = capacity(&mut d, params).await;
    assert!(room > 0 && room < 2 * GIB, "{room}");
    let e = d
        .client
        .controller
        .create_volume(create_req("pvc-over", room + MIB, params))
        .await
        .unwrap_err();
    assert!(is_resource_or_range(e.code()), "{e:?}");
    d.client
        .controller
        .create_volume(create_req("pvc-exact", room, params))
        .await
        .unwrap_or_else(|e| panic!("create of GetCapacity's {room}: {e:?}"));
}

#[tokio::test]
async fn get_capacity_is_what_create_accepts_image() {
    capacity_is_what_create_accepts(image_on_ext4_root(), &[]).await;
}

#[tokio::test]
async fn get_capacity_is_what_create_accepts_subvolume() {
    capacity_is_what_create_accepts(btrfs(), &[]).await;
}

#[tokio::test]
async fn get_capacity_is_zero_for_parameters_create_refuses() {
    let mut d = TestDriver::start(image_on_ext4_root()).await;
    assert_eq!(capacity(&mut d, &[("mode", "subvolume")]).await, 0);
    // A filesystem create refuses is refused here too.
    let req = GetCapacityRequest {
        parameters: [("fsType".to_string(), "ntfs".to_string())].into(),
        ..Default::default()
    };
    let e = d.client.controller.get_capacity(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A capability the plugin does not serve: no room for it.
    let req = GetCapacityRequest {
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        ..Default::default()
    };
    let got = d
        .client
        .controller
        .get_capacity(req)
        .await
        .expect("capacity");
    assert_eq!(got.into_inner().available_capacity, 0);
    assert!(capacity(&mut d, &[]).await > 0);
}

// ---- row 7: in use means in use ----

async fn delete_of_a_volume_in_use(options: Options, size: u64) {
    let mut d = TestDriver::start(options).await;
    let id = create(&mut d, "pvc-used", size).await;
    let (staging, target) = (d.staging("used"), d.target("used"));
    stage(&mut d, &id, &staging).await.expect("stage");
    assert_eq!(code(d.delete(&id).await), Code::FailedPrecondition);
    publish(&mut d, &id, &staging, &target)
        .await
        .expect("publish");
    write_marker(&target, "kept");
    assert_eq!(code(d.delete(&id).await), Code::FailedPrecondition);
    assert_eq!(marker(&target).as_deref(), Some("kept"));
    // After a restart too: the node's records are durable.
    d.crash_and_restart().await;
    assert_eq!(code(d.delete(&id).await), Code::FailedPrecondition);
    d.unpublish(&id, &target).await.expect("unpublish");
    assert_eq!(code(d.delete(&id).await), Code::FailedPrecondition);
    d.unstage(&id, &staging).await.expect("unstage");
    d.delete(&id).await.expect("delete once unused");
    assert!(d.volumes_on_disk().is_empty());
}

#[tokio::test]
async fn row7_delete_in_use_image() {
    delete_of_a_volume_in_use(Options::default(), IMAGE).await;
}

#[tokio::test]
async fn row7_delete_in_use_subvolume() {
    delete_of_a_volume_in_use(btrfs(), 64 * MIB).await;
}

// ---- a deleted subvolume leaves no qgroup behind ----

fn qgroups(root: &Path) -> Vec<String> {
    run(
        "btrfs",
        &["qgroup", "show", "--raw", &root.display().to_string()],
    )
    .lines()
    .filter_map(|l| l.split_whitespace().next())
    .filter(|q| q.starts_with("0/"))
    .map(str::to_string)
    .collect()
}

/// The qgroups go after the deletes answer (the host reaps them in the
/// background), but they go.
#[tokio::test]
async fn deleted_subvolumes_leave_no_qgroup() {
    let mut d = TestDriver::start(btrfs()).await;
    let before = qgroups(&d.root);
    let made = create(&mut d, "pvc-q0", 64 * MIB).await;
    d.delete(&made).await.expect("delete");
    for n in 1..=3 {
        let id = create(&mut d, &format!("pvc-q{n}"), 64 * MIB).await;
        let staging = d.staging(&format!("q{n}"));
        stage(&mut d, &id, &staging).await.expect("stage");
        fill(&staging, "data", 8 * MIB);
        d.unstage(&id, &staging).await.expect("unstage");
        d.delete(&id).await.expect("delete");
    }
    let started = std::time::Instant::now();
    while qgroups(&d.root) != before && started.elapsed() < std::time::Duration::from_secs(60) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(qgroups(&d.root), before);
}
