//! Harness for the xsky-nfs tests: an in-process XMS emulator on
//! 127.0.0.1, the real `wasmcsi` binary with the real xsky-nfs plugin on a
//! temp dir, and the checks every scenario ends with (no stray quota tree
//! or share, no credential in the driver log, every exchange as the
//! swagger says).

#![allow(dead_code)]

#[path = "../common/shared.rs"]
mod shared;

pub mod rest;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wasmcsi::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use wasmcsi::proto::*;
use wasmcsi_testkit::client::CsiClient;
use xms_emulator::spec::Spec;
use xms_emulator::Emulator;

pub const GIB: u64 = 1 << 30;
pub const USER: &str = "csi-provisioner";
pub const PASSWORD: &str = "Xs-S3cret-9f2e";

pub fn plugin_path() -> PathBuf {
    let dir = std::env::var_os("WASMCSI_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release")
        });
    let path = dir.join("xsky_nfs.wasm");
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --target wasm32-wasip2 -p xsky-nfs",
        path.display()
    );
    path
}

/// An emulator with a dedicated CSI user (so the password is unique
/// enough to look for in logs) and quick background work.
pub async fn emulator() -> Emulator {
    prepared(Emulator::start("127.0.0.1:0").await)
}

/// The same over HTTPS, its certificate from a private CA
/// ([`Emulator::ca_pem`]), as an array installed on site would have.
pub async fn tls_emulator() -> Emulator {
    prepared(Emulator::start_tls("127.0.0.1:0", xms_emulator::State::default()).await)
}

/// The CSI user and quick background work on a started emulator.
pub fn prepared(started: std::io::Result<Emulator>) -> Emulator {
    let emu = started.expect("emulator starts");
    emu.with_state(|s| {
        s.users.insert(USER.into(), PASSWORD.into());
        s.settle_after = Duration::from_millis(150);
    });
    emu
}

pub struct XskyDriver {
    pub base: tempfile::TempDir,
    pub kubelet: PathBuf,
    pub log: PathBuf,
    pub record: PathBuf,
    pub client: CsiClient,
    child: Option<Child>,
}

impl XskyDriver {
    /// `servers`: the plugin setting xmsServers (also the allowed
    /// origins); `settings`: extra settings as YAML flow entries.
    pub async fn start(servers: &[String], settings: &str) -> XskyDriver {
        XskyDriver::start_with(servers, settings, "").await
    }

    /// Like `start`; `http_grant`: extra entries of the http capability
    /// (`caFile`, `insecureSkipTlsVerify`) as YAML flow entries.
    pub async fn start_with(servers: &[String], settings: &str, http_grant: &str) -> XskyDriver {
        XskyDriver::launch(servers, settings, http_grant, "").await
    }

    /// Like `start`; `limits`: extra entries of the plugin's limits as
    /// YAML flow entries (`maxOpenHandles: 32`).
    pub async fn start_limited(servers: &[String], settings: &str, limits: &str) -> XskyDriver {
        XskyDriver::launch(servers, settings, "", limits).await
    }

    async fn launch(
        servers: &[String],
        settings: &str,
        http_grant: &str,
        limits: &str,
    ) -> XskyDriver {
        let base = tempfile::Builder::new()
            .prefix("wasmcsi-xsky")
            .tempdir()
            .unwrap();
        let kubelet = base.path().join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let endpoint = format!("unix://{}/csi.sock", base.path().display());
        let config = base.path().join("config.yaml");
        let log = base.path().join("driver.log");
        let record = base.path().join("mounts.jsonl");
        let origins: Vec<String> = servers
            .iter()
            .map(|s| match s.contains("://") {
                true => s.clone(),
                false => format!("http://{s}"),
            })
            .collect();
        // A test's own timing replaces the default: YAML keys are unique.
        let defaults: String = [
            ("pollIntervalMs", "50"),
            ("backoffMs", "50"),
            ("callBudgetSeconds", "20"),
        ]
        .iter()
        .filter(|(key, _)| !settings.contains(&format!("{key}:")))
        .map(|(key, value)| format!(", {key}: {value}"))
        .collect();
        let yaml = format!(
            r#"driver:
  name: xsky.wasmcsi.io
  nodeId: test-node
  endpoint: {endpoint}
plugins:
  - name: xsky-nfs
    path: {wasm}
    settings: {{ xmsServers: "{servers}"{defaults}{settings} }}
    limits: {{ callTimeoutSeconds: 60{limits} }}
    capabilities:
      http: {{ origins: ["{origins}"]{http_grant} }}
      mount: {{ types: [nfs, nfs4], targetPrefixes: ["{kubelet}"], recordNetworkMounts: "{record}" }}
      log: {{}}
"#,
            wasm = plugin_path().display(),
            servers = servers.join(","),
            origins = origins.join(","),
            kubelet = kubelet.display(),
            record = record.display(),
        );
        std::fs::write(&config, yaml).unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,wasmcsi=debug")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting wasmcsi");
        let client = CsiClient::wait_for(&endpoint, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n--- driver log ---\n{}", read(&log)));
        let mut d = XskyDriver {
            base,
            kubelet,
            log,
            record,
            client,
            child: Some(child),
        };
        for _ in 0..600 {
            if let Ok(r) = d.client.identity.probe(ProbeRequest {}).await {
                if r.into_inner().ready == Some(true) {
                    return d;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("driver never became ready\n{}", d.logs());
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }

    pub fn target(&self, name: &str) -> PathBuf {
        self.kubelet.join("pods").join(name).join("mount")
    }

    /// The network mounts the host would have run.
    pub fn recorded_mounts(&self) -> Vec<Value> {
        read(&self.record)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    pub async fn create(
        &mut self,
        name: &str,
        bytes: u64,
        params: &[(&str, &str)],
    ) -> Result<Volume, tonic::Status> {
        self.client
            .controller
            .create_volume(create_req(name, bytes, params))
            .await
            .map(|r| r.into_inner().volume.expect("a volume"))
    }

    pub async fn expand(
        &mut self,
        id: &str,
        bytes: u64,
    ) -> Result<ControllerExpandVolumeResponse, tonic::Status> {
        self.client
            .controller
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: id.into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: bytes as i64,
                    limit_bytes: 0,
                }),
                secrets: secrets(),
                volume_capability: Some(rw()),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn delete(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.client
            .controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: id.into(),
                secrets: secrets(),
            })
            .await
            .map(drop)
    }
}

impl Drop for XskyDriver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn secrets() -> HashMap<String, String> {
    [
        ("user".to_string(), USER.to_string()),
        ("password".to_string(), PASSWORD.to_string()),
    ]
    .into()
}

pub fn rw() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

pub const SHARE: &str = "127.0.0.1:/sdsfs/csi-fs/";

pub fn create_req(name: &str, bytes: u64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    let mut parameters: HashMap<String, String> =
        [("shares".to_string(), SHARE.to_string())].into();
    for (k, v) in params {
        parameters.insert(k.to_string(), v.to_string());
    }
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rw()],
        parameters,
        secrets: secrets(),
        ..Default::default()
    }
}

/// The quota tree xsky-nfs made for the CSI volume `name`: named
/// `<name>_w<8 hex digits>` (the mark and the parameters' fingerprint).
pub fn tree_of(emu: &Emulator, name: &str) -> Option<xms_emulator::QuotaTree> {
    emu.quota_trees().into_iter().find(|t| {
        t.name
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix("_w"))
            .is_some_and(|fp| fp.len() == 8 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Mounts a tmpfs named `source` at `target`: with recordNetworkMounts
/// nothing is mounted where the plugin published, so this stands in for the
/// NFS mount (mountinfo shows the source as given).
pub fn stand_in_mount(source: &str, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", source])
        .arg(target)
        .output()
        .expect("running mount");
    assert!(
        out.status.success(),
        "mount tmpfs {source} on {}: {}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn stats(
    d: &mut XskyDriver,
    id: &str,
    path: &Path,
) -> Result<NodeGetVolumeStatsResponse, tonic::Status> {
    d.client
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.display().to_string(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// `request` with a gRPC deadline.
pub fn with_timeout<T>(request: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(request);
    r.set_timeout(timeout);
    r
}

/// The XMS swagger (`$WASMCSI_SHARED/xms/swagger.yaml`); `None` outside CI
/// when the shared data is absent, after saying so.
fn spec() -> Option<Spec> {
    let path = shared::shared_file("xms/swagger.yaml", "XMS exchanges against the swagger")?;
    Some(Spec::load(&path).expect("the XMS swagger is readable"))
}

/// What every scenario ends with.
pub fn finish(emu: &Emulator, d: &XskyDriver) {
    let logs = d.logs();
    // No stray quota tree or share (the home share is the only share).
    let trees = emu.quota_trees();
    assert!(trees.is_empty(), "stray quota trees: {trees:?}\n{logs}");
    let (shares, folders, snapshots) =
        emu.with_state(|s| (s.shares.len(), s.folders.len(), s.snapshots.len()));
    assert_eq!(shares, 1, "stray NFS shares: {}", emu.summary());
    assert_eq!(folders, 1, "stray folders: {}", emu.summary());
    assert_eq!(snapshots, 0, "stray snapshots: {}", emu.summary());
    // No credential in the driver log: neither the password nor a token.
    let exchanges = emu.exchanges();
    assert!(!exchanges.is_empty(), "the plugin never talked to XMS");
    assert!(
        !logs.contains(PASSWORD),
        "the password leaked into the driver log"
    );
    for ex in &exchanges {
        if let Some(uuid) = ex
            .response
            .as_ref()
            .and_then(|r| r["token"]["uuid"].as_str())
        {
            assert!(
                !logs.contains(uuid),
                "an XMS token leaked into the driver log"
            );
        }
    }
    // Every request and answer as the swagger says.
    let Some(spec) = spec() else { return };
    let errors: Vec<String> = exchanges.iter().flat_map(|e| spec.check(e)).collect();
    assert!(
        errors.is_empty(),
        "off-spec exchanges:\n{}",
        errors.join("\n")
    );
}
