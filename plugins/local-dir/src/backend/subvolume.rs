//! Subvolume mode: `data` is a btrfs subvolume whose qgroup limit is the
//! volume's size; staging bind-mounts it. Growing is raising the limit, so
//! there is nothing to finish later.

use super::{
    check_restage, condition, fs_stats, mounted_at, not_mounted, read_only_flags, split_flags,
    Attached, Backend, ExpandAt,
};
use crate::config::{FsType, Wanted};
use crate::env::Env;
use crate::error::{fail, internal, invalid, not_found, precondition, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::node::VolumeStats;
use crate::meta::Meta;
use crate::size::MIB;
use crate::store;
use crate::wasmcsi::plugin::quota::QuotaKind;
use crate::wasmcsi::plugin::types::{AccessType, VolumeCapability};

pub struct Subvolume;

impl Backend for Subvolume {
    fn min_bytes(&self, _fs: Option<FsType>) -> (u64, &'static str) {
        (MIB, "subvolumes")
    }

    fn precheck(&self, env: &Env, wanted: &Wanted) -> Result<()> {
        let root = env.layout.root();
        let found = env
            .host
            .filesystem_type(root)
            .context(|| format!("finding the filesystem type of the local-dir root {root}"))?;
        if found == "btrfs" {
            return Ok(());
        }
        let message = format!(
            "subvolume mode needs the local-dir root {root} on btrfs, but it is on {found}; \
             use image mode on this node"
        );
        // Whose mistake it is decides the code: the StorageClass's or the driver config's.
        Err(if wanted.mode_from_parameters {
            invalid(message)
        } else {
            precondition(message)
        })
    }

    fn make(&self, env: &Env, id: &str, meta: &mut Meta) -> Result<()> {
        let data = env.layout.data(id);
        let from = match (&meta.source, &meta.snapshot) {
            (Some(volume), _) => Some(env.layout.data(volume)),
            (None, Some(snapshot)) => Some(env.layout.snap_data(snapshot)),
            (None, None) => None,
        };
        match from {
            // A clone or restore: a writable snapshot of the source's
            // subvolume (a read-only snapshot's, for a restore).
            Some(from) => env
                .host
                .snapshot_subvolume(&from, &data)
                .context(|| format!("volume {id}: copying {from} to {data}"))?,
            None => env
                .host
                .create_subvolume(&data)
                .context(|| format!("volume {id}: creating btrfs subvolume {data}"))?,
        }
        set_limit(env, id, &data, meta.capacity_bytes)
    }

    fn remove(&self, env: &Env, id: &str, _attached: Attached) -> Result<()> {
        let data = env.layout.data(id);
        if store::exists(&data)? {
            env.host
                .delete_subvolume(&data)
                .context(|| format!("volume {id}: deleting btrfs subvolume {data}"))?;
        }
        Ok(())
    }

    fn stage(
        &self,
        env: &Env,
        id: &str,
        _meta: &mut Meta,
        staging: &str,
        cap: &VolumeCapability,
    ) -> Result<()> {
        let (asked, flags) = match &cap.access_type {
            AccessType::Block => {
                return Err(precondition(format!(
                    "volume {id} is a btrfs subvolume and cannot be used as a raw block device"
                )))
            }
            AccessType::Mount(m) => (m.fs_type.as_str(), split_flags(&m.mount_flags)),
        };
        let read_only = bind_flags(id, &flags)?;
        let data = env.layout.data(id);
        if !store::exists(&data)? {
            return Err(internal(format!(
                "volume {id}: its subvolume {data} is missing although meta.json is there"
            )));
        }
        match mounted_at(env, staging, id)? {
            // A bind mount reports the btrfs device as its source, so the
            // filesystem type is what can be checked.
            Some(e) if e.fs_type == "btrfs" => {
                return check_restage(id, staging, &e, "btrfs", asked, read_only)
            }
            Some(e) => {
                return Err(fail(
                    ErrorCode::AlreadyExists,
                    format!(
                        "volume {id}: staging path {staging} already has {} ({}) mounted",
                        e.source, e.fs_type
                    ),
                ))
            }
            None => {}
        }
        if !asked.is_empty() && asked != "btrfs" {
            return Err(precondition(format!(
                "volume {id} is a btrfs subvolume, not {asked}"
            )));
        }
        env.host
            .bind(&data, staging, read_only)
            .context(|| format!("volume {id}: bind-mounting {data} on {staging}"))?;
        env.info("volume staged", &[("volume", id), ("staging", staging)]);
        Ok(())
    }

    fn release(&self, _env: &Env, _id: &str) -> Result<()> {
        Ok(())
    }

    fn block_device(&self, _env: &Env, id: &str) -> Result<String> {
        Err(precondition(format!(
            "volume {id} is a btrfs subvolume and cannot be used as a raw block device"
        )))
    }

    fn expand(
        &self,
        env: &Env,
        id: &str,
        meta: &mut Meta,
        capacity: u64,
        at: &ExpandAt,
    ) -> Result<u64> {
        // The volume must be where the CO says it is, as in image mode.
        let path = at.staging_path.unwrap_or(at.volume_path);
        match mounted_at(env, path, id)? {
            Some(e) if e.fs_type == "btrfs" => {}
            _ => {
                return Err(not_found(format!(
                    "volume {id} is not mounted at {path}: nothing was grown"
                )))
            }
        }
        let data = env.layout.data(id);
        // Limit first, record after; set again every time, so a crash
        // between the two (or a limit lost some other way) is repaired.
        set_limit(env, id, &data, capacity)?;
        if capacity != meta.capacity_bytes {
            meta.capacity_bytes = capacity;
            store::write_meta(&env.layout, id, meta)?;
        }
        Ok(capacity)
    }

    fn stats(
        &self,
        env: &Env,
        id: &str,
        meta: &Meta,
        volume_path: &str,
        _staging_path: Option<&str>,
    ) -> Result<VolumeStats> {
        let Some(entry) = mounted_at(env, volume_path, id)? else {
            return not_mounted(env, id, volume_path);
        };
        let data = env.layout.data(id);
        if !store::exists(&data)? {
            let stats = fs_stats(env, id, volume_path)?;
            let problem = format!("volume {id}: its subvolume {data} is missing");
            return Ok(condition(stats, Some(problem)));
        }
        let mut stats = fs_stats(env, id, volume_path)?;
        if entry.fs_type != "btrfs" {
            stats.healthy = false;
            stats.message = format!(
                "volume {id}: {volume_path} has {} mounted, not the btrfs subvolume",
                entry.fs_type
            );
            return Ok(stats);
        }
        // Bytes from the qgroup (statfs would show the whole btrfs); inodes
        // from statfs, as btrfs has no per-subvolume inode count.
        let usage = env
            .host
            .get_usage(QuotaKind::BtrfsQgroup, &data)
            .context(|| format!("volume {id}: reading the qgroup usage of {data}"))?;
        let total = usage.limit_bytes.unwrap_or(meta.capacity_bytes);
        stats.total_bytes = total;
        stats.used_bytes = usage.used_bytes;
        stats.available_bytes = total.saturating_sub(usage.used_bytes);
        // The limit is what makes it a volume of its size.
        let problem = match usage.limit_bytes {
            None => Some(format!(
                "volume {id}: its subvolume {data} has no qgroup limit: its size is not enforced"
            )),
            Some(limit) if limit < meta.capacity_bytes => Some(format!(
                "volume {id}: its qgroup limit is {limit} bytes, below its size {}",
                meta.capacity_bytes
            )),
            Some(_) => None,
        };
        Ok(condition(stats, problem))
    }
}

/// A subvolume is staged by a bind mount, which takes no filesystem
/// options: `ro`/`rw` are honoured, the host's own `nosuid`/`nodev` and
/// `defaults` are no-ops, anything else is refused rather than dropped.
/// Whether the bind is read-only.
fn bind_flags(id: &str, flags: &[String]) -> Result<bool> {
    let ignored = ["ro", "rw", "defaults", "nosuid", "nodev"];
    if let Some(other) = flags.iter().find(|f| !ignored.contains(&f.as_str())) {
        return Err(invalid(format!(
            "volume {id}: mount flag {other:?} cannot be applied to a btrfs subvolume, \
             which is staged by a bind mount (allowed: ro, rw, defaults, nosuid, nodev)"
        )));
    }
    Ok(read_only_flags(flags))
}

fn set_limit(env: &Env, id: &str, data: &str, bytes: u64) -> Result<()> {
    env.host
        .set_limit(QuotaKind::BtrfsQgroup, data, bytes)
        .context(|| format!("volume {id}: setting the qgroup limit of {data} to {bytes} bytes"))
}
