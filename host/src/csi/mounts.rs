//! What the node's mount table says about volumes, read by the host itself:
//! where else a volume is published (the table survives a driver restart,
//! in-memory bookkeeping would not), and the host's own unmount for volumes
//! whose plugin is no longer loaded, so their pods can still terminate.

use std::path::{Path, PathBuf};

use tonic::Status;

use crate::capabilities::mount::unescape;
use crate::config::Config;

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
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse(&info))
        .map_err(|e| Status::internal(format!("reading /proc/self/mountinfo: {e}")))
}

fn parse(info: &str) -> Vec<Mount> {
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            Some(Mount {
                key: (fields.get(2)?.to_string(), unescape(fields.get(3)?)),
                point: PathBuf::from(unescape(fields.get(4)?)),
            })
        })
        .collect()
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
/// not loaded, so the CO's unpublish/unstage can finish. Only a path under
/// a granted prefix is touched; a path that is not there, or not a mount,
/// needs nothing. With `remove`, an emptied target is removed as well.
pub fn unmount_orphan(path: &str, prefixes: &[PathBuf], remove: bool) -> Result<(), Status> {
    if !Path::new(path).is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{path:?} is not an absolute path"
        )));
    }
    let Some(real) = resolved(path) else {
        return Ok(());
    };
    if !under(&real, prefixes) {
        tracing::warn!(path, "not under a granted mount prefix: left alone");
        return Ok(());
    }
    // A stack of mounts comes down one at a time; a bound number of tries.
    for _ in 0..8 {
        if at(&table()?, &real).is_none() {
            break;
        }
        nix::mount::umount2(&real, nix::mount::MntFlags::UMOUNT_NOFOLLOW)
            .map_err(|e| Status::internal(format!("unmounting {}: {e}", real.display())))?;
        tracing::info!(path = %real.display(), "unmounted (its plugin is not loaded)");
    }
    if at(&table()?, &real).is_some() {
        return Err(Status::internal(format!(
            "{} is still mounted after unmounting it",
            real.display()
        )));
    }
    if remove {
        // Only an empty directory or an empty file (a block target).
        let empty_file =
            std::fs::symlink_metadata(&real).is_ok_and(|m| m.is_file() && m.len() == 0);
        let _ = if empty_file {
            std::fs::remove_file(&real)
        } else {
            std::fs::remove_dir(&real)
        };
    }
    Ok(())
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
