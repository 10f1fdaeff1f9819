//! One seed's run: build the world, format the lockspace, start the actors, inject faults for the first part of
//! the run and then stop them, and check liveness at the end.

use crate::actors::{atomic_client, caw_client, lock_host, pr_client, Referee, Shared};
use crate::executor::Executor;
use crate::io::{SimDisk, SimHandle};
use crate::world::{lock, BrokenTarget, Control, FaultKind, FaultPlan, World};
use lunlock_cluster::events::{AtsEvent, EventLog};
use lunlock_cluster::space::{format_seeded, FormatOptions};
use lunlock_cluster::{BrokenVariant, Uuid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// What a run does.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Events processed while faults are on; the quiet phase that follows adds what liveness needs.
    pub steps: u64,
    pub faults: Vec<FaultKind>,
    pub lock_hosts: usize,
    pub locks: u32,
    pub broken: BrokenVariant,
    /// A deliberately broken target (the lock manager's broken variants are in `broken`).
    pub broken_target: BrokenTarget,
    /// Print every event as it happens.
    pub echo: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            // The target's own events (range-lock grants, I/O completions) are steps too: 3800 covers about as
            // much simulated time with faults, and injects about as many, as 3000 did before the target ran
            // commands concurrently.
            steps: 3800,
            faults: FaultKind::ALL.to_vec(),
            lock_hosts: 4,
            locks: 2,
            broken: BrokenVariant::default(),
            broken_target: BrokenTarget::default(),
            echo: false,
        }
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub steps: u64,
    pub faults: u64,
    pub commands: u64,
    pub grants: u64,
    /// How concurrent the target was: the most commands in flight at once, the commands that waited for a range
    /// lock, those that executed before a command admitted earlier, and those PREEMPT AND ABORT took out of flight.
    pub max_in_flight: u64,
    pub lock_waits: u64,
    pub out_of_order: u64,
    pub aborted_in_flight: u64,
    pub simulated: Duration,
    /// (step, message)
    pub violations: Vec<(u64, String)>,
    pub trace: Vec<String>,
    /// CRC32C over the whole event trace: equal runs have equal digests.
    pub digest: u32,
}

const INTERVAL_MS: u32 = 100;
const DEAD_AFTER_MS: u32 = 800;
/// How long the quiet phase lasts at least: every live host must land heartbeats and win a lock within it.
const QUIET: Duration = Duration::from_millis(8 * DEAD_AFTER_MS as u64);

pub fn run_seed(seed: u64, options: &SimOptions) -> SeedReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = FaultPlan::draw(&mut rng, &options.faults);
    let hosts = options.lock_hosts;
    // The lock hosts, the CAW client, two PR clients, the WRITE ATOMIC client.
    let actors = hosts + 4;
    let world_rng = StdRng::seed_from_u64(rng.gen());
    let world: SimHandle = Arc::new(Mutex::new(World::new(
        world_rng,
        plan,
        actors,
        (0..hosts).collect(),
    )));
    {
        let mut w = lock(&world);
        w.trace.echo = options.echo;
        w.broken = options.broken_target;
    }
    let superblock = format_lockspace(&world, hosts, options.locks, rng.gen());
    let counter_lba = superblock.total_blocks() + 4;
    let caw_client_lba = counter_lba + u64::from(options.locks) + 4;
    let atomic_lba = caw_client_lba + 4;
    {
        let mut w = lock(&world);
        w.checks.counter_lbas = counter_lba..counter_lba + u64::from(options.locks);
        w.checks.atomic_lbas = atomic_lba..atomic_lba + crate::checks::ATOMIC_RANGE_BLOCKS;
    }
    let log =
        Arc::new(EventLog::counting_only().with_observer(verdict_observer(Arc::clone(&world))));
    let shared = Arc::new(Shared {
        world: Arc::clone(&world),
        log,
        superblock,
        referee: Mutex::new(Referee::default()),
        host_ids: (0..hosts).map(|_| Uuid::from_rng(&mut rng)).collect(),
        locks: options.locks,
        counter_lba,
        caw_client_lba,
        atomic_lba,
        // Half the seeds run without PR keys: then leases and the compare alone must keep writers apart.
        pr_fencing: rng.gen_bool(0.5),
        broken: options.broken,
    });
    let mut executor = Executor::default();
    for actor in 0..actors {
        spawn(&mut executor, &shared, actor, 0, rng.gen());
    }
    schedule_first_faults(&world);
    let mut quiet_since: Option<Duration> = None;
    loop {
        let paused: Vec<bool> = lock(&world).actors.iter().map(|a| a.paused).collect();
        executor.run_ready(|actor| paused.get(actor).copied().unwrap_or(false));
        let mut w = lock(&world);
        if quiet_since.is_none() && w.stats.steps >= options.steps {
            let now = w.now;
            w.schedule_control(now, Control::Quiet);
            quiet_since = Some(now);
        }
        if let Some(since) = quiet_since {
            if w.now >= since + QUIET {
                break;
            }
        }
        w.checks.step = w.stats.steps;
        let Some(control) = w.step() else {
            break;
        };
        drop(w);
        if let Some(control) = control {
            apply(&world, &mut executor, &shared, control, &mut rng);
        }
    }
    finish(seed, &world, &shared, quiet_since)
}

fn spawn(executor: &mut Executor, shared: &Arc<Shared>, actor: usize, incarnation: u64, seed: u64) {
    let hosts = shared.host_ids.len();
    let shared = Arc::clone(shared);
    let task: crate::executor::BoxedTask = if actor < hosts {
        Box::pin(lock_host(shared, actor, incarnation, seed))
    } else if actor == hosts {
        Box::pin(caw_client(shared, actor, incarnation, seed))
    } else if actor <= hosts + 2 {
        Box::pin(pr_client(shared, actor, incarnation, seed))
    } else {
        Box::pin(atomic_client(shared, actor, incarnation, seed))
    };
    executor.spawn(actor, task);
}

/// Formats the lockspace before any actor runs, through the simulated disk with faults not yet drawn.
fn format_lockspace(
    world: &SimHandle,
    hosts: usize,
    locks: u32,
    seed: u64,
) -> lunlock_cluster::Superblock {
    let disk = SimDisk {
        world: Arc::clone(world),
        actor: 0,
        incarnation: 0,
        lun: 0,
    };
    let options = FormatOptions {
        slots: hosts as u32 + 2,
        locks: locks + 2,
        heartbeat_interval_ms: INTERVAL_MS,
        dead_after_ms: DEAD_AFTER_MS,
        ..FormatOptions::default()
    };
    let saved_plan = {
        let mut w = lock(world);
        w.quiet = true;
        w.plan.clone()
    };
    // The first command of a new I_T nexus reports its power-on unit attention (SAM-5 6.3.3).
    block_on(
        world,
        disk.command(vec![0; 6], Vec::new(), 0, Duration::from_secs(5)),
    );
    let superblock = block_on(
        world,
        format_seeded(&disk, &options, Duration::from_secs(5), seed),
    )
    .expect("formatting the simulated LUN cannot fail without faults");
    let mut w = lock(world);
    w.quiet = false;
    w.plan = saved_plan;
    superblock
}

/// Runs one future to completion on the world's events alone (no other task runs meanwhile).
fn block_on<T>(world: &SimHandle, future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
        let stepped = lock(world).step();
        assert!(
            stepped.is_some(),
            "the future waits for an event that never comes"
        );
    }
}

/// Hands every ATS verdict to the checker with the block as it is at that moment.
fn verdict_observer(world: SimHandle) -> Box<dyn Fn(&AtsEvent) + Send + Sync> {
    Box::new(move |event: &AtsEvent| {
        let Some(actor) = event
            .host
            .strip_prefix('a')
            .and_then(|a| a.parse::<usize>().ok())
        else {
            return;
        };
        let mut w = lock(&world);
        let current = w.target.units[0].store.block(event.lba);
        let now = w.now;
        w.trace.record(
            now,
            format_args!(
                "a{actor} {} lba {} attempt {}: {} -> {:?} (wrote {}, found {})",
                event.op,
                event.lba,
                event.attempt,
                event.outcome,
                event.verdict,
                event.written_digest,
                event.found_digest.as_deref().unwrap_or("-")
            ),
        );
        w.checks.verdict(now, actor, event, &current);
    })
}

fn schedule_first_faults(world: &SimHandle) {
    let mut w = lock(world);
    for kind in [
        FaultKind::Pause,
        FaultKind::HostCrash,
        FaultKind::Partition,
        FaultKind::TargetCrash,
    ] {
        schedule_next(&mut w, kind);
    }
}

fn schedule_next(w: &mut World, kind: FaultKind) {
    let rate = match kind {
        FaultKind::Pause => w.plan.pause_rate,
        FaultKind::HostCrash => w.plan.host_crash_rate,
        FaultKind::Partition => w.plan.partition_rate,
        FaultKind::TargetCrash => w.plan.target_crash_rate,
        _ => 0.0,
    };
    let Some(after) = w.next_after(rate) else {
        return;
    };
    let at = w.now + after;
    let control = match kind {
        FaultKind::Pause => Control::Pause(usize::MAX),
        FaultKind::HostCrash => Control::Crash(usize::MAX),
        FaultKind::Partition => Control::Partition(usize::MAX),
        _ => Control::TargetCrash,
    };
    w.schedule_control(at, control);
}

/// A stall, crash or partition lasts half to three times dead_after.
fn fault_duration(w: &mut World) -> Duration {
    Duration::from_millis(
        w.rng
            .gen_range(u64::from(DEAD_AFTER_MS) / 2..3 * u64::from(DEAD_AFTER_MS)),
    )
}

/// A healthy lock host to hit, if any.
fn pick_victim(w: &mut World) -> Option<usize> {
    let healthy: Vec<usize> = w
        .faultable
        .iter()
        .copied()
        .filter(|&a| {
            let s = &w.actors[a];
            !s.paused && !s.crashed && !s.partitioned
        })
        .collect();
    (!healthy.is_empty()).then(|| healthy[w.rng.gen_range(0..healthy.len())])
}

fn apply(
    world: &SimHandle,
    executor: &mut Executor,
    shared: &Arc<Shared>,
    control: Control,
    rng: &mut StdRng,
) {
    let mut w = lock(world);
    let now = w.now;
    match control {
        Control::Pause(_) | Control::Crash(_) | Control::Partition(_) if w.quiet => {}
        Control::TargetCrash if w.quiet => {}
        Control::Pause(_) => {
            schedule_next(&mut w, FaultKind::Pause);
            if let Some(actor) = pick_victim(&mut w) {
                let lasts = fault_duration(&mut w);
                w.actors[actor].paused = true;
                w.stats.faults += 1;
                w.trace
                    .record(now, format_args!("a{actor} paused for {lasts:?}"));
                w.schedule_control(now + lasts, Control::Resume(actor));
            }
        }
        Control::Resume(actor) => {
            if w.actors[actor].paused {
                w.actors[actor].paused = false;
                w.trace.record(now, format_args!("a{actor} resumed"));
                executor.resume_actor(actor);
            }
        }
        Control::Crash(_) => {
            schedule_next(&mut w, FaultKind::HostCrash);
            if let Some(actor) = pick_victim(&mut w) {
                let lasts = fault_duration(&mut w);
                w.actors[actor].crashed = true;
                w.stats.faults += 1;
                w.trace
                    .record(now, format_args!("a{actor} crashed, restarts in {lasts:?}"));
                w.schedule_control(now + lasts, Control::Restart(actor));
                drop(w);
                executor.kill_actor(actor);
                lock(&shared.referee).crashed(actor);
            }
        }
        Control::Restart(actor) => {
            if w.actors[actor].crashed {
                w.actors[actor].crashed = false;
                w.actors[actor].paused = false;
                w.actors[actor].incarnation += 1;
                let incarnation = w.actors[actor].incarnation;
                w.trace.record(now, format_args!("a{actor} restarted"));
                drop(w);
                spawn(executor, shared, actor, incarnation, rng.gen());
            }
        }
        Control::Partition(_) => {
            schedule_next(&mut w, FaultKind::Partition);
            if let Some(actor) = pick_victim(&mut w) {
                let lasts = fault_duration(&mut w);
                w.actors[actor].partitioned = true;
                w.stats.faults += 1;
                w.trace
                    .record(now, format_args!("a{actor} partitioned for {lasts:?}"));
                w.schedule_control(now + lasts, Control::Heal(actor));
            }
        }
        Control::Heal(actor) => {
            if w.actors[actor].partitioned {
                w.actors[actor].partitioned = false;
                w.trace.record(now, format_args!("a{actor} reconnected"));
            }
        }
        Control::TargetCrash => {
            schedule_next(&mut w, FaultKind::TargetCrash);
            if w.target.up {
                w.stats.faults += 1;
                w.crash_target();
                let down = Duration::from_millis(w.rng.gen_range(50..1000));
                w.schedule_control(now + down, Control::TargetRestart);
            }
        }
        Control::TargetRestart => {
            if !w.target.up {
                w.restart_target();
            }
        }
        Control::Quiet => {
            w.quiet = true;
            w.trace.record(now, format_args!("faults stop"));
            let actors = w.actors.len();
            for actor in 0..actors {
                if w.actors[actor].paused {
                    w.schedule_control(now, Control::Resume(actor));
                }
                if w.actors[actor].partitioned {
                    w.schedule_control(now, Control::Heal(actor));
                }
                if w.actors[actor].crashed {
                    w.schedule_control(now, Control::Restart(actor));
                }
            }
            if !w.target.up {
                w.schedule_control(now, Control::TargetRestart);
            }
            drop(w);
            lock(&shared.referee).start_quiet();
        }
    }
}

/// Liveness, then the report.
fn finish(
    seed: u64,
    world: &SimHandle,
    shared: &Arc<Shared>,
    quiet_since: Option<Duration>,
) -> SeedReport {
    let w = lock(world);
    let step = w.stats.steps;
    let mut violations: Vec<(u64, String)> = w
        .checks
        .violations
        .iter()
        .map(|v| (v.step, format!("{:.6}s {}", v.at.as_secs_f64(), v.message)))
        .collect();
    let referee = lock(&shared.referee);
    violations.extend(referee.violations.iter().map(|m| (step, m.clone())));
    if quiet_since.is_some() {
        for actor in 0..shared.host_ids.len() {
            if referee.quiet_grants.get(&actor).copied().unwrap_or(0) == 0 {
                violations.push((
                    step,
                    format!("liveness: a{actor} acquired no lock in {QUIET:?} without faults"),
                ));
            }
        }
    }
    SeedReport {
        seed,
        steps: step,
        faults: w.stats.faults,
        commands: w.stats.commands,
        grants: referee.grants,
        max_in_flight: w.stats.max_in_flight,
        lock_waits: w.stats.lock_waits,
        out_of_order: w.stats.out_of_order,
        aborted_in_flight: w.stats.aborted_in_flight,
        simulated: w.now,
        violations,
        trace: w.trace.lines().cloned().collect(),
        digest: w.trace.digest,
    }
}
