//! Prometheus metrics: typed families of the `prometheus-client` crate,
//! registered once. Recording takes no global lock (a family's read lock
//! and an atomic per series); `/metrics` renders the Prometheus text
//! format, or OpenMetrics when the scraper asks for it.

mod endpoint;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use endpoint::{bind, serve};

/// Latency buckets in seconds: wasm calls take microseconds, mkfs seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CsiCall {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CsiMethod {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCall {
    plugin: String,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOp {
    plugin: String,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginName {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLoad {
    plugin: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequest {
    plugin: String,
    status: String,
}

/// Every family the driver exports, and the registry that renders them.
struct Metrics {
    registry: Registry,
    csi_requests: Family<CsiCall, Counter>,
    csi_duration: Latencies<CsiMethod>,
    plugin_calls: Family<PluginCall, Counter>,
    plugin_call_duration: Latencies<PluginOp>,
    plugin_memory: Family<PluginName, Gauge<i64, AtomicI64>>,
    plugin_load: Family<PluginLoad, Gauge<f64, AtomicU64>>,
    http_requests: Family<HttpRequest, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            csi_requests: Family::default(),
            csi_duration: Family::new_with_constructor(latency_histogram),
            plugin_calls: Family::default(),
            plugin_call_duration: Family::new_with_constructor(latency_histogram),
            plugin_memory: Family::default(),
            plugin_load: Family::default(),
            http_requests: Family::default(),
        };
        let mut r = m.registry;
        // Counters are registered without `_total`: the encoders add it.
        // The registry ends every help text with a period.
        r.register(
            "wasmcsi_csi_requests",
            "CSI calls served, by method and gRPC code",
            m.csi_requests.clone(),
        );
        r.register(
            "wasmcsi_csi_request_duration_seconds",
            "Time to answer a CSI call, by method",
            m.csi_duration.clone(),
        );
        r.register(
            "wasmcsi_plugin_calls",
            "Plugin calls by plugin, operation and outcome (ok, plugin_error, deadline, memory, handles, trap, instantiate)",
            m.plugin_calls.clone(),
        );
        r.register(
            "wasmcsi_plugin_call_duration_seconds",
            "Time of one plugin call, instantiation included",
            m.plugin_call_duration.clone(),
        );
        r.register(
            "wasmcsi_plugin_memory_high_water_bytes",
            "Largest linear memory any call of the plugin reached",
            m.plugin_memory.clone(),
        );
        r.register(
            "wasmcsi_plugin_load_seconds",
            "Time the last load of a plugin took to compile or to load from the cache",
            m.plugin_load.clone(),
        );
        r.register(
            "wasmcsi_http_requests",
            "Outbound HTTP requests of plugins, by plugin and status (or failure)",
            m.http_requests.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// One CSI call answered with `code` (`OK` or the gRPC code's name).
pub fn csi_request(method: &'static str, code: &str, took: Duration) {
    let m = metrics();
    m.csi_requests
        .get_or_create(&CsiCall {
            method,
            code: code.to_string(),
        })
        .inc();
    m.csi_duration
        .get_or_create(&CsiMethod { method })
        .observe(took.as_secs_f64());
}

/// One plugin call and how it ended.
pub fn plugin_call(plugin: &str, op: &'static str, outcome: &'static str, took: Duration) {
    let m = metrics();
    let plugin = plugin.to_string();
    m.plugin_call_duration
        .get_or_create(&PluginOp {
            plugin: plugin.clone(),
            op,
        })
        .observe(took.as_secs_f64());
    m.plugin_calls
        .get_or_create(&PluginCall {
            plugin,
            op,
            outcome,
        })
        .inc();
}

/// Raises the plugin's memory high-water mark to `bytes` if higher.
pub fn plugin_memory_high_water(plugin: &str, bytes: u64) {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    metrics()
        .plugin_memory
        .get_or_create(&PluginName {
            plugin: plugin.to_string(),
        })
        .inner()
        .fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// How long the last load of a plugin took; `source` is `compile` or `cache`.
pub fn plugin_loaded(plugin: &str, source: &'static str, took: Duration) {
    metrics()
        .plugin_load
        .get_or_create(&PluginLoad {
            plugin: plugin.to_string(),
            source,
        })
        .set(took.as_secs_f64());
}

/// One outbound HTTP request of a plugin: its status, or the failure.
pub fn http_request(plugin: &str, status: &str) {
    metrics()
        .http_requests
        .get_or_create(&HttpRequest {
            plugin: plugin.to_string(),
            status: status.to_string(),
        })
        .inc();
}

/// The exposition formats `/metrics` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4, what any scraper reads.
    Prometheus,
    /// OpenMetrics 1.0 text, for scrapers that ask for it.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Everything, in `format`.
pub fn render(format: Format) -> String {
    let registry = &metrics().registry;
    let mut out = String::new();
    let encoded = match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
    };
    // Writing into a String cannot fail; an encoder error would be a bug.
    if let Err(e) = encoded {
        tracing::error!(error = %e, "metrics: encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        csi_request("TestProbe", "OK", Duration::from_millis(3));
        csi_request("TestProbe", "OK", Duration::from_millis(3));
        plugin_memory_high_water("test-plugin", 2048);
        plugin_memory_high_water("test-plugin", 1024);
        let text = render(Format::Prometheus);
        assert!(
            text.contains("# TYPE wasmcsi_csi_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("wasmcsi_csi_requests_total{method=\"TestProbe\",code=\"OK\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "wasmcsi_csi_request_duration_seconds_bucket{le=\"0.001\",method=\"TestProbe\"} 0"
            ) || text.contains(
                "wasmcsi_csi_request_duration_seconds_bucket{method=\"TestProbe\",le=\"0.001\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("wasmcsi_csi_request_duration_seconds_count{method=\"TestProbe\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wasmcsi_plugin_memory_high_water_bytes{plugin=\"test-plugin\"} 2048"),
            "the high-water mark only rises: {text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_names_families_without_total_and_ends_with_eof() {
        http_request("test-plugin", "200");
        let text = render(Format::OpenMetrics);
        assert!(
            text.contains("# TYPE wasmcsi_http_requests counter"),
            "{text}"
        );
        assert!(
            text.contains("wasmcsi_http_requests_total{plugin=\"test-plugin\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
