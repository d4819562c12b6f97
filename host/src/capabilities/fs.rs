//! The `fs` capability: statfs, filesystem images, loop devices and btrfs
//! subvolumes, every path resolved beneath the plugin's root descriptor
//! (see `beneath`) and every action taken on the descriptor found: tools
//! get the open file as `/proc/self/fd/3`, loop devices and subvolumes are
//! made by ioctl, filesystems grown by ioctl on their mount's root.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustix::fs::{FileType, OFlags};
use wasmtime_wasi::filesystem::Dir;
use wasmtime_wasi::{FsPerms, OpenMode};

use super::beneath::{self, GrantedDir, Located};
use super::command::{self, FD_ARG};
use super::loopdev::{self, LoopDevice};
use super::{blocking, btrfs, CallCaps, CapError, CapResult, ErrorCode, Grants};
use crate::config::FsGrant;
use crate::wit::wasmcsi::plugin::fs::{FsStats, Host};

/// Filesystems the capability formats, checks and grows.
const FORMATTABLE: &[&str] = &["xfs", "ext4"];

pub struct FsCap {
    /// The root, opened once.
    pub root: GrantedDir,
    /// The root as the plugin's WASI preopen (seen by the guest at the
    /// same path), opened once for all calls.
    pub preopen: Dir,
    /// The loop devices of this root's images.
    loops: loopdev::LoopIndex,
}

impl FsCap {
    pub fn new(grant: &FsGrant) -> Result<FsCap> {
        let root = GrantedDir::open(&grant.root)?;
        Ok(FsCap {
            preopen: open_preopen(root.path())?,
            loops: loopdev::LoopIndex::default(),
            root,
        })
    }

    /// Locates a path that must lie beneath the root.
    pub fn locate<'p>(&self, path: &'p str) -> Result<Located<'_, 'p>, CapError> {
        beneath::locate(&[&self.root], path, "path")
    }

    /// Opens an existing regular file beneath the root (an image).
    pub(super) fn image(&self, path: &str, write: bool) -> Result<OwnedFd, CapError> {
        let mode = if write { OFlags::RDWR } else { OFlags::RDONLY };
        // NONBLOCK: opening a fifo planted by the plugin must not hang.
        let fd = beneath::open(self.locate(path)?, mode | OFlags::NONBLOCK)?;
        beneath::require_type(&fd, FileType::RegularFile, path)?;
        Ok(fd)
    }

    /// The loop device an open image is attached to, if any.
    pub(super) fn attached(&self, image: BorrowedFd) -> Result<Option<LoopDevice>, CapError> {
        self.loops.find(image)
    }

    /// Opens a loop device and checks that it belongs to this root.
    pub fn loop_device(&self, device: &str) -> Result<LoopDevice, CapError> {
        loopdev::owned(device, &self.root)
    }

    /// Opens a btrfs subvolume strictly beneath the root (never the root
    /// itself): the only thing subvolume and quota calls may act on.
    pub fn subvolume(&self, path: &str) -> Result<OwnedFd, CapError> {
        let at = self.locate(path)?.below("subvolume")?;
        let fd = beneath::open(at, OFlags::RDONLY | OFlags::DIRECTORY)?;
        if !btrfs::is_subvolume(fd.as_fd())? {
            return Err(CapError::invalid(format!(
                "{path:?} is not a btrfs subvolume"
            )));
        }
        Ok(fd)
    }

    /// The directory a new entry goes in, and the entry's name.
    pub(super) fn parent_of<'p>(
        &self,
        path: &'p str,
    ) -> Result<(OwnedFd, &'p std::ffi::OsStr), CapError> {
        let (parent, name) = self.locate(path)?.below("path")?.split()?;
        let dir = beneath::open(parent, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok((dir, name))
    }

    pub(super) fn refuse_attached(&self, image: BorrowedFd, path: &str) -> Result<(), CapError> {
        match self.loops.find(image)? {
            Some(dev) => Err(CapError::new(
                ErrorCode::FailedPrecondition,
                format!("{path} is attached to {}; refusing", dev.name),
            )),
            None => Ok(()),
        }
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

/// statfs(2) of an open descriptor.
fn statfs(fd: BorrowedFd) -> Result<FsStats, CapError> {
    let st = rustix::fs::fstatvfs(fd).map_err(|e| CapError::internal(format!("statfs: {e}")))?;
    let frag = st.f_frsize;
    Ok(FsStats {
        total_bytes: st.f_blocks.saturating_mul(frag),
        free_bytes: st.f_bfree.saturating_mul(frag),
        available_bytes: st.f_bavail.saturating_mul(frag),
        total_inodes: st.f_files,
        free_inodes: st.f_ffree,
    })
}

/// The name of the filesystem holding a descriptor, from its statfs magic.
fn type_name(fd: BorrowedFd) -> Result<String, CapError> {
    let st = rustix::fs::fstatfs(fd).map_err(|e| CapError::internal(format!("statfs: {e}")))?;
    Ok(match st.f_type as u64 {
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x6969 => "nfs".into(),
        0x794c_7630 => "overlay".into(),
        other => format!("0x{other:x}"),
    })
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

/// Runs `f` on the plugin's fs grant, off the async workers.
pub(super) async fn with_fs<T: Send + 'static>(
    grants: &Arc<Grants>,
    f: impl FnOnce(&FsCap) -> Result<T, CapError> + Send + 'static,
) -> Result<T, CapError> {
    let grants = grants.clone();
    blocking::run(move || f(fs_cap(&grants)?)).await
}

fn fs_cap(grants: &Grants) -> Result<&FsCap, CapError> {
    grants
        .fs
        .as_deref()
        .ok_or_else(|| CapError::not_granted("fs", &grants.plugin))
}

/// The root directory as the plugin's WASI preopen, opened once per plugin. Every `*at` call
/// through it is confined by wasmtime-wasi (cap-std) to the directory.
fn open_preopen(root: &Path) -> anyhow::Result<Dir> {
    // O_PATH: the descriptor only anchors lookups, as wasmtime-wasi's own
    // preopens do; it grants no reading of the directory by itself.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(root)
        .with_context(|| format!("opening the fs root {}", root.display()))?;
    Ok(Dir::new(
        file,
        FsPerms::ReadWrite,
        OpenMode::READ | OpenMode::WRITE,
        false,
    ))
}

impl Host for CallCaps {
    /// statfs of a path beneath the root or a granted mount prefix.
    async fn statfs(&mut self, path: String) -> CapResult<FsStats> {
        let grants = self.grants.clone();
        Ok(blocking::run(move || {
            let mut dirs: Vec<&GrantedDir> = Vec::new();
            if let Some(fs) = &grants.fs {
                dirs.push(&fs.root);
            }
            if let Some(m) = &grants.mount {
                dirs.extend(m.prefix_dirs());
            }
            if dirs.is_empty() {
                return Err(CapError::not_granted("fs", &grants.plugin));
            }
            let fd = beneath::open(beneath::locate(&dirs, &path, "path")?, OFlags::PATH)?;
            statfs(fd.as_fd())
        })
        .await?)
    }

    async fn filesystem_type(&mut self, path: String) -> CapResult<String> {
        Ok(with_fs(&self.grants, move |fs| {
            let fd = beneath::open(fs.locate(&path)?, OFlags::PATH)?;
            type_name(fd.as_fd())
        })
        .await?)
    }

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
            fs.loops.attach(fd.as_fd()).map(|dev| dev.name)
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

    async fn create_subvolume(&mut self, path: String) -> CapResult<()> {
        Ok(with_fs(&self.grants, move |fs| {
            let (parent, name) = fs.parent_of(&path)?;
            btrfs::create(parent.as_fd(), name)
        })
        .await?)
    }

    async fn delete_subvolume(&mut self, path: String) -> CapResult<()> {
        Ok(with_fs(&self.grants, move |fs| {
            let (parent, name) = fs.parent_of(&path)?;
            let id = match fs.subvolume(&path) {
                Ok(sub) => btrfs::subvolume_id(sub.as_fd())?,
                Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            // By name in the parent the host holds: the kernel deletes only
            // a subvolume found there, whatever was swapped in meanwhile.
            btrfs::destroy(parent.as_fd(), name)?;
            // Its qgroup, so that no stale accounting stays.
            btrfs::destroy_qgroup(parent.as_fd(), id);
            Ok(())
        })
        .await?)
    }

    async fn snapshot_subvolume(&mut self, source: String, path: String) -> CapResult<()> {
        Ok(with_fs(&self.grants, move |fs| {
            let src = fs.subvolume(&source)?;
            let (parent, name) = fs.parent_of(&path)?;
            btrfs::snapshot(src.as_fd(), parent.as_fd(), name, false)
        })
        .await?)
    }
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
