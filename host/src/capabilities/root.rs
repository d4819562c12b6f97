//! The plugin's root: the directory of the config's `fs` grant, opened
//! once at load. It is the plugin's WASI preopen and the bound of the
//! `fs-info`, `images`, `btrfs` and `quota` units: every path they take is
//! resolved beneath the root's descriptor (see `beneath`) and every action
//! taken on the descriptor found.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, OFlags};
use serde::Deserialize;
use wasmtime_wasi::filesystem::Dir;
use wasmtime_wasi::{FsPerms, OpenMode};

use super::beneath::{self, GrantedDir, Located};
use super::loopdev::{self, LoopDevice};
use super::{blocking, CapError, ErrorCode};
use crate::sys::btrfs;
use crate::sys::qgroup_reaper::QgroupReaper;

/// The config's `capabilities.fs`: the plugin's root directory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FsGrant {
    /// The plugin's root: its WASI preopen and the bound of every fs call.
    pub root: PathBuf,
}

impl FsGrant {
    /// Checks the grant as the config is loaded.
    pub fn validate(&self) -> Result<()> {
        if !self.root.is_absolute() {
            bail!(
                "capabilities.fs.root {:?} must be an absolute path",
                self.root
            );
        }
        Ok(())
    }
}

/// The plugin's root, opened once per plugin and shared by its calls.
pub struct PluginRoot {
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

impl PluginRoot {
    pub fn new(grant: &FsGrant, max_loops: u32) -> Result<PluginRoot> {
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
        Ok(PluginRoot {
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

/// Runs `f` on the root, off the async workers.
pub(super) async fn with_root<T: Send + 'static>(
    root: &Arc<PluginRoot>,
    f: impl FnOnce(&PluginRoot) -> Result<T, CapError> + Send + 'static,
) -> Result<T, CapError> {
    let root = root.clone();
    blocking::run(move || f(&root)).await
}
