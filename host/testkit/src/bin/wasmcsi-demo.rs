//! The walkthrough behind `make demo`: starts the real driver with
//! `examples/local-dir.yaml` on a scratch directory and drives it over CSI
//! like a CO would — create 1Gi, publish, fill until the kernel refuses,
//! expand to 2Gi, fill more, stats, unpublish, delete — first as an XFS
//! image on a loop device, then as a btrfs subvolume with a qgroup limit.
//! Every step checks what it claims and the demo exits non-zero if not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wasmcsi::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use wasmcsi::proto::*;
use wasmcsi_testkit::client::CsiClient;
use wasmcsi_testkit::{self as testkit, fill, GIB, MIB};

struct Scratch {
    dir: tempfile::TempDir,
    driver: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut child) = self.driver.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        testkit::teardown(self.dir.path());
    }
}

fn step(n: &str, text: impl AsRef<str>) {
    println!("[{n}] {}", text.as_ref());
}

fn mib(bytes: impl TryInto<u64>) -> String {
    let b: u64 = bytes.try_into().unwrap_or(0);
    format!("{} MiB", b / MIB)
}

fn capability() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn range(bytes: u64) -> Option<CapacityRange> {
    Some(CapacityRange {
        required_bytes: bytes as i64,
        limit_bytes: 0,
    })
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    match run().await {
        Ok(()) => println!(
            "\n[done] every step checked out in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("\n[FAILED] {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<()> {
    let repo = std::env::current_dir()?;
    let config = repo.join("examples/local-dir.yaml");
    let wasm = repo.join("target/wasm32-wasip2/release/local_dir.wasm");
    ensure!(
        config.exists() && wasm.exists(),
        "run from the repository root after `make plugins` (missing {} or {})",
        config.display(),
        wasm.display()
    );
    let driver_bin = std::env::current_exe()?.with_file_name("wasmcsi");

    let mut scratch = Scratch {
        dir: tempfile::Builder::new().prefix("wasmcsi-demo").tempdir()?,
        driver: None,
    };
    let base = scratch.dir.path().to_path_buf();
    let (root, kubelet) = (base.join("root"), base.join("kubelet"));
    println!("== wasmcsi demo: local-dir through CSI gRPC, capacity enforced by the kernel ==");
    // A btrfs root serves both modes: image files live on it, and
    // subvolumes with qgroups need it.
    testkit::mount_btrfs(&base.join("node-disk.img"), &root, 6 * GIB)?;
    step(
        "setup",
        format!(
            "scratch {} with the plugin root on a 6 GiB loop-mounted btrfs",
            base.display()
        ),
    );

    let endpoint = format!("unix://{}/csi.sock", base.display());
    let log = std::fs::File::create(base.join("driver.log"))?;
    let child = Command::new(&driver_bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("LOCAL_DIR_ROOT", &root)
        .env("LOCAL_DIR_WASM", &wasm)
        .env("CSI_ENDPOINT", &endpoint)
        .env("NODE_ID", "demo-node")
        .env("KUBELET_DIR", &kubelet)
        .env("WASMCSI_CACHE_DIR", base.join("cache"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", driver_bin.display()))?;
    scratch.driver = Some(child);
    let t = Instant::now();
    let mut csi = CsiClient::wait_for(&endpoint, Duration::from_secs(60)).await?;
    let info = csi
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await?
        .into_inner();
    step(
        "start",
        format!(
            "wasmcsi serve --config examples/local-dir.yaml → {} {} answering on {endpoint} after {} ms",
            info.name,
            info.vendor_version,
            t.elapsed().as_millis()
        ),
    );

    walkthrough(
        &mut csi,
        &kubelet,
        &root,
        "image",
        &[],
        "XFS image on a loop device",
    )
    .await?;
    walkthrough(
        &mut csi,
        &kubelet,
        &root,
        "subvolume",
        &[("mode", "subvolume")],
        "btrfs subvolume with a qgroup limit",
    )
    .await?;
    Ok(())
}

async fn walkthrough(
    csi: &mut CsiClient,
    kubelet: &Path,
    root: &Path,
    name: &str,
    params: &[(&str, &str)],
    what: &str,
) -> Result<()> {
    println!("\n== {what} ==");
    let params: HashMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let volume = csi
        .controller
        .create_volume(CreateVolumeRequest {
            name: format!("pvc-demo-{name}"),
            capacity_range: range(GIB),
            volume_capabilities: vec![capability()],
            parameters: params,
            ..Default::default()
        })
        .await
        .context("CreateVolume")?
        .into_inner()
        .volume
        .context("no volume in the answer")?;
    let id = volume.volume_id.clone();
    step(
        "1",
        format!(
            "CreateVolume 1Gi → {id}, {} bytes, context {:?}",
            volume.capacity_bytes, volume.volume_context
        ),
    );

    let staging: PathBuf = kubelet.join("plugins/staging").join(name);
    let target: PathBuf = kubelet.join("pods/demo").join(name).join("mount");
    std::fs::create_dir_all(&staging)?;
    csi.node
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(capability()),
            ..Default::default()
        })
        .await
        .context("NodeStageVolume")?;
    csi.node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(capability()),
            ..Default::default()
        })
        .await
        .context("NodePublishVolume")?;
    step(
        "2",
        format!(
            "NodeStageVolume + NodePublishVolume → mounted at {}",
            target.display()
        ),
    );

    let (first, err) = fill(&target, "fill-1", 4 * GIB);
    let err = err.context("the kernel accepted more than the volume's size")?;
    ensure!(
        first <= volume.capacity_bytes as u64,
        "wrote {first} bytes into a {} byte volume",
        volume.capacity_bytes
    );
    step(
        "3",
        format!("fill: the kernel took {} then refused: {err}", mib(first)),
    );

    let expanded = csi
        .controller
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: range(2 * GIB),
            volume_capability: Some(capability()),
            ..Default::default()
        })
        .await
        .context("ControllerExpandVolume")?
        .into_inner();
    step(
        "4",
        format!(
            "ControllerExpandVolume 2Gi → {} bytes, node_expansion_required={}",
            expanded.capacity_bytes, expanded.node_expansion_required
        ),
    );
    let node = csi
        .node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
            capacity_range: range(2 * GIB),
            volume_capability: Some(capability()),
            ..Default::default()
        })
        .await
        .context("NodeExpandVolume")?
        .into_inner();
    step(
        "5",
        format!(
            "NodeExpandVolume 2Gi → {} bytes usable, online, while mounted",
            node.capacity_bytes
        ),
    );

    let (second, err) = fill(&target, "fill-2", 4 * GIB);
    let err = err.context("the expanded volume accepted more than its size")?;
    ensure!(second > 0, "no room after expansion");
    ensure!(
        first + second <= node.capacity_bytes as u64,
        "wrote past the expanded size"
    );
    step(
        "6",
        format!(
            "fill more: the kernel took {} more, then refused: {err}",
            mib(second)
        ),
    );

    let stats = csi
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .context("NodeGetVolumeStats")?
        .into_inner();
    let bytes = stats.usage.first().context("no usage")?;
    step(
        "7",
        format!(
            "NodeGetVolumeStats: total {}, used {}, available {}",
            mib(bytes.total),
            mib(bytes.used),
            mib(bytes.available)
        ),
    );

    csi.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .context("NodeUnpublishVolume")?;
    csi.node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .context("NodeUnstageVolume")?;
    csi.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .context("DeleteVolume")?;
    let left: Vec<_> = std::fs::read_dir(root.join("volumes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    if !left.is_empty() {
        bail!("storage left behind after delete: {left:?}");
    }
    step(
        "8",
        "NodeUnpublishVolume + NodeUnstageVolume + DeleteVolume → nothing left under the root",
    );
    Ok(())
}
