//! Which volume holds a path: the host's rule for "this mount belongs to
//! volume V", checked before any plugin sees a node call.
//!
//! After a plugin's stage or publish succeeded, the host writes a record
//! naming the volume, the path, the access type and the mount found there
//! (its filesystem `major:minor` and root, from /proc/self/mountinfo). The
//! mount at a path belongs to V exactly when the path's record names V and
//! the mount there is still the recorded one; any other mount is someone
//! else's. Records are small files under the driver's state directory,
//! written atomically and synced, so the rule survives a driver restart.
//! The same records tell DeleteVolume whether a volume is still in use.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;

use super::mounts::{self, Mount};

/// A staging path or a publication target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Staging,
    Target,
}

/// One path the host staged or published a volume at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The CSI volume id.
    pub(crate) volume: String,
    pub(crate) path: PathBuf,
    pub(crate) role: Role,
    pub(crate) block: bool,
    /// The mount found at `path` after the call; `None` when the plugin
    /// mounted nothing there (the record alone then says who holds it).
    pub(crate) mount: Option<(String, String)>,
}

/// What holds a path now.
#[derive(Debug, PartialEq)]
pub(crate) enum Holder {
    /// No mount and no live record.
    Nothing,
    /// A volume this driver staged or published there.
    Volume(Record),
    /// A mount this driver did not make there (or made for a volume
    /// whose mount has since been replaced).
    Foreign(Mount),
}

impl Holder {
    /// The path holds volume `id`, or nothing at all.
    pub(crate) fn is_free_or(&self, id: &str) -> bool {
        match self {
            Holder::Nothing => true,
            Holder::Volume(r) => r.volume == id,
            Holder::Foreign(_) => false,
        }
    }

    /// Says who holds `path`, for an error message.
    pub(crate) fn describe(&self, path: &Path) -> String {
        match self {
            Holder::Nothing => format!("{} holds nothing", path.display()),
            Holder::Volume(r) => format!("{} holds volume {}", path.display(), r.volume),
            Holder::Foreign(m) => format!(
                "{} holds a mount this driver did not make (filesystem {} {})",
                path.display(),
                m.key.0,
                m.key.1
            ),
        }
    }
}

/// The record files, one per path.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    dir: PathBuf,
}

impl Records {
    pub(crate) fn new(state_dir: &Path) -> Records {
        Records {
            dir: state_dir.join("paths"),
        }
    }

    fn file(&self, path: &Path) -> PathBuf {
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        self.dir.join(format!("{}.json", hex::encode(digest)))
    }

    fn get(&self, path: &Path) -> Result<Option<Record>, Status> {
        match std::fs::read(self.file(path)) {
            Ok(bytes) => Ok(serde_json::from_slice::<Record>(&bytes)
                .ok()
                .filter(|r| r.path == path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(internal("reading the record of", path, e)),
        }
    }

    /// Writes `record` durably: a temporary file, synced, renamed over.
    pub(crate) fn put(&self, record: &Record) -> Result<(), Status> {
        let path = &record.path;
        std::fs::create_dir_all(&self.dir).map_err(|e| internal("recording", path, e))?;
        let file = self.file(path);
        let temp = file.with_extension("tmp");
        let bytes = serde_json::to_vec(record).map_err(|e| internal("recording", path, e))?;
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::File::create(&temp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            std::fs::rename(&temp, &file)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| internal("recording", path, e))
    }

    /// Forgets `path`; a path never recorded needs nothing.
    pub(crate) fn remove(&self, path: &Path) -> Result<(), Status> {
        match std::fs::remove_file(self.file(path)) {
            Ok(()) => std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| internal("forgetting", path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal("forgetting", path, e)),
        }
    }

    /// Every live record of volume `id`: where it is staged or published.
    pub(crate) fn of_volume(&self, table: &[Mount], id: &str) -> Result<Vec<Record>, Status> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(internal("listing", &self.dir, e)),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
                continue;
            };
            if record.volume != id {
                continue;
            }
            let path = record.path.clone();
            if let Holder::Volume(live) = holder_of(table, Some(record), &path) {
                found.push(live);
            }
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// What holds `path` (a CO-given path, resolved if it exists).
    /// Blocking: run it off the async workers.
    pub(crate) fn holder(&self, table: &[Mount], path: &str) -> Result<Holder, Status> {
        let Some(real) = mounts::resolved(path) else {
            return Ok(Holder::Nothing);
        };
        Ok(holder_of(table, self.get(&real)?, &real))
    }

    /// Records that `id` now holds `path` after a call that succeeded,
    /// with whatever is mounted there.
    pub(crate) fn record(
        &self,
        id: &str,
        path: &str,
        role: Role,
        block: bool,
    ) -> Result<(), Status> {
        let Some(real) = mounts::resolved(path) else {
            return Ok(());
        };
        let mount = mounts::at(&mounts::table()?, &real).map(|m| m.key.clone());
        self.put(&Record {
            volume: id.to_string(),
            path: real,
            role,
            block,
            mount,
        })
    }

    /// Forgets `path` after an unstage or unpublish that succeeded.
    pub(crate) fn forget(&self, path: &str) -> Result<(), Status> {
        match mounts::resolved(path) {
            Some(real) => self.remove(&real),
            // Gone, perhaps removed by the call: the record was keyed by
            // the path as given (a resolved path has no `..` or links left).
            None => self.remove(Path::new(path)),
        }
    }
}

fn holder_of(table: &[Mount], record: Option<Record>, path: &Path) -> Holder {
    match (mounts::at(table, path), record) {
        (Some(m), Some(r)) if r.mount.as_ref() == Some(&m.key) => Holder::Volume(r),
        (Some(m), _) => Holder::Foreign(m.clone()),
        (None, Some(r)) if r.mount.is_none() => Holder::Volume(r),
        (None, _) => Holder::Nothing,
    }
}

fn internal(what: &str, path: &Path, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dev: &str, point: &str) -> Mount {
        Mount {
            key: (dev.into(), "/".into()),
            point: point.into(),
        }
    }

    fn record(volume: &str, path: &str, dev: Option<&str>) -> Record {
        Record {
            volume: volume.into(),
            path: path.into(),
            role: Role::Staging,
            block: false,
            mount: dev.map(|d| (d.into(), "/".into())),
        }
    }

    #[test]
    fn a_mount_is_a_volumes_only_while_it_is_the_recorded_one() {
        let table = [mount("7:0", "/k/s"), mount("0:50", "/k/t")];
        let ours = record("v", "/k/s", Some("7:0"));
        assert_eq!(
            holder_of(&table, Some(ours.clone()), Path::new("/k/s")),
            Holder::Volume(ours)
        );
        // Replaced by another filesystem: foreign.
        let stale = record("v", "/k/t", Some("7:0"));
        assert!(matches!(
            holder_of(&table, Some(stale), Path::new("/k/t")),
            Holder::Foreign(_)
        ));
        // Never recorded: foreign; nothing mounted: nothing.
        assert!(matches!(
            holder_of(&table, None, Path::new("/k/t")),
            Holder::Foreign(_)
        ));
        let gone = record("v", "/k/u", Some("7:1"));
        assert_eq!(
            holder_of(&table, Some(gone), Path::new("/k/u")),
            Holder::Nothing
        );
        // A stage that mounted nothing still holds its path.
        let bare = record("v", "/k/u", None);
        assert!(holder_of(&table, Some(bare), Path::new("/k/u")).is_free_or("v"));
        assert!(
            !holder_of(&table, Some(record("v", "/k/u", None)), Path::new("/k/u")).is_free_or("w")
        );
    }

    #[test]
    fn records_survive_and_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        let r = record("v", "/k/s", Some("7:0"));
        records.put(&r).unwrap();
        let again = Records::new(dir.path());
        assert_eq!(again.get(Path::new("/k/s")).unwrap(), Some(r));
        let table = [mount("7:0", "/k/s")];
        assert_eq!(again.of_volume(&table, "v").unwrap().len(), 1);
        assert!(again.of_volume(&table, "w").unwrap().is_empty());
        again.remove(Path::new("/k/s")).unwrap();
        assert!(again.of_volume(&table, "v").unwrap().is_empty());
        again.remove(Path::new("/k/s")).unwrap();
    }
}
