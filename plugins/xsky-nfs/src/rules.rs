//! What both volume kinds (quota trees and folders) follow: their sizes,
//! and the errors for clones and for space another client took.

use crate::error::{fail, Context, ErrorCode, Result};
use crate::wasmcsi::plugin::types::CapacityRange;
use wasmcsi_plugin_sdk::capacity::{Rules, GIB, MIB};

/// CreateVolume from another volume, in either mode: XMS clones a folder
/// only from one of its snapshots, and a clone made through a snapshot of
/// our own would pin the source (a folder with snapshots cannot be
/// deleted), so xsky-nfs does not clone volumes.
pub fn clone_unsupported() -> crate::error::Error {
    fail(
        ErrorCode::Unimplemented,
        "xsky-nfs does not implement volumes cloned from volumes (XMS clones folders only \
         from snapshots): take a VolumeSnapshot and restore it, in mode folder",
    )
}

/// An XMS 400 on a request that takes space, when a fresh look shows the
/// space is gone: another client took it meanwhile. That is no invalid
/// argument but a condition that may pass (RESOURCE_EXHAUSTED, which the
/// provisioner retries with backoff); any other 400 stays as it was.
pub fn capacity_race(
    e: crate::error::Error,
    room_now: Option<u64>,
    size: u64,
) -> crate::error::Error {
    match room_now {
        Some(room) if e.code == ErrorCode::InvalidArgument && room < size => fail(
            ErrorCode::ResourceExhausted,
            format!(
                "{} (another client took the space meanwhile: {room} bytes left)",
                e.message
            ),
        ),
        _ => e,
    }
}

/// Sizes as asked, to the byte (XMS takes any); at least 1 MiB; 1 GiB
/// (lowered to the limit) when no bytes are required. A range these do not
/// meet is OUT_OF_RANGE before anything is made.
const SIZES: Rules = Rules {
    unit: 1,
    min: MIB,
    max: None,
    default: GIB,
    kind: "xsky-nfs volumes",
};

/// The size of a new volume for `range`, or OUT_OF_RANGE naming `name`.
pub fn size_for(name: &str, range: &CapacityRange) -> Result<u64> {
    SIZES
        .for_create(range)
        .context(|| format!("volume {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcsi_plugin_sdk::capacity::fits;

    fn range(r: Option<u64>, l: Option<u64>) -> CapacityRange {
        CapacityRange {
            required_bytes: r,
            limit_bytes: l,
        }
    }

    #[test]
    fn sizes() {
        let size = |r, l| size_for("pvc-1", &range(r, l));
        assert_eq!(size(None, None).unwrap(), GIB);
        assert_eq!(size(Some(5 * GIB), None).unwrap(), 5 * GIB);
        assert_eq!(size(Some(5 * GIB + 1), None).unwrap(), 5 * GIB + 1, "exact");
        assert_eq!(size(Some(1), None).unwrap(), MIB);
        assert_eq!(size(None, Some(3 * GIB)).unwrap(), GIB);
        assert_eq!(size(None, Some(GIB - 1)).unwrap(), GIB - 1);
        let e = size(None, Some(MIB / 2)).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutOfRange);
        assert!(e.message.starts_with("volume \"pvc-1\": "), "{}", e.message);
        assert!(fits(5 * GIB, &range(Some(5 * GIB), None)));
        assert!(fits(10 * GIB, &range(Some(5 * GIB), Some(0))));
        assert!(!fits(10 * GIB, &range(Some(5 * GIB), Some(6 * GIB))));
        assert!(!fits(4 * GIB, &range(Some(5 * GIB), None)));
    }
}
