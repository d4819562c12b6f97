//! Where the host's errors become gRPC statuses, the one place. Plugin
//! outcomes: a plugin's error code maps one-to-one; runtime failures map to
//! DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or INTERNAL and always name the
//! plugin. A message a plugin wrote (its error, a panic line) is escaped
//! and cut to `MAX_ERROR_MESSAGE` bytes first. Routing refusals are
//! INVALID_ARGUMENT, a busy volume ABORTED; a bad plugin answer INTERNAL.

use tonic::{Code, Status};

use crate::dispatch::DispatchError;
use crate::returns::BadAnswer;
use crate::runtime::limits::MAX_ERROR_MESSAGE;
use crate::runtime::CallFailure;
use crate::text::clip;
use crate::wit::wasmcsi::plugin::types::ErrorCode;

pub(crate) fn code_of(code: ErrorCode) -> Code {
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
pub(crate) fn from_failure(plugin: &str, failure: CallFailure) -> Status {
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
pub(crate) fn of(plugin: &str) -> impl FnOnce(CallFailure) -> Status + '_ {
    move |f| from_failure(plugin, f)
}

/// A host-side capability failure met while serving an RPC directly.
impl From<crate::capabilities::CapError> for Status {
    fn from(e: crate::capabilities::CapError) -> Status {
        Status::new(code_of(e.code), e.message)
    }
}

/// A request no plugin can take is the caller's to fix; a volume another
/// call holds is ABORTED, which the CO retries.
impl From<DispatchError> for Status {
    fn from(e: DispatchError) -> Status {
        match e {
            DispatchError::Busy { .. } => Status::aborted(e.to_string()),
            DispatchError::UnknownPlugin { .. }
            | DispatchError::PluginNotNamed { .. }
            | DispatchError::NoInlinePlugin { .. }
            | DispatchError::NotTheInlinePlugin { .. } => Status::invalid_argument(e.to_string()),
        }
    }
}

/// A plugin answer that breaks the rules is a bug in the plugin.
impl From<BadAnswer> for Status {
    fn from(e: BadAnswer) -> Status {
        Status::internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_refusals_and_bad_answers_get_their_codes() {
        let busy = Status::from(DispatchError::Busy { key: "p:v".into() });
        assert_eq!(busy.code(), Code::Aborted);
        assert_eq!(busy.message(), "an operation on p:v is already in progress");
        let unknown = Status::from(DispatchError::UnknownPlugin {
            name: "q".into(),
            loaded: "p".into(),
        });
        assert_eq!(unknown.code(), Code::InvalidArgument);
        assert_eq!(
            unknown.message(),
            "parameter plugin=\"q\" names no loaded plugin (loaded: p)"
        );
        let bad = Status::from(crate::returns::id("p", "a volume id", "").unwrap_err());
        assert_eq!(bad.code(), Code::Internal);
        assert!(
            bad.message().starts_with("plugin p answered"),
            "{}",
            bad.message()
        );
    }
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
