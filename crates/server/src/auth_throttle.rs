//! Slowing down repeated authentication failures from one source address (issue 12: CHAP guessing).
//!
//! Each failed CHAP login from an address makes that address's next failure answer later: the delay doubles
//! from [`FIRST_DELAY`] up to [`MAX_DELAY`], and the count decays after [`FORGET_AFTER`] without failures. Only
//! failures wait; a login that succeeds is answered at once, so other initiators behind the same address (a NAT,
//! a hypervisor with many guests) are never locked out by a neighbour's wrong secret. The table is bounded: when
//! it is full, the address whose last failure is oldest is forgotten.
//!
//! Sans-IO: callers pass the time, so tests need no clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses remembered at once.
pub const MAX_TRACKED_ADDRESSES: usize = 4096;
/// Delay after the second failure in a row (the first is answered at once: one typo is not an attack).
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest delay, well inside the login timeout so the initiator still gets its Authentication failure.
pub const MAX_DELAY: Duration = Duration::from_secs(4);
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug)]
struct Record {
    recent: u32,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct AuthFailures {
    by_address: HashMap<IpAddr, Record>,
    /// Every failure since start, for the log and metrics.
    total: u64,
}

impl AuthFailures {
    /// Counts a failure from `address` and returns how long to wait before answering it.
    pub fn record(&mut self, address: IpAddr, now: Instant) -> Duration {
        self.total += 1;
        if !self.by_address.contains_key(&address) && self.by_address.len() >= MAX_TRACKED_ADDRESSES
        {
            self.forget_oldest(now);
        }
        let record = self.by_address.entry(address).or_insert(Record {
            recent: 0,
            last: now,
        });
        if now.duration_since(record.last) > FORGET_AFTER {
            record.recent = 0;
        }
        record.recent = record.recent.saturating_add(1);
        record.last = now;
        delay_for(record.recent)
    }

    /// Failures from `address` that still count.
    pub fn recent(&self, address: IpAddr, now: Instant) -> u32 {
        self.by_address
            .get(&address)
            .filter(|r| now.duration_since(r.last) <= FORGET_AFTER)
            .map_or(0, |r| r.recent)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn tracked(&self) -> usize {
        self.by_address.len()
    }

    fn forget_oldest(&mut self, now: Instant) {
        self.by_address
            .retain(|_, r| now.duration_since(r.last) <= FORGET_AFTER);
        if self.by_address.len() < MAX_TRACKED_ADDRESSES {
            return;
        }
        if let Some(oldest) = self
            .by_address
            .iter()
            .min_by_key(|(_, r)| r.last)
            .map(|(a, _)| *a)
        {
            self.by_address.remove(&oldest);
        }
    }
}

/// The delay after the `recent`-th failure in a row.
fn delay_for(recent: u32) -> Duration {
    if recent <= 1 {
        return Duration::ZERO;
    }
    let doublings = (recent - 2).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    #[test]
    fn delays_double_to_a_ceiling_and_decay() {
        let mut failures = AuthFailures::default();
        let start = Instant::now();
        let delays: Vec<Duration> = (0..8)
            .map(|i| failures.record(address(1), start + Duration::from_secs(i)))
            .collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 250, 500, 1000, 2000, 4000, 4000, 4000]);
        // Another address is not slowed by the first one's failures.
        assert_eq!(failures.record(address(2), start), Duration::ZERO);
        let later = start + FORGET_AFTER + Duration::from_secs(60);
        assert_eq!(failures.recent(address(1), later), 0);
        assert_eq!(failures.record(address(1), later), Duration::ZERO);
        assert_eq!(failures.total(), 10);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut failures = AuthFailures::default();
        let start = Instant::now();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 500) {
            failures.record(address(i), start + Duration::from_millis(i as u64));
        }
        assert_eq!(failures.tracked(), MAX_TRACKED_ADDRESSES);
        // The newest are kept, the oldest forgotten.
        let newest = address(MAX_TRACKED_ADDRESSES as u32 + 499);
        assert_eq!(failures.recent(newest, start), 1);
        assert_eq!(failures.recent(address(0), start), 0);
    }
}
