//! wasmcsi: a CSI driver whose storage back ends are sandboxed wasm plugins.
//!
//! Data flows one way: `csi` (gRPC, validation) → `dispatch` (routing,
//! locking) → `runtime` (wasm instances) → plugin → `capabilities`.

pub mod capabilities;
pub mod config;
pub mod csi;
pub mod dispatch;
pub mod locks;
pub mod logfmt;
pub mod metrics;
pub mod returns;
pub mod runtime;
pub mod server;
pub mod sys;
pub mod text;
pub mod wit;

/// The kit the unit tests share with the integration tests.
#[cfg(test)]
use wasmcsi_testkit as testkit;

/// The CSI v1.12 protocol, generated from `proto/csi.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
