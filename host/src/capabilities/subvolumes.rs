//! The `btrfs` capability: subvolumes under the plugin's root and their
//! snapshots — what a subvolume back end needs. Granted with the root.
//! Subvolumes are made and deleted by name in a parent directory the host
//! holds open, so nothing swapped in meanwhile is touched.

use std::os::fd::AsFd;

use super::fs::with_fs;
use super::{btrfs, CallCaps, CapResult, ErrorCode};
use crate::wit::wasmcsi::plugin::btrfs::{Host, SnapshotPair};
use crate::wit::wasmcsi::plugin::images::CopyPair;

impl Host for CallCaps {
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
        Ok(with_fs(&self.grants, move |fs| {
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
        Ok(with_fs(&self.grants, move |fs| fs.read_only_snapshots(&pair)).await?)
    }

    async fn read_only_snapshots(&mut self, pairs: Vec<SnapshotPair>) -> CapResult<()> {
        let pairs = copy_pairs(pairs);
        Ok(with_fs(&self.grants, move |fs| fs.read_only_snapshots(&pairs)).await?)
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
