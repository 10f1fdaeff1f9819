//! The simulated target: the real `scsi` LogicalUnits over tracking stores, running commands the way the server's
//! runtime does (docs/architecture.md, "Threading and I/O model"): many at once, each through the same phases.
//!
//! 1. **Admission** when the command arrives ([`LogicalUnit::admit`]): unit attention, decode, Data-Out checks.
//!    A command answered here never touches the medium and is replied to at once.
//! 2. **Range lock**: the real [`RangeLocks`] table of the unit, through its [`LockFuture`]. A command whose range
//!    is busy is parked (counted in `lock_waits`); the future's waker records the grant, and the world turns each
//!    grant into an [`Event::LockGranted`] at the same instant, in the order the table granted them (FIFO among
//!    conflicting requests, as the real table decides).
//! 3. **I/O**: a command that may wait for the disk ([`Admitted::may_wait_for_disk`]) holds its guard for a seeded
//!    I/O latency ([`World::io_latency`]) and executes ([`LogicalUnit::run_admitted`]) when its
//!    [`Event::IoDone`] comes; commands that touch only memory execute at once, as the server runs them inline.
//!    Overlapping commands therefore wait for each other, others overlap in time and complete in an order drawn
//!    from the seed.
//! 4. **Reply**: after a PERSISTENT RESERVE OUT the preempted nexuses' commands on that unit, on the way or in
//!    flight and not yet executed, are aborted before the range is released (SPC-4 5.13.11.5; TAS=0, so they get
//!    no reply, and their nexus gets COMMANDS CLEARED BY ANOTHER INITIATOR); then the guard is dropped and the
//!    reply crosses the network.
//!
//! Invariant: a command is in `World::in_flight` exactly from its admission to its execution, and holds its range
//! guard from the grant to the end of its execution. Execution itself is one step, so the checkers see each
//! command's effect at the moment it happens, between the effects of the commands it overlaps in time.

use super::{describe_cdb, describe_status, lock, ActorState, Event, Reply, Request, World, BLOCK};
use crate::store::TrackingStore;
use lunlock_scsi::cdb::{op, Command};
use lunlock_scsi::range_lock::{LockFuture, RangeGuard};
use lunlock_scsi::sense::{Condition, Sense};
use lunlock_scsi::{
    pr::PrPersistence, Admission, Admitted, Isid, ItNexus, LoggedInNexuses, LogicalUnit,
    LogicalUnitConfig, NexusAccess, ScsiCommand, ScsiResponse, TaskAttribute,
};
use lunlock_store::journal::AtomicJournal;
use lunlock_store::memory::MemoryStore;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

const TARGET_NAME: &str = "iqn.2026-11.io.lunlock:sim";
/// LUN 0 holds the lockspace, the lock counters and the CAW client's counter; LUN 1 is the PR clients'.
pub const LUNS: usize = 2;
const LUN_BYTES: [u64; LUNS] = [1 << 20, 64 << 10];

/// Deliberately broken target behaviour, to prove that the checkers catch what they exist for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokenTarget {
    /// COMPARE AND WRITE takes no range lock and runs in two steps with an I/O between them: a READ and the
    /// compare, then, after another simulated I/O, a WRITE (both through the real unit, so reservations still
    /// apply). Another command can change the block between the compare and the write.
    pub unlocked_compare_and_write: bool,
    /// The Block Limits VPD page claims a MAXIMUM ATOMIC TRANSFER LENGTH of [`OVERSIZED_ATOMIC_BLOCKS`], and a WRITE
    /// ATOMIC of more than one block runs as a plain WRITE (16) of the same blocks: more than the store writes all
    /// or nothing, so a power loss can tear it between blocks.
    pub oversized_atomic_write: bool,
}

/// What the broken target claims it writes atomically.
pub const OVERSIZED_ATOMIC_BLOCKS: u32 = 8;

/// APTPL state as the target's persistence saved it: durable at the moment `save` returns.
#[derive(Default)]
pub struct SavedState(Mutex<Option<Vec<u8>>>);

impl SavedState {
    pub fn bytes(&self) -> Option<Vec<u8>> {
        lock(&self.0).clone()
    }
}

impl PrPersistence for SavedState {
    fn save(&self, state: &[u8]) -> std::io::Result<()> {
        *lock(&self.0) = Some(state.to_vec());
        Ok(())
    }
}

pub struct Unit {
    pub lu: Arc<LogicalUnit>,
    pub store: Arc<TrackingStore>,
    pub saved: Arc<SavedState>,
    /// The LU's atomic write journal (`lunlock_store::journal`): a crash store that a power loss tears like the
    /// image, and that the restart recovers against it.
    pub journal: Arc<MemoryStore>,
}

/// What the simulated journal holds: the WRITE ATOMIC client's whole range, so the LU reports that many blocks.
const JOURNAL_BLOCKS: u64 = crate::checks::ATOMIC_RANGE_BLOCKS;

/// The LU's journal over `store`, after finishing any write a power loss interrupted.
fn recovered_journal(
    store: &Arc<MemoryStore>,
    image: &TrackingStore,
) -> Result<Arc<AtomicJournal>, String> {
    let journal =
        AtomicJournal::new(store.clone(), "simulated journal").map_err(|e| e.to_string())?;
    journal.recover(image).map_err(|e| e.to_string())?;
    Ok(Arc::new(journal))
}

pub struct Target {
    pub up: bool,
    pub units: Vec<Unit>,
    pub nexus: Vec<Arc<ItNexus>>,
}

/// The iSCSI name of an actor's initiator; each actor has one nexus, through relative target port 1.
pub fn initiator_name(actor: usize) -> String {
    format!("iqn.2026-11.sim:actor-{actor}")
}

/// The simulated target's sessions: every actor is logged in with its own nexus, but a crashed actor's session
/// died with it. REGISTER AND MOVE asks them when its TransportID names an initiator without ISID (SPC-4 5.13.8).
pub(super) struct Sessions<'a> {
    nexus: &'a [Arc<ItNexus>],
    actors: &'a [ActorState],
}

impl LoggedInNexuses for Sessions<'_> {
    fn for_each_logged_in(&self, visit: &mut dyn FnMut(&ItNexus)) {
        for (nexus, actor) in self.nexus.iter().zip(self.actors) {
            if !actor.crashed {
                visit(nexus);
            }
        }
    }
}

fn lu_config(lun: usize) -> LogicalUnitConfig {
    LogicalUnitConfig {
        block_size: BLOCK,
        physical_block_size: BLOCK,
        vendor: "LUNLOCK".into(),
        product: "sim".into(),
        revision: "0.1".into(),
        serial: format!("sim-{lun}"),
        naa: [0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, lun as u8],
        read_only: false,
        thin_provisioned: true,
    }
}

impl Target {
    pub fn new(actors: usize) -> Target {
        let units = (0..LUNS)
            .map(|lun| {
                let store = Arc::new(TrackingStore::new(LUN_BYTES[lun]));
                let saved = Arc::new(SavedState::default());
                let journal = Arc::new(
                    MemoryStore::new(AtomicJournal::capacity_for(JOURNAL_BLOCKS * BLOCK as u64))
                        .with_crash_simulation(true),
                );
                let lu = LogicalUnit::new(lu_config(lun), store.clone())
                    .with_persistence(saved.clone(), None)
                    .expect("an empty APTPL state restores")
                    .with_atomic_journal(
                        recovered_journal(&journal, &store).expect("an empty journal opens"),
                    );
                Unit {
                    lu: Arc::new(lu),
                    store,
                    saved,
                    journal,
                }
            })
            .collect();
        let nexus = (0..actors)
            .map(|actor| {
                Arc::new(ItNexus {
                    initiator_name: initiator_name(actor),
                    isid: Isid([0x80, 0, 0, 0, (actor >> 8) as u8, actor as u8]),
                    target_name: TARGET_NAME.into(),
                    relative_target_port: 1,
                })
            })
            .collect();
        Target {
            up: true,
            units,
            nexus,
        }
    }

    /// Rebuilds every logical unit after a power loss, restoring the saved APTPL state.
    pub fn restart(&mut self) -> Result<(), String> {
        for (lun, unit) in self.units.iter_mut().enumerate() {
            let restored = unit.saved.bytes();
            let journal = recovered_journal(&unit.journal, &unit.store).map_err(|e| {
                format!("LUN {lun}: the atomic write journal does not recover: {e}")
            })?;
            let lu = LogicalUnit::new(lu_config(lun), unit.store.clone())
                .with_persistence(unit.saved.clone(), restored.as_deref())
                .map_err(|e| format!("LUN {lun}: the saved APTPL state does not restore: {e}"))?
                .with_atomic_journal(journal);
            unit.lu = Arc::new(lu);
        }
        self.up = true;
        Ok(())
    }
}

/// A command admitted at the target and not yet executed.
pub(super) struct InFlight {
    request: Request,
    admitted: Admitted,
    /// Its place in the order of admissions.
    admission: u64,
    stage: Stage,
}

enum Stage {
    /// Parked until the range is free; an [`Event::LockGranted`] resumes it.
    Locking(LockFuture),
    /// Holding its range (None: it needs none) until its [`Event::IoDone`].
    Io(Option<RangeGuard>),
    /// The broken target's COMPARE AND WRITE, without a range lock: reads and compares at its first I/O ...
    UnlockedCompare,
    /// ... and writes at its second.
    UnlockedWrite,
}

impl Stage {
    fn describe(&self) -> &'static str {
        match self {
            Stage::Locking(_) => "waiting for its range",
            Stage::Io(_) => "waiting for its I/O",
            Stage::UnlockedCompare => "waiting to compare",
            Stage::UnlockedWrite => "waiting to write",
        }
    }
}

/// The request ids whose range locks were granted, in grant order, shared with the lock futures' wakers. A waker
/// runs inside the lock table's release (while the world is borrowed), so it only records; the world schedules.
#[derive(Clone, Default)]
pub(super) struct LockWakes(Arc<Mutex<Vec<u64>>>);

impl LockWakes {
    pub(super) fn clear(&self) {
        lock(&self.0).clear();
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.0))
    }
}

struct LockWaker {
    id: u64,
    wakes: LockWakes,
}

impl Wake for LockWaker {
    fn wake(self: Arc<Self>) {
        lock(&self.wakes.0).push(self.id);
    }
}

fn scsi_command<'a>(
    request: &'a Request,
    nexus: &'a Arc<ItNexus>,
    logged_in: &'a Sessions<'a>,
) -> ScsiCommand<'a> {
    ScsiCommand {
        logged_in,
        access: &NexusAccess::FULL,
        nexus,
        lun: request.lun as u64,
        cdb: &request.cdb,
        data_out: &request.data_out,
        expected_transfer_length: request.expected_length,
        task_tag: request.id,
        attribute: TaskAttribute::Simple,
    }
}

fn reply_of(response: ScsiResponse) -> Reply {
    Reply {
        status: response.status as u8,
        sense: response.sense,
        data_in: response.data_in,
    }
}

/// What the fault injection answers for a spurious miscompare (no INFORMATION: the array is buggy, not exact).
fn injected_miscompare_sense() -> Vec<u8> {
    let mut sense = vec![0u8; 18];
    sense[0] = 0x70;
    sense[2] = 0x0E;
    sense[7] = 10;
    sense[12] = 0x1D;
    sense
}

impl World {
    fn sessions(&self) -> Sessions<'_> {
        Sessions {
            nexus: &self.target.nexus,
            actors: &self.actors,
        }
    }

    /// A command reaches the target: injected answers, then admission, then its range lock.
    pub(super) fn arrive_at_target(&mut self, request: Request) {
        let what = describe_cdb(&request.cdb);
        let (actor, id) = (request.actor, request.id);
        if !self.target.up {
            self.trace.record(
                self.now,
                format_args!("a{actor} #{id} {what} refused: target down"),
            );
            return;
        }
        let request = self.oversized_atomic_as_plain_write(request);
        if self.chance(self.plan.busy) {
            self.stats.faults += 1;
            self.trace.record(
                self.now,
                format_args!("a{actor} #{id} {what} -> BUSY (injected)"),
            );
            let reply = Reply {
                status: 0x08,
                sense: Vec::new(),
                data_in: Vec::new(),
            };
            return self.send_reply(&request, reply);
        }
        if request.cdb[0] == op::COMPARE_AND_WRITE && self.chance(self.plan.miscompare) {
            self.stats.faults += 1;
            self.trace.record(
                self.now,
                format_args!("a{actor} #{id} {what} -> MISCOMPARE (injected, nothing written)"),
            );
            let reply = Reply {
                status: 0x02,
                sense: injected_miscompare_sense(),
                data_in: Vec::new(),
            };
            return self.send_reply(&request, reply);
        }
        let lu = Arc::clone(&self.target.units[request.lun].lu);
        let nexus = Arc::clone(&self.target.nexus[actor]);
        let admitted = match lu.admit(&scsi_command(&request, &nexus, &self.sessions())) {
            Admission::Ready(admitted) => admitted,
            Admission::Done(response) => {
                self.stats.commands += 1;
                let before = self.before(&request);
                let reply = reply_of(response);
                self.executed(&request, &reply, before);
                return self.send_reply(&request, reply);
            }
        };
        self.admissions += 1;
        let compare_and_write = matches!(admitted.command(), Command::CompareAndWrite { .. });
        let mut command = InFlight {
            request,
            admitted,
            admission: self.admissions,
            stage: Stage::UnlockedCompare,
        };
        if compare_and_write && self.broken.unlocked_compare_and_write {
            let at = self.now + self.io_latency();
            self.schedule(at, Event::IoDone(id));
            return self.park(command);
        }
        let Some(request) = command.admitted.lock_request() else {
            return self.start_io(command, None);
        };
        let mut future = lu.range_locks().lock(request);
        match self.poll_lock(id, &mut future) {
            Poll::Ready(guard) => self.start_io(command, Some(guard)),
            Poll::Pending => {
                self.stats.lock_waits += 1;
                self.trace.record(
                    self.now,
                    format_args!("a{actor} #{id} {what} waits for its range"),
                );
                command.stage = Stage::Locking(future);
                self.park(command);
            }
        }
    }

    fn poll_lock(&self, id: u64, future: &mut LockFuture) -> Poll<RangeGuard> {
        let waker = Waker::from(Arc::new(LockWaker {
            id,
            wakes: self.lock_wakes.clone(),
        }));
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    fn park(&mut self, command: InFlight) {
        self.in_flight.insert(command.request.id, command);
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight.len() as u64);
    }

    /// Grants recorded by lock wakers during this step become events now, in grant order.
    pub(super) fn schedule_lock_wakes(&mut self) {
        for id in self.lock_wakes.take() {
            self.schedule(self.now, Event::LockGranted(id));
        }
    }

    pub(super) fn lock_granted(&mut self, id: u64) {
        let Some(mut command) = self.in_flight.remove(&id) else {
            return; // aborted or lost in a power loss meanwhile
        };
        let Stage::Locking(mut future) =
            std::mem::replace(&mut command.stage, Stage::UnlockedCompare)
        else {
            unreachable!("only a parked command's lock is granted");
        };
        match self.poll_lock(id, &mut future) {
            Poll::Ready(guard) => {
                self.trace.record(
                    self.now,
                    format_args!("a{} #{id} got its range", command.request.actor),
                );
                self.start_io(command, Some(guard));
            }
            Poll::Pending => {
                command.stage = Stage::Locking(future);
                self.in_flight.insert(id, command);
            }
        }
    }

    /// The command holds its range: it waits for its I/O if it may wait for the disk, else runs now.
    fn start_io(&mut self, mut command: InFlight, guard: Option<RangeGuard>) {
        if command.admitted.may_wait_for_disk() {
            let at = self.now + self.io_latency();
            self.schedule(at, Event::IoDone(command.request.id));
            command.stage = Stage::Io(guard);
            self.park(command);
        } else {
            self.execute(command, guard);
        }
    }

    pub(super) fn io_done(&mut self, id: u64) {
        let Some(mut command) = self.in_flight.remove(&id) else {
            return; // aborted or lost in a power loss meanwhile
        };
        match std::mem::replace(&mut command.stage, Stage::UnlockedCompare) {
            Stage::Io(guard) => self.execute(command, guard),
            Stage::UnlockedCompare => self.unlocked_compare(command),
            Stage::UnlockedWrite => self.unlocked_write(command),
            Stage::Locking(_) => unreachable!("a parked command has no I/O scheduled"),
        }
    }

    /// Runs the command on its unit while it holds its guard; PREEMPT AND ABORT's victims go before the guard.
    fn execute(&mut self, command: InFlight, guard: Option<RangeGuard>) {
        self.stats.commands += 1;
        if self
            .in_flight
            .values()
            .any(|other| other.admission < command.admission)
        {
            self.stats.out_of_order += 1;
        }
        let request = &command.request;
        let lu = Arc::clone(&self.target.units[request.lun].lu);
        let nexus = Arc::clone(&self.target.nexus[request.actor]);
        let before = self.before(request);
        let response = lu.run_admitted(
            &scsi_command(request, &nexus, &self.sessions()),
            &command.admitted,
            guard.as_ref(),
        );
        let preempted = response.effects.aborted_nexuses.clone();
        let reply = reply_of(response);
        self.executed(request, &reply, before);
        if !preempted.is_empty() {
            self.abort_preempted(request.lun, &preempted);
        }
        drop(guard);
        self.send_reply(&command.request, reply);
    }

    fn before(&self, request: &Request) -> crate::checks::Before {
        let store = &self.target.units[request.lun].store;
        self.checks.before_command(request, store)
    }

    /// Records an executed command and runs the checkers on its effect.
    fn executed(&mut self, request: &Request, reply: &Reply, before: crate::checks::Before) {
        self.trace.record(
            self.now,
            format_args!(
                "a{} #{} lun{} {} -> {}",
                request.actor,
                request.id,
                request.lun,
                describe_cdb(&request.cdb),
                describe_status(reply)
            ),
        );
        let unit = &self.target.units[request.lun];
        let (store, lu) = (Arc::clone(&unit.store), Arc::clone(&unit.lu));
        self.checks
            .after_command(self.now, request, reply, before, &store, &lu);
    }

    /// The reply crosses the network, unless it is lost.
    fn send_reply(&mut self, request: &Request, reply: Reply) {
        let reply = self.oversized_block_limits(request, reply);
        let (actor, id) = (request.actor, request.id);
        if self.chance(self.plan.lost_reply) {
            self.stats.faults += 1;
            self.trace
                .record(self.now, format_args!("a{actor} #{id} reply lost"));
            return;
        }
        let at = self.now + self.latency();
        self.schedule(
            at,
            Event::AtActor {
                actor,
                incarnation: request.incarnation,
                id,
                reply,
            },
        );
    }

    /// PREEMPT AND ABORT (SPC-4 5.13.11.5): the task sets of the preempted nexuses on this unit are aborted. Their
    /// commands still on the way never execute, and those admitted but not yet executed (parked on a range lock,
    /// waiting for their I/O) end without status (TAS=0), and their nexus gets COMMANDS CLEARED BY ANOTHER
    /// INITIATOR, as the server's runtime does. Called while the PERSISTENT RESERVE OUT still holds the medium.
    fn abort_preempted(&mut self, lun: usize, preempted: &[ItNexus]) {
        let actors: Vec<usize> = self
            .target
            .nexus
            .iter()
            .enumerate()
            .filter(|(_, n)| preempted.iter().any(|p| p == n.as_ref()))
            .map(|(i, _)| i)
            .collect();
        self.abort_queued(lun, &actors);
        let doomed: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, c)| c.request.lun == lun && actors.contains(&c.request.actor))
            .map(|(id, _)| *id)
            .collect();
        let mut cleared = BTreeSet::new();
        for id in doomed {
            let Some(command) = self.in_flight.remove(&id) else {
                continue;
            };
            let actor = command.request.actor;
            self.stats.aborted_in_flight += 1;
            self.trace.record(
                self.now,
                format_args!(
                    "a{actor} #{id} aborted by PREEMPT AND ABORT while {}",
                    command.stage.describe()
                ),
            );
            cleared.insert(actor);
            // Dropping it withdraws its lock request or releases its range.
            drop(command);
        }
        let lu = Arc::clone(&self.target.units[lun].lu);
        for actor in cleared {
            lu.unit_attentions().establish(
                &self.target.nexus[actor],
                Condition::CommandsClearedByAnotherInitiator,
            );
        }
    }

    /// Commands of the preempted nexuses still on their way to this LUN never execute.
    fn abort_queued(&mut self, lun: usize, actors: &[usize]) {
        let doomed: BTreeSet<u64> = self
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::AtTarget(r) if r.lun == lun && actors.contains(&r.actor)))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in doomed {
            if let Some(Event::AtTarget(r)) = self.events.remove(&seq) {
                self.trace.record(
                    self.now,
                    format_args!("a{} #{} aborted by PREEMPT AND ABORT", r.actor, r.id),
                );
            }
        }
        self.queue
            .retain(|std::cmp::Reverse((_, seq))| self.events.contains_key(seq));
    }

    /// The broken target's WRITE ATOMIC of several blocks: a plain WRITE (16) of the same blocks.
    fn oversized_atomic_as_plain_write(&self, mut request: Request) -> Request {
        if !self.broken.oversized_atomic_write {
            return request;
        }
        if let Ok(Command::WriteAtomic {
            lba, blocks, fua, ..
        }) = Command::parse(&request.cdb)
        {
            if blocks.0 > 1 {
                request.cdb = Command::write_16(lba.0, blocks.0 as u32, fua).encode();
            }
        }
        request
    }

    /// The broken target's Block Limits VPD page: MAXIMUM ATOMIC TRANSFER LENGTH [`OVERSIZED_ATOMIC_BLOCKS`].
    fn oversized_block_limits(&self, request: &Request, mut reply: Reply) -> Reply {
        let block_limits = matches!(
            Command::parse(&request.cdb),
            Ok(Command::Inquiry {
                evpd: true,
                page_code: 0xB0,
                ..
            })
        );
        if self.broken.oversized_atomic_write && block_limits {
            if let Some(field) = reply.data_in.get_mut(44..48) {
                field.copy_from_slice(&OVERSIZED_ATOMIC_BLOCKS.to_be_bytes());
            }
        }
        reply
    }

    /// Runs a command on the unit at once and without a range lock: the broken target's steps.
    fn run_unlocked(&self, request: &Request, cdb: Vec<u8>, data_out: Vec<u8>) -> Reply {
        let lu = &self.target.units[request.lun].lu;
        let nexus = &self.target.nexus[request.actor];
        let step = Request {
            cdb,
            expected_length: data_out.len() as u32,
            data_out,
            ..request.clone()
        };
        let sessions = self.sessions();
        let command = scsi_command(&step, nexus, &sessions);
        reply_of(match lu.admit(&command) {
            Admission::Done(response) => response,
            Admission::Ready(admitted) => lu.run_admitted(&command, &admitted, None),
        })
    }

    /// The broken COMPARE AND WRITE's first step: READ and compare. A MISCOMPARE ends it here.
    fn unlocked_compare(&mut self, mut command: InFlight) {
        let request = &command.request;
        let (lba, blocks, _) = caw_fields(&request.cdb);
        let before = self.before(request);
        let read = self.run_unlocked(
            request,
            Command::read_16(lba, blocks, false).encode(),
            Vec::new(),
        );
        let (expected, _) = request.data_out.split_at(request.data_out.len() / 2);
        let differs = expected.iter().zip(&read.data_in).position(|(a, b)| a != b);
        let reply = match (read.status, differs) {
            (0x00, None) => {
                let at = self.now + self.io_latency();
                self.schedule(at, Event::IoDone(request.id));
                command.stage = Stage::UnlockedWrite;
                return self.park(command);
            }
            (0x00, Some(offset)) => {
                let sense = Sense::new(Condition::Miscompare).with_information(offset as u64);
                Reply {
                    status: 0x02,
                    sense: self.target.units[request.lun].lu.encode_sense(&sense),
                    data_in: Vec::new(),
                }
            }
            _ => Reply {
                data_in: Vec::new(),
                ..read
            },
        };
        self.stats.commands += 1;
        self.executed(request, &reply, before);
        self.send_reply(request, reply);
    }

    /// The broken COMPARE AND WRITE's second step, an I/O after its compare: WRITE the new image.
    fn unlocked_write(&mut self, command: InFlight) {
        let request = &command.request;
        let (lba, blocks, fua) = caw_fields(&request.cdb);
        let (_, new) = request.data_out.split_at(request.data_out.len() / 2);
        let before = self.before(request);
        let cdb = Command::write_16(lba, blocks, fua).encode();
        let reply = self.run_unlocked(request, cdb, new.to_vec());
        self.stats.commands += 1;
        self.executed(request, &reply, before);
        self.send_reply(request, reply);
    }
}

/// LBA, blocks and FUA of the COMPARE AND WRITE that the broken target splits in two. Only well-formed CAWs get
/// that far (the actors build them with `Command::encode`); anything else reads as 0 blocks at LBA 0.
fn caw_fields(cdb: &[u8]) -> (u64, u32, bool) {
    match Command::parse(cdb) {
        Ok(Command::CompareAndWrite { lba, blocks, fua }) => (lba.0, blocks.0 as u32, fua),
        _ => (0, 0, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{register_and_move_command, MoveTo};
    use crate::world::FaultPlan;
    use lunlock_initiator::pr::{basic_prout, PrOutAction, PrType, TransportId};
    use lunlock_scsi::pr::state::RegistrantId;
    use lunlock_scsi::pr::Holder;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// A fault-free world of three actors; each nexus has seen its power-on unit attention.
    fn quiet_world() -> World {
        let mut world = World::new(
            StdRng::seed_from_u64(5),
            FaultPlan::default(),
            3,
            Vec::new(),
        );
        world.quiet = true;
        for actor in 0..3 {
            for lun in 0..LUNS {
                let id = world.submit(request(actor, lun, vec![0; 6], Vec::new()));
                run_until_idle(&mut world);
                assert!(world.take_reply(id).is_some());
            }
        }
        world
    }

    fn request(actor: usize, lun: usize, cdb: Vec<u8>, data_out: Vec<u8>) -> Request {
        Request {
            id: 0,
            actor,
            incarnation: 0,
            lun,
            cdb,
            expected_length: data_out.len() as u32,
            data_out,
        }
    }

    fn write(actor: usize, lba: u64) -> Request {
        let cdb = Command::write_16(lba, 1, false).encode();
        request(actor, 0, cdb, vec![actor as u8 + 1; BLOCK as usize])
    }

    fn prout(actor: usize, action: PrOutAction, pr_type: PrType, key: u64, sark: u64) -> Request {
        let (cdb, parameters) = basic_prout(action, pr_type, key, sark, false);
        request(actor, 1, cdb.to_vec(), parameters)
    }

    fn run_until_idle(world: &mut World) {
        while world.step().is_some() {}
    }

    fn step_until(world: &mut World, done: impl Fn(&World) -> bool) {
        while !done(world) {
            assert!(world.step().is_some(), "the world ran out of events");
        }
    }

    fn arrived(world: &World, id: u64) -> bool {
        world.in_flight.contains_key(&id)
    }

    fn status(world: &mut World, id: u64) -> Option<u8> {
        world.take_reply(id).map(|reply| reply.status)
    }

    #[test]
    fn a_write_to_a_block_another_write_holds_waits_and_one_to_another_block_does_not() {
        let mut world = quiet_world();
        let first = world.submit(write(0, 10));
        step_until(&mut world, |w| arrived(w, first));
        let elsewhere = world.submit(write(1, 11));
        step_until(&mut world, |w| {
            arrived(w, elsewhere) || w.stats.commands > 6
        });
        assert_eq!(world.stats.lock_waits, 0, "block 11 is free");
        let same = world.submit(write(2, 10));
        step_until(&mut world, |w| arrived(w, same) || w.stats.lock_waits > 0);
        run_until_idle(&mut world);
        assert_eq!(
            world.stats.lock_waits, 1,
            "block 10 is held by the first write"
        );
        assert!(world.stats.max_in_flight >= 2);
        for id in [first, elsewhere, same] {
            assert_eq!(status(&mut world, id), Some(0x00));
        }
        // The waiting write executed after the first one: block 10 holds its image.
        let block = world.target.units[0].store.block(10);
        assert_eq!(block, vec![3u8; BLOCK as usize]);
        assert!(world.in_flight.is_empty());
        assert_eq!(world.target.units[0].lu.range_locks().occupancy(), (0, 0));
    }

    #[test]
    fn preempt_and_abort_aborts_the_victims_commands_parked_behind_it_without_a_reply() {
        let mut world = quiet_world();
        let (a, b) = (0xAu64, 0xBu64);
        for (actor, key) in [(0, a), (1, b)] {
            let id = world.submit(prout(actor, PrOutAction::Register, PrType(0), 0, key));
            run_until_idle(&mut world);
            assert_eq!(status(&mut world, id), Some(0x00));
        }
        let reserve = world.submit(prout(
            1,
            PrOutAction::Reserve,
            PrType::WRITE_EXCLUSIVE,
            b,
            0,
        ));
        run_until_idle(&mut world);
        assert_eq!(status(&mut world, reserve), Some(0x00));
        // a0's PREEMPT AND ABORT takes the medium and waits for its I/O; a1's WRITE parks behind it.
        let preempt = world.submit(prout(
            0,
            PrOutAction::PreemptAndAbort,
            PrType::WRITE_EXCLUSIVE,
            a,
            b,
        ));
        step_until(&mut world, |w| arrived(w, preempt));
        let mut victim = write(1, 3);
        victim.lun = 1;
        let victim = world.submit(victim);
        step_until(&mut world, |w| {
            w.stats.lock_waits == 1 || !arrived(w, preempt)
        });
        assert!(arrived(&world, preempt) && arrived(&world, victim));
        run_until_idle(&mut world);
        assert_eq!(status(&mut world, preempt), Some(0x00));
        assert_eq!(status(&mut world, victim), None, "TAS=0: no status");
        assert_eq!(world.stats.aborted_in_flight, 1);
        assert_eq!(
            world.target.units[1].store.block(3),
            vec![0u8; BLOCK as usize]
        );
        assert_eq!(world.target.units[1].lu.range_locks().occupancy(), (0, 0));
        // The victim's nexus learns that it was preempted (06/2A/05) and that its commands were cleared
        // (06/2F/00), one unit attention per command.
        let mut attentions = Vec::new();
        for _ in 0..3 {
            let next = world.submit(request(1, 1, vec![0; 6], Vec::new()));
            run_until_idle(&mut world);
            let reply = world.take_reply(next).expect("a reply");
            if reply.status == 0x02 {
                attentions.push((reply.sense[2] & 0x0F, reply.sense[12], reply.sense[13]));
            }
        }
        assert_eq!(attentions, [(0x06, 0x2A, 0x05), (0x06, 0x2F, 0x00)]);
    }

    /// REGISTER AND MOVE from `actor` to the initiator of `destination`, named without ISID (format 00b).
    fn register_and_move_by_name(actor: usize, key: u64, sark: u64, destination: usize) -> Request {
        let to = MoveTo {
            destination: TransportId::iscsi(&initiator_name(destination), None).unwrap(),
            unregister: false,
            aptpl: false,
        };
        let (cdb, parameters) = register_and_move_command(PrType::WRITE_EXCLUSIVE, key, sark, to);
        request(actor, 1, cdb, parameters)
    }

    #[test]
    fn register_and_move_by_name_reaches_the_actor_logged_in_and_not_a_crashed_one() {
        let mut world = quiet_world();
        let (a, b) = (0xAu64, 0xBu64);
        for request in [
            prout(0, PrOutAction::Register, PrType(0), 0, a),
            prout(0, PrOutAction::Reserve, PrType::WRITE_EXCLUSIVE, a, 0),
        ] {
            let id = world.submit(request);
            run_until_idle(&mut world);
            assert_eq!(status(&mut world, id), Some(0x00));
        }
        // A crashed actor's session is gone: its name names no nexus logged in.
        world.actors[1].crashed = true;
        let refused = world.submit(register_and_move_by_name(0, a, b, 1));
        run_until_idle(&mut world);
        let reply = world.take_reply(refused).expect("a reply");
        assert_eq!(
            (
                reply.status,
                reply.sense[2] & 0x0F,
                reply.sense[12],
                reply.sense[13]
            ),
            (0x02, 0x05, 0x26, 0x00)
        );
        assert_eq!(u16::from_be_bytes([reply.sense[16], reply.sense[17]]), 24);
        world.actors[1].crashed = false;
        let moved = world.submit(register_and_move_by_name(0, a, b, 1));
        run_until_idle(&mut world);
        assert_eq!(status(&mut world, moved), Some(0x00));
        let state = world.target.units[1].lu.pr_state();
        let holder = world.target.nexus[1].isid;
        assert!(
            matches!(&state.reservation, Some(r) if r.holder == Holder::Registration(RegistrantId {
                initiator_name: initiator_name(1),
                isid: Some(holder),
                relative_target_port: Some(1),
            })),
            "{state:?}"
        );
        assert!(
            world.checks.violations.is_empty(),
            "{:?}",
            world.checks.violations
        );
    }

    #[test]
    fn a_power_loss_drops_the_commands_in_flight_and_their_locks() {
        let mut world = quiet_world();
        let first = world.submit(write(0, 10));
        step_until(&mut world, |w| arrived(w, first));
        let second = world.submit(write(1, 10));
        step_until(&mut world, |w| {
            w.stats.lock_waits == 1 || !arrived(w, first)
        });
        world.crash_target();
        assert!(world.in_flight.is_empty());
        world.restart_target();
        run_until_idle(&mut world);
        assert_eq!(
            (status(&mut world, first), status(&mut world, second)),
            (None, None)
        );
        assert!(
            world.checks.violations.is_empty(),
            "{:?}",
            world.checks.violations
        );
    }
}
