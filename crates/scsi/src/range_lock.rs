//! LBA range locks: what makes COMPARE AND WRITE atomic (SBC-4 5.3, 4.29) against every overlapping command from
//! every session and portal, while commands on other ranges run in parallel.
//!
//! Each lock names exactly the blocks a command touches, `[first, end)`, or the whole medium. Reads hold their
//! range shared; anything that changes the medium holds it exclusively. Two requests conflict when their ranges
//! overlap and one of them is exclusive, so CAWs on adjacent blocks (every heartbeat slot of a lockspace) never
//! wait for each other.
//!
//! Waiting is asynchronous: [`RangeLocks::lock`] returns a future that parks the command (not its thread) until
//! the range is free, and a blocking [`RangeLocks::lock_blocking`] serves synchronous callers. Grants are FIFO
//! among conflicting requests: a request is granted only when it conflicts with no held range and with no
//! request queued before it, so a whole-medium request (PERSISTENT RESERVE OUT, UNMAP) cannot be starved by a
//! stream of small I/O, and no two requests can wait on each other (the queue order is a total order).
//!
//! The table's mutex is held only while a request is compared against the held and queued ranges, never across
//! I/O or a wait: the hot path is one lookup. Nothing here blocks except `lock_blocking`, by design.

use crate::cdb::{BlockCount, Lba};
use crate::hold_time::{timed, SharedLock, Timed};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Shared,
    Exclusive,
}

/// The blocks a lock covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// `[first, end)` in logical blocks; a zero-length command still locks its first block, so it is ordered
    /// against writers of that block.
    Blocks { first: u64, end: u64 },
    /// Every block, and every reservation check (reservation changes hold the whole medium).
    Medium,
}

impl Span {
    /// The span of `blocks` blocks from `lba`.
    pub fn of(lba: Lba, blocks: BlockCount) -> Span {
        Span::Blocks {
            first: lba.0,
            end: lba.0.saturating_add(blocks.0.max(1)),
        }
    }

    fn overlaps(self, other: Span) -> bool {
        match (self, other) {
            (Span::Medium, _) | (_, Span::Medium) => true,
            (Span::Blocks { first: a, end: b }, Span::Blocks { first: c, end: d }) => {
                a < d && c < b
            }
        }
    }
}

/// One lock request: a span and an access mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub span: Span,
    pub access: Access,
}

impl LockRequest {
    fn conflicts_with(&self, other: &LockRequest) -> bool {
        let both_shared = self.access == Access::Shared && other.access == Access::Shared;
        !both_shared && self.span.overlaps(other.span)
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    request: LockRequest,
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Table {
    held: Vec<(u64, LockRequest)>,
    waiting: VecDeque<Waiter>,
    next_id: u64,
    /// Requests granted from the queue whose futures have not observed it yet.
    granted: Vec<u64>,
}

impl Table {
    fn free_for(&self, request: &LockRequest, queued_before: usize) -> bool {
        self.held.iter().all(|(_, h)| !request.conflicts_with(h))
            && self
                .waiting
                .iter()
                .take(queued_before)
                .all(|w| !request.conflicts_with(&w.request))
    }

    fn request(&mut self, request: LockRequest) -> (u64, bool) {
        let id = self.next_id;
        self.next_id += 1;
        if self.free_for(&request, self.waiting.len()) {
            self.held.push((id, request));
            (id, true)
        } else {
            self.waiting.push_back(Waiter {
                id,
                request,
                waker: None,
            });
            (id, false)
        }
    }

    /// Releases a held lock and grants what became free; returns the wakers of the granted requests.
    fn release(&mut self, id: u64) -> Vec<Waker> {
        self.held.retain(|(held, _)| *held != id);
        self.grant_free()
    }

    /// Withdraws a queued or granted-but-unobserved request (its future was dropped).
    fn cancel(&mut self, id: u64) -> Vec<Waker> {
        if let Some(at) = self.granted.iter().position(|g| *g == id) {
            self.granted.swap_remove(at);
            return self.release(id);
        }
        self.waiting.retain(|w| w.id != id);
        // A withdrawn request may have been the only thing keeping later ones queued.
        self.grant_free()
    }

    fn grant_free(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let mut index = 0;
        while index < self.waiting.len() {
            if self.free_for(&self.waiting[index].request, index) {
                if let Some(waiter) = self.waiting.remove(index) {
                    self.held.push((waiter.id, waiter.request));
                    self.granted.push(waiter.id);
                    wakers.extend(waiter.waker);
                }
            } else {
                index += 1;
            }
        }
        wakers
    }

    /// True when the queued request `id` was granted; registers `waker` otherwise.
    fn observe(&mut self, id: u64, waker: &Waker) -> bool {
        if let Some(at) = self.granted.iter().position(|g| *g == id) {
            self.granted.swap_remove(at);
            return true;
        }
        if let Some(waiter) = self.waiting.iter_mut().find(|w| w.id == id) {
            waiter.waker = Some(waker.clone());
        }
        false
    }
}

/// The range lock table of one logical unit. Cloning shares the table.
#[derive(Clone, Debug, Default)]
pub struct RangeLocks {
    table: Arc<Mutex<Table>>,
}

impl RangeLocks {
    fn table(&self) -> Timed<MutexGuard<'_, Table>> {
        // A panic while the table was locked cannot leave it half-updated in a way that matters more than
        // refusing every later command would: every update is a push or a remove.
        let guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        timed(SharedLock::RangeTable, guard)
    }

    /// Waits (asynchronously) for `request` and returns its guard.
    pub fn lock(&self, request: LockRequest) -> LockFuture {
        LockFuture {
            locks: self.clone(),
            request,
            state: FutureState::Unrequested,
        }
    }

    /// Takes `request` if it is free now, without queueing.
    pub fn try_lock(&self, request: LockRequest) -> Option<RangeGuard> {
        let mut table = self.table();
        if !table.free_for(&request, table.waiting.len()) {
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        table.held.push((id, request));
        Some(RangeGuard {
            locks: self.clone(),
            id,
        })
    }

    /// Waits for `request` by blocking the calling thread (synchronous callers and tests).
    pub fn lock_blocking(&self, request: LockRequest) -> RangeGuard {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = self.lock(request);
        loop {
            if let Poll::Ready(guard) = Pin::new(&mut future).poll(&mut context) {
                return guard;
            }
            std::thread::park();
        }
    }

    /// Locks held and queued now (diagnostics and tests).
    pub fn occupancy(&self) -> (usize, usize) {
        let table = self.table();
        (table.held.len(), table.waiting.len())
    }

    fn release(&self, id: u64) {
        let wakers = self.table().release(id);
        wakers.into_iter().for_each(Waker::wake);
    }

    fn cancel(&self, id: u64) {
        let wakers = self.table().cancel(id);
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Held while a command touches its range; dropping it releases the range and wakes whoever it unblocks.
#[derive(Debug)]
pub struct RangeGuard {
    locks: RangeLocks,
    id: u64,
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        self.locks.release(self.id);
    }
}

#[derive(Debug)]
enum FutureState {
    Unrequested,
    Queued(u64),
    Done,
}

/// A request for a range; dropping it before it resolves withdraws the request.
#[derive(Debug)]
pub struct LockFuture {
    locks: RangeLocks,
    request: LockRequest,
    state: FutureState,
}

impl Future for LockFuture {
    type Output = RangeGuard;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<RangeGuard> {
        let granted = |this: &mut LockFuture, id| {
            this.state = FutureState::Done;
            Poll::Ready(RangeGuard {
                locks: this.locks.clone(),
                id,
            })
        };
        match self.state {
            FutureState::Unrequested => {
                let mut table = self.locks.table();
                let (id, now) = table.request(self.request);
                if !now {
                    table.observe(id, context.waker());
                }
                drop(table);
                if now {
                    return granted(&mut self, id);
                }
                self.state = FutureState::Queued(id);
                Poll::Pending
            }
            FutureState::Queued(id) => {
                if self.locks.table().observe(id, context.waker()) {
                    return granted(&mut self, id);
                }
                Poll::Pending
            }
            FutureState::Done => Poll::Pending,
        }
    }
}

impl Drop for LockFuture {
    fn drop(&mut self) {
        if let FutureState::Queued(id) = self.state {
            self.locks.cancel(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(first: u64, end: u64, access: Access) -> LockRequest {
        LockRequest {
            span: Span::Blocks { first, end },
            access,
        }
    }

    fn noop_context() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn adjacent_exclusive_ranges_do_not_conflict_and_overlapping_ones_do() {
        let locks = RangeLocks::default();
        let _slot_7 = locks.try_lock(blocks(7, 8, Access::Exclusive)).unwrap();
        let _slot_8 = locks.try_lock(blocks(8, 9, Access::Exclusive)).unwrap();
        let _slot_6 = locks.try_lock(blocks(6, 7, Access::Exclusive)).unwrap();
        assert!(locks.try_lock(blocks(0, 100, Access::Shared)).is_none());
        assert!(locks.try_lock(blocks(7, 8, Access::Shared)).is_none());
        let _reader = locks.try_lock(blocks(9, 20, Access::Shared)).unwrap();
        let _reader_too = locks.try_lock(blocks(10, 11, Access::Shared)).unwrap();
        assert!(locks.try_lock(blocks(10, 11, Access::Exclusive)).is_none());
        assert_eq!(
            Span::of(Lba(5), BlockCount(0)),
            Span::Blocks { first: 5, end: 6 }
        );
    }

    #[test]
    fn a_queued_request_is_granted_on_release_and_fifo_protects_the_medium_lock() {
        let locks = RangeLocks::default();
        let write = locks.try_lock(blocks(0, 8, Access::Exclusive)).unwrap();
        let mut medium = locks.lock(LockRequest {
            span: Span::Medium,
            access: Access::Exclusive,
        });
        let mut context = noop_context();
        assert!(Pin::new(&mut medium).poll(&mut context).is_pending());
        // A later reader elsewhere queues behind the medium request instead of overtaking it.
        let mut reader = locks.lock(blocks(100, 101, Access::Shared));
        assert!(Pin::new(&mut reader).poll(&mut context).is_pending());
        assert_eq!(locks.occupancy(), (1, 2));
        drop(write);
        let medium_guard = match Pin::new(&mut medium).poll(&mut context) {
            Poll::Ready(guard) => guard,
            Poll::Pending => panic!("the medium lock was not granted on release"),
        };
        assert!(Pin::new(&mut reader).poll(&mut context).is_pending());
        drop(medium_guard);
        assert!(Pin::new(&mut reader).poll(&mut context).is_ready());
    }

    #[test]
    fn a_dropped_request_leaves_the_queue_and_unblocks_those_behind_it() {
        let locks = RangeLocks::default();
        let reader = locks.try_lock(blocks(0, 1, Access::Shared)).unwrap();
        let mut context = noop_context();
        let mut writer = locks.lock(blocks(0, 4, Access::Exclusive));
        assert!(Pin::new(&mut writer).poll(&mut context).is_pending());
        let mut second_reader = locks.lock(blocks(2, 3, Access::Shared));
        assert!(Pin::new(&mut second_reader).poll(&mut context).is_pending());
        drop(writer);
        assert!(Pin::new(&mut second_reader).poll(&mut context).is_ready());
        drop(second_reader);
        drop(reader);
        assert_eq!(locks.occupancy(), (0, 0));
    }

    #[test]
    fn a_granted_but_unobserved_request_is_released_when_dropped() {
        let locks = RangeLocks::default();
        let holder = locks.try_lock(blocks(0, 1, Access::Exclusive)).unwrap();
        let mut waiter = locks.lock(blocks(0, 1, Access::Exclusive));
        assert!(Pin::new(&mut waiter).poll(&mut noop_context()).is_pending());
        drop(holder);
        drop(waiter);
        assert_eq!(locks.occupancy(), (0, 0));
        assert!(locks.try_lock(blocks(0, 1, Access::Exclusive)).is_some());
    }

    #[test]
    fn lock_blocking_waits_for_another_thread_to_release() {
        let locks = RangeLocks::default();
        let held = locks.try_lock(blocks(3, 4, Access::Exclusive)).unwrap();
        let other = locks.clone();
        let waiter = std::thread::spawn(move || {
            let _guard = other.lock_blocking(blocks(3, 4, Access::Exclusive));
        });
        while locks.occupancy().1 == 0 {
            std::thread::yield_now();
        }
        drop(held);
        waiter.join().unwrap();
        assert_eq!(locks.occupancy(), (0, 0));
    }
}
