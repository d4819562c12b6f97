//! Benchmarks a CSI driver over its socket, the way a CO loads it, and
//! prints tables. `--endpoint` points it at any driver (ours or a
//! reference driver, configured with `--param k=v` StorageClass parameters);
//! without it, it starts our own driver with local-dir and adds
//! start-to-ready time and resident memory.
//!
//! Two suites. `block`: raw block volumes (no mkfs), the driver's own
//! costs, on a scratch directory. `fs`: 1 GiB filesystem (mount) volumes in
//! each local-dir mode — image XFS, image ext4, btrfs subvolume — each mode
//! on a fresh loop-mounted root filesystem; with `--peer` the reference
//! driver (csi-driver-host-path) runs on the same root in the same run,
//! through the same client, and each row shows both and their ratio.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use wasmcsi::proto::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use wasmcsi::proto::*;
use wasmcsi_testkit::client::CsiClient;
use wasmcsi_testkit::{self as testkit, GIB, MIB};

#[derive(Parser)]
#[command(about = "Benchmark a CSI driver over its unix socket")]
struct Args {
    /// A running driver (unix:///path.sock). Without it, our own driver is started.
    #[arg(long)]
    endpoint: Option<String>,
    /// StorageClass parameters for CreateVolume (repeatable k=v).
    #[arg(long = "param", value_parser = parse_kv)]
    params: Vec<(String, String)>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Operations per measurement.
    #[arg(long, default_value_t = 400)]
    ops: usize,
    /// Volumes that exist during the second CreateVolume latency run.
    #[arg(long, default_value_t = 10_000)]
    prefill: usize,
    /// Volume size for created volumes.
    #[arg(long, default_value_t = MIB)]
    size: u64,
    /// What to measure: `block` (raw block volumes) and/or `fs` (filesystem
    /// volumes per local-dir mode).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Suite::Block, Suite::Fs])]
    suites: Vec<Suite>,
    /// Modes of the fs suite. With `--endpoint` they only pick the fs type
    /// asked for in the volume capability (xfs, ext4, none).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [FsMode::ImageXfs, FsMode::ImageExt4, FsMode::Subvolume]
    )]
    modes: Vec<FsMode>,
    /// Concurrent clients of the fs suite: each count is a row of its own
    /// (the stats row uses the first).
    #[arg(long, value_delimiter = ',', default_values_t = [4, 32])]
    fs_clients: Vec<usize>,
    /// How long each fs row runs, in seconds.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Size of the fs suite's volumes.
    #[arg(long, default_value_t = GIB)]
    fs_size: u64,
    /// Filesystem of the scratch root the image modes run on (subvolume
    /// mode always runs on btrfs).
    #[arg(long, value_enum, default_value_t = RootFs::Ext4)]
    image_root: RootFs,
    /// Also start the reference driver, `$WASMCSI_SHARED/tools/hostpathplugin`
    /// (default `../shared` from the repository root), on the same root and
    /// print both drivers' figures and the ratio (wasmcsi / host-path).
    #[arg(long)]
    peer: bool,
    /// Rows of the fs suite.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [FsRowKind::CreateDelete, FsRowKind::CreateExpandDelete, FsRowKind::Stats]
    )]
    fs_rows: Vec<FsRowKind>,
    /// With `--endpoint`: the driver's granted kubelet directory, where the
    /// stats row stages and publishes (without it there is no stats row).
    #[arg(long)]
    kubelet_dir: Option<PathBuf>,
    /// Keep the fs suite's driver logs in this directory (wasmcsi at
    /// RUST_LOG=debug, which logs every tool it runs).
    #[arg(long)]
    driver_logs: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    Block,
    Fs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FsMode {
    ImageXfs,
    ImageExt4,
    Subvolume,
}

impl FsMode {
    fn label(self) -> &'static str {
        match self {
            FsMode::ImageXfs => "image XFS",
            FsMode::ImageExt4 => "image ext4",
            FsMode::Subvolume => "subvolume",
        }
    }

    /// local-dir's `mode` setting.
    fn plugin_mode(self) -> &'static str {
        match self {
            FsMode::ImageXfs | FsMode::ImageExt4 => "image",
            FsMode::Subvolume => "subvolume",
        }
    }

    /// The fs type the volume capability asks for.
    fn fs_type(self) -> &'static str {
        match self {
            FsMode::ImageXfs => "xfs",
            FsMode::ImageExt4 => "ext4",
            FsMode::Subvolume => "",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FsRowKind {
    CreateDelete,
    CreateExpandDelete,
    Stats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RootFs {
    Ext4,
    Xfs,
    Btrfs,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not k=v"))
}

/// Raw block volumes: for local-dir they cost a sparse file and no mkfs,
/// so the figures show the driver, not mkfs.
fn block() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

struct Stats {
    samples: Vec<Duration>,
    elapsed: Duration,
}

impl Stats {
    fn row(&self, what: &str) {
        let mut s = self.samples.clone();
        s.sort();
        let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
        println!(
            "| {what:<44} | {:>9.0} | {:>9.2} | {:>9.2} | {:>6} |",
            s.len() as f64 / self.elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            s.len()
        );
    }
}

/// Runs `ops` calls of `op(i)` spread over `clients` concurrent tasks.
async fn measure<F, Fut>(clients: usize, ops: usize, op: F) -> Result<Stats>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = c;
            while i < ops {
                let t = Instant::now();
                op(i).await?;
                samples.push(t.elapsed());
                i += clients;
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await??);
    }
    Ok(Stats {
        samples,
        elapsed: started.elapsed(),
    })
}

struct OwnDriver {
    child: Child,
    scratch: tempfile::TempDir,
    endpoint: String,
}

impl Drop for OwnDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        testkit::teardown(self.scratch.path());
    }
}

impl OwnDriver {
    fn start() -> Result<OwnDriver> {
        let scratch = tempfile::Builder::new().prefix("wasmcsi-bench").tempdir()?;
        Self::start_in(scratch)
    }

    /// Starts the driver on `scratch` (its plugin cache lives there too).
    fn start_in(scratch: tempfile::TempDir) -> Result<OwnDriver> {
        let endpoint = format!("unix://{}/csi.sock", scratch.path().display());
        let dir = scratch.path();
        let child = spawn_wasmcsi(&WasmcsiSetup {
            endpoint: &endpoint,
            root: &dir.join("root"),
            kubelet: &dir.join("kubelet"),
            cache: &dir.join("cache"),
            mode: "image",
            log: None,
        })?;
        Ok(OwnDriver {
            child,
            scratch,
            endpoint,
        })
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id()).unwrap_or(f64::NAN)
    }

    fn kubelet(&self) -> PathBuf {
        self.scratch.path().join("kubelet")
    }
}

async fn ready(endpoint: &str) -> Result<(CsiClient, Duration)> {
    let t = Instant::now();
    let client = CsiClient::wait_ready(endpoint, Duration::from_secs(120)).await?;
    Ok((client, t.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.suites.contains(&Suite::Block) {
        block_suite(&args).await?;
    }
    if args.suites.contains(&Suite::Fs) {
        if args.suites.contains(&Suite::Block) {
            println!();
        }
        fs_suite(&args).await?;
    }
    Ok(())
}

/// Raw block volumes, 1 MiB by default: the driver's own costs.
async fn block_suite(args: &Args) -> Result<()> {
    // Our own driver starts twice: cold (compiles the plugin into an empty
    // cache), then warm (loads it from the cache); the warm one is measured.
    let mut cold_start = None;
    let own = match &args.endpoint {
        Some(_) => None,
        None => {
            let mut cold = OwnDriver::start()?;
            cold_start = Some(ready(&cold.endpoint).await?.1);
            let _ = cold.child.kill();
            let _ = cold.child.wait();
            let scratch = tempfile::Builder::new().prefix("wasmcsi-bench").tempdir()?;
            std::fs::rename(
                cold.scratch.path().join("cache"),
                scratch.path().join("cache"),
            )?;
            drop(cold);
            Some(OwnDriver::start_in(scratch)?)
        }
    };
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| own.as_ref().map(|d| d.endpoint.clone()).unwrap_or_default());
    let (client, start_to_ready) = ready(&endpoint).await?;
    let params: HashMap<String, String> = args.params.iter().cloned().collect();

    println!(
        "driver: {endpoint}  clients: {}  ops: {}  params: {params:?}",
        args.clients, args.ops
    );
    println!(
        "| {:<44} | {:>9} | {:>9} | {:>9} | {:>6} |",
        "measure", "ops/s", "p50 ms", "p99 ms", "n"
    );
    println!(
        "|{}|{}|{}|{}|{}|",
        "-".repeat(46),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(8)
    );

    let create = {
        let (client, params, size) = (client.clone(), params.clone(), args.size);
        move |name: String| {
            let (mut client, params) = (client.clone(), params.clone());
            async move {
                let req = CreateVolumeRequest {
                    name,
                    capacity_range: Some(CapacityRange {
                        required_bytes: size as i64,
                        limit_bytes: 0,
                    }),
                    volume_capabilities: vec![block()],
                    parameters: params,
                    ..Default::default()
                };
                Ok::<_, anyhow::Error>(
                    client
                        .controller
                        .create_volume(req)
                        .await?
                        .into_inner()
                        .volume
                        .context("no volume")?
                        .volume_id,
                )
            }
        }
    };
    let delete = {
        let client = client.clone();
        move |volume_id: String| {
            let mut client = client.clone();
            async move {
                client
                    .controller
                    .delete_volume(DeleteVolumeRequest {
                        volume_id,
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok(())
            }
        }
    };

    // The floor: a gRPC round trip the driver answers itself (Probe), then
    // the lightest call that reaches the plugin (GetCapacity: one instance,
    // one statfs). The difference is what a plugin call adds over the wire.
    let probe = {
        let client = client.clone();
        move |_| {
            let mut client = client.clone();
            async move {
                client.identity.probe(ProbeRequest {}).await?;
                anyhow::Ok(())
            }
        }
    };
    measure(args.clients, args.ops, probe)
        .await?
        .row("Probe (round trip, no plugin)");
    let capacity = {
        let (client, params) = (client.clone(), params.clone());
        move |_| {
            let (mut client, parameters) = (client.clone(), params.clone());
            async move {
                client
                    .controller
                    .get_capacity(GetCapacityRequest {
                        volume_capabilities: vec![block()],
                        parameters,
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok(())
            }
        }
    };
    measure(args.clients, args.ops, capacity)
        .await?
        .row("GetCapacity (one plugin call)");

    // CreateVolume + DeleteVolume pairs.
    let pair = {
        let (create, delete) = (create.clone(), delete.clone());
        move |i: usize| {
            let (create, delete) = (create.clone(), delete.clone());
            async move { delete(create(format!("bench-pair-{i}")).await?).await }
        }
    };
    let sampler = own.as_ref().map(|d| RssSampler::start(d.child.id()));
    let idle_rss = own.as_ref().map(|d| d.rss_mib());
    measure(args.clients, args.ops, pair)
        .await?
        .row("CreateVolume+DeleteVolume (pair)");
    let load_rss = sampler.map(RssSampler::stop).unwrap_or(f64::NAN);

    // ControllerExpandVolume on a set of volumes, growing each time.
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..args.clients {
            ids.push(create(format!("bench-expand-{i}")).await?);
        }
        ids
    };
    let expand = {
        let (client, ids, size) = (client.clone(), Arc::new(ids.clone()), args.size);
        // Every call asks for more than any before it: each one really grows.
        let grown = Arc::new(std::sync::atomic::AtomicU64::new(0));
        move |i: usize| {
            let (mut client, ids) = (client.clone(), ids.clone());
            let step = grown.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move {
                let req = ControllerExpandVolumeRequest {
                    volume_id: ids[i % ids.len()].clone(),
                    capacity_range: Some(CapacityRange {
                        required_bytes: (size + step * MIB) as i64,
                        limit_bytes: 0,
                    }),
                    ..Default::default()
                };
                client.controller.controller_expand_volume(req).await?;
                anyhow::Ok(())
            }
        }
    };
    measure(args.clients, args.ops, expand.clone())
        .await?
        .row("ControllerExpandVolume");

    // NodeGetVolumeStats on a staged, published volume.
    if let Some(d) = &own {
        let id = ids[0].clone();
        let (staging, target) = (
            d.kubelet().join("staging/b"),
            d.kubelet().join("pods/b/dev"),
        );
        std::fs::create_dir_all(&staging)?;
        let mut c = client.clone();
        c.node
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(block()),
                ..Default::default()
            })
            .await?;
        c.node
            .node_publish_volume(NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(block()),
                ..Default::default()
            })
            .await?;
        let stats = {
            let (client, id, target) = (client.clone(), id.clone(), target.clone());
            move |_| {
                let (mut client, id, target) = (client.clone(), id.clone(), target.clone());
                async move {
                    client
                        .node
                        .node_get_volume_stats(NodeGetVolumeStatsRequest {
                            volume_id: id,
                            volume_path: target.display().to_string(),
                            ..Default::default()
                        })
                        .await?;
                    anyhow::Ok(())
                }
            }
        };
        measure(args.clients, args.ops, stats)
            .await?
            .row("NodeGetVolumeStats");
        unpublish_all(&mut c, &id, &staging, &target).await?;
    }

    // Latency with few volumes (10, as the target is stated) and with many:
    // equal figures mean no path's cost grows with the volume count.
    let mut existing = ids.len();
    while existing < 10 {
        create(format!("bench-ten-{existing}")).await?;
        existing += 1;
    }
    at_scale(
        existing,
        "few",
        create.clone(),
        delete.clone(),
        expand.clone(),
    )
    .await?;
    let fill = measure(args.clients, args.prefill, {
        let create = create.clone();
        move |i| {
            let create = create.clone();
            async move { create(format!("bench-fill-{i}")).await.map(drop) }
        }
    })
    .await?;
    fill.row(&format!("CreateVolume while filling to {}", args.prefill));
    at_scale(existing + args.prefill, "many", create, delete, expand).await?;

    if let Some(d) = &own {
        println!();
        println!(
            "start-to-ready (spawn → Probe ready): cold cache {:.0} ms, warm cache {:.0} ms",
            cold_start.unwrap_or_default().as_secs_f64() * 1e3,
            start_to_ready.as_secs_f64() * 1e3
        );
        println!(
            "RSS idle: {:.1} MiB, under load (max): {:.1} MiB, now: {:.1} MiB",
            idle_rss.unwrap_or(f64::NAN),
            load_rss,
            d.rss_mib()
        );
    }
    Ok(())
}

/// One client's CreateVolume, DeleteVolume and ControllerExpandVolume
/// latency with `existing` volumes present (each run adds and removes its own).
async fn at_scale<C, CF, D, DF, X, XF>(
    existing: usize,
    tag: &'static str,
    create: C,
    delete: D,
    expand: X,
) -> Result<()>
where
    C: Fn(String) -> CF + Send + Sync + 'static,
    CF: std::future::Future<Output = Result<String>> + Send,
    D: Fn(String) -> DF + Send + Sync + 'static,
    DF: std::future::Future<Output = Result<()>> + Send,
    X: Fn(usize) -> XF + Send + Sync + 'static,
    XF: std::future::Future<Output = Result<()>> + Send,
{
    const RUNS: usize = 100;
    let made = Arc::new(std::sync::Mutex::new(vec![String::new(); RUNS]));
    let create = Arc::new(create);
    measure(1, RUNS, {
        let made = made.clone();
        move |i| {
            let (create, made) = (create.clone(), made.clone());
            async move {
                let id = create(format!("bench-{tag}-{i}")).await?;
                made.lock().unwrap()[i] = id;
                Ok(())
            }
        }
    })
    .await?
    .row(&format!("CreateVolume, {existing} volumes exist"));
    let delete = Arc::new(delete);
    measure(1, RUNS, move |i| {
        let (delete, made) = (delete.clone(), made.clone());
        async move {
            let id = made.lock().unwrap()[i].clone();
            delete(id).await
        }
    })
    .await?
    .row(&format!("DeleteVolume, {existing} volumes exist"));
    measure(1, RUNS, expand)
        .await?
        .row(&format!("ControllerExpandVolume, {existing} volumes exist"));
    Ok(())
}

async fn unpublish_all(c: &mut CsiClient, id: &str, staging: &Path, target: &Path) -> Result<()> {
    c.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.display().to_string(),
        })
        .await?;
    c.node
        .node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
        })
        .await?;
    Ok(())
}

/// How to start our driver.
struct WasmcsiSetup<'a> {
    endpoint: &'a str,
    root: &'a Path,
    kubelet: &'a Path,
    cache: &'a Path,
    /// local-dir's `mode` setting.
    mode: &'a str,
    /// Where its stderr goes (at RUST_LOG=debug); none: discarded, at warn.
    log: Option<&'a Path>,
}

/// Starts `wasmcsi serve` (beside this binary) with `examples/local-dir.yaml`.
fn spawn_wasmcsi(setup: &WasmcsiSetup) -> Result<Child> {
    let repo = std::env::current_dir()?;
    let wasm = repo.join("target/wasm32-wasip2/release/local_dir.wasm");
    if !wasm.exists() {
        bail!(
            "{} missing: run from the repository root after `make plugins`",
            wasm.display()
        );
    }
    let bin = std::env::current_exe()?.with_file_name("wasmcsi");
    let stderr = match setup.log {
        Some(path) => Stdio::from(std::fs::File::create(path)?),
        None => Stdio::null(),
    };
    Command::new(&bin)
        .args(["serve", "--config"])
        .arg(repo.join("examples/local-dir.yaml"))
        .env("LOCAL_DIR_ROOT", setup.root)
        .env("LOCAL_DIR_WASM", &wasm)
        .env("LOCAL_DIR_MODE", setup.mode)
        .env("CSI_ENDPOINT", setup.endpoint)
        .env("NODE_ID", "bench-node")
        .env("KUBELET_DIR", setup.kubelet)
        .env("WASMCSI_CACHE_DIR", setup.cache)
        .env(
            "RUST_LOG",
            if setup.log.is_some() {
                "warn,wasmcsi=debug"
            } else {
                "warn"
            },
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// The reference driver: `$WASMCSI_SHARED/tools/hostpathplugin`, with
/// WASMCSI_SHARED defaulting to `../shared` from the repository root.
fn hostpath_bin() -> Result<PathBuf> {
    let shared = match std::env::var_os("WASMCSI_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir()?.join("../shared"),
    };
    let bin = shared.join("tools/hostpathplugin");
    if !bin.exists() {
        bail!(
            "--peer: the reference driver {} is missing (set WASMCSI_SHARED to the directory \
             holding tools/hostpathplugin)",
            bin.display()
        );
    }
    Ok(bin)
}

fn rss_mib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// CPU seconds a process has used: user + system time of all its threads
/// (`utime`, `stime`) and of its children it has waited for (`cutime`,
/// `cstime`: mkfs, losetup and the like), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not. After
    // ") " come state (field 3) onwards, so utime (14) is index 11.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// The largest RSS of one process while it runs, sampled every 20 ms.
struct RssSampler {
    max: Arc<std::sync::Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let max = Arc::new(std::sync::Mutex::new(f64::NAN));
        let task = tokio::spawn({
            let max = max.clone();
            async move {
                loop {
                    if let Some(mib) = rss_mib(pid) {
                        let mut max = max.lock().unwrap();
                        *max = max.max(mib);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        RssSampler { max, task }
    }

    fn stop(self) -> f64 {
        self.task.abort();
        let max = *self.max.lock().unwrap();
        max
    }
}

// ---------------------------------------------------------------------------
// The fs suite: filesystem volumes, per mode, optionally beside host-path.

/// Sparse size of each scratch root filesystem.
const ROOT_BYTES: u64 = 32 * GIB;

/// A scratch directory whose mounts and loop devices go with it.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Result<Scratch> {
        Ok(Scratch(
            tempfile::Builder::new()
                .prefix("wasmcsi-bench-fs")
                .tempdir()?,
        ))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        release(self.path());
    }
}

/// Unmounts and detaches everything under `dir`. Twice: a root filesystem
/// stays busy until the loop devices of the images inside it are detached.
fn release(dir: &Path) {
    testkit::teardown(dir);
    testkit::teardown(dir);
}

/// Makes a `fs` filesystem on a sparse image and loop-mounts it on `mnt`.
fn mount_root(fs: RootFs, image: &Path, mnt: &Path) -> Result<()> {
    std::fs::create_dir_all(mnt)?;
    if fs == RootFs::Btrfs {
        testkit::mount_btrfs(image, mnt, ROOT_BYTES)?;
        // Quotas on from the start, so both drivers meet the same root
        // (local-dir would turn them on at its first volume).
        return run("btrfs", &["quota", "enable", &mnt.display().to_string()]);
    }
    std::fs::File::create(image)?.set_len(ROOT_BYTES)?;
    std::fs::create_dir_all(mnt)?;
    let image_s = image.display().to_string();
    match fs {
        RootFs::Xfs => run("mkfs.xfs", &["-q", "-f", &image_s])?,
        _ => run("mkfs.ext4", &["-q", "-F", &image_s])?,
    }
    run(
        "mount",
        &["-o", "loop", &image_s, &mnt.display().to_string()],
    )
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One driver under test.
struct Driver {
    name: &'static str,
    /// None when it was started by someone else (`--endpoint`).
    child: Option<Child>,
    client: CsiClient,
    /// Its granted kubelet directory, for the stats row (None: no stats row).
    kubelet: Option<PathBuf>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // Only the process this run started, by its pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Driver {
    /// Takes ownership of a spawned driver, then waits until it is ready.
    async fn started(
        name: &'static str,
        mut child: Child,
        endpoint: &str,
        kubelet: PathBuf,
    ) -> Result<Driver> {
        let client = match CsiClient::wait_ready(endpoint, Duration::from_secs(60)).await {
            Ok(client) => client,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.context(format!("{name} did not become ready")));
            }
        };
        Ok(Driver {
            name,
            child: Some(child),
            client,
            kubelet: Some(kubelet),
        })
    }
}

fn mount_cap(fs_type: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// What one fs-suite call needs to know.
#[derive(Clone)]
struct FsCall {
    client: CsiClient,
    params: HashMap<String, String>,
    fs_type: &'static str,
    size: u64,
}

impl FsCall {
    async fn create(&self, name: String) -> Result<String> {
        let req = CreateVolumeRequest {
            name,
            capacity_range: Some(CapacityRange {
                required_bytes: self.size as i64,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap(self.fs_type)],
            parameters: self.params.clone(),
            ..Default::default()
        };
        Ok(self
            .client
            .clone()
            .controller
            .create_volume(req)
            .await?
            .into_inner()
            .volume
            .context("no volume")?
            .volume_id)
    }

    async fn expand(&self, volume_id: String, bytes: u64) -> Result<()> {
        let req = ControllerExpandVolumeRequest {
            volume_id,
            capacity_range: Some(CapacityRange {
                required_bytes: bytes as i64,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap(self.fs_type)),
            ..Default::default()
        };
        self.client
            .clone()
            .controller
            .controller_expand_volume(req)
            .await?;
        Ok(())
    }

    async fn delete(&self, volume_id: String) -> Result<()> {
        self.client
            .clone()
            .controller
            .delete_volume(DeleteVolumeRequest {
                volume_id,
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

/// Samples of a timed run: each cycle, and each step within it.
struct Timed {
    cycles: Vec<Duration>,
    steps: Vec<(&'static str, Vec<Duration>)>,
    elapsed: Duration,
    /// The driver's CPU time over the run (None: not our child).
    cpu_seconds: Option<f64>,
}

impl Timed {
    fn rate(&self) -> f64 {
        self.cycles.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(samples: &[Duration], p: f64) -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        let mut s = samples.to_vec();
        s.sort();
        s[((s.len() as f64 * p) as usize).min(s.len() - 1)].as_secs_f64() * 1e3
    }

    fn p50(&self) -> f64 {
        Self::pct(&self.cycles, 0.50)
    }

    /// The driver's CPU (user + system, threads and children) per cycle.
    fn cpu_ms_per_cycle(&self) -> f64 {
        match self.cpu_seconds {
            Some(s) if !self.cycles.is_empty() => s * 1e3 / self.cycles.len() as f64,
            _ => f64::NAN,
        }
    }

    fn p99(&self) -> f64 {
        Self::pct(&self.cycles, 0.99)
    }

    /// "create 10.2 / delete 3.1 ms" (p50 of each step).
    fn steps_p50(&self) -> String {
        let parts: Vec<String> = self
            .steps
            .iter()
            .map(|(name, s)| format!("{name} {:.1}", Self::pct(s, 0.5)))
            .collect();
        format!("{} ms", parts.join(" / "))
    }
}

/// Runs `op(client, i)` on `clients` concurrent tasks, each repeating it
/// until `duration` has passed; `op` answers the time of each of its steps.
async fn measure_for<F, Fut>(clients: usize, duration: Duration, op: F) -> Result<Timed>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<(&'static str, Duration)>>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = 0;
            while started.elapsed() < duration {
                let t = Instant::now();
                let steps = op(c, i).await?;
                samples.push((t.elapsed(), steps));
                i += 1;
            }
            anyhow::Ok(samples)
        }));
    }
    let mut timed = Timed {
        cycles: Vec::new(),
        steps: Vec::new(),
        elapsed: Duration::ZERO,
        cpu_seconds: None,
    };
    for t in tasks {
        for (cycle, steps) in t.await?? {
            timed.cycles.push(cycle);
            for (name, d) in steps {
                match timed.steps.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(d),
                    None => timed.steps.push((name, vec![d])),
                }
            }
        }
    }
    timed.elapsed = started.elapsed();
    Ok(timed)
}

/// Times one step of a cycle.
async fn step<T>(
    steps: &mut Vec<(&'static str, Duration)>,
    name: &'static str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let t = Instant::now();
    let out = fut.await?;
    steps.push((name, t.elapsed()));
    Ok(out)
}

/// One row of the fs suite: a measure, per driver.
struct FsRow {
    mode: FsMode,
    measure: &'static str,
    clients: usize,
    by_driver: Vec<(&'static str, Timed)>,
}

/// The fs rows of one mode against each driver in turn (row by row, so
/// both drivers meet the root in the same state); also each driver's
/// largest RSS over them.
async fn fs_rows(
    args: &Args,
    mode: FsMode,
    drivers: &[Driver],
    tag: &str,
) -> Result<(Vec<FsRow>, Vec<(&'static str, f64)>)> {
    let duration = Duration::from_secs_f64(args.seconds);
    let params: HashMap<String, String> = args.params.iter().cloned().collect();
    let mut rss: Vec<(&'static str, f64)> = drivers.iter().map(|d| (d.name, f64::NAN)).collect();
    let mut rows = Vec::new();
    type Cycle = fn(
        FsCall,
        String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<(&'static str, Duration)>>> + Send>,
    >;
    let cycles: [(FsRowKind, &'static str, &'static str, Cycle); 2] = [
        (
            FsRowKind::CreateDelete,
            "Create+Delete",
            "cd",
            |call, name| {
                Box::pin(async move {
                    let mut steps = Vec::new();
                    let id = step(&mut steps, "create", call.create(name)).await?;
                    step(&mut steps, "delete", call.delete(id)).await?;
                    Ok(steps)
                })
            },
        ),
        (
            FsRowKind::CreateExpandDelete,
            "Create+ControllerExpand+Delete",
            "ced",
            |call, name| {
                Box::pin(async move {
                    let mut steps = Vec::new();
                    let id = step(&mut steps, "create", call.create(name)).await?;
                    let bigger = call.size * 2;
                    step(&mut steps, "expand", call.expand(id.clone(), bigger)).await?;
                    step(&mut steps, "delete", call.delete(id)).await?;
                    Ok(steps)
                })
            },
        ),
    ];
    let runs = cycles
        .into_iter()
        .filter(|(kind, ..)| args.fs_rows.contains(kind))
        .flat_map(|c| args.fs_clients.iter().map(move |&clients| (c, clients)));
    for ((_, measure, short, cycle), clients) in runs {
        let mut by_driver = Vec::new();
        for (n, d) in drivers.iter().enumerate() {
            let call = FsCall {
                client: d.client.clone(),
                params: params.clone(),
                fs_type: mode.fs_type(),
                size: args.fs_size,
            };
            let sampler = d.child.as_ref().map(|c| RssSampler::start(c.id()));
            let prefix = format!("bench-{tag}-{short}{clients}");
            let cpu_before = d.child.as_ref().and_then(|c| cpu_seconds(c.id()));
            let mut timed = measure_for(clients, duration, move |c, i| {
                cycle(call.clone(), format!("{prefix}-{c}-{i}"))
            })
            .await
            .with_context(|| format!("{} {}: {measure}", d.name, mode.label()))?;
            let cpu_after = d.child.as_ref().and_then(|c| cpu_seconds(c.id()));
            if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
                timed.cpu_seconds = Some(after - before);
            }
            if let Some(s) = sampler {
                rss[n].1 = rss[n].1.max(s.stop());
            }
            eprintln!(
                "  {:<10} {:<11} {measure:<27} {clients:>3} cl {:>7.1}/s  p50 {:>7.1} ms  p99 {:>7.1} ms  cpu {:>5.2} ms  n {:>5}  ({})",
                d.name,
                mode.label(),
                timed.rate(),
                timed.p50(),
                timed.p99(),
                timed.cpu_ms_per_cycle(),
                timed.cycles.len(),
                timed.steps_p50()
            );
            by_driver.push((d.name, timed));
        }
        rows.push(FsRow {
            mode,
            measure,
            clients,
            by_driver,
        });
    }

    // NodeGetVolumeStats of a staged, published volume (what kubelet polls
    // for every volume, every minute).
    let stats_clients = args.fs_clients.first().copied().unwrap_or(4);
    if args.fs_rows.contains(&FsRowKind::Stats) && drivers.iter().all(|d| d.kubelet.is_some()) {
        let mut by_driver = Vec::new();
        for (n, d) in drivers.iter().enumerate() {
            let kubelet = d.kubelet.clone().unwrap_or_default();
            let call = FsCall {
                client: d.client.clone(),
                params: params.clone(),
                fs_type: mode.fs_type(),
                size: args.fs_size,
            };
            let id = call.create(format!("bench-{tag}-stats")).await?;
            let staging = kubelet.join("plugins/bench/globalmount");
            let target = kubelet.join("pods/bench/volumes/mount");
            std::fs::create_dir_all(&staging)?;
            std::fs::create_dir_all(target.parent().unwrap_or(&kubelet))?;
            let mut c = d.client.clone();
            c.node
                .node_stage_volume(NodeStageVolumeRequest {
                    volume_id: id.clone(),
                    staging_target_path: staging.display().to_string(),
                    volume_capability: Some(mount_cap(mode.fs_type())),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("{}: staging for the stats row", d.name))?;
            c.node
                .node_publish_volume(NodePublishVolumeRequest {
                    volume_id: id.clone(),
                    staging_target_path: staging.display().to_string(),
                    target_path: target.display().to_string(),
                    volume_capability: Some(mount_cap(mode.fs_type())),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("{}: publishing for the stats row", d.name))?;
            let sampler = d.child.as_ref().map(|c| RssSampler::start(c.id()));
            let stats = {
                let (client, id, target) = (d.client.clone(), id.clone(), target.clone());
                move |_, _| {
                    let (mut client, id, target) = (client.clone(), id.clone(), target.clone());
                    async move {
                        client
                            .node
                            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                                volume_id: id,
                                volume_path: target.display().to_string(),
                                ..Default::default()
                            })
                            .await?;
                        anyhow::Ok(Vec::new())
                    }
                }
            };
            let timed = measure_for(stats_clients, duration, stats).await;
            if let Some(s) = sampler {
                rss[n].1 = rss[n].1.max(s.stop());
            }
            unpublish_all(&mut c, &id, &staging, &target).await?;
            call.delete(id).await?;
            let timed = timed.with_context(|| format!("{}: NodeGetVolumeStats", d.name))?;
            eprintln!(
                "  {:<10} {:<11} {:<31} {:>7.1}/s  p50 {:>7.1} ms  p99 {:>7.1} ms  n {:>5}",
                d.name,
                mode.label(),
                "NodeGetVolumeStats",
                timed.rate(),
                timed.p50(),
                timed.p99(),
                timed.cycles.len(),
            );
            by_driver.push((d.name, timed));
        }
        rows.push(FsRow {
            mode,
            measure: "NodeGetVolumeStats",
            clients: stats_clients,
            by_driver,
        });
    }
    Ok((rows, rss))
}

async fn fs_suite(args: &Args) -> Result<()> {
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    let root_note;
    if let Some(endpoint) = &args.endpoint {
        root_note = "the driver's own".to_string();
        let (client, _) = ready(endpoint).await?;
        for &mode in &args.modes {
            let driver = Driver {
                name: "driver",
                child: None,
                client: client.clone(),
                kubelet: args.kubelet_dir.clone(),
            };
            let tag = format!("{:?}", mode).to_lowercase();
            let (r, _) = fs_rows(args, mode, std::slice::from_ref(&driver), &tag).await?;
            rows.extend(r);
        }
    } else {
        let peer = if args.peer {
            Some(hostpath_bin()?)
        } else {
            None
        };
        root_note = format!(
            "image modes on {}, subvolume on btrfs; each mode on a fresh {} GiB sparse \
             loop-mounted filesystem{}",
            format!("{:?}", args.image_root).to_lowercase(),
            ROOT_BYTES / GIB,
            if peer.is_some() {
                ", shared by both drivers"
            } else {
                ""
            }
        );
        let scratch = Scratch::new()?;
        let cache = scratch.path().join("cache");
        // Compile the plugin into the cache first, so that no mode's driver
        // starts cold (compiling leaves the RSS higher for good).
        {
            let warm = scratch.path().join("warm");
            let endpoint = format!("unix://{}/wasmcsi.sock", warm.display());
            std::fs::create_dir_all(&warm)?;
            let child = spawn_wasmcsi(&WasmcsiSetup {
                endpoint: &endpoint,
                root: &warm.join("root"),
                kubelet: &warm.join("kubelet"),
                cache: &cache,
                mode: "image",
                log: None,
            })?;
            drop(Driver::started("wasmcsi", child, &endpoint, warm.join("kubelet")).await?);
        }
        for (n, &mode) in args.modes.iter().enumerate() {
            let tag = format!("{:?}", mode).to_lowercase();
            let base = scratch.path().join(format!("{n}-{tag}"));
            let mnt = base.join("root");
            let root_fs = match mode {
                FsMode::Subvolume => RootFs::Btrfs,
                _ => args.image_root,
            };
            mount_root(root_fs, &base.join("root.img"), &mnt)
                .with_context(|| format!("making the {root_fs:?} root for {}", mode.label()))?;
            let result = async {
                let mut drivers = Vec::new();
                let log = |name: &str| {
                    args.driver_logs
                        .as_ref()
                        .map(|d| d.join(format!("{tag}-{name}.log")))
                };
                if let Some(dir) = &args.driver_logs {
                    std::fs::create_dir_all(dir)?;
                }
                let endpoint = format!("unix://{}/wasmcsi.sock", base.display());
                let kubelet = base.join("kubelet-wasmcsi");
                let wasmcsi_log = log("wasmcsi");
                let child = spawn_wasmcsi(&WasmcsiSetup {
                    endpoint: &endpoint,
                    root: &mnt.join("local-dir"),
                    kubelet: &kubelet,
                    cache: &cache,
                    mode: mode.plugin_mode(),
                    log: wasmcsi_log.as_deref(),
                })?;
                drivers.push(Driver::started("wasmcsi", child, &endpoint, kubelet).await?);
                if let Some(bin) = &peer {
                    let endpoint = format!("unix://{}/hostpath.sock", base.display());
                    let state = mnt.join("hostpath");
                    std::fs::create_dir_all(&state)?;
                    let stderr = match log("hostpath") {
                        Some(path) => Stdio::from(std::fs::File::create(path)?),
                        None => Stdio::null(),
                    };
                    let child = Command::new(bin)
                        .arg("--drivername=hostpath.csi.k8s.io")
                        .arg("--nodeid=bench-node")
                        .arg(format!("--endpoint={endpoint}"))
                        .arg(format!("--statedir={}", state.display()))
                        .stdout(Stdio::null())
                        .stderr(stderr)
                        .spawn()
                        .with_context(|| format!("starting {}", bin.display()))?;
                    let kubelet = base.join("kubelet-hostpath");
                    drivers.push(Driver::started("host-path", child, &endpoint, kubelet).await?);
                }
                fs_rows(args, mode, &drivers, &tag).await
            }
            .await;
            // The drivers are gone (dropped above); now the root.
            release(&base);
            let (r, m) = result?;
            rows.extend(r);
            rss.push((mode, m));
        }
        drop(scratch);
    }

    println!(
        "filesystem volumes: {} GiB mount volumes, {} s per row; root: {root_note}",
        args.fs_size / GIB,
        args.seconds
    );
    println!(
        "cycles/s, p50 and p99 in ms, cpu: the driver's user + system ms per cycle \
         (threads and children included)"
    );
    let drivers: Vec<&str> = rows
        .first()
        .map(|r| r.by_driver.iter().map(|(name, _)| *name).collect())
        .unwrap_or_default();
    let mut header = format!("| {:<10} | {:<26} | {:>7} |", "mode", "measure", "clients");
    let mut rule = format!("|{}|{}|{}|", "-".repeat(12), "-".repeat(28), "-".repeat(9));
    for name in &drivers {
        header += &format!(" {name:>9} | {:>7} | {:>7} | {:>6} |", "p50", "p99", "cpu");
        rule += &format!(
            "{}|{}|{}|{}|",
            "-".repeat(11),
            "-".repeat(9),
            "-".repeat(9),
            "-".repeat(8)
        );
    }
    if drivers.len() == 2 {
        header += &format!(" {:>6} | {:>9} |", "ratio", "cpu ratio");
        rule += &format!("{}|{}|", "-".repeat(8), "-".repeat(11));
    }
    println!("{header}");
    println!("{rule}");
    for row in &rows {
        let mut line = format!(
            "| {:<10} | {:<26} | {:>7} |",
            row.mode.label(),
            row.measure,
            row.clients
        );
        for (_, t) in &row.by_driver {
            line += &format!(
                " {:>9.1} | {:>7.2} | {:>7.2} | {:>6.2} |",
                t.rate(),
                t.p50(),
                t.p99(),
                t.cpu_ms_per_cycle()
            );
        }
        if let [(_, ours), (_, theirs)] = &row.by_driver[..] {
            line += &format!(
                " {:>5.2}× | {:>8.2}× |",
                ours.rate() / theirs.rate(),
                ours.cpu_ms_per_cycle() / theirs.cpu_ms_per_cycle()
            );
        }
        println!("{line}");
    }
    println!();
    println!("p50 of each step:");
    for row in rows.iter().filter(|r| !r.by_driver[0].1.steps.is_empty()) {
        for (name, t) in &row.by_driver {
            println!(
                "  {:<10} {:<26} {:>3} cl {:<9} {}",
                row.mode.label(),
                row.measure,
                row.clients,
                name,
                t.steps_p50()
            );
        }
    }
    if !rss.is_empty() {
        println!();
        println!("RSS under load (max over the mode's rows, the driver's own process):");
        for (mode, m) in &rss {
            let parts: Vec<String> = m
                .iter()
                .map(|(name, mib)| format!("{name} {mib:.1} MiB"))
                .collect();
            println!("  {:<10} {}", mode.label(), parts.join(", "));
        }
    }
    Ok(())
}
