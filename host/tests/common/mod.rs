//! Test harness: the real `wasmcsi` binary, started on a temp dir with the
//! real local-dir plugin, spoken to over its real unix socket. Everything a
//! test mounts or attaches under its temp dir is taken down on drop, also
//! when the test fails.

#![allow(dead_code)]

mod shared;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wasmcsi::proto::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use wasmcsi::proto::*;
use wasmcsi_testkit::client::CsiClient;

#[allow(unused_imports)]
pub use shared::{shared_dir, shared_file};
#[allow(unused_imports)]
pub use wasmcsi_testkit::{fill, loops_under, mounted, GIB, MIB};

/// Where the plugins were built (`make plugins`).
pub fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASMCSI_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release")
        });
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (make plugins)",
        path.display()
    );
    path
}

/// Builds a plugin crate of the workspace (release, wasm32-wasip2) and
/// returns its `.wasm`, so a test loads what the source says now.
pub fn build_plugin(package: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ])
        .current_dir(&workspace)
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build the {package} plugin: {e}"));
    assert!(status.success(), "building the {package} plugin failed");
    plugin_path(package)
}

pub struct Options {
    /// Put the plugin root on a fresh loop-mounted btrfs (for subvolume mode).
    pub btrfs_root: bool,
    /// Put the plugin root on a fresh loop-mounted ext4 (a journal, unlike tmp).
    pub ext4_root: bool,
    pub mode: &'static str,
    pub fs_type: &'static str,
    /// More plugin settings, each as `, key: value` (e.g. `, overcommitRatio: 8`).
    pub settings_extra: &'static str,
    /// Extra YAML under the plugin entry (limits, extra capabilities...).
    pub plugin_extra: String,
    /// Extra `wasmcsi serve` flags.
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            btrfs_root: false,
            ext4_root: false,
            mode: "image",
            fs_type: "xfs",
            settings_extra: "",
            plugin_extra: String::new(),
            args: Vec::new(),
        }
    }
}

pub struct TestDriver {
    pub base: tempfile::TempDir,
    pub root: PathBuf,
    pub kubelet: PathBuf,
    pub endpoint: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    pub client: CsiClient,
    child: Option<Child>,
}

impl TestDriver {
    pub async fn start(options: Options) -> TestDriver {
        let base = tempfile::Builder::new()
            .prefix("wasmcsi-test")
            .tempdir()
            .unwrap();
        let root = base.path().join("root");
        let kubelet = base.path().join("kubelet");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&kubelet).unwrap();
        if options.btrfs_root {
            let image = base.path().join("btrfs.img");
            wasmcsi_testkit::mount_btrfs(&image, &root, 2 * GIB).expect("btrfs root");
        } else if options.ext4_root {
            let image = base.path().join("ext4.img");
            wasmcsi_testkit::mount_ext4(&image, &root, 2 * GIB).expect("ext4 root");
        }
        let endpoint = format!("unix://{}/csi.sock", base.path().display());
        let config = base.path().join("config.yaml");
        let log = base.path().join("driver.log");
        let yaml = format!(
            r#"driver:
  name: local.wasmcsi.io
  nodeId: test-node
  endpoint: {endpoint}
plugins:
  - name: local-dir
    path: {wasm}
    settings: {{ mode: {mode}, fsType: {fs}{settings_extra} }}
    capabilities:
      fs: {{ root: "{root}" }}
      quota: {{ enableBtrfsQuotas: true }}
      mount: {{ types: [xfs, ext4], targetPrefixes: ["{kubelet}"] }}
      log: {{}}
{extra}"#,
            wasm = plugin_path("local-dir").display(),
            mode = options.mode,
            fs = options.fs_type,
            settings_extra = options.settings_extra,
            root = root.display(),
            kubelet = kubelet.display(),
            // Plugins added by a test may be granted the harness's kubelet dir.
            extra = options
                .plugin_extra
                .replace("${TEST_KUBELET}", &kubelet.display().to_string()),
        );
        std::fs::write(&config, yaml).unwrap();
        let child = spawn(&config, &log, &options.args);
        // A first start compiles the plugin (an 18 MiB Python one takes
        // minutes on a loaded machine); later ones load it from the cache.
        let client = CsiClient::wait_for(&endpoint, Duration::from_secs(300))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n--- driver log ---\n{}", read(&log)));
        let mut driver = TestDriver {
            base,
            root,
            kubelet,
            endpoint,
            config,
            log,
            args: options.args,
            client,
            child: Some(child),
        };
        driver.wait_ready().await;
        driver
    }

    async fn wait_ready(&mut self) {
        for _ in 0..600 {
            if let Ok(r) = self.client.identity.probe(ProbeRequest {}).await {
                if r.into_inner().ready == Some(true) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("driver never became ready\n{}", self.logs());
    }

    /// Kills the driver without warning (a crash) and starts it again.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = Some(spawn(&self.config, &self.log, &self.args));
        self.client = CsiClient::wait_for(&self.endpoint, Duration::from_secs(60))
            .await
            .expect("driver came back");
        self.wait_ready().await;
    }

    /// SIGTERM, then waits; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub async fn unpublish(&mut self, id: &str, target: &Path) -> Result<(), tonic::Status> {
        let req = NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.display().to_string(),
        };
        self.client.node.node_unpublish_volume(req).await.map(drop)
    }

    pub async fn unstage(&mut self, id: &str, staging: &Path) -> Result<(), tonic::Status> {
        let req = NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
        };
        self.client.node.node_unstage_volume(req).await.map(drop)
    }

    pub async fn snapshot(&mut self, name: &str, source: &str) -> Result<Snapshot, tonic::Status> {
        let req = CreateSnapshotRequest {
            source_volume_id: source.into(),
            name: name.into(),
            ..Default::default()
        };
        let snapshot = self.client.controller.create_snapshot(req).await?;
        Ok(snapshot.into_inner().snapshot.unwrap())
    }

    pub async fn expand(
        &mut self,
        id: &str,
        required: u64,
    ) -> Result<ControllerExpandVolumeResponse, tonic::Status> {
        let req = ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: range(required),
            ..Default::default()
        };
        let resp = self.client.controller.controller_expand_volume(req).await?;
        Ok(resp.into_inner())
    }

    pub async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        };
        self.client.controller.delete_volume(req).await.map(drop)
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }

    pub fn target(&self, name: &str) -> PathBuf {
        self.kubelet.join("pods").join(name).join("mount")
    }

    pub fn staging(&self, name: &str) -> PathBuf {
        self.kubelet.join("staging").join(name)
    }

    /// Volume directories left under the plugin root.
    pub fn volumes_on_disk(&self) -> Vec<String> {
        match std::fs::read_dir(self.root.join("volumes")) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Loop devices backed by files of this test.
    pub fn loop_devices(&self) -> Vec<String> {
        loops_under(self.base.path())
    }
}

impl Drop for TestDriver {
    fn drop(&mut self) {
        self.terminate();
        wasmcsi_testkit::teardown(self.base.path());
    }
}

fn spawn(config: &Path, log: &Path, args: &[String]) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
        .args(["serve", "--config"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info,wasmcsi=debug")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("starting wasmcsi")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- request builders ----

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn rw() -> VolumeCapability {
    mount_cap(Mode::SingleNodeWriter)
}

pub fn create_req(name: &str, required: u64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: required as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rw()],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

pub fn stage_req(id: &str, staging: &Path) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rw()),
        ..Default::default()
    }
}

pub fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rw()),
        readonly,
        ..Default::default()
    }
}

pub fn range(required: u64) -> Option<CapacityRange> {
    Some(CapacityRange {
        required_bytes: required as i64,
        limit_bytes: 0,
    })
}

pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// Log text without the colour escapes.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
