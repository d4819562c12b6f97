//! Prometheus metrics, kept in-process and rendered in the text format.
//! A small registry of our own: counters and histograms keyed by label
//! values, enough for the few families the driver exports.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Latency buckets in seconds: wasm calls take microseconds, mkfs seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

type Labels = Vec<(&'static str, String)>;
/// name → (label values → value)
type Family<T> = BTreeMap<&'static str, BTreeMap<Labels, T>>;

#[derive(Default)]
struct Registry {
    counters: Family<f64>,
    gauges: Family<f64>,
    histograms: Family<Histogram>,
    help: BTreeMap<&'static str, &'static str>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Adds 1 to a counter.
pub fn inc(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)]) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.help.entry(name).or_insert(help);
    *r.counters
        .entry(name)
        .or_default()
        .entry(labels(pairs))
        .or_default() += 1.0;
}

/// Sets a gauge to the larger of its value and `value` (high-water marks).
pub fn max(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], value: f64) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.help.entry(name).or_insert(help);
    let g = r
        .gauges
        .entry(name)
        .or_default()
        .entry(labels(pairs))
        .or_insert(value);
    *g = g.max(value);
}

/// Sets a gauge.
pub fn set(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], value: f64) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.help.entry(name).or_insert(help);
    r.gauges
        .entry(name)
        .or_default()
        .insert(labels(pairs), value);
}

/// Records one observation in a histogram.
pub fn observe(
    name: &'static str,
    help: &'static str,
    pairs: &[(&'static str, &str)],
    took: Duration,
) {
    let seconds = took.as_secs_f64();
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.help.entry(name).or_insert(help);
    let h = r
        .histograms
        .entry(name)
        .or_default()
        .entry(labels(pairs))
        .or_default();
    if h.counts.is_empty() {
        h.counts = vec![0; BUCKETS.len()];
    }
    for (i, bound) in BUCKETS.iter().enumerate() {
        if seconds <= *bound {
            h.counts[i] += 1;
        }
    }
    h.sum += seconds;
    h.count += 1;
}

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything, in the Prometheus text exposition format.
pub fn render() -> String {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    let help = |out: &mut String, name: &str, kind: &str| {
        let text = r.help.get(name).copied().unwrap_or("");
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };
    for (name, series) in &r.counters {
        help(&mut out, name, "counter");
        for (l, v) in series {
            let _ = writeln!(out, "{name}{} {v}", label_text(l, None));
        }
    }
    for (name, series) in &r.gauges {
        help(&mut out, name, "gauge");
        for (l, v) in series {
            let _ = writeln!(out, "{name}{} {v}", label_text(l, None));
        }
    }
    for (name, series) in &r.histograms {
        help(&mut out, name, "histogram");
        for (l, h) in series {
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    label_text(l, Some(("le", bound.to_string())))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                label_text(l, Some(("le", "+Inf".into()))),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{} {}", label_text(l, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", label_text(l, None), h.count);
        }
    }
    out
}

/// Binds the metrics address, so that a taken port fails the start.
pub async fn bind(address: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("metrics: listening on {address}"))?;
    tracing::info!(%address, "serving /metrics and /healthz");
    Ok(listener)
}

/// Serves `/metrics` and `/healthz` over plain HTTP/1.1.
pub async fn serve(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                continue;
            }
        };
        tokio::spawn(async move {
            // Read up to the end of the request line (a client may send it
            // in pieces); requests have no body worth reading.
            let mut request = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            while !request.contains(&b'\n') && request.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let n = request.len();
            let line = String::from_utf8_lossy(&request[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", render()),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        inc(
            "wasmcsi_test_total",
            "A test counter.",
            &[("method", "Probe"), ("code", "OK")],
        );
        inc(
            "wasmcsi_test_total",
            "A test counter.",
            &[("method", "Probe"), ("code", "OK")],
        );
        observe(
            "wasmcsi_test_seconds",
            "A test histogram.",
            &[("method", "Probe")],
            Duration::from_millis(3),
        );
        let text = render();
        assert!(text.contains("# TYPE wasmcsi_test_total counter"), "{text}");
        assert!(
            text.contains("wasmcsi_test_total{method=\"Probe\",code=\"OK\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wasmcsi_test_seconds_bucket{method=\"Probe\",le=\"0.001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("wasmcsi_test_seconds_bucket{method=\"Probe\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wasmcsi_test_seconds_count{method=\"Probe\"} 1"),
            "{text}"
        );
    }
}
