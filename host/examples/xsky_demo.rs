//! Demo: the xsky-nfs plugin against the XMS emulator, following the seed:
//! StorageClass-like parameters, create 5Gi, expand to 10Gi, and the quota
//! tree's size on the (emulated) array before and after.
//!
//!   examples/xsky-nfs-demo.sh      (builds what it needs, then runs this)
//!
//! Starts the emulator in-process on 127.0.0.1 (ephemeral port), runs
//! `target/debug/wasmcsi serve --config examples/xsky-nfs.yaml` with
//! CSI_ENDPOINT, NODE_ID, KUBELET_DIR and XMS_ORIGINS set, and talks CSI
//! to it over its unix socket like a CO.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wasmcsi::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use wasmcsi::proto::*;
use wasmcsi_testkit::client::CsiClient;
use xms_emulator::Emulator;

const GIB: u64 = 1 << 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tree(emu: &Emulator, name: &str) -> String {
    match emu.quota_trees().into_iter().find(|t| t.name == name) {
        Some(t) => format!(
            "quota tree {:?} in folder csi-fs: size {} bytes ({} GiB), status {}",
            t.name,
            t.size,
            t.size / GIB,
            t.status()
        ),
        None => format!("no quota tree {name:?} on the array"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let emu = Emulator::start("127.0.0.1:0").await?;
    let dir = tempfile::Builder::new().prefix("xsky-demo").tempdir()?;
    let endpoint = format!("unix://{}/csi.sock", dir.path().display());
    let kubelet = dir.path().join("kubelet");
    std::fs::create_dir_all(&kubelet)?;
    let wasmcsi = std::env::var_os("WASMCSI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug/wasmcsi"));
    println!(
        "XMS emulator: {}/v1 (state: {}/emulator/state)",
        emu.url(),
        emu.url()
    );
    let log = std::fs::File::create(dir.path().join("driver.log"))?;
    let mut child = Command::new(&wasmcsi)
        .current_dir(repo())
        .args(["serve", "--config", "examples/xsky-nfs.yaml"])
        .env("CSI_ENDPOINT", &endpoint)
        .env("NODE_ID", "demo-node")
        .env("KUBELET_DIR", &kubelet)
        .env("XMS_ORIGINS", emu.url())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", wasmcsi.display()))?;
    let result = run(&emu, &endpoint).await;
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        eprintln!(
            "--- driver log ---\n{}",
            std::fs::read_to_string(dir.path().join("driver.log"))?
        );
    }
    result
}

async fn run(emu: &Emulator, endpoint: &str) -> anyhow::Result<()> {
    let mut csi = CsiClient::wait_for(endpoint, Duration::from_secs(60)).await?;
    let parameters: HashMap<String, String> = [
        ("shares", "127.0.0.1:/sdsfs/csi-fs/"),
        ("clientGroupName", "k8s-nodes"),
        ("mountOptions", "hard,timeo=600"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let secrets: HashMap<String, String> = [("user", "admin"), ("password", "admin")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    println!("StorageClass parameters: {parameters:?} (+ secrets user/password)");
    let cap = VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    };
    let vol = csi
        .controller
        .create_volume(CreateVolumeRequest {
            name: "pvc-demo".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: (5 * GIB) as i64,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap.clone()],
            parameters,
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .volume
        .ok_or_else(|| anyhow::anyhow!("no volume"))?;
    println!(
        "CreateVolume pvc-demo 5Gi -> {} ({} bytes)",
        vol.volume_id, vol.capacity_bytes
    );
    println!(
        "  NFS: {}:{}",
        vol.volume_context["server"], vol.volume_context["share"]
    );
    // The tree is the share's last component (xsky-nfs names it after the
    // volume, with a fingerprint of its parameters).
    let tree_name = vol.volume_context["share"]
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    println!("  before: {}", tree(emu, &tree_name));
    let grown = csi
        .controller
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: (10 * GIB) as i64,
                limit_bytes: 0,
            }),
            secrets: secrets.clone(),
            volume_capability: Some(cap),
        })
        .await?
        .into_inner();
    println!(
        "ControllerExpandVolume -> 10Gi: capacity {} bytes, node_expansion_required={}",
        grown.capacity_bytes, grown.node_expansion_required
    );
    println!("  after:  {}", tree(emu, &tree_name));
    csi.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            secrets,
        })
        .await?;
    println!("DeleteVolume -> {}", tree(emu, &tree_name));
    Ok(())
}
