//! Deterministic simulation of lunlock's reservation, COMPARE AND WRITE and lock-manager code (issue 5).
//!
//! One thread, one seed: the real `scsi` LogicalUnits over a crash-simulating store, running many commands at once
//! as the server does (admission, the real range-lock futures, a seeded I/O latency, execution; `world::target`),
//! the real `cluster` lock manager in simulated hosts, a simulated network and clock, and faults drawn from the seed: lost requests and
//! replies, delays and reordering, host pauses, crashes and partitions, target power loss, injected BUSY and
//! spurious miscompares. Checkers run at every command and every resolver verdict (`checks`), and at every lock
//! grant (`actors::Referee`). The same seed gives the same run, event for event.

pub mod actors;
pub mod checks;
pub mod executor;
pub mod io;
pub mod run;
pub mod store;
pub mod world;

pub use run::{run_seed, SeedReport, SimOptions};
pub use world::{BrokenTarget, FaultKind};
