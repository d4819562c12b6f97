//! The wasm side of the host: one engine, plugins compiled once, a fresh
//! store and instance per call.

pub mod bindings;
pub mod engine;
pub mod limits;
pub mod plugin;
pub mod state;

pub use plugin::{CallFailure, Plugin};
