//! The XMS operations the plugin uses, typed; bodies and paths as
//! `shared/xms/swagger.yaml` describes them.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::client::{status_error, Client};
use crate::error::{fail, ErrorCode, Result};

use crate::model::decode;
use crate::model::{decode_list, GatewayGroup, Named, PoolStat};
pub use crate::model::{FolderRecord, FsSnapshot, Share, Stateful, Tree};

/// The plugin's view of a folder that holds quota trees.
#[derive(Debug, Clone)]
pub struct Folder {
    pub id: i64,
    pub name: String,
    pub size: u64,
}

impl From<FolderRecord> for Folder {
    fn from(f: FolderRecord) -> Folder {
        Folder {
            id: f.id,
            name: f.name,
            size: f.size,
        }
    }
}

/// What a query value may hold unescaped: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_value(v: &str) -> String {
    utf8_percent_encode(v, QUERY_VALUE).to_string()
}

fn expect(
    c: &mut Client,
    method: &str,
    path: &str,
    body: Option<&Value>,
    ok: u16,
    doing: &str,
) -> Result<Value> {
    let a = c.call(method, path, body)?;
    if a.status == ok {
        Ok(a.body)
    } else {
        Err(status_error(a.status, &a, doing))
    }
}

/// A GET of a list operation: the records under `key`, typed.
fn get_list<T: DeserializeOwned>(
    c: &mut Client,
    path: &str,
    key: &str,
    doing: &str,
) -> Result<Vec<T>> {
    let mut body = expect(c, "GET", path, None, 200, doing)?;
    decode_list(&mut body, key, doing)
}

/// GET of one object by path; `None` on 404. Returns the object under
/// `wrapper`, typed.
pub fn get_object<T: DeserializeOwned>(
    c: &mut Client,
    path: &str,
    wrapper: &str,
) -> Result<Option<T>> {
    let doing = format!("reading {path}");
    let mut a = c.call("GET", path, None)?;
    match a.status {
        200 => decode(&mut a.body, wrapper, &doing).map(Some),
        404 => Ok(None),
        s => Err(status_error(s, &a, &doing)),
    }
}

/// ListFolders, filtered to the exact name.
pub fn find_folder(c: &mut Client, name: &str) -> Result<Option<Folder>> {
    Ok(find_folder_record(c, name)?.map(Folder::from))
}

/// The VIP of the gateway group exporting the whole folder (its home
/// share), from ListFSNFSShares.
pub fn home_share_vip(c: &mut Client, folder: &Folder) -> Result<Option<String>> {
    Ok(folder_shares(c, folder.id)?
        .into_iter()
        .filter(Share::whole_folder)
        .find_map(|s| s.fs_gateway_group.and_then(|g| g.vip)))
}

/// ListFSClientGroups: whether a client group of that name exists.
pub fn client_group_exists(c: &mut Client, name: &str) -> Result<bool> {
    Ok(find_client_group(c, name)?.is_some())
}

/// ListQuotaTrees of one folder.
pub fn list_trees(c: &mut Client, folder: &Folder) -> Result<Vec<Tree>> {
    let path = format!("/v1/fs-quota-trees/?fs_folder_id={}", folder.id);
    get_list(
        c,
        &path,
        "fs_quota_trees",
        &format!("listing the quota trees of folder {}", folder.name),
    )
}

/// ListQuotaTrees of every folder whose names match `q` (XMS's fuzzy
/// match: the caller filters exactly).
pub fn find_trees(c: &mut Client, q: &str) -> Result<Vec<Tree>> {
    let path = format!("/v1/fs-quota-trees/?q={}", query_value(q));
    get_list(
        c,
        &path,
        "fs_quota_trees",
        &format!("looking up quota trees named like {q}"),
    )
}

/// GetQuotaTree; `None` when it does not exist.
pub fn get_tree(c: &mut Client, id: i64) -> Result<Option<Tree>> {
    get_object(c, &format!("/v1/fs-quota-trees/{id}"), "fs_quota_tree")
}

pub enum Added {
    Accepted,
    /// 409: a tree of that name exists already.
    Exists,
}

/// AddFSQuotaTrees: one tree, 202 Accepted.
pub fn add_tree(c: &mut Client, folder: &Folder, name: &str, size: u64) -> Result<Added> {
    let body = json!({ "fs_folder": { "fs_quota_trees": [ { "name": name, "size": size } ] } });
    let path = format!("/v1/fs-folders/{}/fs-quota-trees", folder.id);
    let a = c.call("PUT", &path, Some(&body))?;
    match a.status {
        200 | 202 => Ok(Added::Accepted),
        409 => Ok(Added::Exists),
        s => Err(status_error(
            s,
            &a,
            &format!("creating quota tree {name} in folder {}", folder.name),
        )),
    }
}

/// UpdateQuotaTree with a new size, 202 Accepted.
pub fn resize_tree(c: &mut Client, id: i64, size: u64) -> Result<()> {
    let body = json!({ "fs_quota_tree": { "size": size } });
    expect(
        c,
        "PATCH",
        &format!("/v1/fs-quota-trees/{id}"),
        Some(&body),
        202,
        &format!("resizing quota tree {id} to {size} bytes"),
    )
    .map(drop)
}

/// RemoveFSQuotaTrees: one tree; gone already is success.
pub fn remove_tree(c: &mut Client, folder_id: i64, id: i64) -> Result<()> {
    let body = json!({ "fs_folder": { "fs_quota_tree_ids": [id] } });
    let a = c.call(
        "DELETE",
        &format!("/v1/fs-folders/{folder_id}/fs-quota-trees"),
        Some(&body),
    )?;
    match a.status {
        200 | 202 | 204 | 404 => Ok(()),
        s => Err(status_error(s, &a, &format!("deleting quota tree {id}"))),
    }
}

/// Polls a tree until `done` says so, within the call's budget.
pub fn wait_tree(
    c: &mut Client,
    id: i64,
    doing: &str,
    done: impl Fn(Option<&Tree>) -> bool,
) -> Result<Option<Tree>> {
    wait_for(c, doing, |c| get_tree(c, id), done)
}

/// Bytes of a folder not yet promised to its quota trees.
pub fn folder_free(folder: &Folder, trees: &[Tree]) -> u64 {
    let used: u64 = trees.iter().map(|t| t.size).sum();
    folder.size.saturating_sub(used)
}

/// GetFolder; `None` when it does not exist.
pub fn get_folder(c: &mut Client, id: i64) -> Result<Option<Folder>> {
    Ok(get_folder_record(c, id)?.map(Folder::from))
}

/// GetFolder, the whole record; `None` when it does not exist.
pub fn get_folder_record(c: &mut Client, id: i64) -> Result<Option<FolderRecord>> {
    get_object(c, &format!("/v1/fs-folders/{id}"), "fs_folder")
}

/// Polls `get` until `done`, within the call's budget; a failed status
/// ends the wait.
pub fn wait_for<T: Stateful>(
    c: &mut Client,
    doing: &str,
    mut get: impl FnMut(&mut Client) -> Result<Option<T>>,
    done: impl Fn(Option<&T>) -> bool,
) -> Result<Option<T>> {
    loop {
        let v = get(c)?;
        if let Some(v) = &v {
            if v.state().failed() {
                return Err(fail(
                    ErrorCode::Internal,
                    format!("{doing}: XMS reports status {}", v.state().status),
                ));
            }
        }
        if done(v.as_ref()) {
            return Ok(v);
        }
        let interval = c.timing.poll_interval;
        c.pause(interval, doing)?;
    }
}

pub fn until_settled<T: Stateful>(v: Option<&T>) -> bool {
    v.is_some_and(|v| v.state().settled())
}

pub fn until_gone<T>(v: Option<&T>) -> bool {
    v.is_none()
}

/// ListPools: the id of the pool of that name.
pub fn find_pool(c: &mut Client, name: &str) -> Result<Option<i64>> {
    let path = format!("/v1/pools/?q={}", query_value(name));
    let pools: Vec<Named> = get_list(c, &path, "pools", &format!("looking up pool {name}"))?;
    Ok(pools.into_iter().find(|p| p.name == name).map(|p| p.id))
}

/// ListFSGatewayGroups: id and VIP of the named group (or the first).
pub fn find_gateway_group(c: &mut Client, name: Option<&str>) -> Result<Option<(i64, String)>> {
    let path = match name {
        Some(n) => format!("/v1/fs-gateway-groups/?q={}", query_value(n)),
        None => "/v1/fs-gateway-groups/".to_string(),
    };
    let groups: Vec<GatewayGroup> = get_list(
        c,
        &path,
        "fs_gateway_groups",
        "looking up the gateway group",
    )?;
    Ok(groups
        .into_iter()
        .find(|g| name.is_none_or(|n| g.name == n))
        .map(|g| (g.id, g.vip)))
}

/// GetPoolSamples: the pool's free bytes in its latest sample.
pub fn pool_free(c: &mut Client, pool_id: i64) -> Result<u64> {
    let samples: Vec<PoolStat> = get_list(
        c,
        &format!("/v1/pools/{pool_id}/samples"),
        "pool_samples",
        &format!("reading the samples of pool {pool_id}"),
    )?;
    let latest = samples.last().ok_or_else(|| {
        fail(
            ErrorCode::Unavailable,
            format!("pool {pool_id} has no samples yet"),
        )
    })?;
    Ok(latest.total_kbyte.saturating_sub(latest.used_kbyte) * 1024)
}

/// ListFSClientGroups: the id of the group of that name.
pub fn find_client_group(c: &mut Client, name: &str) -> Result<Option<i64>> {
    let path = format!("/v1/fs-client-groups/?q={}", query_value(name));
    let groups: Vec<Named> = get_list(
        c,
        &path,
        "fs_client_groups",
        &format!("looking up client group {name}"),
    )?;
    Ok(groups.into_iter().find(|g| g.name == name).map(|g| g.id))
}

/// ListFolders, filtered to the exact name: the whole record.
pub fn find_folder_record(c: &mut Client, name: &str) -> Result<Option<FolderRecord>> {
    let path = format!("/v1/fs-folders/?q={}", query_value(name));
    let folders: Vec<FolderRecord> =
        get_list(c, &path, "fs_folders", &format!("looking up folder {name}"))?;
    Ok(folders.into_iter().find(|f| f.name == name))
}

/// CreateFolder (202); `None` when the name is taken (409).
pub fn create_folder(
    c: &mut Client,
    name: &str,
    pool_id: i64,
    size: u64,
    snapshot: Option<i64>,
    description: &str,
) -> Result<Option<FolderRecord>> {
    let mut folder = json!({
        "name": name, "pool_id": pool_id, "size": size, "description": description,
    });
    if let Some(id) = snapshot {
        folder["fs_snapshot_id"] = json!(id);
    }
    let doing = format!("creating folder {name}");
    let mut a = c.call(
        "POST",
        "/v1/fs-folders/",
        Some(&json!({ "fs_folder": folder })),
    )?;
    match a.status {
        200 | 202 => decode(&mut a.body, "fs_folder", &doing).map(Some),
        409 => Ok(None),
        s => Err(status_error(s, &a, &doing)),
    }
}

/// UpdateFolder with a new size (202).
pub fn resize_folder(c: &mut Client, id: i64, size: u64) -> Result<()> {
    let body = json!({ "fs_folder": { "size": size } });
    expect(
        c,
        "PATCH",
        &format!("/v1/fs-folders/{id}"),
        Some(&body),
        202,
        &format!("resizing folder {id} to {size} bytes"),
    )
    .map(drop)
}

/// DeleteFolder (202); gone already is success; 409 (snapshots or shares
/// left) is FAILED_PRECONDITION.
pub fn delete_folder(c: &mut Client, id: i64) -> Result<()> {
    let a = c.call("DELETE", &format!("/v1/fs-folders/{id}"), None)?;
    match a.status {
        200 | 202 | 204 | 404 => Ok(()),
        409 => Err(fail(
            ErrorCode::FailedPrecondition,
            format!(
                "folder {id} cannot be deleted yet (delete its snapshots first?): {}",
                a.message()
            ),
        )),
        s => Err(status_error(s, &a, &format!("deleting folder {id}"))),
    }
}

/// ListFSNFSShares of a folder: the share records.
pub fn folder_shares(c: &mut Client, folder_id: i64) -> Result<Vec<Share>> {
    let path = format!("/v1/fs-nfs-shares/?fs_folder_id={folder_id}");
    get_list(
        c,
        &path,
        "fs_nfs_shares",
        &format!("listing the NFS shares of folder {folder_id}"),
    )
}

/// CreateFSNFSShare of a whole folder (202); `None` on 409 (shared already).
pub fn create_share(
    c: &mut Client,
    folder_id: i64,
    gateway_group_id: i64,
    client_group: Option<i64>,
) -> Result<Option<Share>> {
    let mut share = json!({ "fs_folder_id": folder_id, "fs_gateway_group_id": gateway_group_id });
    if let Some(cg) = client_group {
        share["fs_nfs_share_acls"] = json!([{
            "type": "client_group", "fs_client_group_id": cg, "permission": "rw",
            "sync": true, "all_squash": false, "root_squash": false,
        }]);
    }
    let doing = format!("sharing folder {folder_id}");
    let mut a = c.call(
        "POST",
        "/v1/fs-nfs-shares/",
        Some(&json!({ "fs_nfs_share": share })),
    )?;
    match a.status {
        200 | 202 => decode(&mut a.body, "fs_nfs_share", &doing).map(Some),
        409 => Ok(None),
        s => Err(status_error(s, &a, &doing)),
    }
}

/// DeleteFSNFSShare (202); gone already is success.
pub fn delete_share(c: &mut Client, id: i64) -> Result<()> {
    let a = c.call("DELETE", &format!("/v1/fs-nfs-shares/{id}"), None)?;
    match a.status {
        200 | 202 | 204 | 404 => Ok(()),
        s => Err(status_error(s, &a, &format!("deleting NFS share {id}"))),
    }
}

/// ListFSSnapshots, of one folder or all.
pub fn list_snapshots(c: &mut Client, folder_id: Option<i64>) -> Result<Vec<FsSnapshot>> {
    let path = match folder_id {
        Some(f) => format!("/v1/fs-snapshots/?fs_folder_id={f}"),
        None => "/v1/fs-snapshots/".to_string(),
    };
    get_list(c, &path, "fs_snapshots", "listing snapshots")
}

/// CreateFSSnapshot (202); `None` on 409 (the name exists).
pub fn create_snapshot(
    c: &mut Client,
    folder_id: i64,
    name: &str,
    description: &str,
) -> Result<Option<FsSnapshot>> {
    let body = json!({ "fs_snapshot": {
        "fs_folder_id": folder_id, "name": name, "description": description,
    }});
    let doing = format!("creating snapshot {name} of folder {folder_id}");
    let mut a = c.call("POST", "/v1/fs-snapshots/", Some(&body))?;
    match a.status {
        200 | 202 => decode(&mut a.body, "fs_snapshot", &doing).map(Some),
        409 => Ok(None),
        s => Err(status_error(s, &a, &doing)),
    }
}

/// DeleteFSSnapshot (202); gone already is success.
pub fn delete_snapshot(c: &mut Client, id: i64) -> Result<()> {
    let a = c.call("DELETE", &format!("/v1/fs-snapshots/{id}"), None)?;
    match a.status {
        200 | 202 | 204 | 404 => Ok(()),
        409 => Err(fail(
            ErrorCode::FailedPrecondition,
            format!("snapshot {id} is in use: {}", a.message()),
        )),
        s => Err(status_error(s, &a, &format!("deleting snapshot {id}"))),
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2026-11-30T23:05:39.000+00:00`).
pub fn epoch_seconds(t: &str) -> Option<u64> {
    let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(epoch_seconds("1970-01-01T00:00:00.000+00:00"), Some(0));
        assert_eq!(
            epoch_seconds("2024-02-29T12:34:56.123+00:00"),
            Some(1_709_210_096)
        );
        assert_eq!(
            epoch_seconds("2024-02-29T13:34:56+01:00"),
            Some(1_709_210_096)
        );
        assert_eq!(epoch_seconds("2024-02-29T12:34:56Z"), Some(1_709_210_096));
        assert_eq!(epoch_seconds("nonsense"), None);
        assert_eq!(epoch_seconds("2024-02-30T00:00:00Z"), None, "no such day");
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_value("csi-fs"), "csi-fs");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
        assert_eq!(query_value("pöol/=+~"), "p%C3%B6ol%2F%3D%2B~");
    }
}
