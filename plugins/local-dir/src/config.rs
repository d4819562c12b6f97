//! What kind of volume to make: plugin settings from the driver config,
//! overridden by StorageClass parameters, overridden by the CO's fstype.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, precondition, Result};
use crate::size::{self, MIB};
use crate::wasmcsi::plugin::types::{AccessMode, AccessType, VolumeCapability};

/// How a volume is stored. Each mode has its `backend`; adding one means a
/// variant here and a backend there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A sparse image file with a filesystem, attached to a loop device.
    Image,
    /// A btrfs subvolume limited by a qgroup.
    Subvolume,
    /// Reserved: a directory limited by an XFS/ext4 project quota.
    ProjectQuota,
}

impl Mode {
    const NAMES: &'static str = "image, subvolume, project-quota";

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "image" => Some(Mode::Image),
            "subvolume" => Some(Mode::Subvolume),
            "project-quota" => Some(Mode::ProjectQuota),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Image => "image",
            Mode::Subvolume => "subvolume",
            Mode::ProjectQuota => "project-quota",
        }
    }
}

/// Filesystems made inside image files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsType {
    Xfs,
    Ext4,
}

impl FsType {
    const NAMES: &'static str = "xfs, ext4";

    pub fn parse(s: &str) -> Option<FsType> {
        match s {
            "xfs" => Some(FsType::Xfs),
            "ext4" => Some(FsType::Ext4),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Xfs => "xfs",
            FsType::Ext4 => "ext4",
        }
    }
}

/// The plugin's `settings` map from the driver config.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    pub fs_type: FsType,
    pub default_volume_bytes: u64,
    pub max_volume_bytes: Option<u64>,
    /// Image mode: how many times the root's available space the sparse
    /// images may be provisioned for (1.0: no overcommit).
    pub overcommit_ratio: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Image,
            fs_type: FsType::Xfs,
            default_volume_bytes: 1 << 30,
            max_volume_bytes: None,
            overcommit_ratio: 1.0,
        }
    }
}

impl Settings {
    /// Bad settings are the operator's mistake, not the caller's, hence
    /// FAILED_PRECONDITION; unknown keys are refused so typos do not pass
    /// silently.
    pub fn parse(kv: &[(String, String)]) -> Result<Settings> {
        let mut s = Settings::default();
        for (key, value) in kv {
            let bad = |what: &str| {
                precondition(format!(
                    "local-dir settings in the driver config: {key} = {value:?} {what}"
                ))
            };
            match key.as_str() {
                "mode" => {
                    s.mode = Mode::parse(value)
                        .ok_or_else(|| bad(&format!("is not one of {}", Mode::NAMES)))?
                }
                "fsType" => {
                    s.fs_type = FsType::parse(value)
                        .ok_or_else(|| bad(&format!("is not one of {}", FsType::NAMES)))?
                }
                "defaultVolumeBytes" => {
                    s.default_volume_bytes = size::parse_quantity(value)
                        .ok_or_else(|| bad("is not a size (bytes, or with Ki/Mi/Gi/Ti/K/M/G/T)"))?
                }
                "maxVolumeBytes" => {
                    s.max_volume_bytes =
                        Some(size::parse_quantity(value).ok_or_else(|| {
                            bad("is not a size (bytes, or with Ki/Mi/Gi/Ti/K/M/G/T)")
                        })?)
                }
                "overcommitRatio" => {
                    s.overcommit_ratio = value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && *r > 0.0)
                        .ok_or_else(|| bad("is not a positive number"))?
                }
                _ => {
                    return Err(precondition(format!(
                        "local-dir settings in the driver config: unknown key {key:?} \
                         (known: mode, fsType, defaultVolumeBytes, maxVolumeBytes, \
                         overcommitRatio)"
                    )))
                }
            }
        }
        if s.max_volume_bytes.is_some_and(|max| max < MIB) {
            return Err(precondition(
                "local-dir settings in the driver config: maxVolumeBytes is below 1 MiB",
            ));
        }
        Ok(s)
    }
}

/// The kind of volume a create-volume request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub mode: Mode,
    /// The mode came from a StorageClass parameter (so a mode the node
    /// cannot host is the caller's mistake, not the operator's).
    pub mode_from_parameters: bool,
    /// Image mode with mount access: the filesystem to make. `None` for
    /// raw-block-only images (no mkfs) and for other modes.
    pub fs_type: Option<FsType>,
}

/// Keys reserved by Kubernetes in StorageClass parameters; never ours.
const K8S_PREFIX: &str = "csi.storage.k8s.io/";

/// Merges settings, StorageClass parameters and capabilities; refuses what
/// local-dir cannot do with INVALID_ARGUMENT naming the offending input.
pub fn resolve(
    settings: &Settings,
    parameters: &[(String, String)],
    capabilities: &[VolumeCapability],
) -> Result<Wanted> {
    let mut mode = settings.mode;
    let mut mode_from_parameters = false;
    let mut fs_param = None;
    for (key, value) in parameters {
        match key.as_str() {
            // Kubernetes' own keys (e.g. in get-capacity parameters).
            k if k.starts_with(K8S_PREFIX) => {}
            "mode" => {
                mode = Mode::parse(value).ok_or_else(|| {
                    invalid(format!(
                        "StorageClass parameter mode = {value:?} is not one of {}",
                        Mode::NAMES
                    ))
                })?;
                mode_from_parameters = true;
            }
            "fsType" => {
                fs_param = Some(FsType::parse(value).ok_or_else(|| {
                    invalid(format!(
                        "StorageClass parameter fsType = {value:?} is not one of {}",
                        FsType::NAMES
                    ))
                })?)
            }
            _ => {
                return Err(invalid(format!(
                    "unknown StorageClass parameter {key:?} (local-dir knows mode, fsType)"
                )))
            }
        }
    }
    if fs_param.is_some() && mode != Mode::Image {
        return Err(invalid(format!(
            "StorageClass parameter fsType applies to image mode only, not {}",
            mode.as_str()
        )));
    }

    let mut fs = fs_param.unwrap_or(settings.fs_type);
    let mut fs_from_capability: Option<&str> = None;
    let mut needs_fs = capabilities.is_empty();
    for cap in capabilities {
        check_access_mode(cap.access_mode)?;
        match &cap.access_type {
            AccessType::Block if mode != Mode::Image => {
                return Err(invalid(format!(
                    "raw block access needs image mode; {} volumes are directories",
                    mode.as_str()
                )))
            }
            AccessType::Block => {}
            AccessType::Mount(m) => {
                needs_fs = true;
                let asked = m.fs_type.as_str();
                if asked.is_empty() {
                    continue;
                }
                if let Some(prev) = fs_from_capability.filter(|p| *p != asked) {
                    return Err(invalid(format!(
                        "volume capabilities ask for two filesystems: {prev} and {asked}"
                    )));
                }
                fs_from_capability = Some(asked);
                match mode {
                    Mode::Image => {
                        fs = FsType::parse(asked).ok_or_else(|| {
                            invalid(format!(
                                "fstype {asked:?} is not supported by local-dir images ({})",
                                FsType::NAMES
                            ))
                        })?
                    }
                    // A subvolume is a btrfs directory: only that fstype is true.
                    _ if asked == "btrfs" => {}
                    _ => {
                        return Err(invalid(format!(
                            "fstype {asked:?} is not possible in {} mode (its volumes are btrfs \
                             directories); use image mode for xfs or ext4",
                            mode.as_str()
                        )))
                    }
                }
            }
        }
    }
    Ok(Wanted {
        mode,
        mode_from_parameters,
        fs_type: (mode == Mode::Image && needs_fs).then_some(fs),
    })
}

/// The access modes in `identity::info`: local volumes are single-node.
pub const ACCESS_MODES: [AccessMode; 4] = [
    AccessMode::SingleNodeWriter,
    AccessMode::SingleNodeReaderOnly,
    AccessMode::SingleNodeSingleWriter,
    AccessMode::SingleNodeMultiWriter,
];

pub fn check_access_mode(mode: AccessMode) -> Result<()> {
    if ACCESS_MODES.contains(&mode) {
        Ok(())
    } else {
        Err(invalid(format!(
            "access mode {} is not supported: local-dir volumes live on one node",
            access_mode_name(mode)
        )))
    }
}

pub fn access_mode_name(mode: AccessMode) -> &'static str {
    match mode {
        AccessMode::SingleNodeWriter => "single-node-writer",
        AccessMode::SingleNodeReaderOnly => "single-node-reader-only",
        AccessMode::MultiNodeReaderOnly => "multi-node-reader-only",
        AccessMode::MultiNodeSingleWriter => "multi-node-single-writer",
        AccessMode::MultiNodeMultiWriter => "multi-node-multi-writer",
        AccessMode::SingleNodeSingleWriter => "single-node-single-writer",
        AccessMode::SingleNodeMultiWriter => "single-node-multi-writer",
    }
}

/// A read-only access mode forces a read-only publish whatever the flag says.
pub fn read_only_mode(mode: AccessMode) -> bool {
    matches!(
        mode,
        AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::wasmcsi::plugin::types::MountAccess;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn mount(fs: &str) -> VolumeCapability {
        VolumeCapability {
            access_type: AccessType::Mount(MountAccess {
                fs_type: fs.into(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            }),
            access_mode: AccessMode::SingleNodeWriter,
        }
    }

    fn block() -> VolumeCapability {
        VolumeCapability {
            access_type: AccessType::Block,
            access_mode: AccessMode::SingleNodeWriter,
        }
    }

    #[test]
    fn settings_defaults() {
        let s = Settings::parse(&[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.default_volume_bytes, 1 << 30);
    }

    #[test]
    fn settings_parse_all_keys() {
        let s = Settings::parse(&kv(&[
            ("mode", "subvolume"),
            ("fsType", "ext4"),
            ("defaultVolumeBytes", "2Gi"),
            ("maxVolumeBytes", "1099511627776"),
        ]))
        .unwrap();
        assert_eq!(s.mode, Mode::Subvolume);
        assert_eq!(s.fs_type, FsType::Ext4);
        assert_eq!(s.default_volume_bytes, 2 << 30);
        assert_eq!(s.max_volume_bytes, Some(1 << 40));
    }

    #[test]
    fn settings_refuse_typos_and_bad_values() {
        for bad in [
            kv(&[("fstype", "xfs")]),
            kv(&[("mode", "zfs")]),
            kv(&[("fsType", "btrfs")]),
            kv(&[("defaultVolumeBytes", "lots")]),
            kv(&[("maxVolumeBytes", "1")]),
        ] {
            let e = Settings::parse(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::FailedPrecondition, "{bad:?}");
            assert!(e.message.contains(&bad[0].0), "{}", e.message);
        }
    }

    #[test]
    fn defaults_give_xfs_image() {
        let w = resolve(&Settings::default(), &[], &[mount("")]).unwrap();
        assert_eq!(
            w,
            Wanted {
                mode: Mode::Image,
                mode_from_parameters: false,
                fs_type: Some(FsType::Xfs)
            }
        );
    }

    #[test]
    fn capability_fstype_beats_parameter_beats_setting() {
        let s = Settings::default();
        let p = kv(&[("fsType", "ext4")]);
        assert_eq!(
            resolve(&s, &p, &[mount("")]).unwrap().fs_type,
            Some(FsType::Ext4)
        );
        assert_eq!(
            resolve(&s, &p, &[mount("xfs")]).unwrap().fs_type,
            Some(FsType::Xfs)
        );
    }

    #[test]
    fn unknown_parameter_is_named() {
        let e = resolve(&Settings::default(), &kv(&[("size", "1")]), &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("\"size\""));
    }

    #[test]
    fn kubernetes_keys_are_ignored() {
        let p = kv(&[("csi.storage.k8s.io/fstype", "ext4")]);
        let w = resolve(&Settings::default(), &p, &[]).unwrap();
        assert_eq!(w.fs_type, Some(FsType::Xfs));
    }

    #[test]
    fn read_only_modes() {
        assert!(read_only_mode(AccessMode::SingleNodeReaderOnly));
        assert!(!read_only_mode(AccessMode::SingleNodeWriter));
        assert!(check_access_mode(AccessMode::SingleNodeMultiWriter).is_ok());
        let e = check_access_mode(AccessMode::MultiNodeReaderOnly).unwrap_err();
        assert!(
            e.message.contains("multi-node-reader-only"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_capability_fstype_is_invalid() {
        let e = resolve(&Settings::default(), &[], &[mount("vfat")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        let e = resolve(&Settings::default(), &[], &[mount("xfs"), mount("ext4")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn block_only_image_has_no_filesystem() {
        let w = resolve(&Settings::default(), &[], &[block()]).unwrap();
        assert_eq!(w.fs_type, None);
        let w = resolve(&Settings::default(), &[], &[block(), mount("")]).unwrap();
        assert_eq!(w.fs_type, Some(FsType::Xfs));
    }

    #[test]
    fn subvolume_rules() {
        let p = kv(&[("mode", "subvolume")]);
        let w = resolve(&Settings::default(), &p, &[mount("btrfs")]).unwrap();
        assert_eq!(w.mode, Mode::Subvolume);
        assert!(w.mode_from_parameters);
        assert_eq!(w.fs_type, None);
        for caps in [vec![block()], vec![mount("xfs")]] {
            let e = resolve(&Settings::default(), &p, &caps).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
        }
        let p = kv(&[("mode", "subvolume"), ("fsType", "xfs")]);
        assert!(resolve(&Settings::default(), &p, &[]).is_err());
    }

    #[test]
    fn multi_node_access_is_refused() {
        let mut c = mount("");
        c.access_mode = AccessMode::MultiNodeMultiWriter;
        let e = resolve(&Settings::default(), &[], &[c]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }
}
