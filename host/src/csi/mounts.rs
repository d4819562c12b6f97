//! What the node's mount table says about volumes, read by the host itself:
//! where else a volume is published (the table survives a driver restart,
//! in-memory bookkeeping would not), and the host's own unmount for volumes
//! whose plugin is no longer loaded, so their pods can still terminate.
//! The table is read by `sys::mountinfo`; the unmount is the mount unit's.

use std::path::{Path, PathBuf};

use tonic::Status;

use crate::capabilities::beneath::{self, GrantedDir};
use crate::capabilities::mount::unmount_beneath;
use crate::capabilities::ErrorCode;
use crate::config::Config;
use crate::sys::mountinfo;

/// One line of /proc/self/mountinfo, as far as the host needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// The filesystem (`major:minor`) and the directory of it mounted here:
    /// two mounts with the same key show the same files.
    pub key: (String, String),
    pub point: PathBuf,
}

/// The mount table of this process's namespace, in mount order.
pub fn table() -> Result<Vec<Mount>, Status> {
    mountinfo::read()
        .map(|table| table.into_iter().map(Mount::from).collect())
        .map_err(|e| Status::internal(format!("reading /proc/self/mountinfo: {e}")))
}

#[cfg(test)]
fn parse(info: &str) -> Vec<Mount> {
    mountinfo::parse(info)
        .into_iter()
        .map(Mount::from)
        .collect()
}

impl From<mountinfo::MountInfo> for Mount {
    fn from(m: mountinfo::MountInfo) -> Mount {
        Mount {
            key: (m.device, m.root),
            point: m.point,
        }
    }
}

/// The directories any configured plugin may mount under, resolved.
pub fn granted_prefixes(config: &Config) -> Vec<PathBuf> {
    config
        .plugins
        .iter()
        .filter_map(|p| p.capabilities.mount.as_ref())
        .flat_map(|m| m.target_prefixes.iter())
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect()
}

/// `path` resolved, if it exists.
pub fn resolved(path: &str) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// What is mounted at `point` (the top of a stack).
pub fn at<'t>(table: &'t [Mount], point: &Path) -> Option<&'t Mount> {
    table.iter().rev().find(|m| m.point == point)
}

/// Another mount under `prefixes` of what is mounted at `point`, other
/// than `point` and the paths in `except`: where else the volume is in use.
pub fn elsewhere(
    table: &[Mount],
    point: &Path,
    except: &[&Path],
    prefixes: &[PathBuf],
) -> Option<PathBuf> {
    let key = &at(table, point)?.key;
    table
        .iter()
        .filter(|m| &m.key == key && m.point != point && !except.contains(&m.point.as_path()))
        .find(|m| under(&m.point, prefixes))
        .map(|m| m.point.clone())
}

/// Strictly below one of `prefixes`.
fn under(path: &Path, prefixes: &[PathBuf]) -> bool {
    prefixes.iter().any(|p| path.starts_with(p) && path != p)
}

/// Takes down whatever is mounted at `path` for a volume whose plugin is
/// not loaded, so the CO's unpublish/unstage can finish. As a plugin's own
/// unmount does, `path` is resolved beneath a granted prefix's descriptor
/// and the mounts found there are taken down: a path outside every prefix
/// (or leading out of one) is left alone, one that is not there, or not a
/// mount, needs nothing. With `remove`, an emptied target is removed too.
pub fn unmount_orphan(path: &str, prefixes: &[PathBuf], remove: bool) -> Result<(), Status> {
    if !Path::new(path).is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{path:?} is not an absolute path"
        )));
    }
    let dirs: Vec<GrantedDir> = prefixes
        .iter()
        .filter_map(|p| GrantedDir::open(p).ok())
        .collect();
    let dirs: Vec<&GrantedDir> = dirs.iter().collect();
    let located = beneath::locate(&dirs, path, "path").and_then(|at| at.below("path"));
    let done = located.and_then(|at| unmount_beneath(at, remove));
    match done {
        Ok(()) => {
            tracing::info!(path, "nothing left mounted (its plugin is not loaded)");
            Ok(())
        }
        Err(e) if e.code == ErrorCode::NotFound => Ok(()),
        Err(e) if e.code == ErrorCode::PermissionDenied => {
            tracing::warn!(path, error = %e.message, "not under a granted mount prefix: left alone");
            Ok(())
        }
        Err(e) => Err(Status::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
        40 22 7:0 / /k/staging/v rw,relatime - xfs /dev/loop0 rw\n\
        41 22 7:0 / /k/pods/a\\040b rw,relatime - xfs /dev/loop0 rw\n\
        42 22 7:0 / /elsewhere rw,relatime - xfs /dev/loop0 rw\n\
        43 22 7:1 / /k/pods/c rw,relatime - xfs /dev/loop1 rw\n";

    #[test]
    fn finds_other_mounts_of_the_same_filesystem_under_the_prefixes() {
        let table = parse(INFO);
        assert_eq!(table[2].point, Path::new("/k/pods/a b"));
        let prefixes = [PathBuf::from("/k")];
        let staging = Path::new("/k/staging/v");
        let found = elsewhere(&table, staging, &[Path::new("/k/pods/new")], &prefixes);
        assert_eq!(found.as_deref(), Some(Path::new("/k/pods/a b")));
        // The publication itself is not "elsewhere"; outside the prefixes
        // and other filesystems do not count.
        let found = elsewhere(&table, staging, &[Path::new("/k/pods/a b")], &prefixes);
        assert_eq!(found, None);
        assert_eq!(
            elsewhere(&table, Path::new("/k/pods/c"), &[], &prefixes),
            None
        );
        assert_eq!(
            elsewhere(&table, Path::new("/nothing"), &[], &prefixes),
            None
        );
    }

    #[test]
    fn only_strictly_below_a_prefix() {
        let prefixes = [PathBuf::from("/k")];
        assert!(under(Path::new("/k/a"), &prefixes));
        assert!(!under(Path::new("/k"), &prefixes));
        assert!(!under(Path::new("/kk/a"), &prefixes));
    }
}
