//! What one plugin may hold at once, kept by the plugin's *name*: every
//! version loaded under that name (the one serving, and older ones still
//! finishing calls after a reload) draws on the same budget. A reload can
//! therefore never hand out fresh permits, and no plugin can take more of
//! the engine's instance pool than its own share.
//!
//! Two bounds, one semaphore each:
//! - calls: `limits.maxConcurrentCalls`, taken by every call for its whole
//!   length (the wait for it counts in the call's deadline);
//! - instances: the calls plus [`CHECK_SLOTS`] for a reload's checks (the
//!   new version's `info()`), taken around every instantiation. The engine's
//!   pool is sized for the sum of these over all plugins (`loader`), so one
//!   plugin's instances never crowd out another's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Instances a plugin may have beyond its calls: one reload check at a time
/// (a plugin's reloads run one after another).
pub const CHECK_SLOTS: u32 = 1;

/// A semaphore whose size can change while permits are out.
struct Resizable {
    semaphore: Arc<Semaphore>,
    /// The size asked for last; permits out beyond it are retired as they
    /// come back.
    size: Mutex<u32>,
}

impl Resizable {
    fn new(size: u32) -> Resizable {
        Resizable {
            semaphore: Arc::new(Semaphore::new(size as usize)),
            size: Mutex::new(size),
        }
    }

    /// Grows at once. Shrinks by retiring free permits now and the rest as
    /// calls in flight give theirs back: until then new callers wait (the
    /// semaphore is fair, so the retiring comes first), and the number held
    /// never goes above the new size once it is reached.
    fn resize(&self, new: u32) {
        let mut size = self.size.lock().expect("budget lock");
        let old = *size;
        *size = new;
        drop(size);
        if new > old {
            self.semaphore.add_permits((new - old) as usize);
        } else if new < old {
            let excess = (old - new) as usize;
            let retired = self.semaphore.forget_permits(excess);
            let rest = excess - retired;
            if rest > 0 {
                let semaphore = self.semaphore.clone();
                tokio::spawn(async move {
                    if let Ok(permits) = semaphore.acquire_many_owned(rest as u32).await {
                        permits.forget();
                    }
                });
            }
        }
    }

    fn size(&self) -> u32 {
        *self.size.lock().expect("budget lock")
    }
}

/// One plugin name's budget.
pub struct Budget {
    calls: Resizable,
    instances: Resizable,
}

impl Budget {
    fn new(max_calls: u32) -> Budget {
        Budget {
            calls: Resizable::new(max_calls),
            instances: Resizable::new(max_calls + CHECK_SLOTS),
        }
    }

    /// Waits for a call slot (dropping the permit frees it), held on the
    /// call's thread until the call ends.
    pub async fn call(&self) -> OwnedSemaphorePermit {
        self.calls
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// Waits for an instance slot, held while the instance lives (on the
    /// call's thread, which may outlive its caller).
    pub async fn instance(&self) -> OwnedSemaphorePermit {
        self.instances
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// Applies a new `maxConcurrentCalls` (see `Resizable::resize`).
    pub fn set_max_calls(&self, max_calls: u32) {
        self.calls.resize(max_calls);
        self.instances.resize(max_calls + CHECK_SLOTS);
    }

    pub fn max_calls(&self) -> u32 {
        self.calls.size()
    }
}

/// Every plugin name's budget, for the life of the process.
#[derive(Default)]
pub struct Budgets {
    by_name: Mutex<HashMap<String, Arc<Budget>>>,
}

impl Budgets {
    /// The budget of `plugin`, made with `max_calls` the first time. A
    /// changed limit is applied by `set_max_calls` once the version that
    /// asks for it is loaded.
    pub fn of(&self, plugin: &str, max_calls: u32) -> Arc<Budget> {
        self.by_name
            .lock()
            .expect("budgets lock")
            .entry(plugin.to_string())
            .or_insert_with(|| Arc::new(Budget::new(max_calls)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn free(r: &Resizable) -> usize {
        r.semaphore.available_permits()
    }

    #[tokio::test]
    async fn one_name_one_budget_across_versions() {
        let budgets = Budgets::default();
        let v1 = budgets.of("p", 2);
        let v2 = budgets.of("p", 2);
        let _a = v1.call().await;
        let _b = v2.call().await;
        let third = tokio::time::timeout(Duration::from_millis(50), v2.call()).await;
        assert!(
            third.is_err(),
            "a new version must not hand out fresh permits"
        );
        assert!(!Arc::ptr_eq(&v1, &budgets.of("q", 2)));
    }

    #[tokio::test]
    async fn growing_frees_slots_at_once() {
        let budget = Budget::new(1);
        let _a = budget.call().await;
        budget.set_max_calls(3);
        let _b = budget.call().await;
        let _c = budget.call().await;
        assert_eq!(free(&budget.calls), 0);
        assert_eq!(free(&budget.instances), 4);
    }

    #[tokio::test]
    async fn shrinking_waits_for_calls_in_flight_then_holds() {
        let budget = Arc::new(Budget::new(4));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(budget.call().await);
        }
        budget.set_max_calls(1);
        // One was free and is retired now; two more come back first.
        assert_eq!(free(&budget.calls), 0);
        assert_eq!(budget.max_calls(), 1);
        drop(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(free(&budget.calls), 1, "in flight drained to the new size");
        let _one = budget.call().await;
        let second = tokio::time::timeout(Duration::from_millis(50), budget.call()).await;
        assert!(second.is_err(), "the new limit holds");
    }
}
