//! WIT errors: every failure says what was being done, on what, with the
//! code the host turns into the gRPC status.

use std::fmt::Display;
use std::io;

pub use crate::bindings::wasmcsi::plugin::types::{Error, ErrorCode};

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

/// A create under a name already taken by a volume that does not fit
/// the request (CSI's idempotency rule).
pub fn already_exists(message: impl Into<String>) -> Error {
    fail(ErrorCode::AlreadyExists, message)
}

pub fn precondition(message: impl Into<String>) -> Error {
    fail(ErrorCode::FailedPrecondition, message)
}

pub fn internal(message: impl Into<String>) -> Error {
    fail(ErrorCode::Internal, message)
}

/// A call the plugin does not do; `what` names it ("controller.get-capacity").
pub fn unimplemented(what: impl Display) -> Error {
    fail(
        ErrorCode::Unimplemented,
        format!("{what} is not implemented by this plugin"),
    )
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

/// Prefixes an error with what the plugin was doing. A host capability's
/// error keeps its code (the host knows best whether a retry can help);
/// an I/O error is mapped as [`io`] does.
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

impl<T> Context<T> for io::Result<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| io(doing(), e))
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

    #[test]
    fn io_results_take_context_too() {
        let r: io::Result<()> = Err(io::Error::from(io::ErrorKind::FileTooLarge));
        let e = r.context(|| "growing /r/img".into()).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(e.message.starts_with("growing /r/img: "), "{}", e.message);
        let r: io::Result<()> = Err(io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(
            r.context(|| "x".into()).unwrap_err().code,
            ErrorCode::Internal
        );
    }

    #[test]
    fn unimplemented_names_the_call() {
        let e = unimplemented("node.stage-volume");
        assert_eq!(e.code, ErrorCode::Unimplemented);
        assert!(e.message.starts_with("node.stage-volume "));
    }
}
