//! Per-key serialisation: operations on one volume id or name run one at a
//! time, operations on different keys never wait for each other. Entries
//! disappear when their last holder or waiter leaves, so the map stays as
//! small as the set of keys in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    slots: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds one key; dropping it lets the next waiter in.
pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Waits up to `wait` for `key`; `None` when it stayed busy.
    pub async fn lock(&self, key: &str, wait: Duration) -> Option<KeyGuard<'_>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(key.to_string()).or_default().clone()
        };
        let mut guard = KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: None,
        };
        match tokio::time::timeout(wait, slot.lock_owned()).await {
            Ok(owned) => {
                guard.guard = Some(owned);
                Some(guard)
            }
            // Dropping `guard` tidies the map up.
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut slots = self.locks.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds the slot now: nobody holds or waits for it.
        if slots
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_waits_other_key_does_not() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a", Duration::from_secs(1)).await.unwrap();
        assert!(locks.lock("a", Duration::from_millis(20)).await.is_none());
        assert!(locks.lock("b", Duration::from_millis(20)).await.is_some());
        drop(a);
        assert!(locks.lock("a", Duration::from_millis(20)).await.is_some());
        assert!(locks.is_empty(), "entries must not outlive their users");
    }
}
