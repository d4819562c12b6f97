//! Group commit: calls that need one filesystem made durable share a sync.
//! A call registers and waits; one sync covers every call that registered
//! before it started, so N concurrent calls pay for one or two syncs, not N
//! (what a database's write-ahead log does with concurrent commits). The
//! sync itself is the caller's: on btrfs a transaction commit
//! (`btrfs_commit`), elsewhere `syncfs`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The syncs of one filesystem.
#[derive(Default)]
pub struct GroupSync {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    /// Tickets handed out: the last call that registered.
    registered: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Every ticket up to this one was covered by a sync that failed.
    failed: u64,
    failure: String,
    /// A sync is running (its caller is the leader).
    running: bool,
}

impl GroupSync {
    /// Makes durable what the caller did before calling: returns once a
    /// sync that started after this call registered has finished. `sync`
    /// runs at most once, when this call leads the next sync; it must
    /// sync the whole filesystem.
    pub fn sync(&self, sync: impl FnOnce() -> std::io::Result<()>) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.registered += 1;
        let ticket = state.registered;
        let mut sync = Some(sync);
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if state.failed >= ticket {
                return Err(state.failure.clone());
            }
            if !state.running {
                // Lead: the sync covers everyone registered until now.
                let covers = state.registered;
                state.running = true;
                drop(state);
                let result = match sync.take() {
                    Some(f) => f(),
                    None => unreachable!("a call leads at most one sync"),
                };
                state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.running = false;
                match result {
                    Ok(()) => state.durable = state.durable.max(covers),
                    Err(e) => {
                        state.failed = state.failed.max(covers);
                        state.failure = e.to_string();
                    }
                }
                self.finished.notify_all();
                continue;
            }
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The group of the filesystem `fd` is on (by device number), made on
/// first use and kept for the life of the process (one per filesystem).
pub fn of(fd: BorrowedFd) -> std::io::Result<Arc<GroupSync>> {
    static GROUPS: OnceLock<Mutex<HashMap<u64, Arc<GroupSync>>>> = OnceLock::new();
    let dev = rustix::fs::fstat(fd)?.st_dev;
    let mut groups = GROUPS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Ok(groups.entry(dev).or_default().clone())
}

/// Commits the current btrfs transaction of the filesystem `fd` is on and
/// waits for it (`BTRFS_IOC_START_SYNC`, `BTRFS_IOC_WAIT_SYNC`). Unlike
/// `BTRFS_IOC_SYNC` it does not first write out every file's dirty data.
pub fn btrfs_commit(fd: BorrowedFd) -> std::io::Result<()> {
    const START_SYNC: libc::c_ulong = 0x8008_9418; // _IOR(0x94, 24, u64)
    const WAIT_SYNC: libc::c_ulong = 0x4008_9416; // _IOW(0x94, 22, u64)
    let mut transid = 0u64;
    // SAFETY: both requests take a pointer to one u64.
    if unsafe { libc::ioctl(fd.as_raw_fd(), START_SYNC, &mut transid as *mut u64) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), WAIT_SYNC, &mut transid as *mut u64) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Barrier;
    use std::time::Duration;

    /// A call that registers while a sync runs is not covered by it: it
    /// waits for the next one, which covers every call waiting with it.
    #[test]
    fn one_sync_covers_all_who_registered_before_it_started() {
        let group = Arc::new(GroupSync::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let (in_sync, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let first = std::thread::spawn({
            let (group, syncs) = (group.clone(), syncs.clone());
            let (in_sync, release) = (in_sync.clone(), release.clone());
            move || {
                group.sync(|| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    in_sync.wait();
                    release.wait();
                    Ok(())
                })
            }
        });
        in_sync.wait(); // the first sync is running
        let late: Vec<_> = (0..8)
            .map(|_| {
                let (group, syncs) = (group.clone(), syncs.clone());
                std::thread::spawn(move || {
                    group.sync(|| {
                        syncs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        // Let them all register behind the running sync.
        while group.state.lock().unwrap().registered < 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        release.wait();
        first.join().unwrap().unwrap();
        for t in late {
            t.join().unwrap().unwrap();
        }
        // Not covered by the first sync, all covered by the second.
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn each_sequential_call_gets_its_own_sync() {
        let group = GroupSync::default();
        let syncs = AtomicU64::new(0);
        for _ in 0..3 {
            group
                .sync(|| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(syncs.load(Ordering::SeqCst), 3);
    }

    /// A failed sync fails every call it covered; the next call syncs anew.
    #[test]
    fn a_failed_sync_fails_those_it_covered_only() {
        let group = GroupSync::default();
        let err = group.sync(|| Err(std::io::Error::from_raw_os_error(libc::EIO)));
        assert!(err.unwrap_err().contains("Input/output"));
        assert_eq!(group.sync(|| Ok(())), Ok(()));
    }

    #[test]
    fn one_group_per_filesystem() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let a = std::fs::File::open(dir.path()).unwrap();
        let b = std::fs::File::open(".").unwrap();
        let same = std::fs::File::open(dir.path()).unwrap();
        let ga = of(a.as_fd()).unwrap();
        assert!(Arc::ptr_eq(&ga, &of(same.as_fd()).unwrap()));
        let (da, db) = (
            rustix::fs::fstat(&a).unwrap().st_dev,
            rustix::fs::fstat(&b).unwrap().st_dev,
        );
        assert_eq!(da == db, Arc::ptr_eq(&ga, &of(b.as_fd()).unwrap()));
    }

    /// On a real btrfs the commit succeeds (a wrong request number is
    /// refused); elsewhere it is refused.
    #[test]
    fn btrfs_commit_commits_on_btrfs_only() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        let not_btrfs = std::fs::File::open(dir.path()).unwrap();
        if !crate::sys::btrfs::on_btrfs(not_btrfs.as_fd()).unwrap() {
            assert!(btrfs_commit(not_btrfs.as_fd()).is_err());
        }
        crate::testkit::mount_btrfs(&dir.path().join("fs.img"), &mnt, 1 << 30).unwrap();
        let root = std::fs::File::open(&mnt).unwrap();
        let result = btrfs_commit(root.as_fd());
        drop(root);
        crate::testkit::teardown(dir.path());
        result.unwrap();
    }
}
