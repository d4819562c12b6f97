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
use super::loopdev::{self, LoopDevice};
use super::qgroup_reaper::QgroupReaper;
use super::{blocking, btrfs, CallCaps, CapError, CapResult, ErrorCode, Grants};
use crate::config::FsGrant;
use crate::wit::wasmcsi::plugin::fs_info::{self, FsStats};

pub struct FsCap {
    /// The root, opened once.
    pub root: GrantedDir,
    /// The root as the plugin's WASI preopen (seen by the guest at the
    /// same path), opened once for all calls.
    pub preopen: Dir,
    /// The loop devices of this root's images.
    pub(super) loops: loopdev::LoopIndex,
    /// How many of them may be attached at once (`limits.maxLoopDevices`).
    pub(super) max_loops: u32,
    /// Removes the qgroups of deleted subvolumes, after their delete.
    pub(super) qgroups: Arc<QgroupReaper>,
}

impl FsCap {
    pub fn new(grant: &FsGrant, max_loops: u32) -> Result<FsCap> {
        let root = GrantedDir::open(&grant.root)?;
        let qgroups = Arc::new(QgroupReaper::default());
        if btrfs::on_btrfs(root.fd()).unwrap_or(false) {
            // What a crash or a restart left since the last sweep (the
            // root's descriptor is O_PATH: ioctls need an open directory).
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            if let Ok(dir) = rustix::fs::openat(root.fd(), ".", flags, rustix::fs::Mode::empty()) {
                qgroups.wake(dir.as_fd());
            }
        }
        Ok(FsCap {
            preopen: open_preopen(root.path())?,
            loops: loopdev::LoopIndex::default(),
            max_loops,
            qgroups,
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

/// Runs `f` on the plugin's fs grant, off the async workers.
pub(super) async fn with_fs<T: Send + 'static>(
    grants: &Arc<Grants>,
    f: impl FnOnce(&FsCap) -> Result<T, CapError> + Send + 'static,
) -> Result<T, CapError> {
    let grants = grants.clone();
    blocking::run(move || f(fs_cap(&grants)?)).await
}

pub(super) fn fs_cap(grants: &Grants) -> Result<&FsCap, CapError> {
    grants
        .fs
        .as_deref()
        .ok_or_else(|| CapError::not_granted("fs", &grants.plugin))
}

/// The root directory as the plugin's WASI preopen, opened once per plugin. Every `*at` call
/// through it is confined by wasmtime-wasi (cap-std) to the directory.
fn open_preopen(root: &Path) -> anyhow::Result<Dir> {
    // O_PATH: the descriptor only anchors lookups, as wasmtime-wasi's own
    // preopens do; it grants no reading of the directory by itself. Lookups
    // through it block the calling thread: plugin calls run on call threads.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(root)
        .with_context(|| format!("opening the fs root {}", root.display()))?;
    Ok(Dir::new(
        file,
        FsPerms::ReadWrite,
        OpenMode::READ | OpenMode::WRITE,
        true,
    ))
}

impl fs_info::Host for CallCaps {
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
}
