//! The array's state and the XMS operations on it. Work the real array does
//! in the background after a 202 is modelled as a pending change with a
//! settle time; every request first settles what is due, so clients see the
//! same status transitions (`creating`/`updating`/`deleting` → `active` or
//! gone) as if a worker ran them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::time::{now, rfc3339};

pub const GIB: u64 = 1 << 30;

#[derive(Debug, Clone)]
pub struct Pool {
    pub id: i64,
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct GatewayGroup {
    pub id: i64,
    pub name: String,
    pub vip: String,
}

#[derive(Debug, Clone)]
pub struct Folder {
    pub id: i64,
    pub name: String,
    pub size: u64,
    pub pool_id: i64,
    pub gateway_group_id: i64,
    pub created: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Create,
    Resize(u64),
    Delete,
}

#[derive(Debug, Clone)]
pub struct QuotaTree {
    pub id: i64,
    pub folder_id: i64,
    pub name: String,
    /// The size the array enforces (a pending resize shows the old one).
    pub size: u64,
    pub pending: Option<(Pending, Option<Instant>)>,
    pub created: String,
    pub updated: String,
}

impl QuotaTree {
    pub fn status(&self) -> &'static str {
        match &self.pending {
            None => "active",
            Some((Pending::Create, _)) => "creating",
            Some((Pending::Resize(_), _)) => "updating",
            Some((Pending::Delete, _)) => "deleting",
        }
    }
    /// What the tree claims of its folder: the larger of old and new size
    /// while a resize is pending.
    fn claim(&self) -> u64 {
        match &self.pending {
            Some((Pending::Resize(n), _)) => self.size.max(*n),
            _ => self.size,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NfsShare {
    pub id: i64,
    pub folder_id: i64,
    pub gateway_group_id: i64,
    pub quota_tree_id: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ClientGroup {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone)]
struct Token {
    user: String,
    created: SystemTime,
    expires: SystemTime,
}

/// A reply: HTTP status and JSON body.
pub type Reply = (u16, Value);

fn error(status: u16, message: impl Into<String>) -> Reply {
    (status, json!({ "message": message.into() }))
}

pub struct State {
    pub users: BTreeMap<String, String>,
    pub pools: Vec<Pool>,
    pub gateway_groups: Vec<GatewayGroup>,
    pub folders: Vec<Folder>,
    pub quota_trees: Vec<QuotaTree>,
    pub shares: Vec<NfsShare>,
    pub client_groups: Vec<ClientGroup>,
    tokens: HashMap<String, Token>,
    next_id: i64,
    token_seq: u64,
    /// How long accepted work takes.
    pub settle_after: Duration,
    pub token_ttl: Duration,
    /// While set, accepted work never settles (until cleared).
    pub never_settle: bool,
}

impl Default for State {
    /// The documented starting state: admin/admin, pool `data_pool`,
    /// gateway group `gw1` (VIP 127.0.0.1), folder `csi-fs` (100 GiB)
    /// exported as the home share `127.0.0.1:/sdsfs/csi-fs/`, client
    /// group `k8s-nodes`.
    fn default() -> State {
        let created = now();
        State {
            users: [("admin".to_string(), "admin".to_string())].into(),
            pools: vec![Pool {
                id: 1,
                name: "data_pool".into(),
                size: 1024 * GIB,
            }],
            gateway_groups: vec![GatewayGroup {
                id: 1,
                name: "gw1".into(),
                vip: "127.0.0.1".into(),
            }],
            folders: vec![Folder {
                id: 1,
                name: "csi-fs".into(),
                size: 100 * GIB,
                pool_id: 1,
                gateway_group_id: 1,
                created,
            }],
            quota_trees: vec![],
            shares: vec![NfsShare {
                id: 1,
                folder_id: 1,
                gateway_group_id: 1,
                quota_tree_id: None,
            }],
            client_groups: vec![ClientGroup {
                id: 1,
                name: "k8s-nodes".into(),
            }],
            tokens: HashMap::new(),
            next_id: 100,
            token_seq: 0,
            settle_after: Duration::from_millis(300),
            token_ttl: Duration::from_secs(3600),
            never_settle: false,
        }
    }
}

fn q_matches(q: Option<&String>, name: &str) -> bool {
    match q {
        None => true,
        Some(q) => {
            let q = q.strip_prefix("name:").unwrap_or(q);
            q.is_empty() || name.contains(q)
        }
    }
}

fn page<T>(items: Vec<T>, query: &HashMap<String, String>) -> Vec<T> {
    let offset = query
        .get("offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0usize);
    let limit = query
        .get("limit")
        .and_then(|v| v.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    items.into_iter().skip(offset).take(limit).collect()
}

fn id_param(query: &HashMap<String, String>, key: &str) -> Result<Option<i64>, Reply> {
    match query.get(key) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| error(400, format!("query parameter {key} must be an integer"))),
    }
}

impl State {
    fn new_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn settle_at(&self) -> Option<Instant> {
        (!self.never_settle).then(|| Instant::now() + self.settle_after)
    }

    /// Applies the background work that is due.
    pub fn settle(&mut self) {
        let now = Instant::now();
        let stamp = crate::time::now();
        let mut gone = vec![];
        for t in &mut self.quota_trees {
            let due = matches!(&t.pending, Some((_, Some(at))) if *at <= now);
            if !due {
                continue;
            }
            match t.pending.take().map(|p| p.0) {
                Some(Pending::Resize(n)) => t.size = n,
                Some(Pending::Delete) => gone.push(t.id),
                _ => {}
            }
            t.updated = stamp.clone();
        }
        self.quota_trees.retain(|t| !gone.contains(&t.id));
        self.shares
            .retain(|s| s.quota_tree_id.is_none_or(|id| !gone.contains(&id)));
    }

    /// Lets work accepted while `never_settle` was on finish from now.
    pub fn release_stuck(&mut self) {
        let at = Instant::now() + self.settle_after;
        for t in &mut self.quota_trees {
            if let Some((_, when @ None)) = &mut t.pending {
                *when = Some(at);
            }
        }
    }

    pub fn expire_tokens(&mut self) {
        let past = SystemTime::now() - Duration::from_secs(1);
        for t in self.tokens.values_mut() {
            t.expires = past;
        }
    }

    /// The user a token belongs to, if it is valid.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        let t = self.tokens.get(token)?;
        (t.expires > SystemTime::now()).then(|| t.user.clone())
    }

    fn folder_used(&self, folder_id: i64, except: Option<i64>) -> u64 {
        self.quota_trees
            .iter()
            .filter(|t| t.folder_id == folder_id && Some(t.id) != except)
            .map(QuotaTree::claim)
            .sum()
    }

    // ---- views, shaped like the swagger definitions ----

    fn gateway_group_view(&self, g: &GatewayGroup) -> Value {
        json!({
            "id": g.id, "name": g.name, "vip": g.vip, "vip_mask": 24,
            "status": "active", "action_status": "",
            "types": ["nfs"], "nfs_versions": ["3", "4"],
            "folder_num": self.folders.iter().filter(|f| f.gateway_group_id == g.id).count(),
            "create": self.folders.first().map(|f| f.created.clone()).unwrap_or_else(now),
            "update": now(),
        })
    }

    fn folder_view(&self, f: &Folder) -> Value {
        let pool = self.pools.iter().find(|p| p.id == f.pool_id);
        let gw = self
            .gateway_groups
            .iter()
            .find(|g| g.id == f.gateway_group_id);
        let trees = self.quota_trees.iter().filter(|t| t.folder_id == f.id);
        let used_kbyte: u64 = 0;
        json!({
            "id": f.id,
            "name": f.name,
            "size": f.size,
            "status": "active",
            "action_status": "",
            "shared": self.shares.iter().any(|s| s.folder_id == f.id && s.quota_tree_id.is_none()),
            "share_types": ["NFS"],
            "quota_tree_shared": false,
            "quota_tree_share_types": [],
            "fs_quota_tree_num": trees.count(),
            "fs_snapshot_num": 0,
            "flattened": true,
            "formatted": true,
            "progress": 1.0,
            "qos_enabled": false,
            "pool": pool.map(|p| json!({"id": p.id, "name": p.name})),
            "fs_gateway_group": gw.map(|g| self.gateway_group_view(g)),
            "create": f.created,
            "update": now(),
            "samples": [{ "create": now(), "used_kbyte": used_kbyte as f64 }],
        })
    }

    fn quota_tree_view(&self, t: &QuotaTree) -> Value {
        let folder = self.folders.iter().find(|f| f.id == t.folder_id);
        json!({
            "id": t.id,
            "name": t.name,
            "size": t.size,
            "soft_quota_size": 0,
            "used_kbyte": 0,
            "status": t.status(),
            "action_status": if t.pending.is_some() { t.status() } else { "" },
            "shared": self.shares.iter().any(|s| s.quota_tree_id == Some(t.id)),
            "fs_folder": folder.map(|f| json!({"id": f.id, "name": f.name})),
            "create": t.created,
            "update": t.updated,
        })
    }

    fn share_view(&self, s: &NfsShare) -> Value {
        let folder = self.folders.iter().find(|f| f.id == s.folder_id);
        let gw = self
            .gateway_groups
            .iter()
            .find(|g| g.id == s.gateway_group_id);
        let tree = s
            .quota_tree_id
            .and_then(|id| self.quota_trees.iter().find(|t| t.id == id));
        let mut v = json!({
            "id": s.id,
            "status": "active",
            "action_status": "",
            "acl_num": 0,
            "mapping_num": 0,
            "fs_folder": folder.map(|f| json!({"id": f.id, "name": f.name})),
            "fs_gateway_group": gw.map(|g| json!({"id": g.id, "name": g.name, "vip": g.vip, "vip_mask": 24})),
            "create": folder.map(|f| f.created.clone()).unwrap_or_else(now),
            "update": now(),
        });
        if let Some(t) = tree {
            v["fs_quota_tree"] = json!({"id": t.id, "name": t.name});
        }
        v
    }

    // ---- operations ----

    /// POST /v1/auth/tokens (CreateToken).
    pub fn create_token(&mut self, body: &Value) -> Reply {
        let user = &body["auth"]["identity"]["password"]["user"];
        let (Some(name), Some(password)) = (user["name"].as_str(), user["password"].as_str())
        else {
            return error(400, "auth.identity.password.user needs name and password");
        };
        if self.users.get(name).map(String::as_str) != Some(password) {
            return error(401, "invalid user name or password");
        }
        self.token_seq += 1;
        let uuid = format!(
            "{:016x}{:016x}",
            self.token_seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
        );
        let created = SystemTime::now();
        let token = Token {
            user: name.to_string(),
            created,
            expires: created + self.token_ttl,
        };
        let view = json!({ "token": {
            "uuid": uuid,
            "valid": true,
            "create": rfc3339(token.created),
            "expires": rfc3339(token.expires),
            "user": { "id": 1, "name": name, "enabled": true, "roles": ["admin"] },
            "roles": ["admin"],
        }});
        self.tokens.insert(uuid, token);
        (201, view)
    }

    pub fn list_folders(&self, query: &HashMap<String, String>) -> Reply {
        let pool = match id_param(query, "pool_id") {
            Ok(p) => p,
            Err(e) => return e,
        };
        let items: Vec<Value> = self
            .folders
            .iter()
            .filter(|f| q_matches(query.get("q"), &f.name))
            .filter(|f| pool.is_none_or(|p| f.pool_id == p))
            .map(|f| self.folder_view(f))
            .collect();
        (200, json!({ "fs_folders": page(items, query) }))
    }

    pub fn get_folder(&self, id: i64) -> Reply {
        match self.folders.iter().find(|f| f.id == id) {
            Some(f) => (200, json!({ "fs_folder": self.folder_view(f) })),
            None => error(404, format!("fs folder {id} not found")),
        }
    }

    pub fn list_shares(&self, query: &HashMap<String, String>) -> Reply {
        let (folder, gw) = match (
            id_param(query, "fs_folder_id"),
            id_param(query, "fs_gateway_group_id"),
        ) {
            (Ok(f), Ok(g)) => (f, g),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let items: Vec<Value> = self
            .shares
            .iter()
            .filter(|s| folder.is_none_or(|f| s.folder_id == f))
            .filter(|s| gw.is_none_or(|g| s.gateway_group_id == g))
            .map(|s| self.share_view(s))
            .collect();
        (200, json!({ "fs_nfs_shares": page(items, query) }))
    }

    pub fn list_gateway_groups(&self, query: &HashMap<String, String>) -> Reply {
        let items: Vec<Value> = self
            .gateway_groups
            .iter()
            .filter(|g| q_matches(query.get("q"), &g.name))
            .map(|g| self.gateway_group_view(g))
            .collect();
        (200, json!({ "fs_gateway_groups": page(items, query) }))
    }

    pub fn list_client_groups(&self, query: &HashMap<String, String>) -> Reply {
        let items: Vec<Value> = self
            .client_groups
            .iter()
            .filter(|c| q_matches(query.get("q"), &c.name))
            .map(|c| {
                json!({"id": c.id, "name": c.name, "client_num": 0, "fs_clients": [],
                       "action_status": "", "create": now(), "update": now()})
            })
            .collect();
        (200, json!({ "fs_client_groups": page(items, query) }))
    }

    pub fn list_quota_trees(&self, query: &HashMap<String, String>) -> Reply {
        let folder = match id_param(query, "fs_folder_id") {
            Ok(f) => f,
            Err(e) => return e,
        };
        let items: Vec<Value> = self
            .quota_trees
            .iter()
            .filter(|t| folder.is_none_or(|f| t.folder_id == f))
            .filter(|t| q_matches(query.get("q"), &t.name))
            .map(|t| self.quota_tree_view(t))
            .collect();
        (200, json!({ "fs_quota_trees": page(items, query) }))
    }

    pub fn get_quota_tree(&self, id: i64) -> Reply {
        match self.quota_trees.iter().find(|t| t.id == id) {
            Some(t) => (200, json!({ "fs_quota_tree": self.quota_tree_view(t) })),
            None => error(404, format!("fs quota tree {id} not found")),
        }
    }

    /// PUT /v1/fs-folders/{id}/fs-quota-trees (AddFSQuotaTrees).
    pub fn add_quota_trees(&mut self, folder_id: i64, body: &Value) -> Reply {
        let Some(folder) = self.folders.iter().find(|f| f.id == folder_id).cloned() else {
            return error(404, format!("fs folder {folder_id} not found"));
        };
        let Some(wanted) = body["fs_folder"]["fs_quota_trees"].as_array() else {
            return error(400, "fs_folder.fs_quota_trees must be an array");
        };
        let mut new = vec![];
        for w in wanted {
            let Some(name) = w["name"].as_str().filter(|n| !n.is_empty()) else {
                return error(400, "every quota tree needs a name");
            };
            let size = w["size"].as_u64().unwrap_or(0);
            if size == 0 {
                return error(400, format!("quota tree {name}: size must be positive"));
            }
            let taken = self
                .quota_trees
                .iter()
                .any(|t| t.folder_id == folder_id && t.name == name)
                || new.iter().any(|(n, _): &(String, u64)| n == name);
            if taken {
                return error(
                    409,
                    format!("quota tree {name} already exists in {}", folder.name),
                );
            }
            new.push((name.to_string(), size));
        }
        let total: u64 = new.iter().map(|(_, s)| s).sum();
        let used = self.folder_used(folder_id, None);
        if used + total > folder.size {
            return error(
                400,
                format!(
                    "quota trees exceed folder {}: {} bytes free, {total} asked",
                    folder.name,
                    folder.size - used.min(folder.size)
                ),
            );
        }
        let at = self.settle_at();
        for (name, size) in new {
            let id = self.new_id();
            let stamp = now();
            self.quota_trees.push(QuotaTree {
                id,
                folder_id,
                name,
                size,
                pending: Some((Pending::Create, at)),
                created: stamp.clone(),
                updated: stamp,
            });
        }
        (202, json!({ "fs_folder": self.folder_view(&folder) }))
    }

    /// DELETE /v1/fs-folders/{id}/fs-quota-trees (RemoveFSQuotaTrees).
    pub fn remove_quota_trees(&mut self, folder_id: i64, body: &Value) -> Reply {
        let Some(folder) = self.folders.iter().find(|f| f.id == folder_id).cloned() else {
            return error(404, format!("fs folder {folder_id} not found"));
        };
        let Some(ids) = body["fs_folder"]["fs_quota_tree_ids"].as_array() else {
            return error(400, "fs_folder.fs_quota_tree_ids must be an array");
        };
        let ids: Vec<i64> = ids.iter().filter_map(Value::as_i64).collect();
        for id in &ids {
            if !self
                .quota_trees
                .iter()
                .any(|t| t.id == *id && t.folder_id == folder_id)
            {
                return error(
                    404,
                    format!("fs quota tree {id} not found in {}", folder.name),
                );
            }
            if self.shares.iter().any(|s| s.quota_tree_id == Some(*id)) {
                return error(409, format!("fs quota tree {id} is still shared"));
            }
        }
        let at = self.settle_at();
        for t in &mut self.quota_trees {
            if ids.contains(&t.id) {
                t.pending = Some((Pending::Delete, at));
                t.updated = now();
            }
        }
        (202, json!({ "fs_folder": self.folder_view(&folder) }))
    }

    /// PATCH /v1/fs-quota-trees/{id} (UpdateQuotaTree).
    pub fn update_quota_tree(&mut self, id: i64, body: &Value) -> Reply {
        let Some(tree) = self.quota_trees.iter().find(|t| t.id == id).cloned() else {
            return error(404, format!("fs quota tree {id} not found"));
        };
        if tree.pending.is_some() {
            return error(409, format!("fs quota tree {id} is {}", tree.status()));
        }
        let req = &body["fs_quota_tree"];
        let Some(size) = req["size"].as_u64() else {
            return error(400, "fs_quota_tree.size must be an integer");
        };
        let folder = self
            .folders
            .iter()
            .find(|f| f.id == tree.folder_id)
            .cloned()
            .expect("a tree's folder exists");
        if self.folder_used(folder.id, Some(id)) + size > folder.size {
            return error(400, format!("size {size} exceeds folder {}", folder.name));
        }
        let at = self.settle_at();
        let t = self.quota_trees.iter_mut().find(|t| t.id == id).unwrap();
        if size != t.size {
            t.pending = Some((Pending::Resize(size), at));
        }
        t.updated = now();
        let t = t.clone();
        (202, json!({ "fs_quota_tree": self.quota_tree_view(&t) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(s: &mut State) -> String {
        let (status, v) = s.create_token(
            &json!({"auth": {"identity": {"password": {"user": {"name": "admin", "password": "admin"}}}}}),
        );
        assert_eq!(status, 201);
        v["token"]["uuid"].as_str().unwrap().to_string()
    }

    #[test]
    fn tokens_expire() {
        let mut s = State::default();
        let t = login(&mut s);
        assert_eq!(s.authenticate(&t).as_deref(), Some("admin"));
        s.expire_tokens();
        assert_eq!(s.authenticate(&t), None);
        let (status, _) = s.create_token(
            &json!({"auth": {"identity": {"password": {"user": {"name": "admin", "password": "x"}}}}}),
        );
        assert_eq!(status, 401);
    }

    #[test]
    fn quota_trees_settle_and_cannot_exceed_their_folder() {
        let mut s = State {
            settle_after: Duration::ZERO,
            ..State::default()
        };
        let add = |n: &str, size: u64| json!({"fs_folder": {"fs_quota_trees": [{"name": n, "size": size}]}});
        assert_eq!(s.add_quota_trees(1, &add("a", 60 * GIB)).0, 202);
        assert_eq!(s.quota_trees[0].status(), "creating");
        s.settle();
        assert_eq!(s.quota_trees[0].status(), "active");
        assert_eq!(s.add_quota_trees(1, &add("a", GIB)).0, 409);
        assert_eq!(s.add_quota_trees(1, &add("b", 50 * GIB)).0, 400);
        assert_eq!(s.add_quota_trees(1, &add("b", 40 * GIB)).0, 202);
        let id = s.quota_trees[0].id;
        let grow = json!({"fs_quota_tree": {"size": 61 * GIB}});
        assert_eq!(s.update_quota_tree(id, &grow).0, 400);
        let grow = json!({"fs_quota_tree": {"size": 59 * GIB}});
        assert_eq!(s.update_quota_tree(id, &grow).0, 202);
        s.settle();
        assert_eq!(s.quota_trees[0].size, 59 * GIB);
        let del = json!({"fs_folder": {"fs_quota_tree_ids": [id]}});
        assert_eq!(s.remove_quota_trees(1, &del).0, 202);
        s.settle();
        assert_eq!(s.quota_trees.len(), 1);
        assert_eq!(s.get_quota_tree(id).0, 404);
    }

    #[test]
    fn stuck_work_settles_once_released() {
        let mut s = State {
            settle_after: Duration::ZERO,
            never_settle: true,
            ..State::default()
        };
        let add = json!({"fs_folder": {"fs_quota_trees": [{"name": "a", "size": GIB}]}});
        s.add_quota_trees(1, &add);
        s.settle();
        assert_eq!(s.quota_trees[0].status(), "creating");
        s.never_settle = false;
        s.release_stuck();
        s.settle();
        assert_eq!(s.quota_trees[0].status(), "active");
    }
}
