//! HTTP plumbing: listeners (several may serve one state, like the XMS
//! nodes of a cluster), routing of `/v1` to the operations, the admin
//! endpoints under `/emulator/`, fault injection and the exchange record.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::state::{Reply, State};

/// Faults switched on at run time (admin endpoint `PUT /emulator/faults`
/// with any subset of these fields, or [`crate::Emulator::set_faults`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Close every `/v1` connection without answering.
    pub down: bool,
    /// Answer this many next authenticated `/v1` requests (not the login)
    /// with 401, as for a revoked token.
    pub unauthorized_next: u32,
    /// Answer this many next `/v1` requests with `fail_status`.
    pub fail_next: u32,
    /// 500 when unset.
    pub fail_status: u16,
    /// Wait this long before answering each `/v1` request.
    pub delay_ms: u64,
    /// Work accepted with 202 never settles while set.
    pub never_settle: bool,
    /// A capacity race: just before the next AddFSQuotaTrees (CreateFolder)
    /// is served, another client takes this many bytes of its folder (of
    /// the pool) with a quota tree (a folder) named `racer-<id>`.
    pub race_claim_bytes: u64,
}

impl Faults {
    pub fn to_json(&self) -> Value {
        json!({
            "down": self.down, "unauthorized_next": self.unauthorized_next,
            "fail_next": self.fail_next, "fail_status": self.fail_status,
            "delay_ms": self.delay_ms, "never_settle": self.never_settle,
            "race_claim_bytes": self.race_claim_bytes,
        })
    }

    fn merge(&mut self, v: &Value) {
        let b = |k: &str| v.get(k).and_then(Value::as_bool);
        let n = |k: &str| v.get(k).and_then(Value::as_u64);
        if let Some(x) = b("down") {
            self.down = x;
        }
        if let Some(x) = n("unauthorized_next") {
            self.unauthorized_next = x as u32;
        }
        if let Some(x) = n("fail_next") {
            self.fail_next = x as u32;
        }
        if let Some(x) = n("fail_status") {
            self.fail_status = x as u16;
        }
        if let Some(x) = n("delay_ms") {
            self.delay_ms = x;
        }
        if let Some(x) = b("never_settle") {
            self.never_settle = x;
        }
        if let Some(x) = n("race_claim_bytes") {
            self.race_claim_bytes = x;
        }
    }
}

/// One `/v1` request and the answer it got, as the swagger check needs them.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// Path including `/v1`, without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Header names the client sent (lower case).
    pub headers: Vec<String>,
    pub request: Option<Value>,
    pub status: u16,
    pub response: Option<Value>,
    /// Whether a fault produced the answer.
    pub injected: bool,
}

impl Exchange {
    pub fn to_json(&self) -> Value {
        json!({
            "method": self.method, "path": self.path,
            "query": self.query.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "request": self.request, "status": self.status,
            "response": self.response, "injected": self.injected,
        })
    }
}

pub struct Shared {
    pub state: Mutex<State>,
    pub faults: Mutex<Faults>,
    pub exchanges: Mutex<Vec<Exchange>>,
}

impl Shared {
    pub fn set_faults(&self, f: Faults) {
        let mut state = self.state.lock().unwrap();
        let was_stuck = state.never_settle;
        state.never_settle = f.never_settle;
        if was_stuck && !f.never_settle {
            state.release_stuck();
        }
        *self.faults.lock().unwrap() = f;
    }
}

/// A running listener; dropping the stop sender closes it and its
/// connections.
pub struct Listener {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Listener {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `shared` on `addr`, over HTTPS when `tls` is given.
pub async fn listen(
    shared: Arc<Shared>,
    addr: &str,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<Listener> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let conn_stop = stop.subscribe();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped.changed() => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (shared, conn_stop, tls) = (shared.clone(), conn_stop.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    // A client that rejects our certificate ends here.
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => serve(stream, shared, conn_stop).await,
                        Err(e) => eprintln!("xms-emulator: TLS handshake: {e}"),
                    },
                    None => serve(stream, shared, conn_stop).await,
                }
            });
        }
    });
    Ok(Listener { addr, stop })
}

/// One connection, until it ends or the listener stops.
async fn serve<IO>(io: IO, shared: Arc<Shared>, mut conn_stop: watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { handle(shared, req).await }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = conn => {}
        _ = conn_stop.changed() => {}
    }
}

/// A service error makes hyper close the connection without an answer.
#[derive(Debug)]
struct Hangup;
impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: connection closed")
    }
}
impl std::error::Error for Hangup {}

fn respond(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Hangup> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let headers: Vec<String> = req
        .headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .collect();
    let token = req
        .headers()
        .get("xms-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.clone())
        });
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Hangup),
    };
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return Ok(respond(
                    400,
                    &json!({"message": format!("body is not JSON: {e}")}),
                ))
            }
        }
    };

    if let Some(admin) = path.strip_prefix("/emulator/") {
        let (status, v) = admin_op(&shared, &method, admin, body.as_ref());
        return Ok(respond(status, &v));
    }

    // Faults first, as a sick server would.
    let faults = shared.faults.lock().unwrap().clone();
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    if faults.down {
        return Err(Hangup);
    }
    let injected = {
        let mut f = shared.faults.lock().unwrap();
        let login = method == "POST" && path.trim_end_matches('/') == "/v1/auth/tokens";
        if f.unauthorized_next > 0 && !login {
            f.unauthorized_next -= 1;
            Some((401, json!({"message": "fault: token expired"})))
        } else if f.fail_next > 0 {
            f.fail_next -= 1;
            let status = if f.fail_status == 0 {
                500
            } else {
                f.fail_status
            };
            Some((status, json!({"message": "fault: injected failure"})))
        } else {
            None
        }
    };
    let (reply, was_injected) = match injected {
        Some(r) => (r, true),
        None => {
            let q: HashMap<String, String> = query.iter().cloned().collect();
            let race = std::mem::take(&mut shared.faults.lock().unwrap().race_claim_bytes);
            let mut state = shared.state.lock().unwrap();
            state.settle();
            if race > 0 {
                race_claim(&mut state, &method, &path, body.as_ref(), race, &shared);
            }
            (
                route(
                    &mut state,
                    &method,
                    &path,
                    &q,
                    token.as_deref(),
                    body.as_ref(),
                ),
                false,
            )
        }
    };
    let (status, v) = reply;
    shared.exchanges.lock().unwrap().push(Exchange {
        method,
        path,
        query,
        headers,
        request: body,
        status,
        response: Some(v.clone()),
        injected: was_injected,
    });
    Ok(respond(status, &v))
}

/// Runs the `race_claim_bytes` fault when this request is the one it
/// waits for; otherwise keeps it armed.
fn race_claim(
    state: &mut State,
    method: &str,
    path: &str,
    body: Option<&Value>,
    bytes: u64,
    shared: &Shared,
) {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("PUT", ["", "v1", "fs-folders", id, "fs-quota-trees"]) => {
            if let Ok(id) = id.parse() {
                state.race_claim_tree(id, bytes);
                return;
            }
        }
        ("POST", ["", "v1", "fs-folders"]) => {
            let pool = body
                .and_then(|b| b["fs_folder"]["pool_id"].as_i64())
                .unwrap_or(state.pools[0].id);
            state.race_claim_folder(pool, bytes);
            return;
        }
        _ => {}
    }
    shared.faults.lock().unwrap().race_claim_bytes = bytes;
}

fn not_found(method: &str, path: &str) -> Reply {
    (
        404,
        json!({"message": format!("no route for {method} {path}")}),
    )
}

fn route(
    s: &mut State,
    method: &str,
    path: &str,
    q: &HashMap<String, String>,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return not_found(method, path);
    };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let null = Value::Null;
    let body = body.unwrap_or(&null);
    if method == "POST" && parts == ["auth", "tokens"] {
        return s.create_token(body);
    }
    if token.and_then(|t| s.authenticate(t)).is_none() {
        return (401, json!({"message": "missing, invalid or expired token"}));
    }
    let id = |i: usize| parts.get(i).and_then(|p| p.parse::<i64>().ok());
    match (method, parts.as_slice()) {
        ("GET", ["fs-folders"]) => s.list_folders(q),
        ("GET", ["fs-folders", _]) => match id(1) {
            Some(i) => s.get_folder(i),
            None => (400, json!({"message": "fs_folder_id must be an integer"})),
        },
        ("PUT", ["fs-folders", _, "fs-quota-trees"]) => match id(1) {
            Some(i) => s.add_quota_trees(i, body),
            None => (400, json!({"message": "fs_folder_id must be an integer"})),
        },
        ("DELETE", ["fs-folders", _, "fs-quota-trees"]) => match id(1) {
            Some(i) => s.remove_quota_trees(i, body),
            None => (400, json!({"message": "fs_folder_id must be an integer"})),
        },
        ("POST", ["fs-folders"]) => s.create_folder(body),
        ("PATCH", ["fs-folders", _]) => match id(1) {
            Some(i) => s.update_folder(i, body),
            None => (400, json!({"message": "fs_folder_id must be an integer"})),
        },
        ("DELETE", ["fs-folders", _]) => match id(1) {
            Some(i) => s.delete_folder(i),
            None => (400, json!({"message": "fs_folder_id must be an integer"})),
        },
        ("GET", ["fs-nfs-shares"]) => s.list_shares(q),
        ("POST", ["fs-nfs-shares"]) => s.create_share(body),
        ("GET", ["fs-nfs-shares", _]) => match id(1) {
            Some(i) => s.get_share(i),
            None => (
                400,
                json!({"message": "fs_nfs_share_id must be an integer"}),
            ),
        },
        ("DELETE", ["fs-nfs-shares", _]) => match id(1) {
            Some(i) => s.delete_share(i),
            None => (
                400,
                json!({"message": "fs_nfs_share_id must be an integer"}),
            ),
        },
        ("GET", ["fs-snapshots"]) => s.list_snapshots(q),
        ("POST", ["fs-snapshots"]) => s.create_snapshot(body),
        ("GET", ["fs-snapshots", _]) => match id(1) {
            Some(i) => s.get_snapshot(i),
            None => (400, json!({"message": "fs_snapshot_id must be an integer"})),
        },
        ("DELETE", ["fs-snapshots", _]) => match id(1) {
            Some(i) => s.delete_snapshot(i),
            None => (400, json!({"message": "fs_snapshot_id must be an integer"})),
        },
        ("GET", ["pools"]) => s.list_pools(q),
        ("GET", ["pools", _, "samples"]) => match id(1) {
            Some(i) => s.pool_samples(i),
            None => (400, json!({"message": "pool_id must be an integer"})),
        },
        ("GET", ["fs-gateway-groups"]) => s.list_gateway_groups(q),
        ("GET", ["fs-client-groups"]) => s.list_client_groups(q),
        ("GET", ["fs-quota-trees"]) => s.list_quota_trees(q),
        ("GET", ["fs-quota-trees", _]) => match id(1) {
            Some(i) => s.get_quota_tree(i),
            None => (
                400,
                json!({"message": "fs_quota_tree_id must be an integer"}),
            ),
        },
        ("PATCH", ["fs-quota-trees", _]) => match id(1) {
            Some(i) => s.update_quota_tree(i, body),
            None => (
                400,
                json!({"message": "fs_quota_tree_id must be an integer"}),
            ),
        },
        _ => not_found(method, path),
    }
}

/// `/emulator/...`: inspect the state and switch faults.
fn admin_op(shared: &Shared, method: &str, path: &str, body: Option<&Value>) -> Reply {
    match (method, path.trim_end_matches('/')) {
        ("GET", "state") => {
            let mut s = shared.state.lock().unwrap();
            s.settle();
            (200, crate::state_summary(&s))
        }
        ("GET", "faults") => (200, shared.faults.lock().unwrap().to_json()),
        ("PUT", "faults") | ("POST", "faults") => {
            let mut f = shared.faults.lock().unwrap().clone();
            f.merge(body.unwrap_or(&Value::Null));
            shared.set_faults(f.clone());
            (200, f.to_json())
        }
        ("POST", "expire-tokens") => {
            shared.state.lock().unwrap().expire_tokens();
            (200, json!({}))
        }
        ("GET", "exchanges") => {
            let ex = shared.exchanges.lock().unwrap();
            (
                200,
                Value::Array(ex.iter().map(Exchange::to_json).collect()),
            )
        }
        _ => (
            404,
            json!({"message": format!("no admin route {method} /emulator/{path}")}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            parse_query("q=name%3Acsi-fs&limit=2&x"),
            vec![
                ("q".into(), "name:csi-fs".into()),
                ("limit".into(), "2".into()),
                ("x".into(), String::new())
            ]
        );
    }
}
