//! The `fs` capability: statfs, filesystem images, loop devices and btrfs
//! subvolumes, every path confined to the plugin's root.

use std::path::{Path, PathBuf};

use anyhow::Result;
use wasmtime_wasi::filesystem::Dir;

use super::{command, loopdev, paths, CapError, CapResult};
use crate::config::FsGrant;
use crate::runtime::bindings::wasmcsi::plugin::fs::{FsStats, Host};
use crate::runtime::preopens;
use crate::runtime::state::CallState;

/// Filesystems the capability formats, checks and grows.
const FORMATTABLE: &[&str] = &["xfs", "ext4"];

pub struct FsCap {
    /// Canonical root.
    pub root: PathBuf,
    /// The root as the plugin's WASI preopen (seen by the guest at the
    /// same path), opened once for all calls.
    pub preopen: Dir,
    /// The loop devices of this root's images.
    loops: loopdev::LoopIndex,
}

impl FsCap {
    pub fn new(grant: &FsGrant) -> Result<FsCap> {
        let root = paths::granted_dir(&grant.root)?;
        Ok(FsCap {
            preopen: preopens::open_root(&root)?,
            loops: loopdev::LoopIndex::default(),
            root,
        })
    }

    /// Resolves a path that must lie under the root.
    pub fn under_root(&self, path: &str) -> Result<PathBuf, CapError> {
        paths::confine(path, std::slice::from_ref(&self.root), "path")
    }

    /// Resolves an existing regular file under the root.
    fn image(&self, path: &str) -> Result<PathBuf, CapError> {
        let image = self.under_root(path)?;
        match std::fs::metadata(&image) {
            Ok(m) if m.is_file() => Ok(image),
            Ok(_) => Err(CapError::invalid(format!("{path:?} is not a regular file"))),
            Err(e) => Err(CapError::not_found(format!("image {path:?}: {e}"))),
        }
    }

    /// Checks that a loop device belongs to this root.
    pub fn loop_device(&self, device: &str) -> Result<PathBuf, CapError> {
        loopdev::owned_by(device, &self.root)
    }
}

fn formattable(fs_type: &str) -> Result<(), CapError> {
    if FORMATTABLE.contains(&fs_type) {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "filesystem type {fs_type:?} is not supported (supported: {})",
            FORMATTABLE.join(", ")
        )))
    }
}

/// Checks that `path` is the root of a btrfs subvolume (inode 256 on btrfs).
fn subvolume_root(path: &Path) -> Result<(), CapError> {
    use std::os::unix::fs::MetadataExt;
    const SUBVOLUME_ROOT_INODE: u64 = 256;
    let meta = std::fs::metadata(path)
        .map_err(|e| CapError::not_found(format!("{}: {e}", path.display())))?;
    if meta.is_dir() && meta.ino() == SUBVOLUME_ROOT_INODE && type_name(path)? == "btrfs" {
        Ok(())
    } else {
        Err(CapError::invalid(format!(
            "{} is not a btrfs subvolume",
            path.display()
        )))
    }
}

/// statfs(2) of a path.
pub fn statfs(path: &Path) -> Result<FsStats, CapError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| CapError::not_found(format!("statfs {}: {e}", path.display())))?;
    let frag = st.fragment_size();
    Ok(FsStats {
        total_bytes: st.blocks() * frag,
        free_bytes: st.blocks_free() * frag,
        available_bytes: st.blocks_available() * frag,
        total_inodes: st.files(),
        free_inodes: st.files_free(),
    })
}

/// The name of the filesystem holding `path`, from its statfs magic.
pub fn type_name(path: &Path) -> Result<String, CapError> {
    let st = nix::sys::statfs::statfs(path)
        .map_err(|e| CapError::not_found(format!("statfs {}: {e}", path.display())))?;
    let magic = st.filesystem_type().0 as u64;
    Ok(match magic {
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6969 => "nfs".into(),
        0x794c_7630 => "overlay".into(),
        other => format!("0x{other:x}"),
    })
}

impl FsCap {
    async fn make_filesystem(&self, image: &str, fs_type: &str) -> Result<(), CapError> {
        formattable(fs_type)?;
        let image = self.image(image)?;
        if self.loops.find(&image)?.is_some() {
            return Err(CapError::new(
                super::ErrorCode::FailedPrecondition,
                format!(
                    "{} is attached to a loop device; refusing mkfs",
                    image.display()
                ),
            ));
        }
        let path = image.to_string_lossy();
        // Neither tool is forced (-f): an existing filesystem is never wiped.
        match fs_type {
            "xfs" => command::run("mkfs.xfs", &["-q", &path]).await?,
            _ => command::run("mkfs.ext4", &["-q", "-F", "-m", "0", &path]).await?,
        };
        Ok(())
    }

    async fn probe_filesystem(&self, image: &str) -> Result<Option<String>, CapError> {
        let image = self.image(image)?;
        let path = image.to_string_lossy();
        let out = command::run_status("blkid", &["-p", "-o", "value", "-s", "TYPE", &path]).await?;
        match out.status.code() {
            Some(0) => Ok(Some(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )),
            // blkid: 2 = nothing found.
            Some(2) => Ok(None),
            _ => Err(command::failure("blkid", &["-p", &path], &out)),
        }
    }

    async fn check_filesystem(&self, image: &str, fs_type: &str) -> Result<(), CapError> {
        formattable(fs_type)?;
        let image = self.image(image)?;
        if fs_type != "ext4" {
            // XFS replays its log at mount; xfs_repair is for humans.
            return Ok(());
        }
        let path = image.to_string_lossy();
        let out = command::run_status("e2fsck", &["-p", &path]).await?;
        // e2fsck: 0 clean, 1 errors corrected, 2 corrected (reboot advised).
        match out.status.code() {
            Some(0..=2) => Ok(()),
            _ => Err(command::failure("e2fsck", &["-p", &path], &out)),
        }
    }

    async fn grow_filesystem(
        &self,
        device: &str,
        mount_path: &str,
        fs_type: &str,
        mount_prefixes: &[PathBuf],
    ) -> Result<(), CapError> {
        formattable(fs_type)?;
        self.loop_device(device)?;
        match (fs_type, mount_path.is_empty()) {
            ("xfs", true) => Err(CapError::new(
                super::ErrorCode::FailedPrecondition,
                "xfs grows only while mounted: give the mount path",
            )),
            ("xfs", false) => {
                let target = paths::confine(mount_path, mount_prefixes, "mount path")?;
                command::run("xfs_growfs", &[&target.to_string_lossy()])
                    .await
                    .map(drop)
            }
            (_, true) => {
                // Offline resize2fs insists on a freshly checked filesystem.
                let out = command::run_status("e2fsck", &["-f", "-p", device]).await?;
                if !matches!(out.status.code(), Some(0..=2)) {
                    return Err(command::failure("e2fsck", &["-f", "-p", device], &out));
                }
                command::run("resize2fs", &[device]).await.map(drop)
            }
            (_, false) => {
                paths::confine(mount_path, mount_prefixes, "mount path")?;
                command::run("resize2fs", &[device])
                    .await
                    .map(drop)
                    .map_err(|e| {
                        // Some kernels refuse online ext4 growth outright; the
                        // plugin can still grow it offline at the next stage.
                        if e.message.contains("Permission denied to resize")
                            || e.message.contains("not supported")
                        {
                            CapError::new(
                                super::ErrorCode::FailedPrecondition,
                                format!("the kernel refused to grow ext4 online: {}", e.message),
                            )
                        } else {
                            e
                        }
                    })
            }
        }
    }

    async fn create_subvolume(&self, path: &str) -> Result<(), CapError> {
        let target = self.under_root(path)?;
        if target.exists() {
            return Err(CapError::new(
                super::ErrorCode::AlreadyExists,
                format!("{} already exists", target.display()),
            ));
        }
        command::run(
            "btrfs",
            &["-q", "subvolume", "create", &target.to_string_lossy()],
        )
        .await
        .map(drop)
    }

    async fn snapshot_subvolume(&self, source: &str, path: &str) -> Result<(), CapError> {
        let source = self.under_root(source)?;
        let target = self.under_root(path)?;
        if target.exists() {
            return Err(CapError::new(
                super::ErrorCode::AlreadyExists,
                format!("{} already exists", target.display()),
            ));
        }
        subvolume_root(&source)?;
        command::run(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "snapshot",
                &source.to_string_lossy(),
                &target.to_string_lossy(),
            ],
        )
        .await
        .map(drop)
    }

    async fn delete_subvolume(&self, path: &str) -> Result<(), CapError> {
        let target = self.under_root(path)?;
        if !target.exists() {
            return Ok(());
        }
        if target == self.root {
            return Err(CapError::denied("refusing to delete the plugin root"));
        }
        let path = target.to_string_lossy();
        // Drop the subvolume's qgroup too, so that no stale accounting stays.
        let qgroup = command::run("btrfs", &["inspect-internal", "rootid", &path])
            .await
            .ok()
            .map(|id| format!("0/{}", id.trim()));
        command::run(
            "btrfs",
            &["-q", "subvolume", "delete", "--commit-after", &path],
        )
        .await?;
        if let Some(qgroup) = qgroup {
            let parent = target
                .parent()
                .unwrap_or(&self.root)
                .to_string_lossy()
                .into_owned();
            // Fails harmlessly when quotas are off or the qgroup is gone.
            let _ = command::run_status("btrfs", &["qgroup", "destroy", &qgroup, &parent]).await;
        }
        Ok(())
    }
}

impl CallState {
    fn fs_cap(&self) -> Result<&FsCap, CapError> {
        self.grants
            .fs
            .as_deref()
            .ok_or_else(|| CapError::not_granted("fs", &self.grants.plugin))
    }

    /// Where statfs may look: the root and the granted mount targets.
    fn statfs_allowed(&self) -> Vec<PathBuf> {
        let mut allowed = self.mount_prefixes();
        if let Some(fs) = &self.grants.fs {
            allowed.push(fs.root.clone());
        }
        allowed
    }

    pub fn mount_prefixes(&self) -> Vec<PathBuf> {
        self.grants
            .mount
            .as_ref()
            .map(|m| m.target_prefixes.clone())
            .unwrap_or_default()
    }
}

impl Host for CallState {
    async fn statfs(&mut self, path: String) -> CapResult<FsStats> {
        let allowed = self.statfs_allowed();
        if allowed.is_empty() {
            return Err(CapError::not_granted("fs", &self.grants.plugin).into());
        }
        let resolved = paths::confine(&path, &allowed, "path")?;
        Ok(statfs(&resolved)?)
    }

    async fn filesystem_type(&mut self, path: String) -> CapResult<String> {
        let resolved = self.fs_cap()?.under_root(&path)?;
        Ok(type_name(&resolved)?)
    }

    async fn make_filesystem(&mut self, image: String, fs_type: String) -> CapResult<()> {
        Ok(self.fs_cap()?.make_filesystem(&image, &fs_type).await?)
    }

    async fn probe_filesystem(&mut self, image: String) -> CapResult<Option<String>> {
        Ok(self.fs_cap()?.probe_filesystem(&image).await?)
    }

    async fn check_filesystem(&mut self, image: String, fs_type: String) -> CapResult<()> {
        Ok(self.fs_cap()?.check_filesystem(&image, &fs_type).await?)
    }

    async fn grow_filesystem(
        &mut self,
        device: String,
        mount_path: String,
        fs_type: String,
    ) -> CapResult<()> {
        let prefixes = self.mount_prefixes();
        let fs = self.fs_cap()?;
        Ok(fs
            .grow_filesystem(&device, &mount_path, &fs_type, &prefixes)
            .await?)
    }

    async fn attach_loop(&mut self, image: String) -> CapResult<String> {
        let fs = self.fs_cap()?;
        let image = fs.image(&image)?;
        Ok(fs.loops.attach(&image).await?)
    }

    async fn find_loop(&mut self, image: String) -> CapResult<Option<String>> {
        let fs = self.fs_cap()?;
        let image = fs.under_root(&image)?;
        Ok(fs.loops.find(&image)?)
    }

    async fn refresh_loop(&mut self, device: String) -> CapResult<()> {
        self.fs_cap()?.loop_device(&device)?;
        Ok(loopdev::refresh(&device).await?)
    }

    async fn detach_loop(&mut self, device: String) -> CapResult<()> {
        let fs = self.fs_cap()?;
        fs.loop_device(&device)?;
        Ok(fs.loops.detach(&device).await?)
    }

    async fn create_subvolume(&mut self, path: String) -> CapResult<()> {
        Ok(self.fs_cap()?.create_subvolume(&path).await?)
    }

    async fn delete_subvolume(&mut self, path: String) -> CapResult<()> {
        Ok(self.fs_cap()?.delete_subvolume(&path).await?)
    }

    async fn snapshot_subvolume(&mut self, source: String, path: String) -> CapResult<()> {
        Ok(self.fs_cap()?.snapshot_subvolume(&source, &path).await?)
    }
}
