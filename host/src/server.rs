//! Start-up and serving: load every plugin, then serve the configured CSI
//! services on the unix socket until SIGTERM or SIGINT.

mod authority;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::config::{socket_path, Config, Overrides, Service};
use crate::csi::controller::ControllerService;
use crate::csi::group_controller::GroupControllerService;
use crate::csi::identity::IdentityService;
use crate::csi::node::NodeService;
use crate::csi::Driver;
use crate::dispatch::Dispatcher;
use crate::proto::controller_server::ControllerServer;
use crate::proto::group_controller_server::GroupControllerServer;
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer;
use crate::runtime::reload::Watcher;
use crate::runtime::{Loader, Plugin};

/// Loads the plugins a config names, on one engine.
pub async fn load_plugins(config: &Config) -> Result<Vec<Arc<Plugin>>> {
    Loader::new(config)?.load_all(config).await
}

/// Serves a config without watching anything.
pub async fn serve(config: Config) -> Result<()> {
    let loader = Arc::new(Loader::new(&config)?);
    let plugins = loader.load_all(&config).await?;
    run(config, plugins, |_| {}).await
}

/// Serves the config at `path`, reloading plugins when it or their `.wasm`
/// files change (see `runtime::reload`).
pub async fn serve_watching(path: PathBuf, overrides: Overrides) -> Result<()> {
    let config = Config::load(&path, &overrides)?;
    let loader = Arc::new(Loader::new(&config)?);
    let plugins = loader.load_all(&config).await?;
    let interval = config.runtime.watch_interval_ms;
    let watcher = Watcher::new(loader, path, overrides, config.clone(), &plugins);
    run(config, plugins, move |driver| {
        if interval == 0 {
            return;
        }
        let driver = driver.clone();
        tokio::spawn(
            watcher.run(std::time::Duration::from_millis(interval), move |plugins| {
                driver.dispatch.replace(plugins)
            }),
        );
    })
    .await
}

async fn run(
    config: Config,
    plugins: Vec<Arc<Plugin>>,
    start_watching: impl FnOnce(&Arc<Driver>),
) -> Result<()> {
    let socket = socket_path(&config.driver.endpoint)?;
    let listener = bind(&socket)?;
    let driver = Driver::new(config, Dispatcher::new(plugins));
    start_watching(&driver);
    let services: Vec<&str> = [(Service::Controller, "controller"), (Service::Node, "node")]
        .iter()
        .filter(|(s, _)| driver.runs(*s))
        .map(|(_, n)| *n)
        .collect();
    tracing::info!(
        endpoint = %socket.display(),
        driver = %driver.config.driver.name,
        node = %driver.node_id(),
        services = ?services,
        version = crate::VERSION,
        "serving CSI"
    );
    let controller = driver
        .runs(Service::Controller)
        .then(|| ControllerServer::new(ControllerService(driver.clone())));
    let group_controller = driver
        .runs(Service::Controller)
        .then(|| GroupControllerServer::new(GroupControllerService(driver.clone())));
    let node = driver
        .runs(Service::Node)
        .then(|| NodeServer::new(NodeService(driver.clone())));
    let stopping = Arc::new(tokio::sync::Notify::new());
    let serving = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService(driver.clone())))
        .add_optional_service(controller)
        .add_optional_service(group_controller)
        .add_optional_service(node)
        .serve_with_incoming_shutdown(
            // Clients may name the socket as :authority (see `authority`).
            UnixListenerStream::new(listener).map(|conn| conn.map(authority::AnyAuthority::new)),
            {
                let stopping = stopping.clone();
                async move {
                    shutdown_signal().await;
                    stopping.notify_one();
                }
            },
        );
    // Graceful shutdown alone would wait for the sidecars to hang up, which
    // they never do: finish the calls in flight, then go.
    let result = tokio::select! {
        result = serving => result,
        () = async {
            stopping.notified().await;
            drain(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    result.context("serving CSI")
}

/// How long shutdown waits for calls in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

async fn drain(grace: std::time::Duration) {
    let started = std::time::Instant::now();
    while crate::csi::in_flight() > 0 {
        if started.elapsed() > grace {
            tracing::warn!(
                in_flight = crate::csi::in_flight(),
                "calls still running at shutdown"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Binds the socket, replacing a stale one but never a live one.
fn bind(socket: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", socket.display());
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!("{} is in use by a running process", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
