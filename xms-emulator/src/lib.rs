//! An XSKY XMS REST API emulator: the operations the xsky-nfs plugin uses,
//! shaped as `shared/xms/swagger.yaml` describes them (paths, wrappers such
//! as `{"fs_quota_tree": {...}}`, field names, status codes), with state
//! (ids, expiring tokens, 202 Accepted then background status transitions,
//! quota accounting: a folder's quota trees cannot exceed it) and fault
//! injection switchable at run time.
//!
//! Default state ([`State::default`]): user `admin`/`admin`; pool
//! `data_pool`; gateway group `gw1` with VIP 127.0.0.1; folder `csi-fs`
//! (100 GiB) exported as the home share `127.0.0.1:/sdsfs/csi-fs/`; client
//! group `k8s-nodes`.
//!
//! Admin endpoints (outside `/v1`): `GET /emulator/state`,
//! `GET|PUT /emulator/faults` (see [`Faults`]), `POST /emulator/expire-tokens`,
//! `GET /emulator/exchanges`.

pub mod server;
pub mod spec;
pub mod state;
pub mod time;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub use server::{Exchange, Faults};
pub use state::{QuotaTree, State, GIB};

/// A running emulator: one state served on one or more listeners.
pub struct Emulator {
    shared: Arc<server::Shared>,
    listeners: Mutex<Vec<Option<server::Listener>>>,
    /// Set when every listener serves HTTPS.
    pki: Option<tls::Pki>,
}

impl Emulator {
    /// Starts serving the default state on `addr` (`127.0.0.1:0` picks a port).
    pub async fn start(addr: &str) -> std::io::Result<Emulator> {
        Emulator::start_with(addr, State::default()).await
    }

    pub async fn start_with(addr: &str, state: State) -> std::io::Result<Emulator> {
        Emulator::serve(addr, state, None).await
    }

    /// Like [`Emulator::start_with`], over HTTPS with a certificate from a
    /// private CA made now ([`Emulator::ca_pem`]).
    pub async fn start_tls(addr: &str, state: State) -> std::io::Result<Emulator> {
        Emulator::serve(addr, state, Some(tls::Pki::generate()?)).await
    }

    async fn serve(addr: &str, state: State, pki: Option<tls::Pki>) -> std::io::Result<Emulator> {
        let shared = Arc::new(server::Shared {
            state: Mutex::new(state),
            faults: Mutex::new(Faults::default()),
            exchanges: Mutex::new(vec![]),
        });
        let acceptor = pki.as_ref().map(|p| p.acceptor.clone());
        let first = server::listen(shared.clone(), addr, acceptor).await?;
        Ok(Emulator {
            shared,
            listeners: Mutex::new(vec![Some(first)]),
            pki,
        })
    }

    /// The private CA's certificate (PEM) when serving HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.pki.as_ref().map(|p| p.ca_pem.as_str())
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.pki.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Serves the same state on another address (another XMS node of the
    /// cluster); returns its index for [`Emulator::stop_listener`].
    pub async fn add_listener(&self, addr: &str) -> std::io::Result<(usize, SocketAddr)> {
        let acceptor = self.pki.as_ref().map(|p| p.acceptor.clone());
        let l = server::listen(self.shared.clone(), addr, acceptor).await?;
        let a = l.addr;
        let mut ls = self.listeners.lock().unwrap();
        ls.push(Some(l));
        Ok((ls.len() - 1, a))
    }

    /// The address of listener `i`, if it is running.
    pub fn addr_of(&self, i: usize) -> Option<SocketAddr> {
        self.listeners
            .lock()
            .unwrap()
            .get(i)?
            .as_ref()
            .map(|l| l.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr_of(0).expect("the first listener runs")
    }

    /// `http(s)://127.0.0.1:PORT` of the first listener.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr())
    }

    /// Stops listener `i`: connections are refused from now on.
    pub fn stop_listener(&self, i: usize) {
        if let Some(slot) = self.listeners.lock().unwrap().get_mut(i) {
            if let Some(l) = slot.take() {
                l.stop();
            }
        }
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.lock().unwrap().clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Runs `f` on the state (after settling due work).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.shared.state.lock().unwrap();
        s.settle();
        f(&mut s)
    }

    pub fn quota_trees(&self) -> Vec<QuotaTree> {
        self.with_state(|s| s.quota_trees.clone())
    }

    pub fn expire_tokens(&self) {
        self.with_state(State::expire_tokens);
    }

    /// Every `/v1` exchange so far.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.exchanges.lock().unwrap().clone()
    }

    pub fn summary(&self) -> Value {
        self.with_state(|s| state_summary(s))
    }
}

/// What `GET /emulator/state` shows: every object a client can make or
/// change, with every field a client can set or see change (sizes,
/// descriptions, statuses, ACLs), so that two dumps compare the whole
/// array.
pub fn state_summary(s: &State) -> Value {
    use state::status_of;
    json!({
        "folders": s.folders.iter().map(|f| json!({
            "id": f.id, "name": f.name, "size": f.size, "pool_id": f.pool_id,
            "description": f.description, "status": status_of(&f.pending),
            "pending": format!("{:?}", f.pending.as_ref().map(|p| &p.0)),
            "fs_gateway_group_id": f.gateway_group_id, "fs_snapshot_id": f.snapshot_id,
            "quota_tree_bytes": s.quota_trees.iter().filter(|t| t.folder_id == f.id).map(|t| t.size).sum::<u64>(),
        })).collect::<Vec<_>>(),
        "quota_trees": s.quota_trees.iter().map(|t| json!({
            "id": t.id, "name": t.name, "fs_folder_id": t.folder_id,
            "size": t.size, "status": t.status(),
            "pending": format!("{:?}", t.pending.as_ref().map(|p| &p.0)),
        })).collect::<Vec<_>>(),
        "nfs_shares": s.shares.iter().map(|sh| json!({
            "id": sh.id, "fs_folder_id": sh.folder_id, "fs_quota_tree_id": sh.quota_tree_id,
            "fs_gateway_group_id": sh.gateway_group_id, "acls": sh.acls,
            "status": status_of(&sh.pending),
        })).collect::<Vec<_>>(),
        "fs_snapshots": s.snapshots.iter().map(|sn| json!({
            "id": sn.id, "name": sn.name, "fs_folder_id": sn.folder_id, "size": sn.size,
            "description": sn.description, "status": status_of(&sn.pending),
        })).collect::<Vec<_>>(),
    })
}
