//! Controller export: create (also as a clone of another volume), delete,
//! expand, get and list volumes, and capacity. The mode-specific storage
//! work is the backend's.

use crate::backend::{self, Backend, UNKNOWN_MIN};
use crate::config::{self, Wanted};
use crate::env::Env;
use crate::error::{fail, invalid, not_found, Context, Error, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::controller::{
    CreateSnapshotRequest, CreateVolumeRequest, ExpandRequest, ExpandResult, Guest, Snapshot,
    SnapshotFilter, SnapshotPage, Volume, VolumePage,
};
use crate::id;
use crate::meta::{Meta, State};
use crate::page;
use crate::size::{self, Bounds};
use crate::store;
use crate::wasmcsi::plugin::types::{
    AccessType, ContentSource, KeyValues, Secrets, VolumeCapability,
};
use crate::LocalDir;

impl Guest for LocalDir {
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
    fn create_snapshot(_req: CreateSnapshotRequest) -> Result<Snapshot> {
        Err(no_snapshots())
    }
    fn delete_snapshot(_snapshot_id: String, _secrets: Secrets) -> Result<()> {
        Err(no_snapshots())
    }
    fn list_snapshots(_filter: SnapshotFilter) -> Result<SnapshotPage> {
        Err(no_snapshots())
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
                if meta.source.as_ref() != source {
                    return Err(clash(format!(
                        "it was made from {}, not {}",
                        source_text(meta.source.as_ref()),
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
    let bounds = Bounds {
        min,
        max: settings.max_volume_bytes,
        kind,
    };
    let capacity = size::for_create(required, limit, settings.default_volume_bytes, bounds)
        .context(|| format!("create-volume {:?}", req.name))?;
    // Only a volume still to be made needs its source (a repeat of a done
    // clone answers even when the source is gone since).
    let capacity = match source {
        Some(from) => {
            let from_meta = clone_source_meta(env, &req.name, from, &wanted)?;
            clone_capacity(&req.name, from, &from_meta, capacity, limit)?
        }
        None => capacity,
    };
    store::check_root(&env.layout)?;
    backend.precheck(env, &wanted)?;
    backend::teardown(env, &id)?;

    let mut meta = Meta::new(&req.name, &wanted, capacity);
    meta.source = source.cloned();
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
        return Ok(());
    }
    // Mark it first so get/list stop showing it; removal itself works
    // from the layout, so a missing or torn meta does not block it.
    match store::read_meta(&env.layout, id) {
        Ok(Some(mut meta)) if meta.state != State::Deleting => {
            meta.state = State::Deleting;
            store::write_meta(&env.layout, id, &meta)?;
        }
        Ok(_) => {}
        Err(e) => env.warn(
            "meta unreadable; deleting by layout",
            &[("volume", id), ("error", &e.message)],
        ),
    }
    backend::teardown(env, id).context(|| format!("delete-volume {id}"))?;
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
    let bounds = Bounds {
        min,
        max: settings.max_volume_bytes,
        kind,
    };
    let capacity_bytes = size::for_expand(
        meta.as_ref().map(|m| m.capacity_bytes),
        req.capacity.required_bytes,
        req.capacity.limit_bytes,
        bounds,
    )
    .context(|| format!("expand-volume {id}"))?;
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
    let (range, next_token) = page::page(&ids, &starting_token, max_entries)?;
    let volumes = ready[range]
        .iter()
        .map(|(id, meta)| volume(env, id, meta))
        .collect();
    Ok(VolumePage {
        volumes,
        next_token,
    })
}

pub fn get_capacity(env: &Env, parameters: KeyValues) -> Result<u64> {
    let settings = env.settings()?;
    let wanted = config::resolve(&settings, &parameters, &[]).context(|| "get-capacity".into())?;
    backend::for_mode(wanted.mode)?;
    let root = env.layout.root();
    let stats = env
        .host
        .statfs(root)
        .context(|| format!("get-capacity: statfs of {root}"))?;
    Ok(stats.available_bytes)
}

/// Writes meta `creating`, makes the storage, then marks it `ready`.
fn make(env: &Env, backend: &dyn Backend, id: &str, meta: &mut Meta) -> Result<()> {
    store::make_dir(&env.layout, id)?;
    store::write_meta(&env.layout, id, meta)?;
    backend.make(env, id, meta)?;
    meta.state = State::Ready;
    store::write_meta(&env.layout, id, meta)
}

/// A failed create removes what it made; if even that fails, meta still
/// says `creating`, so a retry tears down and redoes, and delete removes it.
fn clean_up_failed_create(env: &Env, id: &str, e: Error) -> Error {
    match backend::teardown(env, id) {
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
        content_source: meta.source.clone().map(ContentSource::Volume),
    }
}

/// The volume a create clones, if any. local-dir keeps no snapshots, so
/// none is ever found.
fn requested_source(req: &CreateVolumeRequest) -> Result<Option<&String>> {
    match &req.content_source {
        None => Ok(None),
        Some(ContentSource::Snapshot(snapshot)) => Err(not_found(format!(
            "create-volume {:?}: snapshot {snapshot} does not exist (local-dir keeps no \
             snapshots)",
            req.name
        ))),
        Some(ContentSource::Volume(from)) => {
            id::check(from)
                .context(|| format!("create-volume {:?} from volume {from}", req.name))?;
            Ok(Some(from))
        }
    }
}

/// The meta of the volume a create clones; only subvolumes clone (an XFS
/// image's copy would carry its source's UUID, which the node refuses to
/// mount twice).
fn clone_source_meta(env: &Env, name: &str, from: &str, wanted: &Wanted) -> Result<Meta> {
    let doing = || format!("create-volume {name:?} from volume {from}");
    let from_meta = store::ready_meta(&env.layout, from).context(doing)?;
    if from_meta.mode != config::Mode::Subvolume || wanted.mode != config::Mode::Subvolume {
        return Err(invalid(format!(
            "{}: only subvolume-mode volumes can be cloned, into subvolume mode (the source \
             is {}, the new volume {})",
            doing(),
            from_meta.mode.as_str(),
            wanted.mode.as_str()
        )));
    }
    Ok(from_meta)
}

/// A clone holds at least its source's data: the request is raised to the
/// source's size, unless its limit forbids that.
fn clone_capacity(
    name: &str,
    from: &str,
    from_meta: &Meta,
    asked: u64,
    limit: Option<u64>,
) -> Result<u64> {
    let capacity = asked.max(from_meta.capacity_bytes);
    if let Some(limit) = limit.filter(|&l| capacity > l) {
        return Err(fail(
            ErrorCode::OutOfRange,
            format!(
                "create-volume {name:?}: the source volume {from} holds {} bytes, more than the \
                 limit of {limit}",
                from_meta.capacity_bytes
            ),
        ));
    }
    Ok(capacity)
}

fn source_text(source: Option<&String>) -> String {
    match source {
        Some(id) => format!("volume {id}"),
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

fn no_snapshots() -> Error {
    fail(
        ErrorCode::Unimplemented,
        "local-dir does not support snapshots",
    )
}
