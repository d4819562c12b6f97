//! The `fs-info` unit: statfs and the filesystem type of a path beneath
//! the plugin's root, or (statfs only) beneath a mount prefix — the
//! figures a volume's stats need. Granted with the root or with `mount`.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::fs::OFlags;
use wasmtime::component::{HasData, Linker};

use super::beneath::{self, GrantedDir};
use super::root::{with_root, PluginRoot};
use super::{blocking, granted, CallCaps, CapError, CapResult, HasCallCaps};
use crate::wit::wasmcsi::plugin::fs_info::{self, FsStats};

/// What `fs-info` may look at, built once per plugin.
pub struct FsInfoCap {
    /// The plugin's root (`fs` grant), if granted.
    root: Option<Arc<PluginRoot>>,
    /// The mount grant's target prefixes, if granted: statfs of a mounted
    /// volume is asked at its target.
    mount_prefixes: Option<Arc<[GrantedDir]>>,
}

impl FsInfoCap {
    /// The unit's state; `None` when neither the root nor `mount` is granted.
    pub fn new(
        root: Option<Arc<PluginRoot>>,
        mount_prefixes: Option<Arc<[GrantedDir]>>,
    ) -> Option<Arc<FsInfoCap>> {
        if root.is_none() && mount_prefixes.is_none() {
            return None;
        }
        Some(Arc::new(FsInfoCap {
            root,
            mount_prefixes,
        }))
    }

    /// Every directory statfs may look beneath.
    fn statfs_dirs(&self) -> Vec<&GrantedDir> {
        let mut dirs: Vec<&GrantedDir> = Vec::new();
        if let Some(root) = &self.root {
            dirs.push(&root.root);
        }
        if let Some(prefixes) = &self.mount_prefixes {
            dirs.extend(prefixes.iter());
        }
        dirs
    }
}

/// The `fs-info` interface as the linker sees it.
pub struct FsInfo;

impl HasData for FsInfo {
    type Data<'a> = FsInfoView<'a>;
}

/// One call's view of `fs-info`: the unit's state, nothing else.
pub struct FsInfoView<'a> {
    cap: Option<&'a Arc<FsInfoCap>>,
    plugin: &'a str,
}

impl<'a> FsInfoView<'a> {
    /// The view of the call's `fs-info` state.
    pub fn of(call: &'a CallCaps) -> FsInfoView<'a> {
        FsInfoView {
            cap: call.grants.fs_info.as_ref(),
            plugin: &call.grants.plugin,
        }
    }

    fn root(&self) -> Result<&'a Arc<PluginRoot>, CapError> {
        let root = self.cap.and_then(|cap| cap.root.as_ref());
        granted(root, "fs", self.plugin)
    }
}

/// Links `fs-info`.
pub fn add_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fs_info::add_to_linker::<T, FsInfo>(linker, |t| FsInfoView::of(t.call_caps()))
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

impl fs_info::Host for FsInfoView<'_> {
    /// statfs of a path beneath the root or a granted mount prefix.
    async fn statfs(&mut self, path: String) -> CapResult<FsStats> {
        let cap = granted(self.cap, "fs", self.plugin)?.clone();
        Ok(blocking::run(move || {
            let dirs = cap.statfs_dirs();
            let fd = beneath::open(beneath::locate(&dirs, &path, "path")?, OFlags::PATH)?;
            statfs(fd.as_fd())
        })
        .await?)
    }

    async fn filesystem_type(&mut self, path: String) -> CapResult<String> {
        Ok(with_root(self.root()?, move |root| {
            let fd = beneath::open(root.locate(&path)?, OFlags::PATH)?;
            type_name(fd.as_fd())
        })
        .await?)
    }
}
