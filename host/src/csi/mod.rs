//! The CSI gRPC surface, one file per service, with validation, type
//! conversion and error mapping beside them.

pub(crate) mod call;
pub(crate) mod controller;
pub(crate) mod convert;
pub(crate) mod group_controller;
pub(crate) mod holders;
pub(crate) mod identity;
pub mod mounts;
pub(crate) mod node;
pub(crate) mod status;
pub(crate) mod validate;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Service};
use crate::dispatch::Dispatcher;

/// State shared by the three services.
pub(crate) struct Driver {
    pub(crate) config: Config,
    pub(crate) dispatch: Dispatcher,
    /// Which volume holds which staging path and target on this node.
    pub(crate) holders: holders::Records,
}

impl Driver {
    pub(crate) fn new(config: Config, dispatch: Dispatcher) -> Arc<Driver> {
        let holders = holders::Records::new(&config.driver.state_dir());
        Arc::new(Driver {
            config,
            dispatch,
            holders,
        })
    }

    pub(crate) fn runs(&self, service: Service) -> bool {
        self.config.runs(service)
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.config.driver.node_id
    }

    pub(crate) fn topology_key(&self) -> &str {
        &self.config.driver.topology_key
    }
}

/// The caller's deadline, from the `grpc-timeout` header.
pub(crate) fn deadline<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// RPCs being served right now; shutdown waits for them.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn in_flight() -> usize {
    IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts an RPC as in flight for as long as it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs one RPC inside a span naming it and its volume, and logs how it
/// ended: one line per call, at info, with the gRPC code and duration.
pub(crate) async fn traced<T>(
    method: &'static str,
    subject: &str,
    work: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    use tracing::Instrument;
    let span = tracing::info_span!("csi", method, volume = subject);
    async move {
        let _in_flight = InFlight::enter();
        let started = std::time::Instant::now();
        let result = work.await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let code = match &result {
            Ok(_) => "OK".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        crate::metrics::csi_request(method, &code, started.elapsed());
        match &result {
            Ok(_) => tracing::info!(code = "OK", elapsed_ms, "done"),
            Err(status) => tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                elapsed_ms,
                "failed"
            ),
        }
        result.map(tonic::Response::new)
    }
    .instrument(span)
    .await
}

/// Runs blocking work of an RPC's own (mount-table reads, lookups of
/// CO-given paths, which a hung filesystem can stall) off the async
/// workers, ended by the caller's deadline.
pub(crate) async fn off_workers<T, F>(
    deadline: Option<Duration>,
    work: F,
) -> Result<T, tonic::Status>
where
    F: FnOnce() -> Result<T, tonic::Status> + Send + 'static,
    T: Send + 'static,
{
    let limit = deadline.unwrap_or(Duration::from_secs(60));
    let ran = crate::capabilities::blocking::run(move || Ok(work()));
    match tokio::time::timeout(limit, ran).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failed)) => Err(failed.into()),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "a path did not answer within {limit:?} (a hung filesystem?)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10X"), None);
    }
}
