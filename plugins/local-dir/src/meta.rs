//! meta.json: what a volume is and how far its creation, deletion or
//! growth got, so that the next call (in a fresh instance) can finish it.

use serde::{Deserialize, Serialize};

use crate::config::{FsType, Mode, Wanted};
use crate::size;
use crate::wasmcsi::plugin::types::CapacityRange;

pub const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Storage is being made; a retry tears it down and makes it again.
    /// (Snapshots; volumes now have no record until they are ready, but
    /// older records may still say it.)
    Creating,
    Ready,
    /// Being removed; hidden from get/list, finished by a delete retry.
    Deleting,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub version: u32,
    /// The CSI name the volume was created for (the idempotency key).
    pub name: String,
    pub mode: Mode,
    /// Image mode: the filesystem in the image; none for raw-block images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<FsType>,
    /// Provisioned size: the image size or the quota limit.
    pub capacity_bytes: u64,
    pub state: State,
    /// The image was enlarged but its filesystem not yet grown to fill it;
    /// node expand (online) or the next stage (offline) clears it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub grow_pending: bool,
    /// The image (sized, sparse) has no filesystem yet: it is made at the
    /// first stage, so that create does not pay for mkfs. Cleared durably
    /// before anything mounts it; while set, nothing in the image is data,
    /// so an interrupted format is simply redone from a zeroed image.
    #[serde(default, skip_serializing_if = "is_false")]
    pub format_pending: bool,
    /// The volume this one was cloned from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The snapshot this one was restored from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// An XFS copy keeps its source's UUID (its log, taken frozen, must be
    /// replayed by a mount before xfs_admin may change it): it is mounted
    /// with `nouuid`, so that it and its source can be mounted at once.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nouuid: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Meta {
    pub fn new(name: &str, wanted: &Wanted, capacity_bytes: u64) -> Meta {
        Meta {
            version: VERSION,
            name: name.to_string(),
            mode: wanted.mode,
            fs_type: wanted.fs_type,
            capacity_bytes,
            state: State::Creating,
            grow_pending: false,
            format_pending: false,
            source: None,
            snapshot: None,
            nouuid: false,
        }
    }

    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        let mut out = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        out.push(b'\n');
        Ok(out)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Meta, String> {
        let meta: Meta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if meta.version > VERSION {
            return Err(format!(
                "version {} was written by a newer local-dir (this one reads {VERSION})",
                meta.version
            ));
        }
        Ok(meta)
    }

    /// Why an existing volume does not answer a repeated create-volume, or
    /// None when it does (same name, mode, filesystem, size in range).
    /// A raw-block request accepts an image with a filesystem.
    pub fn mismatch(
        &self,
        name: &str,
        wanted: &Wanted,
        required: Option<u64>,
        limit: Option<u64>,
    ) -> Option<String> {
        let mut why = Vec::new();
        if self.name != name {
            why.push(format!("its id is taken by volume {:?}", self.name));
        }
        if self.mode != wanted.mode {
            why.push(format!(
                "it is a {} volume, not {}",
                self.mode.as_str(),
                wanted.mode.as_str()
            ));
        } else if wanted.fs_type.is_some() && self.fs_type != wanted.fs_type {
            why.push(format!(
                "its filesystem is {}, not {}",
                fs_name(self.fs_type),
                fs_name(wanted.fs_type)
            ));
        }
        let range = CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        };
        if !size::fits(self.capacity_bytes, &range) {
            why.push(format!(
                "its size {} is outside the requested range",
                size::human(self.capacity_bytes)
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The volume context handed back to the CO (and to node calls).
    pub fn volume_context(&self, node: &str) -> Vec<(String, String)> {
        let mut ctx = vec![("mode".to_string(), self.mode.as_str().to_string())];
        if let Some(fs) = self.fs_type {
            ctx.push(("fsType".to_string(), fs.as_str().to_string()));
        }
        ctx.push(("node".to_string(), node.to_string()));
        ctx
    }
}

fn fs_name(fs: Option<FsType>) -> &'static str {
    fs.map_or("none (raw block)", FsType::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::MIB;

    fn xfs() -> Wanted {
        Wanted {
            mode: Mode::Image,
            mode_from_parameters: false,
            fs_type: Some(FsType::Xfs),
        }
    }

    #[test]
    fn json_round_trip() {
        let mut m = Meta::new("pvc-1", &xfs(), 300 * MIB);
        m.grow_pending = true;
        m.format_pending = true;
        let back = Meta::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back, m);
        let text = String::from_utf8(m.to_json().unwrap()).unwrap();
        assert!(text.contains("\"fsType\": \"xfs\""), "{text}");
        assert!(text.contains("\"state\": \"creating\""), "{text}");
    }

    #[test]
    fn optional_fields_default() {
        let m = Meta::from_json(
            br#"{"version":1,"name":"n","mode":"subvolume","capacityBytes":5,"state":"ready","future":1}"#,
        )
        .unwrap();
        assert_eq!(m.fs_type, None);
        assert!(!m.grow_pending);
        assert!(!m.format_pending, "older records hold a formatted image");
        assert_eq!(m.state, State::Ready);
    }

    #[test]
    fn bad_json_and_newer_versions_are_errors() {
        assert!(Meta::from_json(b"{").is_err());
        assert!(Meta::from_json(b"").is_err());
        let newer = br#"{"version":2,"name":"n","mode":"image","capacityBytes":5,"state":"ready"}"#;
        assert!(Meta::from_json(newer).unwrap_err().contains("newer"));
    }

    #[test]
    fn compatible_repeat_matches() {
        let m = Meta::new("pvc-1", &xfs(), 300 * MIB);
        assert_eq!(m.mismatch("pvc-1", &xfs(), Some(10 * MIB), None), None);
        assert_eq!(m.mismatch("pvc-1", &xfs(), None, Some(300 * MIB)), None);
        let block = Wanted {
            fs_type: None,
            ..xfs()
        };
        assert_eq!(m.mismatch("pvc-1", &block, None, None), None);
    }

    #[test]
    fn incompatible_repeat_says_why() {
        let m = Meta::new("pvc-1", &xfs(), 300 * MIB);
        let ext4 = Wanted {
            fs_type: Some(FsType::Ext4),
            ..xfs()
        };
        assert!(m
            .mismatch("pvc-1", &ext4, None, None)
            .unwrap()
            .contains("xfs, not ext4"));
        assert!(m
            .mismatch("pvc-1", &xfs(), Some(301 * MIB), None)
            .unwrap()
            .contains("size"));
        assert!(m
            .mismatch("other", &xfs(), None, None)
            .unwrap()
            .contains("\"pvc-1\""));
        let sub = Wanted {
            mode: Mode::Subvolume,
            fs_type: None,
            ..xfs()
        };
        assert!(m.mismatch("pvc-1", &sub, None, None).is_some());
    }

    #[test]
    fn context_names_mode_fs_and_node() {
        let m = Meta::new("pvc-1", &xfs(), MIB);
        let ctx = m.volume_context("node-a");
        assert!(ctx.contains(&("mode".into(), "image".into())));
        assert!(ctx.contains(&("fsType".into(), "xfs".into())));
        assert!(ctx.contains(&("node".into(), "node-a".into())));
    }
}
