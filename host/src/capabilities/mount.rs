//! The `mount` capability: mounts and bind mounts, only of granted
//! filesystem types and only onto targets under granted prefixes. Block
//! filesystems may only be mounted from loop devices of the plugin's own
//! images; bind sources must lie under the plugin root or a granted prefix.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

use super::fs::FsCap;
use super::{command, paths, CapError, CapResult};
use crate::config::MountGrant;
use crate::runtime::bindings::wasmcsi::plugin::mount::{Host, MountEntry};
use crate::runtime::bindings::wasmcsi::plugin::types::ErrorCode;
use crate::runtime::state::CallState;

/// Filesystem types whose source is a remote address, not a device.
const NETWORK_TYPES: &[&str] = &["nfs", "nfs4", "cifs", "smb3"];

pub struct MountCap {
    pub types: Vec<String>,
    /// Canonical directories mount targets must lie under.
    pub target_prefixes: Vec<PathBuf>,
    fs: Option<Arc<FsCap>>,
    record_network_mounts: Option<PathBuf>,
}

impl MountCap {
    pub fn new(grant: &MountGrant, fs: Option<Arc<FsCap>>) -> Result<MountCap> {
        Ok(MountCap {
            types: grant.types.clone(),
            target_prefixes: grant
                .target_prefixes
                .iter()
                .map(|p| paths::granted_dir(p))
                .collect::<Result<_>>()?,
            fs,
            record_network_mounts: grant.record_network_mounts.clone(),
        })
    }

    fn target(&self, target: &str) -> Result<PathBuf, CapError> {
        paths::confine(target, &self.target_prefixes, "mount target")
    }

    fn check_type(&self, fs_type: &str) -> Result<(), CapError> {
        if self.types.iter().any(|t| t == fs_type) {
            Ok(())
        } else {
            Err(CapError::denied(format!(
                "filesystem type {fs_type:?} is not granted (granted: {})",
                self.types.join(", ")
            )))
        }
    }

    fn own_loop_device(&self, device: &str) -> Result<(), CapError> {
        match &self.fs {
            Some(fs) => fs.loop_device(device).map(drop),
            None => Err(CapError::denied(
                "mounting a device needs the fs capability (the device must back an image under the plugin root)",
            )),
        }
    }

    /// A bind source: a loop device of ours, or a path under the root or a
    /// granted prefix.
    fn bind_source(&self, source: &str) -> Result<PathBuf, CapError> {
        if source.starts_with("/dev/") {
            self.own_loop_device(source)?;
            return Ok(PathBuf::from(source));
        }
        let mut allowed = self.target_prefixes.clone();
        if let Some(fs) = &self.fs {
            allowed.push(fs.root.clone());
        }
        let resolved = paths::confine(source, &allowed, "bind source")?;
        if !resolved.exists() {
            return Err(CapError::not_found(format!(
                "bind source {source:?} does not exist"
            )));
        }
        Ok(resolved)
    }

    async fn mount(
        &self,
        source: &str,
        target: &str,
        fs_type: &str,
        options: &[String],
    ) -> Result<(), CapError> {
        self.check_type(fs_type)?;
        let target = self.target(target)?;
        if NETWORK_TYPES.contains(&fs_type) {
            check_remote_source(source)?;
        } else {
            self.own_loop_device(source)?;
        }
        for option in options {
            check_option(option)?;
        }
        if let Some(existing) = mounted_at(&target)? {
            let same = existing.fs_type == fs_type && same_source(&existing.source, source);
            return if same {
                Ok(())
            } else {
                Err(CapError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "{} already has {} ({}) mounted",
                        target.display(),
                        existing.source,
                        existing.fs_type
                    ),
                ))
            };
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| CapError::internal(format!("creating {}: {e}", target.display())))?;
        if let (Some(log), true) = (
            &self.record_network_mounts,
            NETWORK_TYPES.contains(&fs_type),
        ) {
            return record_mount(log, source, &target, fs_type, options);
        }
        let target_s = target.to_string_lossy();
        let mut args = vec!["-t", fs_type];
        let joined = options.join(",");
        if !joined.is_empty() {
            args.extend(["-o", joined.as_str()]);
        }
        args.extend([source, target_s.as_ref()]);
        command::run("mount", &args).await.map(drop)
    }

    async fn bind(&self, source: &str, target: &str, read_only: bool) -> Result<(), CapError> {
        let source = self.bind_source(source)?;
        let target = self.target(target)?;
        let source_meta = std::fs::metadata(&source)
            .map_err(|e| CapError::not_found(format!("{}: {e}", source.display())))?;
        if let Some(existing) = mounted_at(&target)? {
            let target_meta = std::fs::metadata(&target)
                .map_err(|e| CapError::internal(format!("{}: {e}", target.display())))?;
            let same =
                target_meta.dev() == source_meta.dev() && target_meta.ino() == source_meta.ino();
            return if same && existing.read_only == read_only {
                Ok(())
            } else {
                Err(CapError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "{} is already mounted ({}, read-only {}), not as asked",
                        target.display(),
                        existing.source,
                        existing.read_only
                    ),
                ))
            };
        }
        if source_meta.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            // A device or file is bound onto a file.
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    CapError::internal(format!("creating {}: {e}", parent.display()))
                })?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&target)
                .map(drop)
        }
        .map_err(|e| CapError::internal(format!("creating {}: {e}", target.display())))?;
        let options = if read_only { "bind,ro" } else { "bind" };
        let (source_s, target_s) = (source.to_string_lossy(), target.to_string_lossy());
        command::run("mount", &["-o", options, &source_s, &target_s])
            .await
            .map(drop)
    }

    async fn unmount(&self, target: &str, remove_target: bool) -> Result<(), CapError> {
        let target = self.target(target)?;
        let target_s = target.to_string_lossy();
        // Mounts may be stacked; take them all off.
        while mounted_at(&target)?.is_some() {
            command::run("umount", &[&target_s]).await?;
        }
        if remove_target {
            let removed = match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(&target),
                Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(&target),
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            removed
                .map_err(|e| CapError::internal(format!("removing {}: {e}", target.display())))?;
        }
        Ok(())
    }
}

/// Appends the mount that would have run to the record file.
fn record_mount(
    log: &Path,
    source: &str,
    target: &Path,
    fs_type: &str,
    options: &[String],
) -> Result<(), CapError> {
    use std::io::Write;
    let line = serde_json::json!({
        "source": source,
        "target": target,
        "fsType": fs_type,
        "options": options,
    });
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| CapError::internal(format!("recording the mount in {}: {e}", log.display())))
}

/// `host:/path` (or `//host/share` for cifs); never an option in disguise.
fn check_remote_source(source: &str) -> Result<(), CapError> {
    let ok = !source.starts_with('-')
        && !source.chars().any(|c| c.is_whitespace() || c == ',')
        && (source.contains(":/") || source.starts_with("//"));
    if ok {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "network mount source {source:?} must look like host:/path"
        )))
    }
}

fn check_option(option: &str) -> Result<(), CapError> {
    let ok = !option.is_empty()
        && !option.starts_with('-')
        && option
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=.:/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "mount option {option:?} is not allowed"
        )))
    }
}

fn same_source(mounted: &str, asked: &str) -> bool {
    mounted.trim_end_matches('/') == asked.trim_end_matches('/')
}

/// What is mounted exactly at `target` (the top of a stack), from
/// /proc/self/mountinfo.
pub fn mounted_at(target: &Path) -> Result<Option<MountEntry>, CapError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CapError::internal(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(parse_mountinfo(&info, target))
}

fn parse_mountinfo(info: &str, target: &Path) -> Option<MountEntry> {
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let mount_point = unescape(left.get(4)?);
        if Path::new(&mount_point) != target {
            return None;
        }
        let options = left.get(5)?;
        Some(MountEntry {
            source: unescape(right.get(1)?),
            fs_type: right.first()?.to_string(),
            read_only: options.split(',').any(|o| o == "ro"),
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            let n = d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CallState {
    fn mount_cap(&self) -> Result<&MountCap, CapError> {
        self.grants
            .mount
            .as_ref()
            .ok_or_else(|| CapError::not_granted("mount", &self.grants.plugin))
    }
}

impl Host for CallState {
    async fn mount(
        &mut self,
        source: String,
        target: String,
        fs_type: String,
        options: Vec<String>,
    ) -> CapResult<()> {
        Ok(self
            .mount_cap()?
            .mount(&source, &target, &fs_type, &options)
            .await?)
    }

    async fn bind(&mut self, source: String, target: String, read_only: bool) -> CapResult<()> {
        Ok(self.mount_cap()?.bind(&source, &target, read_only).await?)
    }

    async fn unmount(&mut self, target: String, remove_target: bool) -> CapResult<()> {
        Ok(self.mount_cap()?.unmount(&target, remove_target).await?)
    }

    async fn mounted_at(&mut self, target: String) -> CapResult<Option<MountEntry>> {
        let target = self.mount_cap()?.target(&target)?;
        Ok(mounted_at(&target)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
        40 22 7:0 / /var/lib/kubelet/a\\040b rw,relatime - xfs /dev/loop0 rw\n\
        41 40 7:0 / /var/lib/kubelet/a\\040b ro,relatime - xfs /dev/loop1 ro\n";

    #[test]
    fn mountinfo_takes_top_of_stack_and_unescapes() {
        let e = parse_mountinfo(INFO, Path::new("/var/lib/kubelet/a b")).unwrap();
        assert_eq!(e.source, "/dev/loop1");
        assert!(e.read_only);
        assert!(parse_mountinfo(INFO, Path::new("/var/lib/kubelet/a")).is_none());
    }

    #[test]
    fn remote_sources_and_options_are_checked() {
        assert!(check_remote_source("10.0.0.1:/sdsfs/x").is_ok());
        assert!(check_remote_source("-oexec").is_err());
        assert!(check_remote_source("/dev/sda").is_err());
        assert!(check_option("vers=4.1").is_ok());
        assert!(check_option("a,b").is_err());
        assert!(check_option("").is_err());
    }
}
