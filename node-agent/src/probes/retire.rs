//! Series that name a probe (a script's or a DynamicLog's own counters) outlive it by
//! [`RETIRE_AFTER`]: the last scrape still sees their final values, and a node's series do not
//! grow with every probe it ever ran. A probe started again under the same name within that time
//! keeps them.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// As long as the RED series of a target no longer traced stay.
pub const RETIRE_AFTER: Duration = super::protocols::metrics::GONE_TARGET_TTL;

/// Removals waiting for their time, by name; cheap to clone (clones share them).
#[derive(Clone, Debug, Default)]
pub struct Retirements {
    /// Name → the ticket of its pending removal: a removal runs only if its ticket is still there.
    pending: Arc<Mutex<HashMap<String, u64>>>,
    tickets: Arc<AtomicU64>,
}

impl Retirements {
    /// `name` runs (again): a pending removal of its series is called off.
    pub fn started(&self, name: &str) {
        self.lock().remove(name);
    }

    /// `name` stopped: `remove` runs [`RETIRE_AFTER`] from now (on Tokio's clock) unless `name`
    /// starts again meanwhile. Outside a Tokio runtime it runs at once: nothing could run it later.
    pub fn stopped(&self, name: &str, remove: impl FnOnce() + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            remove();
            return;
        };
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(name.to_owned(), ticket);
        let this = self.clone();
        let name = name.to_owned();
        runtime.spawn(async move {
            tokio::time::sleep(RETIRE_AFTER).await;
            let mut pending = this.lock();
            if pending.get(&name) == Some(&ticket) {
                pending.remove(&name);
                drop(pending);
                remove();
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting() -> (Arc<AtomicUsize>, impl Fn() -> Box<dyn FnOnce() + Send>) {
        let removed = Arc::new(AtomicUsize::new(0));
        let r = removed.clone();
        (removed, move || {
            let r = r.clone();
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_probes_series_go_after_the_delay_unless_it_starts_again() {
        let retirements = Retirements::default();
        let (removed, remove) = counting();
        retirements.stopped("a", remove());
        retirements.stopped("b", remove());
        tokio::time::sleep(RETIRE_AFTER / 2).await;
        retirements.started("b");
        tokio::time::sleep(RETIRE_AFTER / 2 - Duration::from_secs(1)).await;
        assert_eq!(removed.load(Ordering::SeqCst), 0, "still scraped");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(removed.load(Ordering::SeqCst), 1, "a went, b runs again");
        // b stops again: its removal counts from then.
        retirements.stopped("b", remove());
        tokio::time::sleep(RETIRE_AFTER + Duration::from_secs(1)).await;
        assert_eq!(removed.load(Ordering::SeqCst), 2);
    }
}
