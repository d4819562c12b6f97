//! Loading and swapping plugins, against the real binary: hot reload of
//! settings and `.wasm` files, the precompiled cache across restarts, and
//! digest pinning.

mod common;
mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hostile::*;
use sha2::{Digest, Sha256};
use tonic::Code;
use wasmcsi::proto::*;

/// What the hostile plugin's "settings" or "slow" call reports.
async fn settings_seen(d: &TestDriver, misdeed: &str) -> Result<String, tonic::Status> {
    let vol = d
        .client
        .clone()
        .controller
        .create_volume(hostile_req(misdeed, None))
        .await?
        .into_inner()
        .volume
        .unwrap();
    Ok(vol
        .volume_context
        .get("detail")
        .cloned()
        .unwrap_or_default())
}

/// Replaces a file the way a ConfigMap update or an image pull does: a new
/// file renamed over the old one.
fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `check` every 100 ms for up to 15 s.
async fn eventually<F, Fut>(what: &str, d: &TestDriver, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never happened\n{}", d.logs());
}

/// A copy of hostile.wasm the test may overwrite.
fn own_copy(dir: &Path) -> PathBuf {
    let path = dir.join("swap.wasm");
    std::fs::copy(hostile_wasm(), &path).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settings_change_reaches_new_calls_not_calls_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = own_copy(dir.path());
    let s = start_with(
        15,
        &wasm,
        "    settings: { flavor: a }\n",
        "runtime: { watchIntervalMs: 200 }\n",
    )
    .await;
    assert_eq!(settings_seen(&s.d, "settings").await.unwrap(), "flavor=a");

    // An 8 s call starts on version a; the config changes under it (the
    // reload must land within that, also on a loaded machine).
    let slow = tokio::spawn({
        let d_client = s.d.client.clone();
        async move {
            let mut c = d_client;
            c.controller
                .create_volume(hostile_req("slow", None))
                .await
                .map(|r| r.into_inner().volume.unwrap().volume_context["detail"].clone())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Turned into a ConfigMap volume's layout: config.yaml -> ..data/config.yaml,
    // ..data -> a timestamped directory.
    let text = std::fs::read_to_string(&s.d.config).unwrap();
    let base = s.d.config.parent().unwrap().to_path_buf();
    let configmap_version = |name: &str, contents: String| {
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.yaml"), contents).unwrap();
        // The kubelet's atomic writer: a new ..data link renamed over the old.
        let tmp = base.join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, base.join("..data")).unwrap();
    };
    configmap_version("..2026_v1", text.replace("flavor: a", "flavor: b"));
    let link = base.join("config.yaml.link");
    std::os::unix::fs::symlink("..data/config.yaml", &link).unwrap();
    std::fs::rename(&link, &s.d.config).unwrap();
    eventually("the new settings", &s.d, || async {
        settings_seen(&s.d, "settings").await.ok().as_deref() == Some("flavor=b")
    })
    .await;
    assert!(!slow.is_finished(), "the slow call ended before the reload");
    assert_eq!(
        slow.await.unwrap().expect("the call in flight finishes"),
        "flavor=a",
        "the call in flight must finish on the version it started on"
    );
    assert!(s.d.logs().contains("plugin reloaded"), "{}", s.d.logs());

    // The next ConfigMap update only swaps the ..data link.
    configmap_version("..2026_v2", text.replace("flavor: a", "flavor: c"));
    eventually("the settings of the swapped ..data", &s.d, || async {
        settings_seen(&s.d, "settings").await.ok().as_deref() == Some("flavor=c")
    })
    .await;
    // A broken update is refused while version c keeps serving.
    configmap_version("..2026_v3", "driver: [not a config".into());
    eventually("the broken config's rejection", &s.d, || async {
        s.d.logs().contains("changed config rejected")
    })
    .await;
    assert_eq!(settings_seen(&s.d, "settings").await.unwrap(), "flavor=c");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_wasm_is_rejected_and_a_good_one_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = own_copy(dir.path());
    let s = start_with(10, &wasm, "", "runtime: { watchIntervalMs: 200 }\n").await;
    let null = |d: &TestDriver| {
        let mut c = d.client.clone();
        async move {
            c.controller
                .create_volume(hostile_req("null", None))
                .await
                .map(|r| r.into_inner().volume.unwrap().volume_id)
        }
    };
    assert_eq!(null(&s.d).await.unwrap(), "hostile:null");

    // Garbage: rejected, logged, and the old version keeps answering.
    replace_file(&wasm, b"\0asm this is not a component");
    eventually("the broken version's rejection", &s.d, || async {
        s.d.logs().contains("new plugin version rejected")
    })
    .await;
    assert_eq!(null(&s.d).await.unwrap(), "hostile:null");
    still_serving(&s.d, "broken-wasm").await;

    // A working but different plugin under the same name: local-dir,
    // which (unlike hostile) reports capacity.
    let capacity = |d: &TestDriver| {
        let mut c = d.client.clone();
        async move {
            c.controller
                .get_capacity(GetCapacityRequest {
                    parameters: [("plugin".to_string(), "hostile".to_string())].into(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().available_capacity)
        }
    };
    assert_eq!(code(capacity(&s.d).await), Code::Unimplemented);
    replace_file(&wasm, &std::fs::read(plugin_path("local-dir")).unwrap());
    eventually("local-dir serving as hostile", &s.d, || async {
        capacity(&s.d).await.is_ok_and(|bytes| bytes > 0)
    })
    .await;
    still_serving(&s.d, "swapped").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_start_from_the_cache_and_survive_a_corrupt_one() {
    let cache = tempfile::tempdir().unwrap();
    let top = format!("runtime: {{ cacheDir: \"{}\" }}\n", cache.path().display());
    let mut s = start_with(2, &hostile_wasm(), "", &top).await;
    let count = |d: &TestDriver, what: &str| plain(&d.logs()).matches(what).count();
    assert_eq!(count(&s.d, "from=Compiled"), 2, "{}", s.d.logs());
    let entries = || -> Vec<PathBuf> {
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    };
    assert_eq!(entries().len(), 2, "one entry per plugin");

    s.d.crash_and_restart().await;
    assert_eq!(count(&s.d, "from=Cache"), 2, "{}", s.d.logs());

    // Flip a byte in the middle of every entry: recompiled, never a crash.
    for entry in entries() {
        let mut bytes = std::fs::read(&entry).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&entry, bytes).unwrap();
    }
    s.d.crash_and_restart().await;
    assert_eq!(count(&s.d, "cache entry unusable"), 2, "{}", s.d.logs());
    assert_eq!(count(&s.d, "from=Compiled"), 4, "{}", s.d.logs());
    still_serving(&s.d, "corrupt-cache").await;
    assert_eq!(
        code(
            s.d.client
                .clone()
                .controller
                .create_volume(hostile_req("panic", None))
                .await
        ),
        Code::Internal
    );

    // The rewritten entries are good again.
    s.d.crash_and_restart().await;
    assert_eq!(count(&s.d, "from=Cache"), 4, "{}", s.d.logs());
}

/// Starts the binary on a one-plugin config pinning `sha256`; returns the
/// exit status and stderr, or `None` when it came up and served.
async fn start_pinned(sha256: &str) -> Option<(std::process::ExitStatus, String)> {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/csi.sock", dir.path().display());
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "driver: {{ name: pin.wasmcsi.io, nodeId: n1, endpoint: \"{endpoint}\" }}\nplugins:\n  - name: hostile\n    path: {}\n    sha256: \"{sha256}\"\n",
            hostile_wasm().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Some((status, err));
        }
        if wasmcsi_testkit::client::CsiClient::connect(&endpoint)
            .await
            .is_ok()
        {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the driver neither served nor exited");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_mismatch_refuses_the_plugin_at_start() {
    let right = hex::encode(Sha256::digest(std::fs::read(hostile_wasm()).unwrap()));
    assert!(start_pinned(&right).await.is_none(), "the right pin serves");
    let wrong = "0".repeat(64);
    let (status, stderr) = start_pinned(&wrong)
        .await
        .expect("a wrong pin must not serve");
    assert!(!status.success());
    assert!(
        stderr.contains("plugin hostile") && stderr.contains("the config pins"),
        "{stderr}"
    );
}

/// How many times the driver's log says `plugin` was reloaded.
fn reloads_of(d: &TestDriver, plugin: &str) -> usize {
    plain(&d.logs())
        .lines()
        .filter(|l| l.contains("plugin reloaded") && l.contains(&format!("plugin={plugin}")))
        .count()
}

/// The config rewritten with `from` replaced by `to` (renamed into place).
fn edit_config(d: &TestDriver, from: &str, to: &str) {
    let text = std::fs::read_to_string(&d.config).unwrap();
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    replace_file(&d.config, text.replace(from, to).as_bytes());
}

/// The most intervals (`start,end` in ns) that overlap at one instant.
fn most_at_once(intervals: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At the same instant an end comes before a start.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// A local-dir volume made and deleted: the other plugin's good calls.
async fn local_dir_round(d: &TestDriver, tag: &str) -> Result<(), String> {
    let mut client = d.client.clone();
    let vol = client
        .controller
        .create_volume(create_req(tag, 16 * MIB, &[("plugin", "local-dir")]))
        .await
        .map_err(|e| format!("local-dir create {tag}: {e}"))?
        .into_inner()
        .volume
        .ok_or("no volume")?;
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

/// The storm: 10 reloads in a few seconds of a plugin (limit 4)
/// whose calls are held 4 s with 40 files open each, 5 more of them sent to
/// every version. The permits belong to the plugin's name, so at most 4
/// run at once whatever version they started on; the plugin's descriptors
/// stay those of 4 calls; and local-dir (whose instances the pool must
/// keep) loses no call. Before, every version brought 4 fresh permits:
/// 44 calls at once, the engine's pool of 44 instances exhausted.
#[tokio::test(flavor = "multi_thread")]
async fn calls_in_flight_stay_within_the_limit_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = own_copy(dir.path());
    let top = format!(
        "runtime: {{ watchIntervalMs: 100, cacheDir: \"{}\" }}\n",
        dir.path().join("cache").display()
    );
    let s = start_with(60, &wasm, "    settings: { flavor: v0 }\n", &top).await;
    let pid = driver_pid(&s.d);
    let before = footprint(pid, &s.d);
    let sampler = Sampler::start(pid);
    let next_hold = std::sync::atomic::AtomicUsize::new(0);
    let hold = |d: &TestDriver| {
        let mut c = d.client.clone();
        let name = format!(
            "hold-{}",
            next_hold.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        tokio::spawn(async move {
            let req = create_req(
                &name,
                MIB,
                &[
                    ("plugin", "hostile"),
                    ("holdMs", "4000"),
                    ("holdFiles", "40"),
                ],
            );
            let vol = c.controller.create_volume(req).await?.into_inner().volume;
            let detail = vol.map(|v| v.volume_context["detail"].clone());
            let (start, end) = detail.as_deref().unwrap_or("").split_once(',').unwrap();
            Ok::<_, tonic::Status>((start.parse::<u128>().unwrap(), end.parse().unwrap()))
        })
    };
    let storm = async {
        let started = Instant::now();
        let mut holds = Vec::new();
        for version in 0..=10 {
            holds.extend((0..5).map(|_| hold(&s.d)));
            if version == 10 {
                break;
            }
            edit_config(
                &s.d,
                &format!("flavor: v{version} "),
                &format!("flavor: v{} ", version + 1),
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while reloads_of(&s.d, "hostile") < version + 1 {
                assert!(
                    Instant::now() < deadline,
                    "reload {version} never landed\n{}",
                    s.d.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let took = started.elapsed();
        // Two waves of held calls end (the old code's pool was at its
        // fullest meanwhile), or 20 s pass.
        let waves = Instant::now() + Duration::from_secs(20);
        while holds.iter().filter(|h| h.is_finished()).count() < 8 && Instant::now() < waves {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (holds, took)
    };
    let storm_done = std::sync::atomic::AtomicBool::new(false);
    let good = async {
        let mut rounds = 0;
        let ends = Instant::now() + Duration::from_secs(60);
        while Instant::now() < ends {
            if let Err(e) = local_dir_round(&s.d, &format!("pvc-storm-{rounds}")).await {
                panic!(
                    "a good call failed during the reload storm: {e}\n{}",
                    s.d.logs()
                );
            }
            rounds += 1;
            if storm_done.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        rounds
    };
    let ((holds, took), rounds) = tokio::join!(
        async {
            let out = storm.await;
            storm_done.store(true, std::sync::atomic::Ordering::SeqCst);
            out
        },
        good
    );
    let (peak_fds, _) = sampler.peak();
    drop(sampler);
    let mut intervals = Vec::new();
    for h in holds {
        if h.is_finished() {
            match h.await {
                Ok(Ok(interval)) => intervals.push(interval),
                other => eprintln!("a held call: {other:?}"),
            }
        } else {
            h.abort();
        }
    }
    eprintln!(
        "10 reloads in {took:?}; {rounds} local-dir rounds; {} held calls ended; fds {} -> peak {peak_fds}",
        intervals.len(),
        before.fds
    );
    assert_eq!(reloads_of(&s.d, "hostile"), 10);
    assert!(rounds >= 1);
    assert!(
        intervals.len() >= 8,
        "held calls never ran: {}",
        intervals.len()
    );
    let most = most_at_once(&intervals);
    assert!(
        most <= 4,
        "{most} calls of a plugin limited to 4 ran at once across reloads"
    );
    // 4 calls' 40 files each (and their roots), with room for local-dir's
    // calls and the driver's own; 44 calls at once would hold ~1,800.
    assert!(
        peak_fds <= before.fds + 4 * HANDLES + 100,
        "the driver held {peak_fds} descriptors (from {})",
        before.fds
    );
}

/// A new version whose `info()` spins is refused within
/// `runtime.checkTimeoutSeconds`, not the plugin's 60 s call timeout, and
/// keeps the old version serving; meanwhile another plugin's reload, in the
/// same config change, lands at once. Before, reloads ran one after
/// another: the second plugin waited for the first's timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_check_holds_up_only_its_own_reload() {
    let dir = tempfile::tempdir().unwrap();
    let calm = format!(
        "  - name: calm\n    path: {}\n    settings: {{ flavor: calm-a }}\n",
        hostile_wasm().display()
    );
    let top = format!(
        "{calm}runtime: {{ watchIntervalMs: 100, checkTimeoutSeconds: 6, cacheDir: \"{}\" }}\n",
        dir.path().join("cache").display()
    );
    let s = start_with(60, &hostile_wasm(), "    settings: { flavor: a }\n", &top).await;
    let calm_settings = |d: &TestDriver| {
        let mut c = d.client.clone();
        async move {
            c.controller
                .create_volume(create_req("settings", MIB, &[("plugin", "calm")]))
                .await
                .map(|r| r.into_inner().volume.unwrap().volume_context["detail"].clone())
        }
    };
    assert_eq!(calm_settings(&s.d).await.unwrap(), "flavor=calm-a");
    let rejected = |d: &TestDriver| {
        plain(&d.logs())
            .lines()
            .any(|l| l.contains("new plugin version rejected") && l.contains("plugin=hostile"))
    };

    // hostile (listed first) gets a version that spins in info(); calm a
    // plain new setting, in the same write.
    let text = std::fs::read_to_string(&s.d.config).unwrap();
    let changed = text
        .replace("{ flavor: a }", "{ flavor: b, spinInfo: \"true\" }")
        .replace("calm-a", "calm-b");
    let started = Instant::now();
    replace_file(&s.d.config, changed.as_bytes());
    eventually("calm's reload", &s.d, || async {
        calm_settings(&s.d).await.ok().as_deref() == Some("flavor=calm-b")
    })
    .await;
    let calm_took = started.elapsed();
    assert!(
        !rejected(&s.d),
        "calm's reload waited for hostile's check to fail ({calm_took:?})\n{}",
        s.d.logs()
    );
    assert!(
        calm_took < Duration::from_secs(6),
        "calm took {calm_took:?}"
    );

    eventually("the spinning version's rejection", &s.d, || async {
        rejected(&s.d)
    })
    .await;
    let hostile_took = started.elapsed();
    assert!(
        hostile_took < Duration::from_secs(14),
        "the check ran {hostile_took:?}: not the 6 s check deadline"
    );
    let line = plain(&s.d.logs())
        .lines()
        .find(|l| l.contains("new plugin version rejected"))
        .unwrap()
        .to_string();
    assert!(line.contains("did not finish info"), "{line}");
    assert_eq!(settings_seen(&s.d, "settings").await.unwrap(), "flavor=a");
    still_serving(&s.d, "spinning-info").await;
}
