//! Request checks the host makes before any plugin sees a request, with the
//! codes the CSI spec lists.

use tonic::Status;

use crate::proto;
use crate::proto::volume_capability::access_mode::Mode;
use crate::proto::volume_capability::AccessType;
use crate::runtime::Plugin;
use crate::wit::exports::wasmcsi::plugin::identity::Features;
use crate::wit::wasmcsi::plugin::types as wit;

/// A required string field.
pub(crate) fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else if value.len() > 1024 {
        Err(Status::invalid_argument(format!(
            "{field} is longer than 1024 bytes"
        )))
    } else {
        Ok(value)
    }
}

/// CSI's capacity range; 0 means "unset". Negative or inverted → INVALID_ARGUMENT.
pub(crate) fn capacity(range: Option<&proto::CapacityRange>) -> Result<wit::CapacityRange, Status> {
    let Some(r) = range else {
        return Ok(wit::CapacityRange {
            required_bytes: None,
            limit_bytes: None,
        });
    };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument(
            "capacity_range bytes must not be negative",
        ));
    }
    let set = |v: i64| (v > 0).then_some(v as u64);
    let (required, limit) = (set(r.required_bytes), set(r.limit_bytes));
    if let (Some(req), Some(lim)) = (required, limit) {
        if req > lim {
            return Err(Status::out_of_range(format!(
                "capacity_range required_bytes {req} exceeds limit_bytes {lim}"
            )));
        }
    }
    Ok(wit::CapacityRange {
        required_bytes: required,
        limit_bytes: limit,
    })
}

/// One capability, complete and well-formed.
pub(crate) fn capability(cap: &proto::VolumeCapability) -> Result<wit::VolumeCapability, Status> {
    let access_type = match &cap.access_type {
        Some(AccessType::Mount(m)) => wit::AccessType::Mount(wit::MountAccess {
            fs_type: m.fs_type.clone(),
            mount_flags: m.mount_flags.clone(),
            volume_mount_group: m.volume_mount_group.clone(),
        }),
        Some(AccessType::Block(_)) => wit::AccessType::Block,
        None => {
            return Err(Status::invalid_argument(
                "volume capability access_type (mount or block) is required",
            ))
        }
    };
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    let access_mode = match mode {
        Mode::SingleNodeWriter => wit::AccessMode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly => wit::AccessMode::SingleNodeReaderOnly,
        Mode::MultiNodeReaderOnly => wit::AccessMode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter => wit::AccessMode::MultiNodeSingleWriter,
        Mode::MultiNodeMultiWriter => wit::AccessMode::MultiNodeMultiWriter,
        Mode::SingleNodeSingleWriter => wit::AccessMode::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter => wit::AccessMode::SingleNodeMultiWriter,
        Mode::Unknown => {
            return Err(Status::invalid_argument(
                "volume capability access_mode is required",
            ))
        }
    };
    Ok(wit::VolumeCapability {
        access_type,
        access_mode,
    })
}

/// A required, non-empty list of capabilities.
pub(crate) fn capabilities(
    caps: &[proto::VolumeCapability],
) -> Result<Vec<wit::VolumeCapability>, Status> {
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is required"));
    }
    caps.iter().map(capability).collect()
}

/// A required single capability.
pub(crate) fn one_capability(
    cap: Option<&proto::VolumeCapability>,
) -> Result<wit::VolumeCapability, Status> {
    capability(cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?)
}

/// Why the plugin cannot serve a capability, if it cannot.
pub(crate) fn unsupported(plugin: &Plugin, cap: &wit::VolumeCapability) -> Option<String> {
    if matches!(cap.access_type, wit::AccessType::Block) && !plugin.has(Features::BLOCK) {
        return Some(format!(
            "plugin {} does not offer block volumes",
            plugin.name
        ));
    }
    if !plugin.info.access_modes.contains(&cap.access_mode) {
        return Some(format!(
            "plugin {} does not support access mode {:?}",
            plugin.name, cap.access_mode
        ));
    }
    None
}

/// `max_entries` of the List calls: negative is invalid, 0 means all.
pub(crate) fn max_entries(value: i32) -> Result<u32, Status> {
    u32::try_from(value).map_err(|_| Status::invalid_argument("max_entries must not be negative"))
}
