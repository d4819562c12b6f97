//! `hostile`: a plugin that misbehaves on request, for the sandbox tests.
//! CreateVolume's `name` picks the misdeed (see [`Misdeed`]); every other
//! call answers at once. The host must turn each misdeed into one failed
//! request and keep serving.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

mod escapes;

use exports::wasmcsi::plugin::controller::{
    CreateSnapshotRequest, CreateVolumeRequest, ExpandRequest, ExpandResult, Guest as Controller,
    SnapshotFilter, SnapshotPage, VolumePage,
};
use exports::wasmcsi::plugin::identity::{Features, Guest as Identity, PluginInfo};
use exports::wasmcsi::plugin::node::{
    ExpandRequest as NodeExpandRequest, Guest as Node, PublishRequest, StageRequest, VolumeStats,
};
use wasmcsi::plugin::types::{AccessMode, Error, ErrorCode, KeyValues, Secrets, Snapshot, Volume};
use wasmcsi::plugin::{environment, fs, http, mount};

type Result<T> = std::result::Result<T, Error>;

/// What an earlier call of this instance left behind, if the host ever
/// reused one: a counter in a static and a string on the heap.
static CALLS_SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static LEFT_BEHIND: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

struct Hostile;

export!(Hostile);

fn error(code: ErrorCode, message: impl Into<String>) -> Error {
    Error {
        code,
        message: message.into(),
    }
}

fn param<'a>(params: &'a KeyValues, key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

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

fn misbehave(req: &CreateVolumeRequest) -> Result<Volume> {
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
        // The host's answer is passed on unchanged: the test checks its code.
        "http" | "big-response" => {
            let resp = http::send(&http::Request {
                method: "GET".into(),
                url: url.into(),
                headers: vec![],
                body: vec![],
                timeout_ms: Some(10_000),
            })?;
            Ok(volume(
                &req.name,
                format!("status {} with {} bytes", resp.status, resp.body.len()),
            ))
        }
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
            let stats = fs::statfs(&format!("{root}/../../../etc"))?;
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
        "slow" | "settings" => {
            if req.name == "slow" {
                std::thread::sleep(std::time::Duration::from_secs(3));
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
        PluginInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            features: Features::empty(),
            access_modes: vec![AccessMode::SingleNodeWriter],
            min_volume_bytes: 1 << 20,
        }
    }
}

fn unimplemented<T>() -> Result<T> {
    Err(error(ErrorCode::Unimplemented, "hostile does not do that"))
}

impl Controller for Hostile {
    fn create_volume(req: CreateVolumeRequest) -> Result<Volume> {
        misbehave(&req)
    }
    fn delete_volume(_volume_id: String, _secrets: Secrets) -> Result<()> {
        Ok(())
    }
    fn expand_volume(_req: ExpandRequest) -> Result<ExpandResult> {
        unimplemented()
    }
    fn get_volume(volume_id: String, _secrets: Secrets) -> Result<Volume> {
        Ok(volume(&volume_id, String::new()))
    }
    fn list_volumes(_starting_token: String, _max_entries: u32) -> Result<VolumePage> {
        unimplemented()
    }
    fn get_capacity(_parameters: KeyValues) -> Result<u64> {
        unimplemented()
    }
    fn create_snapshot(_req: CreateSnapshotRequest) -> Result<Snapshot> {
        unimplemented()
    }
    fn delete_snapshot(_snapshot_id: String, _secrets: Secrets) -> Result<()> {
        unimplemented()
    }
    fn list_snapshots(_filter: SnapshotFilter) -> Result<SnapshotPage> {
        unimplemented()
    }
}

impl Node for Hostile {
    fn stage_volume(_req: StageRequest) -> Result<()> {
        unimplemented()
    }
    fn unstage_volume(_volume_id: String, _staging_path: String) -> Result<()> {
        unimplemented()
    }
    /// The volume id picks an escape attempt (see `escapes`).
    fn publish_volume(req: PublishRequest) -> Result<()> {
        escapes::attempt(&req.volume_id, &req.target_path, &req.volume_context)
    }
    fn unpublish_volume(_volume_id: String, _target_path: String) -> Result<()> {
        unimplemented()
    }
    fn expand_volume(_req: NodeExpandRequest) -> Result<u64> {
        unimplemented()
    }
    fn get_volume_stats(
        _volume_id: String,
        _volume_path: String,
        _staging_path: Option<String>,
    ) -> Result<VolumeStats> {
        unimplemented()
    }
}
