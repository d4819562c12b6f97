//! Stable ids from CSI names: derived from the name alone, so a retried
//! create lands on what its first attempt made; safe as one path component.

use sha2::{Digest, Sha256};

use crate::error::{invalid, Result};

/// The WIT's limit on plugin-local ids.
pub const MAX_ID: usize = 96;
/// Names up to this long are used as they are; longer ones are hashed.
const MAX_PLAIN: usize = 64;
/// Readable prefix kept in front of the hash.
const MAX_PREFIX: usize = 40;

/// `pvc-<uuid>` stays itself; anything else becomes
/// `<readable prefix>-<128-bit hash of the name>`. Two names that map to
/// the same id must be told apart by the name the plugin records.
pub fn from_name(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(invalid("create-volume: the volume name is empty"));
    }
    if name.len() <= MAX_PLAIN && is_valid(name) {
        return Ok(name.to_string());
    }
    let cleaned: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if allowed(c) { c } else { '-' })
        .take(MAX_PREFIX)
        .collect();
    let prefix = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let prefix = if prefix.is_empty() { "vol" } else { prefix };
    Ok(format!("{prefix}-{}", hex_digest(name.as_bytes(), 16)))
}

/// Refuses ids `from_name` could not have made, before they touch a path:
/// no separators, no dot-files (temp files), at most 96 bytes.
pub fn check(id: &str) -> Result<()> {
    if is_valid(id) {
        Ok(())
    } else {
        Err(invalid(format!(
            "volume id {id:?} was not made by this plugin (1-{MAX_ID} of a-z 0-9 . _ -, \
             starting with a letter or digit)"
        )))
    }
}

pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(allowed)
}

fn allowed(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-')
}

/// The first `bytes` bytes of the SHA-256 of `data`, in lower-case hex.
pub fn hex_digest(data: &[u8], bytes: usize) -> String {
    let digest = Sha256::digest(data);
    digest[..bytes.min(digest.len())]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 8 hex digits standing for what a create asked for besides its name
/// (parameters that make another volume): a repeated create with other
/// parameters must not be answered with the old volume.
pub fn fingerprint(parts: &[(&str, &str)]) -> String {
    let mut h = Sha256::new();
    for (k, v) in parts {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_are_kept() {
        let n = "pvc-1b2c3d4e-0000-4a4a-8b8b-0123456789ab";
        assert_eq!(from_name(n).unwrap(), n);
    }

    #[test]
    fn unsafe_names_are_hashed_readably() {
        let id = from_name("My Volume!").unwrap();
        assert!(id.starts_with("my-volume-"), "{id}");
        assert_eq!(id.len(), "my-volume-".len() + 32);
        assert!(is_valid(&id));
        assert_eq!(id, from_name("My Volume!").unwrap(), "deterministic");
        assert_ne!(id, from_name("My Volume?").unwrap());
        assert!(is_valid(&from_name("a/../../etc").unwrap()));
    }

    #[test]
    fn long_names_are_bounded() {
        let long = "a".repeat(500);
        let id = from_name(&long).unwrap();
        assert!(id.len() <= MAX_ID && is_valid(&id));
        assert_ne!(id, from_name(&"a".repeat(501)).unwrap());
    }

    #[test]
    fn odd_names_still_get_valid_ids() {
        for n in [".", "..", ".hidden", "___", "é", "/", "-x"] {
            let id = from_name(n).unwrap();
            assert!(is_valid(&id), "{n:?} -> {id:?}");
            assert_ne!(id, n);
        }
        assert!(from_name("").is_err());
    }

    #[test]
    fn check_refuses_paths() {
        for bad in ["", "..", ".x", "a/b", "A", &"a".repeat(97)] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check("pvc-1").is_ok());
    }

    /// Ids already on disk and names already on arrays were made with
    /// these digests: they must never change.
    #[test]
    fn digests_are_pinned() {
        assert_eq!(hex_digest(b"abc", 4), "ba7816bf");
        assert_eq!(
            from_name("My Volume!").unwrap(),
            format!("my-volume-{}", hex_digest(b"My Volume!", 16))
        );
        assert_eq!(fingerprint(&[]), "e3b0c442", "sha256 of nothing");
        assert_eq!(fingerprint(&[("a", "b")]), hex_digest(b"a\0b\0", 4));
    }
}
