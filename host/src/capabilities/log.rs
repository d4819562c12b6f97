//! The `log` capability: plugin lines into the host's tracing, tagged with
//! the plugin's name. Without the grant, lines are dropped silently.
//!
//! A plugin cannot flood the log: every line is cut (its message, each
//! field's key and value, the number of fields) and escaped, and one call
//! writes at most `limits.logLinesPerCall` lines and `logBytesPerCall`
//! bytes. Past that budget lines are only counted, and a single line says
//! how many were dropped when the call ends (however it ends).
//!
//! The plugin's words are values, never the host's message or field names:
//! a line is `plugin log plugin="p" text="…" fields="k=\"v\" …"`, so in the
//! text format (`crate::logfmt`, which quotes and escapes values) nothing a
//! plugin says can read as another field or another plugin's line.

use serde::Deserialize;
use wasmtime::component::{HasData, Linker};

use super::{CallCaps, HasCallCaps};
use crate::config::Limits;
use crate::text::{clip, quoted};
use crate::wit::wasmcsi::plugin::log::{self as wit, Host, Level};

/// The config's `capabilities.log`: present means granted.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogGrant {}

/// Whether the plugin may log, and under which name: built once per plugin.
pub struct LogCap {
    granted: bool,
    plugin: String,
}

impl LogCap {
    /// The unit's state for `plugin`, granted or not.
    pub fn new(grant: Option<&LogGrant>, plugin: &str) -> LogCap {
        LogCap {
            granted: grant.is_some(),
            plugin: plugin.to_string(),
        }
    }
}

/// The `log` interface as the linker sees it.
pub struct Log;

impl HasData for Log {
    type Data<'a> = LogView<'a>;
}

/// One call's view of `log`: the grant and the call's budget.
pub struct LogView<'a> {
    cap: &'a LogCap,
    budget: &'a mut CallLog,
}

impl<'a> LogView<'a> {
    /// The view of the call's `log` state.
    pub fn of(call: &'a mut CallCaps) -> LogView<'a> {
        LogView {
            cap: &call.grants.log,
            budget: &mut call.log,
        }
    }
}

/// Links `log`.
pub fn add_to_linker<T: HasCallCaps>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, Log>(linker, |t| LogView::of(t.call_caps()))
}

/// Longest message kept of one line, in bytes.
const MAX_MESSAGE: usize = 2048;
/// Fields kept of one line; more are counted in one `more_fields` entry.
const MAX_FIELDS: usize = 16;
const MAX_KEY: usize = 64;
const MAX_VALUE: usize = 512;

/// One call's log budget: what it may still write, and what it lost.
pub struct CallLog {
    plugin: String,
    lines_left: u32,
    bytes_left: u64,
    /// Set once a line did not fit: every later line is dropped too, so the
    /// log shows a whole prefix of what the plugin said, never a patchwork.
    spent: bool,
    dropped_lines: u64,
    dropped_bytes: u64,
    limits: (u32, u64),
}

impl CallLog {
    pub fn new(plugin: &str, limits: &Limits) -> CallLog {
        CallLog {
            plugin: plugin.to_string(),
            lines_left: limits.log_lines_per_call,
            bytes_left: limits.log_bytes_per_call,
            spent: false,
            dropped_lines: 0,
            dropped_bytes: 0,
            limits: (limits.log_lines_per_call, limits.log_bytes_per_call),
        }
    }

    /// Takes `bytes` of the budget for one line; false when it is spent.
    fn take(&mut self, bytes: u64, asked: u64) -> bool {
        if !self.spent && self.lines_left > 0 && bytes <= self.bytes_left {
            self.lines_left -= 1;
            self.bytes_left -= bytes;
            return true;
        }
        self.spent = true;
        self.dropped_lines += 1;
        self.dropped_bytes = self.dropped_bytes.saturating_add(asked);
        false
    }
}

impl Drop for CallLog {
    /// The one line for everything the budget dropped, when the call ends.
    fn drop(&mut self) {
        if self.dropped_lines > 0 {
            let (lines, bytes) = self.limits;
            tracing::warn!(
                plugin = self.plugin.as_str(),
                dropped_lines = self.dropped_lines,
                dropped_bytes = self.dropped_bytes,
                "{} plugin log lines dropped: one call may log {lines} lines and {bytes} bytes (limits.logLinesPerCall, limits.logBytesPerCall)",
                self.dropped_lines
            );
        }
    }
}

/// A plugin's field name as one word: anything but `[A-Za-z0-9_.-]` (a
/// space, `=`, a quote, a control) becomes `_`.
fn field_key(key: &str) -> String {
    clip(key, MAX_KEY)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One line's fields as `key="value"` pairs, each part cut; values quoted
/// with their quotes escaped, so each pair stays one pair.
fn render_fields(fields: &[(String, String)]) -> String {
    let mut out: Vec<String> = fields
        .iter()
        .take(MAX_FIELDS)
        .map(|(k, v)| format!("{}={}", field_key(k), quoted(v, MAX_VALUE)))
        .collect();
    if fields.len() > MAX_FIELDS {
        out.push(format!("more_fields={}", fields.len() - MAX_FIELDS));
    }
    out.join(" ")
}

impl Host for LogView<'_> {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        if !self.cap.granted {
            return;
        }
        let asked = fields.iter().fold(message.len() as u64, |n, (k, v)| {
            n + (k.len() + v.len()) as u64
        });
        let message = clip(&message, MAX_MESSAGE);
        let fields = render_fields(&fields);
        if !self
            .budget
            .take((message.len() + fields.len()) as u64, asked)
        {
            return;
        }
        let plugin = self.cap.plugin.as_str();
        let (text, fields) = (message.as_str(), fields.as_str());
        match level {
            Level::Trace => tracing::trace!(plugin, text, fields, "plugin log"),
            Level::Debug => tracing::debug!(plugin, text, fields, "plugin log"),
            Level::Info => tracing::info!(plugin, text, fields, "plugin log"),
            Level::Warn => tracing::warn!(plugin, text, fields, "plugin log"),
            Level::Error => tracing::error!(plugin, text, fields, "plugin log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(lines: u32, bytes: u64) -> CallLog {
        CallLog::new(
            "p",
            &Limits {
                log_lines_per_call: lines,
                log_bytes_per_call: bytes,
                ..Limits::default()
            },
        )
    }

    #[test]
    fn the_budget_ends_at_lines_or_bytes_and_stays_spent() {
        let mut log = budget(2, 100);
        assert!(log.take(10, 10));
        assert!(log.take(10, 10));
        assert!(!log.take(1, 1), "a third line is over the line budget");
        let mut log = budget(10, 100);
        assert!(log.take(60, 60));
        assert!(!log.take(60, 70), "over the byte budget");
        assert!(
            !log.take(1, 1),
            "a small line after a dropped one is dropped too"
        );
        assert_eq!((log.dropped_lines, log.dropped_bytes), (2, 71));
    }

    #[test]
    fn fields_are_cut_in_number_and_size() {
        let many: Vec<_> = (0..100)
            .map(|i| (format!("k{i}{}", "K".repeat(1000)), "v".repeat(1 << 20)))
            .collect();
        let rendered = render_fields(&many);
        assert!(
            rendered.len() < MAX_FIELDS * (MAX_KEY + MAX_VALUE + 64) + 32,
            "{} bytes",
            rendered.len()
        );
        assert!(
            rendered.ends_with("more_fields=84"),
            "{}",
            &rendered[rendered.len() - 40..]
        );
        assert_eq!(
            render_fields(&[("a\nb".into(), "x\u{1b}[2J".into())]),
            "a_nb=\"x\\u{1b}[2J\""
        );
        assert_eq!(
            render_fields(&[("k x=\"".into(), "v\" plugin=\"local-dir".into())]),
            r#"k_x__="v\" plugin=\"local-dir""#
        );
    }
}
