//! Loop devices, looked up through sysfs (no tool needed) and changed with
//! losetup. A device counts as a plugin's only when its backing file lies
//! under that plugin's root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// Which loop device each image was last seen on, so that finding a
/// staged volume's device is one sysfs read, not a scan of every loop
/// device on the node. Only a hint: a hit is checked against sysfs, so a
/// device detached or reused behind our back is never trusted. An image
/// that is not attached still costs a scan.
#[derive(Default)]
pub struct LoopIndex(Mutex<HashMap<PathBuf, String>>);

impl LoopIndex {
    /// The loop device an image is attached to, if any.
    pub fn find(&self, image: &Path) -> Result<Option<String>, CapError> {
        if let Some(device) = self.hint(image) {
            if backing_file(&device)?.as_deref() == Some(image) {
                return Ok(Some(device));
            }
        }
        let found = scan(image)?;
        self.note(image, found.clone());
        Ok(found)
    }

    /// Attaches an image, or returns the device it is already attached to.
    pub async fn attach(&self, image: &Path) -> Result<String, CapError> {
        if let Some(device) = self.find(image)? {
            return Ok(device);
        }
        let path = image.to_string_lossy();
        let out = command::run("losetup", &["--find", "--show", "--nooverlap", &path]).await?;
        let device = out.trim().to_string();
        kernel_name(&device)?;
        self.note(image, Some(device.clone()));
        Ok(device)
    }

    pub async fn detach(&self, device: &str) -> Result<(), CapError> {
        kernel_name(device)?;
        command::run("losetup", &["--detach", device]).await?;
        self.entries().retain(|_, d| d != device);
        Ok(())
    }

    fn hint(&self, image: &Path) -> Option<String> {
        self.entries().get(image).cloned()
    }

    fn note(&self, image: &Path, device: Option<String>) {
        let mut entries = self.entries();
        match device {
            Some(device) => entries.insert(image.to_path_buf(), device),
            None => entries.remove(image),
        };
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every loop device on the node, looking for the one backed by `image`.
fn scan(image: &Path) -> Result<Option<String>, CapError> {
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

pub async fn refresh(device: &str) -> Result<(), CapError> {
    kernel_name(device)?;
    command::run("losetup", &["--set-capacity", device])
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Detaches the loop devices of a test, however it ends.
    struct Attached(Vec<String>);

    impl Drop for Attached {
        fn drop(&mut self) {
            for device in &self.0 {
                let _ = std::process::Command::new("losetup")
                    .args(["--detach", device])
                    .status();
            }
        }
    }

    fn image(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(1 << 20))
            .unwrap();
        path
    }

    #[tokio::test]
    async fn a_stale_hint_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (image(dir.path(), "a.img"), image(dir.path(), "b.img"));
        let index = LoopIndex::default();
        let mut attached = Attached(Vec::new());
        let device = index.attach(&a).await.unwrap();
        attached.0.push(device.clone());
        assert_eq!(index.find(&a).unwrap(), Some(device.clone()));
        assert_eq!(index.attach(&a).await.unwrap(), device, "attached twice");
        // Behind the index's back: `a` detached, its device likely reused for `b`.
        command::run("losetup", &["--detach", &device])
            .await
            .unwrap();
        let b_path = b.to_string_lossy();
        let other = command::run("losetup", &["--find", "--show", &b_path])
            .await
            .unwrap();
        attached.0.push(other.trim().to_string());
        assert_eq!(index.find(&a).unwrap(), None);
        assert_eq!(index.find(&b).unwrap(), Some(other.trim().to_string()));
    }
}
