//! Plugin outcomes as gRPC statuses: a plugin's error code maps one-to-one;
//! runtime failures map to DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or INTERNAL
//! and always name the plugin. A message a plugin wrote (its error, a panic
//! line) is escaped and cut to `MAX_ERROR_MESSAGE` bytes first.

use tonic::{Code, Status};

use crate::runtime::limits::MAX_ERROR_MESSAGE;
use crate::runtime::CallFailure;
use crate::text::clip;
use crate::wit::wasmcsi::plugin::types::ErrorCode;

pub fn code_of(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::OutOfRange => Code::OutOfRange,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Aborted => Code::Aborted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::Internal => Code::Internal,
    }
}

/// The status for a failed plugin call made by `plugin`.
pub fn from_failure(plugin: &str, failure: CallFailure) -> Status {
    match failure {
        CallFailure::Plugin(e) => Status::new(
            code_of(e.code),
            format!("{plugin}: {}", clip(&e.message, MAX_ERROR_MESSAGE)),
        ),
        f @ CallFailure::Deadline { .. } => Status::deadline_exceeded(f.to_string()),
        f @ (CallFailure::Memory { .. } | CallFailure::Handles { .. }) => {
            Status::resource_exhausted(f.to_string())
        }
        // The detail may hold a panic message (up to the stderr capture).
        f @ (CallFailure::Crashed { .. } | CallFailure::Instantiate { .. }) => {
            Status::internal(clip(&f.to_string(), 2 * MAX_ERROR_MESSAGE))
        }
    }
}

/// `?`-friendly form: `plugin.call(...).await.map_err(status::of(&plugin.name))`
/// (what `call::call_plugin` does).
pub fn of(plugin: &str) -> impl FnOnce(CallFailure) -> Status + '_ {
    move |f| from_failure(plugin, f)
}

/// A host-side capability failure met while serving an RPC directly.
impl From<crate::capabilities::CapError> for Status {
    fn from(e: crate::capabilities::CapError) -> Status {
        Status::new(code_of(e.code), e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::wasmcsi::plugin::types::Error as PluginError;

    #[test]
    fn a_huge_plugin_message_is_cut_and_escaped() {
        let message = format!("line one\nline two{}", "x".repeat(16 << 20));
        let status = from_failure(
            "p",
            CallFailure::Plugin(PluginError {
                code: ErrorCode::NotFound,
                message,
            }),
        );
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().len() <= MAX_ERROR_MESSAGE + 64,
            "{}",
            status.message().len()
        );
        assert!(status.message().starts_with("p: line one\\nline two"));
        assert!(status.message().ends_with("more bytes cut]"));
    }
}
