//! Fields of the text log, written so that no value can forge another
//! field or another line. tracing's default text format writes a `%value`
//! (Display) and the message as they are: a value holding
//! `" plugin="local-dir"` would read as a field of its own. Here every
//! value that is not a plain word is written quoted with `\` and `"`
//! escaped (`crate::text::quoted`), and line breaks, controls and invisible
//! characters are escaped everywhere, the message included. (The JSON
//! format escapes by itself.)

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The text format's field formatter (`fmt().fmt_fields(TextFields)`).
pub struct TextFields;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> TextVisitor<'a> {
        TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

pub struct TextVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

/// A value written bare reads as one word: nothing in it ends a field.
fn is_plain_word(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+,%".contains(c))
}

impl TextVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str, always_quote: bool) {
        if self.result.is_err() {
            return;
        }
        let pad = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = match field.name() {
            // The host's own words: only what could break the line is escaped.
            "message" => write!(self.writer, "{pad}{}", crate::text::clip(value, usize::MAX)),
            name if !always_quote && is_plain_word(value) => {
                write!(self.writer, "{pad}{name}={value}")
            }
            name => write!(
                self.writer,
                "{pad}{name}={}",
                crate::text::quoted(value, usize::MAX)
            ),
        };
    }
}

impl Visit for TextVisitor<'_> {
    /// Strings are always quoted, as tracing's own format does.
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, field.name() != "message");
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"), false);
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What one event writes through `TextFields`.
    fn line(event: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(TextFields)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn display_values_and_messages_cannot_forge_fields_or_lines() {
        let forged = "x\" plugin=\"local-dir\" level=INFO forged=\"1";
        let out = line(
            || tracing::info!(plugin = "hostile", detail = %forged, n = 3, word = %"Compiled", "said\u{2028}INFO next"),
        );
        assert_eq!(out.lines().count(), 1, "{out}");
        assert_eq!(
            out.trim_end(),
            r#" INFO said\u{2028}INFO next plugin="hostile" detail="x\" plugin=\"local-dir\" level=INFO forged=\"1" n=3 word=Compiled"#
        );
    }
}
