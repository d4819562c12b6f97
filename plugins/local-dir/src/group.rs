//! Group snapshots: snapshots of several volumes cut at one point in time.
//!
//! Each member is an ordinary snapshot (see `snapshot`) that names its
//! group and can be restored like any other, but is deleted only with the
//! group. The cut is the host's: image copies are made with every mounted
//! member frozen at once; subvolume snapshots of several volumes are only
//! taken while none of them is mounted (btrfs cuts one at a time).
//!
//! `<root>/groups/<id>/meta.json` says `creating` before any member is
//! made and `ready` once all are, so a retry after a crash tears down the
//! half-made members and cuts the group again.

use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::error::{self, fail, internal, invalid, not_found, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::controller::{CreateGroupSnapshotRequest, GroupSnapshot};
use crate::id;
use crate::meta::State;
use crate::snapshot::{self, SnapMeta};
use crate::store;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMeta {
    pub version: u32,
    /// The CSI name (the idempotency key).
    pub name: String,
    /// The source volumes, as asked; `snapshot_ids` in the same order.
    pub source_volume_ids: Vec<String>,
    pub snapshot_ids: Vec<String>,
    /// Seconds since the Unix epoch.
    pub creation_time: u64,
    pub state: State,
}

fn read(env: &Env, id: &str) -> Result<Option<GroupMeta>> {
    store::read_record(
        &env.layout.group_meta(id),
        |m: &GroupMeta| m.version,
        VERSION,
    )
}

fn write(env: &Env, id: &str, meta: &GroupMeta) -> Result<()> {
    store::write_record(&env.layout.group_dir(id), meta)
}

/// A member's snapshot id: fixed by the group and the source, so a retry
/// finds the members of its first attempt.
fn member_id(group: &str, source: &str) -> Result<String> {
    id::from_name(&format!("{group}/{source}"))
}

fn sorted(ids: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = ids.iter().map(String::as_str).collect();
    v.sort_unstable();
    v
}

/// The group as the CO sees it, from its members' records.
fn record(env: &Env, id: &str, meta: &GroupMeta) -> Result<GroupSnapshot> {
    let snapshots = meta
        .snapshot_ids
        .iter()
        .map(|member| match snapshot::read(env, member)? {
            Some(m) if m.state == State::Ready => Ok(snapshot::record(member, &m)),
            _ => Err(internal(format!(
                "group snapshot {id}: member {member} is missing"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GroupSnapshot {
        group_snapshot_id: id.to_string(),
        snapshots,
        creation_time: meta.creation_time,
        ready_to_use: true,
    })
}

/// `snapshot_ids` as the CO passed them must be the group's own, if given.
fn check_members(id: &str, meta: &GroupMeta, asked: &[String]) -> Result<()> {
    if asked.is_empty() || sorted(asked) == sorted(&meta.snapshot_ids) {
        Ok(())
    } else {
        Err(invalid(format!(
            "group snapshot {id} holds snapshots {:?}, not {:?}",
            meta.snapshot_ids, asked
        )))
    }
}

pub fn create(env: &Env, req: CreateGroupSnapshotRequest) -> Result<GroupSnapshot> {
    let sources = &req.source_volume_ids;
    if sources.is_empty() {
        return Err(invalid("create-group-snapshot: no source volumes"));
    }
    for source in sources {
        id::check(source)?;
    }
    let asked = sorted(sources);
    if asked.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid(
            "create-group-snapshot: a source volume is named twice",
        ));
    }
    let id = id::from_name(&req.name)?;
    let doing = || format!("create-group-snapshot {:?}", req.name);
    if let Some(meta) = read(env, &id)? {
        let clash = |why: String| {
            fail(
                ErrorCode::AlreadyExists,
                format!("{}: group snapshot {id} already exists: {why}", doing()),
            )
        };
        if meta.name != req.name {
            return Err(clash(format!("its id is taken by {:?}", meta.name)));
        }
        match meta.state {
            State::Ready if sorted(&meta.source_volume_ids) == asked => {
                return record(env, &id, &meta)
            }
            State::Ready => {
                return Err(clash(format!(
                    "it is of volumes {:?}",
                    meta.source_volume_ids
                )))
            }
            State::Deleting => {
                return Err(fail(
                    ErrorCode::Aborted,
                    format!("{}: group {id} is being deleted; retry later", doing()),
                ))
            }
            State::Creating => {
                env.warn(
                    "redoing an interrupted group snapshot",
                    &[("group", &id), ("name", &req.name)],
                );
                teardown(env, &id, &meta.snapshot_ids)?;
            }
        }
    }
    let volumes = sources
        .iter()
        .map(|s| store::ready_meta(&env.layout, s))
        .collect::<Result<Vec<_>>>()
        .context(doing)?;
    let mode = volumes[0].mode;
    if volumes.iter().any(|v| v.mode != mode) {
        return Err(fail(
            ErrorCode::FailedPrecondition,
            format!(
                "{}: the volumes are of different modes (image and subvolume) and \
                 cannot be cut together",
                doing()
            ),
        ));
    }
    store::check_root(&env.layout)?;
    let members = sources
        .iter()
        .map(|s| member_id(&id, s))
        .collect::<Result<Vec<_>>>()?;
    let meta = GroupMeta {
        version: VERSION,
        name: req.name.clone(),
        source_volume_ids: sources.clone(),
        snapshot_ids: members.clone(),
        creation_time: snapshot::now(),
        state: State::Creating,
    };
    for member in &members {
        if let Some(other) = snapshot::read(env, member)? {
            if other.group.as_deref() != Some(id.as_str()) {
                return Err(fail(
                    ErrorCode::AlreadyExists,
                    format!(
                        "{}: snapshot id {member} is taken by {:?}",
                        doing(),
                        other.name
                    ),
                ));
            }
        }
    }
    let made = (|| {
        teardown(env, &id, &members)?;
        let dir = env.layout.group_dir(&id);
        std::fs::create_dir_all(&dir).map_err(|e| error::io(format_args!("creating {dir}"), e))?;
        write(env, &id, &meta)?;
        let mut pairs = Vec::with_capacity(members.len());
        let mut member_metas = Vec::with_capacity(members.len());
        for ((member, source), volume) in members.iter().zip(sources).zip(&volumes) {
            let m = SnapMeta {
                version: snapshot::VERSION,
                name: format!("{id}/{source}"),
                source_volume_id: source.clone(),
                mode,
                fs_type: volume.fs_type,
                size_bytes: volume.capacity_bytes,
                creation_time: meta.creation_time,
                state: State::Creating,
                group: Some(id.clone()),
                format_pending: volume.format_pending,
            };
            snapshot::begin(env, member, &m)?;
            pairs.push(snapshot::copy_paths(env, member, source, mode)?);
            member_metas.push(m);
        }
        cut(env, &id, mode, &pairs)?;
        for (member, m) in members.iter().zip(member_metas) {
            snapshot::write(
                env,
                member,
                &SnapMeta {
                    state: State::Ready,
                    ..m
                },
            )?;
        }
        write(
            env,
            &id,
            &GroupMeta {
                state: State::Ready,
                ..meta.clone()
            },
        )
    })();
    if let Err(e) = made {
        if let Err(cleanup) = teardown(env, &id, &members) {
            env.warn(
                "cleaning up a failed group snapshot failed",
                &[("group", &id), ("error", &cleanup.message)],
            );
        }
        return Err(fail(e.code, format!("{}: {}", doing(), e.message)));
    }
    env.info(
        "group snapshot created",
        &[
            ("group", &id),
            ("name", &req.name),
            ("volumes", &sources.join(",")),
        ],
    );
    record(env, &id, &meta)
}

/// All members' copies in one host call: one point in time.
fn cut(env: &Env, id: &str, mode: crate::config::Mode, pairs: &[(String, String)]) -> Result<()> {
    use crate::config::Mode;
    match mode {
        Mode::Image => {
            let methods = env
                .host
                .copy_images(pairs)
                .context(|| format!("group snapshot {id}: copying {} images", pairs.len()))?;
            let how = methods.first().map(|m| snapshot::method(*m)).unwrap_or("");
            env.debug("images copied", &[("group", id), ("method", how)]);
            Ok(())
        }
        Mode::Subvolume => env.host.read_only_snapshots(pairs).context(|| {
            format!(
                "group snapshot {id}: snapshotting {} subvolumes",
                pairs.len()
            )
        }),
        Mode::ProjectQuota => Err(fail(
            ErrorCode::Unimplemented,
            "project-quota volumes have no snapshots",
        )),
    }
}

/// Removes the members, then the group's record.
fn teardown(env: &Env, id: &str, members: &[String]) -> Result<()> {
    for member in members {
        snapshot::remove(env, member).context(|| format!("group snapshot {id}"))?;
    }
    let dir = env.layout.group_dir(id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(error::io(format_args!("removing {dir}"), e)),
    }
}

pub fn delete(env: &Env, id: &str, snapshot_ids: &[String]) -> Result<()> {
    // An id this plugin could not have made names no group: already gone.
    if !id::is_valid(id) {
        return Ok(());
    }
    let Some(mut meta) = read(env, id)? else {
        return Ok(());
    };
    check_members(id, &meta, snapshot_ids)?;
    if meta.state != State::Deleting {
        meta.state = State::Deleting;
        write(env, id, &meta)?;
    }
    teardown(env, id, &meta.snapshot_ids).context(|| format!("delete-group-snapshot {id}"))?;
    store::sync_removals(&env.layout.groups())?;
    env.info("group snapshot deleted", &[("group", id)]);
    Ok(())
}

pub fn get(env: &Env, id: &str, snapshot_ids: &[String]) -> Result<GroupSnapshot> {
    let missing = || not_found(format!("group snapshot {id} does not exist on this node"));
    if !id::is_valid(id) {
        return Err(missing());
    }
    match read(env, id)? {
        Some(meta) if meta.state == State::Ready => {
            check_members(id, &meta, snapshot_ids)?;
            record(env, id, &meta)
        }
        _ => Err(missing()),
    }
}
