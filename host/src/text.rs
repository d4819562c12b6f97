//! Plugin-made text the host repeats (log lines, error messages, excerpts
//! of bad values), made safe to repeat: escaped and bounded.

/// `text` made fit to repeat in one log line or status message: control and
/// invisible formatting characters escaped (`\n`, `\u{1b}`, `\u{202e}`), so
/// it can neither forge a line nor hide a part, and cut on a character
/// boundary to at most `max` bytes plus a marker saying how much was cut.
pub fn clip(text: &str, max: usize) -> String {
    escaped(text, max, false)
}

/// Like `clip`, and also `\` and `"` escaped, inside double quotes: a value
/// that reads as one field of a `key="value"` line, whatever it holds.
pub fn quoted(text: &str, max: usize) -> String {
    format!("\"{}\"", escaped(text, max, true))
}

fn escaped(text: &str, max: usize, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for (at, c) in text.char_indices() {
        let start = out.len();
        if needs_escape(c) {
            if c == '\n' || c == '\r' || c == '\t' {
                out.extend(c.escape_default());
            } else {
                out.extend(c.escape_unicode());
            }
        } else if quotes && (c == '"' || c == '\\') {
            out.push('\\');
            out.push(c);
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

/// Characters never repeated as they are: controls (C0, DEL, C1 with NEL),
/// line and paragraph separators, and invisible formatting characters.
pub fn needs_escape(c: char) -> bool {
    c.is_control() || is_line_break(c) || is_invisible(c)
}

/// Unicode line and paragraph separators that are not controls: viewers and
/// JavaScript break lines at them.
pub fn is_line_break(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// Characters that change how text around them shows (bidi marks,
/// overrides and isolates, zero-width and invisible operators, the soft
/// hyphen, the byte-order mark, interlinear annotations) without showing
/// themselves: Unicode's format characters (Cf) that text can carry.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

#[cfg(test)]
mod tests {
    use super::{clip, quoted};

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

    #[test]
    fn quoted_values_cannot_end_early_or_break_the_line() {
        assert_eq!(
            quoted("x\" plugin=\"local-dir\" forged=\"1", 64),
            r#""x\" plugin=\"local-dir\" forged=\"1""#
        );
        assert_eq!(quoted("a\\", 64), r#""a\\""#);
        for sep in [
            '\u{85}', '\u{2028}', '\u{2029}', '\u{b}', '\u{c}', '\u{2066}', '\u{61c}',
        ] {
            let q = quoted(&format!("a{sep}b"), 64);
            assert!(!q.contains(sep), "{sep:?} kept in {q}");
            assert!(q.contains("\\u{"), "{q}");
        }
    }
}
