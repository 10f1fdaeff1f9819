//! The simulated world: time, the event queue, the network between actors and the target, the target itself
//! (`target`: the real `scsi` LogicalUnits over tracking stores, running many commands at once), and the faults.
//! Everything is driven by one seeded generator.

mod target;

use crate::checks::Checks;
use lunlock_scsi::cdb::{Addressed, Command};
use lunlock_scsi::registry;
use rand::rngs::StdRng;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;
pub use target::{initiator_name, BrokenTarget, SavedState, Target, Unit};
use target::{InFlight, LockWakes};

pub const BLOCK: u32 = 512;
/// How many trace lines a violation report shows.
pub const TRACE_LINES: usize = 60;

/// The kinds of fault a run can inject. Each seed picks a probability or rate for every enabled kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    LostRequest,
    LostReply,
    Delay,
    Pause,
    HostCrash,
    TargetCrash,
    Partition,
    Busy,
    Miscompare,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::LostRequest,
        FaultKind::LostReply,
        FaultKind::Delay,
        FaultKind::Pause,
        FaultKind::HostCrash,
        FaultKind::TargetCrash,
        FaultKind::Partition,
        FaultKind::Busy,
        FaultKind::Miscompare,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LostRequest => "lost-request",
            FaultKind::LostReply => "lost-reply",
            FaultKind::Delay => "delay",
            FaultKind::Pause => "pause",
            FaultKind::HostCrash => "host-crash",
            FaultKind::TargetCrash => "target-crash",
            FaultKind::Partition => "partition",
            FaultKind::Busy => "busy",
            FaultKind::Miscompare => "miscompare",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Per-seed fault probabilities (per message or per command) and rates (per simulated second).
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    pub lost_request: f64,
    pub lost_reply: f64,
    pub delay: f64,
    pub busy: f64,
    pub miscompare: f64,
    /// Events per simulated second, over all lock hosts.
    pub pause_rate: f64,
    pub host_crash_rate: f64,
    pub partition_rate: f64,
    pub target_crash_rate: f64,
}

impl FaultPlan {
    /// Draws a plan from the seed's generator for the enabled kinds.
    pub fn draw(rng: &mut StdRng, enabled: &[FaultKind]) -> FaultPlan {
        let mut plan = FaultPlan::default();
        let on = |k: FaultKind| enabled.contains(&k);
        if on(FaultKind::LostRequest) {
            plan.lost_request = rng.gen_range(0.0..0.05);
        }
        if on(FaultKind::LostReply) {
            plan.lost_reply = rng.gen_range(0.0..0.08);
        }
        if on(FaultKind::Delay) {
            plan.delay = rng.gen_range(0.0..0.2);
        }
        if on(FaultKind::Busy) {
            plan.busy = rng.gen_range(0.0..0.03);
        }
        if on(FaultKind::Miscompare) {
            plan.miscompare = rng.gen_range(0.0..0.03);
        }
        if on(FaultKind::Pause) {
            plan.pause_rate = rng.gen_range(0.0..0.5);
        }
        if on(FaultKind::HostCrash) {
            plan.host_crash_rate = rng.gen_range(0.0..0.3);
        }
        if on(FaultKind::Partition) {
            plan.partition_rate = rng.gen_range(0.0..0.3);
        }
        if on(FaultKind::TargetCrash) {
            plan.target_crash_rate = rng.gen_range(0.0..0.15);
        }
        plan
    }
}

/// A command on its way to the target.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: u64,
    pub actor: usize,
    pub incarnation: u64,
    pub lun: usize,
    pub cdb: Vec<u8>,
    pub data_out: Vec<u8>,
    pub expected_length: u32,
}

/// The target's answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
}

/// Changes to actors, which the run loop carries out on the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Pause(usize),
    Resume(usize),
    Crash(usize),
    Restart(usize),
    Partition(usize),
    Heal(usize),
    TargetCrash,
    TargetRestart,
    /// Faults stop here; every fault in effect is undone.
    Quiet,
}

enum Event {
    Timer(Waker),
    AtTarget(Request),
    /// The range lock that command `id` is parked on was granted: its waker asked for this event.
    LockGranted(u64),
    /// Command `id`'s simulated I/O completed: it executes now.
    IoDone(u64),
    AtActor {
        actor: usize,
        incarnation: u64,
        id: u64,
        reply: Reply,
    },
    Control(Control),
}

/// What one actor is going through.
#[derive(Clone, Debug, Default)]
pub struct ActorState {
    pub paused: bool,
    pub crashed: bool,
    pub partitioned: bool,
    /// Bumped at each restart: replies addressed to an earlier incarnation are dropped.
    pub incarnation: u64,
}

/// The last events, for the violation report.
#[derive(Default)]
pub struct Trace {
    lines: VecDeque<String>,
    /// CRC32C over every line ever recorded: equal for equal runs.
    pub digest: u32,
    pub echo: bool,
}

impl Trace {
    pub fn record(&mut self, now: Duration, line: fmt::Arguments<'_>) {
        let text = format!("{:>10.6} {line}", now.as_secs_f64());
        self.digest = crc32c::crc32c_append(self.digest, text.as_bytes());
        if self.echo {
            println!("{text}");
        }
        if self.lines.len() == TRACE_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(text);
    }

    pub fn lines(&self) -> impl Iterator<Item = &String> {
        self.lines.iter()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub faults: u64,
    pub commands: u64,
    /// The most commands admitted at the target and not yet executed at one time (parked on a range lock or
    /// waiting for their I/O).
    pub max_in_flight: u64,
    /// Commands that found their range busy and parked until it was released.
    pub lock_waits: u64,
    /// Commands that executed while a command admitted before them was still in flight.
    pub out_of_order: u64,
    /// Commands PREEMPT AND ABORT took out of the target after admission, before they executed.
    pub aborted_in_flight: u64,
}

pub struct World {
    pub now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Event>,
    pub rng: StdRng,
    pub plan: FaultPlan,
    pub quiet: bool,
    next_request: u64,
    replies: HashMap<u64, Reply>,
    waiters: HashMap<u64, Waker>,
    /// Commands whose sender stopped waiting (timeout): their late replies are dropped.
    abandoned: HashSet<u64>,
    pub actors: Vec<ActorState>,
    /// Actors subject to pauses, crashes and partitions (the lock hosts).
    pub faultable: Vec<usize>,
    pub target: Target,
    /// Commands admitted at the target and not yet executed, by request id.
    in_flight: BTreeMap<u64, InFlight>,
    /// Commands whose range lock was granted, in the order the lock table granted them; turned into
    /// [`Event::LockGranted`] events at the end of each step.
    lock_wakes: LockWakes,
    /// Admissions so far: orders the commands in flight by arrival.
    admissions: u64,
    pub broken: BrokenTarget,
    pub checks: Checks,
    pub trace: Trace,
    pub stats: Stats,
}

impl World {
    pub fn new(rng: StdRng, plan: FaultPlan, actors: usize, faultable: Vec<usize>) -> World {
        World {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            rng,
            plan,
            quiet: false,
            next_request: 1,
            replies: HashMap::new(),
            waiters: HashMap::new(),
            abandoned: HashSet::new(),
            actors: vec![ActorState::default(); actors],
            faultable,
            target: Target::new(actors),
            in_flight: BTreeMap::new(),
            lock_wakes: LockWakes::default(),
            admissions: 0,
            broken: BrokenTarget::default(),
            checks: Checks::default(),
            trace: Trace::default(),
            stats: Stats::default(),
        }
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    pub fn schedule_control(&mut self, at: Duration, control: Control) {
        self.schedule(at, Event::Control(control));
    }

    pub fn add_timer(&mut self, at: Duration, waker: Waker) {
        self.schedule(at, Event::Timer(waker));
    }

    pub fn next_event_time(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// One command's I/O at the target (the store call on the LUN's engine): 20 to 400 µs, and one in ten waits
    /// 0.5 to 5 ms more (a queue or a flush ahead of it). Not a fault: drawn in the quiet phase too, so the order in
    /// which concurrent commands complete always comes from the seed.
    fn io_latency(&mut self) -> Duration {
        let mut micros = self.rng.gen_range(20..400);
        if self.rng.gen_bool(0.1) {
            micros += self.rng.gen_range(500..5_000);
        }
        Duration::from_micros(micros)
    }

    /// One network hop: 50 to 500 µs, and with the delay fault up to 200 ms more (which also reorders).
    fn latency(&mut self) -> Duration {
        let mut micros = self.rng.gen_range(50..500);
        if !self.quiet && self.rng.gen_bool(self.plan.delay) {
            micros += self.rng.gen_range(1_000..200_000);
            self.stats.faults += 1;
        }
        Duration::from_micros(micros)
    }

    fn chance(&mut self, probability: f64) -> bool {
        !self.quiet && probability > 0.0 && self.rng.gen_bool(probability)
    }

    /// Sends a command from an actor; returns its id for [`World::take_reply`].
    pub fn submit(&mut self, mut request: Request) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        request.id = id;
        let actor = request.actor;
        if self.actors[actor].partitioned || self.actors[actor].crashed {
            self.trace.record(
                self.now,
                format_args!(
                    "a{actor} #{id} {} dropped: partitioned",
                    describe_cdb(&request.cdb)
                ),
            );
            return id;
        }
        if self.chance(self.plan.lost_request) {
            self.stats.faults += 1;
            self.trace.record(
                self.now,
                format_args!(
                    "a{actor} #{id} {} lost on the way",
                    describe_cdb(&request.cdb)
                ),
            );
            return id;
        }
        let at = self.now + self.latency();
        self.schedule(at, Event::AtTarget(request));
        id
    }

    pub fn take_reply(&mut self, id: u64) -> Option<Reply> {
        self.replies.remove(&id)
    }

    pub fn wait_reply(&mut self, id: u64, waker: Waker) {
        self.waiters.insert(id, waker);
    }

    /// The sender gave up on command `id`: a late reply is dropped.
    pub fn abandon(&mut self, id: u64) {
        self.waiters.remove(&id);
        if self.replies.remove(&id).is_none() {
            self.abandoned.insert(id);
        }
    }

    /// Pops and carries out the next event; returns a control for the run loop, if the event was one.
    pub fn step(&mut self) -> Option<Option<Control>> {
        let Reverse((at, seq)) = self.queue.pop()?;
        let event = self
            .events
            .remove(&seq)
            .expect("queued events have payloads");
        self.now = at;
        self.stats.steps += 1;
        match event {
            Event::Timer(waker) => waker.wake(),
            Event::AtTarget(request) => self.arrive_at_target(request),
            Event::LockGranted(id) => self.lock_granted(id),
            Event::IoDone(id) => self.io_done(id),
            Event::AtActor {
                actor,
                incarnation,
                id,
                reply,
            } => {
                let abandoned = self.abandoned.remove(&id);
                let state = &self.actors[actor];
                if !abandoned
                    && state.incarnation == incarnation
                    && !state.crashed
                    && !state.partitioned
                {
                    self.replies.insert(id, reply);
                    if let Some(waker) = self.waiters.remove(&id) {
                        waker.wake();
                    }
                }
            }
            Event::Control(control) => return Some(Some(control)),
        }
        self.schedule_lock_wakes();
        Some(None)
    }

    /// Power loss of the target: in-flight commands are lost (on the way, parked on a lock, or in their I/O),
    /// unflushed blocks kept or lost one by one.
    pub fn crash_target(&mut self) {
        self.target.up = false;
        let seqs: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, e)| {
                matches!(
                    e,
                    Event::AtTarget(_) | Event::LockGranted(_) | Event::IoDone(_)
                )
            })
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            self.events.remove(&seq);
        }
        self.queue
            .retain(|Reverse((_, seq))| self.events.contains_key(seq));
        // Their guards and lock requests belong to the lock tables of the units about to be rebuilt.
        self.in_flight.clear();
        self.lock_wakes.clear();
        let pr_before: Vec<_> = self.target.units.iter().map(|u| u.lu.pr_state()).collect();
        let rng = &mut self.rng;
        let mut wrong = Vec::new();
        for (lun, unit) in self.target.units.iter().enumerate() {
            for w in unit.store.crash(|_| rng.gen_bool(0.5)) {
                wrong.push(format!("durability: LUN {lun} {w}"));
            }
            unit.journal
                .crash_keeping(crate::store::SECTOR, |_| rng.gen_bool(0.5));
        }
        for w in wrong {
            self.checks.violation(self.now, w);
        }
        self.checks.pr_before_crash = pr_before;
        self.trace.record(self.now, format_args!("target crashed"));
    }

    pub fn restart_target(&mut self) {
        if let Err(e) = self.target.restart() {
            self.checks.violation(self.now, format!("durability: {e}"));
            return;
        }
        let after: Vec<_> = self.target.units.iter().map(|u| u.lu.pr_state()).collect();
        self.checks.check_restored(self.now, &after);
        // Judged after the restart, as an initiator would see it: the journal's recovery has run by then.
        let atomic_store = Arc::clone(&self.target.units[0].store);
        self.checks
            .atomic_writes_after_crash(self.now, &atomic_store);
        self.trace
            .record(self.now, format_args!("target restarted"));
    }

    /// Draws the next occurrence of a rate-driven fault.
    pub fn next_after(&mut self, rate: f64) -> Option<Duration> {
        if rate <= 0.0 {
            return None;
        }
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        Some(Duration::from_secs_f64(-u.ln() / rate))
    }
}

pub fn describe_cdb(cdb: &[u8]) -> String {
    let Some(row) = registry::lookup(cdb) else {
        return match cdb.first() {
            Some(opcode) => format!("op {opcode:#04x}"),
            None => "empty".into(),
        };
    };
    let name = row.full_name();
    match Command::parse(cdb) {
        Ok(command) => match (command.addressed(), &command) {
            (Some(Addressed::Blocks { lba, blocks }), _) => {
                format!("{name} lba {} n {}", lba.0, blocks.0)
            }
            (Some(Addressed::ToEndOfMedium { lba }), _) => format!("{name} lba {}..", lba.0),
            (None, Command::PersistentReserveOut(prout)) => match prout.kind {
                Some(kind) => format!("{name} type {}", kind.code()),
                None => name,
            },
            (None, _) => name,
        },
        Err(_) => format!("{name} (malformed)"),
    }
}

pub fn describe_status(reply: &Reply) -> String {
    match reply.status {
        0x00 => "GOOD".into(),
        0x02 if reply.sense.len() >= 14 => format!(
            "CHECK {:02x}/{:02x}/{:02x}",
            reply.sense[2] & 0x0F,
            reply.sense[12],
            reply.sense[13]
        ),
        0x02 => "CHECK".into(),
        0x08 => "BUSY".into(),
        0x18 => "RESERVATION CONFLICT".into(),
        other => format!("status {other:#04x}"),
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
