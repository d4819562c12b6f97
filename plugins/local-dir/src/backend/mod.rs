//! One backend per storage mode. The controller and node exports do the
//! mode-independent part (ids, meta, sizes, checks) and hand the storage
//! work to the volume's backend. A new mode (e.g. project-quota) is a new
//! module here and one arm in `for_mode`.

mod image;
mod subvolume;

use crate::config::{FsType, Mode, Wanted};
use crate::env::Env;
use crate::error::{fail, not_found, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::node::VolumeStats;
use crate::meta::Meta;
use crate::size::MIB;
use crate::store;
use crate::wasmcsi::plugin::mount::MountEntry;
use crate::wasmcsi::plugin::types::VolumeCapability;

/// Where a node expansion finds the volume.
pub struct ExpandAt<'a> {
    pub volume_path: &'a str,
    pub staging_path: Option<&'a str>,
    /// From the request's capability; None when the CO did not say.
    pub block: Option<bool>,
}

pub trait Backend {
    /// Smallest volume of this kind, and the kind's name for messages.
    fn min_bytes(&self, fs: Option<FsType>) -> (u64, &'static str);

    /// Checks that this node can hold such a volume, before anything is made.
    fn precheck(&self, env: &Env, wanted: &Wanted) -> Result<()>;

    /// Makes the storage of a volume in its directory, which has no meta
    /// yet: empty, or a copy of `meta.source` (a volume) or
    /// `meta.snapshot`. Must start from nothing: leftovers are torn down
    /// first. May note work left for later in `meta` (written when ready).
    fn make(&self, env: &Env, id: &str, meta: &mut Meta) -> Result<()>;

    /// Removes this backend's storage of the volume, if there is any. Works
    /// from the layout alone: meta may be missing or unreadable.
    fn remove(&self, env: &Env, id: &str, attached: Attached) -> Result<()>;

    /// Makes the volume usable at `staging` as `cap` asks. Idempotent.
    fn stage(
        &self,
        env: &Env,
        id: &str,
        meta: &mut Meta,
        staging: &str,
        cap: &VolumeCapability,
    ) -> Result<()>;

    /// Undoes node-side attachments made by `stage` other than the staging
    /// mount itself (already unmounted). Works from the layout alone.
    fn release(&self, env: &Env, id: &str) -> Result<()>;

    /// The device to bind onto a block publish target.
    fn block_device(&self, env: &Env, id: &str) -> Result<String>;

    /// Grows the volume to `capacity` (never below its current size) and
    /// returns the capacity now usable. Must finish an interrupted growth.
    fn expand(
        &self,
        env: &Env,
        id: &str,
        meta: &mut Meta,
        capacity: u64,
        at: &ExpandAt,
    ) -> Result<u64>;

    /// Usage of the volume as seen at `volume_path`, with its condition
    /// (checked, not assumed).
    fn stats(
        &self,
        env: &Env,
        id: &str,
        meta: &Meta,
        volume_path: &str,
        staging_path: Option<&str>,
    ) -> Result<VolumeStats>;
}

static IMAGE: image::Image = image::Image;
static SUBVOLUME: subvolume::Subvolume = subvolume::Subvolume;

/// Every backend, for work that must not depend on meta (teardown).
fn all() -> [&'static dyn Backend; 2] {
    [&IMAGE, &SUBVOLUME]
}

pub fn for_mode(mode: Mode) -> Result<&'static dyn Backend> {
    match mode {
        Mode::Image => Ok(&IMAGE),
        Mode::Subvolume => Ok(&SUBVOLUME),
        Mode::ProjectQuota => Err(fail(
            ErrorCode::Unimplemented,
            "local-dir mode project-quota is reserved and not implemented yet; use image or \
             subvolume",
        )),
    }
}

/// Bounds for a size computation when the kind is unknown (controller
/// expand on a node without the volume's meta).
pub const UNKNOWN_MIN: (u64, &str) = (MIB, "local-dir volumes");

/// Whether a volume's storage may be attached on this node (a loop
/// device). Only meta can say it never was, and finding out otherwise costs
/// a look at every loop device on the node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Attached {
    Maybe,
    /// Never staged: its filesystem is still to be made at the first
    /// stage, which makes it before anything attaches the image.
    Never,
}

impl Attached {
    pub fn of(meta: &Meta) -> Attached {
        if meta.format_pending {
            Attached::Never
        } else {
            Attached::Maybe
        }
    }
}

/// Removes everything of a volume: every backend's storage, then the
/// directory with meta.json last, so a crash half-way is finished by a retry.
pub fn teardown(env: &Env, id: &str, attached: Attached) -> Result<()> {
    if !store::exists(&env.layout.dir(id))? {
        return Ok(());
    }
    for b in all() {
        b.remove(env, id, attached)?;
    }
    store::remove_dir(&env.layout, id)
}

/// Undoes node attachments of every backend (unstage without meta).
pub fn release_all(env: &Env, id: &str) -> Result<()> {
    for b in all() {
        b.release(env, id)?;
    }
    Ok(())
}

/// A capability's mount flags one option apiece (a CO may send
/// `"ro,noatime"` as one flag).
pub fn split_flags(flags: &[String]) -> Vec<String> {
    flags
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether the flags ask for a read-only mount (the last of `ro`/`rw` wins).
pub fn read_only_flags(flags: &[String]) -> bool {
    flags
        .iter()
        .rev()
        .find(|f| *f == "ro" || *f == "rw")
        .is_some_and(|f| f == "ro")
}

/// A restage onto a staging path that already holds the volume must ask
/// for what is there: another filesystem or another read-only-ness is the
/// spec's ALREADY_EXISTS (staged, but incompatible).
pub fn check_restage(
    id: &str,
    staging: &str,
    entry: &MountEntry,
    have_fs: &str,
    asked_fs: &str,
    read_only: bool,
) -> Result<()> {
    let why = if !asked_fs.is_empty() && asked_fs != have_fs {
        format!("{have_fs}, not the requested {asked_fs}")
    } else if entry.read_only != read_only {
        format!(
            "{}, not {}",
            if entry.read_only {
                "read-only"
            } else {
                "read-write"
            },
            if read_only { "read-only" } else { "read-write" }
        )
    } else {
        return Ok(());
    };
    Err(fail(
        ErrorCode::AlreadyExists,
        format!("volume {id} is already staged at {staging} {why}"),
    ))
}

/// What is mounted at `path`, if anything.
pub fn mounted_at(env: &Env, path: &str, id: &str) -> Result<Option<MountEntry>> {
    env.host
        .mounted_at(path)
        .context(|| format!("volume {id}: looking at what is mounted at {path}"))
}

/// Stats answer for a volume path with nothing mounted: NOT_FOUND when the
/// path does not exist, else an unhealthy volume with the reason.
pub fn not_mounted(env: &Env, id: &str, path: &str) -> Result<VolumeStats> {
    match env.host.statfs(path) {
        Err(e) if e.code == ErrorCode::NotFound => Err(not_found(format!(
            "volume {id}: volume path {path} does not exist: {}",
            e.message
        ))),
        Err(e) => Err(fail(
            e.code,
            format!("volume {id}: statfs of {path}: {}", e.message),
        )),
        Ok(_) => Ok(wasmcsi_plugin_sdk::stats::unhealthy(format!(
            "volume {id} is not mounted at {path}"
        ))),
    }
}

/// Marks stats abnormal with the reason, if there is one.
pub fn condition(mut stats: VolumeStats, problem: Option<String>) -> VolumeStats {
    if let Some(message) = problem {
        stats.healthy = false;
        stats.message = message;
    }
    stats
}

/// statfs of a mounted volume as stats: bytes and inodes of its filesystem.
pub fn fs_stats(env: &Env, id: &str, path: &str) -> Result<VolumeStats> {
    let st = env
        .host
        .statfs(path)
        .context(|| format!("volume {id}: statfs of {path}"))?;
    Ok(wasmcsi_plugin_sdk::stats::from_statfs(&st))
}
