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
    BUILT.get_or_init(|| build_plugin("hostile")).clone()
}

/// A 127.0.0.1 server answering every request with `body_bytes` of zeros,
/// announced by Content-Length, except at `/unannounced` (read until the
/// server closes); at `/bytes/N`, N bytes.
pub fn serve_big_body(body_bytes: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let unannounced = buf[..n].starts_with(b"GET /unannounced ");
                let asked = std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|r| r.strip_prefix("GET /bytes/"))
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<usize>().ok());
                let body_bytes = asked.unwrap_or(body_bytes);
                let head = if unannounced {
                    "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {body_bytes}\r\nConnection: close\r\n\r\n"
                    )
                };
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

/// The hostile plugin's `limits.maxOpenHandles` in these drivers (not the
/// default, so a test shows the setting is what counts).
pub const HANDLES: usize = 64;

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
    limits: {{ memoryBytes: {mem}, callTimeoutSeconds: {timeout_seconds}, maxConcurrentCalls: 4, maxOpenHandles: {HANDLES} }}
    capabilities:
      log: {{}}
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

/// The pid of the `wasmcsi serve` process started with this driver's
/// config (found by its command line, so only our own driver is measured).
pub fn driver_pid(d: &TestDriver) -> u32 {
    let config = d.config.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "serve") && args.contains(&config) {
            return pid;
        }
    }
    panic!("no wasmcsi serve process runs with {config}");
}

/// What the driver process holds right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    pub fds: usize,
    pub rss_kib: u64,
    pub log_bytes: u64,
}

pub fn footprint(pid: u32, d: &TestDriver) -> Footprint {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let log_bytes = std::fs::metadata(&d.log).map(|m| m.len()).unwrap_or(0);
    Footprint {
        fds,
        rss_kib,
        log_bytes,
    }
}

/// Samples the driver's descriptors and RSS every few milliseconds until
/// dropped; `peak` is the largest of each seen so far.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::Mutex<(usize, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = std::sync::Arc::new(std::sync::Mutex::new((0usize, 0u64)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|dir| dir.count())
                    .unwrap_or(0);
                let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or(0);
                let mut peak = p.lock().unwrap();
                *peak = (peak.0.max(fds), peak.1.max(rss));
                drop(peak);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Largest (descriptor count, RSS in KiB) seen.
    pub fn peak(&self) -> (usize, u64) {
        *self.peak.lock().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One round of good calls: Probe, the hostile plugin's well-behaved
/// call, and a local-dir volume made and deleted. The error of the first
/// that fails, if any.
pub async fn good_round(d: &TestDriver, tag: &str) -> Result<(), String> {
    let mut client = d.client.clone();
    let ready = client
        .identity
        .probe(ProbeRequest {})
        .await
        .map_err(|e| format!("probe: {e}"))?
        .into_inner()
        .ready;
    if ready != Some(true) {
        return Err(format!("probe answered ready={ready:?}"));
    }
    client
        .controller
        .create_volume(hostile_req("null", None))
        .await
        .map_err(|e| format!("hostile null: {e}"))?;
    let vol = client
        .controller
        .create_volume(create_req(tag, 16 * MIB, &[("plugin", "local-dir")]))
        .await
        .map_err(|e| format!("local-dir create {tag}: {e}"))?
        .into_inner()
        .volume
        .ok_or("local-dir create answered no volume")?;
    client
        .controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: vol.volume_id,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("local-dir delete {tag}: {e}"))?;
    Ok(())
}

/// Runs `misdeed` while good calls run beside it, round after round until
/// it is done (at least one round, all of it inside the misdeed when the
/// misdeed lasts long enough). Returns the misdeed's output and how many
/// good rounds ran; panics on the first good call that failed.
pub async fn during<T>(
    d: &TestDriver,
    tag: &str,
    misdeed: impl std::future::Future<Output = T>,
) -> (T, usize) {
    let done = std::sync::atomic::AtomicBool::new(false);
    let good = async {
        let mut rounds = 0;
        loop {
            if let Err(e) = good_round(d, &format!("pvc-during-{tag}-{rounds}")).await {
                panic!("a good call failed during {tag}: {e}\n{}", d.logs());
            }
            rounds += 1;
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                return rounds;
            }
        }
    };
    let bad = async {
        let out = misdeed.await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    };
    let (out, rounds) = tokio::join!(bad, good);
    (out, rounds)
}
