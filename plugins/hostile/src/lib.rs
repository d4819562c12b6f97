//! `hostile`: a plugin that misbehaves on request, for the sandbox tests.
//! CreateVolume's `name` picks the misdeed (see `misbehave`); so do
//! CreateSnapshot's name, ListVolumes' starting token, GetCapacity's
//! `answer` parameter and the volume id of NodeGetVolumeStats, for the
//! garbage those calls can return. Every other call answers at once. The
//! host must turn each misdeed into one failed request and keep serving.

mod escapes;
mod reloads;

use wasmcsi_plugin_sdk::bindings::wasmcsi::plugin::log::{self, Level};
use wasmcsi_plugin_sdk::bindings::wasmcsi::plugin::{environment, fs_info, mount};
use wasmcsi_plugin_sdk::error::fail as error;
use wasmcsi_plugin_sdk::get as param;
use wasmcsi_plugin_sdk::http;
use wasmcsi_plugin_sdk::types::*;
use wasmcsi_plugin_sdk::{Controller, ErrorCode, Identity, Node, Result};

/// What an earlier call of this instance left behind, if the host ever
/// reused one: a counter in a static and a string on the heap.
static CALLS_SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static LEFT_BEHIND: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

struct Hostile;

wasmcsi_plugin_sdk::export!(Hostile);

/// Deep recursion the optimiser cannot turn into a loop.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64, buf: &mut [u8; 256]) -> u64 {
    let mut local = [0u8; 256];
    local[(depth % 256) as usize] = buf[(depth % 256) as usize].wrapping_add(1);
    std::hint::black_box(&mut local);
    recurse(depth + 1, &mut local) + u64::from(local[0])
}

fn volume(id: &str, detail: String) -> Volume {
    Volume {
        volume_id: id.into(),
        capacity_bytes: 1 << 20,
        volume_context: vec![("detail".into(), detail)],
        content_source: None,
    }
}

/// `prefix` and then 16 MiB of `fill`, in one allocation (the plugin's
/// memory limit leaves no room for a second copy).
fn big(prefix: &str, fill: char) -> String {
    let mut s = String::with_capacity(prefix.len() + (16 << 20));
    s.push_str(prefix);
    s.extend(std::iter::repeat_n(fill, 16 << 20));
    s
}

/// Opens files under the root through WASI until refused, keeping them
/// all. A host that bounds the call's handles ends the call (a trap) or
/// refuses an open; then the call holds what it got for a while, so that
/// good calls run while its descriptors are held.
fn flood_descriptors(root: &str) -> Result<Volume> {
    let dir = format!("{root}/fd-flood");
    let _ = std::fs::create_dir_all(&dir);
    let file = format!("{dir}/file");
    std::fs::write(&file, b"x").map_err(|e| error(ErrorCode::Internal, format!("{file}: {e}")))?;
    let mut held = Vec::new();
    let refusal = loop {
        match std::fs::File::open(&file) {
            Ok(f) => held.push(f),
            Err(e) => break e,
        }
        if held.len() >= 1_000_000 {
            return Ok(volume("fd-flood", format!("held {} files", held.len())));
        }
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    Err(error(
        ErrorCode::ResourceExhausted,
        format!("refused after {} open files: {refusal}", held.len()),
    ))
}

/// Log lines that are too many, too long, with too many and too long
/// fields, and one that tries to forge a line of its own.
fn flood_log() -> Result<Volume> {
    let message = format!("flood{}", "m".repeat(64 << 10));
    let big_fields: Vec<(String, String)> = (0..8)
        .map(|i| (format!("key{i}{}", "k".repeat(1000)), "v".repeat(64 << 10)))
        .collect();
    log::log(
        Level::Error,
        "forged\n2026-01-01T00:00:00Z ERROR wasmcsi: FORGED-LINE\u{1b}[2J",
        &[("k\nFORGED-FIELD".into(), "v\nFORGED-VALUE".into())],
    );
    for _ in 0..500 {
        log::log(Level::Warn, &message, &big_fields);
    }
    let many: Vec<(String, String)> = (0..50_000).map(|i| (format!("f{i}"), "v".into())).collect();
    for _ in 0..5 {
        log::log(Level::Info, "many fields", &many);
    }
    for _ in 0..20_000 {
        log::log(Level::Info, "short", &[]);
    }
    Ok(volume("log-flood", "logged".into()))
}

/// A volume whose id, capacity or context is garbage.
fn garbage(name: &str) -> Option<Volume> {
    let mut v = volume(name, String::new());
    match name {
        "huge-id" => v.volume_id = "A".repeat(16 << 20),
        "control-id" => v.volume_id = "bad\0id\nFORGED".into(),
        "empty-id" => v.volume_id = String::new(),
        "max-capacity" => v.capacity_bytes = u64::MAX,
        "small-capacity" => v.capacity_bytes = 1,
        "big-context" => {
            v.volume_context = (0..100_000)
                .map(|i| (format!("key{i}"), "value".into()))
                .collect()
        }
        "big-context-value" => v.volume_context = vec![("k".into(), "v".repeat(1 << 20))],
        "control-context" => v.volume_context = vec![("k".into(), "a\u{1b}[2J".into())],
        "bad-source" => v.content_source = Some(ContentSource::Volume("x\0y".into())),
        _ => return None,
    }
    Some(v)
}

fn misbehave(req: &CreateVolumeRequest) -> Result<Volume> {
    if let Some(v) = garbage(&req.name) {
        return Ok(v);
    }
    let url = param(&req.parameters, "url").unwrap_or("http://127.0.0.1:9/");
    let root = environment::root().unwrap_or_default();
    match req.name.as_str() {
        "null" => Ok(volume("null", String::new())),
        "loop" => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "recursion" => {
            let n = recurse(0, &mut [0u8; 256]);
            Ok(volume("recursion", n.to_string()))
        }
        "panic" => panic!("hostile plugin panics on purpose"),
        "fd-flood" => flood_descriptors(&root),
        "log-flood" => flood_log(),
        "big-error" => Err(error(
            ErrorCode::Internal,
            big("big error\nFORGED-ERROR ", 'E'),
        )),
        // The host's answer is passed on unchanged: the test checks its code.
        "http" | "big-response" | "big-request" => {
            // A body past the host's limit, to an allowed origin.
            let body = if req.name == "big-request" {
                vec![b'x'; 9 << 20]
            } else {
                vec![]
            };
            let resp = http::send(&http::Request {
                method: if body.is_empty() { "GET" } else { "POST" }.into(),
                url: url.into(),
                headers: vec![],
                body,
                timeout: Some(std::time::Duration::from_secs(10)),
            })?;
            Ok(volume(
                &req.name,
                format!("status {} with {} bytes", resp.status, resp.body.len()),
            ))
        }
        "http-flood" => http_flood(url, 12, true),
        // An off-the-shelf wasi:http client (waki, built on wasi:http
        // 0.2.2): the host's grant holds for it as for any other.
        "waki" => {
            let resp = waki::Client::new()
                .get(url)
                .connect_timeout(std::time::Duration::from_secs(5))
                .send()
                .map_err(|e| error(ErrorCode::Unavailable, format!("waki: {e:#}")))?;
            let status = resp.status_code();
            let body = resp
                .body()
                .map_err(|e| error(ErrorCode::Unavailable, format!("waki body: {e:#}")))?;
            Ok(volume(
                "waki",
                format!("status {status} with {} bytes", body.len()),
            ))
        }
        // Hundreds of requests the host refuses, one after the other.
        "http-spam" => http_flood(url, 500, false),
        "mount" => {
            mount::bind(&root, "/etc/wasmcsi-hostile", false)?;
            Ok(volume("mount", "bound onto /etc".into()))
        }
        // A link inside the root pointing out of it (the test puts it
        // there, as a pod writing into a volume could): neither WASI nor
        // the host's mount check may follow it out.
        "symlink" => {
            let link = format!("{root}/mnt/escape");
            if let Ok(bytes) = std::fs::read(format!("{link}/passwd")) {
                return Ok(volume(
                    "symlink",
                    format!("read {} bytes of /etc/passwd", bytes.len()),
                ));
            }
            mount::bind(&root, &format!("{link}/wasmcsi-hostile"), false)?;
            Ok(volume("symlink", "bound through the link".into()))
        }
        "dotdot" => {
            let stats = fs_info::statfs(&format!("{root}/../../../etc"))?;
            Ok(volume("dotdot", format!("{} bytes", stats.total_bytes)))
        }
        "passwd" => match std::fs::read("/etc/passwd") {
            Ok(bytes) => Ok(volume("passwd", format!("read {} bytes", bytes.len()))),
            Err(e) => Err(error(
                ErrorCode::PermissionDenied,
                format!("reading /etc/passwd: {e}"),
            )),
        },
        // Reports what a previous call left in this instance's memory, then
        // leaves something for the next; and reads and writes a file under
        // the root through WASI (the preopen). Every call must see a fresh
        // memory and the file from the last call.
        "leftovers" => {
            let calls = CALLS_SEEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let previous = LEFT_BEHIND
                .lock()
                .unwrap()
                .replace(format!("secret of call {calls}"));
            let file = format!("{root}/leftovers");
            let runs = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(0)
                + 1;
            std::fs::write(&file, runs.to_string())
                .map_err(|e| error(ErrorCode::Internal, format!("writing {file}: {e}")))?;
            Ok(volume(
                "leftovers",
                format!("calls={calls} previous={previous:?} runs={runs}"),
            ))
        }
        // Sleeps, then answers with the settings it sees: a reload in the
        // meantime must not change what this call sees.
        // Distinct names: the host serializes calls for one name.
        held if held.starts_with("hold-") => reloads::hold(req, &root),
        "log-forge" => reloads::forge_log(),
        "slow" | "settings" => {
            if req.name == "slow" {
                std::thread::sleep(std::time::Duration::from_secs(8));
            }
            Ok(volume(&req.name, settings_text()))
        }
        other => Err(error(
            ErrorCode::InvalidArgument,
            format!("no misdeed called {other:?}"),
        )),
    }
}

fn settings_text() -> String {
    environment::settings()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Identity for Hostile {
    fn info() -> PluginInfo {
        reloads::spin_if_asked();
        // Capacity only when asked: the reload tests tell hostile from
        // local-dir by GetCapacity being unimplemented.
        let capacity = if environment::settings()
            .iter()
            .any(|(k, v)| k == "reportCapacity" && v == "true")
        {
            Features::GET_CAPACITY
        } else {
            Features::empty()
        };
        PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Only for the garbage these calls can return; each answers
            // plainly unless its misdeed is asked for.
            features: Features::LIST_VOLUMES
                | Features::SNAPSHOTS
                | Features::GROUP_SNAPSHOTS
                | Features::VOLUME_STATS
                | capacity,
            access_modes: vec![AccessMode::SingleNodeWriter],
            min_volume_bytes: 1 << 20,
        }
    }
}

impl Controller for Hostile {
    fn create_volume(req: CreateVolumeRequest) -> Result<Volume> {
        misbehave(&req)
    }
    fn delete_volume(_volume_id: String, _secrets: Secrets) -> Result<()> {
        Ok(())
    }
    fn get_volume(volume_id: String, _secrets: Secrets) -> Result<Volume> {
        Ok(volume(&volume_id, String::new()))
    }
    /// The starting token picks the misdeed; none: an empty page.
    fn list_volumes(starting_token: String, max_entries: u32) -> Result<VolumePage> {
        let (count, next_token) = match starting_token.as_str() {
            "too-many" => (max_entries as usize + 10, String::new()),
            "huge-token" => (1, "T".repeat(1 << 20)),
            "control-token" => (1, "t\nFORGED".into()),
            _ => (0, String::new()),
        };
        let volumes = (0..count)
            .map(|i| volume(&format!("v{i}"), String::new()))
            .collect();
        Ok(VolumePage {
            volumes,
            next_token,
        })
    }
    /// With the `reportCapacity` setting: `answer=max` asks for a capacity no
    /// int64 holds.
    fn get_capacity(parameters: KeyValues) -> Result<u64> {
        match param(&parameters, "answer") {
            Some("max") => Ok(u64::MAX),
            _ => Ok(1 << 30),
        }
    }
    /// The name picks the misdeed; any other name: a sane snapshot.
    fn create_snapshot(req: CreateSnapshotRequest) -> Result<Snapshot> {
        let mut s = Snapshot {
            snapshot_id: format!("sn-{}", req.name),
            source_volume_id: req.source_volume_id,
            size_bytes: 1 << 20,
            creation_time: 1_700_000_000,
            ready_to_use: true,
            group_snapshot_id: None,
        };
        match req.name.as_str() {
            "snap-max-size" => s.size_bytes = u64::MAX,
            "snap-far-future" => s.creation_time = u64::MAX,
            "snap-bad-source" => s.source_volume_id = "\u{202e}gro".into(),
            "snap-huge-id" => s.snapshot_id = "S".repeat(16 << 20),
            _ => {}
        }
        Ok(s)
    }
    fn delete_snapshot(_snapshot_id: String, _secrets: Secrets) -> Result<()> {
        Ok(())
    }
    fn list_snapshots(_filter: SnapshotFilter) -> Result<SnapshotPage> {
        Ok(SnapshotPage {
            snapshots: vec![],
            next_token: String::new(),
        })
    }
    /// The name picks the misdeed; any other name: a sane group.
    fn create_group_snapshot(req: CreateGroupSnapshotRequest) -> Result<GroupSnapshot> {
        let group = format!("gs-{}", req.name);
        let mut snapshots: Vec<Snapshot> = req
            .source_volume_ids
            .iter()
            .map(|v| Snapshot {
                snapshot_id: format!("gsn-{v}"),
                source_volume_id: v.clone(),
                size_bytes: 1 << 20,
                creation_time: 1_700_000_000,
                ready_to_use: true,
                group_snapshot_id: Some(group.clone()),
            })
            .collect();
        match req.name.as_str() {
            "group-other-group" => snapshots[0].group_snapshot_id = Some("gs-elsewhere".into()),
            "group-member-missing" => drop(snapshots.pop()),
            "group-unready-member" => snapshots[0].ready_to_use = false,
            _ => {}
        }
        Ok(GroupSnapshot {
            group_snapshot_id: group,
            snapshots,
            creation_time: 1_700_000_000,
            ready_to_use: true,
        })
    }
    fn delete_group_snapshot(
        _group_snapshot_id: String,
        _snapshot_ids: Vec<String>,
        _secrets: Secrets,
    ) -> Result<()> {
        Ok(())
    }
    fn get_group_snapshot(
        group_snapshot_id: String,
        _snapshot_ids: Vec<String>,
        _secrets: Secrets,
    ) -> Result<GroupSnapshot> {
        // Answers about another group than the one asked.
        Ok(GroupSnapshot {
            group_snapshot_id: format!("{group_snapshot_id}-other"),
            snapshots: vec![Snapshot {
                snapshot_id: "gsn-x".into(),
                source_volume_id: "x".into(),
                size_bytes: 1 << 20,
                creation_time: 1_700_000_000,
                ready_to_use: true,
                group_snapshot_id: Some(format!("{group_snapshot_id}-other")),
            }],
            creation_time: 1_700_000_000,
            ready_to_use: true,
        })
    }
}

/// Stage, unstage, unpublish and expand: the SDK's UNIMPLEMENTED.
impl Node for Hostile {
    /// The volume id picks an escape attempt (see `escapes`).
    fn publish_volume(req: PublishRequest) -> Result<()> {
        escapes::attempt(&req.volume_id, &req.target_path, &req.volume_context)
    }
    /// The volume id picks the misdeed; any other: sane stats.
    fn get_volume_stats(
        volume_id: String,
        _volume_path: String,
        _staging_path: Option<String>,
    ) -> Result<VolumeStats> {
        let mut stats = VolumeStats {
            total_bytes: 1 << 30,
            available_bytes: 1 << 29,
            used_bytes: 1 << 29,
            total_inodes: 1000,
            available_inodes: 500,
            used_inodes: 500,
            healthy: true,
            message: String::new(),
        };
        match volume_id.as_str() {
            "stats-max" => stats.used_bytes = u64::MAX,
            "stats-big-message" => {
                stats.healthy = false;
                stats.message = big("sick\nFORGED ", 's');
            }
            _ => {}
        }
        Ok(stats)
    }
}

/// Many requests through raw wasi:http (no SDK), as a plugin written from
/// the WIT alone could make them. `at_once`: all started before any is
/// waited for, every answer held unread, so the host must bound what it
/// keeps for the call; otherwise one after the other. Answers how many
/// came back whole and how many the host refused.
fn http_flood(url: &str, requests: usize, at_once: bool) -> Result<Volume> {
    use wasip2::http::outgoing_handler::{self, FutureIncomingResponse};
    use wasip2::http::types::{Fields, IncomingResponse, OutgoingRequest, Scheme};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (mut pending, mut held, mut refused) = (vec![], vec![], 0);
    let wait = |f: FutureIncomingResponse, held: &mut Vec<IncomingResponse>| {
        f.subscribe().block();
        match f.get() {
            Some(Ok(Ok(resp))) => held.push(resp),
            _ => return 1,
        }
        0
    };
    for _ in 0..requests {
        let req = OutgoingRequest::new(Fields::new());
        let _ = req.set_scheme(Some(&Scheme::Http));
        let _ = req.set_authority(Some(authority));
        let _ = req.set_path_with_query(Some(path));
        match outgoing_handler::handle(req, None) {
            Ok(f) if at_once => pending.push(f),
            Ok(f) => refused += wait(f, &mut held),
            Err(_) => refused += 1,
        }
    }
    for f in pending {
        refused += wait(f, &mut held);
    }
    Ok(volume(
        "http-flood",
        format!("{} whole, {refused} refused", held.len()),
    ))
}
