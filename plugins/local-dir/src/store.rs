//! The on-disk layout under the plugin root, and meta.json I/O through WASI:
//!
//! ```text
//! <root>/volumes/<local-id>/meta.json   what the volume is (see `meta`)
//! <root>/volumes/<local-id>/disk.img    image mode: sparse image file
//! <root>/volumes/<local-id>/data        subvolume mode: btrfs subvolume
//! <root>/snapshots/<local-id>/meta.json what the snapshot is (see `snapshot`)
//! <root>/snapshots/<local-id>/disk.img  image mode: copy of the image
//! <root>/snapshots/<local-id>/data      subvolume mode: read-only snapshot
//! <root>/groups/<local-id>/meta.json    a group snapshot: its member
//!                                       snapshots (see `group`)
//! ```

use std::fs;
use std::io::{self, Write};

use crate::error::{self, internal, not_found, precondition, Result};
use crate::id;
use crate::meta::{Meta, State};

#[derive(Clone, Debug)]
pub struct Layout {
    root: String,
}

impl Layout {
    pub fn new(root: &str) -> Layout {
        let trimmed = root.trim_end_matches('/');
        Layout {
            root: if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            },
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn volumes(&self) -> String {
        format!("{}/volumes", self.root.trim_end_matches('/'))
    }

    pub fn dir(&self, id: &str) -> String {
        format!("{}/{id}", self.volumes())
    }

    pub fn meta(&self, id: &str) -> String {
        format!("{}/meta.json", self.dir(id))
    }

    pub fn image(&self, id: &str) -> String {
        format!("{}/disk.img", self.dir(id))
    }

    pub fn data(&self, id: &str) -> String {
        format!("{}/data", self.dir(id))
    }

    fn meta_tmp(&self, id: &str) -> String {
        format!("{}/.meta.json.tmp", self.dir(id))
    }

    pub fn snapshots(&self) -> String {
        format!("{}/snapshots", self.root.trim_end_matches('/'))
    }

    pub fn snap_dir(&self, id: &str) -> String {
        format!("{}/{id}", self.snapshots())
    }

    pub fn snap_meta(&self, id: &str) -> String {
        format!("{}/meta.json", self.snap_dir(id))
    }

    pub fn snap_image(&self, id: &str) -> String {
        format!("{}/disk.img", self.snap_dir(id))
    }

    pub fn snap_data(&self, id: &str) -> String {
        format!("{}/data", self.snap_dir(id))
    }

    pub fn groups(&self) -> String {
        format!("{}/groups", self.root.trim_end_matches('/'))
    }

    pub fn group_dir(&self, id: &str) -> String {
        format!("{}/{id}", self.groups())
    }

    pub fn group_meta(&self, id: &str) -> String {
        format!("{}/meta.json", self.group_dir(id))
    }
}

/// Whether a path exists (without following a final symlink).
pub fn exists(path: &str) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(error::io(format_args!("looking at {path}"), e)),
    }
}

/// The volume's meta, or None when it has none (never made, or gone). A
/// record cut short (empty, or JSON ending early) also counts as none: only
/// a crash in the one unsynced-before-visible write makes one — the first
/// record of a create that never answered, or a deletion's mark — and a
/// retry of either call redoes it from the layout.
pub fn read_meta(layout: &Layout, id: &str) -> Result<Option<Meta>> {
    let path = layout.meta(id);
    match fs::read(&path) {
        Ok(bytes) if cut_short(&bytes) => Ok(None),
        Ok(bytes) => Meta::from_json(&bytes)
            .map(Some)
            .map_err(|e| internal(format!("reading {path}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error::io(format_args!("reading {path}"), e)),
    }
}

/// Whether a JSON record ends before its value does (a torn write), as
/// against one that is whole but wrong, which stays an error.
fn cut_short(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err_and(|e| e.is_eof())
}

/// The meta of a volume that exists and is usable; NOT_FOUND otherwise
/// (half-created and half-deleted volumes do not exist for the CO).
pub fn ready_meta(layout: &Layout, id: &str) -> Result<Meta> {
    match read_meta(layout, id)? {
        Some(meta) if meta.state == State::Ready => Ok(meta),
        Some(meta) => Err(not_found(format!(
            "volume {id} is not ready on this node (it is {})",
            match meta.state {
                State::Creating => "being created",
                _ => "being deleted",
            }
        ))),
        None => Err(not_found(format!(
            "volume {id} does not exist on this node"
        ))),
    }
}

/// Replaces meta.json atomically and durably (`write_atomic`).
pub fn write_meta(layout: &Layout, id: &str, meta: &Meta) -> Result<()> {
    let (tmp, path) = (layout.meta_tmp(id), layout.meta(id));
    write_atomic(&tmp, &path, &encode(&path, meta)?)
}

/// Replaces meta.json (temp file, rename) without waiting for the disk: a
/// crash may leave the old record or, on some filesystems, an empty one.
/// Only for a state whose loss a retry of the call repairs (a deletion,
/// which removes the volume by its layout whatever its meta says).
pub fn mark_meta(layout: &Layout, id: &str, meta: &Meta) -> Result<()> {
    let (tmp, path) = (layout.meta_tmp(id), layout.meta(id));
    let bytes = encode(&path, meta)?;
    fs::write(&tmp, &bytes).map_err(|e| error::io(format_args!("writing {tmp}"), e))?;
    fs::rename(&tmp, &path).map_err(|e| error::io(format_args!("renaming {tmp} to {path}"), e))
}

fn encode(path: &str, meta: &Meta) -> Result<Vec<u8>> {
    meta.to_json()
        .map_err(|e| internal(format!("encoding {path}: {e}")))
}

/// Where one fsync of a new file also makes its name durable, and the names
/// of the new directories above it: the journalling filesystems commit the
/// creation with the file (ext4's and XFS's journals are in order; btrfs
/// logs a new file's new ancestors, or commits). Elsewhere the directories
/// are synced too.
const NAME_DURABLE_WITH_FILE: &[&str] = &["ext4", "xfs", "btrfs"];

/// Writes the first record of a volume just made in its new directory and
/// makes it durable: once this returns, a crash leaves the volume. One
/// fsync on `root_fs` types that persist a new file's name with it (a crash
/// before then may leave the record cut short, which reads as none: the
/// create never answered, and its retry redoes it).
pub fn write_first_meta(layout: &Layout, id: &str, meta: &Meta, root_fs: &str) -> Result<()> {
    let path = layout.meta(id);
    let bytes = encode(&path, meta)?;
    let write = || -> io::Result<()> {
        let mut f = fs::File::create_new(&path)?;
        f.write_all(&bytes)?;
        f.sync_all()
    };
    write().map_err(|e| error::io(format_args!("writing {path}"), e))?;
    if !NAME_DURABLE_WITH_FILE.contains(&root_fs) {
        sync_dir(&layout.dir(id))?;
        sync_dir(&layout.volumes())?;
    }
    Ok(())
}

/// fsync of a directory: makes the renames and creations in it durable.
pub fn sync_dir(dir: &str) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| error::io(format_args!("syncing directory {dir}"), e))
}

/// Makes removals from `dir` durable: after a crash, what a delete removed
/// stays removed. Nothing to do when `dir` itself does not exist.
pub fn sync_removals(dir: &str) -> Result<()> {
    match fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| error::io(format_args!("syncing directory {dir}"), e)),
    }
}

/// A versioned JSON record (a snapshot's or a group's meta.json), or None
/// when there is none. `newest` is the last version this build writes.
pub fn read_record<T: serde::de::DeserializeOwned>(
    path: &str,
    version: impl Fn(&T) -> u32,
    newest: u32,
) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            let record: T = serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("reading {path}: {e}")))?;
            if version(&record) > newest {
                return Err(internal(format!(
                    "reading {path}: version {} was written by a newer local-dir",
                    version(&record)
                )));
            }
            Ok(Some(record))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error::io(format_args!("reading {path}"), e)),
    }
}

/// Replaces the JSON record at `dir`/meta.json atomically.
pub fn write_record<T: serde::Serialize>(dir: &str, value: &T) -> Result<()> {
    let (tmp, path) = (format!("{dir}/.meta.json.tmp"), format!("{dir}/meta.json"));
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| internal(format!("encoding {path}: {e}")))?;
    bytes.push(b'\n');
    write_atomic(&tmp, &path, &bytes)
}

/// Replaces `path` with `bytes` through `tmp` (write, fsync, rename, then
/// its directory synced): a crash leaves the old record or the new one,
/// and the new one once this returns.
pub fn write_atomic(tmp: &str, path: &str, bytes: &[u8]) -> Result<()> {
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| error::io(format_args!("writing {tmp}"), e))?;
    fs::rename(tmp, path).map_err(|e| error::io(format_args!("renaming {tmp} to {path}"), e))?;
    sync_dir(path.rsplit_once('/').map_or(".", |(dir, _)| dir))
}

/// Ids of all volume directories, sorted; stray entries are skipped.
pub fn list_ids(layout: &Layout) -> Result<Vec<String>> {
    ids_in(&layout.volumes())
}

/// Ids of all snapshot directories, sorted.
pub fn list_snapshot_ids(layout: &Layout) -> Result<Vec<String>> {
    ids_in(&layout.snapshots())
}

fn ids_in(dir: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error::io(format_args!("listing {dir}"), e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            // Removed while being listed (a concurrent delete): gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(error::io(format_args!("listing {dir}"), e)),
        };
        if let Some(name) = entry.file_name().to_str().filter(|n| id::is_valid(n)) {
            ids.push(name.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Makes the volume's directory (and `volumes/` on first use).
pub fn make_dir(layout: &Layout, id: &str) -> Result<()> {
    let dir = layout.dir(id);
    fs::create_dir_all(&dir).map_err(|e| error::io(format_args!("creating {dir}"), e))
}

/// Removes what is left of the volume's directory once its storage is gone.
pub fn remove_dir(layout: &Layout, id: &str) -> Result<()> {
    let dir = layout.dir(id);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(error::io(format_args!("removing {dir}"), e)),
    }
}

/// Removes a file; already gone is fine.
pub fn remove_file(path: &str) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(error::io(format_args!("removing {path}"), e)),
    }
}

/// The root must be visible through WASI; a clear error if the host's
/// preopen and `environment.root()` disagree.
pub fn check_root(layout: &Layout) -> Result<()> {
    match fs::metadata(layout.root()) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(precondition(format!(
            "local-dir root {} is not a directory",
            layout.root()
        ))),
        Err(e) => Err(precondition(format!(
            "local-dir root {} is not reachable from the plugin (is it the fs capability's \
             preopen?): {e}",
            layout.root()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FsType, Mode, Wanted};
    use crate::error::ErrorCode;

    struct TempRoot(String);

    impl TempRoot {
        fn new(tag: &str) -> TempRoot {
            let dir = std::env::temp_dir().join(format!("local-dir-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempRoot(dir.to_str().unwrap().to_string())
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn meta() -> Meta {
        let w = Wanted {
            mode: Mode::Image,
            mode_from_parameters: false,
            fs_type: Some(FsType::Ext4),
        };
        Meta::new("pvc-a", &w, 1 << 25)
    }

    #[test]
    fn layout_paths() {
        let l = Layout::new("/var/lib/wasmcsi/local/");
        assert_eq!(l.root(), "/var/lib/wasmcsi/local");
        assert_eq!(l.image("v1"), "/var/lib/wasmcsi/local/volumes/v1/disk.img");
        assert_eq!(l.data("v1"), "/var/lib/wasmcsi/local/volumes/v1/data");
        assert_eq!(Layout::new("/").meta("v"), "/volumes/v/meta.json");
    }

    #[test]
    fn meta_write_read_replace() {
        let t = TempRoot::new("meta");
        let l = Layout::new(&t.0);
        check_root(&l).unwrap();
        assert_eq!(read_meta(&l, "v1").unwrap(), None);
        assert_eq!(ready_meta(&l, "v1").unwrap_err().code, ErrorCode::NotFound);
        make_dir(&l, "v1").unwrap();
        let mut m = meta();
        write_meta(&l, "v1", &m).unwrap();
        assert_eq!(read_meta(&l, "v1").unwrap(), Some(m.clone()));
        assert_eq!(ready_meta(&l, "v1").unwrap_err().code, ErrorCode::NotFound);
        m.state = State::Ready;
        write_meta(&l, "v1", &m).unwrap();
        assert_eq!(ready_meta(&l, "v1").unwrap(), m);
        assert!(!exists(&l.meta_tmp("v1")).unwrap());
        m.state = State::Deleting;
        mark_meta(&l, "v1", &m).unwrap();
        assert_eq!(read_meta(&l, "v1").unwrap(), Some(m));
        assert!(!exists(&l.meta_tmp("v1")).unwrap());
        let gone = sync_dir(&l.dir("v2")).unwrap_err();
        assert!(gone.message.contains("v2"), "{}", gone.message);
    }

    #[test]
    fn cut_short_meta_is_none_but_wrong_meta_is_internal() {
        let t = TempRoot::new("torn");
        let l = Layout::new(&t.0);
        make_dir(&l, "v1").unwrap();
        for torn in [
            &b""[..],
            b"  \n",
            b"{\"version\":",
            b"{\"version\":1,\"name\":\"pv",
        ] {
            fs::write(l.meta("v1"), torn).unwrap();
            assert_eq!(read_meta(&l, "v1").unwrap(), None, "{torn:?}");
        }
        for wrong in [&b"{\"version\":\"one\"}"[..], b"xyz", b"{} {"] {
            fs::write(l.meta("v1"), wrong).unwrap();
            let e = read_meta(&l, "v1").unwrap_err();
            assert_eq!(e.code, ErrorCode::Internal, "{wrong:?}");
            assert!(e.message.contains("meta.json"));
        }
    }

    #[test]
    fn first_meta_is_new_and_readable() {
        let t = TempRoot::new("first");
        let l = Layout::new(&t.0);
        make_dir(&l, "v1").unwrap();
        let mut m = meta();
        m.state = State::Ready;
        // An unknown filesystem type takes the directory syncs as well.
        for (id, fs_type) in [("v1", "ext4"), ("v2", "tmpfs")] {
            make_dir(&l, id).unwrap();
            write_first_meta(&l, id, &m, fs_type).unwrap();
            assert_eq!(ready_meta(&l, id).unwrap(), m);
        }
        let e = write_first_meta(&l, "v1", &m, "ext4").unwrap_err();
        assert!(e.message.contains("meta.json"), "{}", e.message);
        sync_removals(&l.volumes()).unwrap();
        sync_removals(&format!("{}/nothing-here", t.0)).unwrap();
    }

    #[test]
    fn list_sorted_valid_ids_and_remove() {
        let t = TempRoot::new("list");
        let l = Layout::new(&t.0);
        assert!(list_ids(&l).unwrap().is_empty());
        for id in ["b", "a", ".tmp", "C"] {
            fs::create_dir_all(l.dir(id)).unwrap();
        }
        assert_eq!(list_ids(&l).unwrap(), ["a", "b"]);
        remove_dir(&l, "a").unwrap();
        remove_dir(&l, "a").unwrap();
        remove_file(&l.image("b")).unwrap();
        assert_eq!(list_ids(&l).unwrap(), ["b"]);
    }
}
