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

/// ListFolders, filtered to the exact name.
pub fn find_folder(c: &mut Client, name: &str) -> Result<Option<Folder>> {
    let path = format!("/v1/fs-folders/?q={}", query_value(name));
    let body = expect(
        c,
        "GET",
        &path,
        None,
        200,
        &format!("looking up folder {name}"),
    )?;
    Ok(body["fs_folders"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == name)
        .map(|f| Folder {
            id: f["id"].as_i64().unwrap_or(0),
            name: name.to_string(),
            size: f["size"].as_u64().unwrap_or(0),
        }))
}

/// The VIP of the gateway group exporting the whole folder (its home
/// share), from ListFSNFSShares.
pub fn home_share_vip(c: &mut Client, folder: &Folder) -> Result<Option<String>> {
    let path = format!("/v1/fs-nfs-shares/?fs_folder_id={}", folder.id);
    let body = expect(
        c,
        "GET",
        &path,
        None,
        200,
        &format!("listing the NFS shares of folder {}", folder.name),
    )?;
    Ok(body["fs_nfs_shares"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["fs_quota_tree"].is_null() || s["fs_quota_tree"]["id"].is_null())
        .find_map(|s| s["fs_gateway_group"]["vip"].as_str().map(str::to_string)))
}

/// ListFSClientGroups: whether a client group of that name exists.
pub fn client_group_exists(c: &mut Client, name: &str) -> Result<bool> {
    let path = format!("/v1/fs-client-groups/?q={}", query_value(name));
    let body = expect(
        c,
        "GET",
        &path,
        None,
        200,
        &format!("looking up client group {name}"),
    )?;
    Ok(body["fs_client_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| g["name"] == name))
}

/// ListQuotaTrees of one folder.
pub fn list_trees(c: &mut Client, folder: &Folder) -> Result<Vec<Tree>> {
    let path = format!("/v1/fs-quota-trees/?fs_folder_id={}", folder.id);
    let body = expect(
        c,
        "GET",
        &path,
        None,
        200,
        &format!("listing the quota trees of folder {}", folder.name),
    )?;
    Ok(body["fs_quota_trees"]
        .as_array()
        .into_iter()
        .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_value("csi-fs"), "csi-fs");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }
}
