//! Volume ids and quota tree names.
//!
//! A volume id is `qt-<quota tree id>`, followed by `@<servers>` when the
//! StorageClass named XMS servers other than the plugin settings, so that
//! delete and expand (which only get the id) reach the right array.

use crate::error::{invalid, Result};
use wasmcsi_plugin_sdk::id::hex_digest;

const MAX_ID: usize = 96;
const MAX_NAME: usize = 63;

/// What an id names on the array.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A quota tree (quota-tree mode volume).
    Tree,
    /// A folder (folder mode volume).
    Folder,
    /// An fs-snapshot of a folder.
    Snapshot,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Tree => "qt-",
            Kind::Folder => "fd-",
            Kind::Snapshot => "sn-",
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct VolumeId {
    pub kind: Kind,
    /// The XMS id of the quota tree, folder or snapshot.
    pub tree_id: i64,
    /// Base URLs; empty means the plugin settings' servers.
    pub servers: Vec<String>,
}

/// Servers as written into an id: `http://` is dropped (the default).
fn compact(server: &str) -> &str {
    server.strip_prefix("http://").unwrap_or(server)
}

impl VolumeId {
    pub fn encode(&self) -> Result<String> {
        let mut id = format!("{}{}", self.kind.prefix(), self.tree_id);
        if !self.servers.is_empty() {
            let list: Vec<&str> = self.servers.iter().map(|s| compact(s)).collect();
            id.push('@');
            id.push_str(&list.join(","));
        }
        if id.len() > MAX_ID {
            return Err(invalid(format!(
                "the xmsServers of this StorageClass make a volume id longer than {MAX_ID} bytes: \
                 put them into the plugin settings (xmsServers) instead"
            )));
        }
        Ok(id)
    }

    pub fn parse(id: &str) -> Result<VolumeId> {
        let bad = || invalid(format!("volume id {id:?} was not made by xsky-nfs"));
        let (tree, servers) = match id.split_once('@') {
            Some((t, s)) => (t, Some(s)),
            None => (id, None),
        };
        let kind = [Kind::Tree, Kind::Folder, Kind::Snapshot]
            .into_iter()
            .find(|k| tree.starts_with(k.prefix()))
            .ok_or_else(bad)?;
        let tree_id = tree[3..]
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(bad)?;
        let servers = match servers {
            None => vec![],
            Some(s) => crate::params::servers(s).map_err(|_| bad())?,
        };
        Ok(VolumeId {
            kind,
            tree_id,
            servers,
        })
    }
}

/// A short digest of what a create asked for besides name and size
/// (mount options, shares, client group, ...).
pub use wasmcsi_plugin_sdk::id::fingerprint;

/// Quota trees cannot carry a description, so xsky-nfs marks its own in
/// the name: `<tree_name>_w<fingerprint>` (8 hex digits). A tree without
/// the mark is never taken for a volume.
pub fn marked_tree_name(csi_name: &str, fingerprint: &str) -> String {
    let base = name_within(csi_name, MAX_NAME - 2 - fingerprint.len());
    format!("{base}_w{fingerprint}")
}

/// What every marked tree name of this CSI name starts with.
pub fn marked_tree_base(csi_name: &str) -> String {
    name_within(csi_name, MAX_NAME - 10)
}

/// Whether a quota tree's name carries the mark `marked_tree_name` puts
/// in it (for whatever CSI name): only such a tree is deleted or resized.
pub fn tree_is_marked(tree: &str) -> bool {
    tree.rsplit_once("_w")
        .is_some_and(|(base, fp)| !base.is_empty() && is_fingerprint(fp))
}

fn is_fingerprint(fp: &str) -> bool {
    fp.len() == 8 && fp.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The fingerprint in a quota tree name made by `marked_tree_name` for
/// this CSI name, if the tree is one.
pub fn tree_mark<'t>(tree: &'t str, csi_name: &str) -> Option<&'t str> {
    let (base, fp) = tree.rsplit_once("_w")?;
    let ours = is_fingerprint(fp) && base == marked_tree_base(csi_name);
    ours.then_some(fp)
}

/// What a folder or snapshot made by xsky-nfs carries as its description:
/// `wasmcsi:xsky-nfs:<fingerprint>`.
pub const MARK: &str = "wasmcsi:xsky-nfs:";

/// The description that marks a folder or a snapshot as xsky-nfs's.
pub fn marked_description(fingerprint: &str) -> String {
    format!("{MARK}{fingerprint}")
}

/// The fingerprint in a folder's or snapshot's description, if xsky-nfs
/// made it.
pub fn description_mark(description: &str) -> Option<&str> {
    description
        .strip_prefix(MARK)
        .filter(|fp| is_fingerprint(fp))
}

/// The quota tree name for a CSI volume name: deterministic, so a retried
/// CreateVolume finds what an earlier attempt made. Names that are not
/// plain `[A-Za-z0-9_-]`, are too long, or end like a hashed name get a
/// hash suffix.
pub fn tree_name(csi_name: &str) -> String {
    name_within(csi_name, MAX_NAME)
}

/// Hex digits of the hash suffix (5 bytes).
const HASH_HEX: usize = 10;

/// Ends as a hashed name does: `-` and 10 lower-case hex digits.
fn looks_hashed(name: &str) -> bool {
    name.len() > HASH_HEX && {
        let (head, tail) = name.split_at(name.len() - HASH_HEX);
        head.ends_with('-') && tail.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

/// Injective: a name is kept only when it is plain, fits and does not end
/// like a hashed name, and every other name ends with the hash of the raw
/// name; so `x/y` (`x-y-<hash>`) and a name spelled `x-y-<hash>` (hashed
/// again) never meet.
fn name_within(csi_name: &str, max: usize) -> String {
    let clean: String = csi_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean == csi_name && clean.len() <= max && !looks_hashed(csi_name) {
        return clean;
    }
    let hash = hex_digest(csi_name.as_bytes(), 5);
    let keep = max - hash.len() - 1;
    let prefix: String = clean.chars().take(keep).collect();
    format!("{prefix}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let v = VolumeId {
            kind: Kind::Tree,
            tree_id: 42,
            servers: vec![],
        };
        assert_eq!(v.encode().unwrap(), "qt-42");
        assert_eq!(VolumeId::parse("qt-42").unwrap(), v);
        let v = VolumeId {
            kind: Kind::Folder,
            tree_id: 7,
            servers: vec!["http://10.0.0.1:8056".into(), "https://x:443".into()],
        };
        let id = v.encode().unwrap();
        assert_eq!(id, "fd-7@10.0.0.1:8056,https://x:443");
        assert_eq!(VolumeId::parse(&id).unwrap(), v);
        for bad in ["", "qt-", "qt-x", "fs-1", "qt-0", "qt-1@ftp://x"] {
            assert!(VolumeId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(VolumeId::parse("sn-3").unwrap().kind, Kind::Snapshot);
        let long = VolumeId {
            kind: Kind::Tree,
            tree_id: 1,
            servers: vec![format!("http://{}:1", "h".repeat(100))],
        };
        assert!(long.encode().is_err());
    }

    #[test]
    fn names_are_deterministic_and_safe() {
        assert_eq!(tree_name("pvc-0a1b"), "pvc-0a1b");
        let odd = tree_name("my volume/1");
        assert!(odd.starts_with("my-volume-1-"), "{odd}");
        assert_eq!(odd, tree_name("my volume/1"));
        assert_ne!(tree_name("a.b"), tree_name("a-b"));
        let long = tree_name(&"x".repeat(200));
        assert_eq!(long.len(), MAX_NAME);
        // Kubernetes names stay themselves.
        let pvc = "pvc-6f1c2a9e-1b2c-4d3e-8f90-0123456789ab";
        assert_eq!(tree_name(pvc), pvc);
    }

    /// A name spelled like another name's hashed form is not that name.
    #[test]
    fn names_never_meet_a_hashed_form() {
        let hashed = tree_name("x/y");
        assert!(looks_hashed(&hashed), "{hashed}");
        assert_ne!(tree_name(&hashed), hashed);
        assert_ne!(tree_name(&hashed), tree_name("x/y"));
        let fp = fingerprint(&[]);
        assert_ne!(marked_tree_name(&hashed, &fp), marked_tree_name("x/y", &fp));
        assert_eq!(tree_mark(&marked_tree_name("x/y", &fp), &hashed), None);
        // Long names too: each ends with the hash of itself.
        let long = "z".repeat(100);
        assert_ne!(tree_name(&tree_name(&long)), tree_name(&long));
        // Upper-case hex is no hashed form: kept.
        assert_eq!(tree_name("x-y-ABCDEF0123"), "x-y-ABCDEF0123");
    }

    #[test]
    fn marks_say_who_made_it_and_with_what() {
        let fp = fingerprint(&[("mountOptions", "vers=4")]);
        assert_eq!(fp.len(), 8);
        assert_ne!(fp, fingerprint(&[("mountOptions", "vers=3")]));
        let name = marked_tree_name("pvc-1", &fp);
        assert_eq!(name, format!("pvc-1_w{fp}"));
        assert_eq!(tree_mark(&name, "pvc-1"), Some(fp.as_str()));
        assert_eq!(tree_mark("pvc-1", "pvc-1"), None, "unmarked");
        assert_eq!(tree_mark(&name, "pvc-2"), None, "another volume");
        let long = "y".repeat(200);
        let name = marked_tree_name(&long, &fp);
        assert_eq!(name.len(), MAX_NAME);
        assert_eq!(tree_mark(&name, &long), Some(fp.as_str()));
        assert_eq!(
            description_mark(&marked_description(&fp)),
            Some(fp.as_str())
        );
        assert_eq!(description_mark(""), None);
        assert_eq!(description_mark("home share of the CSI volumes"), None);
        assert!(tree_is_marked(&name));
        for foreign in ["data", "pvc-1", "_w12345678", "a_wxyz", "a_w1234567"] {
            assert!(!tree_is_marked(foreign), "{foreign}");
        }
    }
}
