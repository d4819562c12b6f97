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
    /// 0 until an NFS share exports it.
    pub gateway_group_id: i64,
    pub created: String,
    pub pending: Work,
    /// The snapshot it was cloned from.
    pub snapshot_id: Option<i64>,
    /// Free text the creator (or a later UpdateFolder) set.
    pub description: String,
}

/// Background work on an object: what, and when it is done (`None`: never,
/// while the `never_settle` fault holds).
pub type Work = Option<(Pending, Option<Instant>)>;

pub fn status_of(work: &Work) -> &'static str {
    match work {
        None => "active",
        Some((Pending::Create, _)) => "creating",
        Some((Pending::Resize(_), _)) => "updating",
        Some((Pending::Delete, _)) => "deleting",
    }
}

#[derive(Debug, Clone)]
pub struct FsSnapshot {
    pub id: i64,
    pub name: String,
    pub folder_id: i64,
    pub size: u64,
    pub created: String,
    pub pending: Work,
    /// Free text the creator set.
    pub description: String,
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
        status_of(&self.pending)
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
    pub acls: Vec<Value>,
    pub pending: Work,
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
    pub snapshots: Vec<FsSnapshot>,
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
                pending: None,
                snapshot_id: None,
                description: String::new(),
            }],
            quota_trees: vec![],
            shares: vec![NfsShare {
                id: 1,
                folder_id: 1,
                gateway_group_id: 1,
                quota_tree_id: None,
                acls: vec![],
                pending: None,
            }],
            snapshots: vec![],
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

/// Absent, not null: the swagger's nested objects are not nullable.
fn strip_nulls(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
    }
    v
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
        fn due(work: &mut Work, now: Instant) -> Option<Pending> {
            if matches!(work, Some((_, Some(at))) if *at <= now) {
                work.take().map(|w| w.0)
            } else {
                None
            }
        }
        let mut gone = vec![];
        for f in &mut self.folders {
            match due(&mut f.pending, now) {
                Some(Pending::Resize(n)) => f.size = n,
                Some(Pending::Delete) => gone.push(f.id),
                _ => {}
            }
        }
        self.folders.retain(|f| !gone.contains(&f.id));
        let mut gone = vec![];
        for sh in &mut self.shares {
            if let Some(Pending::Delete) = due(&mut sh.pending, now) {
                gone.push(sh.id);
            }
        }
        self.shares.retain(|sh| !gone.contains(&sh.id));
        let mut gone = vec![];
        for sn in &mut self.snapshots {
            if let Some(Pending::Delete) = due(&mut sn.pending, now) {
                gone.push(sn.id);
            }
        }
        self.snapshots.retain(|sn| !gone.contains(&sn.id));
    }

    /// Lets work accepted while `never_settle` was on finish from now.
    pub fn release_stuck(&mut self) {
        let at = Instant::now() + self.settle_after;
        let works = self
            .quota_trees
            .iter_mut()
            .map(|t| &mut t.pending)
            .chain(self.folders.iter_mut().map(|f| &mut f.pending))
            .chain(self.shares.iter_mut().map(|s| &mut s.pending))
            .chain(self.snapshots.iter_mut().map(|s| &mut s.pending));
        for work in works {
            if let Some((_, when @ None)) = work {
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
        strip_nulls(json!({
            "id": f.id,
            "name": f.name,
            "description": f.description,
            "size": f.size,
            "status": status_of(&f.pending),
            "action_status": if f.pending.is_some() { status_of(&f.pending) } else { "" },
            "shared": self.shares.iter().any(|s| s.folder_id == f.id && s.quota_tree_id.is_none()),
            "share_types": ["NFS"],
            "quota_tree_shared": false,
            "quota_tree_share_types": [],
            "fs_quota_tree_num": trees.count(),
            "fs_snapshot_num": self.snapshots.iter().filter(|s| s.folder_id == f.id).count(),
            "flattened": true,
            "formatted": true,
            "progress": 1.0,
            "qos_enabled": false,
            "pool": pool.map(|p| json!({"id": p.id, "name": p.name})),
            "fs_gateway_group": gw.map(|g| self.gateway_group_view(g)),
            "create": f.created,
            "update": now(),
            "samples": [{ "create": now(), "used_kbyte": used_kbyte as f64 }],
            "fs_snapshot": f.snapshot_id.and_then(|id| self.snapshots.iter().find(|s| s.id == id)).map(|s| json!({"id": s.id, "name": s.name})),
        }))
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
            "status": status_of(&s.pending),
            "action_status": if s.pending.is_some() { status_of(&s.pending) } else { "" },
            "acl_num": s.acls.len(),
            "mapping_num": 0,
            "fs_folder": folder.map(|f| json!({"id": f.id, "name": f.name})),
            "fs_gateway_group": gw.map(|g| json!({"id": g.id, "name": g.name, "vip": g.vip, "vip_mask": 24})),
            "create": folder.map(|f| f.created.clone()).unwrap_or_else(now),
            "update": now(),
        });
        if let Some(t) = tree {
            v["fs_quota_tree"] = json!({"id": t.id, "name": t.name});
        }
        strip_nulls(v)
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

    // ---- folder mode: folders, NFS shares, snapshots ----

    fn snapshot_view(&self, sn: &FsSnapshot) -> Value {
        let folder = self.folders.iter().find(|f| f.id == sn.folder_id);
        let pool = folder.and_then(|f| self.pools.iter().find(|p| p.id == f.pool_id));
        strip_nulls(json!({
            "id": sn.id, "name": sn.name, "size": sn.size, "allocated_size": 0,
            "status": status_of(&sn.pending), "creator": "admin", "description": sn.description,
            "formatted": true,
            "clone_folder_num": self.folders.iter().filter(|f| f.snapshot_id == Some(sn.id)).count(),
            "fs_folder": folder.map(|f| json!({"id": f.id, "name": f.name})),
            "pool": pool.map(|p| json!({"id": p.id, "name": p.name})),
            "create": sn.created, "update": sn.created,
        }))
    }

    pub fn list_pools(&self, query: &HashMap<String, String>) -> Reply {
        let items: Vec<Value> = self
            .pools
            .iter()
            .filter(|p| q_matches(query.get("q"), &p.name))
            .map(|p| {
                json!({"id": p.id, "name": p.name, "status": "active", "pool_type": "replicated",
                            "pool_role": "data", "create": now(), "update": now()})
            })
            .collect();
        (200, json!({ "pools": page(items, query) }))
    }

    /// GET /v1/pools/{id}/samples (GetPoolSamples): one sample, now. The
    /// emulator counts a folder's whole size as used (what its CreateFolder
    /// check enforces).
    pub fn pool_samples(&self, id: i64) -> Reply {
        let Some(pool) = self.pools.iter().find(|p| p.id == id) else {
            return error(404, format!("pool {id} not found"));
        };
        let used: u64 = self
            .folders
            .iter()
            .filter(|f| f.pool_id == id)
            .map(|f| f.size)
            .sum();
        let sample = json!({
            "create": now(),
            "total_kbyte": pool.size / 1024,
            "used_kbyte": used / 1024,
            "used_percent": used as f64 * 100.0 / pool.size.max(1) as f64,
        });
        (200, json!({ "pool_samples": [sample] }))
    }

    /// Another client takes `bytes` of folder `folder_id` (a settled quota
    /// tree named `racer-<id>`), as happens between a client's look at the
    /// free space and its request. Returns the tree's id.
    pub fn race_claim_tree(&mut self, folder_id: i64, bytes: u64) -> i64 {
        let id = self.new_id();
        let stamp = now();
        self.quota_trees.push(QuotaTree {
            id,
            folder_id,
            name: format!("racer-{id}"),
            size: bytes,
            pending: None,
            created: stamp.clone(),
            updated: stamp,
        });
        id
    }

    /// Another client takes `bytes` of pool `pool_id` (a settled folder
    /// named `racer-<id>`). Returns the folder's id.
    pub fn race_claim_folder(&mut self, pool_id: i64, bytes: u64) -> i64 {
        let id = self.new_id();
        self.folders.push(Folder {
            id,
            name: format!("racer-{id}"),
            size: bytes,
            pool_id,
            gateway_group_id: 0,
            created: now(),
            pending: None,
            snapshot_id: None,
            description: String::new(),
        });
        id
    }

    /// POST /v1/fs-folders/ (CreateFolder), optionally from a snapshot.
    pub fn create_folder(&mut self, body: &Value) -> Reply {
        let f = &body["fs_folder"];
        let Some(name) = f["name"].as_str().filter(|n| !n.is_empty()) else {
            return error(400, "fs_folder.name is required");
        };
        if self.folders.iter().any(|x| x.name == name) {
            return error(409, format!("folder {name} already exists"));
        }
        let pool_id = f["pool_id"].as_i64().unwrap_or(self.pools[0].id);
        let Some(pool) = self.pools.iter().find(|p| p.id == pool_id).cloned() else {
            return error(400, format!("pool {pool_id} does not exist"));
        };
        let size = f["size"].as_u64().unwrap_or(0);
        if size == 0 {
            return error(400, "fs_folder.size must be positive");
        }
        let snapshot_id = f["fs_snapshot_id"].as_i64();
        if let Some(sid) = snapshot_id {
            match self.snapshots.iter().find(|s| s.id == sid) {
                Some(sn) if sn.pending.is_none() && size >= sn.size => {}
                Some(_) => {
                    return error(
                        400,
                        format!("snapshot {sid} is not ready or larger than {size}"),
                    )
                }
                None => return error(400, format!("snapshot {sid} does not exist")),
            }
        }
        let used: u64 = self
            .folders
            .iter()
            .filter(|x| x.pool_id == pool_id)
            .map(|x| x.size)
            .sum();
        if used + size > pool.size {
            return error(
                400,
                format!("pool {} has no room for {size} bytes", pool.name),
            );
        }
        let id = self.new_id();
        let pending = Some((Pending::Create, self.settle_at()));
        let folder = Folder {
            id,
            name: name.into(),
            size,
            pool_id,
            gateway_group_id: 0,
            created: now(),
            pending,
            snapshot_id,
            description: f["description"].as_str().unwrap_or_default().to_string(),
        };
        self.folders.push(folder.clone());
        (202, json!({ "fs_folder": self.folder_view(&folder) }))
    }

    /// PATCH /v1/fs-folders/{id} (UpdateFolder): the size.
    pub fn update_folder(&mut self, id: i64, body: &Value) -> Reply {
        let Some(folder) = self.folders.iter().find(|f| f.id == id).cloned() else {
            return error(404, format!("fs folder {id} not found"));
        };
        if folder.pending.is_some() {
            return error(
                409,
                format!("fs folder {id} is {}", status_of(&folder.pending)),
            );
        }
        let req = &body["fs_folder"];
        let description = req["description"].as_str().map(str::to_string);
        let size = match (&req["size"], &description) {
            (Value::Null, Some(_)) => folder.size,
            (v, _) => match v.as_u64() {
                Some(s) => s,
                None => return error(400, "fs_folder.size must be an integer"),
            },
        };
        if size < self.folder_used(id, None) {
            return error(400, "a folder cannot be smaller than its quota trees");
        }
        let pool = self
            .pools
            .iter()
            .find(|p| p.id == folder.pool_id)
            .cloned()
            .unwrap();
        let others: u64 = self
            .folders
            .iter()
            .filter(|x| x.pool_id == pool.id && x.id != id)
            .map(|x| x.size)
            .sum();
        if others + size > pool.size {
            return error(
                400,
                format!("pool {} has no room for {size} bytes", pool.name),
            );
        }
        let at = self.settle_at();
        let f = self.folders.iter_mut().find(|f| f.id == id).unwrap();
        if size != f.size {
            f.pending = Some((Pending::Resize(size), at));
        }
        if let Some(d) = description {
            f.description = d;
        }
        let f = f.clone();
        (202, json!({ "fs_folder": self.folder_view(&f) }))
    }

    /// DELETE /v1/fs-folders/{id} (DeleteFolder): refused while shares,
    /// quota trees or snapshots hang on it.
    pub fn delete_folder(&mut self, id: i64) -> Reply {
        let Some(folder) = self.folders.iter().find(|f| f.id == id).cloned() else {
            return error(404, format!("fs folder {id} not found"));
        };
        if self.shares.iter().any(|s| s.folder_id == id)
            || self.quota_trees.iter().any(|t| t.folder_id == id)
            || self.snapshots.iter().any(|s| s.folder_id == id)
        {
            return error(
                409,
                format!(
                    "fs folder {} still has shares, quota trees or snapshots",
                    folder.name
                ),
            );
        }
        let at = self.settle_at();
        let f = self.folders.iter_mut().find(|f| f.id == id).unwrap();
        f.pending = Some((Pending::Delete, at));
        let f = f.clone();
        (202, json!({ "fs_folder": self.folder_view(&f) }))
    }

    /// POST /v1/fs-nfs-shares/ (CreateFSNFSShare).
    pub fn create_share(&mut self, body: &Value) -> Reply {
        let b = &body["fs_nfs_share"];
        let (Some(folder_id), Some(gw)) = (
            b["fs_folder_id"].as_i64(),
            b["fs_gateway_group_id"].as_i64(),
        ) else {
            return error(400, "fs_folder_id and fs_gateway_group_id are required");
        };
        match self.folders.iter().find(|f| f.id == folder_id) {
            Some(f) if f.pending.is_none() => {}
            Some(_) => return error(409, format!("fs folder {folder_id} is busy")),
            None => return error(400, format!("fs folder {folder_id} does not exist")),
        }
        if !self.gateway_groups.iter().any(|g| g.id == gw) {
            return error(400, format!("gateway group {gw} does not exist"));
        }
        let tree = b["fs_quota_tree_id"].as_i64();
        if self
            .shares
            .iter()
            .any(|s| s.folder_id == folder_id && s.quota_tree_id == tree)
        {
            return error(409, "that folder (or quota tree) is shared already");
        }
        let acls: Vec<Value> = b["fs_nfs_share_acls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for acl in &acls {
            if let Some(cg) = acl["fs_client_group_id"].as_i64() {
                if !self.client_groups.iter().any(|c| c.id == cg) {
                    return error(400, format!("client group {cg} does not exist"));
                }
            }
        }
        let id = self.new_id();
        let share = NfsShare {
            id,
            folder_id,
            gateway_group_id: gw,
            quota_tree_id: tree,
            acls,
            pending: Some((Pending::Create, self.settle_at())),
        };
        self.shares.push(share.clone());
        if let Some(f) = self.folders.iter_mut().find(|f| f.id == folder_id) {
            f.gateway_group_id = gw;
        }
        (202, json!({ "fs_nfs_share": self.share_view(&share) }))
    }

    pub fn get_share(&self, id: i64) -> Reply {
        match self.shares.iter().find(|s| s.id == id) {
            Some(sh) => (200, json!({ "fs_nfs_share": self.share_view(sh) })),
            None => error(404, format!("fs nfs share {id} not found")),
        }
    }

    pub fn delete_share(&mut self, id: i64) -> Reply {
        let at = self.settle_at();
        let Some(sh) = self.shares.iter_mut().find(|s| s.id == id) else {
            return error(404, format!("fs nfs share {id} not found"));
        };
        sh.pending = Some((Pending::Delete, at));
        let sh = sh.clone();
        (202, json!({ "fs_nfs_share": self.share_view(&sh) }))
    }

    /// POST /v1/fs-snapshots/ (CreateFSSnapshot).
    pub fn create_snapshot(&mut self, body: &Value) -> Reply {
        let b = &body["fs_snapshot"];
        let (Some(folder_id), Some(name)) = (
            b["fs_folder_id"].as_i64(),
            b["name"].as_str().filter(|n| !n.is_empty()),
        ) else {
            return error(400, "fs_folder_id and name are required");
        };
        let Some(folder) = self.folders.iter().find(|f| f.id == folder_id).cloned() else {
            return error(400, format!("fs folder {folder_id} does not exist"));
        };
        if self
            .snapshots
            .iter()
            .any(|s| s.folder_id == folder_id && s.name == name)
        {
            return error(409, format!("snapshot {name} of {} exists", folder.name));
        }
        let id = self.new_id();
        let sn = FsSnapshot {
            id,
            name: name.into(),
            folder_id,
            size: folder.size,
            created: now(),
            pending: Some((Pending::Create, self.settle_at())),
            description: b["description"].as_str().unwrap_or_default().to_string(),
        };
        self.snapshots.push(sn.clone());
        (202, json!({ "fs_snapshot": self.snapshot_view(&sn) }))
    }

    pub fn get_snapshot(&self, id: i64) -> Reply {
        match self.snapshots.iter().find(|s| s.id == id) {
            Some(sn) => (200, json!({ "fs_snapshot": self.snapshot_view(sn) })),
            None => error(404, format!("fs snapshot {id} not found")),
        }
    }

    pub fn list_snapshots(&self, query: &HashMap<String, String>) -> Reply {
        let folder = match id_param(query, "fs_folder_id") {
            Ok(f) => f,
            Err(e) => return e,
        };
        let items: Vec<Value> = self
            .snapshots
            .iter()
            .filter(|s| folder.is_none_or(|f| s.folder_id == f))
            .filter(|s| q_matches(query.get("q"), &s.name))
            .map(|s| self.snapshot_view(s))
            .collect();
        (200, json!({ "fs_snapshots": page(items, query) }))
    }

    pub fn delete_snapshot(&mut self, id: i64) -> Reply {
        if self
            .folders
            .iter()
            .any(|f| f.snapshot_id == Some(id) && f.pending.is_some())
        {
            return error(409, format!("fs snapshot {id} is being cloned"));
        }
        let at = self.settle_at();
        let Some(sn) = self.snapshots.iter_mut().find(|s| s.id == id) else {
            return error(404, format!("fs snapshot {id} not found"));
        };
        sn.pending = Some((Pending::Delete, at));
        let sn = sn.clone();
        (202, json!({ "fs_snapshot": self.snapshot_view(&sn) }))
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
