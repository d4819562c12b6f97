//! Misdeeds about what a plugin holds across reloads, and about the log:
//! calls held long (with descriptors) while the driver reloads the plugin,
//! a version whose `info()` never answers, a log line that tries to pass
//! for another plugin's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmcsi_plugin_sdk::bindings::wasmcsi::plugin::environment;
use wasmcsi_plugin_sdk::bindings::wasmcsi::plugin::log::{self, Level};
use wasmcsi_plugin_sdk::error::fail as error;
use wasmcsi_plugin_sdk::get as param;
use wasmcsi_plugin_sdk::types::*;
use wasmcsi_plugin_sdk::{ErrorCode, Result};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `hold-*`: holds `holdFiles` open files of its root (default 40) for `holdMs`
/// (default 3000), then answers with when it started and ended (ns since
/// the epoch, `start,end`): the test counts the calls that overlapped.
pub fn hold(req: &CreateVolumeRequest, root: &str) -> Result<Volume> {
    let started = now_ns();
    let number = |key: &str, default: u64| {
        param(&req.parameters, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let file = format!("{root}/hold");
    std::fs::write(&file, b"x").map_err(|e| error(ErrorCode::Internal, format!("{file}: {e}")))?;
    let held: Vec<std::fs::File> = (0..number("holdFiles", 40))
        .map_while(|_| std::fs::File::open(&file).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(number("holdMs", 3000)));
    Ok(Volume {
        volume_id: "hold".into(),
        capacity_bytes: 1 << 20,
        volume_context: vec![
            ("detail".into(), format!("{started},{}", now_ns())),
            ("held".into(), held.len().to_string()),
        ],
        content_source: None,
    })
}

/// With the setting `spinInfo: "true"`, `info()` never answers: a version
/// the driver must refuse within its own check deadline.
pub fn spin_if_asked() {
    let asked = environment::settings()
        .iter()
        .any(|(k, v)| k == "spinInfo" && v == "true");
    if asked {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

/// Log lines that try to read as local-dir's: quotes that close the value
/// early, a field value and key doing the same, and Unicode line breaks.
pub fn forge_log() -> Result<Volume> {
    log::log(
        Level::Info,
        "x\" plugin=\"local-dir\" level=INFO forged=\"1",
        &[],
    );
    log::log(
        Level::Info,
        "fields",
        &[
            ("k".into(), "v\" plugin=\"local-dir\" forged=\"2".into()),
            ("plugin=\"local-dir\" forged".into(), "3".into()),
        ],
    );
    for sep in ['\u{85}', '\u{2028}', '\u{2029}', '\u{b}', '\u{c}'] {
        log::log(
            Level::Info,
            &format!("a{sep}2026-01-01T00:00:00Z INFO plugin=\"local-dir\" forged=\"4\""),
            &[],
        );
    }
    Ok(Volume {
        volume_id: "log-forge".into(),
        capacity_bytes: 1 << 20,
        volume_context: vec![],
        content_source: None,
    })
}
