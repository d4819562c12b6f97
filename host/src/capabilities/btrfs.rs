//! The `btrfs` unit: subvolumes under the plugin's root and their
//! snapshots — what a subvolume back end needs. Granted with the root
//! (`fs` in the config), which is all its state. Subvolumes are made and
//! deleted by name in a parent directory the host holds open, so nothing
//! swapped in meanwhile is touched. The ioctls are `sys::btrfs`.

use std::os::fd::AsFd;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::root::{with_root, PluginRoot};
use super::{granted, CallCaps, CapError, CapResult, ErrorCode, HasCallCaps};
use crate::sys::btrfs;
use crate::wit::wasmcsi::plugin::btrfs::{self as wit, Host, SnapshotPair};
use crate::wit::wasmcsi::plugin::images::CopyPair;

/// The `btrfs` interface as the linker sees it.
pub struct Btrfs;

impl HasData for Btrfs {
    type Data<'a> = BtrfsView<'a>;
}

/// One call's view of `btrfs`: the plugin's root, if granted.
pub struct BtrfsView<'a> {
    root: Option<&'a Arc<PluginRoot>>,
    plugin: &'a str,
}

impl<'a> BtrfsView<'a> {
    /// The view of the call's `btrfs` state.
    pub fn of(call: &'a CallCaps) -> BtrfsView<'a> {
        BtrfsView {
            root: call.grants.btrfs.as_ref(),
            plugin: &call.grants.plugin,
        }
    }

    fn root(&self) -> Result<&'a Arc<PluginRoot>, CapError> {
        granted(self.root, "fs", self.plugin)
    }
}

/// Links `btrfs`.
pub fn add_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Btrfs>(linker, |t| BtrfsView::of(t.call_caps()))
}

impl Host for BtrfsView<'_> {
    async fn create_subvolume(&mut self, path: String) -> CapResult<()> {
        Ok(with_root(self.root()?, move |fs| {
            let (parent, name) = fs.parent_of(&path)?;
            btrfs::create(parent.as_fd(), name)
        })
        .await?)
    }

    async fn delete_subvolume(&mut self, path: String) -> CapResult<()> {
        Ok(with_root(self.root()?, move |fs| {
            let (parent, name) = fs.parent_of(&path)?;
            match fs.subvolume(&path) {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            // By name in the parent the host holds: the kernel deletes only
            // a subvolume found there, whatever was swapped in meanwhile.
            btrfs::destroy(parent.as_fd(), name)?;
            // Its qgroup goes once the kernel lets go of it, off this call:
            // waiting for that took a commit and the cleaner per delete.
            fs.qgroups.wake(parent.as_fd());
            Ok(())
        })
        .await?)
    }

    async fn snapshot_subvolume(&mut self, source: String, path: String) -> CapResult<()> {
        Ok(with_root(self.root()?, move |fs| {
            let src = fs.subvolume(&source)?;
            let (parent, name) = fs.parent_of(&path)?;
            btrfs::snapshot(src.as_fd(), parent.as_fd(), name, false)
        })
        .await?)
    }

    async fn read_only_snapshot(&mut self, source: String, path: String) -> CapResult<()> {
        let pair = [CopyPair {
            source,
            destination: path,
        }];
        Ok(with_root(self.root()?, move |fs| fs.read_only_snapshots(&pair)).await?)
    }

    async fn read_only_snapshots(&mut self, pairs: Vec<SnapshotPair>) -> CapResult<()> {
        let pairs = copy_pairs(pairs);
        Ok(with_root(self.root()?, move |fs| fs.read_only_snapshots(&pairs)).await?)
    }
}

/// The same pairs as the copy code takes them.
fn copy_pairs(pairs: Vec<SnapshotPair>) -> Vec<CopyPair> {
    pairs
        .into_iter()
        .map(|p| CopyPair {
            source: p.source,
            destination: p.destination,
        })
        .collect()
}
