//! The `wasmcsi` command: serve CSI, check a config, print the version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use wasmcsi::config::{Config, Overrides, Service};

#[derive(Parser)]
#[command(name = "wasmcsi", version = wasmcsi::VERSION, about = "CSI driver with sandboxed WebAssembly storage plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CSI services on a unix socket.
    Serve {
        /// Driver config (YAML); ${VAR} and ${VAR:-default} are expanded.
        #[arg(long)]
        config: PathBuf,
        /// Overrides driver.endpoint, e.g. unix:///csi/csi.sock.
        #[arg(long)]
        endpoint: Option<String>,
        /// Overrides driver.nodeId.
        #[arg(long)]
        node_id: Option<String>,
        /// Overrides driver.services: controller, node or controller,node.
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<Service>>,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Serve Prometheus /metrics and /healthz on this address (off when unset).
        #[arg(long)]
        metrics_address: Option<std::net::SocketAddr>,
    },
    /// Check a config file and the plugins it names, then exit.
    ValidateConfig {
        #[arg(long)]
        config: PathBuf,
        /// Also compile and load every plugin.
        #[arg(long)]
        load_plugins: bool,
    },
    /// Work with plugins in OCI registries.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Publish a component as an OCI artifact (config
    /// application/vnd.wasm.config.v0+json, one application/wasm layer) and
    /// print the digest-pinned reference to put in a plugin's `source`.
    Push {
        /// The plugin's .wasm component.
        file: PathBuf,
        /// Where to: [oci://]registry/repository[:tag].
        reference: String,
        /// Credentials: a .dockerconfigjson (as a pull Secret holds).
        #[arg(long)]
        docker_config_json: Option<PathBuf>,
        /// PEM CA certificates trusted besides the system roots.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Speak plain HTTP to this registry (host[:port]); loopback
        /// registries fall back to it without this.
        #[arg(long)]
        insecure: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: container logs are files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.fmt_fields(wasmcsi::logfmt::TextFields).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("wasmcsi {}", wasmcsi::VERSION);
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Push {
                    file,
                    reference,
                    docker_config_json,
                    ca_file,
                    insecure,
                },
        } => {
            init_logging(LogFormat::Text);
            push(file, reference, docker_config_json, ca_file, insecure)
        }
        Command::ValidateConfig {
            config,
            load_plugins,
        } => {
            init_logging(LogFormat::Text);
            validate(&config, load_plugins)
        }
        Command::Serve {
            config,
            endpoint,
            node_id,
            services,
            log_format,
            metrics_address,
        } => {
            init_logging(log_format);
            let overrides = Overrides {
                endpoint,
                node_id,
                services,
            };
            runtime().and_then(|rt| {
                rt.block_on(async move {
                    if let Some(address) = metrics_address {
                        let listener = wasmcsi::metrics::bind(address).await?;
                        tokio::spawn(wasmcsi::metrics::serve(listener));
                    }
                    wasmcsi::server::serve_watching(config, overrides).await
                })
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmcsi: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn validate(path: &std::path::Path, load_plugins: bool) -> anyhow::Result<()> {
    let config = Config::load(path, &Overrides::default())?;
    if load_plugins {
        runtime()?.block_on(wasmcsi::server::load_plugins(&config))?;
    }
    println!(
        "{}: driver {} with plugins {}",
        path.display(),
        config.driver.name,
        config
            .plugins
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn push(
    file: PathBuf,
    reference: String,
    docker_config_json: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    insecure: bool,
) -> anyhow::Result<()> {
    let mut registries = wasmcsi::config::RegistriesConfig {
        docker_config_json,
        ca_file,
        ..Default::default()
    };
    if insecure {
        let text = reference.strip_prefix("oci://").unwrap_or(&reference);
        registries
            .insecure
            .push(text.split('/').next().unwrap_or_default().to_string());
    }
    let pinned =
        runtime()?.block_on(wasmcsi::runtime::oci::push(&file, &reference, &registries))?;
    println!("{pinned}");
    Ok(())
}
