//! Image mode: a sparse `disk.img` with an xfs/ext4 filesystem (or none,
//! for raw block), attached to a loop device when staged. The filesystem
//! is made at the first stage (see `format`), not at create.
//!
//! Growth: node expand records `growPending` in meta before enlarging the
//! image, then grows the filesystem online. Where that cannot happen (ext4
//! online grow refused by the host, volume not mounted), the next stage
//! finishes it: ext4 offline right after its fsck and before mounting
//! (resize2fs wants a freshly checked filesystem), xfs online right after
//! mounting (xfs only grows mounted).

mod format;

use std::fs::{self as stdfs, OpenOptions};

use super::{
    check_restage, condition, fs_stats, mounted_at, not_mounted, read_only_flags, split_flags,
    Attached, Backend, ExpandAt,
};
use crate::config::FsType;
use crate::env::Env;
use crate::error::{self, fail, internal, precondition, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::node::VolumeStats;
use crate::meta::Meta;
use crate::size::MIB;
use crate::store;
use crate::wasmcsi::plugin::mount::MountEntry;
use crate::wasmcsi::plugin::types::{AccessType, VolumeCapability};

pub struct Image;

impl Backend for Image {
    fn min_bytes(&self, fs: Option<FsType>) -> (u64, &'static str) {
        match fs {
            // mkfs.xfs refuses anything smaller.
            Some(FsType::Xfs) => (300 * MIB, "xfs images"),
            Some(FsType::Ext4) => (32 * MIB, "ext4 images"),
            None => (MIB, "raw block images"),
        }
    }

    fn precheck(&self, _env: &Env, _wanted: &crate::config::Wanted) -> Result<()> {
        Ok(())
    }

    fn make(&self, env: &Env, id: &str, meta: &mut Meta) -> Result<()> {
        let image = env.layout.image(id);
        let from = match (&meta.source, &meta.snapshot) {
            (Some(volume), _) => Some(env.layout.image(volume)),
            (None, Some(snapshot)) => Some(env.layout.snap_image(snapshot)),
            (None, None) => None,
        };
        if let Some(from) = from {
            return copy(env, id, meta, &from, &image);
        }
        let make = || -> std::io::Result<()> {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&image)?;
            // set_len on a fresh file makes it sparse: no space used yet.
            f.set_len(meta.capacity_bytes)
        };
        make().map_err(|e| {
            error::io(
                format_args!("volume {id}: creating sparse image {image}"),
                e,
            )
        })?;
        // Its size is the capacity; its filesystem comes at first stage.
        meta.format_pending = meta.fs_type.is_some();
        Ok(())
    }

    fn remove(&self, env: &Env, id: &str, attached: Attached) -> Result<()> {
        let image = env.layout.image(id);
        if !store::exists(&image)? {
            return Ok(());
        }
        if attached == Attached::Maybe {
            detach(env, id, &image)?;
        }
        store::remove_file(&image)
    }

    fn stage(
        &self,
        env: &Env,
        id: &str,
        meta: &mut Meta,
        staging: &str,
        cap: &VolumeCapability,
    ) -> Result<()> {
        let image = env.layout.image(id);
        ensure_len(id, &image, meta.capacity_bytes)?;
        // Before any access, block included: a volume created with a
        // filesystem has one whenever it is used.
        let fresh = format::first_use(env, id, meta)?;
        // Also right after a reboot, when nothing is attached any more.
        let device = env
            .host
            .attach_loop(&image)
            .context(|| format!("volume {id}: attaching {image}"))?;
        if meta.grow_pending {
            // An already attached device may still have the old size.
            refresh(env, id, &device)?;
        }
        let mount_access = match &cap.access_type {
            // Raw block: the loop device is the volume; publish binds it.
            AccessType::Block => return Ok(()),
            AccessType::Mount(m) => m,
        };
        let fs = meta.fs_type.ok_or_else(|| {
            precondition(format!(
                "volume {id} was created for raw block access and has no filesystem to mount"
            ))
        })?;
        let asked = mount_access.fs_type.as_str();
        let mut options = split_flags(&mount_access.mount_flags);
        let read_only = read_only_flags(&options);

        match mounted_at(env, staging, id)? {
            Some(e) if e.source == device => {
                check_restage(id, staging, &e, fs.as_str(), asked, read_only)?;
                // Staged before (a retry, or a crash before growing).
                if meta.grow_pending && !grow_online(env, id, meta, &device, staging, fs)? {
                    env.warn(
                        "online grow refused; the filesystem grows at the next stage",
                        &[("volume", id), ("staging", staging)],
                    );
                }
                return Ok(());
            }
            Some(e) => {
                let (other, other_fs) = (e.source, e.fs_type);
                return Err(fail(
                    ErrorCode::AlreadyExists,
                    format!(
                        "volume {id}: staging path {staging} already has {other} ({other_fs}) \
                         mounted, not {device}"
                    ),
                ));
            }
            None => {}
        }
        if !asked.is_empty() && asked != fs.as_str() {
            return Err(precondition(format!(
                "volume {id} holds {}, not the requested {asked}",
                fs.as_str()
            )));
        }

        match env
            .host
            .probe_filesystem(&image)
            .context(|| format!("volume {id}: probing the filesystem on {image}"))?
        {
            _ if fresh => {}
            Some(found) if found == fs.as_str() => {}
            Some(found) => {
                return Err(internal(format!(
                    "volume {id}: {image} holds {found}, but meta.json says {}",
                    fs.as_str()
                )))
            }
            None => {
                return Err(internal(format!(
                    "volume {id}: no filesystem found on {image} (meta.json says {})",
                    fs.as_str()
                )))
            }
        }
        if fs == FsType::Ext4 && !fresh {
            env.host
                .check_filesystem(&image, "ext4")
                .context(|| format!("volume {id}: checking ext4 on {image}"))?;
            if meta.grow_pending {
                env.host
                    .grow_filesystem(&device, "", "ext4")
                    .context(|| format!("volume {id}: growing ext4 on {device} (offline)"))?;
                clear_grow_pending(env, id, meta)?;
            }
        }
        if meta.nouuid && !options.iter().any(|o| o == "nouuid") {
            options.push("nouuid".into());
        }
        env.host
            .mount(&device, staging, fs.as_str(), &options)
            .context(|| {
                format!(
                    "volume {id}: mounting {device} ({}) on {staging}",
                    fs.as_str()
                )
            })?;
        if meta.grow_pending && !grow_online(env, id, meta, &device, staging, fs)? {
            env.warn(
                "online grow refused; the filesystem grows at the next stage",
                &[("volume", id), ("staging", staging)],
            );
        }
        env.info(
            "volume staged",
            &[("volume", id), ("device", &device), ("staging", staging)],
        );
        Ok(())
    }

    fn release(&self, env: &Env, id: &str) -> Result<()> {
        let image = env.layout.image(id);
        if store::exists(&image)? {
            detach(env, id, &image)?;
        }
        Ok(())
    }

    fn block_device(&self, env: &Env, id: &str) -> Result<String> {
        let image = env.layout.image(id);
        env.host
            .find_loop(&image)
            .context(|| format!("volume {id}: finding the loop device of {image}"))?
            .ok_or_else(|| {
                precondition(format!(
                    "volume {id} is not staged: {image} is not attached to a loop device"
                ))
            })
    }

    fn expand(
        &self,
        env: &Env,
        id: &str,
        meta: &mut Meta,
        capacity: u64,
        at: &ExpandAt,
    ) -> Result<u64> {
        let image = env.layout.image(id);
        let has_fs = meta.fs_type.is_some() && !meta.format_pending;
        if capacity > meta.capacity_bytes && has_fs && at.block == Some(false) {
            // A filesystem is grown where it is mounted: check the path
            // before anything grows, so a wrong path changes nothing.
            let path = at.staging_path.unwrap_or(at.volume_path);
            let device = env
                .host
                .find_loop(&image)
                .context(|| format!("volume {id}: finding the loop device of {image}"))?;
            let here = mounted_at(env, path, id)?;
            if !matches!((&device, &here), (Some(d), Some(e)) if &e.source == d) {
                return Err(precondition(format!(
                    "volume {id} is not mounted at {path}: nothing was grown"
                )));
            }
        }
        if capacity > meta.capacity_bytes {
            let before = meta.clone();
            // Intent first: whatever step a crash interrupts, the retry (or
            // the next stage) sees the new size and the pending grow.
            meta.capacity_bytes = capacity;
            // An unformatted image just grows: its filesystem will be made
            // at the image's size.
            meta.grow_pending |= meta.fs_type.is_some() && !meta.format_pending;
            store::write_meta(&env.layout, id, meta)?;
            if let Err(e) = ensure_len(id, &image, meta.capacity_bytes) {
                // The image did not grow: a failed call leaves the volume
                // as it was, not a size it never had.
                *meta = before;
                store::write_meta(&env.layout, id, meta)?;
                return Err(e);
            }
        }
        ensure_len(id, &image, meta.capacity_bytes)?;
        let device = env
            .host
            .find_loop(&image)
            .context(|| format!("volume {id}: finding the loop device of {image}"))?;
        if let Some(dev) = &device {
            refresh(env, id, dev)?;
        }
        let Some(fs) = meta.fs_type.filter(|_| meta.grow_pending) else {
            return Ok(meta.capacity_bytes);
        };
        if at.block == Some(true) {
            // Block consumers use the whole device; a filesystem on it is
            // theirs. Any later mount stage still grows it.
            return Ok(meta.capacity_bytes);
        }
        let path = at.staging_path.unwrap_or(at.volume_path);
        match (device, mounted_at(env, path, id)?) {
            (Some(dev), Some(e)) if e.source == dev => {
                if grow_online(env, id, meta, &dev, path, fs)? {
                    Ok(meta.capacity_bytes)
                } else {
                    Err(precondition(format!(
                        "volume {id}: the host refused to grow {} while mounted; the image is \
                         enlarged and the filesystem grows when the volume is next staged",
                        fs.as_str()
                    )))
                }
            }
            // The CO did not say how the volume is used and nothing of it is
            // mounted there: treat it as block.
            _ if at.block.is_none() => Ok(meta.capacity_bytes),
            _ => Err(precondition(format!(
                "volume {id} is not mounted at {path}; its filesystem grows when it is next \
                 staged"
            ))),
        }
    }

    fn stats(
        &self,
        env: &Env,
        id: &str,
        meta: &Meta,
        volume_path: &str,
        staging_path: Option<&str>,
    ) -> Result<VolumeStats> {
        let Some(entry) = mounted_at(env, volume_path, id)? else {
            return not_mounted(env, id, volume_path);
        };
        let problem = image_problem(env, id, meta, &entry, staging_path)?;
        match meta.fs_type {
            Some(fs) if entry.fs_type == fs.as_str() => {
                Ok(condition(fs_stats(env, id, volume_path)?, problem))
            }
            // A block publish target: the device file, whose size is the
            // volume's; usage inside it is the consumer's business.
            _ => Ok(VolumeStats {
                total_bytes: meta.capacity_bytes,
                available_bytes: 0,
                used_bytes: 0,
                total_inodes: 0,
                available_inodes: 0,
                used_inodes: 0,
                healthy: true,
                message: String::new(),
            })
            .map(|stats| condition(stats, problem)),
        }
    }
}

/// What is wrong with a published image volume, if anything: its image
/// gone, its loop device detached, its filesystem not the one mounted or
/// gone read-only (XFS shuts down, ext4 remounts read-only on errors).
fn image_problem(
    env: &Env,
    id: &str,
    meta: &Meta,
    published: &MountEntry,
    staging_path: Option<&str>,
) -> Result<Option<String>> {
    let image = env.layout.image(id);
    if !store::exists(&image)? {
        return Ok(Some(format!("volume {id}: its image {image} is missing")));
    }
    let Some(device) = env
        .host
        .find_loop(&image)
        .context(|| format!("volume {id}: finding the loop device of {image}"))?
    else {
        return Ok(Some(format!(
            "volume {id}: {image} is not attached to a loop device"
        )));
    };
    let Some(fs) = meta.fs_type.filter(|fs| published.fs_type == fs.as_str()) else {
        // A raw block publish: the attached device is the volume.
        return Ok(None);
    };
    if published.source != device {
        return Ok(Some(format!(
            "volume {id}: {} is mounted, not its loop device {device}",
            published.source
        )));
    }
    let staged = match staging_path.filter(|s| !s.is_empty()) {
        Some(staging) => mounted_at(env, staging, id)?,
        None => None,
    };
    if let Some(staged) = staged {
        if staged.source != device || staged.fs_type != fs.as_str() {
            return Ok(Some(format!(
                "volume {id}: the staging path has {} ({}) mounted, not {device} ({})",
                staged.source,
                staged.fs_type,
                fs.as_str()
            )));
        }
        if staged.read_only {
            return Ok(Some(format!(
                "volume {id}: its {} filesystem is mounted read-only at the staging path (an \
                 error made the kernel stop writes?)",
                fs.as_str()
            )));
        }
    }
    Ok(None)
}

/// A clone or restore: a copy of the source's image (sharing blocks where
/// the root's filesystem can; the host freezes a mounted source for it),
/// mountable next to its source (ext4: a new UUID; XFS: `nouuid`, see
/// `Meta::nouuid`), enlarged to the new volume's size. Its filesystem grows to fill the
/// image when it is first staged. A copy of a never-staged source is as
/// unformatted as its source (`meta.format_pending` comes from it).
fn copy(env: &Env, id: &str, meta: &mut Meta, from: &str, image: &str) -> Result<()> {
    let how = env
        .host
        .copy_image(from, image)
        .context(|| format!("volume {id}: copying {from} to {image}"))?;
    env.debug(
        "image copied",
        &[("volume", id), ("method", crate::snapshot::method(how))],
    );
    match meta.fs_type {
        // No filesystem yet (the source was never staged): this copy gets
        // its own at its first stage, with its own UUID.
        Some(_) if meta.format_pending => {}
        Some(FsType::Xfs) => meta.nouuid = true,
        Some(fs) => env
            .host
            .new_filesystem_uuid(image, fs.as_str())
            .context(|| {
                format!(
                    "volume {id}: giving the {} on {image} a new UUID",
                    fs.as_str()
                )
            })?,
        None => {}
    }
    // Always: the source's own growth may have been pending too.
    meta.grow_pending |= meta.fs_type.is_some() && !meta.format_pending;
    ensure_len(id, image, meta.capacity_bytes)
}

/// Enlarges the image to `capacity` if it is smaller; never shrinks.
fn ensure_len(id: &str, image: &str, capacity: u64) -> Result<()> {
    let len = match stdfs::metadata(image) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(internal(format!(
                "volume {id}: its image {image} is missing although meta.json is there"
            )))
        }
        Err(e) => {
            return Err(error::io(
                format_args!("volume {id}: looking at {image}"),
                e,
            ))
        }
    };
    if len >= capacity {
        return Ok(());
    }
    OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(capacity))
        .map_err(|e| {
            error::io(
                format_args!("volume {id}: enlarging {image} to {capacity} bytes"),
                e,
            )
        })
}

fn refresh(env: &Env, id: &str, device: &str) -> Result<()> {
    env.host
        .refresh_loop(device)
        .context(|| format!("volume {id}: refreshing the size of {device}"))
}

/// Detaches the image's loop device if one is attached.
fn detach(env: &Env, id: &str, image: &str) -> Result<()> {
    let device = env
        .host
        .find_loop(image)
        .context(|| format!("volume {id}: finding the loop device of {image}"))?;
    if let Some(dev) = device {
        env.host
            .detach_loop(&dev)
            .context(|| format!("volume {id}: detaching {dev}"))?;
        env.debug("loop device detached", &[("volume", id), ("device", &dev)]);
    }
    Ok(())
}

/// Grows a mounted filesystem and clears `growPending`. Ok(false) when the
/// host refuses an online ext4 grow (left for the next stage).
fn grow_online(
    env: &Env,
    id: &str,
    meta: &mut Meta,
    device: &str,
    path: &str,
    fs: FsType,
) -> Result<bool> {
    match env.host.grow_filesystem(device, path, fs.as_str()) {
        Ok(()) => {
            clear_grow_pending(env, id, meta)?;
            env.info(
                "filesystem grown",
                &[("volume", id), ("device", device), ("path", path)],
            );
            Ok(true)
        }
        Err(e)
            if fs == FsType::Ext4
                && matches!(
                    e.code,
                    ErrorCode::FailedPrecondition
                        | ErrorCode::Unimplemented
                        | ErrorCode::PermissionDenied
                ) =>
        {
            env.debug(
                "online ext4 grow refused",
                &[("volume", id), ("reason", &e.message)],
            );
            Ok(false)
        }
        Err(e) => Err(fail(
            e.code,
            format!(
                "volume {id}: growing {} on {device} mounted at {path}: {}",
                fs.as_str(),
                e.message
            ),
        )),
    }
}

fn clear_grow_pending(env: &Env, id: &str, meta: &mut Meta) -> Result<()> {
    meta.grow_pending = false;
    store::write_meta(&env.layout, id, meta)
}
