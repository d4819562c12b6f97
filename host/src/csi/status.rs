//! Plugin outcomes as gRPC statuses: a plugin's error code maps one-to-one;
//! runtime failures map to DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or INTERNAL
//! and always name the plugin.

use tonic::{Code, Status};

use crate::runtime::bindings::wasmcsi::plugin::types::ErrorCode;
use crate::runtime::CallFailure;

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
        CallFailure::Plugin(e) => Status::new(code_of(e.code), format!("{plugin}: {}", e.message)),
        f @ CallFailure::Deadline { .. } => Status::deadline_exceeded(f.to_string()),
        f @ CallFailure::Memory { .. } => Status::resource_exhausted(f.to_string()),
        f @ (CallFailure::Crashed { .. } | CallFailure::Instantiate { .. }) => {
            Status::internal(f.to_string())
        }
    }
}

/// `?`-friendly form: `plugin.call(...).await.map_err(status::of(&plugin.name))`.
pub fn of(plugin: &str) -> impl FnOnce(CallFailure) -> Status + '_ {
    move |f| from_failure(plugin, f)
}
