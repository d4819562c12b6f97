//! Controller export. Quota-tree mode (the default): a volume is a quota
//! tree in the folder behind one of the StorageClass's home shares. Folder
//! mode and snapshots live in `folder`.

use crate::client::{Client, CLEANUP_GRACE};
use crate::error::{fail, invalid, precondition, Context, ErrorCode, Result};
use crate::exports::wasmcsi::plugin::controller::{
    CreateSnapshotRequest, CreateVolumeRequest, ExpandRequest, ExpandResult, Snapshot,
    SnapshotFilter, SnapshotPage, Volume,
};
use crate::folder;
use crate::host::{log, Host, Wasm};
use crate::params::{self, CredentialSource, HomeShare};
use crate::rules::{capacity_race, clone_unsupported, size_for};
use crate::volume::{
    description_mark, fingerprint, marked_tree_base, marked_tree_name, tree_is_marked, tree_mark,
    tree_name, Kind, VolumeId,
};
use crate::wasmcsi::plugin::log::Level;
use crate::wasmcsi::plugin::types::{AccessType, CapacityRange, ContentSource, KeyValues, Secrets};
use crate::xms::{self, Added, Folder, Tree};
use crate::XskyNfs;
use wasmcsi_plugin_sdk::capacity::{self, fits};

/// No list-volumes; and XMS snapshots one folder at a time, so no
/// point-in-time cut across folders and no group snapshots: those answer
/// the SDK's UNIMPLEMENTED (the feature flags are off).
impl wasmcsi_plugin_sdk::Controller for XskyNfs {
    fn create_volume(req: CreateVolumeRequest) -> Result<Volume> {
        create_volume(&Wasm, req)
    }
    fn delete_volume(volume_id: String, secrets: Secrets) -> Result<()> {
        delete_volume(&Wasm, &volume_id, &secrets)
    }
    fn expand_volume(req: ExpandRequest) -> Result<ExpandResult> {
        expand_volume(&Wasm, req)
    }
    fn get_volume(volume_id: String, secrets: Secrets) -> Result<Volume> {
        get_volume(&Wasm, &volume_id, &secrets)
    }
    fn get_capacity(parameters: KeyValues) -> Result<u64> {
        get_capacity(&Wasm, &parameters)
    }
    fn create_snapshot(req: CreateSnapshotRequest) -> Result<Snapshot> {
        let source = VolumeId::parse(&req.source_volume_id)?;
        let host = &Wasm;
        let mut c = client(host, &source.servers, &req.secrets, &req.parameters)?;
        folder::create_snapshot(host, &mut c, &source, &req)
    }
    fn delete_snapshot(snapshot_id: String, secrets: Secrets) -> Result<()> {
        let id = VolumeId::parse(&snapshot_id)?;
        let mut c = client(&Wasm, &id.servers, &secrets, &[])?;
        folder::delete_snapshot(&mut c, &id, &snapshot_id)
    }
    fn list_snapshots(filter: SnapshotFilter) -> Result<SnapshotPage> {
        // The servers of the ids asked about, else the settings'.
        let servers = filter
            .snapshot_id
            .iter()
            .chain(filter.source_volume_id.iter())
            .find_map(|id| VolumeId::parse(id).ok())
            .map(|id| id.servers)
            .unwrap_or_default();
        let mut c = client(&Wasm, &servers, &filter.secrets, &[])?;
        folder::list_snapshots(&mut c, &servers, &filter)
    }
}

/// The XMS client of a call: servers, credentials and timing from the
/// parameters (create), the volume id (later calls) or the settings.
pub fn client<'h>(
    host: &'h dyn Host,
    servers: &[String],
    secrets: &[(String, String)],
    parameters: &[(String, String)],
) -> Result<Client<'h>> {
    let settings = host.settings();
    let servers = if servers.is_empty() {
        let list = params::get(&settings, "xmsServers").ok_or_else(|| {
            precondition(
                "no XMS servers: set the parameter xmsServers or the plugin setting xmsServers",
            )
        })?;
        params::servers(list)?
    } else {
        servers.to_vec()
    };
    let (credentials, source) = params::credentials(secrets, parameters, &settings)?;
    if source == CredentialSource::DeprecatedParameters {
        log(
            host,
            Level::Warn,
            "the StorageClass parameters user/password are deprecated: pass them as CSI secrets (keys user and password)",
            &[],
        );
    }
    Ok(Client::new(
        host,
        servers,
        credentials,
        params::Timing::from_settings(&settings)?,
    ))
}

/// One home share, resolved on the array.
struct Home {
    share: HomeShare,
    folder: Folder,
    vip: String,
    trees: Vec<Tree>,
}

fn resolve_home(c: &mut Client, share: &HomeShare) -> Result<Home> {
    let folder = xms::find_folder(c, &share.folder)?.ok_or_else(|| {
        precondition(format!(
            "home share {}:/sdsfs/{}/: XMS has no folder {}",
            share.host, share.folder, share.folder
        ))
    })?;
    let vip = xms::home_share_vip(c, &folder)?.ok_or_else(|| {
        precondition(format!(
            "folder {} is not exported by an NFS share (no home share)",
            folder.name
        ))
    })?;
    let trees = xms::list_trees(c, &folder)?;
    Ok(Home {
        share: share.clone(),
        folder,
        vip,
        trees,
    })
}

fn volume(
    id: &VolumeId,
    tree: &Tree,
    folder: &str,
    vip: &str,
    options: &[String],
) -> Result<Volume> {
    Ok(Volume {
        volume_id: id.encode()?,
        capacity_bytes: tree.size,
        volume_context: vec![
            ("server".into(), vip.to_string()),
            ("share".into(), format!("/sdsfs/{folder}/{}", tree.name)),
            ("mountOptions".into(), options.join(",")),
            ("folder".into(), folder.to_string()),
            ("quotaTree".into(), tree.name.clone()),
        ],
        content_source: None,
    })
}

fn settled(c: &mut Client, tree: &Tree, doing: &str) -> Result<Tree> {
    if tree.state.settled() {
        return Ok(tree.clone());
    }
    xms::wait_tree(c, tree.id, doing, |t| t.is_none_or(|t| t.state.settled()))?.ok_or_else(|| {
        fail(
            ErrorCode::Aborted,
            format!("{doing}: quota tree {} vanished", tree.name),
        )
    })
}

pub fn create_volume(host: &dyn Host, req: CreateVolumeRequest) -> Result<Volume> {
    let settings = host.settings();
    let p = &req.parameters;
    params::check_known(p)?;
    let pick = |k: &str| params::get(p, k).or_else(|| params::get(&settings, k));
    let folder_mode = match pick("mode").unwrap_or("quota-tree") {
        "quota-tree" => false,
        "folder" => true,
        other => {
            return Err(invalid(format!(
                "mode {other:?} must be quota-tree or folder"
            )))
        }
    };
    if req
        .capabilities
        .iter()
        .any(|c| matches!(c.access_type, AccessType::Block))
    {
        return Err(invalid(
            "xsky-nfs volumes are NFS file systems: block access is not supported",
        ));
    }
    let options = params::mount_options(p, &settings)?;
    if let Some(ContentSource::Volume(_)) = &req.content_source {
        return Err(clone_unsupported());
    }
    // Servers named by the StorageClass travel in the volume id unless
    // they are the settings' own.
    let id_servers = match params::get(p, "xmsServers") {
        Some(list) => {
            let named = params::servers(list)?;
            let default = params::get(&settings, "xmsServers")
                .map(params::servers)
                .transpose()
                .ok()
                .flatten();
            if default.as_ref() == Some(&named) {
                vec![]
            } else {
                named
            }
        }
        None => vec![],
    };
    let mut c = client(host, &id_servers, &req.secrets, p)?;
    if folder_mode {
        let pool = pick("pool").ok_or_else(|| invalid("mode folder needs the parameter pool"))?;
        let plan = folder::Plan {
            pool,
            gateway_group: pick("gatewayGroup"),
            client_group: pick("clientGroupName"),
            options,
            id_servers,
        };
        return folder::create_volume(host, &mut c, &req, plan);
    }
    if req.content_source.is_some() {
        return Err(invalid(
            "mode quota-tree cannot restore snapshots (quota trees have none): \
             use a StorageClass with mode folder",
        ));
    }
    let shares = params::shares(pick("shares").unwrap_or(""))?;
    let size = size_for(&req.name, &req.capacity)?;
    // What else the request asked for is marked in the tree's name: the
    // same name with other parameters is another volume (ALREADY_EXISTS).
    let mut share_list: Vec<String> = shares
        .iter()
        .map(|s| format!("{}:/sdsfs/{}/", s.host, s.folder))
        .collect();
    share_list.sort();
    let fp = fingerprint(&[
        ("mode", "quota-tree"),
        ("shares", &share_list.join(",")),
        ("mountOptions", &options.join(",")),
        ("clientGroupName", pick("clientGroupName").unwrap_or("")),
    ]);
    let name = marked_tree_name(&req.name, &fp);
    let doing = format!("creating volume {:?} (quota tree {name})", req.name);

    if let Some(group) = pick("clientGroupName") {
        if !xms::client_group_exists(&mut c, group)? {
            return Err(precondition(format!(
                "clientGroupName {group:?}: XMS has no such client group"
            )));
        }
    }
    let mut homes = vec![];
    for share in &shares {
        homes.push(resolve_home(&mut c, share).context(|| doing.clone())?);
    }
    // Only trees xsky-nfs made for this name count (marked names).
    let found = homes.iter().find_map(|h| {
        h.trees
            .iter()
            .find(|t| tree_mark(&t.name, &req.name).is_some())
            .map(|t| (h, t.clone()))
    });
    if let Some((home, tree)) = found {
        return existing(
            &mut c,
            home,
            &tree,
            &req,
            &fp,
            &id_servers,
            &options,
            &doing,
        );
    }
    refuse_folder_volume(&mut c, &req.name)?;
    let best = homes
        .iter()
        .max_by_key(|h| xms::folder_free(&h.folder, &h.trees))
        .expect("shares lists at least one");
    let free = xms::folder_free(&best.folder, &best.trees);
    if free < size {
        return Err(fail(
            ErrorCode::ResourceExhausted,
            format!(
                "{doing}: {size} bytes asked, the most any home share's folder has free is {free}"
            ),
        ));
    }
    log(
        host,
        Level::Info,
        "creating quota tree",
        &[
            ("name", &name),
            ("folder", &best.folder.name),
            ("bytes", &size.to_string()),
        ],
    );
    let added = match xms::add_tree(&mut c, &best.folder, &name, size) {
        Ok(a) => a,
        Err(e) => {
            let room = xms::list_trees(&mut c, &best.folder)
                .ok()
                .map(|trees| xms::folder_free(&best.folder, &trees));
            return Err(capacity_race(e, room, size)).context(|| doing.clone());
        }
    };
    if let Added::Exists = added {
        // Made meanwhile by a concurrent call: answer as for a retry.
        let home = resolve_home(&mut c, &best.share)?;
        let tree = home
            .trees
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| {
                fail(
                    ErrorCode::Aborted,
                    format!("{doing}: XMS says the quota tree exists but does not list it"),
                )
            })?;
        return existing(
            &mut c,
            &home,
            &tree,
            &req,
            &fp,
            &id_servers,
            &options,
            &doing,
        );
    }
    let tree = xms::list_trees(&mut c, &best.folder)?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            fail(
                ErrorCode::Internal,
                format!("{doing}: XMS accepted the quota tree but does not list it"),
            )
        })?;
    match settled(&mut c, &tree, &doing) {
        Ok(tree) => volume(
            &VolumeId {
                kind: Kind::Tree,
                tree_id: tree.id,
                servers: id_servers,
            },
            &tree,
            &best.folder.name,
            &best.vip,
            &options,
        ),
        Err(e) => {
            // Leave nothing behind: the CO will retry from scratch.
            c.grace(CLEANUP_GRACE);
            match xms::remove_tree(&mut c, best.folder.id, tree.id) {
                Ok(()) => log(
                    host,
                    Level::Warn,
                    "removed the quota tree of a failed create",
                    &[("name", &name)],
                ),
                Err(ce) => log(
                    host,
                    Level::Error,
                    "could not remove the quota tree of a failed create",
                    &[("name", &name), ("error", &ce.message)],
                ),
            }
            Err(e)
        }
    }
}

/// A folder-mode volume of this name exists (a folder of its name with
/// xsky-nfs's mark): the name is taken, ALREADY_EXISTS.
fn refuse_folder_volume(c: &mut Client, csi_name: &str) -> Result<()> {
    let folder = tree_name(csi_name);
    match xms::find_folder_record(c, &folder)? {
        Some(f) if description_mark(f.description.as_deref().unwrap_or_default()).is_some() => {
            Err(fail(
                ErrorCode::AlreadyExists,
                format!(
                    "volume {csi_name:?} exists in mode folder (folder {folder}): \
                     the same name cannot be a quota-tree volume too"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// A quota-tree volume of this name exists (a tree xsky-nfs marked for
/// it, in any folder): the name is taken, ALREADY_EXISTS.
pub fn refuse_tree_volume(c: &mut Client, csi_name: &str) -> Result<()> {
    let taken = xms::find_trees(c, &marked_tree_base(csi_name))?
        .into_iter()
        .find(|t| tree_mark(&t.name, csi_name).is_some());
    match taken {
        Some(t) => Err(fail(
            ErrorCode::AlreadyExists,
            format!(
                "volume {csi_name:?} exists in mode quota-tree (quota tree {} in folder {}): \
                 the same name cannot be a folder volume too",
                t.name, t.fs_folder.name
            ),
        )),
        None => Ok(()),
    }
}

/// Only a quota tree whose name carries xsky-nfs's mark is deleted or
/// resized: any other (a statically provisioned PV over an existing
/// tree, an id from another cluster) is FAILED_PRECONDITION, untouched.
fn ensure_marked(tree: &Tree, doing: &str) -> Result<()> {
    if tree_is_marked(&tree.name) {
        return Ok(());
    }
    Err(precondition(format!(
        "{doing}: quota tree {} (id {}) in folder {} was not made by xsky-nfs (its name \
         carries no mark _w<fingerprint>); refusing to change it",
        tree.name, tree.id, tree.fs_folder.name
    )))
}

/// A tree xsky-nfs made for the volume's name exists: the same volume if
/// it was made with the same parameters and its size fits the request,
/// ALREADY_EXISTS otherwise.
#[allow(clippy::too_many_arguments)]
fn existing(
    c: &mut Client,
    home: &Home,
    tree: &Tree,
    req: &CreateVolumeRequest,
    fp: &str,
    id_servers: &[String],
    options: &[String],
    doing: &str,
) -> Result<Volume> {
    if tree_mark(&tree.name, &req.name) != Some(fp) {
        return Err(fail(
            ErrorCode::AlreadyExists,
            format!(
                "volume {:?} exists (quota tree {} in folder {}) with other parameters \
                 (shares, mount options or client group)",
                req.name, tree.name, home.folder.name
            ),
        ));
    }
    if !fits(tree.size, &req.capacity) {
        return Err(fail(
            ErrorCode::AlreadyExists,
            format!(
                "volume {:?} exists with {} bytes (quota tree {}), which does not fit the request",
                req.name, tree.size, tree.name
            ),
        ));
    }
    let tree = settled(c, tree, doing)?;
    volume(
        &VolumeId {
            kind: Kind::Tree,
            tree_id: tree.id,
            servers: id_servers.to_vec(),
        },
        &tree,
        &home.folder.name,
        &home.vip,
        options,
    )
}

pub fn delete_volume(host: &dyn Host, volume_id: &str, secrets: &Secrets) -> Result<()> {
    let id = VolumeId::parse(volume_id)?;
    let mut c = client(host, &id.servers, secrets, &[])?;
    match id.kind {
        Kind::Tree => {}
        Kind::Folder => return folder::delete_volume(&mut c, &id, volume_id),
        Kind::Snapshot => return Err(invalid(format!("{volume_id} is a snapshot id"))),
    }
    let doing = format!("deleting volume {volume_id}");
    let Some(tree) = xms::get_tree(&mut c, id.tree_id)? else {
        return Ok(());
    };
    ensure_marked(&tree, &doing)?;
    if tree.state.status != "deleting" {
        let tree = settled(&mut c, &tree, &doing)?;
        xms::remove_tree(&mut c, tree.fs_folder.id, tree.id).context(|| doing.clone())?;
    }
    xms::wait_tree(&mut c, id.tree_id, &doing, |t| t.is_none())?;
    log(
        host,
        Level::Info,
        "deleted quota tree",
        &[("name", &tree.name)],
    );
    Ok(())
}

pub fn expand_volume(host: &dyn Host, req: ExpandRequest) -> Result<ExpandResult> {
    let id = VolumeId::parse(&req.volume_id)?;
    let mut c = client(host, &id.servers, &req.secrets, &[])?;
    match id.kind {
        Kind::Tree => {}
        Kind::Folder => return folder::expand_volume(&mut c, &id, &req.volume_id, &req.capacity),
        Kind::Snapshot => return Err(invalid(format!("{} is a snapshot id", req.volume_id))),
    }
    let doing = format!("expanding volume {}", req.volume_id);
    let tree = xms::get_tree(&mut c, id.tree_id)?.ok_or_else(|| {
        fail(
            ErrorCode::NotFound,
            format!("{doing}: quota tree {} does not exist", id.tree_id),
        )
    })?;
    ensure_marked(&tree, &doing)?;
    let tree = settled(&mut c, &tree, &doing)?;
    let target = capacity::asked(&req.capacity)
        .ok_or_else(|| invalid(format!("{doing}: no capacity asked")))?;
    within_limit(tree.size, &req.capacity, &doing)?;
    let done = |size: u64| ExpandResult {
        capacity_bytes: size,
        node_expansion_required: false,
    };
    if tree.size >= target {
        return Ok(done(tree.size));
    }
    let folder = xms::get_folder(&mut c, tree.fs_folder.id)?.ok_or_else(|| {
        fail(
            ErrorCode::NotFound,
            format!("{doing}: folder {} does not exist", tree.fs_folder.id),
        )
    })?;
    let others: Vec<Tree> = xms::list_trees(&mut c, &folder)?
        .into_iter()
        .filter(|t| t.id != tree.id)
        .collect();
    let room = xms::folder_free(&folder, &others);
    if target > room {
        return Err(fail(
            ErrorCode::ResourceExhausted,
            format!(
                "{doing}: {target} bytes asked, folder {} has room for {room}",
                folder.name
            ),
        ));
    }
    log(
        host,
        Level::Info,
        "resizing quota tree",
        &[
            ("name", &tree.name),
            ("from", &tree.size.to_string()),
            ("to", &target.to_string()),
        ],
    );
    if let Err(e) = xms::resize_tree(&mut c, tree.id, target) {
        let room = xms::list_trees(&mut c, &folder).ok().map(|trees| {
            let others: Vec<Tree> = trees.into_iter().filter(|t| t.id != tree.id).collect();
            xms::folder_free(&folder, &others)
        });
        return Err(capacity_race(e, room, target)).context(|| doing.clone());
    }
    let grown = xms::wait_tree(&mut c, tree.id, &doing, |t| {
        t.is_none_or(|t| t.state.settled() && t.size >= target)
    })?
    .ok_or_else(|| {
        fail(
            ErrorCode::NotFound,
            format!("{doing}: quota tree vanished while resizing"),
        )
    })?;
    Ok(done(grown.size))
}

/// A volume already larger than the expansion's limit cannot meet it:
/// OUT_OF_RANGE (volumes never shrink).
pub fn within_limit(size: u64, range: &CapacityRange, doing: &str) -> Result<()> {
    match range.limit_bytes {
        Some(limit) if limit > 0 && size > limit => Err(fail(
            ErrorCode::OutOfRange,
            format!("{doing}: the volume has {size} bytes, more than the limit of {limit} bytes"),
        )),
        _ => Ok(()),
    }
}

pub fn get_volume(host: &dyn Host, volume_id: &str, secrets: &Secrets) -> Result<Volume> {
    let id = VolumeId::parse(volume_id)?;
    let mut c = client(host, &id.servers, secrets, &[])?;
    match id.kind {
        Kind::Tree => {}
        Kind::Folder => return folder::get_volume(&mut c, &id),
        Kind::Snapshot => return Err(invalid(format!("{volume_id} is a snapshot id"))),
    }
    let tree = xms::get_tree(&mut c, id.tree_id)?.ok_or_else(|| {
        fail(
            ErrorCode::NotFound,
            format!("volume {volume_id} does not exist"),
        )
    })?;
    Ok(Volume {
        volume_id: id.encode()?,
        capacity_bytes: tree.size,
        volume_context: vec![
            ("folder".into(), tree.fs_folder.name.clone()),
            ("quotaTree".into(), tree.name.clone()),
        ],
        content_source: None,
    })
}

/// The most bytes one new volume can get with these parameters; with none
/// (csi-sanity, or a CO that sends no topology or class), with the plugin
/// settings' defaults. GetCapacity carries no secrets: the credentials
/// are the settings' `user`/`password` (in deploy/, from a Secret).
/// Quota-tree mode: the largest free room among the home shares' folders;
/// folder mode: the pool's free bytes.
pub fn get_capacity(host: &dyn Host, parameters: &KeyValues) -> Result<u64> {
    params::check_known(parameters)?;
    let settings = host.settings();
    let pick = |k: &str| params::get(parameters, k).or_else(|| params::get(&settings, k));
    let servers = match params::get(parameters, "xmsServers") {
        Some(list) => params::servers(list)?,
        None => vec![],
    };
    match pick("mode").unwrap_or("quota-tree") {
        "quota-tree" => {
            let shares = params::shares(pick("shares").ok_or_else(|| {
                precondition(
                    "GetCapacity in mode quota-tree needs home shares: \
                     the parameter shares, or the plugin setting shares for requests without parameters",
                )
            })?)?;
            let mut c = client(host, &servers, &[], parameters)?;
            let mut best = 0;
            for share in &shares {
                let home = resolve_home(&mut c, share)?;
                best = best.max(xms::folder_free(&home.folder, &home.trees));
            }
            Ok(best)
        }
        "folder" => {
            let pool = pick("pool").ok_or_else(|| {
                precondition(
                    "GetCapacity in mode folder needs a pool: the parameter pool, \
                     or the plugin setting pool for requests without parameters",
                )
            })?;
            let mut c = client(host, &servers, &[], parameters)?;
            let id = xms::find_pool(&mut c, pool)?
                .ok_or_else(|| precondition(format!("pool {pool:?}: XMS has no such pool")))?;
            xms::pool_free(&mut c, id)
        }
        other => Err(invalid(format!(
            "mode {other:?} must be quota-tree or folder"
        ))),
    }
}
