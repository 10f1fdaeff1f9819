//! `lunlock lock demo`: N hosts, each with its own disk handle (its own iSCSI session and initiator name against a
//! real target), heartbeat and contend for exclusive locks. Inside each hold a host increments a counter block that
//! belongs to the lock, with ATS and a fencing check. A referee in the process checks mutual exclusion:
//! - fencing tokens of a lock are granted in strictly increasing order;
//! - when a lock is granted, no other holder of it may still have a valid lease (two exclusive holders);
//! - a counter write never replaces one made under a higher token;
//! - at the end, each counter equals the number of increments that landed.
//!
//! With `chaos`, hosts are killed (their tasks and session dropped, then restarted) and paused (a stall longer or
//! shorter than dead_after), alternately, every few seconds; the victim is a host inside a hold when there is one.
//! The time from a victim's stop to the break of its lock is measured.

use crate::disk::{Clock, Disk, TokioClock};
use crate::events::{Counters, EventLog};
use crate::format::{LockMode, Superblock, Uuid};
use crate::host::{Host, HostConfig};
use crate::locks::Acquire;
use crate::resolver::{AtsRequest, AtsResult};
use crate::ClusterError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub hosts: usize,
    pub duration: Duration,
    /// Locks contended for (the first `locks` names lock-0, lock-1, ...).
    pub locks: u32,
    pub lockspace_lba: u64,
    /// Where the counter blocks start: counter of lock i at `counter_lba + i`.
    pub counter_lba: u64,
    /// Kill and pause hosts at random; each host then contends for lock `i % locks` only, so every lock always has
    /// a waiter and break latency measures the lock manager, not the absence of contenders.
    pub chaos: bool,
    pub seed: u64,
}

/// What the demo counted.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    pub hosts: usize,
    pub heartbeats: u64,
    pub acquisitions: u64,
    pub false_miscompares_resolved: u64,
    pub real_conflicts: u64,
    pub violations: u64,
    pub breaks: u64,
    pub counter_increments: u64,
    pub fenced_writes_refused: u64,
    pub kills: u64,
    pub pauses: u64,
    /// The longest time from a victim's stop (kill or pause) to another host breaking its lock.
    pub max_break_latency: Option<Duration>,
    pub violation_details: Vec<String>,
}

impl fmt::Display for DemoReport {
    /// The demo's last line, exactly as documented.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo hosts={} heartbeats={} acquisitions={} false_miscompares_resolved={} real_conflicts={} violations={}",
            self.hosts,
            self.heartbeats,
            self.acquisitions,
            self.false_miscompares_resolved,
            self.real_conflicts,
            self.violations
        )
    }
}

/// The counter block a lock protects (in the demo and the simulator): the token of the holder that wrote it, the
/// count, the writer, and a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterImage {
    pub token: u64,
    pub count: u64,
    pub writer: u64,
}

const COUNTER_MAGIC: [u8; 8] = *b"LLDEMOCT";

impl CounterImage {
    pub fn encode(&self, nonce: u64, block_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; block_size as usize];
        b[..8].copy_from_slice(&COUNTER_MAGIC);
        b[8..16].copy_from_slice(&self.token.to_be_bytes());
        b[16..24].copy_from_slice(&self.count.to_be_bytes());
        b[24..32].copy_from_slice(&self.writer.to_be_bytes());
        b[32..40].copy_from_slice(&nonce.to_be_bytes());
        b
    }

    /// A never-written block (all zeros) is count 0, token 0.
    pub fn decode(b: &[u8]) -> Option<CounterImage> {
        if b.iter().all(|&x| x == 0) {
            return Some(CounterImage {
                token: 0,
                count: 0,
                writer: 0,
            });
        }
        if b.len() < 40 || b[..8] != COUNTER_MAGIC {
            return None;
        }
        let field = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        Some(CounterImage {
            token: field(8),
            count: field(16),
            writer: field(24),
        })
    }
}

/// The in-process referee.
#[derive(Default)]
struct Referee {
    /// lock -> highest token granted so far
    last_token: HashMap<u32, u64>,
    /// lock -> (host, token, lease epoch) currently inside their hold
    inside: HashMap<u32, Vec<(usize, u64, u64)>>,
    /// lock -> increments that landed
    landed: HashMap<u32, u64>,
    /// lock -> the counter's value before the run (an earlier run's count)
    initial: HashMap<u32, u64>,
    /// host -> lock whose counter it is writing right now
    incrementing: HashMap<usize, u32>,
    /// lock -> increments whose host was killed mid-write: they may or may not have landed
    uncertain: HashMap<u32, u64>,
    violations: Vec<String>,
    /// host -> when it was killed or paused (cleared when it resumes)
    stopped_at: HashMap<usize, Instant>,
    /// slot -> host index, for the host currently in that slot
    slot_host: HashMap<u32, usize>,
    break_latencies: Vec<Duration>,
}

/// Everything the hosts share.
struct Arena<D, C> {
    options: DemoOptions,
    superblock: Superblock,
    log: Arc<EventLog>,
    referee: Mutex<Referee>,
    /// host index -> its current incarnation (for lease checks by the referee)
    hosts: Mutex<HashMap<usize, Arc<Host<D, C>>>>,
    paused: Vec<AtomicBool>,
    increments: AtomicU64,
    fenced_refusals: AtomicU64,
    kills: AtomicU64,
    pauses: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected host's disk and its PR key (registered by the connector), if any.
pub type Connected<D> = (D, Option<u64>);

/// Runs the demo. `connect(i)` gives host `i` a fresh disk handle (a new session) each time it (re)starts, and
/// `connect(usize::MAX)` the referee's, once for the whole run.
pub async fn run<D, F, Fut>(
    options: DemoOptions,
    superblock: Superblock,
    log: Arc<EventLog>,
    connect: F,
) -> Result<DemoReport, ClusterError>
where
    D: Disk + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Connected<D>, ClusterError>> + Send + 'static,
{
    let arena = Arc::new(Arena::<D, TokioClock> {
        paused: (0..options.hosts).map(|_| AtomicBool::new(false)).collect(),
        options: options.clone(),
        superblock: superblock.clone(),
        log: Arc::clone(&log),
        referee: Mutex::new(Referee::default()),
        hosts: Mutex::new(HashMap::new()),
        increments: AtomicU64::new(0),
        fenced_refusals: AtomicU64::new(0),
        kills: AtomicU64::new(0),
        pauses: AtomicU64::new(0),
    });
    let connect = Arc::new(connect);
    // The referee's one session reads the counters at the start and at the end: a second login of its nexus would
    // reinstate the first session (RFC 7143 6.3.5) if the target had not yet seen it go.
    let (referee_disk, _) = connect(usize::MAX).await?;
    read_initial_counters(&arena, &referee_disk).await?;
    let end = Instant::now() + options.duration;
    let host_ids: Vec<Uuid> = (0..options.hosts).map(|_| Uuid::random()).collect();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    for (i, host_id) in host_ids.iter().enumerate() {
        tasks.push(spawn_host(&arena, &connect, i, *host_id, end));
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let interval = Duration::from_millis(u64::from(superblock.heartbeat_interval_ms));
    let dead_after = Duration::from_millis(u64::from(superblock.dead_after_ms));
    while Instant::now() < end {
        if !options.chaos {
            tokio::time::sleep(end.saturating_duration_since(Instant::now()).min(interval)).await;
            continue;
        }
        // One victim at a time, and never while its lock partner is stopped, so each lock keeps a live waiter.
        tokio::time::sleep(interval * rng.gen_range(1..4)).await;
        if Instant::now() + dead_after * 2 > end {
            continue;
        }
        let victim = pick_victim(&arena, &mut rng);
        // Events alternate: kill, long pause (past dead_after: the hold is broken), kill, short pause (not).
        let event = arena.kills.load(Ordering::Relaxed) + arena.pauses.load(Ordering::Relaxed);
        if event.is_multiple_of(2) {
            arena.kills.fetch_add(1, Ordering::Relaxed);
            lock(&arena.referee)
                .stopped_at
                .insert(victim, Instant::now());
            tasks[victim].abort();
            lock(&arena.hosts).remove(&victim);
            // The killed incarnation holds nothing any more; its restart is a new host to the referee. A counter
            // write it had in flight may still land.
            {
                let mut referee = lock(&arena.referee);
                for inside in referee.inside.values_mut() {
                    inside.retain(|&(h, _, _)| h != victim);
                }
                if let Some(lock_index) = referee.incrementing.remove(&victim) {
                    *referee.uncertain.entry(lock_index).or_default() += 1;
                }
            }
            tokio::time::sleep(dead_after + interval * 2).await;
            lock(&arena.referee).stopped_at.remove(&victim);
            tasks[victim] = spawn_host(&arena, &connect, victim, host_ids[victim], end);
        } else {
            arena.pauses.fetch_add(1, Ordering::Relaxed);
            let stall = if event % 4 == 1 {
                dead_after * 3 / 2
            } else {
                dead_after / 2
            };
            lock(&arena.referee)
                .stopped_at
                .insert(victim, Instant::now());
            arena.paused[victim].store(true, Ordering::SeqCst);
            tokio::time::sleep(stall).await;
            arena.paused[victim].store(false, Ordering::SeqCst);
            lock(&arena.referee).stopped_at.remove(&victim);
            tokio::time::sleep(interval * 2).await;
        }
    }
    for task in &tasks {
        let _ = tokio::time::timeout(interval * 20, async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        task.abort();
    }
    final_report(&arena, &referee_disk).await
}

/// A host inside a hold when there is one (so kills and pauses test lock breaking), else any host.
fn pick_victim<D, C>(arena: &Arena<D, C>, rng: &mut StdRng) -> usize {
    let referee = lock(&arena.referee);
    let holders: Vec<usize> = referee
        .inside
        .values()
        .flatten()
        .map(|&(h, _, _)| h)
        .collect();
    if holders.is_empty() {
        rng.gen_range(0..arena.options.hosts)
    } else {
        holders[rng.gen_range(0..holders.len())]
    }
}

async fn read_initial_counters<D: Disk + 'static>(
    arena: &Arc<Arena<D, TokioClock>>,
    disk: &D,
) -> Result<(), ClusterError> {
    for lock_index in 0..arena.options.locks {
        let lba = arena.options.counter_lba + u64::from(lock_index);
        let block = disk.read(lba, 1, Duration::from_secs(10)).await?;
        let counter = CounterImage::decode(&block).ok_or_else(|| {
            ClusterError::Usage(format!(
                "LBA {lba} (the demo counter of lock-{lock_index}) holds other data"
            ))
        })?;
        lock(&arena.referee)
            .initial
            .insert(lock_index, counter.count);
    }
    Ok(())
}

fn spawn_host<D, F, Fut>(
    arena: &Arc<Arena<D, TokioClock>>,
    connect: &Arc<F>,
    index: usize,
    host_id: Uuid,
    end: Instant,
) -> tokio::task::JoinHandle<()>
where
    D: Disk + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Connected<D>, ClusterError>> + Send + 'static,
{
    let arena = Arc::clone(arena);
    let connect = Arc::clone(connect);
    tokio::spawn(async move {
        // A host that loses its slot or is fenced starts a new incarnation, as a real host would after rejoining.
        while Instant::now() < end {
            if let Err(e) = incarnation(&arena, &*connect, index, host_id, end).await {
                arena.log.note(&crate::events::NoteEvent {
                    host: format!("demo-host-{index}"),
                    lockspace: arena.superblock.lockspace_id.to_string(),
                    event: "incarnation_ended",
                    detail: e.to_string(),
                });
                tokio::time::sleep(Duration::from_millis(u64::from(
                    arena.superblock.heartbeat_interval_ms,
                )))
                .await;
            }
        }
    })
}

async fn incarnation<D, F, Fut>(
    arena: &Arc<Arena<D, TokioClock>>,
    connect: &F,
    index: usize,
    host_id: Uuid,
    end: Instant,
) -> Result<(), ClusterError>
where
    D: Disk + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Connected<D>, ClusterError>> + Send + 'static,
{
    let (disk, pr_key) = connect(index).await?;
    let mut config = HostConfig::new(&format!("demo-host-{index}"), host_id, &arena.superblock);
    config.lockspace_lba = arena.options.lockspace_lba;
    config.pr_key = pr_key;
    config.seed = arena.options.seed
        ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ rand::random::<u64>();
    let host = Arc::new(Host::new(
        disk,
        TokioClock::new(),
        Arc::clone(&arena.log),
        arena.superblock.clone(),
        config,
    ));
    let slot = host.join().await?;
    lock(&arena.referee).slot_host.insert(slot, index);
    lock(&arena.hosts).insert(index, Arc::clone(&host));
    // Heartbeats and work run in this one task, so killing the task stops both, as a host crash does.
    let beating = AtomicBool::new(true);
    let work = async {
        let result = work_loop(arena, &host, index, &beating, end).await;
        beating.store(false, Ordering::SeqCst);
        result
    };
    let (result, ()) = tokio::join!(work, heartbeat_loop(arena, &host, index, &beating, end));
    if Instant::now() >= end {
        let _ = host.leave().await;
    }
    result
}

async fn wait_while_paused<D, C>(arena: &Arena<D, C>, index: usize) {
    while arena.paused[index].load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn heartbeat_loop<D: Disk + 'static>(
    arena: &Arena<D, TokioClock>,
    host: &Host<D, TokioClock>,
    index: usize,
    beating: &AtomicBool,
    end: Instant,
) {
    let interval = host.heartbeat_interval();
    while beating.load(Ordering::SeqCst) && Instant::now() < end {
        wait_while_paused(arena, index).await;
        let started = Instant::now();
        if host.heartbeat().await.is_err() {
            beating.store(false, Ordering::SeqCst);
            return;
        }
        let _ = host.observe_slots().await;
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

async fn work_loop<D: Disk + 'static>(
    arena: &Arc<Arena<D, TokioClock>>,
    host: &Arc<Host<D, TokioClock>>,
    index: usize,
    beating: &AtomicBool,
    end: Instant,
) -> Result<(), ClusterError> {
    let mut rng = StdRng::seed_from_u64(
        arena.options.seed.wrapping_add(index as u64 * 7919) ^ rand::random::<u64>(),
    );
    let dead_after = host.dead_after();
    while Instant::now() < end {
        if !beating.load(Ordering::SeqCst) {
            return Err(ClusterError::Usage("heartbeat stopped".into()));
        }
        wait_while_paused(arena, index).await;
        let lock_index = if arena.options.chaos {
            (index as u32) % arena.options.locks
        } else {
            rng.gen_range(0..arena.options.locks)
        };
        let name = format!("lock-{lock_index}");
        let handle = match host
            .acquire(&name, LockMode::Exclusive, dead_after * 2)
            .await?
        {
            Acquire::Granted(handle) => handle,
            Acquire::Busy { .. } => continue,
        };
        grant(arena, host, index, lock_index, &handle);
        let hold = Duration::from_millis(rng.gen_range(0..40));
        let outcome = increment(
            arena,
            host,
            index,
            lock_index,
            handle.token,
            handle.lease_epoch,
        )
        .await;
        wait_while_paused(arena, index).await;
        tokio::time::sleep(hold).await;
        leave_hold(arena, index, lock_index, handle.token);
        outcome?;
        match host.release(&handle).await {
            Ok(()) | Err(ClusterError::LockLost { .. }) => {}
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// The referee's checks at a grant the host may act on (its lease is valid): its token is the highest so far, and no
/// other holder of the lock still has a valid lease in the epoch it acquired in (two exclusive holders). A host can
/// learn of a grant late, after the lock was broken; its lease has then lapsed and it must not act.
fn grant<D: Disk, C: Clock>(
    arena: &Arena<D, C>,
    host: &Host<D, C>,
    index: usize,
    lock_index: u32,
    handle: &crate::locks::LockHandle,
) {
    let (token, epoch) = (handle.token, handle.lease_epoch);
    let hosts = lock(&arena.hosts);
    let mut referee = lock(&arena.referee);
    let last = referee.last_token.get(&lock_index).copied().unwrap_or(0);
    referee.last_token.insert(lock_index, token.max(last));
    for slot in &handle.broken {
        let Some(victim) = referee.slot_host.get(slot).copied() else {
            continue;
        };
        if let Some(stopped) = referee.stopped_at.get(&victim).copied() {
            referee.break_latencies.push(stopped.elapsed());
        }
    }
    if !host.lease_valid_in(epoch) {
        return;
    }
    if token <= last {
        referee.violations.push(format!(
            "lock-{lock_index}: host {index} granted token {token} after token {last}"
        ));
    }
    let inside = referee.inside.get(&lock_index).cloned().unwrap_or_default();
    for (other, other_token, other_epoch) in inside {
        let lease_valid = hosts
            .get(&other)
            .is_some_and(|h| h.lease_valid_in(other_epoch));
        if other != index && lease_valid {
            referee.violations.push(format!(
                "lock-{lock_index}: host {index} granted token {token} while host {other} (token {other_token}) still holds a valid lease"
            ));
        }
    }
    referee
        .inside
        .entry(lock_index)
        .or_default()
        .push((index, token, epoch));
}

fn leave_hold<D, C>(arena: &Arena<D, C>, index: usize, lock_index: u32, token: u64) {
    let mut referee = lock(&arena.referee);
    if let Some(inside) = referee.inside.get_mut(&lock_index) {
        inside.retain(|&(h, t, _)| (h, t) != (index, token));
    }
}

/// The work done under a lock: increment the lock's counter block with ATS, refusing (as a fenced resource would)
/// when the block already carries a higher token, or when this host's lease has expired.
async fn increment<D: Disk + 'static>(
    arena: &Arena<D, TokioClock>,
    host: &Host<D, TokioClock>,
    index: usize,
    lock_index: u32,
    token: u64,
    epoch: u64,
) -> Result<(), ClusterError> {
    let block_size = arena.superblock.block_size;
    let lba = arena.options.counter_lba + u64::from(lock_index);
    let policy = host.config().io_policy;
    // The counter lives outside the lockspace; the host addresses blocks relative to the lockspace start.
    let relative = lba
        .checked_sub(arena.options.lockspace_lba)
        .ok_or_else(|| ClusterError::Usage("the counters must follow the lockspace".into()))?;
    let current = host.read_retrying(relative, 1).await?;
    let Some(found) = CounterImage::decode(&current) else {
        lock(&arena.referee).violations.push(format!(
            "counter of lock-{lock_index} at LBA {lba} is unreadable"
        ));
        return Ok(());
    };
    if found.token > token || !host.lease_valid_in(epoch) {
        arena.fenced_refusals.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let next = CounterImage {
        token,
        count: found.count + 1,
        writer: index as u64,
    };
    let new = next.encode(host.nonce(), block_size);
    let request = AtsRequest {
        op: "counter",
        target: format!("counter lock-{lock_index}"),
        lba: relative,
        expected: &current,
        new: &new,
        policy,
    };
    lock(&arena.referee).incrementing.insert(index, lock_index);
    let result = host.resolved_ats(request).await;
    lock(&arena.referee).incrementing.remove(&index);
    match result? {
        AtsResult::Landed { .. } => {
            arena.increments.fetch_add(1, Ordering::Relaxed);
            *lock(&arena.referee).landed.entry(lock_index).or_default() += 1;
        }
        AtsResult::Conflict { found } => {
            // Someone wrote the counter while we held the lock: fine only if they held a newer token.
            let newer = CounterImage::decode(&found).is_some_and(|c| c.token > token);
            if !newer {
                lock(&arena.referee).violations.push(format!(
                    "counter of lock-{lock_index} changed under holder {index} (token {token}) by a writer without a newer token"
                ));
            }
        }
    }
    Ok(())
}

async fn final_report<D: Disk + 'static>(
    arena: &Arc<Arena<D, TokioClock>>,
    disk: &D,
) -> Result<DemoReport, ClusterError> {
    let mut violations = lock(&arena.referee).violations.clone();
    let timeout = Duration::from_secs(10);
    for lock_index in 0..arena.options.locks {
        let lba = arena.options.counter_lba + u64::from(lock_index);
        let block = disk.read(lba, 1, timeout).await?;
        let (landed, initial, uncertain) = {
            let referee = lock(&arena.referee);
            let get = |m: &HashMap<u32, u64>| m.get(&lock_index).copied().unwrap_or(0);
            (
                get(&referee.landed),
                get(&referee.initial),
                get(&referee.uncertain),
            )
        };
        match CounterImage::decode(&block) {
            Some(counter)
                if counter.count >= initial + landed && counter.count <= initial + landed + uncertain => {}
            Some(counter) => violations.push(format!(
                "lock-{lock_index}: counter went from {initial} to {} but {landed} increments landed \
                 ({uncertain} more were in flight when their host was killed)",
                counter.count
            )),
            None => violations.push(format!("lock-{lock_index}: counter block unreadable")),
        }
    }
    let counters = &arena.log.counters;
    let referee = lock(&arena.referee);
    Ok(DemoReport {
        hosts: arena.options.hosts,
        heartbeats: Counters::get(&counters.heartbeats),
        acquisitions: Counters::get(&counters.acquisitions),
        false_miscompares_resolved: Counters::get(&counters.false_miscompares_resolved),
        real_conflicts: Counters::get(&counters.real_conflicts),
        violations: violations.len() as u64,
        breaks: Counters::get(&counters.breaks),
        counter_increments: arena.increments.load(Ordering::Relaxed),
        fenced_writes_refused: arena.fenced_refusals.load(Ordering::Relaxed),
        kills: arena.kills.load(Ordering::Relaxed),
        pauses: arena.pauses.load(Ordering::Relaxed),
        max_break_latency: referee.break_latencies.iter().max().copied(),
        violation_details: violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_images_round_trip_and_zero_is_the_start() {
        let c = CounterImage {
            token: 4,
            count: 9,
            writer: 2,
        };
        assert_eq!(CounterImage::decode(&c.encode(1, 512)), Some(c));
        assert_eq!(CounterImage::decode(&[0u8; 512]).map(|c| c.count), Some(0));
        assert_eq!(CounterImage::decode(&[1u8; 512]), None);
    }

    #[test]
    fn the_last_line_has_the_documented_shape() {
        let report = DemoReport {
            hosts: 8,
            heartbeats: 1,
            acquisitions: 2,
            false_miscompares_resolved: 3,
            real_conflicts: 4,
            violations: 0,
            ..DemoReport::default()
        };
        assert_eq!(
            report.to_string(),
            "demo hosts=8 heartbeats=1 acquisitions=2 false_miscompares_resolved=3 real_conflicts=4 violations=0"
        );
    }
}
