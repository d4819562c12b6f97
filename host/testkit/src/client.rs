//! A CSI client over a unix socket: what the tests, the demo and the
//! benchmark use to talk to a driver (ours or any other) like a CO would.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use wasmcsi::proto::controller_client::ControllerClient;
use wasmcsi::proto::group_controller_client::GroupControllerClient;
use wasmcsi::proto::identity_client::IdentityClient;
use wasmcsi::proto::node_client::NodeClient;
use wasmcsi::proto::ProbeRequest;

#[derive(Clone)]
pub struct CsiClient {
    pub identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub group_controller: GroupControllerClient<Channel>,
    pub node: NodeClient<Channel>,
}

impl CsiClient {
    /// Connects to `unix:///path` (or a bare path).
    pub async fn connect(endpoint: &str) -> Result<CsiClient> {
        let socket: PathBuf = wasmcsi::config::socket_path(endpoint)?;
        let channel = unix_channel(&socket).await?;
        Ok(CsiClient {
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel.clone()),
            group_controller: GroupControllerClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }

    /// Retries until the socket answers or `timeout` passes.
    pub async fn wait_for(endpoint: &str, timeout: Duration) -> Result<CsiClient> {
        let started = std::time::Instant::now();
        loop {
            match CsiClient::connect(endpoint).await {
                Ok(client) => return Ok(client),
                Err(e) if started.elapsed() > timeout => {
                    return Err(
                        e.context(format!("driver at {endpoint} not ready after {timeout:?}"))
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// Connects, then probes until the driver is ready or `timeout` passes.
    /// Only `ready: false` (or a failing Probe) means "not yet": the CSI spec
    /// says an unset `ready` means ready, and drivers that are ready from the
    /// start (the reference host-path driver among them) leave it unset.
    pub async fn wait_ready(endpoint: &str, timeout: Duration) -> Result<CsiClient> {
        let started = Instant::now();
        let mut client = CsiClient::wait_for(endpoint, timeout).await?;
        loop {
            let said = match client.identity.probe(ProbeRequest {}).await {
                Ok(r) if probe_says_ready(r.get_ref().ready) => return Ok(client),
                Ok(_) => "Probe answers ready: false".to_string(),
                Err(status) => format!("Probe failed: {status}"),
            };
            if started.elapsed() > timeout {
                return Err(anyhow!(
                    "driver at {endpoint} not ready after {timeout:?}: {said}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What a Probe's `ready` field means (CSI spec, Probe): unset is ready.
pub fn probe_says_ready(ready: Option<bool>) -> bool {
    ready != Some(false)
}

async fn unix_channel(socket: &Path) -> Result<Channel> {
    let socket = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .context("connecting to the CSI socket")
}

#[cfg(test)]
mod tests {
    use super::probe_says_ready;

    #[test]
    fn an_unset_ready_field_means_ready() {
        assert!(probe_says_ready(None));
        assert!(probe_says_ready(Some(true)));
        assert!(!probe_says_ready(Some(false)));
    }
}
