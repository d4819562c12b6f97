//! What a power cut leaves of local-dir's volumes and snapshots: every
//! create and delete that answered. The root is a loop-mounted filesystem;
//! the moment a call answers, its backing file is copied — what the loop
//! device has received is what a disk would hold — and the copy is mounted
//! on its own (the journal replayed) and read.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use wasmcsi::proto::*;

/// The `name` and `state` of each record under `dir` (`volumes` or
/// `snapshots`); a directory without a readable record shows as such.
fn records(root: &Path, dir: &str) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| {
            let meta = std::fs::read(e.path().join("meta.json")).unwrap_or_default();
            match serde_json::from_slice::<serde_json::Value>(&meta) {
                Ok(v) => (
                    v["name"].as_str().unwrap_or("?").to_string(),
                    v["state"].as_str().unwrap_or("?").to_string(),
                ),
                Err(_) => (
                    e.file_name().to_string_lossy().into_owned(),
                    "no readable record".into(),
                ),
            }
        })
        .collect()
}

/// What a disk would hold if the power were cut now: a copy of the root's
/// backing image.
fn power_cut(d: &TestDriver, image: &str, into: &Path, tag: &str) -> std::path::PathBuf {
    let copy = into.join(format!("{tag}.img"));
    std::fs::copy(d.base.path().join(image), &copy).expect("copying the root's disk");
    copy
}

/// The volume and snapshot records on a copied disk, mounted alone (two
/// btrfs with one fsid do not mount together, so after the driver's root
/// is gone).
fn read_back(copy: &Path) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mnt = copy.with_extension("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(copy)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mounting the copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = (records(&mnt, "volumes"), records(&mnt, "snapshots"));
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    found
}

async fn create(d: &mut TestDriver, name: &str, params: &[(&str, &str)]) -> String {
    d.client
        .controller
        .create_volume(create_req(name, 64 * MIB, params))
        .await
        .expect("create")
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// Two volumes and two snapshots made, one of each deleted. A power cut
/// as the last delete answers must leave exactly the other volume; one as
/// the last snapshot is made, that snapshot too.
async fn answered_calls_survive(options: Options, image: &str, params: &[(&str, &str)]) {
    let copies = tempfile::tempdir().unwrap();
    let mut d = TestDriver::start(options).await;
    let keep = create(&mut d, "pvc-keep", params).await;
    let gone_snapshot = d
        .snapshot("snap-gone", &keep)
        .await
        .expect("snapshot")
        .snapshot_id;
    d.client
        .controller
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: gone_snapshot,
            ..Default::default()
        })
        .await
        .expect("delete snapshot");
    let gone = create(&mut d, "pvc-gone", params).await;
    d.delete(&gone).await.expect("delete");
    let after_delete = power_cut(&d, image, copies.path(), "after-delete");
    d.snapshot("snap-keep", &keep).await.expect("snapshot");
    let after_snapshot = power_cut(&d, image, copies.path(), "after-snapshot");
    drop(d); // stops the driver, unmounts its root

    let ready = |name: &str| BTreeMap::from([(name.to_string(), "ready".to_string())]);
    let (volumes, snapshots) = read_back(&after_delete);
    assert_eq!(volumes, ready("pvc-keep"), "volumes, cut after the delete");
    assert_eq!(
        snapshots,
        BTreeMap::new(),
        "snapshots, cut after the delete"
    );
    let (volumes, snapshots) = read_back(&after_snapshot);
    assert_eq!(
        volumes,
        ready("pvc-keep"),
        "volumes, cut after the snapshot"
    );
    assert_eq!(
        snapshots,
        ready("snap-keep"),
        "snapshots, cut after the snapshot"
    );
    wasmcsi_testkit::teardown(copies.path());
}

/// How many creates and deletes run at once in the concurrent case: more
/// than a plugin runs at once (`maxConcurrentCalls`, 16), so that calls
/// queue and syncs are shared.
const CONCURRENT: usize = 24;

/// `CONCURRENT` creates and `CONCURRENT` deletes (of volumes made before)
/// answered together; a power cut as the last one answers must leave every
/// created volume and none of the deleted ones.
async fn concurrent_answers_survive(options: Options, image: &str, params: &[(&str, &str)]) {
    let copies = tempfile::tempdir().unwrap();
    let mut d = TestDriver::start(options).await;
    let mut doomed = Vec::new();
    for n in 0..CONCURRENT {
        doomed.push(create(&mut d, &format!("pvc-doomed-{n}"), params).await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for (n, volume_id) in doomed.into_iter().enumerate() {
        let mut client = d.client.clone();
        let req = create_req(&format!("pvc-new-{n}"), 64 * MIB, params);
        calls.spawn(async move { client.controller.create_volume(req).await.map(drop) });
        let mut client = d.client.clone();
        calls.spawn(async move {
            client
                .controller
                .delete_volume(DeleteVolumeRequest {
                    volume_id,
                    ..Default::default()
                })
                .await
                .map(drop)
        });
    }
    while let Some(answer) = calls.join_next().await {
        answer.unwrap().expect("every create and delete answers");
    }
    let cut = power_cut(&d, image, copies.path(), "concurrent");
    drop(d);

    let (volumes, _) = read_back(&cut);
    let expected: BTreeMap<String, String> = (0..CONCURRENT)
        .map(|n| (format!("pvc-new-{n}"), "ready".to_string()))
        .collect();
    assert_eq!(volumes, expected, "volumes, cut after the concurrent calls");
    wasmcsi_testkit::teardown(copies.path());
}

#[tokio::test]
async fn image_volumes_on_ext4_survive_a_power_cut_as_answered() {
    let options = Options {
        ext4_root: true,
        ..Default::default()
    };
    answered_calls_survive(options, "ext4.img", &[("mode", "image")]).await;
}

#[tokio::test]
async fn subvolumes_on_btrfs_survive_a_power_cut_as_answered() {
    let options = Options {
        btrfs_root: true,
        ..Default::default()
    };
    answered_calls_survive(options, "btrfs.img", &[("mode", "subvolume")]).await;
}

#[tokio::test]
async fn concurrent_image_volumes_on_ext4_survive_a_power_cut_as_answered() {
    let options = Options {
        ext4_root: true,
        // 48 sparse images of 300 MiB (XFS's least) on a 2 GiB root: only
        // what they hold is used, far less than what they may grow to.
        settings_extra: ", overcommitRatio: 8",
        ..Default::default()
    };
    concurrent_answers_survive(options, "ext4.img", &[("mode", "image")]).await;
}

#[tokio::test]
async fn concurrent_subvolumes_on_btrfs_survive_a_power_cut_as_answered() {
    let options = Options {
        btrfs_root: true,
        // 48 limits of 64 MiB on a 2 GiB root while the deletes run: the
        // volumes stay empty, so the limits may add up past the room.
        settings_extra: ", overcommitRatio: 8",
        ..Default::default()
    };
    concurrent_answers_survive(options, "btrfs.img", &[("mode", "subvolume")]).await;
}
