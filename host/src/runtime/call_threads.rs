//! The threads plugin calls run on: a call leaves the async workers once,
//! and runs synchronously on a thread of its own, where WASI file work and
//! capability system calls block that thread alone (one hand-off per call,
//! not one per system call).
//!
//! The threads are tokio's blocking pool, and each call is driven there by
//! `Handle::block_on`: the pool keeps idle threads warm between calls, and
//! the runtime stays reachable from the call (wasi:http's connections and
//! timers are spawned on, and driven by, the async workers). A dedicated
//! pool with a current-thread runtime each would leave those tasks undriven
//! between calls and cost one I/O driver per thread.
//!
//! Node-wide, at most [`bound`] calls hold a thread: the engine's instance
//! capacity, since every call thread holds one instance (see
//! `Plugin::run`). A call stuck in a system call (a hung mount) keeps its
//! thread, and its plugin's slots, until the call returns; new calls get
//! the others, and as each plugin's stuck calls are bounded by its own
//! budget, no plugin's stuck calls take another's threads.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

use crate::capabilities::blocking::CallThreadMark;

/// Threads handed out; grows to the engine's instance capacity.
static THREADS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
static BOUND: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Makes room for `threads` calls at once (the engine's instance capacity,
/// set once it is built); the bound only grows.
pub fn reserve(threads: usize) {
    let mut bound = BOUND.lock().expect("call threads bound");
    if threads > *bound {
        THREADS.add_permits(threads - *bound);
        *bound = threads;
    }
}

/// How many calls may hold a thread at once, node-wide.
pub fn bound() -> usize {
    *BOUND.lock().expect("call threads bound")
}

/// Why a call got no thread.
#[derive(Debug, thiserror::Error)]
pub enum NoThread {
    #[error("the driver is shutting down")]
    ShuttingDown,
    #[error("the call thread failed: {0}")]
    Failed(String),
}

/// Runs `call` to its end on a call thread, and waits for its answer. If
/// the caller stops waiting (its deadline), the call still runs to its end
/// there (the epoch deadline ends wasm code; a stuck system call holds the
/// thread until it returns), and only then frees the thread.
pub async fn run<T, F>(call: F) -> Result<T, NoThread>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let slot = THREADS
        .acquire()
        .await
        .map_err(|_| NoThread::ShuttingDown)?;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _mark = CallThreadMark::set();
        runtime.block_on(call)
    })
    .await
    .map_err(|e| NoThread::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stuck_call_holds_one_thread_and_the_rest_still_run() {
        reserve(2);
        let bound = bound();
        // Every thread but one stuck (a hung mount), the last still serves.
        let (unstick, stuck) = std::sync::mpsc::channel::<()>();
        let stuck = std::sync::Arc::new(std::sync::Mutex::new(stuck));
        let mut held = Vec::new();
        for _ in 0..bound - 1 {
            let stuck = stuck.clone();
            held.push(tokio::spawn(run(async move {
                let _ = stuck.lock().unwrap().recv();
            })));
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), run(async { 7 }))
            .await
            .expect("a free thread answers")
            .unwrap();
        assert_eq!(answer, 7);
        drop(unstick);
        for h in held {
            h.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_call_runs_marked_on_its_own_thread() {
        reserve(1);
        let caller = std::thread::current().id();
        let (thread, inline) = run(async {
            let thread = std::thread::current().id();
            let inline = crate::capabilities::blocking::run(|| Ok(std::thread::current().id()))
                .await
                .unwrap();
            (thread, inline)
        })
        .await
        .unwrap();
        assert_ne!(thread, caller);
        assert_eq!(inline, thread, "capability work runs on the call's thread");
    }
}
