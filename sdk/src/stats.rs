//! NodeGetVolumeStats from what the host's statfs answers.

use crate::bindings::exports::wasmcsi::plugin::node::VolumeStats;
use crate::bindings::wasmcsi::plugin::fs_info::FsStats;

/// Healthy stats of a mounted filesystem: used is what is not free
/// (reserved blocks count as used), available is what users may still take.
pub fn from_statfs(st: &FsStats) -> VolumeStats {
    VolumeStats {
        total_bytes: st.total_bytes,
        available_bytes: st.available_bytes,
        used_bytes: st.total_bytes.saturating_sub(st.free_bytes),
        total_inodes: st.total_inodes,
        available_inodes: st.free_inodes,
        used_inodes: st.total_inodes.saturating_sub(st.free_inodes),
        healthy: true,
        message: String::new(),
    }
}

/// No figures, and the volume condition says what is wrong.
pub fn unhealthy(message: impl Into<String>) -> VolumeStats {
    VolumeStats {
        total_bytes: 0,
        available_bytes: 0,
        used_bytes: 0,
        total_inodes: 0,
        available_inodes: 0,
        used_inodes: 0,
        healthy: false,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_total_minus_free() {
        let s = from_statfs(&FsStats {
            total_bytes: 100,
            free_bytes: 30,
            available_bytes: 20,
            total_inodes: 10,
            free_inodes: 4,
        });
        assert_eq!(
            (s.used_bytes, s.available_bytes, s.used_inodes),
            (70, 20, 6)
        );
        assert!(s.healthy);
        // A corrupt answer must not panic.
        let s = from_statfs(&FsStats {
            total_bytes: 1,
            free_bytes: 5,
            available_bytes: 0,
            total_inodes: 0,
            free_inodes: 3,
        });
        assert_eq!((s.used_bytes, s.used_inodes), (0, 0));
        assert!(!unhealthy("gone").healthy);
    }
}
