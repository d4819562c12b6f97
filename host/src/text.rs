//! Plugin-made text the host repeats (log lines, error messages, excerpts
//! of bad values), made safe to repeat: escaped and bounded.

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
