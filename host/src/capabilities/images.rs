//! The `images` unit: filesystem images on loop devices under the
//! plugin's root, and their copies — what a block back end needs. Granted
//! with the root (`fs` in the config). Every image is opened beneath the
//! root once and the tools and ioctls act on that descriptor.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::fs::OFlags;
use wasmtime::component::{HasData, Linker};

use super::beneath::GrantedDir;
use super::command::{self, FD_ARG};
use super::loopdev::LoopDevice;
use super::root::{with_root, PluginRoot};
use super::{beneath, blocking, granted, CallCaps, CapError, CapResult, ErrorCode, HasCallCaps};
use crate::wit::wasmcsi::plugin::images::{self as wit, CopyMethod, CopyPair, Host};

/// What `images` works on, built once per plugin.
pub struct ImagesCap {
    /// The plugin's root: every image lies beneath it.
    root: Arc<PluginRoot>,
    /// The mount grant's target prefixes, if granted: a mounted image is
    /// grown through its mount there.
    mount_prefixes: Option<Arc<[GrantedDir]>>,
}

impl ImagesCap {
    /// The unit's state: the root, and where its images may be mounted.
    pub fn new(root: Arc<PluginRoot>, mount_prefixes: Option<Arc<[GrantedDir]>>) -> ImagesCap {
        ImagesCap {
            root,
            mount_prefixes,
        }
    }
}

/// The `images` interface as the linker sees it.
pub struct Images;

impl HasData for Images {
    type Data<'a> = ImagesView<'a>;
}

/// One call's view of `images`: the unit's state, if granted.
pub struct ImagesView<'a> {
    cap: Option<&'a Arc<ImagesCap>>,
    plugin: &'a str,
}

impl<'a> ImagesView<'a> {
    /// The view of the call's `images` state.
    pub fn of(call: &'a CallCaps) -> ImagesView<'a> {
        ImagesView {
            cap: call.grants.images.as_ref(),
            plugin: &call.grants.plugin,
        }
    }

    fn cap(&self) -> Result<&'a Arc<ImagesCap>, CapError> {
        granted(self.cap, "fs", self.plugin)
    }

    fn root(&self) -> Result<&'a Arc<PluginRoot>, CapError> {
        Ok(&self.cap()?.root)
    }
}

/// Links `images`.
pub fn add_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Images>(linker, |t| ImagesView::of(t.call_caps()))
}

/// Filesystems the capability formats, checks and grows.
const FORMATTABLE: &[&str] = &["xfs", "ext4"];

impl Host for ImagesView<'_> {
    async fn make_filesystem(&mut self, image: String, fs_type: String) -> CapResult<()> {
        formattable(&fs_type)?;
        let fd = with_root(self.root()?, move |fs| {
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
        let fd = with_root(self.root()?, move |fs| fs.image(&image, false)).await?;
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
        let fd = with_root(self.root()?, move |fs| fs.image(&image, true)).await?;
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
        let cap = self.cap()?.clone();
        let offline = blocking::run(move || {
            let fs = &cap.root;
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
            let prefixes: Vec<&GrantedDir> =
                cap.mount_prefixes.iter().flat_map(|p| p.iter()).collect();
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
        Ok(with_root(self.root()?, move |fs| {
            let fd = fs.image(&image, true)?;
            fs.loops
                .attach(fd.as_fd(), fs.root.path(), fs.max_loops)
                .map(|dev| dev.name)
        })
        .await?)
    }

    async fn find_loop(&mut self, image: String) -> CapResult<Option<String>> {
        Ok(with_root(self.root()?, move |fs| {
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
        Ok(with_root(self.root()?, move |fs| fs.loop_device(&device)?.refresh()).await?)
    }

    async fn detach_loop(&mut self, device: String) -> CapResult<()> {
        Ok(with_root(self.root()?, move |fs| {
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
        let methods = with_root(self.root()?, move |fs| fs.copy_images(&pair)).await?;
        Ok(methods[0])
    }

    async fn copy_images(&mut self, pairs: Vec<CopyPair>) -> CapResult<Vec<CopyMethod>> {
        Ok(with_root(self.root()?, move |fs| fs.copy_images(&pairs)).await?)
    }

    async fn new_filesystem_uuid(&mut self, image: String, fs_type: String) -> CapResult<()> {
        let name = image.clone();
        let fd = with_root(self.root()?, move |fs| {
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
        Ok(with_root(self.root()?, move |fs| {
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
