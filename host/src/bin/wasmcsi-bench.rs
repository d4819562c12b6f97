//! Benchmarks a CSI driver over its socket, the way a CO loads it, and
//! prints a table. `--endpoint` points it at any driver (ours or a
//! reference driver, configured with `--param k=v` StorageClass parameters);
//! without it, it starts our own driver with local-dir on a scratch
//! directory and adds start-to-ready time and resident memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use wasmcsi::client::CsiClient;
use wasmcsi::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume};
use wasmcsi::proto::*;
use wasmcsi::testkit::{self, MIB};

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
        let repo = std::env::current_dir()?;
        let wasm = repo.join("target/wasm32-wasip2/release/local_dir.wasm");
        if !wasm.exists() {
            bail!(
                "{} missing: run from the repository root after `make plugins`",
                wasm.display()
            );
        }
        let endpoint = format!("unix://{}/csi.sock", scratch.path().display());
        let bin = std::env::current_exe()?.with_file_name("wasmcsi");
        let child = Command::new(&bin)
            .args(["serve", "--config"])
            .arg(repo.join("examples/local-dir.yaml"))
            .env("LOCAL_DIR_ROOT", scratch.path().join("root"))
            .env("LOCAL_DIR_WASM", &wasm)
            .env("CSI_ENDPOINT", &endpoint)
            .env("NODE_ID", "bench-node")
            .env("KUBELET_DIR", scratch.path().join("kubelet"))
            .env("WASMCSI_CACHE_DIR", scratch.path().join("cache"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(OwnDriver {
            child,
            scratch,
            endpoint,
        })
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    fn kubelet(&self) -> PathBuf {
        self.scratch.path().join("kubelet")
    }
}

async fn ready(endpoint: &str) -> Result<(CsiClient, Duration)> {
    let t = Instant::now();
    let mut client = CsiClient::wait_for(endpoint, Duration::from_secs(120)).await?;
    while client
        .identity
        .probe(ProbeRequest {})
        .await?
        .into_inner()
        .ready
        != Some(true)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((client, t.elapsed()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
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
    let load_rss = Arc::new(std::sync::Mutex::new(0f64));
    let sampler = own.as_ref().map(|d| {
        let (pid, load_rss) = (d.child.id(), load_rss.clone());
        tokio::spawn(async move {
            loop {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                {
                    let mut max = load_rss.lock().unwrap();
                    *max = max.max(kb / 1024.0);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let idle_rss = own.as_ref().map(|d| d.rss_mib());
    measure(args.clients, args.ops, pair)
        .await?
        .row("CreateVolume+DeleteVolume (pair)");
    if let Some(s) = sampler {
        s.abort();
    }

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
            *load_rss.lock().unwrap(),
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
