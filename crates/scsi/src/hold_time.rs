//! Hold-time measurement for the locks a logical unit's sessions share (issue 9: none may be held longer than a
//! lookup on the hot path, and `scripts/bench` shows it).
//!
//! The crate has no clock of its own (it is sans-IO): the runtime installs a [`HoldRecorder`] once, which reads
//! its clock and keeps the histograms. Without one (the simulator, unit tests) [`timed`] costs one atomic load.

use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

/// The locks shared by the sessions of a logical unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedLock {
    /// `range_lock::RangeLocks`: every command with an LBA range, twice (request and release).
    RangeTable,
    /// `ua::UnitAttentions` shards: every command's unit attention check.
    UnitAttentions,
    /// `pr::unit::Reservations`: the reservation check while a reservation exists, and PR commands.
    Reservations,
    /// The runtime's registry of a LUN's tasks in flight: every command, twice.
    LunTasks,
    /// The fault injection table of a target: every command while a rule is armed.
    FaultTable,
}

impl SharedLock {
    pub const ALL: [SharedLock; 5] = [
        SharedLock::RangeTable,
        SharedLock::UnitAttentions,
        SharedLock::Reservations,
        SharedLock::LunTasks,
        SharedLock::FaultTable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SharedLock::RangeTable => "range lock table",
            SharedLock::UnitAttentions => "unit attention shard",
            SharedLock::Reservations => "reservations",
            SharedLock::LunTasks => "LUN tasks in flight",
            SharedLock::FaultTable => "fault table",
        }
    }
}

/// The runtime's clock and histograms.
pub trait HoldRecorder: Send + Sync {
    /// A monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
    fn record(&self, lock: SharedLock, held_ns: u64);
}

static RECORDER: OnceLock<&'static dyn HoldRecorder> = OnceLock::new();

/// Installs the recorder; the first call wins (one per process).
pub fn install(recorder: &'static dyn HoldRecorder) {
    let _ = RECORDER.set(recorder);
}

/// A lock guard whose hold time is recorded when it is dropped.
pub struct Timed<G> {
    guard: G,
    lock: SharedLock,
    since: Option<u64>,
}

/// Wraps a guard just acquired: the hold time runs from now until the wrapper is dropped.
pub fn timed<G>(lock: SharedLock, guard: G) -> Timed<G> {
    let since = RECORDER.get().map(|recorder| recorder.now_ns());
    Timed { guard, lock, since }
}

impl<G> Drop for Timed<G> {
    fn drop(&mut self) {
        if let (Some(since), Some(recorder)) = (self.since, RECORDER.get()) {
            recorder.record(self.lock, recorder.now_ns().saturating_sub(since));
        }
    }
}

impl<G: Deref> Deref for Timed<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Timed<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}
