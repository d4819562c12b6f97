//! The `images` capability: filesystem images on loop devices under the
//! plugin's root, and their copies — what a block back end needs. Granted
//! with the root (`fs` in the config). Every image is opened beneath the
//! root once and the tools and ioctls act on that descriptor.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::OFlags;

use super::command::{self, FD_ARG};
use super::fs::{fs_cap, with_fs};
use super::loopdev::LoopDevice;
use super::{beneath, blocking, CallCaps, CapError, CapResult, ErrorCode};
use crate::wit::wasmcsi::plugin::images::{CopyMethod, CopyPair, Host};

/// Filesystems the capability formats, checks and grows.
const FORMATTABLE: &[&str] = &["xfs", "ext4"];

impl Host for CallCaps {
    async fn make_filesystem(&mut self, image: String, fs_type: String) -> CapResult<()> {
        formattable(&fs_type)?;
        let fd = with_fs(&self.grants, move |fs| {
            let fd = fs.image(&image, true)?;
            fs.refuse_attached(fd.as_fd(), &image)?;
            Ok(fd)
        })
        .await?;
        // Neither tool is forced onto an existing filesystem of its own kind
        // (mkfs.ext4 -F only lets it format a regular file).
        let out = match fs_type.as_str() {
            "xfs" => command::run_on_fd_ok("mkfs.xfs", &["-q", FD_ARG], fd.as_fd()).await,
            _ => {
                command::run_on_fd_ok("mkfs.ext4", &["-q", "-F", "-m", "0", FD_ARG], fd.as_fd())
                    .await
            }
        };
        Ok(out.map(drop)?)
    }

    async fn probe_filesystem(&mut self, image: String) -> CapResult<Option<String>> {
        let fd = with_fs(&self.grants, move |fs| fs.image(&image, false)).await?;
        let args = ["-p", "-o", "value", "-s", "TYPE", FD_ARG];
        let out = command::run_on_fd("blkid", &args, fd.as_fd()).await?;
        match out.status.code() {
            Some(0) => Ok(Some(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )),
            // blkid: 2 = nothing found.
            Some(2) => Ok(None),
            _ => Err(command::failure("blkid", &args, &out).into()),
        }
    }

    async fn check_filesystem(&mut self, image: String, fs_type: String) -> CapResult<()> {
        formattable(&fs_type)?;
        // e2fsck itself refuses a mounted filesystem; attached is fine.
        let fd = with_fs(&self.grants, move |fs| fs.image(&image, true)).await?;
        if fs_type != "ext4" {
            // XFS replays its log at mount; xfs_repair is for humans.
            return Ok(());
        }
        let out = command::run_on_fd("e2fsck", &["-p", FD_ARG], fd.as_fd()).await?;
        // e2fsck: 0 clean, 1 errors corrected, 2 corrected (reboot advised).
        match out.status.code() {
            Some(0..=2) => Ok(()),
            _ => Err(command::failure("e2fsck", &["-p", FD_ARG], &out).into()),
        }
    }

    async fn grow_filesystem(
        &mut self,
        device: String,
        mount_path: String,
        fs_type: String,
    ) -> CapResult<()> {
        formattable(&fs_type)?;
        let grants = self.grants.clone();
        let offline = blocking::run(move || {
            let fs = fs_cap(&grants)?;
            let dev = fs.loop_device(&device)?;
            if mount_path.is_empty() {
                if fs_type == "xfs" {
                    return Err(CapError::new(
                        ErrorCode::FailedPrecondition,
                        "xfs grows only while mounted: give the mount path",
                    ));
                }
                return Ok(Some(dev));
            }
            let prefixes = grants
                .mount
                .as_ref()
                .map(|m| m.prefix_dirs())
                .unwrap_or_default();
            let at = beneath::locate(&prefixes, &mount_path, "mount path")?;
            let root = beneath::open(at, OFlags::RDONLY | OFlags::DIRECTORY)?;
            grow_online(&dev, root.as_fd(), &fs_type)?;
            Ok(None)
        })
        .await?;
        match offline {
            Some(dev) => Ok(offline_grow(&dev).await?),
            None => Ok(()),
        }
    }

    async fn attach_loop(&mut self, image: String) -> CapResult<String> {
        Ok(with_fs(&self.grants, move |fs| {
            let fd = fs.image(&image, true)?;
            fs.loops
                .attach(fd.as_fd(), fs.root.path(), fs.max_loops)
                .map(|dev| dev.name)
        })
        .await?)
    }

    async fn find_loop(&mut self, image: String) -> CapResult<Option<String>> {
        Ok(with_fs(&self.grants, move |fs| {
            let fd = match fs.image(&image, false) {
                Ok(fd) => fd,
                Err(e) if e.code == ErrorCode::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(fs.loops.find(fd.as_fd())?.map(|dev| dev.name))
        })
        .await?)
    }

    async fn refresh_loop(&mut self, device: String) -> CapResult<()> {
        Ok(with_fs(&self.grants, move |fs| fs.loop_device(&device)?.refresh()).await?)
    }

    async fn detach_loop(&mut self, device: String) -> CapResult<()> {
        Ok(with_fs(&self.grants, move |fs| {
            let dev = fs.loop_device(&device)?;
            fs.loops.detach(&dev)
        })
        .await?)
    }

    async fn copy_image(&mut self, source: String, destination: String) -> CapResult<CopyMethod> {
        let pair = [CopyPair {
            source,
            destination,
        }];
        let methods = with_fs(&self.grants, move |fs| fs.copy_images(&pair)).await?;
        Ok(methods[0])
    }

    async fn copy_images(&mut self, pairs: Vec<CopyPair>) -> CapResult<Vec<CopyMethod>> {
        Ok(with_fs(&self.grants, move |fs| fs.copy_images(&pairs)).await?)
    }

    async fn new_filesystem_uuid(&mut self, image: String, fs_type: String) -> CapResult<()> {
        let name = image.clone();
        let fd = with_fs(&self.grants, move |fs| {
            let fd = fs.image(&image, true)?;
            fs.refuse_attached(fd.as_fd(), &image)?;
            Ok(fd)
        })
        .await?;
        match fs_type.as_str() {
            "xfs" => {
                // xfs_admin exits 0 even when it refuses (a dirty log).
                let args = ["-U", "generate", FD_ARG];
                let out = command::run_on_fd("xfs_admin", &args, fd.as_fd()).await?;
                let said = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() || said.contains("ERROR") {
                    return Err(CapError::new(
                        ErrorCode::FailedPrecondition,
                        format!("xfs_admin -U generate {name}: {}", said.trim()),
                    )
                    .into());
                }
            }
            "ext4" => {
                // tune2fs wants a freshly checked filesystem for -U.
                let out = command::run_on_fd("e2fsck", &["-f", "-p", FD_ARG], fd.as_fd()).await?;
                if !matches!(out.status.code(), Some(0..=2)) {
                    return Err(command::failure("e2fsck", &["-f", "-p", FD_ARG], &out).into());
                }
                command::run_on_fd_ok("tune2fs", &["-U", "random", FD_ARG], fd.as_fd()).await?;
            }
            other => {
                return Err(CapError::invalid(format!(
                    "filesystem type {other:?} is not supported (supported: xfs, ext4)"
                ))
                .into())
            }
        }
        Ok(())
    }

    async fn allocated_bytes(&mut self, path: String) -> CapResult<u64> {
        Ok(with_fs(&self.grants, move |fs| {
            let fd = beneath::open(fs.locate(&path)?, OFlags::PATH)?;
            let st =
                rustix::fs::fstat(&fd).map_err(|e| CapError::internal(format!("{path:?}: {e}")))?;
            Ok((st.st_blocks as u64).saturating_mul(512))
        })
        .await?)
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

/// Grows the filesystem mounted at `mount_root` (a directory descriptor of
/// the mount's root, on `dev`) to fill the device, by ioctl.
fn grow_online(dev: &LoopDevice, mount_root: BorrowedFd, fs_type: &str) -> Result<(), CapError> {
    if beneath::identity(mount_root)?.0 != dev.rdev {
        return Err(CapError::denied(format!(
            "the mount path is not the filesystem of {}",
            dev.name
        )));
    }
    let size = dev.size()?;
    let result = match fs_type {
        "xfs" => super::grow::xfs(mount_root, size),
        _ => super::grow::ext4(mount_root, size),
    };
    result.map_err(|e| {
        use rustix::io::Errno;
        let code = match e {
            Errno::PERM | Errno::OPNOTSUPP | Errno::NOTTY => ErrorCode::FailedPrecondition,
            _ => ErrorCode::Internal,
        };
        CapError::new(
            code,
            format!(
                "the kernel refused to grow {fs_type} on {} online: {e}",
                dev.name
            ),
        )
    })
}

/// ext4 grown while unmounted: a forced check first (resize2fs insists),
/// both tools on the device the host holds.
async fn offline_grow(dev: &LoopDevice) -> Result<(), CapError> {
    let fd = dev.fd.as_fd();
    let out = command::run_on_fd("e2fsck", &["-f", "-p", FD_ARG], fd).await?;
    if !matches!(out.status.code(), Some(0..=2)) {
        return Err(command::failure("e2fsck", &["-f", "-p", FD_ARG], &out));
    }
    command::run_on_fd_ok("resize2fs", &[FD_ARG], fd)
        .await
        .map(drop)
}
