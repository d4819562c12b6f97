//! Capability work that makes blocking system calls (lookups, statfs,
//! mounts, ioctls) runs here, never on the async workers: on a hung
//! filesystem (a dead NFS server, a FUSE daemon that stopped) such a call
//! never returns, and on a worker it would take the driver's gRPC with it.
//! Off the workers, the call's deadline ends the *call* (its future is
//! dropped) while the stuck thread waits alone. A bound on those threads
//! keeps a hung mount polled by kubelet from piling up threads without end.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

use super::{CapError, ErrorCode};

/// Threads that may be inside capability system calls at once, node-wide.
const MAX_BLOCKING: usize = 64;

static SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(MAX_BLOCKING));

/// Runs `work` on the blocking pool, holding one of the bounded slots for
/// as long as it runs (also when its caller has given up on it).
pub async fn run<T, F>(work: F) -> Result<T, CapError>
where
    F: FnOnce() -> Result<T, CapError> + Send + 'static,
    T: Send + 'static,
{
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
