//! The hostile plugin in a real driver, next to local-dir: shared by the
//! sandbox and reload tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use wasmcsi::proto::*;

/// Builds `plugins/hostile` once per test binary and returns its path.
pub fn hostile_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = std::process::Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "-p",
                    "hostile",
                ])
                .current_dir(&workspace)
                .status()
                .expect("running cargo to build the hostile plugin");
            assert!(status.success(), "building the hostile plugin failed");
            plugin_path("hostile")
        })
        .clone()
}

/// A 127.0.0.1 server answering every request with `body_bytes` of zeros.
pub fn serve_big_body(body_bytes: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {body_bytes}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let chunk = vec![0u8; 1 << 16];
                let mut sent = 0;
                while sent < body_bytes {
                    let n = chunk.len().min(body_bytes - sent);
                    if stream.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    sent += n;
                }
            });
        }
    });
    format!("http://{addr}")
}

pub struct Sandbox {
    pub d: TestDriver,
    pub origin: String,
    pub hostile_root: tempfile::TempDir,
}

/// local-dir as the harness sets it up, plus `hostile` with tight limits.
pub async fn start(timeout_seconds: u64) -> Sandbox {
    start_with(timeout_seconds, &hostile_wasm(), "", "").await
}

/// Like `start`, with the hostile plugin at `wasm`, extra YAML under its
/// entry (`plugin_yaml`, indented 4) and top-level YAML (`top_yaml`).
pub async fn start_with(
    timeout_seconds: u64,
    wasm: &std::path::Path,
    plugin_yaml: &str,
    top_yaml: &str,
) -> Sandbox {
    let origin = serve_big_body(16 << 20);
    let hostile_root = tempfile::Builder::new()
        .prefix("wasmcsi-hostile")
        .tempdir()
        .unwrap();
    let extra = format!(
        r#"  - name: hostile
    path: {wasm}
    limits: {{ memoryBytes: {mem}, callTimeoutSeconds: {timeout_seconds}, maxConcurrentCalls: 4 }}
    capabilities:
      fs: {{ root: "{root}" }}
      mount: {{ types: [xfs], targetPrefixes: ["{root}/mnt"] }}
      http: {{ origins: ["{origin}"] }}
{plugin_yaml}{top_yaml}"#,
        wasm = wasm.display(),
        mem = 32 * MIB,
        root = hostile_root.path().display(),
    );
    let d = TestDriver::start(Options {
        plugin_extra: extra,
        ..Default::default()
    })
    .await;
    Sandbox {
        d,
        origin,
        hostile_root,
    }
}

pub fn hostile_req(misdeed: &str, url: Option<&str>) -> CreateVolumeRequest {
    let mut params = vec![("plugin", "hostile")];
    if let Some(url) = url {
        params.push(("url", url));
    }
    create_req(misdeed, MIB, &params)
}

/// The driver still works: Probe, and a local-dir volume made and deleted.
pub async fn still_serving(d: &TestDriver, tag: &str) {
    let mut client = d.client.clone();
    let ready = client
        .identity
        .probe(ProbeRequest {})
        .await
        .expect("probe")
        .into_inner()
        .ready;
    assert_eq!(ready, Some(true));
    let vol = client
        .controller
        .create_volume(create_req(
            &format!("pvc-after-{tag}"),
            16 * MIB,
            &[("plugin", "local-dir")],
        ))
        .await
        .unwrap_or_else(|e| panic!("local-dir create after {tag}: {e}\n{}", d.logs()))
        .into_inner()
        .volume
        .unwrap();
    client
        .controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id,
            ..Default::default()
        })
        .await
        .expect("local-dir delete");
}
