//! Per-call resource limits: a linear-memory cap whose breach is remembered,
//! so the host can answer RESOURCE_EXHAUSTED rather than a bare trap; and
//! the bound on any plugin-made text the host repeats (log lines, error
//! messages, excerpts of bad values).

use wasmtime::ResourceLimiter;

/// Longest plugin error message passed on (as a gRPC status or a log
/// line), in bytes; a 16 MiB message in the trailers makes clients refuse
/// the whole answer.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Tables are small in practice; this only stops a runaway.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    /// Largest size any memory of this call reached.
    pub high_water: usize,
    /// Set when the plugin tried to grow past `max_bytes`.
    pub exhausted: bool,
}

impl MemoryLimiter {
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            high_water: 0,
            exhausted: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exhausted = true;
            // An error (not `false`) traps at once: a guest allocator that
            // sees a failed grow would just abort with a less clear message.
            return Err(wasmtime::Error::msg(format!(
                "plugin memory limit of {} bytes reached (wanted {desired})",
                self.max_bytes
            )));
        }
        self.high_water = self.high_water.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// `text` made fit to repeat in one log line or status message: control and
/// invisible formatting characters escaped (`\n`, `\u{1b}`, `\u{202e}`), so
/// it can neither forge a line nor hide a part, and cut on a character
/// boundary to at most `max` bytes plus a marker saying how much was cut.
pub fn clip(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for (at, c) in text.char_indices() {
        let start = out.len();
        if c.is_control() || is_invisible(c) {
            if c == '\n' || c == '\r' || c == '\t' {
                out.extend(c.escape_default());
            } else {
                out.extend(c.escape_unicode());
            }
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(start);
            out.push_str(&format!("… [{} more bytes cut]", text.len() - at));
            break;
        }
    }
    out
}

/// Characters that change how text around them shows (bidi overrides,
/// zero-width joiners, the byte-order mark) without showing themselves.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_escapes_and_cuts_with_a_marker() {
        assert_eq!(clip("plain text", 64), "plain text");
        assert_eq!(
            clip("a\nfake line\u{0}\u{202e}", 64),
            "a\\nfake line\\u{0}\\u{202e}"
        );
        let long = "é".repeat(1000);
        let cut = clip(&long, 11);
        assert_eq!(cut, format!("ééééé… [{} more bytes cut]", 2000 - 10));
        assert!(clip(&"x".repeat(16 << 20), 1024).len() < 1100);
    }
}
