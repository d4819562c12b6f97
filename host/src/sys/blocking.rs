//! Capability work that makes blocking system calls (lookups, statfs,
//! mounts, ioctls) runs here, never on the async workers: on a hung
//! filesystem (a dead NFS server, a FUSE daemon that stopped) such a call
//! never returns, and on a worker it would take the driver's gRPC with it.
//! Off the workers, the call's deadline ends the *call* (its future is
//! dropped) while the stuck thread waits alone. A bound on those threads
//! keeps a hung mount polled by kubelet from piling up threads without end.
//!
//! A plugin call already runs on a thread of its own (the runtime's call
//! threads, which mark themselves with [`CallThreadMark`]): there the work
//! runs inline, one hand-off per call instead of one per system call.

use std::cell::Cell;
use std::sync::LazyLock;

use tokio::sync::Semaphore;

use super::{CapError, ErrorCode};

/// Threads that may be inside capability system calls at once, node-wide.
const MAX_BLOCKING: usize = 64;

static SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(MAX_BLOCKING));

thread_local! {
    /// This thread runs one plugin call and nothing else: it may block.
    static ON_CALL_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a plugin call's own for as long as it
/// lives; the thread's owner bounds such threads (`runtime::call_threads`).
pub struct CallThreadMark {
    was: bool,
}

impl CallThreadMark {
    pub fn set() -> CallThreadMark {
        CallThreadMark {
            was: ON_CALL_THREAD.replace(true),
        }
    }
}

impl Drop for CallThreadMark {
    fn drop(&mut self) {
        ON_CALL_THREAD.set(self.was);
    }
}

/// Runs `work` inline on a plugin call's own thread; anywhere else on the
/// blocking pool, holding one of the bounded slots for as long as it runs
/// (also when its caller has given up on it).
pub async fn run<T, F>(work: F) -> Result<T, CapError>
where
    F: FnOnce() -> Result<T, CapError> + Send + 'static,
    T: Send + 'static,
{
    if ON_CALL_THREAD.get() {
        return work();
    }
    let slot = SLOTS
        .acquire()
        .await
        .map_err(|_| CapError::new(ErrorCode::Unavailable, "the driver is shutting down"))?;
    let handle = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    });
    handle
        .await
        .map_err(|e| CapError::internal(format!("blocking work failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_of_work() -> std::thread::ThreadId {
        let ran =
            tokio::runtime::Handle::current().block_on(run(|| Ok(std::thread::current().id())));
        ran.expect("work ran")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn inline_on_a_call_thread_handed_off_elsewhere() {
        let on_worker = run(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(on_worker, std::thread::current().id(), "a worker hands off");
        tokio::task::spawn_blocking(|| {
            let here = std::thread::current().id();
            {
                let _mark = CallThreadMark::set();
                assert_eq!(thread_of_work(), here, "a call thread runs it inline");
            }
            assert_ne!(thread_of_work(), here, "the mark ends with its guard");
        })
        .await
        .unwrap();
    }
}
