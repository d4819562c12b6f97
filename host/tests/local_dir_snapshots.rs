//! local-dir snapshots, restores and clones end to end: the real binary
//! over gRPC, real loop devices, XFS, ext4 and btrfs. A restored or cloned
//! volume must hold the data of its source at that moment, have its own
//! size enforced by the kernel, and be mountable next to its source.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tonic::Code;
use wasmcsi::proto::*;

fn snapshot_source(id: &str) -> Option<VolumeContentSource> {
    Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    })
}

fn volume_source(id: &str) -> Option<VolumeContentSource> {
    Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: id.into(),
            },
        )),
    })
}

async fn create(
    d: &mut TestDriver,
    name: &str,
    bytes: u64,
    params: &[(&str, &str)],
    source: Option<VolumeContentSource>,
) -> Result<Volume, tonic::Status> {
    let mut req = create_req(name, bytes, params);
    req.volume_content_source = source;
    d.client
        .controller
        .create_volume(req)
        .await
        .map(|r| r.into_inner().volume.unwrap())
}

async fn list(
    d: &mut TestDriver,
    snapshot_id: &str,
    source: &str,
    token: &str,
    max: i32,
) -> ListSnapshotsResponse {
    d.client
        .controller
        .list_snapshots(ListSnapshotsRequest {
            max_entries: max,
            starting_token: token.into(),
            source_volume_id: source.into(),
            snapshot_id: snapshot_id.into(),
            ..Default::default()
        })
        .await
        .expect("list snapshots")
        .into_inner()
}

fn listed(r: &ListSnapshotsResponse) -> Vec<String> {
    r.entries
        .iter()
        .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
        .collect()
}

/// A published volume: where it is staged and mounted.
struct Published {
    id: String,
    staging: PathBuf,
    target: PathBuf,
}

async fn publish(d: &mut TestDriver, id: &str, name: &str) -> Published {
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
    assert!(mounted(&target));
    Published {
        id: id.into(),
        staging,
        target,
    }
}

async fn remove(d: &mut TestDriver, p: Published) {
    d.unpublish(&p.id, &p.target).await.expect("unpublish");
    d.unstage(&p.id, &p.staging).await.expect("unstage");
    d.delete(&p.id).await.expect("delete");
}

async fn healthy(d: &mut TestDriver, p: &Published) -> bool {
    let stats = d
        .client
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: p.id.clone(),
            volume_path: p.target.display().to_string(),
            staging_target_path: p.staging.display().to_string(),
        })
        .await
        .expect("stats")
        .into_inner();
    let condition = stats.volume_condition.expect("condition");
    !condition.abnormal
}

/// Fills a volume: the kernel must refuse writes at its size, and a grown
/// copy must take more than its source's size.
fn assert_bounded(target: &Path, capacity: u64, more_than: u64) {
    let (written, err) = fill(target, "fill", 2 * capacity);
    let err = err.expect("writing past the capacity must fail");
    assert!(
        matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)),
        "unexpected error {err:?}"
    );
    assert!(written <= capacity, "wrote {written} > capacity {capacity}");
    assert!(
        written > more_than,
        "wrote only {written}, not more than {more_than}"
    );
}

fn read(target: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(target.join(file)).ok()
}

/// Snapshot a published volume, write more to it, restore the snapshot
/// larger next to it: the restore has the snapshot's data and its own
/// enforced size. Then list, get and delete the snapshot.
async fn snapshot_and_restore(d: &mut TestDriver, params: &[(&str, &str)], size: u64, grown: u64) {
    let source = create(d, "pvc-src", size, params, None)
        .await
        .expect("create the source");
    let size = source.capacity_bytes as u64;
    let src = publish(d, &source.volume_id, "src").await;
    std::fs::write(src.target.join("a"), "before").unwrap();

    let snap = d
        .snapshot("snap-1", &source.volume_id)
        .await
        .unwrap_or_else(|s| panic!("snapshot: {s:?}\n{}", d.logs()));
    assert!(snap.ready_to_use);
    assert_eq!(snap.source_volume_id, source.volume_id);
    assert_eq!(snap.size_bytes as u64, size);
    assert!(
        snap.snapshot_id.starts_with("local-dir:"),
        "{}",
        snap.snapshot_id
    );
    assert!(snap.creation_time.is_some());
    // Idempotent by name; the name is taken for another source.
    let again = d.snapshot("snap-1", &source.volume_id).await.unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    assert!(healthy(d, &src).await, "the source thawed and well");

    std::fs::write(src.target.join("a"), "after").unwrap();
    std::fs::write(src.target.join("b"), "only in the source").unwrap();

    let restored = create(
        d,
        "pvc-restored",
        grown,
        params,
        snapshot_source(&snap.snapshot_id),
    )
    .await
    .unwrap_or_else(|s| panic!("restore: {s:?}\n{}", d.logs()));
    assert!(restored.capacity_bytes as u64 >= grown);
    let from = restored
        .content_source
        .as_ref()
        .and_then(|c| c.r#type.as_ref());
    assert!(
        matches!(from, Some(volume_content_source::Type::Snapshot(s)) if s.snapshot_id == snap.snapshot_id),
        "{from:?}"
    );
    // Mounted next to its source (an XFS copy needs its own UUID for that).
    let rst = publish(d, &restored.volume_id, "restored").await;
    assert_eq!(read(&rst.target, "a").as_deref(), Some("before"));
    assert_eq!(read(&rst.target, "b"), None);
    assert_eq!(read(&src.target, "a").as_deref(), Some("after"));
    assert!(healthy(d, &rst).await);
    assert_bounded(&rst.target, restored.capacity_bytes as u64, size);

    // Below the snapshot's size cannot be met.
    let mut small = create_req("pvc-small", MIB, params);
    small.capacity_range = Some(CapacityRange {
        required_bytes: MIB as i64,
        limit_bytes: (size - MIB) as i64,
    });
    small.volume_content_source = snapshot_source(&snap.snapshot_id);
    assert_eq!(
        code(d.client.controller.create_volume(small).await),
        Code::OutOfRange
    );

    // Get, list with filters and pages.
    let snap2 = d.snapshot("snap-2", &restored.volume_id).await.unwrap();
    let got = d
        .client
        .controller
        .get_snapshot(GetSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("get snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(
        (got.source_volume_id.as_str(), got.size_bytes),
        (source.volume_id.as_str(), snap.size_bytes)
    );
    let all = list(d, "", "", "", 0).await;
    assert_eq!(
        listed(&all),
        [snap.snapshot_id.as_str(), snap2.snapshot_id.as_str()]
    );
    let of_restored = list(d, "", &restored.volume_id, "", 0).await;
    assert_eq!(listed(&of_restored), [snap2.snapshot_id.as_str()]);
    let by_id = list(d, &snap.snapshot_id, "", "", 0).await;
    assert_eq!(listed(&by_id), [snap.snapshot_id.as_str()]);
    let page1 = list(d, "", "", "", 1).await;
    assert_eq!(listed(&page1), [snap.snapshot_id.as_str()]);
    assert!(!page1.next_token.is_empty());
    let page2 = list(d, "", "", &page1.next_token, 1).await;
    assert_eq!(listed(&page2), [snap2.snapshot_id.as_str()]);
    assert!(page2.next_token.is_empty());

    // A snapshot in use by nothing (a restore is a copy) goes.
    for s in [&snap, &snap2] {
        d.client
            .controller
            .delete_snapshot(DeleteSnapshotRequest {
                snapshot_id: s.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete snapshot");
    }
    assert!(list(d, "", "", "", 0).await.entries.is_empty());
    assert_eq!(
        code(
            d.client
                .controller
                .get_snapshot(GetSnapshotRequest {
                    snapshot_id: snap.snapshot_id.clone(),
                    ..Default::default()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(read(&rst.target, "a").as_deref(), Some("before"));

    remove(d, rst).await;
    remove(d, src).await;
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());
    assert_eq!(snapshots_on_disk(d), Vec::<String>::new());
    // Only the plugin's own images (a btrfs root is itself on a loop device).
    let leaked = loops_under(&d.root);
    assert!(leaked.is_empty(), "{leaked:?}");
}

fn snapshots_on_disk(d: &TestDriver) -> Vec<String> {
    match std::fs::read_dir(d.root.join("snapshots")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

#[tokio::test]
async fn image_xfs_snapshot_restore_sparse_copy() {
    let mut d = TestDriver::start(Options::default()).await;
    snapshot_and_restore(&mut d, &[], 300 * MIB, 400 * MIB).await;
    // Whatever the test machine's root is, the plugin says how it copied.
    assert!(d.logs().contains("image copied"), "{}", d.logs());
}

#[tokio::test]
async fn image_ext4_snapshot_restore() {
    let mut d = TestDriver::start(Options::default()).await;
    snapshot_and_restore(&mut d, &[("fsType", "ext4")], 64 * MIB, 96 * MIB).await;
}

#[tokio::test]
async fn image_xfs_snapshot_restore_reflinked_on_btrfs() {
    let mut d = TestDriver::start(Options {
        btrfs_root: true,
        ..Default::default()
    })
    .await;
    snapshot_and_restore(&mut d, &[], 300 * MIB, 400 * MIB).await;
    // btrfs shares the blocks: no data was copied.
    // The plugin's fields, quoted inside the line's `fields="…"`.
    assert!(d.logs().contains(r#"method=\"reflink\""#), "{}", d.logs());
    assert!(!d.logs().contains(r#"method=\"sparse\""#));
}

#[tokio::test]
async fn subvolume_snapshot_restore() {
    let mut d = TestDriver::start(Options {
        btrfs_root: true,
        ..Default::default()
    })
    .await;
    snapshot_and_restore(&mut d, &[("mode", "subvolume")], 64 * MIB, 96 * MIB).await;
}

/// Image mode clones a volume that is mounted and in use: the copy is
/// taken frozen, gets its own UUID, and is mounted next to its source.
#[tokio::test]
async fn image_clone_of_a_mounted_volume() {
    let mut d = TestDriver::start(Options::default()).await;
    let source = create(&mut d, "pvc-src", 300 * MIB, &[], None)
        .await
        .expect("create");
    let src = publish(&mut d, &source.volume_id, "src").await;
    std::fs::write(src.target.join("hello"), "written before the clone").unwrap();
    let clone = create(
        &mut d,
        "pvc-clone",
        400 * MIB,
        &[],
        volume_source(&source.volume_id),
    )
    .await
    .unwrap_or_else(|s| panic!("clone: {s:?}\n{}", d.logs()));
    assert!(clone.capacity_bytes as u64 >= 400 * MIB);
    std::fs::write(src.target.join("later"), "after the clone").unwrap();
    let cln = publish(&mut d, &clone.volume_id, "clone").await;
    assert_eq!(
        read(&cln.target, "hello").as_deref(),
        Some("written before the clone")
    );
    assert_eq!(read(&cln.target, "later"), None);
    assert!(healthy(&mut d, &src).await && healthy(&mut d, &cln).await);
    assert_bounded(&cln.target, clone.capacity_bytes as u64, 300 * MIB);
    // The source is untouched by the clone's writes.
    assert!(!src.target.join("fill").exists());
    remove(&mut d, cln).await;
    remove(&mut d, src).await;
    assert!(d.loop_devices().is_empty());
}

/// Image creates stay within the root's room, and GetCapacity says so
/// with the same rule; its minimum is the XFS image's.
#[tokio::test]
async fn image_capacity_is_honest() {
    let mut d = TestDriver::start(Options::default()).await;
    let capacity = |d: &mut TestDriver| {
        let mut c = d.client.controller.clone();
        async move {
            c.get_capacity(GetCapacityRequest::default())
                .await
                .expect("get capacity")
                .into_inner()
        }
    };
    let free = |d: &TestDriver| {
        let statfs = nix::sys::statvfs::statvfs(&d.root).unwrap();
        statfs.blocks_available() * statfs.fragment_size()
    };
    // The other tests of this file write and delete on the same disk while
    // this runs: compare with the room on either side of the call, give or
    // take what one of them moves at once.
    let free_before = free(&d);
    let before = capacity(&mut d).await;
    let available = free_before.max(free(&d));
    assert_eq!(before.minimum_volume_size, Some(300 * MIB as i64));
    assert!(
        before.available_capacity as u64 <= available + 512 * MIB,
        "GetCapacity says {} bytes, the disk has {available}",
        before.available_capacity
    );
    let e = create(&mut d, "pvc-huge", available + GIB, &[], None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());
    let vol = create(&mut d, "pvc-1", GIB, &[], None)
        .await
        .expect("create");
    let after = capacity(&mut d).await;
    // Other tests share the disk, so allow for their writes meanwhile.
    let claimed = before.available_capacity - after.available_capacity;
    assert!(
        claimed as u64 >= GIB * 9 / 10,
        "a sparse 1 GiB image claims ~1 GiB of the room, not {claimed}"
    );
    d.delete(&vol.volume_id).await.unwrap();
}

#[tokio::test]
async fn controller_advertises_clones_and_snapshots() {
    use controller_service_capability::{rpc::Type, Type as Cap};
    let mut d = TestDriver::start(Options::default()).await;
    let caps = d
        .client
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    let kinds: Vec<i32> = caps
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(Cap::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    for want in [
        Type::CloneVolume,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::GetSnapshot,
    ] {
        assert!(
            kinds.contains(&(want as i32)),
            "{want:?} missing: {kinds:?}"
        );
    }
}

/// The image of a volume, from its CSI id.
fn image_of(d: &TestDriver, volume_id: &str) -> PathBuf {
    let local = volume_id.split_once(':').expect("plugin:id").1;
    d.root.join("volumes").join(local).join("disk.img")
}

/// An image volume gets its filesystem at its first stage: create leaves
/// a sparse image of the volume's size and runs no mkfs. Before that first
/// stage it can be expanded, snapshotted, restored and cloned; each copy,
/// staged later, gets a filesystem of its own size, enforced by the kernel.
/// What an interrupted format left in an image is wiped before mkfs.
async fn first_stage_formats(d: &mut TestDriver, params: &[(&str, &str)], size: u64, grown: u64) {
    let fs = if params.contains(&("fsType", "ext4")) {
        "ext4"
    } else {
        "xfs"
    };
    let source = create(d, "pvc-fresh", size, params, None)
        .await
        .expect("create");
    let image = image_of(d, &source.volume_id);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), source.capacity_bytes as u64);
    assert_eq!(meta.blocks(), 0, "no filesystem written at create");

    // Expanded while never staged: the image just grows.
    let id = source.volume_id.clone();
    let nowhere = d.staging("fresh-unstaged");
    std::fs::create_dir_all(&nowhere).unwrap();
    let expanded = d
        .client
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: nowhere.display().to_string(),
            capacity_range: range(grown),
            volume_capability: Some(rw()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("node expand: {s:?}\n{}", d.logs()))
        .into_inner()
        .capacity_bytes as u64;
    assert!(expanded >= grown);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), expanded);

    // Copies of it, unformatted as it is.
    let snap = d.snapshot("snap-fresh", &id).await.expect("snapshot");
    let restored = create(
        d,
        "pvc-fresh-restored",
        grown,
        params,
        snapshot_source(&snap.snapshot_id),
    )
    .await
    .unwrap_or_else(|s| panic!("restore: {s:?}\n{}", d.logs()));
    let clone = create(d, "pvc-fresh-clone", grown, params, volume_source(&id))
        .await
        .unwrap_or_else(|s| panic!("clone: {s:?}\n{}", d.logs()));

    // A whole filesystem in the clone's image, as an interrupted format
    // could leave one (mkfs.xfs would refuse to overwrite it): the first
    // stage starts from a zeroed image all the same.
    let planted = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(image_of(d, &clone.volume_id))
        .status()
        .expect("mkfs.ext4");
    assert!(planted.success());

    let mut published = Vec::new();
    for (vol, name) in [
        (&source, "fresh"),
        (&restored, "restored"),
        (&clone, "clone"),
    ] {
        let p = publish(d, &vol.volume_id, name).await;
        let mounted_fs = nix::sys::statfs::statfs(&p.target)
            .unwrap()
            .filesystem_type();
        let want = if fs == "xfs" {
            nix::sys::statfs::XFS_SUPER_MAGIC
        } else {
            nix::sys::statfs::EXT4_SUPER_MAGIC
        };
        assert_eq!(mounted_fs, want, "{name}");
        assert!(healthy(d, &p).await, "{name}");
        assert_bounded(&p.target, grown, size);
        published.push(p);
    }
    // Staged again (a retry, or after a restart): the same filesystem.
    let first = published.remove(0);
    std::fs::write(first.target.join("kept"), "yes").unwrap();
    d.unpublish(&first.id, &first.target)
        .await
        .expect("unpublish");
    d.unstage(&first.id, &first.staging).await.expect("unstage");
    let again = publish(d, &first.id, "fresh").await;
    d.client
        .node
        .node_stage_volume(stage_req(&again.id, &again.staging))
        .await
        .expect("stage retried");
    assert_eq!(read(&again.target, "kept").as_deref(), Some("yes"));
    published.push(again);

    for p in published {
        remove(d, p).await;
    }
    d.client
        .controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete snapshot");
    assert_eq!(d.volumes_on_disk(), Vec::<String>::new());
    assert!(d.loop_devices().is_empty(), "{:?}", d.loop_devices());
}

#[tokio::test]
async fn image_xfs_never_staged_formats_at_first_stage() {
    let mut d = TestDriver::start(Options::default()).await;
    first_stage_formats(&mut d, &[], 300 * MIB, 400 * MIB).await;
}

#[tokio::test]
async fn image_ext4_never_staged_formats_at_first_stage() {
    let mut d = TestDriver::start(Options::default()).await;
    first_stage_formats(&mut d, &[("fsType", "ext4")], 64 * MIB, 96 * MIB).await;
}
