//! CSI inline ephemeral volumes over the real binary, as kubelet asks for
//! them: NodePublishVolume with `csi.storage.k8s.io/ephemeral: "true"`, a
//! volume id of kubelet's own (`csi-<hex>`), the pod's volumeAttributes
//! (`size`) and no stage; NodeUnpublishVolume with that id and the target.
//! Per plugin (local-dir image and subvolume mode, tmpfs-py): the volume is
//! made at publish, holds its size (ENOSPC/EDQUOT past it), and is gone
//! after unpublish, also when the driver was killed in between; routing
//! goes only to the plugin whose config says `inlineVolumes: true`.
//! Prints the publish and unpublish times (`--nocapture`).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use wasmcsi::proto::*;

/// An id shaped like kubelet's (`csi-` and a sha256 in hex).
fn kubelet_id(seed: char) -> String {
    format!("csi-{}", seed.to_string().repeat(64))
}

fn inline_req(id: &str, target: &Path, attrs: &[(&str, &str)]) -> NodePublishVolumeRequest {
    let mut context: HashMap<String, String> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    context.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    context.insert("csi.storage.k8s.io/pod.name".into(), "scratch".into());
    NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(rw()),
        volume_context: context,
        ..Default::default()
    }
}

async fn publish(
    d: &mut TestDriver,
    req: NodePublishVolumeRequest,
) -> Result<Duration, tonic::Status> {
    let t = Instant::now();
    d.client.node.node_publish_volume(req).await?;
    Ok(t.elapsed())
}

async fn unpublish(d: &mut TestDriver, id: &str, target: &Path) -> Duration {
    let t = Instant::now();
    d.unpublish(id, target)
        .await
        .unwrap_or_else(|e| panic!("unpublish {id}: {e}\n{}", d.logs()));
    t.elapsed()
}

fn report(what: &str, publish: Duration, unpublish: Duration) {
    let _ = writeln!(
        std::io::stderr(),
        "inline {what}: publish {} ms, unpublish {} ms",
        publish.as_millis(),
        unpublish.as_millis()
    );
}

/// Fills the volume at `target` until the kernel refuses; the bytes it took.
fn fill_until_refused(target: &Path, size: u64) -> u64 {
    let (written, error) = fill(target, "fill", 2 * size);
    let error = error.unwrap_or_else(|| panic!("wrote {written} bytes into a {size}-byte volume"));
    let errno = error.raw_os_error();
    assert!(
        errno == Some(ENOSPC) || errno == Some(EDQUOT),
        "the write past the size failed with {error}, not ENOSPC/EDQUOT"
    );
    assert!(written <= size, "{written} bytes written into {size}");
    written
}

/// Linux errnos: no space (a filesystem full), quota exceeded (a qgroup).
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// A local-dir driver that takes inline volumes (`mode`: image or subvolume).
async fn local_dir(mode: &'static str) -> TestDriver {
    TestDriver::start(Options {
        btrfs_root: mode == "subvolume",
        mode,
        plugin_extra: "    inlineVolumes: true\n".into(),
        ..Default::default()
    })
    .await
}

async fn local_dir_lifecycle(mode: &'static str, size: &str, bytes: u64) {
    let mut d = local_dir(mode).await;
    // Subvolume mode's root is itself a loop-mounted btrfs of the test.
    let loops = d.loop_devices();
    let id = kubelet_id('a');
    let target = d.target("inline");
    let req = inline_req(&id, &target, &[("size", size)]);
    let took = publish(&mut d, req.clone())
        .await
        .unwrap_or_else(|e| panic!("publish: {e}\n{}", d.logs()));
    assert!(mounted(&target), "nothing mounted at the target");
    assert_eq!(d.volumes_on_disk().len(), 1, "one volume under the root");
    // kubelet retries a publish whose answer it missed.
    publish(&mut d, req).await.expect("a repeated publish");
    assert_eq!(d.volumes_on_disk().len(), 1);

    let stats = d
        .client
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"))
        .into_inner();
    let total = stats.usage[0].total as u64;
    assert!(
        total <= bytes && total > bytes / 2,
        "stats total {total} for {bytes}"
    );

    let written = fill_until_refused(&target, bytes);
    assert!(written > bytes / 2, "only {written} of {bytes} bytes fit");

    let gone = unpublish(&mut d, &id, &target).await;
    assert!(!mounted(&target), "still mounted");
    assert!(
        d.volumes_on_disk().is_empty(),
        "left: {:?}",
        d.volumes_on_disk()
    );
    assert_eq!(d.loop_devices(), loops, "loop devices left");
    // And again: kubelet retries until it hears success.
    unpublish(&mut d, &id, &target).await;
    report(&format!("local-dir {mode} {size}"), took, gone);
}

#[tokio::test]
async fn local_dir_image_inline_volume_lives_and_dies_with_the_pod() {
    local_dir_lifecycle("image", "320Mi", 320 * MIB).await;
}

#[tokio::test]
async fn local_dir_subvolume_inline_volume_lives_and_dies_with_the_pod() {
    local_dir_lifecycle("subvolume", "64Mi", 64 * MIB).await;
}

#[tokio::test]
async fn local_dir_inline_volume_is_removed_after_a_crash() {
    for mode in ["image", "subvolume"] {
        let mut d = local_dir(mode).await;
        let loops = d.loop_devices();
        let id = kubelet_id('b');
        let target = d.target("crash");
        publish(&mut d, inline_req(&id, &target, &[("size", "320Mi")]))
            .await
            .unwrap_or_else(|e| panic!("{mode}: publish: {e}\n{}", d.logs()));
        d.crash_and_restart().await;
        assert_eq!(
            d.volumes_on_disk().len(),
            1,
            "{mode}: the volume outlives the driver"
        );
        unpublish(&mut d, &id, &target).await;
        assert!(!mounted(&target), "{mode}: still mounted");
        assert!(
            d.volumes_on_disk().is_empty(),
            "{mode}: left {:?}",
            d.volumes_on_disk()
        );
        assert_eq!(d.loop_devices(), loops, "{mode}: loop devices left");
    }
}

#[tokio::test]
async fn a_failed_inline_publish_leaves_nothing() {
    let mut d = local_dir("image").await;
    let target = d.target("bad");
    for (attrs, why) in [
        (&[("size", "lots")][..], "size not a quantity"),
        (&[("size", "100Ti")], "above the room"),
        (
            &[("size", "320Mi"), ("colour", "blue")],
            "unknown attribute",
        ),
        (
            &[("size", "320Mi"), ("plugin", "tmpfs")],
            "another plugin named",
        ),
    ] {
        let got = publish(&mut d, inline_req(&kubelet_id('c'), &target, attrs)).await;
        assert!(got.is_err(), "{why}: published");
        assert!(
            d.volumes_on_disk().is_empty(),
            "{why}: left {:?}",
            d.volumes_on_disk()
        );
        assert!(!mounted(&target), "{why}: mounted");
    }
    // Not kubelet's id shape: refused before the plugin.
    let got = publish(&mut d, inline_req("local-dir:pvc-1", &target, &[])).await;
    assert_eq!(code(got), Code::InvalidArgument);
}

#[tokio::test]
async fn only_a_plugin_that_allows_them_gets_inline_volumes() {
    let mut d = TestDriver::start(Options::default()).await;
    let target = d.target("refused");
    let got = publish(
        &mut d,
        inline_req(&kubelet_id('d'), &target, &[("size", "320Mi")]),
    )
    .await;
    let status = got.expect_err("published without inlineVolumes");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("inlineVolumes"),
        "{}",
        status.message()
    );
    assert!(d.volumes_on_disk().is_empty());
    // An unknown kubelet id is not a volume of this driver.
    let got = d
        .client
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: kubelet_id('d'),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(got), Code::NotFound);
}

// ---- tmpfs-py ----

/// The Python plugin as `make plugin-py` built it; `None` (skip, loudly)
/// when it is not built, a failure in CI.
fn tmpfs_py_wasm() -> Option<PathBuf> {
    let wasm =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/tmpfs_py.wasm");
    if wasm.exists() {
        return Some(wasm);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true: {} must be built (make plugin-py)",
        wasm.display()
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPING the tmpfs-py inline tests: {} is not built (make plugin-py)\n",
        wasm.display()
    );
    None
}

#[tokio::test]
async fn tmpfs_py_inline_volume_lives_and_dies_with_the_pod() {
    let Some(wasm) = tmpfs_py_wasm() else {
        return;
    };
    let records = tempfile::tempdir().unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tmpfs-py-cache");
    // local-dir stays loaded without inlineVolumes: the routing has to pick
    // tmpfs by its config, not by being alone.
    let extra = format!(
        r#"  - name: tmpfs
    path: {wasm}
    inlineVolumes: true
    settings: {{ maxVolumeBytes: 256Mi }}
    limits: {{ memoryBytes: 33554432, callTimeoutSeconds: 30 }}
    capabilities:
      fs: {{ root: "{records}" }}
      mount: {{ types: [tmpfs], targetPrefixes: ["${{TEST_KUBELET}}"] }}
      log: {{}}
runtime: {{ cacheDir: "{cache}" }}
"#,
        wasm = wasm.display(),
        records = records.path().display(),
        cache = cache.display(),
    );
    let mut d = TestDriver::start(Options {
        plugin_extra: extra,
        ..Default::default()
    })
    .await;
    let id = kubelet_id('e');
    let target = d.target("tmpfs");
    let req = inline_req(&id, &target, &[("size", "16Mi"), ("plugin", "tmpfs")]);
    let took = publish(&mut d, req.clone())
        .await
        .unwrap_or_else(|e| panic!("publish: {e}\n{}", d.logs()));
    assert!(mounted(&target));
    publish(&mut d, req).await.expect("a repeated publish");
    let written = fill_until_refused(&target, 16 * MIB);
    assert!(written > 8 * MIB, "only {written} bytes fit in 16 MiB");
    let gone = unpublish(&mut d, &id, &target).await;
    assert!(!mounted(&target), "still mounted");
    report("tmpfs-py 16Mi", took, gone);

    // Past the plugin's grant (maxVolumeBytes 256Mi): refused, nothing mounted.
    let got = publish(&mut d, inline_req(&id, &target, &[("size", "1Gi")])).await;
    assert_eq!(code(got), Code::OutOfRange);
    assert!(!mounted(&target));

    // Killed in between: the next unpublish takes the tmpfs down.
    publish(&mut d, inline_req(&id, &target, &[("size", "8Mi")]))
        .await
        .expect("publish");
    d.crash_and_restart().await;
    assert!(mounted(&target), "the tmpfs outlives the driver");
    unpublish(&mut d, &id, &target).await;
    assert!(
        !mounted(&target),
        "still mounted after the crash and unpublish"
    );
}
