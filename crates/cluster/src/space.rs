//! Creating a lockspace and reporting on one.

use crate::disk::{Clock, Disk};
use crate::format::{
    looks_like_lockspace, to_block, LockMode, LockRecord, Slot, SlotState, Superblock, Uuid,
    MAX_LOCKS, MAX_SLOTS,
};
use crate::host::{Host, Liveness};
use crate::ClusterError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::time::Duration;

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
    }
    disk.write(
        options.lockspace_lba,
        to_block(superblock.encode(), block_size),
        timeout,
    )
    .await?;
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

/// What `lunlock lock status` prints: slots with liveness as this observer judged it, and lock records.
pub async fn status_report<D: Disk, C: Clock>(
    observer: &Host<D, C>,
    watch: Duration,
) -> Result<String, ClusterError> {
    observer.observe_slots().await?;
    let samples = 4u32;
    for _ in 0..samples {
        observer.clock().sleep(watch / samples).await;
        observer.observe_slots().await?;
    }
    let locks = observer.read_locks().await?;
    let sb = observer.superblock();
    let now = observer.clock().now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lockspace {}: {} slots, {} locks, heartbeat {} ms, dead after {} ms, block size {}",
        sb.lockspace_id,
        sb.slot_count,
        sb.lock_count,
        sb.heartbeat_interval_ms,
        sb.dead_after_ms,
        sb.block_size
    );
    let _ = writeln!(out, "watched for {} ms", watch.as_millis());
    let _ = writeln!(
        out,
        "{:<5} {:<20} {:<8} {:>10} {:>12} {:>14}  host id",
        "slot", "host", "state", "generation", "sequence", "last advance"
    );
    let mut live_hosts = 0;
    for seen in observer.observations() {
        let slot = &seen.slot;
        if slot.state == SlotState::Free && slot.generation == 0 {
            continue;
        }
        let state = match observer.liveness(slot.index) {
            Liveness::Free => "free",
            Liveness::Dead => "dead",
            // Alive means only "not yet dead": a slot that did not advance while watched is reported as stale.
            Liveness::Alive if seen.changed_at > seen.first_seen => {
                live_hosts += 1;
                "alive"
            }
            Liveness::Alive => "stale",
        };
        let advance = if seen.changed_at > seen.first_seen {
            format!("{} ms ago", now.saturating_sub(seen.changed_at).as_millis())
        } else {
            format!(
                ">{} ms ago",
                now.saturating_sub(seen.first_seen).as_millis()
            )
        };
        let _ = writeln!(
            out,
            "{:<5} {:<20} {:<8} {:>10} {:>12} {:>14}  {}",
            slot.index,
            slot.host_name,
            state,
            slot.generation,
            slot.sequence,
            advance,
            slot.host_id
        );
    }
    let _ = writeln!(
        out,
        "{:<5} {:<24} {:<10} {:>10}  holders",
        "lock", "name", "mode", "generation"
    );
    let mut held = 0;
    for (record, _) in &locks {
        if record.name.is_empty() {
            continue;
        }
        let holders = match record.mode {
            LockMode::Free => String::from("-"),
            LockMode::Exclusive => {
                holder_text(observer, record.owner.slot, record.owner.slot_generation)
            }
            LockMode::Shared => record
                .shared
                .iter()
                .map(|h| holder_text(observer, h.slot, h.slot_generation))
                .collect::<Vec<_>>()
                .join(", "),
        };
        if record.mode != LockMode::Free {
            held += 1;
        }
        let _ = writeln!(
            out,
            "{:<5} {:<24} {:<10} {:>10}  {}",
            record.index, record.name, record.mode, record.lock_generation, holders
        );
    }
    let bound = locks.iter().filter(|(r, _)| !r.name.is_empty()).count();
    let _ = writeln!(
        out,
        "counters: live_hosts={live_hosts} bound_locks={bound} held_locks={held} free_lock_records={}",
        locks.len() - bound
    );
    Ok(out)
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
