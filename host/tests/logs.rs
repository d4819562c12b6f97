//! The driver's text log, as a container runtime stores it (stderr to a
//! file): no terminal colour codes, and no line a plugin can forge.

mod common;
mod hostile;

use common::*;
use hostile::*;
use wasmcsi::proto::*;

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let d = TestDriver::start(Options::default()).await;
    d.client
        .clone()
        .identity
        .probe(ProbeRequest {})
        .await
        .expect("probe");
    let logs = d.logs();
    assert!(logs.contains("local-dir"), "the log says nothing: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in a log written to a file: {:?}",
        logs.lines().find(|l| l.contains('\u{1b}'))
    );
}

/// A line's `key=value` pairs as a logfmt reader takes them: a value is a
/// word, or double-quoted with `\` escapes; words without `=` are skipped.
fn logfmt_pairs(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let (n, mut i) = (chars.len(), 0);
    let mut pairs = Vec::new();
    while i < n {
        while i < n && chars[i] == ' ' {
            i += 1;
        }
        let start = i;
        while i < n && chars[i] != ' ' && chars[i] != '=' {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        if i < n && chars[i] == '=' {
            i += 1;
            let mut value = String::new();
            if i < n && chars[i] == '"' {
                i += 1;
                while i < n && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < n {
                        i += 1;
                    }
                    value.push(chars[i]);
                    i += 1;
                }
                i += 1;
            } else {
                while i < n && chars[i] != ' ' {
                    value.push(chars[i]);
                    i += 1;
                }
            }
            pairs.push((key, value));
        } else {
            while i < n && chars[i] != ' ' {
                i += 1;
            }
        }
    }
    pairs
}

#[test]
fn the_logfmt_reader_sees_a_forged_field() {
    let pairs =
        logfmt_pairs(r#"INFO x: x" plugin="local-dir" forged="1 a" plugin=hostile t="q\"p""#);
    let plugins: Vec<_> = pairs.iter().filter(|(k, _)| k == "plugin").collect();
    assert_eq!(plugins.len(), 2, "{pairs:?}");
    assert_eq!(plugins[0].1, "local-dir");
    assert_eq!(
        pairs.last().unwrap(),
        &("t".to_string(), "q\"p".to_string())
    );
}

/// The hostile plugin logs `x" plugin="local-dir" level=INFO forged="1`,
/// fields that try the same, and lines broken by NEL, U+2028/2029, VT and
/// FF. Every line that carries them is hostile's and only hostile's, and no
/// raw line break of any kind reaches the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_forge_another_plugins_log_line() {
    let s = start(10).await;
    s.d.client
        .clone()
        .controller
        .create_volume(hostile_req("log-forge", None))
        .await
        .expect("log-forge");
    let logs = plain(&s.d.logs());
    let forging: Vec<&str> = logs.lines().filter(|l| l.contains("forged")).collect();
    assert!(
        forging.len() >= 3,
        "the plugin's lines are missing:\n{logs}"
    );
    for line in &forging {
        let pairs = logfmt_pairs(line);
        let plugins: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "plugin")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(plugins, ["hostile"], "a forged field in {line:?}");
        assert!(
            !pairs.iter().any(|(k, _)| k == "forged" || k == "level"),
            "a forged field in {line:?}"
        );
    }
    for sep in ['\u{85}', '\u{2028}', '\u{2029}', '\u{b}', '\u{c}'] {
        assert!(!logs.contains(sep), "a raw {sep:?} in the log");
    }
    assert!(
        !logs.lines().any(|l| l.starts_with("2026-01-01")),
        "a plugin started a line of its own"
    );
}
