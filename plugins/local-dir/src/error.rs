//! Building WIT errors: every failure says what was being done, on what.

use std::fmt::Display;
use std::io;

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

pub fn not_found(message: impl Into<String>) -> Error {
    fail(ErrorCode::NotFound, message)
}

pub fn precondition(message: impl Into<String>) -> Error {
    fail(ErrorCode::FailedPrecondition, message)
}

pub fn internal(message: impl Into<String>) -> Error {
    fail(ErrorCode::Internal, message)
}

/// A WASI file-system failure while `doing` something (e.g. "writing <path>").
/// Full disks and oversize files keep a code the CO can act on.
pub fn io(doing: impl Display, e: io::Error) -> Error {
    let code = match e.kind() {
        io::ErrorKind::StorageFull => ErrorCode::ResourceExhausted,
        io::ErrorKind::FileTooLarge => ErrorCode::OutOfRange,
        _ => ErrorCode::Internal,
    };
    fail(code, format!("{doing}: {e}"))
}

/// Prefixes a host capability's error with what the plugin was doing,
/// keeping the host's code (it knows best whether a retry can help).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_code_and_prefixes_message() {
        let r: Result<()> = Err(fail(ErrorCode::Unavailable, "busy"));
        let e = r.context(|| "attaching /r/x".into()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.message, "attaching /r/x: busy");
    }

    #[test]
    fn full_disk_is_resource_exhausted() {
        let e = io("writing /r/a", io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        assert!(e.message.starts_with("writing /r/a: "));
    }
}
