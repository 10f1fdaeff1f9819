//! A one-way flag that async code can wait for: once set it stays set, and every waiter, earlier or later, resumes.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Latch {
    set: AtomicBool,
    changed: Notify,
}

impl Latch {
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once `set` has been called. The waiter registers before it looks at the flag, so a `set` between
    /// the two cannot be missed.
    pub async fn wait(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Latch;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_waiter_resumes_whether_it_came_before_or_after_the_set() {
        let latch = Arc::new(Latch::default());
        let early = tokio::spawn({
            let latch = Arc::clone(&latch);
            async move { latch.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!latch.is_set());
        latch.set();
        early.await.unwrap();
        latch.wait().await;
        assert!(latch.is_set());
    }
}
