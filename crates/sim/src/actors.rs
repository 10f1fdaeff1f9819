//! The simulated hosts: lock hosts running the real `cluster` code (heartbeats, locks, resolver, PR fencing), a
//! plain COMPARE AND WRITE client, two plain PR clients, and a WRITE ATOMIC client. Plus the referee that checks mutual exclusion at
//! every grant and the liveness of the lock hosts at the end.

use crate::io::{MoveTo, SimClock, SimDisk, SimHandle};
use crate::world::{initiator_name, lock, BLOCK};
use lunlock_cluster::demo::CounterImage;
use lunlock_cluster::resolver::{AtsRequest, AtsResult};
use lunlock_cluster::{
    Acquire, BrokenVariant, Clock, ClusterError, Disk, EventLog, Host, HostConfig, LockMode,
    Superblock, Uuid,
};
use lunlock_initiator::pr::{PrOutAction, PrType, TransportId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type SimHost = Host<SimDisk, SimClock>;

/// The largest clock rate error of a simulated host: 0.5 %, far beyond real crystal drift (about 100 ppm), well
/// within the lease margin (one heartbeat interval of dead_after, 12.5 %).
const MAX_SKEW: f64 = 0.005;

/// Everything the actors share.
pub struct Shared {
    pub world: SimHandle,
    pub log: Arc<EventLog>,
    pub superblock: Superblock,
    pub referee: Mutex<Referee>,
    pub host_ids: Vec<Uuid>,
    pub locks: u32,
    pub counter_lba: u64,
    pub caw_client_lba: u64,
    /// The first block of the WRITE ATOMIC client's range (`checks::ATOMIC_RANGE_BLOCKS` blocks).
    pub atomic_lba: u64,
    pub pr_fencing: bool,
    pub broken: BrokenVariant,
}

/// Mutual exclusion and liveness bookkeeping.
#[derive(Default)]
pub struct Referee {
    last_token: BTreeMap<u32, u64>,
    inside: BTreeMap<u32, Vec<(usize, u64, u64)>>,
    hosts: BTreeMap<usize, Arc<SimHost>>,
    /// actor -> grants since the quiet phase began
    pub quiet_grants: BTreeMap<usize, u64>,
    pub quiet: bool,
    pub grants: u64,
    pub violations: Vec<String>,
}

impl Referee {
    /// A host crashed: what it held is gone with it (its in-flight writes are the fencing checker's business).
    pub fn crashed(&mut self, actor: usize) {
        self.hosts.remove(&actor);
        for inside in self.inside.values_mut() {
            inside.retain(|&(a, _, _)| a != actor);
        }
    }

    pub fn start_quiet(&mut self) {
        self.quiet = true;
        self.quiet_grants.clear();
    }
}

fn pr_key(actor: usize) -> u64 {
    0x5100 + actor as u64
}

/// An actor's disk on `lun` and its clock, whose rate differs from true time by up to `MAX_SKEW`.
fn connect(
    shared: &Shared,
    actor: usize,
    incarnation: u64,
    lun: usize,
    seed: u64,
) -> (SimDisk, SimClock) {
    let skew = StdRng::seed_from_u64(seed ^ 0x5EED).gen_range(-MAX_SKEW..=MAX_SKEW);
    let disk = SimDisk {
        world: Arc::clone(&shared.world),
        actor,
        incarnation,
        lun,
    };
    let clock = SimClock {
        world: Arc::clone(&shared.world),
        rate: 1.0 + skew,
    };
    (disk, clock)
}

/// One lock host for the life of its process (until the simulator crashes it): rejoin after losing the slot or
/// being fenced, as a real host would.
pub async fn lock_host(shared: Arc<Shared>, actor: usize, incarnation: u64, seed: u64) {
    let (disk, clock) = connect(&shared, actor, incarnation, 0, seed);
    let interval = Duration::from_millis(u64::from(shared.superblock.heartbeat_interval_ms));
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        if shared.pr_fencing {
            join_fencing(&disk, actor).await;
        }
        let mut config = HostConfig::new(
            &format!("a{actor}"),
            shared.host_ids[actor],
            &shared.superblock,
        );
        config.seed = rng.gen();
        config.pr_key = shared.pr_fencing.then(|| pr_key(actor));
        config.broken = shared.broken;
        let host = Arc::new(Host::new(
            disk.clone(),
            clock.clone(),
            Arc::clone(&shared.log),
            shared.superblock.clone(),
            config,
        ));
        if host.join().await.is_ok() {
            lock(&shared.referee).hosts.insert(actor, Arc::clone(&host));
            let beating = AtomicBool::new(true);
            let work = async {
                work_loop(&shared, &host, actor, &beating, &mut rng).await;
                beating.store(false, Ordering::SeqCst);
            };
            futures_join(work, heartbeat_loop(&host, &beating)).await;
            lock(&shared.referee).crashed(actor);
        }
        clock.sleep(interval).await;
    }
}

/// Registers the host's key with APTPL (so fencing survives a target restart) and takes the WRITE EXCLUSIVE -
/// REGISTRANTS ONLY reservation if no one holds it. Failures are retried by the next incarnation.
async fn join_fencing(disk: &SimDisk, actor: usize) {
    let timeout = Duration::from_millis(500);
    let key = pr_key(actor);
    let _ = disk
        .prout(
            PrOutAction::RegisterAndIgnoreExistingKey,
            PrType(0),
            0,
            key,
            true,
            timeout,
        )
        .await;
    let _ = disk
        .prout(
            PrOutAction::Reserve,
            PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            key,
            0,
            false,
            timeout,
        )
        .await;
}

/// Polls two futures to completion in one task (the heartbeat and the work of one host share its fate).
async fn futures_join(
    a: impl std::future::Future<Output = ()>,
    b: impl std::future::Future<Output = ()>,
) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut a_done, mut b_done) = (false, false);
    std::future::poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

async fn heartbeat_loop(host: &SimHost, beating: &AtomicBool) {
    let interval = host.heartbeat_interval();
    while beating.load(Ordering::SeqCst) {
        let started = host.clock().now();
        if host.heartbeat().await.is_err() {
            beating.store(false, Ordering::SeqCst);
            return;
        }
        let _ = host.observe_slots().await;
        let next = started + interval;
        let now = host.clock().now();
        if next > now {
            host.clock().sleep(next - now).await;
        }
    }
}

async fn work_loop(
    shared: &Shared,
    host: &Arc<SimHost>,
    actor: usize,
    beating: &AtomicBool,
    rng: &mut StdRng,
) {
    let dead_after = host.dead_after();
    while beating.load(Ordering::SeqCst) {
        let lock_index = rng.gen_range(0..shared.locks);
        let name = format!("lock-{lock_index}");
        let handle = match host
            .acquire(&name, LockMode::Exclusive, dead_after * 2)
            .await
        {
            Ok(Acquire::Granted(handle)) => handle,
            Ok(Acquire::Busy { .. }) => continue,
            Err(_) => return,
        };
        grant(
            shared,
            host,
            actor,
            lock_index,
            handle.token,
            handle.lease_epoch,
        );
        let result = increment(
            shared,
            host,
            actor,
            lock_index,
            handle.token,
            handle.lease_epoch,
        )
        .await;
        let hold = Duration::from_millis(rng.gen_range(0..50));
        host.clock().sleep(hold).await;
        leave(shared, actor, lock_index, handle.token);
        if result.is_err() {
            return;
        }
        match host.release(&handle).await {
            Ok(()) | Err(ClusterError::LockLost { .. }) => {}
            Err(_) => return,
        }
        let rest = Duration::from_millis(rng.gen_range(0..100));
        host.clock().sleep(rest).await;
    }
}

/// The referee's checks at a grant a host may act on (its lease is valid): its token is the highest granted so
/// far, and no other holder of the lock still has a valid lease (two exclusive holders at once). A host can learn
/// of a grant late (its reply was delayed while it was partitioned or paused, and the lock was broken meanwhile);
/// its lease has then expired and it must not act, which `increment` checks.
fn grant(shared: &Shared, host: &SimHost, actor: usize, lock_index: u32, token: u64, epoch: u64) {
    let mut referee = lock(&shared.referee);
    referee.grants += 1;
    if referee.quiet {
        *referee.quiet_grants.entry(actor).or_default() += 1;
    }
    let last = referee.last_token.get(&lock_index).copied().unwrap_or(0);
    referee.last_token.insert(lock_index, token.max(last));
    let valid = host.lease_valid_in(epoch);
    {
        let mut w = lock(&shared.world);
        let now = w.now;
        w.trace.record(
            now,
            format_args!("a{actor} granted lock-{lock_index} token {token} (lease valid: {valid})"),
        );
    }
    if !valid {
        return;
    }
    let mut found = Vec::new();
    if token <= last {
        found.push(format!(
            "mutual exclusion: lock-{lock_index} granted to a{actor} with token {token} after token {last}"
        ));
    }
    let inside = referee.inside.get(&lock_index).cloned().unwrap_or_default();
    for (other, other_token, other_epoch) in inside {
        let valid = other != actor
            && referee
                .hosts
                .get(&other)
                .is_some_and(|h| h.lease_valid_in(other_epoch));
        if valid {
            found.push(format!(
                "mutual exclusion: lock-{lock_index} granted to a{actor} (token {token}) while a{other} (token {other_token}) holds it with a valid lease"
            ));
        }
    }
    referee
        .inside
        .entry(lock_index)
        .or_default()
        .push((actor, token, epoch));
    if !found.is_empty() {
        let mut w = lock(&shared.world);
        let now = w.now;
        for message in found {
            w.checks.violation(now, message);
        }
    }
}

fn leave(shared: &Shared, actor: usize, lock_index: u32, token: u64) {
    let mut referee = lock(&shared.referee);
    if let Some(inside) = referee.inside.get_mut(&lock_index) {
        inside.retain(|&(a, t, _)| (a, t) != (actor, token));
    }
}

/// The work under a lock: bump the lock's counter block with a resolved ATS, after checking the lease and that the
/// block does not carry a newer token (the resource's own fencing check).
async fn increment(
    shared: &Shared,
    host: &SimHost,
    actor: usize,
    lock_index: u32,
    token: u64,
    epoch: u64,
) -> Result<(), ClusterError> {
    let lba = shared.counter_lba + u64::from(lock_index);
    let current = host.read_retrying(lba, 1).await?;
    let Some(found) = CounterImage::decode(&current) else {
        return Ok(());
    };
    if found.token > token || !host.lease_valid_in(epoch) {
        return Ok(());
    }
    let next = CounterImage {
        token,
        count: found.count + 1,
        writer: actor as u64,
    };
    let new = next.encode(host.nonce(), BLOCK);
    let request = AtsRequest {
        op: "counter",
        target: format!("counter lock-{lock_index}"),
        lba,
        expected: &current,
        new: &new,
        policy: host.config().io_policy,
    };
    match host.resolved_ats(request).await? {
        AtsResult::Landed { .. } | AtsResult::Conflict { .. } => Ok(()),
    }
}

/// A plain client incrementing a counter block with read + COMPARE AND WRITE, FUA or not: no resolver, it just
/// re-reads after anything but GOOD. The CAW checker judges every command it sends.
pub async fn caw_client(shared: Arc<Shared>, actor: usize, incarnation: u64, seed: u64) {
    let (disk, clock) = connect(&shared, actor, incarnation, 0, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let timeout = Duration::from_millis(300);
    if shared.pr_fencing {
        join_fencing(&disk, actor).await;
    }
    loop {
        let Ok(current) = disk.read(shared.caw_client_lba, 1, timeout).await else {
            clock.sleep(Duration::from_millis(10)).await;
            continue;
        };
        let count = CounterImage::decode(&current).map_or(0, |c| c.count);
        let next = CounterImage {
            token: 0,
            count: count + 1,
            writer: actor as u64,
        };
        let new = next.encode(rng.gen(), BLOCK);
        let fua = !rng.gen_bool(0.5);
        let cdb =
            lunlock_scsi::cdb::Command::compare_and_write(shared.caw_client_lba, 1, fua).encode();
        let mut data = current;
        data.extend_from_slice(&new);
        let _ = disk.command(cdb, data, 2 * BLOCK, timeout).await;
        clock
            .sleep(Duration::from_millis(rng.gen_range(1..30)))
            .await;
    }
}

/// MAXIMUM ATOMIC TRANSFER LENGTH as the target reports it (Block Limits VPD page bytes 44..48, SBC-4 6.6.4),
/// asked until answered.
async fn max_atomic_blocks(disk: &SimDisk, clock: &SimClock, timeout: Duration) -> u64 {
    let inquiry = lunlock_scsi::cdb::Command::Inquiry {
        evpd: true,
        page_code: 0xB0,
        allocation_length: 64,
    };
    loop {
        if let Some(reply) = disk
            .command(inquiry.encode(), Vec::new(), 64, timeout)
            .await
        {
            if let Some(field) = reply.data_in.get(44..48).filter(|_| reply.status == 0) {
                return u32::from_be_bytes(field.try_into().expect("4 bytes")) as u64;
            }
        }
        clock.sleep(Duration::from_millis(10)).await;
    }
}

/// A client overwriting its own range with WRITE ATOMIC of as many blocks as the target says it writes atomically
/// (at most `ATOMIC_RANGE_BLOCKS`), FUA or not, each write a new self-checking image. The atomic checker judges the
/// range after every target power loss: one image whole, never a mix (SBC-4 4.29).
pub async fn atomic_client(shared: Arc<Shared>, actor: usize, incarnation: u64, seed: u64) {
    let (disk, clock) = connect(&shared, actor, incarnation, 0, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let timeout = Duration::from_millis(300);
    if shared.pr_fencing {
        join_fencing(&disk, actor).await;
    }
    let blocks = max_atomic_blocks(&disk, &clock, timeout)
        .await
        .clamp(1, crate::checks::ATOMIC_RANGE_BLOCKS);
    loop {
        let image = crate::checks::atomic_image(rng.gen(), blocks);
        let fua = rng.gen_bool(0.3);
        let cdb =
            lunlock_scsi::cdb::Command::write_atomic_16(shared.atomic_lba, blocks as u16, fua)
                .encode();
        let length = image.len() as u32;
        let _ = disk.command(cdb, image, length, timeout).await;
        clock
            .sleep(Duration::from_millis(rng.gen_range(1..30)))
            .await;
    }
}

/// The other of the two PR clients (actors `hosts + 1` and `hosts + 2`).
fn other_pr_client(shared: &Shared, actor: usize) -> usize {
    let first = shared.host_ids.len() + 1;
    if actor == first {
        first + 1
    } else {
        first
    }
}

/// A plain PR client on LUN 1: random PERSISTENT RESERVE OUT service actions, types, keys and APTPL, and
/// REGISTER AND MOVE to the other PR client named without ISID (a format 00b TransportID, which the target
/// resolves through the nexuses logged in). The PR checkers judge the state after each.
pub async fn pr_client(shared: Arc<Shared>, actor: usize, incarnation: u64, seed: u64) {
    let (disk, clock) = connect(&shared, actor, incarnation, 1, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let timeout = Duration::from_millis(300);
    let keys = [0xA1u64, 0xA2, 0xB1, 0xB2];
    const TYPES: [u8; 6] = [1, 3, 5, 6, 7, 8];
    let destination = TransportId::iscsi(&initiator_name(other_pr_client(&shared, actor)), None)
        .expect("a simulated initiator name is a valid iSCSI name");
    loop {
        let own = keys[rng.gen_range(0..keys.len())];
        let other = keys[rng.gen_range(0..keys.len())];
        let pr_type = PrType(TYPES[rng.gen_range(0..TYPES.len())]);
        let aptpl = rng.gen_bool(0.5);
        match rng.gen_range(0..9) {
            8 => {
                let to = MoveTo {
                    destination: destination.clone(),
                    unregister: rng.gen_bool(0.5),
                    aptpl,
                };
                let _ = disk
                    .register_and_move(pr_type, own, other, to, timeout)
                    .await;
            }
            roll => {
                let (action, key, sark) = match roll {
                    0 => (PrOutAction::Register, 0, own),
                    1 => (PrOutAction::RegisterAndIgnoreExistingKey, 0, own),
                    2 => (PrOutAction::Register, own, 0),
                    3 => (PrOutAction::Reserve, own, 0),
                    4 => (PrOutAction::Release, own, 0),
                    5 => (PrOutAction::Preempt, own, other),
                    6 => (PrOutAction::PreemptAndAbort, own, other),
                    _ => (PrOutAction::Clear, own, 0),
                };
                let _ = disk.prout(action, pr_type, key, sark, aptpl, timeout).await;
            }
        }
        clock
            .sleep(Duration::from_millis(rng.gen_range(2..60)))
            .await;
    }
}
