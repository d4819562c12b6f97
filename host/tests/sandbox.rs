//! The sandbox: a hostile plugin loaded next to local-dir in one real
//! driver. Every misdeed costs its own request an error with the right
//! code, naming the plugin, while the driver keeps answering other calls.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use wasmcsi::proto::*;

/// Builds `plugins/hostile` once per test binary and returns its path.
fn hostile_wasm() -> PathBuf {
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
fn serve_big_body(body_bytes: usize) -> String {
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

struct Sandbox {
    d: TestDriver,
    origin: String,
    _hostile_root: tempfile::TempDir,
}

/// local-dir as the harness sets it up, plus `hostile` with tight limits.
async fn start(timeout_seconds: u64) -> Sandbox {
    let wasm = hostile_wasm();
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
"#,
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
        _hostile_root: hostile_root,
    }
}

fn hostile_req(misdeed: &str, url: Option<&str>) -> CreateVolumeRequest {
    let mut params = vec![("plugin", "hostile")];
    if let Some(url) = url {
        params.push(("url", url));
    }
    create_req(misdeed, MIB, &params)
}

/// The driver still works: Probe, and a local-dir volume made and deleted.
async fn still_serving(d: &TestDriver, tag: &str) {
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

async fn expect_failure(s: &Sandbox, misdeed: &str, url: Option<&str>, want: Code, says: &str) {
    let started = Instant::now();
    let err =
        s.d.client
            .clone()
            .controller
            .create_volume(hostile_req(misdeed, url))
            .await
            .expect_err(misdeed);
    let msg = err.message();
    assert_eq!(err.code(), want, "{misdeed}: {err:?}");
    assert!(
        msg.contains("hostile"),
        "{misdeed}: message names no plugin: {msg}"
    );
    assert!(
        msg.contains(says),
        "{misdeed}: {msg:?} does not say {says:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{misdeed} took {:?}",
        started.elapsed()
    );
    still_serving(&s.d, misdeed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_misdeed_costs_one_request() {
    let s = start(2).await;
    // A well-behaved call first: the plugin itself works.
    let vol =
        s.d.client
            .clone()
            .controller
            .create_volume(hostile_req("null", None))
            .await
            .expect("null call")
            .into_inner()
            .volume
            .unwrap();
    assert_eq!(vol.volume_id, "hostile:null");

    expect_failure(&s, "loop", None, Code::DeadlineExceeded, "within").await;
    expect_failure(&s, "memory", None, Code::ResourceExhausted, "memory").await;
    expect_failure(
        &s,
        "recursion",
        None,
        Code::Internal,
        "failed in create-volume",
    )
    .await;
    expect_failure(&s, "panic", None, Code::Internal, "panics on purpose").await;
    let outside = "http://127.0.0.1:9/";
    expect_failure(
        &s,
        "http",
        Some(outside),
        Code::PermissionDenied,
        "not an allowed origin",
    )
    .await;
    let big = format!("{}/big", s.origin);
    expect_failure(
        &s,
        "big-response",
        Some(&big),
        Code::ResourceExhausted,
        "exceeds",
    )
    .await;
    expect_failure(&s, "mount", None, Code::PermissionDenied, "").await;
    expect_failure(&s, "dotdot", None, Code::InvalidArgument, "..").await;
    expect_failure(&s, "passwd", None, Code::PermissionDenied, "/etc/passwd").await;
    assert!(
        !std::path::Path::new("/etc/wasmcsi-hostile").exists(),
        "the mount misdeed left a target behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn driver_answers_during_an_endless_loop() {
    // Long enough for a local-dir create (mkfs) to finish inside it.
    let s = start(6).await;
    let mut looping = s.d.client.clone();
    let started = Instant::now();
    let stuck = tokio::spawn(async move {
        looping
            .controller
            .create_volume(hostile_req("loop", None))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Other calls, to both plugins, finish while the loop still spins.
    still_serving(&s.d, "during-loop").await;
    let mut other = s.d.client.clone();
    other
        .controller
        .create_volume(hostile_req("null", None))
        .await
        .expect("a second hostile call runs beside the looping one");
    assert!(
        !stuck.is_finished(),
        "the looping call ended before the other calls were done ({:?})",
        started.elapsed()
    );
    let result = stuck.await.unwrap();
    assert_eq!(code(result), Code::DeadlineExceeded);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(10),
        "the loop was stopped after {took:?}, not the 6 s limit"
    );
}
