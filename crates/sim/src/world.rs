//! The simulated world: time, the event queue, the network between actors and the target, the target itself (the
//! real `scsi` LogicalUnits over tracking stores), and the faults. Everything is driven by one seeded generator.

use crate::checks::Checks;
use crate::store::TrackingStore;
use lunlock_scsi::cdb::{op, Addressed, Command};
use lunlock_scsi::registry;
use lunlock_scsi::{
    pr::PrPersistence, Isid, ItNexus, LogicalUnit, LogicalUnitConfig, ScsiCommand, TaskAttribute,
};
use rand::rngs::StdRng;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

pub const BLOCK: u32 = 512;
const TARGET_NAME: &str = "iqn.2026-11.io.lunlock:sim";
/// LUN 0 holds the lockspace, the lock counters and the CAW client's counter; LUN 1 is the PR clients'.
pub const LUNS: usize = 2;
const LUN_BYTES: [u64; LUNS] = [1 << 20, 64 << 10];
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
}

pub struct Target {
    pub up: bool,
    pub units: Vec<Unit>,
    pub nexus: Vec<Arc<ItNexus>>,
}

fn lu_config(lun: usize) -> LogicalUnitConfig {
    LogicalUnitConfig {
        block_size: BLOCK,
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
                let lu = LogicalUnit::new(lu_config(lun), store.clone())
                    .with_persistence(saved.clone(), None)
                    .expect("an empty APTPL state restores");
                Unit {
                    lu: Arc::new(lu),
                    store,
                    saved,
                }
            })
            .collect();
        let nexus = (0..actors)
            .map(|actor| {
                Arc::new(ItNexus {
                    initiator_name: format!("iqn.2026-11.sim:actor-{actor}"),
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
            let lu = LogicalUnit::new(lu_config(lun), unit.store.clone())
                .with_persistence(unit.saved.clone(), restored.as_deref())
                .map_err(|e| format!("LUN {lun}: the saved APTPL state does not restore: {e}"))?;
            unit.lu = Arc::new(lu);
        }
        self.up = true;
        Ok(())
    }
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
        Some(None)
    }

    fn arrive_at_target(&mut self, request: Request) {
        let what = describe_cdb(&request.cdb);
        let (actor, id) = (request.actor, request.id);
        if !self.target.up {
            self.trace.record(
                self.now,
                format_args!("a{actor} #{id} {what} refused: target down"),
            );
            return;
        }
        let reply = if self.chance(self.plan.busy) {
            self.stats.faults += 1;
            self.trace.record(
                self.now,
                format_args!("a{actor} #{id} {what} -> BUSY (injected)"),
            );
            Reply {
                status: 0x08,
                sense: Vec::new(),
                data_in: Vec::new(),
            }
        } else if request.cdb[0] == op::COMPARE_AND_WRITE && self.chance(self.plan.miscompare) {
            self.stats.faults += 1;
            self.trace.record(
                self.now,
                format_args!("a{actor} #{id} {what} -> MISCOMPARE (injected, nothing written)"),
            );
            Reply {
                status: 0x02,
                sense: miscompare_sense(),
                data_in: Vec::new(),
            }
        } else {
            self.execute(&request)
        };
        if self.chance(self.plan.lost_reply) {
            self.stats.faults += 1;
            self.trace
                .record(self.now, format_args!("a{actor} #{id} reply lost"));
            return;
        }
        let at = self.now + self.latency();
        let incarnation = request.incarnation;
        self.schedule(
            at,
            Event::AtActor {
                actor,
                incarnation,
                id,
                reply,
            },
        );
    }

    fn execute(&mut self, request: &Request) -> Reply {
        self.stats.commands += 1;
        let unit = &self.target.units[request.lun];
        let lu = Arc::clone(&unit.lu);
        let store = Arc::clone(&unit.store);
        let nexus = Arc::clone(&self.target.nexus[request.actor]);
        let before = self.checks.before_command(request, &store);
        let response = lu.execute(&ScsiCommand {
            nexus: &nexus,
            lun: request.lun as u64,
            cdb: &request.cdb,
            data_out: &request.data_out,
            expected_transfer_length: request.expected_length,
            task_tag: request.id,
            attribute: TaskAttribute::Simple,
        });
        let reply = Reply {
            status: response.status as u8,
            sense: response.sense,
            data_in: response.data_in,
        };
        self.trace.record(
            self.now,
            format_args!(
                "a{} #{} lun{} {} -> {}",
                request.actor,
                request.id,
                request.lun,
                describe_cdb(&request.cdb),
                describe_status(&reply)
            ),
        );
        self.checks
            .after_command(self.now, request, &reply, before, &store, &lu);
        let aborted = lu.take_abort_requests();
        if !aborted.is_empty() {
            self.abort_queued(request.lun, &aborted);
        }
        reply
    }

    /// PREEMPT AND ABORT: commands of the preempted nexuses still on their way to this LUN never execute
    /// (SPC-4 5.13.11.5, the task set of those nexuses is aborted).
    fn abort_queued(&mut self, lun: usize, aborted: &[ItNexus]) {
        let actors: Vec<usize> = self
            .target
            .nexus
            .iter()
            .enumerate()
            .filter(|(_, n)| aborted.iter().any(|a| a == n.as_ref()))
            .map(|(i, _)| i)
            .collect();
        let doomed: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::AtTarget(r) if r.lun == lun && actors.contains(&r.actor)))
            .map(|(seq, _)| *seq)
            .collect::<std::collections::BTreeSet<u64>>()
            .into_iter()
            .collect();
        for seq in doomed {
            if let Some(Event::AtTarget(r)) = self.events.remove(&seq) {
                self.trace.record(
                    self.now,
                    format_args!("a{} #{} aborted by PREEMPT AND ABORT", r.actor, r.id),
                );
            }
        }
        // Their queue entries stay; `step` skips entries without payloads.
        self.queue
            .retain(|Reverse((_, seq))| self.events.contains_key(seq));
    }

    /// Power loss of the target: in-flight commands are lost, unflushed blocks kept or lost one by one.
    pub fn crash_target(&mut self) {
        self.target.up = false;
        let seqs: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::AtTarget(_)))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            self.events.remove(&seq);
        }
        self.queue
            .retain(|Reverse((_, seq))| self.events.contains_key(seq));
        let pr_before: Vec<_> = self.target.units.iter().map(|u| u.lu.pr_state()).collect();
        let rng = &mut self.rng;
        let mut wrong = Vec::new();
        for (lun, unit) in self.target.units.iter().enumerate() {
            for w in unit.store.crash(|_| rng.gen_bool(0.5)) {
                wrong.push(format!("durability: LUN {lun} {w}"));
            }
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

fn miscompare_sense() -> Vec<u8> {
    let mut sense = vec![0u8; 18];
    sense[0] = 0x70;
    sense[2] = 0x0E;
    sense[7] = 10;
    sense[12] = 0x1D;
    sense
}

/// A CDB for the event trace: its name from the command registry with the service action's, then the blocks or
/// the reservation type it names ("READ(16) lba 8 n 2", "PERSISTENT RESERVE OUT PREEMPT AND ABORT type 5").
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
