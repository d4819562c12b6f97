//! Figures for the plugin runtime (a benchmark, not a test): compile from
//! scratch vs load from cache (`cache`); the wasm boundary alone on a live
//! instance, a fresh instance, and a fresh instance plus a null call — what
//! every plugin call costs (`calls`); the real binary's start-to-ready with
//! a cold and a warm cache (`start`); and per plugin side by side — the
//! Rust local-dir and the Python tmpfs-py when built (`make plugin-py`) —
//! compile, cache load, a fresh instance + `info` and its memory (`plugins`).
//!
//! Needs the plugins built (`cargo build --release --target wasm32-wasip2
//! -p local-dir -p hostile`). Run: `cargo bench -p wasmcsi --bench runtime
//! [-- cache|calls|start]` (add `--profile dev` for a quick, unoptimised
//! host). `WASMCSI_BENCH_CALLS=N` sets the calls per figure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use wasmcsi::capabilities::Grants;
use wasmcsi::config::{Config, Overrides, PluginConfig};
use wasmcsi::runtime::cache::Origin;
use wasmcsi::runtime::state::CallState;
use wasmcsi::runtime::{Identity, Loader};
use wasmcsi::wit::exports::wasmcsi::plugin::identity;
use wasmtime::Store;

/// Calls per measured figure; `WASMCSI_BENCH_CALLS` overrides (profiling).
fn calls_per_figure() -> usize {
    std::env::var("WASMCSI_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

fn wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} missing: build the plugins first",
        path.display()
    );
    path
}

fn config_text(dir: &Path, cache: Option<&Path>) -> String {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let cache = cache
        .map(|c| {
            format!(
                "runtime: {{ cacheDir: \"{}\", watchIntervalMs: 0 }}\n",
                c.display()
            )
        })
        .unwrap_or_default();
    format!(
        r#"driver: {{ name: bench.wasmcsi.io, nodeId: n1, endpoint: "unix://{sock}" }}
plugins:
  - name: local-dir
    path: {local}
    settings: {{ mode: image }}
    capabilities: {{ fs: {{ root: "{root}" }} }}
  - name: hostile
    path: {hostile}
    capabilities: {{ fs: {{ root: "{root}" }} }}
{cache}"#,
        sock = dir.join("csi.sock").display(),
        local = wasm("local_dir").display(),
        hostile = wasm("hostile").display(),
        root = root.display(),
    )
}

fn config(dir: &Path, cache: Option<&Path>) -> Config {
    Config::parse(&config_text(dir, cache), &|_| None, &Overrides::default()).unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// p50 and p99 of `n` runs of `f`, after a warm-up.
async fn percentiles<F, Fut>(n: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Warm up first: pool slots, caches, the allocator.
    for _ in 0..n / 10 {
        f().await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    spread(times)
}

/// p50 and p99 of some timings.
fn spread(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let n = times.len();
    (times[n / 2], times[n * 99 / 100])
}

async fn compile_vs_cache(dir: &Path) {
    println!("\n== compile from scratch vs load from the cache (per plugin) ==");
    let cache_dir = dir.join("cache-a");
    let plain = Loader::new(&config(dir, None)).unwrap();
    let cached_cfg = config(dir, Some(&cache_dir));
    let cached = Loader::new(&cached_cfg).unwrap();
    for p in &cached_cfg.plugins {
        let size = std::fs::metadata(&p.path).unwrap().len();
        let t = Instant::now();
        plain.component(p).await.unwrap();
        let scratch = t.elapsed();
        let (_, first) = cached.component(p).await.unwrap();
        assert_eq!(first, Origin::Compiled);
        let t = Instant::now();
        let (_, second) = cached.component(p).await.unwrap();
        let from_cache = t.elapsed();
        assert_eq!(second, Origin::Cache);
        println!(
            "{:<10} {:>5} KiB wasm: compile {:>12}   cache {:>12}   ({:.0}x)",
            p.name,
            size >> 10,
            ms(scratch),
            ms(from_cache),
            scratch.as_secs_f64() / from_cache.as_secs_f64()
        );
    }
}

async fn calls(dir: &Path) {
    let cfg = config(dir, None);
    let loader = Loader::new(&cfg).unwrap();
    let n = calls_per_figure();
    for p in &cfg.plugins {
        let plugin = loader.load(p).await.unwrap();
        println!("\n== {} : {n} calls each ==", p.name);
        let (p50, p99) = crossing(&loader, p, n).await;
        println!(
            "boundary (live instance) p50 {:>10}  p99 {:>10}",
            us(p50),
            us(p99)
        );
        // Fresh store + instance from the InstancePre, no export called.
        let (p50, p99) = percentiles(n, || async {
            plugin
                .call("instantiate", None, |_: &Identity, _| {
                    Box::pin(async { Ok(Ok(())) })
                })
                .await
                .unwrap();
        })
        .await;
        println!(
            "instantiate only        p50 {:>10}  p99 {:>10}",
            us(p50),
            us(p99)
        );
        // The same plus one export call returning a record: identity.info.
        let (p50, p99) = percentiles(n, || async {
            plugin
                .call("info", None, |p: &Identity, s| {
                    Box::pin(async move { p.call_info(s).await.map(Ok) })
                })
                .await
                .unwrap();
        })
        .await;
        println!(
            "null call (info)        p50 {:>10}  p99 {:>10}",
            us(p50),
            us(p99)
        );
    }
}

/// The wasm boundary alone: one live instance whose `info()` is called
/// over and over (lower, enter wasm, the guest builds its record, lift,
/// post-return), as `Plugin::call` does but without the fresh instance.
async fn crossing(loader: &Loader, config: &PluginConfig, n: usize) -> (Duration, Duration) {
    let (component, _) = loader.component(config).await.unwrap();
    let pre = loader.linker().instantiate_pre(&component).unwrap();
    let grants = Arc::new(Grants::from_config(config, "n1").unwrap());
    let state = CallState::new(
        grants,
        &config.limits,
        std::time::Instant::now() + std::time::Duration::from_secs(60),
        wasmcsi::capabilities::call_paths::CallPaths::none(),
    )
    .unwrap();
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1 << 40);
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let exports = identity::GuestIndices::new(&pre)
        .unwrap()
        .load(&mut store, &instance)
        .unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        exports.call_info(&mut store).await.unwrap();
        times.push(t.elapsed());
    }
    spread(times)
}

/// What one plugin costs, Rust beside Python: the compile, the load from
/// the cache, the first call after load, then p50/p99 of a fresh instance
/// plus `info` (the cheapest call: every CSI call pays at least this) and
/// the largest linear memory any of those calls reached.
async fn side_by_side(dir: &Path) {
    let py =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/tmpfs_py.wasm");
    let mut text = format!(
        r#"driver: {{ name: bench.wasmcsi.io, nodeId: n1, endpoint: "unix://{sock}" }}
runtime: {{ cacheDir: "{cache}", watchIntervalMs: 0 }}
plugins:
  - name: local-dir
    path: {local}
    settings: {{ mode: image }}
    capabilities: {{ fs: {{ root: "{root}" }} }}
"#,
        sock = dir.join("csi.sock").display(),
        cache = dir.join("cache-c").display(),
        local = wasm("local_dir").display(),
        root = dir.join("root").display(),
    );
    if py.exists() {
        text.push_str(&format!(
            "  - name: tmpfs-py\n    path: {}\n    limits: {{ memoryBytes: 134217728 }}\n",
            py.display()
        ));
    } else {
        println!("\n(tmpfs_py.wasm not built: make plugin-py for the Python figures)");
    }
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let cfg = Config::parse(&text, &|_| None, &Overrides::default()).unwrap();
    let plain = Loader::new(&config(dir, None)).unwrap();
    let cached = Loader::new(&cfg).unwrap();
    let n = calls_per_figure().min(500);
    println!("\n== per plugin: compile, cache, a fresh instance + info ({n} calls) ==");
    for p in &cfg.plugins {
        let size = std::fs::metadata(&p.path).unwrap().len();
        let t = Instant::now();
        plain.component(p).await.unwrap();
        let compile = t.elapsed();
        cached.component(p).await.unwrap();
        let t = Instant::now();
        let (_, origin) = cached.component(p).await.unwrap();
        let from_cache = t.elapsed();
        assert_eq!(origin, Origin::Cache);
        let plugin = cached.load(p).await.unwrap();
        let high_water = std::sync::atomic::AtomicUsize::new(0);
        let info = || async {
            let seen = plugin
                .call("info", None, |p: &Identity, s| {
                    Box::pin(async move {
                        p.call_info(&mut *s).await?;
                        Ok(Ok(s.data().limiter.high_water))
                    })
                })
                .await
                .unwrap();
            high_water.fetch_max(seen, std::sync::atomic::Ordering::Relaxed);
        };
        let t = Instant::now();
        info().await;
        let first = t.elapsed();
        let (p50, p99) = percentiles(n, info).await;
        println!(
            "{:<10} {:>6} KiB wasm  compile {:>11}  cache {:>10}  first call {:>10}  \
             instance+info p50 {:>10} p99 {:>10}  memory {:>5.1} MiB",
            p.name,
            size >> 10,
            ms(compile),
            ms(from_cache),
            ms(first),
            us(p50),
            us(p99),
            high_water.into_inner() as f64 / f64::from(1 << 20),
        );
    }
}

/// Starts the real binary and waits for Probe to say ready.
async fn start_to_ready(dir: &Path, label: &str, cache: Option<&Path>) {
    let file = dir.join(format!("config-{label}.yaml"));
    std::fs::write(&file, config_text(dir, cache)).unwrap();
    let endpoint = format!("unix://{}", dir.join("csi.sock").display());
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmcsi"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = loop {
        if let Ok(mut c) = wasmcsi_testkit::client::CsiClient::connect(&endpoint).await {
            if let Ok(r) = c.identity.probe(wasmcsi::proto::ProbeRequest {}).await {
                if r.into_inner().ready == Some(true) {
                    break t.elapsed();
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(120), "never ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(dir.join("csi.sock"));
    println!("{label:<34} {:>12}", ms(ready));
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "wasmcsi runtime figures ({} host build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimised"
        }
    );
    // `cargo bench --bench runtime -- calls` runs one section (handy under
    // a profiler); no argument runs them all. Cargo's own `--bench` is ignored.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    if wanted("cache") {
        compile_vs_cache(dir.path()).await;
    }
    if wanted("calls") {
        calls(dir.path()).await;
    }
    if wanted("plugins") {
        side_by_side(dir.path()).await;
    }
    if wanted("start") {
        println!("\n== real binary, start to Probe ready (both plugins) ==");
        let cache = dir.path().join("cache-b");
        start_to_ready(dir.path(), "no cache", None).await;
        start_to_ready(dir.path(), "cold cache (compile + write)", Some(&cache)).await;
        start_to_ready(dir.path(), "warm cache", Some(&cache)).await;
        start_to_ready(dir.path(), "warm cache again", Some(&cache)).await;
    }
}
