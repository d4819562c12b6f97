//! The XMS operations the plugin uses, typed; bodies and paths as
//! `shared/xms/swagger.yaml` describes them.

use serde_json::{json, Value};

use crate::client::{status_error, Client};
use crate::error::{fail, ErrorCode, Result};

#[derive(Debug, Clone)]
pub struct Folder {
    pub id: i64,
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub id: i64,
    pub name: String,
    pub folder_id: i64,
    pub folder_name: String,
    pub size: u64,
    pub status: String,
    pub action_status: String,
}

impl Tree {
    fn from(v: &Value) -> Tree {
        Tree {
            id: v["id"].as_i64().unwrap_or(0),
            name: v["name"].as_str().unwrap_or_default().to_string(),
            folder_id: v["fs_folder"]["id"].as_i64().unwrap_or(0),
            folder_name: v["fs_folder"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            size: v["size"].as_u64().unwrap_or(0),
            status: v["status"].as_str().unwrap_or_default().to_string(),
            action_status: v["action_status"].as_str().unwrap_or_default().to_string(),
        }
    }

    pub fn failed(&self) -> bool {
        let s = self.status.to_ascii_lowercase();
        s.contains("error") || s.contains("fail")
    }

    /// Settled: no background work on it.
    pub fn settled(&self) -> bool {
        self.status == "active" && self.action_status.is_empty()
    }
}

fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// A GET of a list operation: the records under `key` (none when absent).
fn get_list(c: &mut Client, path: &str, key: &str, doing: &str) -> Result<Vec<Value>> {
    let mut body = expect(c, "GET", path, None, 200, doing)?;
    Ok(match body[key].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    })
}

/// ListFolders, filtered to the exact name.
pub fn find_folder(c: &mut Client, name: &str) -> Result<Option<Folder>> {
    Ok(find_folder_record(c, name)?.map(|f| Folder {
        id: f["id"].as_i64().unwrap_or(0),
        name: name.to_string(),
        size: f["size"].as_u64().unwrap_or(0),
    }))
}

/// The VIP of the gateway group exporting the whole folder (its home
/// share), from ListFSNFSShares.
pub fn home_share_vip(c: &mut Client, folder: &Folder) -> Result<Option<String>> {
    Ok(folder_shares(c, folder.id)?
        .iter()
        .filter(|s| s["fs_quota_tree"].is_null() || s["fs_quota_tree"]["id"].is_null())
        .find_map(|s| s["fs_gateway_group"]["vip"].as_str().map(str::to_string)))
}

/// ListFSClientGroups: whether a client group of that name exists.
pub fn client_group_exists(c: &mut Client, name: &str) -> Result<bool> {
    Ok(client_group_record(c, name)?.is_some())
}

/// ListQuotaTrees of one folder.
pub fn list_trees(c: &mut Client, folder: &Folder) -> Result<Vec<Tree>> {
    let path = format!("/v1/fs-quota-trees/?fs_folder_id={}", folder.id);
    Ok(get_list(
        c,
        &path,
        "fs_quota_trees",
        &format!("listing the quota trees of folder {}", folder.name),
    )?
    .iter()
    .map(Tree::from)
    .collect())
}

/// GetQuotaTree; `None` when it does not exist.
pub fn get_tree(c: &mut Client, id: i64) -> Result<Option<Tree>> {
    let a = c.call("GET", &format!("/v1/fs-quota-trees/{id}"), None)?;
    match a.status {
        200 => Ok(Some(Tree::from(&a.body["fs_quota_tree"]))),
        404 => Ok(None),
        s => Err(status_error(s, &a, &format!("reading quota tree {id}"))),
    }
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
    loop {
        let t = get_tree(c, id)?;
        if let Some(t) = &t {
            if t.failed() {
                return Err(fail(
                    ErrorCode::Internal,
                    format!("{doing}: XMS reports quota tree {} as {}", t.name, t.status),
                ));
            }
        }
        if done(t.as_ref()) {
            return Ok(t);
        }
        let interval = c.timing.poll_interval;
        c.pause(interval, doing)?;
    }
}

/// Bytes of a folder not yet promised to its quota trees.
pub fn folder_free(folder: &Folder, trees: &[Tree]) -> u64 {
    let used: u64 = trees.iter().map(|t| t.size).sum();
    folder.size.saturating_sub(used)
}

/// GetFolder; `None` when it does not exist.
pub fn get_folder(c: &mut Client, id: i64) -> Result<Option<Folder>> {
    let a = c.call("GET", &format!("/v1/fs-folders/{id}"), None)?;
    match a.status {
        200 => {
            let f = &a.body["fs_folder"];
            Ok(Some(Folder {
                id,
                name: f["name"].as_str().unwrap_or_default().to_string(),
                size: f["size"].as_u64().unwrap_or(0),
            }))
        }
        404 => Ok(None),
        s => Err(status_error(s, &a, &format!("reading folder {id}"))),
    }
}

/// An object's status fields: settled when `active` with no action.
fn settled_status(v: &Value) -> bool {
    v["status"] == "active" && v["action_status"].as_str().unwrap_or("").is_empty()
}

fn failed_status(v: &Value) -> bool {
    let s = v["status"].as_str().unwrap_or("").to_ascii_lowercase();
    s.contains("error") || s.contains("fail")
}

/// Polls `get` until `done`, within the call's budget; a failed status
/// ends the wait.
pub fn wait_for(
    c: &mut Client,
    doing: &str,
    mut get: impl FnMut(&mut Client) -> Result<Option<Value>>,
    done: impl Fn(Option<&Value>) -> bool,
) -> Result<Option<Value>> {
    loop {
        let v = get(c)?;
        if let Some(v) = &v {
            if failed_status(v) {
                return Err(fail(
                    ErrorCode::Internal,
                    format!("{doing}: XMS reports status {}", v["status"]),
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

pub fn until_settled(v: Option<&Value>) -> bool {
    v.is_some_and(settled_status)
}

pub fn until_gone(v: Option<&Value>) -> bool {
    v.is_none()
}

/// GET of one object by path; `None` on 404. Returns the wrapped object.
pub fn get_object(c: &mut Client, path: &str, wrapper: &str) -> Result<Option<Value>> {
    let a = c.call("GET", path, None)?;
    match a.status {
        200 => Ok(Some(a.body[wrapper].clone())),
        404 => Ok(None),
        s => Err(status_error(s, &a, &format!("reading {path}"))),
    }
}

/// ListPools: the id of the pool of that name.
pub fn find_pool(c: &mut Client, name: &str) -> Result<Option<i64>> {
    let path = format!("/v1/pools/?q={}", query_value(name));
    Ok(
        get_list(c, &path, "pools", &format!("looking up pool {name}"))?
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["id"].as_i64()),
    )
}

/// ListFSGatewayGroups: id and VIP of the named group (or the first).
pub fn find_gateway_group(c: &mut Client, name: Option<&str>) -> Result<Option<(i64, String)>> {
    let path = match name {
        Some(n) => format!("/v1/fs-gateway-groups/?q={}", query_value(n)),
        None => "/v1/fs-gateway-groups/".to_string(),
    };
    Ok(get_list(
        c,
        &path,
        "fs_gateway_groups",
        "looking up the gateway group",
    )?
    .iter()
    .find(|g| name.is_none_or(|n| g["name"] == n))
    .and_then(|g| Some((g["id"].as_i64()?, g["vip"].as_str()?.to_string()))))
}

/// GetPoolSamples: the pool's free bytes in its latest sample.
pub fn pool_free(c: &mut Client, pool_id: i64) -> Result<u64> {
    let samples = get_list(
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
    let kib = |k: &str| latest[k].as_u64().unwrap_or(0);
    Ok(kib("total_kbyte").saturating_sub(kib("used_kbyte")) * 1024)
}

/// ListFSClientGroups: the id of the group of that name.
pub fn find_client_group(c: &mut Client, name: &str) -> Result<Option<i64>> {
    Ok(client_group_record(c, name)?.and_then(|g| g["id"].as_i64()))
}

/// ListFSClientGroups, filtered to the exact name: the raw record.
fn client_group_record(c: &mut Client, name: &str) -> Result<Option<Value>> {
    let path = format!("/v1/fs-client-groups/?q={}", query_value(name));
    Ok(get_list(
        c,
        &path,
        "fs_client_groups",
        &format!("looking up client group {name}"),
    )?
    .into_iter()
    .find(|g| g["name"] == name))
}

/// ListFolders, filtered to the exact name: the raw record.
pub fn find_folder_record(c: &mut Client, name: &str) -> Result<Option<Value>> {
    let path = format!("/v1/fs-folders/?q={}", query_value(name));
    Ok(
        get_list(c, &path, "fs_folders", &format!("looking up folder {name}"))?
            .iter()
            .find(|f| f["name"] == name)
            .cloned(),
    )
}

/// CreateFolder (202); `None` when the name is taken (409).
pub fn create_folder(
    c: &mut Client,
    name: &str,
    pool_id: i64,
    size: u64,
    snapshot: Option<i64>,
    description: &str,
) -> Result<Option<Value>> {
    let mut folder = json!({
        "name": name, "pool_id": pool_id, "size": size, "description": description,
    });
    if let Some(id) = snapshot {
        folder["fs_snapshot_id"] = json!(id);
    }
    let a = c.call(
        "POST",
        "/v1/fs-folders/",
        Some(&json!({ "fs_folder": folder })),
    )?;
    match a.status {
        200 | 202 => Ok(Some(a.body["fs_folder"].clone())),
        409 => Ok(None),
        s => Err(status_error(s, &a, &format!("creating folder {name}"))),
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
pub fn folder_shares(c: &mut Client, folder_id: i64) -> Result<Vec<Value>> {
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
) -> Result<Option<Value>> {
    let mut share = json!({ "fs_folder_id": folder_id, "fs_gateway_group_id": gateway_group_id });
    if let Some(cg) = client_group {
        share["fs_nfs_share_acls"] = json!([{
            "type": "client_group", "fs_client_group_id": cg, "permission": "rw",
            "sync": true, "all_squash": false, "root_squash": false,
        }]);
    }
    let a = c.call(
        "POST",
        "/v1/fs-nfs-shares/",
        Some(&json!({ "fs_nfs_share": share })),
    )?;
    match a.status {
        200 | 202 => Ok(Some(a.body["fs_nfs_share"].clone())),
        409 => Ok(None),
        s => Err(status_error(s, &a, &format!("sharing folder {folder_id}"))),
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
pub fn list_snapshots(c: &mut Client, folder_id: Option<i64>) -> Result<Vec<Value>> {
    let path = match folder_id {
        Some(f) => format!("/v1/fs-snapshots/?fs_folder_id={f}"),
        None => "/v1/fs-snapshots/".to_string(),
    };
    get_list(c, &path, "fs_snapshots", "listing snapshots")
}

/// CreateFSSnapshot (202); `None` on 409 (the name exists).
pub fn create_snapshot(c: &mut Client, folder_id: i64, name: &str) -> Result<Option<Value>> {
    let body = json!({ "fs_snapshot": { "fs_folder_id": folder_id, "name": name } });
    let a = c.call("POST", "/v1/fs-snapshots/", Some(&body))?;
    match a.status {
        200 | 202 => Ok(Some(a.body["fs_snapshot"].clone())),
        409 => Ok(None),
        s => Err(status_error(
            s,
            &a,
            &format!("creating snapshot {name} of folder {folder_id}"),
        )),
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
    let (date, rest) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = rest.get(..8)?;
    let mut hms = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    let offset = match rest.rfind(['+', '-']) {
        Some(i) if i >= 8 => {
            let o = &rest[i + 1..];
            let (oh, om) = o.split_once(':').unwrap_or((o, "0"));
            let secs = oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60;
            if &rest[i..i + 1] == "-" {
                -secs
            } else {
                secs
            }
        }
        _ => 0,
    };
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss - offset).ok()
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
        assert_eq!(epoch_seconds("nonsense"), None);
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_value("csi-fs"), "csi-fs");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }
}
