//! XMS records as `shared/xms/swagger.yaml` defines them, with only the
//! fields the plugin reads. The swagger marks no field required; the ones
//! the plugin cannot work without (ids, names, sizes, status) are required
//! here, so that a renamed or missing field fails the call with a message
//! naming it instead of reading as 0 or "". The rest are `Option`.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{fail, ErrorCode, Result};

/// A referenced object as XMS nests it (`FSFolder_Nestview`, ...).
#[derive(Debug, Clone, Deserialize)]
pub struct Ref {
    pub id: i64,
    pub name: String,
}

/// What every XMS object says about itself: `status` (`active`, `creating`,
/// `error`, ...) and the background work in progress, if any.
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub status: String,
    #[serde(default)]
    pub action_status: Option<String>,
}

impl State {
    /// Settled: active, no background work on it.
    pub fn settled(&self) -> bool {
        self.status == "active" && self.action_status.as_deref().unwrap_or("").is_empty()
    }

    pub fn failed(&self) -> bool {
        let s = self.status.to_ascii_lowercase();
        s.contains("error") || s.contains("fail")
    }
}

/// An object the plugin polls until its state settles.
pub trait Stateful {
    fn state(&self) -> &State;
}

/// `FSQuotaTree`.
#[derive(Debug, Clone, Deserialize)]
pub struct Tree {
    pub id: i64,
    pub name: String,
    pub size: u64,
    pub fs_folder: Ref,
    #[serde(flatten)]
    pub state: State,
}

/// `FSFolder` (`FSFolderRecord` in answers).
#[derive(Debug, Clone, Deserialize)]
pub struct FolderRecord {
    pub id: i64,
    pub name: String,
    pub size: u64,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub pool: Option<Ref>,
    #[serde(flatten)]
    pub state: State,
}

/// The gateway group nested in a share (`FSGatewayGroup_Nestview`).
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayRef {
    #[serde(default)]
    pub vip: Option<String>,
}

/// `FSNFSShare`.
#[derive(Debug, Clone, Deserialize)]
pub struct Share {
    pub id: i64,
    /// Set when the share exports one quota tree, absent for a whole folder.
    #[serde(default)]
    pub fs_quota_tree: Option<Ref>,
    #[serde(default)]
    pub fs_gateway_group: Option<GatewayRef>,
    #[serde(flatten)]
    pub state: State,
}

impl Share {
    pub fn whole_folder(&self) -> bool {
        self.fs_quota_tree.is_none()
    }
}

/// `FSSnapshot`.
#[derive(Debug, Clone, Deserialize)]
pub struct FsSnapshot {
    pub id: i64,
    pub name: String,
    pub size: u64,
    pub fs_folder: Ref,
    /// xsky-nfs's mark on the snapshots it made.
    #[serde(default)]
    pub description: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub create: Option<String>,
    #[serde(flatten)]
    pub state: State,
}

/// `FSGatewayGroup`.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayGroup {
    pub id: i64,
    pub name: String,
    pub vip: String,
}

/// `FSClientGroup`, and `Pool` (`PoolRecord`): what the plugin looks up by name.
#[derive(Debug, Clone, Deserialize)]
pub struct Named {
    pub id: i64,
    pub name: String,
}

/// `PoolStat`.
#[derive(Debug, Clone, Deserialize)]
pub struct PoolStat {
    pub total_kbyte: u64,
    pub used_kbyte: u64,
}

/// `Token` (`TokenRecord`), of CreateToken's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Token {
    pub uuid: String,
}

impl Stateful for Tree {
    fn state(&self) -> &State {
        &self.state
    }
}
impl Stateful for FolderRecord {
    fn state(&self) -> &State {
        &self.state
    }
}
impl Stateful for Share {
    fn state(&self) -> &State {
        &self.state
    }
}
impl Stateful for FsSnapshot {
    fn state(&self) -> &State {
        &self.state
    }
}

/// The record under `key` of an answer's body, typed; an error names the
/// field that is missing or of the wrong type.
pub fn decode<T: DeserializeOwned>(body: &mut Value, key: &str, doing: &str) -> Result<T> {
    let value = match body.get_mut(key) {
        Some(v) => v.take(),
        None => return Err(unexpected(doing, format!("no {key:?} in the answer"))),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = match path.as_str() {
            "." => key.to_string(),
            index if index.starts_with('[') => format!("{key}{index}"),
            field => format!("{key}.{field}"),
        };
        unexpected(doing, format!("{at}: {}", e.inner()))
    })
}

/// The records under `key` of a list answer (`null`: none).
pub fn decode_list<T: DeserializeOwned>(
    body: &mut Value,
    key: &str,
    doing: &str,
) -> Result<Vec<T>> {
    if body.get(key).is_some_and(Value::is_null) {
        return Ok(Vec::new());
    }
    decode(body, key, doing)
}

fn unexpected(doing: &str, what: String) -> crate::error::Error {
    fail(
        ErrorCode::Internal,
        format!("{doing}: XMS answered in a shape its API does not describe: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree_body() -> Value {
        json!({ "fs_quota_tree": {
            "id": 7, "name": "pvc-a", "size": 1073741824, "status": "active",
            "action_status": "", "fs_folder": { "id": 3, "name": "home" },
            "soft_quota_size": 0, "shared": false,
        }})
    }

    #[test]
    fn a_record_reads_with_its_optional_fields() {
        let t: Tree = decode(&mut tree_body(), "fs_quota_tree", "reading").unwrap();
        assert_eq!((t.id, t.size, t.fs_folder.id), (7, 1 << 30, 3));
        assert!(t.state.settled());
        let mut body = tree_body();
        body["fs_quota_tree"]
            .as_object_mut()
            .unwrap()
            .remove("action_status");
        let t: Tree = decode(&mut body, "fs_quota_tree", "reading").unwrap();
        assert!(t.state.settled(), "no action_status: no work in progress");
    }

    /// Read as `Value` with `unwrap_or(0)`, a renamed `size` was a tree of
    /// 0 bytes; now it is an error naming the field.
    #[test]
    fn a_renamed_required_field_is_an_error_naming_it() {
        let mut body = tree_body();
        let tree = body["fs_quota_tree"].as_object_mut().unwrap();
        let size = tree.remove("size").unwrap();
        tree.insert("size_bytes".into(), size);
        let e = decode::<Tree>(&mut body, "fs_quota_tree", "reading quota tree 7").unwrap_err();
        assert!(matches!(e.code, ErrorCode::Internal));
        assert!(e.message.contains("reading quota tree 7"), "{}", e.message);
        assert!(e.message.contains("missing field `size`"), "{}", e.message);
    }

    #[test]
    fn a_wrong_type_is_an_error_with_its_path() {
        let mut body = json!({ "fs_quota_trees": [
            tree_body()["fs_quota_tree"].clone(),
            { "id": 8, "name": "b", "size": "big", "status": "active",
              "fs_folder": { "id": 3, "name": "home" } },
        ]});
        let e = decode_list::<Tree>(&mut body, "fs_quota_trees", "listing").unwrap_err();
        assert!(
            e.message.contains("fs_quota_trees[1].size"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_missing_list_is_an_error_and_null_is_empty() {
        let e = decode_list::<Tree>(&mut json!({}), "fs_quota_trees", "listing").unwrap_err();
        assert!(e.message.contains("fs_quota_trees"), "{}", e.message);
        let none: Vec<Tree> = decode_list(
            &mut json!({ "fs_quota_trees": null }),
            "fs_quota_trees",
            "listing",
        )
        .unwrap();
        assert!(none.is_empty());
    }
}
