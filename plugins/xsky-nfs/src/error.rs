//! Building WIT errors: every failure says what was being done, on what.

pub use crate::wasmcsi::plugin::types::{Error, ErrorCode};

pub type Result<T> = std::result::Result<T, Error>;

pub fn fail(code: ErrorCode, message: impl Into<String>) -> Error {
    Error {
        code,
        message: message.into(),
    }
}

pub fn invalid(message: impl Into<String>) -> Error {
    fail(ErrorCode::InvalidArgument, message)
}

pub fn precondition(message: impl Into<String>) -> Error {
    fail(ErrorCode::FailedPrecondition, message)
}

/// Prefixes an error with what the plugin was doing, keeping its code.
pub trait Context<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error {
            code: e.code,
            message: format!("{}: {}", doing(), e.message),
        })
    }
}
