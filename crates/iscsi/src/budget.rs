//! The target-wide budget for write data (RFC 7143 leaves buffer management to the target).
//!
//! A write reserves its whole expected data transfer length here before it solicits any data, and gives it back
//! when its command completes or is dropped. Reserving all of it at once, rather than burst by burst, means no
//! write ever waits for budget while holding part of it, so writes cannot deadlock one another. The bytes
//! themselves are allocated only as Data-Out arrives (see `session`), so a write that claims 64 MiB and sends
//! nothing costs its reservation, not memory. A write that cannot reserve is answered TASK SET FULL (SAM-5 5.3)
//! and the initiator retries it.
//!
//! Shared between sessions through an `Arc` of atomics: no lock, no I/O, usable under simulation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Shared {
    limit: u64,
    reserved: AtomicU64,
    refused: AtomicU64,
}

/// A handle to one budget; clones share it.
#[derive(Clone, Debug)]
pub struct WriteBudget {
    shared: Arc<Shared>,
}

/// Bytes held from a [`WriteBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    shared: Arc<Shared>,
    bytes: u64,
}

impl WriteBudget {
    pub fn new(limit_bytes: u64) -> WriteBudget {
        WriteBudget {
            shared: Arc::new(Shared {
                limit: limit_bytes,
                reserved: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// A budget no write can exhaust (tests, simulation, and a session built without one).
    pub fn unlimited() -> WriteBudget {
        WriteBudget::new(u64::MAX)
    }

    /// Reserves `bytes`, or returns None (and counts the refusal) when that would exceed the limit.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let shared = &self.shared;
        let mut current = shared.reserved.load(Ordering::Relaxed);
        loop {
            let wanted = current.checked_add(bytes).filter(|&w| w <= shared.limit);
            let Some(wanted) = wanted else {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match shared.reserved.compare_exchange_weak(
                current,
                wanted,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        shared: Arc::clone(shared),
                        bytes,
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }

    pub fn limit(&self) -> u64 {
        self.shared.limit
    }

    /// Bytes reserved now, over every session.
    pub fn reserved(&self) -> u64 {
        self.shared.reserved.load(Ordering::Relaxed)
    }

    /// Reservations refused since the budget was made (each was answered TASK SET FULL).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Default for WriteBudget {
    fn default() -> Self {
        WriteBudget::unlimited()
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back_on_drop() {
        let budget = WriteBudget::new(100);
        let a = budget.try_reserve(60).expect("fits");
        assert!(budget.try_reserve(41).is_none());
        assert_eq!(budget.refused(), 1);
        let b = budget.try_reserve(40).expect("fits exactly");
        assert_eq!(budget.reserved(), 100);
        drop(a);
        assert_eq!(budget.reserved(), 40);
        assert!(budget.try_reserve(60).is_some());
        drop(b);
        assert_eq!(budget.reserved(), 0);
    }

    #[test]
    fn a_reservation_that_would_overflow_is_refused() {
        let budget = WriteBudget::unlimited();
        let _held = budget.try_reserve(u64::MAX - 1).expect("fits");
        assert!(budget.try_reserve(2).is_none());
    }
}
