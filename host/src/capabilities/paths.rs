//! Path confinement shared by the capabilities: a path a plugin names must
//! resolve, after following every symlink, under a directory it was granted.

use std::path::{Component, Path, PathBuf};

use super::CapError;

/// Resolves `path` to a canonical absolute path, following symlinks in every
/// component that exists; components that do not exist yet are appended
/// as they are (they cannot be symlinks). `..` and relative paths are refused
/// outright rather than interpreted.
pub fn resolve(path: &str) -> Result<PathBuf, CapError> {
    if path.is_empty() || !path.starts_with('/') {
        return Err(CapError::invalid(format!("path {path:?} must be absolute")));
    }
    if path.contains('\0') {
        return Err(CapError::invalid("path contains a NUL byte"));
    }
    let raw = Path::new(path);
    if raw
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(CapError::invalid(format!(
            "path {path:?} must not contain . or .. components"
        )));
    }
    // Walk up to the longest prefix that exists, canonicalise it, then put
    // the missing tail back.
    let mut existing = raw.to_path_buf();
    let mut tail = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(canonical) => {
                let mut out = canonical;
                for part in tail.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    tail.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => {
                    return Err(CapError::invalid(format!(
                        "path {path:?} cannot be resolved"
                    )))
                }
            },
        }
    }
}

/// Resolves `path` and checks that it lies under one of `allowed`
/// (themselves canonical). Returns the resolved path.
pub fn confine(path: &str, allowed: &[PathBuf], what: &str) -> Result<PathBuf, CapError> {
    let resolved = resolve(path)?;
    if allowed.iter().any(|dir| resolved.starts_with(dir)) {
        Ok(resolved)
    } else {
        Err(CapError::denied(format!(
            "{what} {path:?} is outside the allowed directories ({})",
            allowed
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Canonicalises a granted directory at load time, creating it if missing.
pub fn granted_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_dotdot_relative_and_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let inside = root.join("in");
        std::fs::create_dir(&inside).unwrap();
        std::os::unix::fs::symlink("/etc", inside.join("escape")).unwrap();
        let allowed = vec![inside.clone()];

        let ok = confine(&format!("{}/a/b", inside.display()), &allowed, "x").unwrap();
        assert_eq!(ok, inside.join("a/b"));
        assert!(confine("relative/x", &allowed, "x").is_err());
        assert!(confine(&format!("{}/../x", inside.display()), &allowed, "x").is_err());
        let err = confine(
            &format!("{}/escape/passwd", inside.display()),
            &allowed,
            "x",
        )
        .unwrap_err();
        assert!(err.message.contains("outside"), "{}", err.message);
        assert!(confine(&root.join("inx").display().to_string(), &allowed, "x").is_err());
    }
}
