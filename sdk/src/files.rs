//! Plugin state in files under the granted root (through WASI), kept
//! the way CSI's retries need: a missing file is an answer, not an error;
//! a write is whole or not at all; removing what is gone succeeds.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::error::{Context, Result};

/// The file's text, or `None` when there is no such file.
pub fn read(path: &str) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        r => r.map(Some).context(|| format!("reading {path}")),
    }
}

/// Writes `contents` beside `path`, syncs, and renames it over `path`
/// (creating the parent directory): a crash leaves the old file or the
/// new one, never half of either.
pub fn write_atomic(path: &str, contents: &[u8]) -> Result<()> {
    if let Some(parent) = Path::new(path).parent() {
        fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = format!("{path}.new");
    let mut file = fs::File::create(&tmp).context(|| format!("creating {tmp}"))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {tmp}"))?;
    fs::rename(&tmp, path).context(|| format!("renaming {tmp} to {path}"))
}

/// Removes a file or a whole directory tree; already gone is success.
pub fn remove(path: &str) -> Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        r => r.context(|| format!("removing {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_removal_are_idempotent() {
        let dir = std::env::temp_dir().join(format!("wasmcsi-sdk-files-{}", std::process::id()));
        let file = dir.join("state/one").display().to_string();
        assert_eq!(read(&file).unwrap(), None);
        write_atomic(&file, b"42").unwrap();
        write_atomic(&file, b"43").unwrap();
        assert_eq!(read(&file).unwrap().as_deref(), Some("43"));
        assert!(!Path::new(&format!("{file}.new")).exists());
        let tree = dir.join("tree/a/b");
        fs::create_dir_all(&tree).unwrap();
        let tree = dir.join("tree").display().to_string();
        remove(&tree).unwrap();
        remove(&tree).unwrap();
        remove(&file).unwrap();
        assert_eq!(read(&file).unwrap(), None);
        let e = read(&dir.display().to_string()).unwrap_err();
        assert!(e.message.starts_with("reading "), "{}", e.message);
        fs::remove_dir_all(&dir).unwrap();
    }
}
