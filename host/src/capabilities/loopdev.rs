//! Loop devices, looked up through sysfs (no tool needed) and changed with
//! losetup. A device counts as a plugin's only when its backing file lies
//! under that plugin's root.

use std::path::{Path, PathBuf};

use super::{command, CapError};

/// `/dev/loopN` → `loopN`, refusing anything that is not a loop device name.
fn kernel_name(device: &str) -> Result<&str, CapError> {
    let name = device
        .strip_prefix("/dev/")
        .filter(|n| {
            n.strip_prefix("loop")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .ok_or_else(|| {
            CapError::invalid(format!("{device:?} is not a loop device (/dev/loopN)"))
        })?;
    Ok(name)
}

/// The file behind a loop device, if it is attached.
pub fn backing_file(device: &str) -> Result<Option<PathBuf>, CapError> {
    let name = kernel_name(device)?;
    match std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")) {
        Ok(s) => Ok(Some(PathBuf::from(s.trim_end_matches('\n')))),
        Err(_) => Ok(None),
    }
}

/// The loop device an image is attached to, if any.
pub fn find(image: &Path) -> Result<Option<String>, CapError> {
    let entries = std::fs::read_dir("/sys/block")
        .map_err(|e| CapError::internal(format!("reading /sys/block: {e}")))?;
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"))
        .filter(|n| {
            std::fs::read_to_string(format!("/sys/block/{n}/loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end_matches('\n')) == image)
        })
        .map(|n| format!("/dev/{n}"))
        .collect();
    found.sort();
    Ok(found.into_iter().next())
}

/// Attaches an image, or returns the device it is already attached to.
pub async fn attach(image: &Path) -> Result<String, CapError> {
    if let Some(device) = find(image)? {
        return Ok(device);
    }
    let image = image.to_string_lossy();
    let out = command::run("losetup", &["--find", "--show", "--nooverlap", &image]).await?;
    let device = out.trim().to_string();
    kernel_name(&device)?;
    Ok(device)
}

pub async fn refresh(device: &str) -> Result<(), CapError> {
    kernel_name(device)?;
    command::run("losetup", &["--set-capacity", device])
        .await
        .map(drop)
}

pub async fn detach(device: &str) -> Result<(), CapError> {
    kernel_name(device)?;
    command::run("losetup", &["--detach", device])
        .await
        .map(drop)
}

/// Checks that `device` is a loop device whose backing file lies under
/// `root`; returns the backing file.
pub fn owned_by(device: &str, root: &Path) -> Result<PathBuf, CapError> {
    match backing_file(device)? {
        Some(file) if file.starts_with(root) => Ok(file),
        Some(file) => Err(CapError::denied(format!(
            "loop device {device} is backed by {}, outside the plugin root {}",
            file.display(),
            root.display()
        ))),
        None => Err(CapError::not_found(format!(
            "loop device {device} is not attached"
        ))),
    }
}
