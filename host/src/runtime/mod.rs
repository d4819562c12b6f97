//! The wasm side of the host: one engine, plugins compiled once, a fresh
//! store and instance per call.

pub mod budget;
pub mod cache;
pub mod call_threads;
pub mod contract;
pub mod engine;
pub mod limits;
pub mod loader;
pub mod oci;
pub mod plugin;
pub mod preopens;
pub mod reload;
pub mod state;

pub use loader::Loader;
pub use plugin::{CallFailure, Controller, Identity, Node, Plugin};
