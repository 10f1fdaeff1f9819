//! The status page's view of the lunlock lockspaces on the target's LUNs (docs/lockspace-format.md): the target
//! reads the blocks itself, from the store, and judges each host's heartbeat on its own clock.
//!
//! Every [`SAMPLE_INTERVAL`] a background task reads each LUN's block at its `lockspace_lba` (LBA 0 unless
//! configured). Where a superblock decodes, it reads the heartbeat slots and the first [`MAX_LOCKS_SHOWN`] lock
//! records. The reads run on blocking threads (a read may wait for the disk) and take no range lock: a block read
//! while an initiator rewrites it may be torn, and its checksum then fails; that slot keeps its last good image
//! until the next sample. A host is:
//! - alive: its slot advanced within the last two heartbeat intervals (plus a sample), as seen here;
//! - stale: it has not advanced for longer than that, or not since the target started watching;
//! - dead: it has not advanced for dead_after or more, on the target's clock since it was first watched;
//! - free: the slot is not claimed.
//!
//! Host and lock names come from the disk, written by initiators: the page inserts them as text, never as markup.

use crate::server::{lock, Shared};
use lunlock_lockspace::report::{LockReport, SlotReport};
use lunlock_lockspace::{LockMode, LockRecord, Slot, SlotState, Superblock};
use lunlock_store::BlockStore;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the target reads each LUN's lockspace.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// Lock records read per sample: a lockspace has up to 65,536, and the page lists the bound ones among these.
pub const MAX_LOCKS_SHOWN: u32 = 1024;

#[derive(Clone, Debug, Serialize)]
pub struct LockspaceView {
    pub lba: u64,
    pub lockspace_id: String,
    pub slot_count: u32,
    pub lock_count: u32,
    pub heartbeat_interval_ms: u32,
    pub dead_after_ms: u32,
    /// Claimed slots (and freed ones that were claimed once).
    pub hosts: Vec<SlotReport>,
    /// Bound lock records among the first [`MAX_LOCKS_SHOWN`].
    pub locks: Vec<LockReport>,
    pub locks_read: u32,
    /// When this was read, in milliseconds since the Unix epoch.
    pub sampled_ms: u64,
    /// Why the last sample failed, if it did (the view is then the one before).
    pub error: Option<String>,
}

/// What the target last saw of one slot.
struct Watched {
    slot: Slot,
    first_seen: Instant,
    /// When (generation, sequence) last changed; None until it has, since first_seen.
    changed_at: Option<Instant>,
}

#[derive(Default)]
struct LunWatch {
    slots: HashMap<u32, Watched>,
    view: Option<LockspaceView>,
}

/// The lockspaces of every LUN, kept up to date by [`Watcher::run`].
#[derive(Default)]
pub struct Watcher {
    luns: Mutex<HashMap<(String, u64), LunWatch>>,
}

/// What one LUN's sample needs: where to read and with what.
struct Target {
    key: (String, u64),
    store: Arc<dyn BlockStore>,
    block_size: u32,
    lba: u64,
}

impl Watcher {
    /// The lockspace on a LUN as last read, if one was found.
    pub fn view(&self, target: &str, lun: u64) -> Option<LockspaceView> {
        lock(&self.luns)
            .get(&(target.to_string(), lun))
            .and_then(|watch| watch.view.clone())
    }

    /// Samples every LUN until the task is dropped.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let targets = sample_targets(&shared);
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for target in &targets {
                let store = Arc::clone(&target.store);
                let (block_size, lba) = (target.block_size, target.lba);
                let read =
                    tokio::task::spawn_blocking(move || read_lockspace(&*store, block_size, lba))
                        .await;
                let Ok(read) = read else { continue };
                self.update(&target.key, read, Instant::now());
            }
        }
    }

    fn update(&self, key: &(String, u64), read: Result<Option<Read>, String>, now: Instant) {
        let mut luns = lock(&self.luns);
        let watch = luns.entry(key.clone()).or_default();
        match read {
            Ok(None) => *watch = LunWatch::default(),
            Ok(Some(read)) => {
                if watch
                    .view
                    .as_ref()
                    .is_some_and(|v| v.lockspace_id != read.superblock.lockspace_id.to_string())
                {
                    *watch = LunWatch::default(); // re-formatted: forget the old lockspace's hosts
                }
                observe(watch, &read, now);
                watch.view = Some(view_of(watch, &read, now));
            }
            Err(error) => {
                if let Some(view) = &mut watch.view {
                    view.error = Some(error);
                }
            }
        }
    }
}

fn sample_targets(shared: &Shared) -> Vec<Target> {
    let mut targets = Vec::new();
    for served in &shared.targets {
        for (index, config) in served.definition.luns.iter().enumerate() {
            let (Some(runtime), Some(store)) =
                (served.luns.get(&config.id), served.stores.get(index))
            else {
                continue;
            };
            targets.push(Target {
                key: (served.definition.name.clone(), config.id),
                store: Arc::clone(store),
                block_size: runtime.unit.config().block_size,
                lba: config.lockspace_lba,
            });
        }
    }
    targets
}

/// One sample of a lockspace's blocks.
struct Read {
    lba: u64,
    superblock: Superblock,
    /// Slots that decoded (a torn or foreign block is left out).
    slots: Vec<Slot>,
    locks: Vec<LockRecord>,
    locks_read: u32,
}

/// Reads the lockspace at `lba`: None when its superblock is not one (no lockspace there).
fn read_lockspace(
    store: &dyn BlockStore,
    block_size: u32,
    lba: u64,
) -> Result<Option<Read>, String> {
    let block = block_size as u64;
    if (lba + 1) * block > store.capacity_bytes() {
        return Ok(None);
    }
    let mut first = vec![0u8; block_size as usize];
    store
        .read_at(&mut first, lba * block)
        .map_err(|e| format!("reading LBA {lba}: {e}"))?;
    if !lunlock_lockspace::looks_like_lockspace(&first) {
        return Ok(None);
    }
    let superblock =
        Superblock::decode(&first).map_err(|e| format!("superblock at LBA {lba}: {e}"))?;
    if superblock.block_size != block_size {
        return Err(format!(
            "the lockspace was formatted for {}-byte blocks, the LUN has {block_size}",
            superblock.block_size
        ));
    }
    let locks_read = superblock.lock_count.min(MAX_LOCKS_SHOWN);
    let slots = read_records(
        store,
        block_size,
        lba + superblock.slot_block(0),
        superblock.slot_count,
        |b, i| Slot::decode(b, i).ok(),
    )?;
    let locks = read_records(
        store,
        block_size,
        lba + superblock.lock_block(0),
        locks_read,
        |b, i| LockRecord::decode(b, i).ok(),
    )?;
    Ok(Some(Read {
        lba,
        superblock,
        slots,
        locks,
        locks_read,
    }))
}

/// Reads `count` consecutive records in one I/O and decodes those that decode.
fn read_records<T>(
    store: &dyn BlockStore,
    block_size: u32,
    first_lba: u64,
    count: u32,
    decode: impl Fn(&[u8], u32) -> Option<T>,
) -> Result<Vec<T>, String> {
    let block = block_size as usize;
    let mut bytes = vec![0u8; block * count as usize];
    let offset = first_lba * block_size as u64;
    if offset + bytes.len() as u64 > store.capacity_bytes() {
        return Err(format!(
            "the lockspace's records at LBA {first_lba} pass the LUN's end"
        ));
    }
    store
        .read_at(&mut bytes, offset)
        .map_err(|e| format!("reading LBA {first_lba}: {e}"))?;
    Ok(bytes
        .chunks(block)
        .zip(0..)
        .filter_map(|(b, index)| decode(b, index))
        .collect())
}

fn observe(watch: &mut LunWatch, read: &Read, now: Instant) {
    for slot in &read.slots {
        match watch.slots.get_mut(&slot.index) {
            Some(seen) => {
                if (seen.slot.generation, seen.slot.sequence) != (slot.generation, slot.sequence) {
                    seen.changed_at = Some(now);
                }
                seen.slot = slot.clone();
            }
            None => {
                watch.slots.insert(
                    slot.index,
                    Watched {
                        slot: slot.clone(),
                        first_seen: now,
                        changed_at: None,
                    },
                );
            }
        }
    }
}

/// The judgement of one slot (see the module comment).
fn judge(seen: &Watched, superblock: &Superblock, now: Instant) -> &'static str {
    if seen.slot.state == SlotState::Free {
        return "free";
    }
    let quiet = now.duration_since(seen.changed_at.unwrap_or(seen.first_seen));
    let dead_after = Duration::from_millis(u64::from(superblock.dead_after_ms));
    let fresh =
        Duration::from_millis(2 * u64::from(superblock.heartbeat_interval_ms)) + SAMPLE_INTERVAL;
    if quiet >= dead_after {
        "dead"
    } else if seen.changed_at.is_some() && quiet <= fresh {
        "alive"
    } else {
        "stale"
    }
}

fn view_of(watch: &LunWatch, read: &Read, now: Instant) -> LockspaceView {
    let superblock = &read.superblock;
    let mut hosts: Vec<SlotReport> = watch
        .slots
        .values()
        .filter(|seen| seen.slot.state != SlotState::Free || seen.slot.generation > 0)
        .map(|seen| SlotReport {
            slot: seen.slot.index,
            host: seen.slot.host_name.clone(),
            host_id: seen.slot.host_id.to_string(),
            state: judge(seen, superblock, now),
            generation: seen.slot.generation,
            sequence: seen.slot.sequence,
            last_advance_ms: seen
                .changed_at
                .map(|at| now.duration_since(at).as_millis() as u64),
            watched_ms: now.duration_since(seen.first_seen).as_millis() as u64,
        })
        .collect();
    hosts.sort_by_key(|host| host.slot);
    let host_name = |slot: u32| {
        watch
            .slots
            .get(&slot)
            .map(|seen| seen.slot.host_name.clone())
            .unwrap_or_else(|| format!("slot {slot}"))
    };
    let locks = read
        .locks
        .iter()
        .filter(|record| !record.name.is_empty())
        .map(|record| LockReport {
            index: record.index,
            name: record.name.clone(),
            mode: record.mode.to_string(),
            generation: record.lock_generation,
            holders: match record.mode {
                LockMode::Free => Vec::new(),
                LockMode::Exclusive => vec![host_name(record.owner.slot)],
                LockMode::Shared => record.shared.iter().map(|h| host_name(h.slot)).collect(),
            },
        })
        .collect();
    LockspaceView {
        lba: read.lba,
        lockspace_id: superblock.lockspace_id.to_string(),
        slot_count: superblock.slot_count,
        lock_count: superblock.lock_count,
        heartbeat_interval_ms: superblock.heartbeat_interval_ms,
        dead_after_ms: superblock.dead_after_ms,
        hosts,
        locks,
        locks_read: read.locks_read,
        sampled_ms: super::snapshot::millis(SystemTime::now()),
        error: None,
    }
}
