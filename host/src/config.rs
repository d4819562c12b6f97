//! The driver config: what a ConfigMap holds. Loading expands `${NAME}` and
//! `${NAME:-default}` from the environment inside the parsed values, then
//! validates every field so that a bad config fails at start with one
//! message naming the field.

pub mod env;
pub mod oci_source;

pub use crate::capabilities::http::{origin::Origin, HttpGrant};
pub use crate::capabilities::log::LogGrant;
pub use crate::capabilities::mount::MountGrant;
pub use crate::capabilities::quota::QuotaGrant;
pub use crate::capabilities::root::FsGrant;
pub use oci_source::OciSource;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub driver: DriverConfig,
    pub plugins: Vec<PluginConfig>,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// How plugins are compiled and kept current.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Directory of precompiled plugins, owned by the driver; unset: every
    /// start compiles from scratch.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// How often the config file and the `.wasm` files are checked for
    /// changes (hot reload); 0 turns watching off.
    #[serde(default = "default_watch_interval", deserialize_with = "env::scalar")]
    pub watch_interval_ms: u64,
    /// How long a plugin's load checks (its `info()`) may take, at start and
    /// at every reload, whatever its `callTimeoutSeconds`: a version that
    /// does not answer in time is refused and the old one keeps serving.
    #[serde(default = "default_check_timeout", deserialize_with = "env::scalar")]
    pub check_timeout_seconds: u64,
    /// How plugins with an OCI `source` are pulled (`runtime::oci`).
    #[serde(default)]
    pub registries: RegistriesConfig,
}

/// Registry access for plugins pulled from OCI registries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistriesConfig {
    /// A `.dockerconfigjson` file (a `kubernetes.io/dockerconfigjson`
    /// Secret mounted into the pod); read at every pull. Unset: anonymous.
    #[serde(default)]
    pub docker_config_json: Option<PathBuf>,
    /// PEM CA certificates trusted for registries besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback
    /// registries fall back to plain HTTP without being listed.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Largest wasm layer pulled (bytes).
    #[serde(
        default = "default_registry_max_bytes",
        deserialize_with = "env::scalar"
    )]
    pub max_bytes: u64,
    /// Bound of one whole pull (manifest and layer).
    #[serde(default = "default_registry_timeout", deserialize_with = "env::scalar")]
    pub timeout_seconds: u64,
}

fn default_registry_max_bytes() -> u64 {
    64 << 20
}
fn default_registry_timeout() -> u64 {
    60
}

impl Default for RegistriesConfig {
    fn default() -> Self {
        RegistriesConfig {
            docker_config_json: None,
            ca_file: None,
            insecure: Vec::new(),
            max_bytes: default_registry_max_bytes(),
            timeout_seconds: default_registry_timeout(),
        }
    }
}

fn default_watch_interval() -> u64 {
    2000
}

fn default_check_timeout() -> u64 {
    5
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            watch_interval_ms: default_watch_interval(),
            check_timeout_seconds: default_check_timeout(),
            registries: RegistriesConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DriverConfig {
    /// CSI driver name, e.g. `local.wasmcsi.io`.
    pub name: String,
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default = "default_services")]
    pub services: Vec<Service>,
    #[serde(default = "default_topology_key")]
    pub topology_key: String,
    /// Where the driver keeps what must survive a restart (which volume
    /// it staged or published at which path); see `state_dir()`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl DriverConfig {
    /// `stateDir`, else `wasmcsi-state` beside the endpoint's socket: a
    /// directory the deployment already keeps on the host (the kubelet's
    /// plugin dir), so the state outlives the driver's pod.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let socket = self
            .endpoint
            .strip_prefix("unix://")
            .unwrap_or(&self.endpoint);
        Path::new(socket)
            .parent()
            .filter(|p| p.is_absolute())
            .map(|p| p.join("wasmcsi-state"))
            .unwrap_or_else(|| PathBuf::from("/var/lib/wasmcsi"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Controller,
    Node,
}

impl std::str::FromStr for Service {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "controller" => Ok(Service::Controller),
            "node" => Ok(Service::Node),
            other => bail!("unknown service {other:?} (expected controller or node)"),
        }
    }
}

fn default_services() -> Vec<Service> {
    vec![Service::Controller, Service::Node]
}

fn default_topology_key() -> String {
    "topology.wasmcsi.io/node".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginConfig {
    pub name: String,
    /// The `.wasm` component on disk; or else `source`.
    #[serde(default)]
    pub path: PathBuf,
    /// An OCI reference pinned by digest (`oci://host/repo@sha256:…`) to
    /// pull the component from, instead of `path`.
    #[serde(default)]
    pub source: Option<String>,
    /// Optional sha256 pin of the `.wasm` file (hex).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Handed to the plugin as a string map.
    #[serde(default)]
    pub settings: BTreeMap<String, serde_norway::Value>,
    /// CSI inline ephemeral volumes (declared in a pod spec, made at
    /// NodePublishVolume, gone at NodeUnpublishVolume) go to this plugin.
    /// At most one plugin per driver: kubelet names such a volume with an id
    /// of its own, and its NodeUnpublishVolume carries nothing else to route by.
    #[serde(default)]
    pub inline_volumes: bool,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Cap on the plugin's linear memory per call.
    #[serde(default = "default_memory_bytes", deserialize_with = "env::scalar")]
    pub memory_bytes: u64,
    /// Wall-clock bound of one plugin call (the gRPC deadline may be shorter).
    #[serde(default = "default_call_timeout", deserialize_with = "env::scalar")]
    pub call_timeout_seconds: u64,
    /// Plugin calls running at once; more wait.
    #[serde(default = "default_max_concurrent", deserialize_with = "env::scalar")]
    pub max_concurrent_calls: u32,
    /// WASI handles (open files, directories, streams) one call may hold at
    /// once; each is at most a host file descriptor or two.
    #[serde(default = "default_max_open_handles", deserialize_with = "env::scalar")]
    pub max_open_handles: u32,
    /// Log lines one call may write; the rest are counted, and one line
    /// says how many were dropped when the call ends.
    #[serde(default = "default_log_lines", deserialize_with = "env::scalar")]
    pub log_lines_per_call: u32,
    /// Log bytes (messages and fields, after cutting) one call may write.
    #[serde(default = "default_log_bytes", deserialize_with = "env::scalar")]
    pub log_bytes_per_call: u64,
    /// Loop devices the plugin may have attached at once (over all its
    /// calls, counted on the node); one more is RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_loop_devices", deserialize_with = "env::scalar")]
    pub max_loop_devices: u32,
}

fn default_memory_bytes() -> u64 {
    64 << 20
}
fn default_call_timeout() -> u64 {
    120
}
fn default_max_concurrent() -> u32 {
    16
}
fn default_max_open_handles() -> u32 {
    128
}
fn default_log_lines() -> u32 {
    256
}
fn default_log_bytes() -> u64 {
    64 << 10
}
fn default_max_loop_devices() -> u32 {
    256
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: default_memory_bytes(),
            call_timeout_seconds: default_call_timeout(),
            max_concurrent_calls: default_max_concurrent(),
            max_open_handles: default_max_open_handles(),
            log_lines_per_call: default_log_lines(),
            log_bytes_per_call: default_log_bytes(),
            max_loop_devices: default_max_loop_devices(),
        }
    }
}

/// The capabilities granted to one plugin; an absent one is refused. Each
/// grant's fields and their checks belong to its unit in `capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Capabilities {
    pub fs: Option<FsGrant>,
    pub quota: Option<QuotaGrant>,
    pub mount: Option<MountGrant>,
    pub http: Option<HttpGrant>,
    pub log: Option<LogGrant>,
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub endpoint: Option<String>,
    pub node_id: Option<String>,
    pub services: Option<Vec<Service>>,
}

impl Config {
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text, &|name| std::env::var(name).ok(), overrides)
            .with_context(|| format!("config {}", path.display()))
    }

    /// Parses config text; `env` looks variables up (injectable for tests).
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Config> {
        let raw: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            let hint = match text.contains("${") && e.to_string().contains("flow") {
                true => " (inside { } or [ ], a value with ${NAME} must be quoted)",
                false => "",
            };
            anyhow::anyhow!("invalid config{at}: {e}{hint}")
        })?;
        let expanded = env::expand_values(raw, env)?;
        // Back through YAML text: a plain scalar such as `nodeId: 12345`
        // then reads as text where the field is text (a parsed Value would
        // insist on a number there).
        let text = serde_norway::to_string(&expanded).context("re-encoding the config")?;
        let mut config: Config = serde_path_to_error::deserialize(
            serde_norway::Deserializer::from_str(&text),
        )
        .map_err(|e| match e.path().to_string().as_str() {
            "." => anyhow::anyhow!("invalid config: {}", e.inner()),
            path => anyhow::anyhow!("invalid config: {path}: {}", e.inner()),
        })?;
        if let Some(endpoint) = &overrides.endpoint {
            config.driver.endpoint = endpoint.clone();
        }
        if let Some(node_id) = &overrides.node_id {
            config.driver.node_id = node_id.clone();
        }
        if let Some(services) = &overrides.services {
            config.driver.services = services.clone();
        }
        for plugin in &mut config.plugins {
            if let Some(http) = &mut plugin.capabilities.http {
                http.origins = split_list(&http.origins);
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let d = &self.driver;
        if d.name.is_empty() || d.name.len() > 63 || !is_driver_name(&d.name) {
            bail!(
                "driver.name {:?} must be 1-63 characters of [a-z0-9.-], starting and ending alphanumeric",
                d.name
            );
        }
        if d.services.is_empty() {
            bail!("driver.services must name at least one of controller, node");
        }
        if self.runs(Service::Node) && d.node_id.is_empty() {
            bail!(
                "driver.nodeId is required when the node service runs (set it or pass --node-id)"
            );
        }
        if d.node_id.len() > 192 {
            bail!("driver.nodeId is longer than 192 bytes");
        }
        if d.endpoint.is_empty() {
            bail!("driver.endpoint is required (unix:///path/csi.sock; set it or pass --endpoint)");
        }
        socket_path(&d.endpoint).context("driver.endpoint")?;
        if d.topology_key.is_empty() || !d.topology_key.contains('/') {
            bail!(
                "driver.topologyKey {:?} must be a qualified key such as topology.wasmcsi.io/node",
                d.topology_key
            );
        }
        if let Some(dir) = &self.runtime.cache_dir {
            if !dir.is_absolute() {
                bail!("runtime.cacheDir {dir:?} must be an absolute path");
            }
        }
        if !(1..=300).contains(&self.runtime.check_timeout_seconds) {
            bail!("runtime.checkTimeoutSeconds must be between 1 and 300");
        }
        self.runtime
            .registries
            .validate()
            .context("runtime.registries")?;
        if self.plugins.is_empty() {
            bail!("plugins must list at least one plugin");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            let field = format!("plugins[{i}]");
            p.validate()
                .with_context(|| format!("{field} ({})", p.name))?;
            if !seen.insert(&p.name) {
                bail!("{field}.name {:?} is used twice", p.name);
            }
        }
        let inline: Vec<&str> = self
            .plugins
            .iter()
            .filter(|p| p.inline_volumes)
            .map(|p| p.name.as_str())
            .collect();
        if inline.len() > 1 {
            bail!(
                "plugins {} all set inlineVolumes: an inline volume's NodeUnpublishVolume \
                 names only kubelet's id, so one plugin per driver may take them",
                inline.join(", ")
            );
        }
        Ok(())
    }

    pub fn runs(&self, service: Service) -> bool {
        self.driver.services.contains(&service)
    }
}

impl PluginConfig {
    fn validate(&self) -> Result<()> {
        let n = &self.name;
        if !is_plugin_name(n) {
            bail!("name {n:?} must be 1-30 characters of [a-z0-9-]");
        }
        match (&self.source, self.path.as_os_str().is_empty()) {
            (None, true) => bail!("path (a .wasm file) or source (an OCI reference) is required"),
            (Some(_), false) => bail!("path and source are both set: give one"),
            (Some(source), true) => {
                OciSource::parse(source).context("source")?;
                if self.sha256.is_some() {
                    bail!("sha256 pins a path; a source is pinned by the digest in its reference");
                }
            }
            (None, false) => {}
        }
        if let Some(digest) = &self.sha256 {
            if !digest.is_empty()
                && (digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()))
            {
                bail!("sha256 must be 64 hex digits");
            }
        }
        for (key, value) in &self.settings {
            setting_string(value).with_context(|| format!("settings.{key}"))?;
        }
        let l = &self.limits;
        if l.memory_bytes < (1 << 20) {
            bail!("limits.memoryBytes must be at least 1 MiB");
        }
        if l.call_timeout_seconds == 0 {
            bail!("limits.callTimeoutSeconds must be at least 1");
        }
        if l.max_concurrent_calls == 0 || l.max_concurrent_calls > 1024 {
            bail!("limits.maxConcurrentCalls must be between 1 and 1024");
        }
        // A call needs a few handles before the plugin opens anything
        // (its root, stdio); a large bound would let a plugin hold many
        // host file descriptors per call again.
        if !(16..=4096).contains(&l.max_open_handles) {
            bail!("limits.maxOpenHandles must be between 16 and 4096");
        }
        if l.log_bytes_per_call > (64 << 20) {
            bail!("limits.logBytesPerCall must be at most 64 MiB");
        }
        if l.max_loop_devices > 4096 {
            bail!("limits.maxLoopDevices must be at most 4096");
        }
        let caps = &self.capabilities;
        if let Some(fs) = &caps.fs {
            fs.validate()?;
        }
        if caps.quota.is_some() && caps.fs.is_none() {
            bail!("capabilities.quota needs capabilities.fs (quotas apply under its root)");
        }
        if let Some(mount) = &caps.mount {
            mount.validate()?;
        }
        if let Some(http) = &caps.http {
            http.validate()?;
        }
        Ok(())
    }

    /// Where the component comes from, for messages: the path or the source.
    pub fn origin(&self) -> String {
        match &self.source {
            Some(source) => source.clone(),
            None => self.path.display().to_string(),
        }
    }

    /// Settings as the string map the plugin receives.
    pub fn settings_map(&self) -> Vec<(String, String)> {
        self.settings
            .iter()
            .map(|(k, v)| (k.clone(), setting_string(v).unwrap_or_default()))
            .collect()
    }
}

impl RegistriesConfig {
    fn validate(&self) -> Result<()> {
        for (field, path) in [
            ("dockerConfigJson", &self.docker_config_json),
            ("caFile", &self.ca_file),
        ] {
            if let Some(path) = path {
                if !path.is_absolute() {
                    bail!("{field} {path:?} must be an absolute path");
                }
            }
        }
        for entry in &self.insecure {
            if entry.is_empty() || entry.contains('/') || entry.chars().any(char::is_whitespace) {
                bail!("insecure entry {entry:?} must be a registry host[:port], without scheme or path");
            }
        }
        if self.max_bytes < 1024 {
            bail!("maxBytes must be at least 1024");
        }
        if self.timeout_seconds == 0 {
            bail!("timeoutSeconds must be at least 1");
        }
        Ok(())
    }
}

fn setting_string(value: &serde_norway::Value) -> Result<String> {
    use serde_norway::Value;
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        _ => bail!("must be a string, number or boolean"),
    })
}

/// The plugin name rule: 1-30 characters of [a-z0-9-]. Plugin names are
/// the first part of every CSI id the driver hands out (`<plugin>:<id>`).
pub fn is_plugin_name(name: &str) -> bool {
    (1..=30).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_driver_name(name: &str) -> bool {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    ok_chars && alnum(name.chars().next()) && alnum(name.chars().last())
}

/// The filesystem path of a `unix://` endpoint (a bare absolute path is
/// accepted too, as some sidecars pass one).
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        bail!("{endpoint:?} must be unix:///absolute/path.sock");
    }
    Ok(PathBuf::from(path))
}

/// Splits comma-separated entries and drops empty ones.
fn split_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ROOT" => Some("/srv/vols".into()),
            "EMPTY" => Some(String::new()),
            "PASSWORD" => Some("s3cr3t #1: ok\nplugins: []".into()),
            "MEMORY" => Some("8388608".into()),
            "YES" => Some("true".into()),
            _ => None,
        }
    }

    const GOOD: &str = r#"
driver:
  name: local.wasmcsi.io
  nodeId: node-1
  endpoint: unix:///tmp/csi.sock
plugins:
  - name: local-dir
    path: /plugins/local_dir.wasm
    settings: { mode: image, size: 5, on: true }
    capabilities:
      fs: { root: "${ROOT}" }
      mount: { types: [xfs], targetPrefixes: ["${KUBELET:-/var/lib/kubelet}"] }
      http: { origins: ["http://127.0.0.1:8056,https://10.0.0.1"] }
"#;

    #[test]
    fn parses_a_good_config() {
        let c = Config::parse(GOOD, &env, &Overrides::default()).unwrap();
        let p = &c.plugins[0];
        assert_eq!(
            p.capabilities.fs.as_ref().unwrap().root,
            Path::new("/srv/vols")
        );
        assert_eq!(
            p.capabilities.mount.as_ref().unwrap().target_prefixes,
            vec![PathBuf::from("/var/lib/kubelet")]
        );
        assert_eq!(p.capabilities.http.as_ref().unwrap().origins.len(), 2);
        let settings = p.settings_map();
        assert!(settings.contains(&("size".into(), "5".into())));
        assert!(settings.contains(&("on".into(), "true".into())));
        assert!(c.runs(Service::Node) && c.runs(Service::Controller));
    }

    /// The raw-text expansion cut this password at ` #` (a comment) and
    /// turned its second line into a top-level `plugins: []`.
    #[test]
    fn one_plugin_at_most_takes_inline_volumes() {
        let second = "  - name: other\n    path: /plugins/other.wasm\n    inlineVolumes: true\n";
        let one = format!("{GOOD}{second}");
        let c = Config::parse(&one, &env, &Overrides::default()).unwrap();
        assert!(!c.plugins[0].inline_volumes && c.plugins[1].inline_volumes);
        let both = one.replace(
            "    settings: { mode: image",
            "    inlineVolumes: true\n    settings: { mode: image",
        );
        let err = error_of(&both);
        assert!(
            err.contains("local-dir, other") && err.contains("inlineVolumes"),
            "{err}"
        );
    }

    #[test]
    fn a_variable_stays_one_value() {
        let text = GOOD.replace(
            "settings: { mode: image, size: 5, on: true }",
            "settings:\n      password: ${PASSWORD}\n      quoted: \"${PASSWORD}\"",
        );
        let c = Config::parse(&text, &env, &Overrides::default()).unwrap();
        assert_eq!(c.plugins.len(), 1);
        let settings = c.plugins[0].settings_map();
        let password = env("PASSWORD").unwrap();
        assert!(
            settings.contains(&("password".into(), password.clone()))
                && settings.contains(&("quoted".into(), password)),
            "{settings:?}"
        );
    }

    /// Text fields take plain scalars as their text, as they always did:
    /// a numeric node name is a name.
    #[test]
    fn a_text_field_takes_a_plain_number_as_text() {
        let text = GOOD.replace("nodeId: node-1", "nodeId: 12345");
        let c = Config::parse(&text, &env, &Overrides::default()).unwrap();
        assert_eq!(c.driver.node_id, "12345");
    }

    /// In `{ }` and `[ ]` YAML ends a plain value at `}`: the error says
    /// to quote it.
    #[test]
    fn an_unquoted_variable_in_a_flow_collection_gets_a_hint() {
        let err = error_of(&GOOD.replace("size: 5", "size: ${NOPE:-5}"));
        assert!(err.contains("quote"), "{err}");
    }

    #[test]
    fn numbers_and_booleans_may_come_from_variables() {
        let text = GOOD.replace(
            "    settings:",
            "    limits: { memoryBytes: \"${MEMORY}\", callTimeoutSeconds: \"${NOPE:-30}\" }\n    settings:",
        )
        .replace("targetPrefixes:", "noexec: \"${YES}\", targetPrefixes:");
        let c = Config::parse(&text, &env, &Overrides::default()).unwrap();
        let p = &c.plugins[0];
        assert_eq!(p.limits.memory_bytes, 8 << 20);
        assert_eq!(p.limits.call_timeout_seconds, 30);
        assert!(p.capabilities.mount.as_ref().unwrap().noexec);
        let bad = text.replace("${MEMORY}", "lots");
        let err = error_of(&bad);
        assert!(err.contains("plugins[0].limits.memoryBytes"), "{err}");
    }

    #[test]
    fn an_unset_variable_is_named_with_its_field() {
        let err = error_of(&GOOD.replace("${ROOT}", "${MISSING}"));
        assert!(err.contains("MISSING"), "{err}");
        assert!(err.contains("plugins[0].capabilities.fs.root"), "{err}");
    }

    /// YAML keys are unique: a repeated one is refused with its line, not
    /// silently won by the last (a settings map used to take the last).
    #[test]
    fn a_repeated_key_is_refused() {
        let err = error_of(&GOOD.replace("size: 5", "size: 5, size: 6"));
        assert!(err.contains("duplicate") && err.contains("line 9"), "{err}");
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            endpoint: Some("unix:///run/x.sock".into()),
            node_id: Some("n2".into()),
            services: Some(vec![Service::Controller]),
        };
        let c = Config::parse(GOOD, &env, &o).unwrap();
        assert_eq!(c.driver.endpoint, "unix:///run/x.sock");
        assert_eq!(c.driver.node_id, "n2");
        assert!(!c.runs(Service::Node));
    }

    fn error_of(text: &str) -> String {
        format!(
            "{:#}",
            Config::parse(text, &env, &Overrides::default()).unwrap_err()
        )
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(error_of(&GOOD.replace("local.wasmcsi.io", "Bad_Name")).contains("driver.name"));
        assert!(error_of(&GOOD.replace("nodeId: node-1", "nodeId: ''")).contains("driver.nodeId"));
        assert!(
            error_of(&GOOD.replace("unix:///tmp/csi.sock", "tcp://x")).contains("driver.endpoint")
        );
        assert!(error_of(&GOOD.replace("name: local-dir", "name: Local")).contains("plugins[0]"));
        assert!(error_of(&GOOD.replace("\"${ROOT}\"", "relative")).contains("capabilities.fs.root"));
        assert!(error_of(&GOOD.replace("https://10.0.0.1", "ftp://x")).contains("origins"));
        assert!(error_of(&GOOD.replace("settings:", "bogus: 1\n    settings:")).contains("bogus"));
        assert!(error_of(&GOOD.replace("size: 5", "size: [1]")).contains("settings.size"));
        let limits = |l: &str| {
            GOOD.replace(
                "    settings:",
                &format!("    limits: {{ {l} }}\n    settings:"),
            )
        };
        assert!(error_of(&limits("maxOpenHandles: 3")).contains("limits.maxOpenHandles"));
        assert!(error_of(&limits("maxOpenHandles: 100000")).contains("limits.maxOpenHandles"));
        assert!(error_of(&limits("logBytesPerCall: 1000000000")).contains("limits.logBytesPerCall"));
    }

    #[test]
    fn a_plugin_comes_from_a_path_or_a_digest_pinned_source() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let source = format!("source: \"oci://127.0.0.1:5000/wasmcsi/local-dir@{digest}\"");
        let c = Config::parse(
            &GOOD.replace("path: /plugins/local_dir.wasm", &source),
            &env,
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.plugins[0].path.as_os_str().is_empty());
        assert!(c.plugins[0].origin().starts_with("oci://127.0.0.1:5000/"));
        assert_eq!(c.runtime.registries.max_bytes, 64 << 20);
        let tag = GOOD.replace(
            "path: /plugins/local_dir.wasm",
            "source: oci://registry.example/wasmcsi/local-dir:v1",
        );
        let err = error_of(&tag);
        assert!(
            err.contains("plugins[0]") && err.contains("names a tag, not a digest"),
            "{err}"
        );
        let both = GOOD.replace(
            "path: /plugins/local_dir.wasm",
            &format!("path: /p.wasm\n    {source}"),
        );
        assert!(error_of(&both).contains("path and source are both set"));
        let neither = GOOD.replace("path: /plugins/local_dir.wasm", "");
        assert!(error_of(&neither).contains("path (a .wasm file) or source"));
        let registries = format!(
            "{}runtime: {{ registries: {{ insecure: [\"http://x\"] }} }}\n",
            GOOD
        );
        assert!(error_of(&registries).contains("runtime.registries"));
        let ok = format!(
            "{}runtime: {{ registries: {{ dockerConfigJson: /etc/r/.dockerconfigjson, caFile: /etc/r/ca.pem, insecure: [\"registry.lab:5000\"], maxBytes: 1048576, timeoutSeconds: 5 }} }}\n",
            GOOD
        );
        let c = Config::parse(&ok, &env, &Overrides::default()).unwrap();
        assert_eq!(c.runtime.registries.insecure, vec!["registry.lab:5000"]);
        assert_eq!(c.runtime.registries.timeout_seconds, 5);
    }

    #[test]
    fn per_call_bounds_have_small_defaults_and_can_be_set() {
        let c = Config::parse(GOOD, &env, &Overrides::default()).unwrap();
        let l = &c.plugins[0].limits;
        assert_eq!(
            (
                l.max_open_handles,
                l.log_lines_per_call,
                l.log_bytes_per_call
            ),
            (128, 256, 64 << 10)
        );
        let text = GOOD.replace(
            "    settings:",
            "    limits: { maxOpenHandles: 64, logLinesPerCall: 10, logBytesPerCall: 2048 }\n    settings:",
        );
        let c = Config::parse(&text, &env, &Overrides::default()).unwrap();
        let l = &c.plugins[0].limits;
        assert_eq!(
            (
                l.max_open_handles,
                l.log_lines_per_call,
                l.log_bytes_per_call
            ),
            (64, 10, 2048)
        );
    }
}
