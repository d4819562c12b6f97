//! What the tests take from the project's shared reference data (the XMS
//! swagger, csi-sanity), found through one variable: `WASMCSI_SHARED`,
//! default `../shared` beside the repo (a relative value is taken from the
//! repo root). A clone without it still runs every other check: outside CI
//! a missing file is reported loudly and its check skipped; with `CI=true`
//! it fails the test.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The shared reference data directory.
pub fn shared_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("WASMCSI_SHARED") {
        Some(dir) if !dir.is_empty() => repo.join(dir),
        _ => repo.join("../shared"),
    }
}

/// `relative` under the shared directory, if it is there. When it is not:
/// in CI (`CI=true`) the test fails; elsewhere the run says what `check`
/// will not verify and the caller skips it.
pub fn shared_file(relative: &str, check: &str) -> Option<PathBuf> {
    let path = shared_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} is missing (set WASMCSI_SHARED to the shared reference data)",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}: CI needs it for {check}");
    }
    // Straight to stderr: libtest would swallow eprintln! of a passing test.
    let _ = writeln!(std::io::stderr(), "NOT CHECKED: {check}: {why}");
    None
}
