//! What a plugin may answer. Every value a plugin returns is checked here
//! before any of it reaches the CO: ids, sizes, volume contexts, snapshot
//! fields, stats and pages. A value that breaks a rule is a bug in the
//! plugin: the call fails with a [`BadAnswer`] (INTERNAL, `csi::status`)
//! naming the plugin and the rule, and quoting at most a short escaped
//! excerpt of the value, never all of it (a 16 MiB id echoed into gRPC
//! trailers makes clients refuse the answer).
//!
//! Not rules here, on purpose: `:` and `/` in ids (the host splits a CSI id
//! at its first `:` only, and plugin names hold none, so
//! `xsky-nfs:fd-7@10.0.0.1:8056` routes right), and relations between
//! stats values (a quota can be over-filled; a filesystem reports what it
//! reports).

use std::fmt::Display;

use crate::text::{clip, is_invisible};
use crate::wit::exports::wasmcsi::plugin::identity::PluginInfo;
use crate::wit::exports::wasmcsi::plugin::node::VolumeStats;
use crate::wit::wasmcsi::plugin::types as wit;

/// A plugin-local id, as the WIT bounds it: with the plugin name (at most
/// 30 bytes) and `:` a CSI id stays within CSI's 128-byte string limit.
pub(crate) const MAX_LOCAL_ID: usize = 96;
/// CSI "Size Limits": a map<string, string> at most 4 KiB in all, a string
/// (here: a key) at most 128 bytes.
const MAX_MAP_BYTES: usize = 4096;
const MAX_KEY: usize = 128;
/// A plugin's page token travels as `<plugin>:<token>`, a CSI string.
const MAX_TOKEN: usize = 96;
/// Most entries the host asks of one plugin page, whatever the CO asked:
/// entries of up to ~4.3 KiB (id and context) keep an answer well under
/// the 4 MiB a gRPC client takes by default.
pub(crate) const MAX_PAGE: u32 = 500;
/// The last second a protobuf Timestamp can hold: 9999-12-31T23:59:59Z.
const MAX_TIMESTAMP: u64 = 253_402_300_799;
/// How much of a bad value an error quotes.
const EXCERPT: usize = 64;
/// A volume condition's message is the plugin's prose: cut, not refused.
const MAX_CONDITION_MESSAGE: usize = 1024;

/// A plugin answer that breaks a rule: a bug in the plugin.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} answered {what} (a bug in the plugin)")]
pub(crate) struct BadAnswer {
    plugin: String,
    what: String,
}

impl BadAnswer {
    /// The whole sentence, as the CO sees it.
    pub(crate) fn message(&self) -> String {
        self.to_string()
    }
}

fn bug(plugin: &str, what: impl Display) -> BadAnswer {
    BadAnswer {
        plugin: plugin.to_string(),
        what: what.to_string(),
    }
}

fn quote(value: &str) -> String {
    format!("\"{}\"", clip(value, EXCERPT))
}

/// A character no id, key or token may hold.
fn bad_in_name(c: char) -> bool {
    c.is_control() || c.is_whitespace() || is_invisible(c)
}

/// A character no value may hold: CSI's banned set for names (control
/// characters but tab, newline and carriage return), and invisible ones.
fn bad_in_value(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || is_invisible(c)
}

/// Why `name` (an id, key or token) breaks the rules, if it does.
fn name_fault(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        return Some("empty".into());
    }
    if name.len() > max {
        return Some(format!("{} bytes long, over {max}", name.len()));
    }
    name.chars()
        .find(|c| bad_in_name(*c))
        .map(|c| format!("holding the character {}", c.escape_unicode()))
}

/// Who the plugin says it is, asked once at load: its version goes into
/// GetPluginInfo's manifest, its minimum size into GetCapacity.
pub(crate) fn plugin_info(plugin: &str, info: &PluginInfo) -> Result<(), BadAnswer> {
    for (what, value) in [("name", &info.name), ("version", &info.version)] {
        if let Some(fault) = name_fault(value, 64) {
            return Err(bug(
                plugin,
                format_args!("a plugin {what} {} {fault}", quote(value)),
            ));
        }
    }
    bytes(plugin, "a minimum volume size of", info.min_volume_bytes).map(|_| ())
}

/// A plugin-local volume or snapshot id.
pub(crate) fn id(plugin: &str, what: &str, id: &str) -> Result<(), BadAnswer> {
    match name_fault(id, MAX_LOCAL_ID) {
        None => Ok(()),
        Some(fault) => Err(bug(plugin, format_args!("a {what} {} {fault}", quote(id)))),
    }
}

/// A byte count the CO gets as an int64.
pub(crate) fn bytes(plugin: &str, what: &str, n: u64) -> Result<i64, BadAnswer> {
    i64::try_from(n).map_err(|_| bug(plugin, format_args!("{what} {n}, over 2^63-1")))
}

/// A volume context: CSI's map limits, sane keys and values, no key twice.
fn context(plugin: &str, pairs: &[(String, String)]) -> Result<(), BadAnswer> {
    let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_MAP_BYTES {
        return Err(bug(
            plugin,
            format_args!(
                "a volume context of {} entries and {total} bytes, over CSI's {MAX_MAP_BYTES}",
                pairs.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (key, value) in pairs {
        if let Some(fault) = name_fault(key, MAX_KEY) {
            return Err(bug(
                plugin,
                format_args!("a volume context key {} {fault}", quote(key)),
            ));
        }
        if let Some(c) = value.chars().find(|c| bad_in_value(*c)) {
            return Err(bug(
                plugin,
                format_args!(
                    "a volume context value {} for {key} holding the character {}",
                    quote(value),
                    c.escape_unicode()
                ),
            ));
        }
        if !seen.insert(key) {
            return Err(bug(
                plugin,
                format_args!("the volume context key {key} twice"),
            ));
        }
    }
    Ok(())
}

fn content_source(plugin: &str, source: Option<&wit::ContentSource>) -> Result<(), BadAnswer> {
    match source {
        None => Ok(()),
        Some(wit::ContentSource::Snapshot(s)) => id(plugin, "content source snapshot id", s),
        Some(wit::ContentSource::Volume(v)) => id(plugin, "content source volume id", v),
    }
}

/// A volume as any call returns it (listed, looked up).
pub(crate) fn volume(plugin: &str, v: &wit::Volume) -> Result<(), BadAnswer> {
    id(plugin, "volume id", &v.volume_id)?;
    bytes(plugin, "a capacity of", v.capacity_bytes)?;
    context(plugin, &v.volume_context)?;
    content_source(plugin, v.content_source.as_ref())
}

/// A volume made for `range`: its capacity within it (0, "unknown" in
/// CSI, only when nothing was required).
pub(crate) fn created_volume(
    plugin: &str,
    v: &wit::Volume,
    range: &wit::CapacityRange,
) -> Result<(), BadAnswer> {
    volume(plugin, v)?;
    let made = v.capacity_bytes;
    if let Some(required) = range.required_bytes {
        if made < required {
            return Err(bug(
                plugin,
                format_args!("a volume of {made} bytes when {required} were required"),
            ));
        }
    }
    if let Some(limit) = range.limit_bytes {
        if made > limit {
            return Err(bug(
                plugin,
                format_args!("a volume of {made} bytes, above limit_bytes {limit}"),
            ));
        }
    }
    Ok(())
}

/// A snapshot as any call returns it.
pub(crate) fn snapshot(plugin: &str, s: &wit::Snapshot) -> Result<(), BadAnswer> {
    id(plugin, "snapshot id", &s.snapshot_id)?;
    id(plugin, "snapshot source volume id", &s.source_volume_id)?;
    if let Some(group) = &s.group_snapshot_id {
        id(plugin, "snapshot's group snapshot id", group)?;
    }
    bytes(plugin, "a snapshot size of", s.size_bytes)?;
    creation_time(plugin, "snapshot", s.creation_time)
}

fn creation_time(plugin: &str, what: &str, seconds: u64) -> Result<(), BadAnswer> {
    if seconds > MAX_TIMESTAMP {
        return Err(bug(
            plugin,
            format_args!("a {what} creation time of {seconds} s after 1970, past the year 9999"),
        ));
    }
    Ok(())
}

/// A group snapshot: valid members, each naming this group; when the
/// sources asked for are known, exactly one member per source.
pub(crate) fn group_snapshot(
    plugin: &str,
    g: &wit::GroupSnapshot,
    sources: Option<&[String]>,
) -> Result<(), BadAnswer> {
    id(plugin, "group snapshot id", &g.group_snapshot_id)?;
    creation_time(plugin, "group snapshot", g.creation_time)?;
    if g.snapshots.is_empty() {
        return Err(bug(plugin, "a group snapshot without snapshots"));
    }
    let mut members = std::collections::HashSet::new();
    for s in &g.snapshots {
        snapshot(plugin, s)?;
        if s.group_snapshot_id.as_deref() != Some(g.group_snapshot_id.as_str()) {
            return Err(bug(
                plugin,
                format_args!(
                    "snapshot {} in group {} naming another group",
                    quote(&s.snapshot_id),
                    quote(&g.group_snapshot_id)
                ),
            ));
        }
        if !members.insert(s.snapshot_id.as_str()) {
            return Err(bug(
                plugin,
                format_args!("snapshot {} twice in one group", quote(&s.snapshot_id)),
            ));
        }
    }
    // CSI: a member not ready MUST make the group not ready.
    if g.ready_to_use && g.snapshots.iter().any(|s| !s.ready_to_use) {
        return Err(bug(
            plugin,
            "a group snapshot ready to use with a member that is not",
        ));
    }
    if let Some(sources) = sources {
        let mut asked: Vec<&str> = sources.iter().map(String::as_str).collect();
        let mut got: Vec<&str> = g
            .snapshots
            .iter()
            .map(|s| s.source_volume_id.as_str())
            .collect();
        asked.sort_unstable();
        got.sort_unstable();
        if asked != got {
            return Err(bug(
                plugin,
                format_args!(
                    "a group snapshot of {} volumes for {} asked (one snapshot per source volume)",
                    got.len(),
                    asked.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The capacity a controller expansion reached: at least what was asked
/// (a target at or below the current size answers the current size).
pub(crate) fn expanded(
    plugin: &str,
    capacity: u64,
    range: &wit::CapacityRange,
) -> Result<i64, BadAnswer> {
    let n = bytes(plugin, "an expanded capacity of", capacity)?;
    match range.required_bytes {
        Some(required) if capacity < required => Err(bug(
            plugin,
            format_args!("an expanded capacity of {capacity} bytes when {required} were required"),
        )),
        _ => Ok(n),
    }
}

/// Volume stats: every count fits an int64. No relation between them is
/// required (used can pass total on an over-filled quota).
pub(crate) fn stats(plugin: &str, s: &VolumeStats) -> Result<(), BadAnswer> {
    let counts = [
        ("total bytes", s.total_bytes),
        ("available bytes", s.available_bytes),
        ("used bytes", s.used_bytes),
        ("total inodes", s.total_inodes),
        ("available inodes", s.available_inodes),
        ("used inodes", s.used_inodes),
    ];
    for (what, n) in counts {
        bytes(plugin, &format!("volume stats with {what}"), n)?;
    }
    Ok(())
}

/// A volume condition's message, escaped and cut.
pub(crate) fn condition_message(message: &str) -> String {
    clip(message, MAX_CONDITION_MESSAGE)
}

/// The page size to ask of a plugin when the CO asked for `max` (0: no
/// limit) and the page so far holds `taken`.
pub(crate) fn page_ask(max: u32, taken: usize) -> u32 {
    let taken = u32::try_from(taken).unwrap_or(u32::MAX);
    if max == 0 {
        MAX_PAGE
    } else {
        max.saturating_sub(taken).min(MAX_PAGE)
    }
}

/// A page: no more entries than asked, a usable next token.
pub(crate) fn page(
    plugin: &str,
    what: &str,
    len: usize,
    asked: u32,
    token: &str,
) -> Result<(), BadAnswer> {
    if len > asked as usize {
        return Err(bug(
            plugin,
            format_args!("{len} {what} when at most {asked} were asked"),
        ));
    }
    match (token.is_empty(), name_fault(token, MAX_TOKEN)) {
        (false, Some(fault)) => Err(bug(
            plugin,
            format_args!("a next-page token {} {fault}", quote(token)),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(id: &str, capacity: u64, context: Vec<(String, String)>) -> wit::Volume {
        wit::Volume {
            volume_id: id.into(),
            capacity_bytes: capacity,
            volume_context: context,
            content_source: None,
        }
    }

    fn range(required: Option<u64>, limit: Option<u64>) -> wit::CapacityRange {
        wit::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    /// The error's message, checked to be short and naming `p` (its gRPC
    /// code, INTERNAL, is `csi::status`'s to give).
    fn refused(result: Result<(), BadAnswer>) -> String {
        let message = result.expect_err("accepted").to_string();
        assert!(message.starts_with("plugin p answered"), "{message}");
        assert!(message.len() < 400, "{message}");
        message
    }

    #[test]
    fn ids_real_plugins_make_pass() {
        for good in [
            "pvc-1a2b",
            "qt-17",
            "fd-7@10.0.0.1:8056,https://x.example/a",
            "sn-3",
            "é",
        ] {
            id("p", "volume id", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        id("p", "volume id", &"a".repeat(96)).unwrap();
    }

    #[test]
    fn bad_ids_are_refused_with_an_excerpt() {
        let huge = refused(id("p", "volume id", &"A".repeat(16 << 20)));
        assert!(huge.contains("16777216 bytes long"), "{huge}");
        assert!(refused(id("p", "volume id", "")).contains("empty"));
        let nul = refused(id("p", "volume id", "a\0b"));
        assert!(nul.contains("\\u{0}"), "{nul}");
        assert!(!nul.contains('\0'));
        assert!(refused(id("p", "volume id", "a b")).contains("\\u{20}"));
        assert!(refused(id("p", "volume id", "a\u{202e}b")).contains("\\u{202e}"));
    }

    #[test]
    fn a_created_volume_fits_its_range() {
        let r = range(Some(10), Some(20));
        created_volume("p", &vol("v", 10, vec![]), &r).unwrap();
        created_volume("p", &vol("v", 20, vec![]), &r).unwrap();
        assert!(refused(created_volume("p", &vol("v", 9, vec![]), &r)).contains("9 bytes when 10"));
        assert!(refused(created_volume("p", &vol("v", 21, vec![]), &r))
            .contains("above limit_bytes 20"));
        let max = refused(created_volume(
            "p",
            &vol("v", u64::MAX, vec![]),
            &range(None, None),
        ));
        assert!(max.contains("over 2^63-1"), "{max}");
        // 0 is CSI's "unknown", fine when nothing was required.
        created_volume("p", &vol("v", 0, vec![]), &range(None, None)).unwrap();
        refused(created_volume(
            "p",
            &vol("v", 0, vec![]),
            &range(Some(1), None),
        ));
    }

    #[test]
    fn volume_contexts_keep_within_csi_limits() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let real = vec![
            kv("mode", "image"),
            kv("fsType", "xfs"),
            kv("node", &"n".repeat(192)),
            kv("share", "/sdsfs/f/t"),
        ];
        volume("p", &vol("v", 1, real)).unwrap();
        let many: Vec<_> = (0..100_000).map(|i| kv(&format!("k{i}"), "v")).collect();
        assert!(refused(volume("p", &vol("v", 1, many))).contains("100000 entries"));
        refused(volume("p", &vol("v", 1, vec![kv("", "x")])));
        refused(volume("p", &vol("v", 1, vec![kv(&"k".repeat(129), "x")])));
        refused(volume("p", &vol("v", 1, vec![kv("k", "a\u{1b}[2J")])));
        refused(volume("p", &vol("v", 1, vec![kv("k", "1"), kv("k", "2")])));
        volume("p", &vol("v", 1, vec![kv("k", "two\nlines\tok")])).unwrap();
    }

    #[test]
    fn snapshots_and_sizes() {
        let snap = |size: u64, time: u64| wit::Snapshot {
            snapshot_id: "sn-1".into(),
            source_volume_id: "fd-1".into(),
            size_bytes: size,
            creation_time: time,
            ready_to_use: true,
            group_snapshot_id: None,
        };
        snapshot("p", &snap(1 << 30, 1_700_000_000)).unwrap();
        snapshot("p", &snap(0, 0)).unwrap();
        refused(snapshot("p", &snap(u64::MAX, 1)));
        refused(snapshot("p", &snap(1, u64::MAX)));
        assert_eq!(expanded("p", 20, &range(Some(10), None)).unwrap(), 20);
        assert!(expanded("p", 5, &range(Some(10), None)).is_err());
        assert!(expanded("p", u64::MAX, &range(None, None)).is_err());
    }

    #[test]
    fn pages_are_no_bigger_than_asked() {
        assert_eq!(page_ask(0, 0), MAX_PAGE);
        assert_eq!(page_ask(10, 3), 7);
        assert_eq!(page_ask(100_000, 0), MAX_PAGE);
        page("p", "volumes", 7, 7, "pvc-b").unwrap();
        refused(page("p", "volumes", 8, 7, ""));
        refused(page("p", "volumes", 1, 7, &"t".repeat(1 << 20)));
        refused(page("p", "volumes", 1, 7, "a\nb"));
    }

    #[test]
    fn stats_fit_int64_but_need_not_add_up() {
        let s = VolumeStats {
            total_bytes: 100,
            available_bytes: 0,
            used_bytes: 150,
            total_inodes: 0,
            available_inodes: 0,
            used_inodes: 0,
            healthy: true,
            message: String::new(),
        };
        stats("p", &s).unwrap();
        refused(stats(
            "p",
            &VolumeStats {
                used_inodes: u64::MAX,
                ..s
            },
        ));
        assert!(condition_message(&"m".repeat(1 << 20)).len() < 1100);
    }
}
