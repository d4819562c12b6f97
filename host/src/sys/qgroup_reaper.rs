//! Removes the qgroups of deleted btrfs subvolumes, off the call path. The
//! kernel keeps a deleted subvolume's qgroup busy until its cleaner has
//! dropped the subvolume, which takes a transaction commit and then a
//! while; a DeleteVolume used to wait for both. Now it answers once the
//! subvolume is gone (made durable by the plugin's own sync), and this
//! reaper, woken by each delete and once when the root is opened, removes
//! every level-0 qgroup whose subvolume no longer exists on the
//! filesystem — so one left by a crash or a restart is removed by the next
//! delete or start. Its commits go through the filesystem's group sync.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{btrfs, group_sync};

/// How often a sweep is retried while some qgroup is still busy.
const BUSY_RETRIES: u32 = 5;
const BUSY_PAUSE: Duration = Duration::from_millis(500);

/// At most one sweep runs per reaper; a wake during a sweep asks for one
/// more after it.
#[derive(Default)]
pub struct QgroupReaper {
    state: Mutex<Sweeps>,
}

#[derive(Default)]
struct Sweeps {
    running: bool,
    again: bool,
}

impl QgroupReaper {
    /// Starts a sweep of the filesystem `fd` is on, in the background,
    /// unless one is running (then it sweeps once more when done).
    pub fn wake(self: &Arc<Self>, fd: BorrowedFd) {
        let mut state = self.lock();
        if state.running {
            state.again = true;
            return;
        }
        let fd = match fd.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "qgroup reaper: cannot hold the filesystem open");
                return;
            }
        };
        state.running = true;
        state.again = false;
        drop(state);
        let reaper = self.clone();
        let spawned = std::thread::Builder::new()
            .name("qgroup-reaper".into())
            .spawn(move || reaper.run(fd));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "qgroup reaper: cannot start its thread");
            self.lock().running = false;
        }
    }

    /// Whether a sweep is running or asked for (for tests).
    pub fn busy(&self) -> bool {
        let state = self.lock();
        state.running || state.again
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sweeps> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, fd: OwnedFd) {
        loop {
            sweep(fd.as_fd());
            let mut state = self.lock();
            if !state.again {
                state.running = false;
                return;
            }
            state.again = false;
        }
    }
}

/// Removes the qgroups of deleted subvolumes; returns how many are left
/// (still busy after the retries, or failing).
pub fn sweep(fd: BorrowedFd) -> usize {
    let mut left = Vec::new();
    for attempt in 0..=BUSY_RETRIES {
        let stale = match btrfs::stale_qgroups(fd) {
            Ok(stale) => stale,
            Err(e) => {
                tracing::warn!(error = %e.message, "qgroup reaper: listing qgroups");
                return 0;
            }
        };
        if stale.is_empty() {
            return 0;
        }
        if attempt > 0 {
            std::thread::sleep(BUSY_PAUSE);
        }
        // The deletions must be committed before the cleaner drops them.
        if let Err(e) = commit(fd) {
            tracing::warn!(error = %e, "qgroup reaper: committing");
        }
        for &id in &stale {
            btrfs::wait_for_cleaner(fd, id);
        }
        left.clear();
        for id in stale {
            match btrfs::remove_qgroup(fd, id) {
                Ok(()) => tracing::debug!(qgroup = %format!("0/{id}"), "stale qgroup removed"),
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => left.push((id, e)),
            }
        }
        if left.is_empty() {
            return 0;
        }
    }
    for (id, e) in &left {
        tracing::info!(qgroup = %format!("0/{id}"), error = %e,
            "qgroup of a deleted subvolume still busy; removed by a later sweep");
    }
    left.len()
}

/// One transaction commit of the filesystem, shared with every other
/// caller that asks for one meanwhile.
fn commit(fd: BorrowedFd) -> Result<(), String> {
    let group = group_sync::of(fd).map_err(|e| e.to_string())?;
    group.sync(|| group_sync::btrfs_commit(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::time::Instant;

    fn level0_qgroups(mnt: &std::path::Path) -> Vec<String> {
        let out = std::process::Command::new("btrfs")
            .args(["qgroup", "show", "--raw"])
            .arg(mnt)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|q| q.starts_with("0/") && *q != "0/5")
            .map(str::to_string)
            .collect()
    }

    /// Subvolumes deleted with nothing but the delete (as a crash or a
    /// restart would leave them) are found stale and their qgroups removed
    /// by a later wake; a live subvolume's qgroup stays.
    #[test]
    fn a_wake_reaps_the_qgroups_of_every_deleted_subvolume() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        crate::testkit::mount_btrfs(&dir.path().join("fs.img"), &mnt, 1 << 30).unwrap();
        let result = std::panic::catch_unwind(|| {
            let root = std::fs::File::open(&mnt).unwrap();
            btrfs::enable_quotas(root.as_fd()).unwrap();
            for name in ["keep", "gone1", "gone2", "gone3"] {
                btrfs::create(root.as_fd(), OsStr::new(name)).unwrap();
            }
            let keep = std::fs::File::open(mnt.join("keep")).unwrap();
            let keep_id = btrfs::subvolume_id(keep.as_fd()).unwrap();
            std::fs::write(mnt.join("gone1/data"), vec![1u8; 4 << 20]).unwrap();
            for name in ["gone1", "gone2", "gone3"] {
                btrfs::destroy(root.as_fd(), OsStr::new(name)).unwrap();
            }
            assert_eq!(btrfs::stale_qgroups(root.as_fd()).unwrap().len(), 3);
            assert_eq!(level0_qgroups(&mnt).len(), 4);

            let reaper = Arc::new(QgroupReaper::default());
            reaper.wake(root.as_fd());
            let started = Instant::now();
            while reaper.busy() {
                assert!(started.elapsed() < Duration::from_secs(60), "sweep hangs");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(level0_qgroups(&mnt), vec![format!("0/{keep_id}")]);
            assert!(btrfs::stale_qgroups(root.as_fd()).unwrap().is_empty());
        });
        crate::testkit::teardown(dir.path());
        result.unwrap();
    }

    /// Without quotas there is nothing to reap, and no error.
    #[test]
    fn nothing_to_reap_without_quotas() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        crate::testkit::mount_btrfs(&dir.path().join("fs.img"), &mnt, 1 << 30).unwrap();
        let root = std::fs::File::open(&mnt).unwrap();
        btrfs::create(root.as_fd(), OsStr::new("a")).unwrap();
        btrfs::destroy(root.as_fd(), OsStr::new("a")).unwrap();
        let stale = btrfs::stale_qgroups(root.as_fd());
        let left = sweep(root.as_fd());
        drop(root);
        crate::testkit::teardown(dir.path());
        assert!(stale.unwrap().is_empty());
        assert_eq!(left, 0);
    }
}
