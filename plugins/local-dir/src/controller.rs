//! Controller export: create (also as a clone of another volume or a
//! restore of a snapshot), delete, expand, get and list volumes, capacity,
//! and snapshots (see `snapshot` and `group`). The mode-specific storage work is the
//! backend's.

use crate::backend::{self, Attached, Backend, UNKNOWN_MIN};
use crate::config::{self, Wanted};
use crate::env::Env;
use crate::error::{fail, invalid, Context, Error, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::controller::{
    CreateGroupSnapshotRequest, CreateSnapshotRequest, CreateVolumeRequest, ExpandRequest,
    ExpandResult, GroupSnapshot, Snapshot, SnapshotFilter, SnapshotPage, Volume, VolumePage,
};
use crate::group;
use crate::id;
use crate::meta::{Meta, State};
use crate::page;
use crate::size::{self, Rules};
use crate::snapshot;
use crate::store;
use crate::wasmcsi::plugin::quota::QuotaKind;
use crate::wasmcsi::plugin::types::{
    AccessType, ContentSource, KeyValues, Secrets, VolumeCapability,
};
use crate::LocalDir;

impl wasmcsi_plugin_sdk::Controller for LocalDir {
    fn create_volume(req: CreateVolumeRequest) -> Result<Volume> {
        create_volume(&Env::load()?, req)
    }
    fn delete_volume(volume_id: String, _secrets: Secrets) -> Result<()> {
        delete_volume(&Env::load()?, volume_id)
    }
    fn expand_volume(req: ExpandRequest) -> Result<ExpandResult> {
        expand_volume(&Env::load()?, req)
    }
    fn get_volume(volume_id: String, _secrets: Secrets) -> Result<Volume> {
        get_volume(&Env::load()?, volume_id)
    }
    fn list_volumes(starting_token: String, max_entries: u32) -> Result<VolumePage> {
        list_volumes(&Env::load()?, starting_token, max_entries)
    }
    fn get_capacity(parameters: KeyValues) -> Result<u64> {
        get_capacity(&Env::load()?, parameters)
    }
    fn create_snapshot(req: CreateSnapshotRequest) -> Result<Snapshot> {
        snapshot::create(&Env::load()?, req)
    }
    fn delete_snapshot(snapshot_id: String, _secrets: Secrets) -> Result<()> {
        snapshot::delete(&Env::load()?, &snapshot_id)
    }
    fn list_snapshots(filter: SnapshotFilter) -> Result<SnapshotPage> {
        snapshot::list(&Env::load()?, filter)
    }
    fn create_group_snapshot(req: CreateGroupSnapshotRequest) -> Result<GroupSnapshot> {
        group::create(&Env::load()?, req)
    }
    fn delete_group_snapshot(id: String, snapshots: Vec<String>, _: Secrets) -> Result<()> {
        group::delete(&Env::load()?, &id, &snapshots)
    }
    fn get_group_snapshot(id: String, snapshots: Vec<String>, _: Secrets) -> Result<GroupSnapshot> {
        group::get(&Env::load()?, &id, &snapshots)
    }
}

pub fn create_volume(env: &Env, req: CreateVolumeRequest) -> Result<Volume> {
    let settings = env.settings()?;
    let wanted = config::resolve(&settings, &req.parameters, &req.capabilities)
        .context(|| format!("create-volume {:?}", req.name))?;
    let backend = backend::for_mode(wanted.mode)?;
    let id = id::from_name(&req.name)?;
    let (required, limit) = (req.capacity.required_bytes, req.capacity.limit_bytes);
    let source = requested_source(&req)?;

    if let Some(meta) = store::read_meta(&env.layout, &id)? {
        let clash = |why: String| {
            fail(
                ErrorCode::AlreadyExists,
                format!(
                    "create-volume {:?}: volume {id} already exists and does not match: {why}",
                    req.name
                ),
            )
        };
        if meta.name != req.name {
            return Err(clash(format!("its id is taken by volume {:?}", meta.name)));
        }
        match meta.state {
            State::Ready => {
                let made_from = Source::of(&meta);
                if made_from != source {
                    return Err(clash(format!(
                        "it was made from {}, not {}",
                        source_text(made_from),
                        source_text(source)
                    )));
                }
                return match meta.mismatch(&req.name, &wanted, required, limit) {
                    None => Ok(volume(env, &id, &meta)),
                    Some(why) => Err(clash(why)),
                };
            }
            State::Deleting => {
                return Err(fail(
                    ErrorCode::Aborted,
                    format!(
                        "create-volume {:?}: volume {id} is being deleted; retry once the \
                         deletion is done",
                        req.name
                    ),
                ))
            }
            // An earlier attempt died half-way: tear down and redo below.
            State::Creating => env.warn(
                "redoing an interrupted create",
                &[("volume", &id), ("name", &req.name)],
            ),
        }
    }

    let (min, kind) = backend.min_bytes(wanted.fs_type);
    let rules = Rules {
        unit: size::MIB,
        min,
        max: settings.max_volume_bytes,
        default: settings.default_volume_bytes,
        kind,
    };
    let capacity = rules
        .for_create(&req.capacity)
        .context(|| format!("create-volume {:?}", req.name))?;
    // Only a volume still to be made needs its source (a repeat of a done
    // clone answers even when the source is gone since).
    let mut meta = Meta::new(&req.name, &wanted, capacity);
    if let Some(from) = source {
        let (size, fs_type, unformatted) = source_of_copy(env, &req.name, from, &wanted)?;
        meta.capacity_bytes = copy_capacity(&req.name, from, size, capacity, limit)?;
        meta.fs_type = fs_type;
        meta.format_pending = unformatted;
        match from {
            Source::Volume(v) => meta.source = Some(v.to_string()),
            Source::Snapshot(s) => meta.snapshot = Some(s.to_string()),
        }
    }
    let capacity = meta.capacity_bytes;
    store::check_root(&env.layout)?;
    backend.precheck(env, &wanted)?;
    check_room(env, &settings, &id, capacity)
        .context(|| format!("create-volume {:?}", req.name))?;
    backend::teardown(env, &id, Attached::Maybe)?;

    if let Err(e) = make(env, backend, &id, &mut meta) {
        return Err(clean_up_failed_create(env, &id, e));
    }
    env.info(
        "volume created",
        &[
            ("volume", &id),
            ("name", &req.name),
            ("mode", wanted.mode.as_str()),
            ("bytes", &capacity.to_string()),
        ],
    );
    Ok(volume(env, &id, &meta))
}

pub fn delete_volume(env: &Env, volume_id: String) -> Result<()> {
    let id = volume_id.as_str();
    id::check(id)?;
    if !store::exists(&env.layout.dir(id))? {
        // Gone, perhaps by an earlier attempt that died before its sync.
        return store::sync_removals(&env.layout.volumes());
    }
    // Mark it first so get/list stop showing it; removal itself works
    // from the layout, so a missing or torn meta does not block it. The
    // mark is for concurrent readers only, hence not synced: after a crash
    // the CO retries the delete, whatever record the crash left.
    let attached = match store::read_meta(&env.layout, id) {
        Ok(Some(mut meta)) => {
            if meta.state != State::Deleting {
                meta.state = State::Deleting;
                store::mark_meta(&env.layout, id, &meta)?;
            }
            Attached::of(&meta)
        }
        Ok(None) => Attached::Maybe,
        Err(e) => {
            env.warn(
                "meta unreadable; deleting by layout",
                &[("volume", id), ("error", &e.message)],
            );
            Attached::Maybe
        }
    };
    backend::teardown(env, id, attached).context(|| format!("delete-volume {id}"))?;
    // Durable before it answers: a deletion undone by a crash would leave
    // storage that no CO will ask to delete again.
    store::sync_removals(&env.layout.volumes())?;
    env.info("volume deleted", &[("volume", id)]);
    Ok(())
}

pub fn expand_volume(env: &Env, req: ExpandRequest) -> Result<ExpandResult> {
    let id = req.volume_id.as_str();
    id::check(id)?;
    let settings = env.settings()?;
    // The controller may run on another node than the volume: use meta
    // when it is here, else only round and check limits. The growth
    // itself is node expand's.
    let meta = match store::read_meta(&env.layout, id)? {
        Some(meta) if meta.state == State::Ready => Some(meta),
        _ => None,
    };
    let (min, kind) = match &meta {
        Some(m) => {
            let backend = backend::for_mode(m.mode)?;
            if m.mode == config::Mode::Image && m.fs_type.is_none() && is_mount(&req.capability) {
                return Err(invalid_cap(
                    id,
                    "it is a raw block volume without a filesystem",
                ));
            }
            if m.mode != config::Mode::Image && is_block(&req.capability) {
                return Err(invalid_cap(id, "it cannot be used as a raw block device"));
            }
            backend.min_bytes(m.fs_type)
        }
        None => UNKNOWN_MIN,
    };
    let rules = Rules {
        unit: size::MIB,
        min,
        max: settings.max_volume_bytes,
        default: 0,
        kind,
    };
    let capacity_bytes = rules
        .for_expand(meta.as_ref().map(|m| m.capacity_bytes), &req.capacity)
        .context(|| format!("expand-volume {id}"))?;
    if meta
        .as_ref()
        .is_some_and(|m| capacity_bytes > m.capacity_bytes)
    {
        check_room(env, &settings, id, capacity_bytes).context(|| format!("expand-volume {id}"))?;
    }
    Ok(ExpandResult {
        capacity_bytes,
        // Always: the node grows the image and filesystem (or quota),
        // and finishes any growth left pending.
        node_expansion_required: true,
    })
}

pub fn get_volume(env: &Env, volume_id: String) -> Result<Volume> {
    id::check(&volume_id)?;
    let meta = store::ready_meta(&env.layout, &volume_id)?;
    Ok(volume(env, &volume_id, &meta))
}

pub fn list_volumes(env: &Env, starting_token: String, max_entries: u32) -> Result<VolumePage> {
    let mut ready = Vec::new();
    for id in store::list_ids(&env.layout)? {
        match store::read_meta(&env.layout, &id) {
            Ok(Some(meta)) if meta.state == State::Ready => ready.push((id, meta)),
            Ok(_) => {}
            // One torn volume must not hide all the others.
            Err(e) => env.warn(
                "skipping a volume with unreadable meta",
                &[("volume", &id), ("error", &e.message)],
            ),
        }
    }
    let ids: Vec<String> = ready.iter().map(|(id, _)| id.clone()).collect();
    let (range, next_token) =
        page::page(&ids, &starting_token, max_entries).context(|| "list-volumes".into())?;
    let volumes = ready[range]
        .iter()
        .map(|(id, meta)| volume(env, id, meta))
        .collect();
    Ok(VolumePage {
        volumes,
        next_token,
    })
}

/// What create-volume would accept with these parameters: its room rule;
/// parameters it refuses as invalid are INVALID_ARGUMENT here too, and a
/// mode this root cannot serve (subvolume off btrfs) has no room: 0.
pub fn get_capacity(env: &Env, parameters: KeyValues) -> Result<u64> {
    let settings = env.settings()?;
    let wanted = config::resolve(&settings, &parameters, &[]).context(|| "get-capacity".into())?;
    let backend = backend::for_mode(wanted.mode)?;
    if let Err(e) = backend.precheck(env, &wanted) {
        env.debug(
            "get-capacity: this root cannot serve",
            &[("why", &e.message)],
        );
        return Ok(0);
    }
    let room = room(env, &settings, None).context(|| "get-capacity".into())?;
    // Creates round up to whole MiB and to the smallest volume: answer a
    // size a create of exactly it fits.
    let whole = room.min(size::WIRE_MAX) / size::MIB * size::MIB;
    let (min, _) = backend.min_bytes(wanted.fs_type);
    Ok(if whole < min { 0 } else { whole })
}

/// The room for new volumes and growth: the root's available space times
/// the overcommit ratio, less what the existing volumes may still claim —
/// their size minus what they already take (which statfs counts): the
/// allocated blocks of a sparse image, the qgroup usage of a subvolume.
/// `except` is left out (a create being redone, a volume being grown).
fn room(env: &Env, settings: &config::Settings, except: Option<&str>) -> Result<u64> {
    let root = env.layout.root();
    let stats = env
        .host
        .statfs(root)
        .context(|| format!("statfs of {root}"))?;
    let mut claims: u64 = 0;
    for id in store::list_ids(&env.layout)? {
        if Some(id.as_str()) == except {
            continue;
        }
        let meta = match store::read_meta(&env.layout, &id) {
            Ok(Some(meta)) if meta.state != State::Deleting => meta,
            _ => continue,
        };
        let taken = taken_bytes(env, &id, meta.mode)?;
        claims = claims.saturating_add(meta.capacity_bytes.saturating_sub(taken));
    }
    let offered = (stats.available_bytes as f64 * settings.overcommit_ratio) as u64;
    Ok(offered.saturating_sub(claims))
}

/// What volume `id` already takes of the root: counted in its available
/// space, so not to be claimed twice.
fn taken_bytes(env: &Env, id: &str, mode: config::Mode) -> Result<u64> {
    match mode {
        config::Mode::Image => {
            let image = env.layout.image(id);
            match env.host.allocated_bytes(&image) {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.code == ErrorCode::NotFound => Ok(0),
                Err(e) => Err(e).context(|| format!("volume {id}: measuring {image}")),
            }
        }
        config::Mode::Subvolume | config::Mode::ProjectQuota => {
            let data = env.layout.data(id);
            // No usage to read (gone, quotas off): claim the whole size.
            Ok(env
                .host
                .get_usage(QuotaKind::BtrfsQgroup, &data)
                .map(|u| u.used_bytes)
                .unwrap_or(0))
        }
    }
}

/// Refuses a create or a growth to `capacity` that the root's space cannot
/// hold (see `room`), before anything is made or grown.
pub fn check_room(env: &Env, settings: &config::Settings, id: &str, capacity: u64) -> Result<()> {
    let room = room(env, settings, Some(id))?;
    // What the volume already takes needs no new room.
    let own = match store::read_meta(&env.layout, id) {
        Ok(Some(meta)) if meta.state == State::Ready => taken_bytes(env, id, meta.mode)?,
        _ => 0,
    };
    let needed = capacity.saturating_sub(own);
    if needed > room {
        return Err(fail(
            ErrorCode::ResourceExhausted,
            format!(
                "{} asked, but the local-dir root has room for {} more (available space \
                 times overcommitRatio {}, less what existing volumes may still fill)",
                size::human(capacity),
                size::human(room.saturating_add(own)),
                settings.overcommit_ratio
            ),
        ));
    }
    Ok(())
}

/// Makes the storage in the volume's directory, then writes its record,
/// `ready`, durably: the one record whose loss after a reply would lose a
/// volume the CO knows. Until then the directory has no meta, which every
/// call reads as no volume (create tears it down and redoes it, delete
/// removes it), so no `creating` record has to be written and synced first.
fn make(env: &Env, backend: &dyn Backend, id: &str, meta: &mut Meta) -> Result<()> {
    store::make_dir(&env.layout, id)?;
    backend.make(env, id, meta)?;
    meta.state = State::Ready;
    let root = env.layout.root();
    let root_fs = env
        .host
        .filesystem_type(root)
        .context(|| format!("finding the filesystem type of the local-dir root {root}"))?;
    store::write_first_meta(&env.layout, id, meta, &root_fs)
}

/// A failed create removes what it made; if even that fails, the directory
/// still has no `ready` meta, so a retry tears down and redoes, and delete
/// removes it.
fn clean_up_failed_create(env: &Env, id: &str, e: Error) -> Error {
    match backend::teardown(env, id, Attached::Maybe) {
        Ok(()) => e,
        Err(cleanup) => {
            env.warn(
                "cleaning up a failed create failed",
                &[("volume", id), ("error", &cleanup.message)],
            );
            Error {
                code: e.code,
                message: format!(
                    "{} (and cleaning up failed: {}; a retry or delete-volume finishes it)",
                    e.message, cleanup.message
                ),
            }
        }
    }
}

fn volume(env: &Env, id: &str, meta: &Meta) -> Volume {
    Volume {
        volume_id: id.to_string(),
        capacity_bytes: meta.capacity_bytes,
        volume_context: meta.volume_context(&env.node_id()),
        content_source: match (&meta.source, &meta.snapshot) {
            (Some(v), _) => Some(ContentSource::Volume(v.clone())),
            (None, Some(s)) => Some(ContentSource::Snapshot(s.clone())),
            (None, None) => None,
        },
    }
}

/// What a create copies: another volume or a snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source<'a> {
    Volume(&'a str),
    Snapshot(&'a str),
}

impl<'a> Source<'a> {
    fn of(meta: &'a Meta) -> Option<Source<'a>> {
        match (&meta.source, &meta.snapshot) {
            (Some(v), _) => Some(Source::Volume(v)),
            (None, Some(s)) => Some(Source::Snapshot(s)),
            (None, None) => None,
        }
    }
}

/// The volume or snapshot a create copies, if any.
fn requested_source(req: &CreateVolumeRequest) -> Result<Option<Source<'_>>> {
    let (id, source, what) = match &req.content_source {
        None => return Ok(None),
        Some(ContentSource::Snapshot(s)) => (s, Source::Snapshot(s), "snapshot"),
        Some(ContentSource::Volume(v)) => (v, Source::Volume(v), "volume"),
    };
    id::check(id).context(|| format!("create-volume {:?} from {what} {id}", req.name))?;
    Ok(Some(source))
}

/// The size and filesystem of what a create copies, and whether that
/// filesystem is still to be made (a never-staged image). Copies stay in
/// their source's mode (a btrfs snapshot is no image, nor the reverse) and
/// keep its filesystem.
fn source_of_copy(
    env: &Env,
    name: &str,
    from: Source,
    wanted: &Wanted,
) -> Result<(u64, Option<config::FsType>, bool)> {
    let doing = || format!("create-volume {name:?} from {}", source_text(Some(from)));
    let (mode, fs_type, size, unformatted) = match from {
        Source::Volume(v) => {
            let m = store::ready_meta(&env.layout, v).context(doing)?;
            (m.mode, m.fs_type, m.capacity_bytes, m.format_pending)
        }
        Source::Snapshot(s) => {
            let m = snapshot::ready(env, s).context(doing)?;
            (m.mode, m.fs_type, m.size_bytes, m.format_pending)
        }
    };
    if mode != wanted.mode {
        return Err(invalid(format!(
            "{}: the source is a {} volume and the new volume would be {}; copies stay in \
             their source's mode",
            doing(),
            mode.as_str(),
            wanted.mode.as_str()
        )));
    }
    if let (Some(have), Some(asked)) = (fs_type, wanted.fs_type) {
        if have != asked {
            return Err(invalid(format!(
                "{}: the source holds {}, not the requested {}",
                doing(),
                have.as_str(),
                asked.as_str()
            )));
        }
    }
    // A raw-block source has no filesystem to mount.
    if fs_type.is_none() && wanted.fs_type.is_some() {
        return Err(invalid(format!(
            "{}: the source is a raw block volume without a filesystem",
            doing()
        )));
    }
    Ok((size, fs_type, unformatted))
}

/// A copy holds at least its source's data: the request is raised to the
/// source's size, unless its limit forbids that.
fn copy_capacity(
    name: &str,
    from: Source,
    size: u64,
    asked: u64,
    limit: Option<u64>,
) -> Result<u64> {
    let capacity = asked.max(size);
    if let Some(limit) = limit.filter(|&l| capacity > l) {
        return Err(fail(
            ErrorCode::OutOfRange,
            format!(
                "create-volume {name:?}: the source {} holds {size} bytes, more than the \
                 limit of {limit}",
                source_text(Some(from))
            ),
        ));
    }
    Ok(capacity)
}

fn source_text(source: Option<Source>) -> String {
    match source {
        Some(Source::Volume(id)) => format!("volume {id}"),
        Some(Source::Snapshot(id)) => format!("snapshot {id}"),
        None => "nothing".into(),
    }
}

fn is_block(cap: &Option<VolumeCapability>) -> bool {
    matches!(cap, Some(c) if matches!(c.access_type, AccessType::Block))
}

fn is_mount(cap: &Option<VolumeCapability>) -> bool {
    matches!(cap, Some(c) if matches!(c.access_type, AccessType::Mount(_)))
}

fn invalid_cap(id: &str, why: &str) -> Error {
    fail(
        ErrorCode::InvalidArgument,
        format!("expand-volume {id}: the capability does not fit the volume: {why}"),
    )
}
