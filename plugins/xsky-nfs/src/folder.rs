//! Folder mode: a folder per volume (in `pool`), exported by its own NFS
//! share on `gatewayGroup` with an ACL for `clientGroupName` (none: a
//! public share). Snapshots are fs-snapshots of the folder; a volume from a
//! snapshot is a folder cloned from it.

use crate::client::{Client, CLEANUP_GRACE};
use crate::controller::{refuse_tree_volume, within_limit};
use crate::error::{fail, invalid, precondition, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::controller::{
    CreateSnapshotRequest, CreateVolumeRequest, ExpandResult, Snapshot, SnapshotFilter,
    SnapshotPage, Volume,
};
use crate::host::{log, Host};
use crate::rules::{capacity_race, clone_unsupported, size_for};
use crate::volume::{description_mark, fingerprint, marked_description, tree_name, Kind, VolumeId};
use crate::wasmcsi::plugin::log::Level;
use crate::wasmcsi::plugin::types::{CapacityRange, ContentSource};
use crate::xms::{self, until_gone, until_settled, FolderRecord, FsSnapshot, Share};
use wasmcsi_plugin_sdk::capacity::{self, fits};

fn folder_path(id: i64) -> String {
    format!("/v1/fs-folders/{id}")
}

fn get_folder(c: &mut Client, id: i64) -> Result<Option<FolderRecord>> {
    xms::get_object(c, &folder_path(id), "fs_folder")
}

fn get_snapshot(c: &mut Client, id: i64) -> Result<Option<FsSnapshot>> {
    xms::get_object(c, &format!("/v1/fs-snapshots/{id}"), "fs_snapshot")
}

fn get_share(c: &mut Client, id: i64) -> Result<Option<Share>> {
    xms::get_object(c, &format!("/v1/fs-nfs-shares/{id}"), "fs_nfs_share")
}

pub struct Plan<'p> {
    pub pool: &'p str,
    pub gateway_group: Option<&'p str>,
    pub client_group: Option<&'p str>,
    pub options: Vec<String>,
    pub id_servers: Vec<String>,
}

pub fn create_volume(
    host: &dyn Host,
    c: &mut Client,
    req: &CreateVolumeRequest,
    plan: Plan,
) -> Result<Volume> {
    let name = tree_name(&req.name);
    let doing = format!("creating volume {:?} (folder {name})", req.name);
    let mut range = req.capacity;
    let snapshot = match &req.content_source {
        None => None,
        Some(ContentSource::Volume(_)) => return Err(clone_unsupported()),
        Some(ContentSource::Snapshot(sid)) => {
            let id = VolumeId::parse(sid)?;
            if id.kind != Kind::Snapshot {
                return Err(invalid(format!("{sid} is not an xsky-nfs snapshot")));
            }
            Some((sid.clone(), id.tree_id))
        }
    };
    // What the request asks for besides name and size, kept in the
    // folder's description with the mark that xsky-nfs made it.
    let fp = fingerprint(&[
        ("mode", "folder"),
        ("pool", plan.pool),
        ("gatewayGroup", plan.gateway_group.unwrap_or("")),
        ("clientGroupName", plan.client_group.unwrap_or("")),
        ("mountOptions", &plan.options.join(",")),
        (
            "snapshot",
            &snapshot
                .as_ref()
                .map(|s| s.1.to_string())
                .unwrap_or_default(),
        ),
    ]);
    // A folder of that name first: only ours, made with these parameters,
    // is this volume (a home share's folder, say, is not).
    if let Some(f) = xms::find_folder_record(c, &name)? {
        return existing(c, &f, req, &fp, &plan, &doing);
    }
    refuse_tree_volume(c, &req.name)?;
    let pool_id = xms::find_pool(c, plan.pool)?
        .ok_or_else(|| precondition(format!("pool {:?}: XMS has no such pool", plan.pool)))?;
    let (gw_id, vip) = gateway(c, &plan)?;
    let client_group = client_group(c, &plan)?;
    if let Some((sid, snap_id)) = &snapshot {
        let snap = get_snapshot(c, *snap_id)?.ok_or_else(|| {
            fail(
                ErrorCode::NotFound,
                format!("snapshot {sid} does not exist"),
            )
        })?;
        ensure_snapshot_marked(&snap, &doing)?;
        if range.required_bytes.is_none_or(|r| r < snap.size) {
            range.required_bytes = Some(snap.size);
        }
    }
    let size = size_for(&req.name, &range)?;
    let made = match xms::create_folder(
        c,
        &name,
        pool_id,
        size,
        snapshot.as_ref().map(|s| s.1),
        &marked_description(&fp),
    ) {
        Ok(m) => m,
        Err(e) => {
            let room = xms::pool_free(c, pool_id).ok();
            return Err(capacity_race(e, room, size)).context(|| doing.clone());
        }
    };
    let Some(f) = made else {
        // Made meanwhile by a concurrent call: answer as for a retry.
        let f = xms::find_folder_record(c, &name)?.ok_or_else(|| {
            fail(
                ErrorCode::Aborted,
                format!("{doing}: the folder exists but is not listed"),
            )
        })?;
        return existing(c, &f, req, &fp, &plan, &doing);
    };
    log(
        host,
        Level::Info,
        "created folder",
        &[("name", &name), ("bytes", &size.to_string())],
    );
    let folder = match finish_create(c, f.id, gw_id, client_group, &doing) {
        Ok(f) => f,
        Err(e) => {
            c.grace(CLEANUP_GRACE);
            if let Err(ce) = remove(c, f.id, &doing) {
                log(
                    host,
                    Level::Error,
                    "could not remove the folder of a failed create",
                    &[("name", &name), ("error", &ce.message)],
                );
            }
            return Err(e);
        }
    };
    volume(&folder, &vip, &plan, snapshot.map(|s| s.0))
}

fn gateway(c: &mut Client, plan: &Plan) -> Result<(i64, String)> {
    xms::find_gateway_group(c, plan.gateway_group)?.ok_or_else(|| {
        precondition(format!(
            "gatewayGroup {:?}: XMS has no such gateway group",
            plan.gateway_group.unwrap_or("(any)")
        ))
    })
}

fn client_group(c: &mut Client, plan: &Plan) -> Result<Option<i64>> {
    match plan.client_group {
        Some(g) => Ok(Some(xms::find_client_group(c, g)?.ok_or_else(|| {
            precondition(format!(
                "clientGroupName {g:?}: XMS has no such client group"
            ))
        })?)),
        None => Ok(None),
    }
}

fn description_of(f: &FolderRecord) -> &str {
    f.description.as_deref().unwrap_or_default()
}

/// Only a folder xsky-nfs made (its description carries the mark) is
/// changed; any other (a home share's folder, a statically provisioned
/// PV's) is FAILED_PRECONDITION, untouched.
fn ensure_folder_marked(folder: &FolderRecord, doing: &str) -> Result<()> {
    if description_mark(description_of(folder)).is_some() {
        return Ok(());
    }
    Err(precondition(format!(
        "{doing}: folder {} (id {}) was not made by xsky-nfs (no mark in its description); \
         refusing to change it",
        folder.name, folder.id
    )))
}

/// Only a snapshot xsky-nfs made (its description carries the mark) is
/// deleted or restored.
fn ensure_snapshot_marked(snap: &FsSnapshot, doing: &str) -> Result<()> {
    if description_mark(snap.description.as_deref().unwrap_or_default()).is_some() {
        return Ok(());
    }
    Err(precondition(format!(
        "{doing}: snapshot {} (id {}) of folder {} was not made by xsky-nfs (no mark in its \
         description); refusing to use it",
        snap.name, snap.id, snap.fs_folder.name
    )))
}

/// A folder holding quota trees is a home share's, never a folder volume.
fn ensure_no_trees(c: &mut Client, folder: &FolderRecord, doing: &str) -> Result<()> {
    let trees = xms::list_trees(c, &xms::Folder::from(folder.clone()))?;
    if trees.is_empty() {
        return Ok(());
    }
    Err(precondition(format!(
        "{doing}: folder {} holds {} quota tree(s), which xsky-nfs folder volumes never have; \
         refusing to change it",
        folder.name,
        trees.len()
    )))
}

/// A folder of the volume's name exists: the same volume if xsky-nfs made
/// it with the same parameters and its size fits; ALREADY_EXISTS
/// otherwise, with nothing touched.
fn existing(
    c: &mut Client,
    folder: &FolderRecord,
    req: &CreateVolumeRequest,
    fp: &str,
    plan: &Plan,
    doing: &str,
) -> Result<Volume> {
    let name = &folder.name;
    let refuse = |why: String| {
        Err(fail(
            ErrorCode::AlreadyExists,
            format!("volume {:?}: folder {name} exists, {why}", req.name),
        ))
    };
    match description_mark(description_of(folder)) {
        None => return refuse("and xsky-nfs did not make it (no mark in its description)".into()),
        Some(mark) if mark != fp => {
            return refuse(
                "made for a request with other parameters (pool, gateway group, client group, \
                 mount options or source snapshot)"
                    .into(),
            )
        }
        Some(_) => {}
    }
    if !fits(folder.size, &req.capacity) {
        return refuse(format!(
            "with {} bytes, which does not fit the request",
            folder.size
        ));
    }
    let (gw_id, vip) = gateway(c, plan)?;
    let client_group = client_group(c, plan)?;
    let folder = finish_create(c, folder.id, gw_id, client_group, doing)?;
    let snapshot = match &req.content_source {
        Some(ContentSource::Snapshot(sid)) => Some(sid.clone()),
        _ => None,
    };
    volume(&folder, &vip, plan, snapshot)
}

fn volume(
    folder: &FolderRecord,
    vip: &str,
    plan: &Plan,
    snapshot: Option<String>,
) -> Result<Volume> {
    let name = folder.name.clone();
    Ok(Volume {
        volume_id: VolumeId {
            kind: Kind::Folder,
            tree_id: folder.id,
            servers: plan.id_servers.clone(),
        }
        .encode()?,
        capacity_bytes: folder.size,
        volume_context: vec![
            ("server".into(), vip.to_string()),
            ("share".into(), format!("/sdsfs/{name}")),
            ("mountOptions".into(), plan.options.join(",")),
            ("folder".into(), name),
        ],
        content_source: snapshot.map(ContentSource::Snapshot),
    })
}

/// Waits for the folder, shares it (once) and waits for the share.
fn finish_create(
    c: &mut Client,
    folder_id: i64,
    gw: i64,
    client_group: Option<i64>,
    doing: &str,
) -> Result<FolderRecord> {
    let folder = xms::wait_for(
        c,
        doing,
        |c| get_folder(c, folder_id),
        |f| f.is_none() || until_settled(f),
    )?
    .ok_or_else(|| fail(ErrorCode::Aborted, format!("{doing}: the folder vanished")))?;
    let shares = xms::folder_shares(c, folder_id)?;
    let share_id = match shares.iter().find(|s| s.whole_folder()) {
        Some(s) => s.id,
        None => match xms::create_share(c, folder_id, gw, client_group)? {
            Some(s) => s.id,
            None => xms::folder_shares(c, folder_id)?
                .iter()
                .find(|s| s.whole_folder())
                .map(|s| s.id)
                .ok_or_else(|| {
                    fail(
                        ErrorCode::Aborted,
                        format!("{doing}: the share exists but is not listed"),
                    )
                })?,
        },
    };
    xms::wait_for(c, doing, |c| get_share(c, share_id), until_settled)?;
    Ok(folder)
}

/// Removes a folder's shares, then the folder.
fn remove(c: &mut Client, folder_id: i64, doing: &str) -> Result<()> {
    for share in xms::folder_shares(c, folder_id)? {
        xms::delete_share(c, share.id)?;
        xms::wait_for(c, doing, |c| get_share(c, share.id), until_gone)?;
    }
    xms::delete_folder(c, folder_id)?;
    xms::wait_for(c, doing, |c| get_folder(c, folder_id), until_gone).map(drop)
}

/// Deletes a folder volume: only a folder xsky-nfs made (marked), and only
/// once everything the delete needs is checked (no snapshots, no quota
/// trees, no shares but its own whole-folder share), so that a refused
/// delete leaves the folder exactly as it was.
pub fn delete_volume(c: &mut Client, id: &VolumeId, volume_id: &str) -> Result<()> {
    let doing = format!("deleting volume {volume_id}");
    let Some(folder) = get_folder(c, id.tree_id)? else {
        return Ok(());
    };
    let name = folder.name.clone();
    ensure_folder_marked(&folder, &doing)?;
    // XMS keeps a folder with snapshots: say so before touching its share.
    let snapshots = xms::list_snapshots(c, Some(id.tree_id))?;
    if !snapshots.is_empty() {
        return Err(precondition(format!(
            "{doing}: it still has {} snapshot(s); delete them first",
            snapshots.len()
        )));
    }
    let f = xms::Folder::from(folder);
    let trees = xms::list_trees(c, &f)?;
    if !trees.is_empty() {
        return Err(precondition(format!(
            "{doing}: folder {name} holds {} quota tree(s), which xsky-nfs folder volumes never have; \
             refusing to delete it",
            trees.len()
        )));
    }
    let shares = xms::folder_shares(c, id.tree_id)?;
    if shares.len() > 1 {
        return Err(precondition(format!(
            "{doing}: folder {name} has {} NFS shares, xsky-nfs makes one; refusing to delete it",
            shares.len()
        )));
    }
    remove(c, id.tree_id, &doing).context(|| doing.clone())
}

pub fn expand_volume(
    c: &mut Client,
    id: &VolumeId,
    volume_id: &str,
    range: &CapacityRange,
) -> Result<ExpandResult> {
    let doing = format!("expanding volume {volume_id}");
    let target =
        capacity::asked(range).ok_or_else(|| invalid(format!("{doing}: no capacity asked")))?;
    // Whose it is first, before waiting on it.
    let Some(found) = get_folder(c, id.tree_id)? else {
        return Err(fail(
            ErrorCode::NotFound,
            format!("{doing}: folder {} does not exist", id.tree_id),
        ));
    };
    ensure_folder_marked(&found, &doing)?;
    ensure_no_trees(c, &found, &doing)?;
    let folder = xms::wait_for(
        c,
        &doing,
        |c| get_folder(c, id.tree_id),
        |f| f.is_none() || until_settled(f),
    )?
    .ok_or_else(|| {
        fail(
            ErrorCode::NotFound,
            format!("{doing}: folder {} does not exist", id.tree_id),
        )
    })?;
    within_limit(folder.size, range, &doing)?;
    let done = |size| ExpandResult {
        capacity_bytes: size,
        node_expansion_required: false,
    };
    if folder.size >= target {
        return Ok(done(folder.size));
    }
    if let Err(e) = xms::resize_folder(c, id.tree_id, target) {
        // Room for the folder: what it has plus what its pool has free.
        let room = folder
            .pool
            .as_ref()
            .and_then(|pool| xms::pool_free(c, pool.id).ok())
            .map(|free| free + folder.size);
        return Err(capacity_race(e, room, target)).context(|| doing.clone());
    }
    let grown = xms::wait_for(
        c,
        &doing,
        |c| get_folder(c, id.tree_id),
        |f| f.is_none_or(|f| f.state.settled() && f.size >= target),
    )?
    .ok_or_else(|| {
        fail(
            ErrorCode::NotFound,
            format!("{doing}: the folder vanished while resizing"),
        )
    })?;
    Ok(done(grown.size))
}

pub fn get_volume(c: &mut Client, id: &VolumeId) -> Result<Volume> {
    let f = get_folder(c, id.tree_id)?.ok_or_else(|| {
        fail(
            ErrorCode::NotFound,
            format!("folder {} does not exist", id.tree_id),
        )
    })?;
    Ok(Volume {
        volume_id: id.encode()?,
        capacity_bytes: f.size,
        volume_context: vec![("folder".into(), f.name)],
        content_source: None,
    })
}

fn snapshot(v: &FsSnapshot, servers: &[String]) -> Result<Snapshot> {
    Ok(Snapshot {
        snapshot_id: VolumeId {
            kind: Kind::Snapshot,
            tree_id: v.id,
            servers: servers.to_vec(),
        }
        .encode()?,
        source_volume_id: VolumeId {
            kind: Kind::Folder,
            tree_id: v.fs_folder.id,
            servers: servers.to_vec(),
        }
        .encode()?,
        size_bytes: v.size,
        // Optional in the API: unknown is 0, which CSI reads as unset.
        creation_time: v
            .create
            .as_deref()
            .and_then(xms::epoch_seconds)
            .unwrap_or(0),
        ready_to_use: v.state.settled(),
        group_snapshot_id: None,
    })
}

pub fn create_snapshot(
    host: &dyn Host,
    c: &mut Client,
    source: &VolumeId,
    req: &CreateSnapshotRequest,
) -> Result<Snapshot> {
    if source.kind != Kind::Folder {
        return Err(invalid(format!(
            "{}: snapshots are of folder mode volumes (quota trees have none)",
            req.source_volume_id
        )));
    }
    let name = tree_name(&req.name);
    let doing = format!(
        "creating snapshot {:?} of {}",
        req.name, req.source_volume_id
    );
    let Some(folder) = get_folder(c, source.tree_id)? else {
        return Err(fail(
            ErrorCode::NotFound,
            format!("{doing}: the volume does not exist"),
        ));
    };
    ensure_folder_marked(&folder, &doing)?;
    let mark = marked_description(&fingerprint(&[("snapshot-of", &folder.id.to_string())]));
    let existing = xms::list_snapshots(c, None)?
        .into_iter()
        .find(|s| s.name == name);
    // A snapshot of this name that xsky-nfs did not make is not this one.
    let ours = |s: FsSnapshot| match ensure_snapshot_marked(&s, &doing) {
        Ok(()) => Ok(s),
        Err(e) => Err(fail(
            ErrorCode::AlreadyExists,
            format!("{} (a snapshot of that name exists)", e.message),
        )),
    };
    let snap = match existing {
        Some(s) if s.fs_folder.id == source.tree_id => ours(s)?,
        Some(_) => {
            return Err(fail(
                ErrorCode::AlreadyExists,
                format!("{doing}: a snapshot of that name exists of another volume"),
            ))
        }
        None => {
            let made =
                xms::create_snapshot(c, source.tree_id, &name, &mark).context(|| doing.clone())?;
            log(host, Level::Info, "creating snapshot", &[("name", &name)]);
            match made {
                Some(s) => s,
                None => ours(
                    xms::list_snapshots(c, Some(source.tree_id))?
                        .into_iter()
                        .find(|s| s.name == name)
                        .ok_or_else(|| {
                            fail(
                                ErrorCode::Aborted,
                                format!("{doing}: the snapshot exists but is not listed"),
                            )
                        })?,
                )?,
            }
        }
    };
    let id = snap.id;
    let snap = match xms::wait_for(c, &doing, |c| get_snapshot(c, id), until_settled) {
        Ok(s) => s.ok_or_else(|| {
            fail(
                ErrorCode::Aborted,
                format!("{doing}: the snapshot vanished"),
            )
        })?,
        Err(e) => {
            c.grace(CLEANUP_GRACE);
            let _ = xms::delete_snapshot(c, id);
            return Err(e);
        }
    };
    snapshot(&snap, &source.servers)
}

pub fn delete_snapshot(c: &mut Client, id: &VolumeId, snapshot_id: &str) -> Result<()> {
    if id.kind != Kind::Snapshot {
        return Err(invalid(format!(
            "{snapshot_id} is not an xsky-nfs snapshot id"
        )));
    }
    let doing = format!("deleting snapshot {snapshot_id}");
    let Some(snap) = get_snapshot(c, id.tree_id)? else {
        return Ok(());
    };
    ensure_snapshot_marked(&snap, &doing)?;
    xms::delete_snapshot(c, id.tree_id).context(|| doing.clone())?;
    xms::wait_for(c, &doing, |c| get_snapshot(c, id.tree_id), until_gone).map(drop)
}

pub fn list_snapshots(
    c: &mut Client,
    servers: &[String],
    filter: &SnapshotFilter,
) -> Result<SnapshotPage> {
    let all: Vec<FsSnapshot> = if let Some(sid) = &filter.snapshot_id {
        match VolumeId::parse(sid) {
            Ok(id) if id.kind == Kind::Snapshot => {
                get_snapshot(c, id.tree_id)?.into_iter().collect()
            }
            _ => vec![],
        }
    } else if let Some(vid) = &filter.source_volume_id {
        match VolumeId::parse(vid) {
            Ok(id) if id.kind == Kind::Folder => xms::list_snapshots(c, Some(id.tree_id))?,
            _ => vec![],
        }
    } else {
        xms::list_snapshots(c, None)?
    };
    let start: usize = if filter.starting_token.is_empty() {
        0
    } else {
        filter.starting_token.parse().map_err(|_| {
            fail(
                ErrorCode::Aborted,
                format!("starting token {:?} is not ours", filter.starting_token),
            )
        })?
    };
    let max = if filter.max_entries == 0 {
        usize::MAX
    } else {
        filter.max_entries as usize
    };
    let page: Vec<Snapshot> = all
        .iter()
        .skip(start)
        .take(max)
        .map(|s| snapshot(s, servers))
        .collect::<Result<_>>()?;
    let next = start + page.len();
    Ok(SnapshotPage {
        next_token: if next < all.len() {
            next.to_string()
        } else {
            String::new()
        },
        snapshots: page,
    })
}
