//! Snapshots: a read-only btrfs snapshot of the volume's subvolume
//! (subvolume mode) or a copy of its image that shares blocks where the
//! root's filesystem can, taken with the volume's filesystem frozen when
//! it is mounted (image mode). A snapshot lives on after its volume.
//!
//! Like volumes, a snapshot's `meta.json` says `creating` before anything
//! is made and `ready` once it is whole, so a retry after a crash anywhere
//! tears down the half-made copy and makes it again.

use serde::{Deserialize, Serialize};

use crate::config::{FsType, Mode};
use crate::env::Env;
use crate::error::{self, fail, invalid, not_found, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::controller::{
    CreateSnapshotRequest, Snapshot, SnapshotFilter, SnapshotPage,
};
use crate::id;
use crate::meta::State;
use crate::page;
use crate::store;
use crate::wasmcsi::plugin::images::CopyMethod;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapMeta {
    pub version: u32,
    /// The CSI name (the idempotency key).
    pub name: String,
    pub source_volume_id: String,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<FsType>,
    /// The source's provisioned size when the snapshot was taken: the
    /// smallest volume it can be restored to.
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub creation_time: u64,
    pub state: State,
    /// The group snapshot it was cut with: deleted only with the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Image mode: the source had never been staged, so the copy holds no
    /// filesystem yet; a restore formats it at its first stage.
    #[serde(default, skip_serializing_if = "is_false")]
    pub format_pending: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

pub fn read(env: &Env, id: &str) -> Result<Option<SnapMeta>> {
    store::read_record(&env.layout.snap_meta(id), |m: &SnapMeta| m.version, VERSION)
}

pub fn write(env: &Env, id: &str, meta: &SnapMeta) -> Result<()> {
    store::write_record(&env.layout.snap_dir(id), meta)
}

/// The meta of a snapshot that exists and is whole; NOT_FOUND otherwise.
pub fn ready(env: &Env, id: &str) -> Result<SnapMeta> {
    id::check(id)?;
    match read(env, id)? {
        Some(meta) if meta.state == State::Ready => Ok(meta),
        _ => Err(not_found(format!(
            "snapshot {id} does not exist on this node"
        ))),
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn record(id: &str, meta: &SnapMeta) -> Snapshot {
    Snapshot {
        snapshot_id: id.to_string(),
        source_volume_id: meta.source_volume_id.clone(),
        size_bytes: meta.size_bytes,
        creation_time: meta.creation_time,
        ready_to_use: true,
        group_snapshot_id: meta.group.clone(),
    }
}

pub fn create(env: &Env, req: CreateSnapshotRequest) -> Result<Snapshot> {
    let source = req.source_volume_id.as_str();
    id::check(source)?;
    let id = id::from_name(&req.name)?;
    let doing = || format!("create-snapshot {:?} of volume {source}", req.name);
    if let Some(meta) = read(env, &id)? {
        let clash = |why: String| {
            fail(
                ErrorCode::AlreadyExists,
                format!("{}: snapshot {id} already exists: {why}", doing()),
            )
        };
        if meta.name != req.name {
            return Err(clash(format!("its id is taken by {:?}", meta.name)));
        }
        match meta.state {
            State::Ready if meta.source_volume_id == source => return Ok(record(&id, &meta)),
            State::Ready => {
                return Err(clash(format!("it is of volume {}", meta.source_volume_id)))
            }
            State::Deleting => {
                return Err(fail(
                    ErrorCode::Aborted,
                    format!("{}: snapshot {id} is being deleted; retry later", doing()),
                ))
            }
            State::Creating => env.warn(
                "redoing an interrupted snapshot",
                &[("snapshot", &id), ("name", &req.name)],
            ),
        }
    }
    let volume = store::ready_meta(&env.layout, source).context(doing)?;
    store::check_root(&env.layout)?;
    teardown(env, &id)?;

    let meta = SnapMeta {
        version: VERSION,
        name: req.name.clone(),
        source_volume_id: source.to_string(),
        mode: volume.mode,
        fs_type: volume.fs_type,
        size_bytes: volume.capacity_bytes,
        creation_time: now(),
        state: State::Creating,
        group: None,
        format_pending: volume.format_pending,
    };
    let made = (|| {
        begin(env, &id, &meta)?;
        copy(env, &id, source, meta.mode)?;
        write(
            env,
            &id,
            &SnapMeta {
                state: State::Ready,
                ..meta.clone()
            },
        )
    })();
    if let Err(e) = made {
        if let Err(cleanup) = teardown(env, &id) {
            env.warn(
                "cleaning up a failed snapshot failed",
                &[("snapshot", &id), ("error", &cleanup.message)],
            );
        }
        return Err(fail(e.code, format!("{}: {}", doing(), e.message)));
    }
    env.info(
        "snapshot created",
        &[("snapshot", &id), ("volume", source), ("name", &req.name)],
    );
    Ok(record(&id, &meta))
}

/// Makes the snapshot's directory and records it as being created.
pub fn begin(env: &Env, id: &str, meta: &SnapMeta) -> Result<()> {
    let dir = env.layout.snap_dir(id);
    std::fs::create_dir_all(&dir).map_err(|e| error::io(format_args!("creating {dir}"), e))?;
    write(env, id, meta)
}

/// Where the mode's copy of a volume's data goes for snapshot `id`:
/// (source, destination).
pub fn copy_paths(env: &Env, id: &str, source: &str, mode: Mode) -> Result<(String, String)> {
    match mode {
        Mode::Image => Ok((env.layout.image(source), env.layout.snap_image(id))),
        Mode::Subvolume => Ok((env.layout.data(source), env.layout.snap_data(id))),
        Mode::ProjectQuota => Err(fail(
            ErrorCode::Unimplemented,
            "project-quota volumes have no snapshots",
        )),
    }
}

/// The mode's copy of the volume's data into the snapshot's directory.
fn copy(env: &Env, id: &str, source: &str, mode: Mode) -> Result<()> {
    let (from, to) = copy_paths(env, id, source, mode)?;
    if mode == Mode::Image {
        let how = env
            .host
            .copy_image(&from, &to)
            .context(|| format!("copying {from} to {to}"))?;
        env.debug("image copied", &[("snapshot", id), ("method", method(how))]);
        Ok(())
    } else {
        env.host
            .read_only_snapshot(&from, &to)
            .context(|| format!("snapshotting {from} to {to}"))
    }
}

/// How the host copied an image, for the log.
pub fn method(how: CopyMethod) -> &'static str {
    match how {
        CopyMethod::Reflink => "reflink",
        CopyMethod::Sparse => "sparse",
    }
}

/// Removes whatever there is of a snapshot, meta last.
pub fn teardown(env: &Env, id: &str) -> Result<()> {
    let dir = env.layout.snap_dir(id);
    if !store::exists(&dir)? {
        return Ok(());
    }
    store::remove_file(&env.layout.snap_image(id))?;
    let data = env.layout.snap_data(id);
    if store::exists(&data)? {
        env.host
            .delete_subvolume(&data)
            .context(|| format!("snapshot {id}: deleting {data}"))?;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(error::io(format_args!("removing {dir}"), e)),
    }
}

pub fn delete(env: &Env, id: &str) -> Result<()> {
    id::check(id)?;
    if !store::exists(&env.layout.snap_dir(id))? {
        return Ok(());
    }
    if let Ok(Some(SnapMeta {
        group: Some(group), ..
    })) = read(env, id)
    {
        return Err(invalid(format!(
            "delete-snapshot {id}: it is part of group snapshot {group}, \
             deleted only with the group (DeleteVolumeGroupSnapshot)"
        )));
    }
    remove(env, id)
}

/// Deletes a snapshot, group member or not: marked deleting, then torn
/// down.
pub fn remove(env: &Env, id: &str) -> Result<()> {
    if !store::exists(&env.layout.snap_dir(id))? {
        return Ok(());
    }
    match read(env, id) {
        Ok(Some(mut meta)) if meta.state != State::Deleting => {
            meta.state = State::Deleting;
            write(env, id, &meta)?;
        }
        Ok(_) => {}
        Err(e) => env.warn(
            "snapshot meta unreadable; deleting by layout",
            &[("snapshot", id), ("error", &e.message)],
        ),
    }
    teardown(env, id).context(|| format!("delete-snapshot {id}"))?;
    // Durable before it answers, as a volume's deletion.
    store::sync_removals(&env.layout.snapshots())?;
    env.info("snapshot deleted", &[("snapshot", id)]);
    Ok(())
}

pub fn list(env: &Env, filter: SnapshotFilter) -> Result<SnapshotPage> {
    let ids = match &filter.snapshot_id {
        // An id this plugin could not have made names no snapshot.
        Some(wanted) if !id::is_valid(wanted) => vec![],
        Some(wanted) => vec![wanted.clone()],
        None => store::list_snapshot_ids(&env.layout)?,
    };
    let mut found = Vec::new();
    for id in ids {
        match read(env, &id) {
            Ok(Some(meta)) if meta.state == State::Ready => {
                if filter
                    .source_volume_id
                    .as_ref()
                    .is_none_or(|v| *v == meta.source_volume_id)
                {
                    found.push((id, meta));
                }
            }
            Ok(_) => {}
            Err(e) => env.warn(
                "skipping a snapshot with unreadable meta",
                &[("snapshot", &id), ("error", &e.message)],
            ),
        }
    }
    let ids: Vec<String> = found.iter().map(|(id, _)| id.clone()).collect();
    let (range, next_token) = page::page(&ids, &filter.starting_token, filter.max_entries)
        .context(|| "list-snapshots".into())?;
    Ok(SnapshotPage {
        snapshots: found[range]
            .iter()
            .map(|(id, meta)| record(id, meta))
            .collect(),
        next_token,
    })
}
