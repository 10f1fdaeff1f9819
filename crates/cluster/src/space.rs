//! Creating a lockspace and reporting on one.

use crate::disk::{Clock, Disk};
use crate::format::{
    looks_like_lockspace, to_block, LockMode, LockRecord, Slot, SlotState, Superblock, Uuid,
    MAX_LOCKS, MAX_SLOTS,
};
use crate::host::{Host, Liveness};
use crate::ClusterError;
pub use lunlock_lockspace::report::{LockReport, SlotReport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

impl FormatOptions {
    /// Bytes a format writes on a LUN of `block_size`-byte blocks: the superblock, the slots and the lock records.
    pub fn bytes(&self, block_size: u32) -> u64 {
        (1 + u64::from(self.slots) + u64::from(self.locks)) * u64::from(block_size)
    }
}

/// The geometry and timing of a new lockspace.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    pub lockspace_lba: u64,
    pub slots: u32,
    pub locks: u32,
    pub heartbeat_interval_ms: u32,
    pub dead_after_ms: u32,
    /// Overwrite an existing lockspace.
    pub force: bool,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            lockspace_lba: 0,
            slots: 16,
            locks: 64,
            heartbeat_interval_ms: 1000,
            dead_after_ms: 8000,
            force: false,
        }
    }
}

/// Writes a new lockspace: every slot and lock record first, the superblock last, so a crash part-way leaves no
/// superblock and therefore no half-made lockspace that hosts would use.
pub async fn format<D: Disk>(
    disk: &D,
    options: &FormatOptions,
    timeout: Duration,
) -> Result<Superblock, ClusterError> {
    format_seeded(disk, options, timeout, rand::random()).await
}

/// [`format`] with the lockspace UUID and nonces drawn from a seeded generator (the simulator replays it).
pub async fn format_seeded<D: Disk>(
    disk: &D,
    options: &FormatOptions,
    timeout: Duration,
    seed: u64,
) -> Result<Superblock, ClusterError> {
    format_reporting(disk, options, timeout, seed, &mut |_| {}).await
}

/// [`format_seeded`], telling `written` the bytes of each piece once it is on the disk (for a progress bar).
pub async fn format_reporting<D: Disk>(
    disk: &D,
    options: &FormatOptions,
    timeout: Duration,
    seed: u64,
    written: &mut (dyn FnMut(u64) + Send),
) -> Result<Superblock, ClusterError> {
    let (superblock, records) = lockspace_images(options, disk.block_size(), seed)?;
    let block_size = disk.block_size();
    let first = disk.read(options.lockspace_lba, 1, timeout).await?;
    if looks_like_lockspace(&first) && !options.force {
        return Err(ClusterError::AlreadyFormatted {
            lba: options.lockspace_lba,
        });
    }
    // Large lockspaces go in pieces of at most 1 MiB per command.
    let blocks_per_write = ((1 << 20) / block_size as usize).max(1);
    for (i, piece) in records
        .chunks(blocks_per_write * block_size as usize)
        .enumerate()
    {
        let lba = options.lockspace_lba + 1 + (i * blocks_per_write) as u64;
        disk.write(lba, piece.to_vec(), timeout).await?;
        written(piece.len() as u64);
    }
    disk.write(
        options.lockspace_lba,
        to_block(superblock.encode(), block_size),
        timeout,
    )
    .await?;
    written(u64::from(block_size));
    Ok(superblock)
}

/// The superblock and the slot and lock record blocks of a new lockspace.
fn lockspace_images(
    options: &FormatOptions,
    block_size: u32,
    seed: u64,
) -> Result<(Superblock, Vec<u8>), ClusterError> {
    if options.slots == 0 || options.slots > MAX_SLOTS {
        return Err(ClusterError::Usage(format!(
            "a lockspace has 1 to {MAX_SLOTS} slots"
        )));
    }
    if options.locks > MAX_LOCKS {
        return Err(ClusterError::Usage(format!(
            "a lockspace has at most {MAX_LOCKS} locks"
        )));
    }
    if options.heartbeat_interval_ms == 0 || options.dead_after_ms <= options.heartbeat_interval_ms
    {
        return Err(ClusterError::Usage(
            "dead-after must be longer than the heartbeat interval".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let superblock = Superblock {
        block_size,
        slot_count: options.slots,
        lock_count: options.locks,
        heartbeat_interval_ms: options.heartbeat_interval_ms,
        dead_after_ms: options.dead_after_ms,
        lockspace_id: Uuid::from_rng(&mut rng),
        nonce: rng.gen(),
    };
    let mut records =
        Vec::with_capacity((options.slots + options.locks) as usize * block_size as usize);
    for index in 0..options.slots {
        records.extend(to_block(Slot::free(index, rng.gen()).encode(), block_size));
    }
    for index in 0..options.locks {
        records.extend(to_block(
            LockRecord::unbound(index, rng.gen()).encode(),
            block_size,
        ));
    }
    Ok((superblock, records))
}

/// What `lunlock lock status` reports: slots with liveness as this observer judged it, and lock records. The CLI
/// prints it as tables, or as JSON (`--json`) with these field names.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusReport {
    pub lockspace_id: String,
    pub slot_count: u32,
    pub lock_count: u32,
    pub heartbeat_interval_ms: u32,
    pub dead_after_ms: u32,
    pub block_size: u32,
    pub watched_ms: u64,
    /// Claimed slots, and freed ones that were claimed once.
    pub slots: Vec<SlotReport>,
    /// Bound lock records.
    pub locks: Vec<LockReport>,
    pub live_hosts: usize,
    pub bound_locks: usize,
    pub held_locks: usize,
    pub free_lock_records: usize,
}

/// Watches the slots for `watch` (four samples), reads the locks, and reports.
pub async fn status<D: Disk, C: Clock>(
    observer: &Host<D, C>,
    watch: Duration,
) -> Result<StatusReport, ClusterError> {
    observer.observe_slots().await?;
    let samples = 4u32;
    for _ in 0..samples {
        observer.clock().sleep(watch / samples).await;
        observer.observe_slots().await?;
    }
    let locks = observer.read_locks().await?;
    let sb = observer.superblock();
    let now = observer.clock().now();
    let mut slots = Vec::new();
    for seen in observer.observations() {
        let slot = &seen.slot;
        if slot.state == SlotState::Free && slot.generation == 0 {
            continue;
        }
        let advanced = seen.changed_at > seen.first_seen;
        let state = match observer.liveness(slot.index) {
            Liveness::Free => "free",
            Liveness::Dead => "dead",
            // Alive means only "not yet dead": a slot that did not advance while watched is reported as stale.
            Liveness::Alive if advanced => "alive",
            Liveness::Alive => "stale",
        };
        slots.push(SlotReport {
            slot: slot.index,
            host: slot.host_name.clone(),
            host_id: slot.host_id.to_string(),
            state,
            generation: slot.generation,
            sequence: slot.sequence,
            last_advance_ms: advanced
                .then(|| now.saturating_sub(seen.changed_at).as_millis() as u64),
            watched_ms: now.saturating_sub(seen.first_seen).as_millis() as u64,
        });
    }
    let bound: Vec<LockReport> = locks
        .iter()
        .filter(|(record, _)| !record.name.is_empty())
        .map(|(record, _)| LockReport {
            index: record.index,
            name: record.name.clone(),
            mode: record.mode.to_string(),
            generation: record.lock_generation,
            holders: match record.mode {
                LockMode::Free => Vec::new(),
                LockMode::Exclusive => vec![holder_text(
                    observer,
                    record.owner.slot,
                    record.owner.slot_generation,
                )],
                LockMode::Shared => record
                    .shared
                    .iter()
                    .map(|h| holder_text(observer, h.slot, h.slot_generation))
                    .collect(),
            },
        })
        .collect();
    Ok(StatusReport {
        lockspace_id: sb.lockspace_id.to_string(),
        slot_count: sb.slot_count,
        lock_count: sb.lock_count,
        heartbeat_interval_ms: sb.heartbeat_interval_ms,
        dead_after_ms: sb.dead_after_ms,
        block_size: sb.block_size,
        watched_ms: watch.as_millis() as u64,
        live_hosts: slots.iter().filter(|s| s.state == "alive").count(),
        held_locks: bound
            .iter()
            .filter(|l| l.mode != LockMode::Free.to_string())
            .count(),
        free_lock_records: locks.len() - bound.len(),
        bound_locks: bound.len(),
        slots,
        locks: bound,
    })
}

fn holder_text<D: Disk, C: Clock>(observer: &Host<D, C>, slot: u32, generation: u64) -> String {
    match observer.observed_slot(slot) {
        Some(s) if s.generation == generation => format!("{} (slot {slot})", s.host_name),
        Some(s) => format!(
            "slot {slot} generation {generation} (stale: slot now generation {} of {})",
            s.generation, s.host_name
        ),
        None => format!("slot {slot}"),
    }
}
