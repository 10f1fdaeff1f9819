//! One host of a lockspace: its heartbeat slot, and what it has observed of the other hosts.
//!
//! Liveness is judged only on the observer's own monotonic clock: a host is dead when its slot's (generation,
//! sequence) has not changed for `dead_after_ms` since this observer last saw it change. Host clocks are never
//! compared, and a slot this observer has not watched for that long is never judged dead.

use crate::disk::{Clock, Disk, DiskError};
use crate::events::{EventLog, NoteEvent};
use crate::format::{
    fit_name, FormatError, LockRecord, Slot, SlotState, Superblock, Uuid, RECORD_BYTES,
};
use crate::resolver::{AtsPolicy, AtsRequest, AtsResult};
use crate::ClusterError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Blocks per READ of slots or lock records: 1 MiB of 512-byte blocks, well under any target's transfer limit.
const BLOCKS_PER_READ: u32 = 2048;

/// Who this host is and how patient it is.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Shown in slots, status and the event log.
    pub name: String,
    /// Identifies the host across restarts: a restarted host reclaims its own slot.
    pub host_id: Uuid,
    /// The host's registered PR key, if it takes part in SCSI-3 PR fencing.
    pub pr_key: Option<u64>,
    /// The LBA at which the lockspace starts.
    pub lockspace_lba: u64,
    /// Seed of the host's jitter and nonces (the simulator replays it).
    pub seed: u64,
    /// Timeout and bound of lock operations.
    pub io_policy: AtsPolicy,
    /// Timeout and bound of heartbeat and lock renewal writes: a long timeout rather than a quick retry, because a
    /// retry races the first attempt.
    pub renew_policy: AtsPolicy,
    /// Deliberate bugs, for the simulator's proof that its checkers catch them. Never set outside tests.
    pub broken: BrokenVariant,
}

/// Deliberately broken behaviours the simulator must catch (issue 5: "proof that the checkers bite").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokenVariant {
    /// No read-back: a MISCOMPARE is taken as "someone else won", an unknown outcome is retried blindly.
    pub naive_resolver: bool,
    /// A holder counts as dead as soon as it is observed, whatever dead_after says.
    pub ignore_dead_after: bool,
    /// A lease renewed after it lapsed revives the holds taken before (the bug the simulator found: no epochs).
    pub revive_lapsed_lease: bool,
}

impl HostConfig {
    /// Defaults scaled to the lockspace's heartbeat timing.
    pub fn new(name: &str, host_id: Uuid, superblock: &Superblock) -> HostConfig {
        let interval = Duration::from_millis(u64::from(superblock.heartbeat_interval_ms));
        let dead_after = Duration::from_millis(u64::from(superblock.dead_after_ms));
        HostConfig {
            name: fit_name(name).to_string(),
            host_id,
            pr_key: None,
            lockspace_lba: 0,
            seed: rand::random(),
            io_policy: AtsPolicy {
                timeout: (interval * 2).max(Duration::from_secs(1)),
                max_attempts: 5,
                backoff: interval / 8,
            },
            // A heartbeat must resolve well within dead_after, or observers declare this host dead while it waits.
            renew_policy: AtsPolicy {
                timeout: (dead_after / 4).max(interval),
                max_attempts: 3,
                backoff: interval / 8,
            },
            broken: BrokenVariant::default(),
        }
    }
}

/// Tries of `leave` against newer images of this host's own slot.
const LEAVE_ATTEMPTS: usize = 4;

/// The slot this host holds.
#[derive(Clone, Debug)]
pub(crate) struct OwnSlot {
    pub slot: Slot,
    pub image: Vec<u8>,
}

/// What an observer knows of one slot.
#[derive(Clone, Debug)]
pub struct SlotObservation {
    pub slot: Slot,
    /// When (on the observer's clock) the answer arrived that first showed the slot's current generation,
    /// sequence and state (or the slot at all): the change landed no later than this.
    pub changed_at: Duration,
    /// When the latest read that still showed that same state was sent: the slot had not changed by then.
    pub confirmed_at: Duration,
    /// When the slot was first observed: a slot is judged dead only after being watched for dead_after.
    pub first_seen: Duration,
}

/// A host's liveness judgement of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Free,
    Alive,
    /// Not advanced for at least dead_after on this observer's clock.
    Dead,
}

/// One host of a lockspace.
pub struct Host<D, C> {
    pub(crate) disk: D,
    pub(crate) clock: C,
    pub(crate) log: Arc<EventLog>,
    pub(crate) config: HostConfig,
    pub(crate) superblock: Superblock,
    rng: Mutex<StdRng>,
    own: Mutex<Option<OwnSlot>>,
    observed: Mutex<HashMap<u32, SlotObservation>>,
    lease: Mutex<Lease>,
}

/// This host's own view of its liveness. A heartbeat sent at `s` lands no earlier than `s`, so no observer can judge
/// the host dead before `s + dead_after`; the lease ends one interval before that. A heartbeat confirmed only after
/// the lease ended starts a new epoch: an observer may have judged the host dead in the gap and broken its locks,
/// so holds taken in an earlier epoch are never valid again.
#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    expiry: Option<Duration>,
    epoch: u64,
}

impl<D: Disk, C: Clock> Host<D, C> {
    /// Reads and checks the superblock at `lockspace_lba`.
    pub async fn read_superblock(
        disk: &D,
        lockspace_lba: u64,
        timeout: Duration,
    ) -> Result<Superblock, ClusterError> {
        let block = disk.read(lockspace_lba, 1, timeout).await?;
        let superblock = Superblock::decode(&block).map_err(|e| ClusterError::Format {
            lba: lockspace_lba,
            error: e,
        })?;
        if superblock.block_size != disk.block_size() {
            return Err(ClusterError::Format {
                lba: lockspace_lba,
                error: FormatError::BadField("block size (differs from the LUN's)"),
            });
        }
        Ok(superblock)
    }

    pub fn new(
        disk: D,
        clock: C,
        log: Arc<EventLog>,
        superblock: Superblock,
        config: HostConfig,
    ) -> Self {
        Host {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            disk,
            clock,
            log,
            config,
            superblock,
            own: Mutex::new(None),
            observed: Mutex::new(HashMap::new()),
            lease: Mutex::new(Lease::default()),
        }
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.superblock.heartbeat_interval_ms))
    }

    pub fn dead_after(&self) -> Duration {
        Duration::from_millis(u64::from(self.superblock.dead_after_ms))
    }

    /// The slot index and generation this host holds, once joined.
    pub fn own_slot(&self) -> Option<(u32, u64)> {
        lock(&self.own)
            .as_ref()
            .map(|o| (o.slot.index, o.slot.generation))
    }

    /// Claims a slot: this host's own (by host UUID) if one is there, else a free one, else one whose host this
    /// observer has watched stay dead for dead_after. Claiming advances the slot's generation, so locks held by a
    /// previous incarnation of this host are recognisably stale. A live slot of this host's is re-claimed only once
    /// it has stood still for dead_after: until then the previous incarnation may still be running (stalled, or with
    /// writes in flight), and other hosts could not fence it, since it has this host's PR key.
    pub async fn join(&self) -> Result<u32, ClusterError> {
        let deadline = self.clock.now() + self.dead_after() * 3;
        loop {
            let slots = self.observe_slots().await?;
            let own = slots.iter().find(|s| s.host_id == self.config.host_id);
            let choice = match own {
                Some(slot)
                    if slot.state == SlotState::Live
                        && self.liveness(slot.index) != Liveness::Dead =>
                {
                    None
                }
                Some(slot) => Some(slot),
                None => slots
                    .iter()
                    .find(|s| s.state == SlotState::Free)
                    .or_else(|| {
                        slots
                            .iter()
                            .find(|s| self.liveness(s.index) == Liveness::Dead)
                    }),
            }
            .cloned();
            if let Some(current) = choice {
                if self.claim(current).await? {
                    return Ok(self.own_slot().expect("claimed").0);
                }
                continue;
            }
            if self.clock.now() >= deadline {
                return Err(match own {
                    Some(slot) => ClusterError::Usage(format!(
                        "slot {} of this host is still advancing: another process of this host is heartbeating",
                        slot.index
                    )),
                    None => ClusterError::NoFreeSlot {
                        slots: self.superblock.slot_count,
                    },
                });
            }
            self.clock.sleep(self.heartbeat_interval()).await;
        }
    }

    /// Uses this host's live slot without writing it (another process of the same host is heartbeating in it), or
    /// claims one when there is none.
    pub async fn attach(&self) -> Result<u32, ClusterError> {
        let slots = self.observe_slots().await?;
        if let Some(slot) = slots
            .into_iter()
            .find(|s| s.state == SlotState::Live && s.host_id == self.config.host_id)
        {
            let index = slot.index;
            let image = crate::format::to_block(slot.encode(), self.superblock.block_size);
            *lock(&self.own) = Some(OwnSlot { slot, image });
            return Ok(index);
        }
        self.join().await
    }

    async fn claim(&self, current: Slot) -> Result<bool, ClusterError> {
        let mut next = current.clone();
        next.state = SlotState::Live;
        next.host_id = self.config.host_id;
        next.host_name = self.config.name.clone();
        next.generation = current.generation + 1;
        next.sequence = current.sequence + 1;
        next.pr_key = self.config.pr_key.unwrap_or(0);
        next.nonce = self.nonce();
        let expected = self.block_of(current.encode());
        let new = self.block_of(next.encode());
        let sent = self.clock.now();
        let request = AtsRequest {
            op: "claim_slot",
            target: format!("slot {}", current.index),
            lba: self.superblock.slot_block(current.index),
            expected: &expected,
            new: &new,
            policy: self.config.renew_policy,
        };
        match self.resolved_ats(request).await? {
            AtsResult::Landed { .. } => {
                self.note(
                    "slot_claimed",
                    format!("slot {} generation {}", next.index, next.generation),
                );
                *lock(&self.own) = Some(OwnSlot {
                    slot: next,
                    image: new,
                });
                self.extend_lease(sent);
                Ok(true)
            }
            AtsResult::Conflict { .. } => Ok(false),
        }
    }

    /// Advances this host's heartbeat once. A real conflict means another host took the slot (it judged this one
    /// dead): this host has lost everything it held.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let own = lock(&self.own).clone().ok_or(ClusterError::NotJoined)?;
        let mut next = own.slot.clone();
        next.sequence += 1;
        next.nonce = self.nonce();
        let new = self.block_of(next.encode());
        let sent = self.clock.now();
        let request = AtsRequest {
            op: "heartbeat",
            target: format!("slot {}", own.slot.index),
            lba: self.superblock.slot_block(own.slot.index),
            expected: &own.image,
            new: &new,
            policy: self.config.renew_policy,
        };
        match self.resolved_ats(request).await? {
            AtsResult::Landed { .. } => {
                crate::events::Counters::bump(&self.log.counters.heartbeats);
                *lock(&self.own) = Some(OwnSlot {
                    slot: next,
                    image: new,
                });
                self.extend_lease(sent);
                Ok(())
            }
            AtsResult::Conflict { found } => {
                *lock(&self.own) = None;
                let now = Slot::decode(&found, own.slot.index)
                    .map(|s| format!("{} ({})", s.host_name, s.host_id))
                    .unwrap_or_else(|e| format!("an unreadable record: {e}"));
                self.note(
                    "slot_lost",
                    format!("slot {} now held by {now}", own.slot.index),
                );
                Err(ClusterError::SlotLost {
                    slot: own.slot.index,
                    now,
                })
            }
        }
    }

    /// A heartbeat sent at `sent` has landed and this host has just learned it.
    fn extend_lease(&self, sent: Duration) {
        let now = self.clock.now();
        let margin = self.dead_after().saturating_sub(self.heartbeat_interval());
        let mut lease = lock(&self.lease);
        let lapsed = lease.expiry.is_none_or(|end| now >= end);
        if lapsed && (lease.epoch == 0 || !self.config.broken.revive_lapsed_lease) {
            lease.epoch += 1;
        }
        lease.expiry = Some(sent + margin);
    }

    /// Whether this host's lease is valid now: no observer can have judged it dead.
    pub fn lease_valid(&self) -> bool {
        let expiry = lock(&self.lease).expiry;
        self.own_slot().is_some() && expiry.is_some_and(|end| self.clock.now() < end)
    }

    /// The current lease epoch; a lock handle records the epoch it was acquired in.
    pub fn lease_epoch(&self) -> u64 {
        lock(&self.lease).epoch
    }

    /// Whether this host may act on a hold taken in `epoch`: its lease is valid and has been without a gap since.
    /// A holder that finds it false must stop using the lock: it may have been broken.
    pub fn lease_valid_in(&self, epoch: u64) -> bool {
        self.lease_valid() && self.lease_epoch() == epoch
    }

    /// Gives the slot up (clean shutdown): observers then see it free at once instead of waiting for dead_after.
    ///
    /// A heartbeat of ours whose answer was never awaited (its future was dropped, say by an interrupt) may land
    /// after the image we compare against was taken: the slot then holds a newer image of this very host, and the
    /// leave is retried against it. An image of another host means the slot is no longer ours: nothing to give up.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let Some(mut own) = lock(&self.own).clone() else {
            return Ok(());
        };
        for _ in 0..LEAVE_ATTEMPTS {
            let mut next = own.slot.clone();
            next.state = SlotState::Free;
            next.sequence = own.slot.sequence + 1;
            next.nonce = self.nonce();
            let new = self.block_of(next.encode());
            let request = AtsRequest {
                op: "leave",
                target: format!("slot {}", own.slot.index),
                lba: self.superblock.slot_block(own.slot.index),
                expected: &own.image,
                new: &new,
                policy: self.config.io_policy,
            };
            let found = match self.resolved_ats(request).await? {
                AtsResult::Landed { .. } => break,
                AtsResult::Conflict { found } => found,
            };
            let slot =
                Slot::decode(&found, own.slot.index).map_err(|error| ClusterError::Format {
                    lba: self.absolute_lba(self.superblock.slot_block(own.slot.index)),
                    error,
                })?;
            if slot.host_id != own.slot.host_id || slot.state == SlotState::Free {
                break;
            }
            own = OwnSlot { slot, image: found };
        }
        *lock(&self.own) = None;
        Ok(())
    }

    /// Reads every slot in one command and updates this host's observations.
    pub async fn observe_slots(&self) -> Result<Vec<Slot>, ClusterError> {
        let count = self.superblock.slot_count;
        let sent = self.clock.now();
        let data = self
            .read_retrying(self.superblock.slot_block(0), count)
            .await?;
        let block_size = self.superblock.block_size as usize;
        let now = self.clock.now();
        let mut slots = Vec::with_capacity(count as usize);
        let mut observed = lock(&self.observed);
        for index in 0..count {
            let block = &data[index as usize * block_size..][..block_size];
            let slot = Slot::decode(block, index).map_err(|error| ClusterError::Format {
                lba: self.absolute_lba(self.superblock.slot_block(index)),
                error,
            })?;
            match observed.get_mut(&index) {
                Some(seen) => {
                    if (seen.slot.generation, seen.slot.sequence, seen.slot.state)
                        != (slot.generation, slot.sequence, slot.state)
                    {
                        seen.changed_at = now;
                        seen.confirmed_at = now;
                    } else {
                        seen.confirmed_at = seen.confirmed_at.max(sent);
                    }
                    seen.slot = slot.clone();
                }
                None => {
                    observed.insert(
                        index,
                        SlotObservation {
                            slot: slot.clone(),
                            changed_at: now,
                            confirmed_at: now,
                            first_seen: now,
                        },
                    );
                }
            }
            slots.push(slot);
        }
        Ok(slots)
    }

    /// This host's judgement of a slot, from its last observation.
    pub fn liveness(&self, slot: u32) -> Liveness {
        let observed = lock(&self.observed);
        let Some(seen) = observed.get(&slot) else {
            return Liveness::Alive;
        };
        if seen.slot.state == SlotState::Free {
            return Liveness::Free;
        }
        // Dead only when a read sent dead_after or more after the last change was seen still shows no change: a
        // judgement never rests on an answer older than the staleness it claims.
        if self.config.broken.ignore_dead_after
            || seen.confirmed_at.saturating_sub(seen.changed_at) >= self.dead_after()
        {
            Liveness::Dead
        } else {
            Liveness::Alive
        }
    }

    /// The last observation of every slot.
    pub fn observations(&self) -> Vec<SlotObservation> {
        let mut all: Vec<_> = lock(&self.observed).values().cloned().collect();
        all.sort_by_key(|o| o.slot.index);
        all
    }

    /// The observed slot record, if any.
    pub fn observed_slot(&self, slot: u32) -> Option<Slot> {
        lock(&self.observed).get(&slot).map(|o| o.slot.clone())
    }

    /// Reads blocks (relative to the lockspace start), retrying timeouts and other transient failures within
    /// the I/O policy: a slow fsync on the target must not end a host.
    pub async fn read_retrying(&self, lba: u64, count: u32) -> Result<Vec<u8>, ClusterError> {
        let mut data = Vec::with_capacity(count as usize * self.superblock.block_size as usize);
        let mut done = 0;
        while done < count {
            let piece = (count - done).min(BLOCKS_PER_READ);
            data.extend(self.read_piece(lba + u64::from(done), piece).await?);
            done += piece;
        }
        Ok(data)
    }

    async fn read_piece(&self, lba: u64, count: u32) -> Result<Vec<u8>, ClusterError> {
        let policy = self.config.io_policy;
        let mut last = None;
        for _ in 0..policy.max_attempts.max(1) {
            match self.read_blocks(lba, count, policy.timeout).await {
                Ok(data) => return Ok(data),
                Err(transient @ DiskError::Transient { .. }) => last = Some(transient),
                Err(other) => return Err(other.into()),
            }
            self.clock.sleep(self.jitter(policy.backoff)).await;
        }
        Err(ClusterError::ReadsFailed {
            lba: self.absolute_lba(lba),
            count,
            attempts: policy.max_attempts.max(1),
            last: last.expect("at least one attempt failed"),
        })
    }

    pub(crate) async fn read_blocks(
        &self,
        lba: u64,
        count: u32,
        timeout: Duration,
    ) -> Result<Vec<u8>, DiskError> {
        let data = self
            .disk
            .read(self.absolute_lba(lba), count, timeout)
            .await?;
        let expected = count as usize * self.superblock.block_size as usize;
        if data.len() != expected {
            return Err(DiskError::Failed {
                command: "READ(16)",
                cause: crate::disk::Cause::BadAnswer {
                    what: "data",
                    reason: format!("{count} blocks asked for, {} bytes returned", data.len()),
                },
            });
        }
        Ok(data)
    }

    pub(crate) fn absolute_lba(&self, relative: u64) -> u64 {
        self.config.lockspace_lba + relative
    }

    pub(crate) fn block_of(&self, record: Vec<u8>) -> Vec<u8> {
        crate::format::to_block(record, self.superblock.block_size)
    }

    pub fn nonce(&self) -> u64 {
        self.with_rng(|rng| rng.gen())
    }

    pub(crate) fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    pub(crate) fn note(&self, event: &'static str, detail: String) {
        self.log.note(&NoteEvent {
            host: self.config.name.clone(),
            lockspace: self.superblock.lockspace_id.to_string(),
            event,
            detail,
        });
    }

    /// Who owns a lockspace block, for the log: a slot's host, or a lock's owner, and the generation.
    pub(crate) fn describe_image(
        &self,
        relative_lba: u64,
        image: &[u8],
    ) -> (Option<String>, Option<u64>) {
        let sb = &self.superblock;
        if relative_lba >= 1 && relative_lba < sb.lock_block(0) {
            let index = (relative_lba - 1) as u32;
            return match Slot::decode(image, index) {
                Ok(slot) => (
                    Some(format!("{} ({})", slot.host_name, slot.host_id)),
                    Some(slot.generation),
                ),
                Err(e) => (Some(format!("unreadable: {e}")), None),
            };
        }
        if relative_lba >= sb.lock_block(0) && relative_lba < sb.total_blocks() {
            let index = (relative_lba - sb.lock_block(0)) as u32;
            return match LockRecord::decode(image, index) {
                Ok(record) => (
                    Some(format!(
                        "{} {} by slot {} ({})",
                        record.name, record.mode, record.owner.slot, record.owner_id
                    )),
                    Some(record.lock_generation),
                ),
                Err(e) => (Some(format!("unreadable: {e}")), None),
            };
        }
        (None, None)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

const _: () = assert!(RECORD_BYTES == 512);
