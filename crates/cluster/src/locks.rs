//! Locks, exclusive and shared, each one block of the lockspace, changed only by resolved ATS.
//!
//! The lock generation is the fencing token: every acquisition and every break increments it and it is never
//! reused, so a resource that remembers the highest token it has seen can refuse a holder that lost its lock while
//! paused. A holder is stale when its slot was re-claimed (another generation), freed, or has not advanced for
//! dead_after on this host's clock; only then may its hold be broken, and when both hosts have PR keys the breaker
//! first fences the stale host with PREEMPT AND ABORT so that its writes in flight cannot land afterwards.

use crate::disk::{Clock, Disk, DiskError};
use crate::events::Counters;
use crate::format::{fit_name, Holder, LockMode, LockRecord, SlotState, MAX_SHARED_HOLDERS};
use crate::host::{Host, Liveness};
use crate::resolver::{AtsRequest, AtsResult};
use crate::ClusterError;
use std::time::Duration;

/// A lock this host holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHandle {
    pub name: String,
    pub index: u32,
    pub mode: LockMode,
    /// The fencing token: the lock generation written when this host acquired the lock.
    pub token: u64,
    /// Slots whose stale holds this acquisition broke.
    pub broken: Vec<u32>,
    /// The host's lease epoch when it acquired the lock: act on the lock only while `Host::lease_valid_in` it.
    pub lease_epoch: u64,
    image: Vec<u8>,
}

/// The answer to one acquisition attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    Granted(LockHandle),
    /// Held by live hosts in a conflicting mode; `holders` describes them.
    Busy {
        holders: String,
    },
}

/// The lease epoch of a hold attempted without a valid lease: never valid (epochs start at 1).
const NO_EPOCH: u64 = 0;

/// How many times one acquire/release re-reads and retries after losing a race to another host.
const RACE_RETRIES: u32 = 32;

impl<D: Disk, C: Clock> Host<D, C> {
    /// Reads every lock record in one command.
    pub async fn read_locks(&self) -> Result<Vec<(LockRecord, Vec<u8>)>, ClusterError> {
        let count = self.superblock.lock_count;
        if count == 0 {
            return Ok(Vec::new());
        }
        let data = self
            .read_retrying(self.superblock.lock_block(0), count)
            .await?;
        let block_size = self.superblock.block_size as usize;
        (0..count)
            .map(|index| {
                let block = data[index as usize * block_size..][..block_size].to_vec();
                LockRecord::decode(&block, index)
                    .map(|record| (record, block))
                    .map_err(|error| ClusterError::Format {
                        lba: self.absolute_lba(self.superblock.lock_block(index)),
                        error,
                    })
            })
            .collect()
    }

    /// Acquires `name` in `mode`, waiting up to `wait` while live hosts hold it.
    pub async fn acquire(
        &self,
        name: &str,
        mode: LockMode,
        wait: Duration,
    ) -> Result<Acquire, ClusterError> {
        let deadline = self.clock.now() + wait;
        loop {
            match self.try_acquire(name, mode).await? {
                Acquire::Busy { holders } if self.clock.now() < deadline => {
                    let _ = holders;
                    self.clock
                        .sleep(self.jitter(self.heartbeat_interval() / 4))
                        .await;
                    self.observe_slots().await?;
                }
                done => return Ok(done),
            }
        }
    }

    /// One acquisition attempt: takes the lock if it is free or held only by stale holders (breaking them), joins
    /// a shared hold, or reports who holds it.
    pub async fn try_acquire(&self, name: &str, mode: LockMode) -> Result<Acquire, ClusterError> {
        if mode == LockMode::Free {
            return Err(ClusterError::Usage(
                "a lock is acquired exclusive or shared".into(),
            ));
        }
        let name = fit_name(name);
        if name.is_empty() {
            return Err(ClusterError::Usage("a lock needs a name".into()));
        }
        let me = self.me()?;
        // A hold is usable only in the lease epoch it was attempted in, and only if the lease was valid then: a
        // grant learned after a lapse may already have been broken by a host that judged this one dead.
        let epoch = if self.lease_valid() || self.config.broken.revive_lapsed_lease {
            self.lease_epoch()
        } else {
            NO_EPOCH
        };
        for _ in 0..RACE_RETRIES {
            let (record, image) = self.find_or_bind_record(name).await?;
            if let Some(held) = self.already_held(&record, &image, me, mode) {
                // The record already names us (an earlier attempt landed unheard). Rewrite it before granting: a
                // break racing this grant then either lands first (and this write miscompares) or miscompares.
                if let Some(mut handle) = self.reconfirm(&record, &image, held).await? {
                    handle.lease_epoch = epoch;
                    return Ok(Acquire::Granted(handle));
                }
                continue;
            }
            let (mut stale, mut live) = self.split_holders(&record, me);
            if !stale.is_empty() {
                // Look again before breaking anything: a judgement made on an old observation is not good enough.
                self.observe_slots().await?;
                (stale, live) = self.split_holders(&record, me);
            }
            let compatible = mode == LockMode::Shared && record.mode == LockMode::Shared;
            if !live.is_empty() && !compatible {
                return Ok(Acquire::Busy {
                    holders: self.describe_holders(&live),
                });
            }
            if mode == LockMode::Shared && live.len() >= MAX_SHARED_HOLDERS {
                return Ok(Acquire::Busy {
                    holders: format!("{} shared holders (the most a record lists)", live.len()),
                });
            }
            self.fence_stale_holders(&record, &stale).await?;
            let mut next = record.clone();
            next.lock_generation += 1;
            next.sequence += 1;
            next.nonce = self.nonce();
            next.mode = mode;
            if mode == LockMode::Exclusive {
                next.owner_id = self.config.host_id;
                next.owner = me;
                next.shared.clear();
            } else {
                next.owner_id = Default::default();
                next.owner = Holder {
                    slot: 0,
                    slot_generation: 0,
                };
                next.shared = live;
                next.shared.push(me);
            }
            let new = self.block_of(next.encode());
            let op = if stale.is_empty() { "acquire" } else { "break" };
            let request = AtsRequest {
                op,
                target: format!("lock {name}"),
                lba: self.superblock.lock_block(record.index),
                expected: &image,
                new: &new,
                policy: self.config.io_policy,
            };
            if let AtsResult::Landed { .. } = self.resolved_ats(request).await? {
                if !stale.is_empty() {
                    Counters::bump(&self.log.counters.breaks);
                    self.note(
                        "lock_broken",
                        format!(
                            "{name}: stale holders {} removed",
                            self.describe_holders(&stale)
                        ),
                    );
                }
                Counters::bump(&self.log.counters.acquisitions);
                self.note(
                    "lock_acquired",
                    format!("{name} {mode} token {}", next.lock_generation),
                );
                return Ok(Acquire::Granted(LockHandle {
                    name: name.to_string(),
                    index: record.index,
                    mode,
                    token: next.lock_generation,
                    broken: stale.iter().map(|h| h.slot).collect(),
                    lease_epoch: epoch,
                    image: new,
                }));
            }
            // Another host changed the record between our read and our write: look again.
        }
        Err(ClusterError::GaveUp {
            op: "acquire",
            lba: self.absolute_lba(self.superblock.lock_block(0)),
            attempts: RACE_RETRIES,
        })
    }

    /// Rewrites the lock record with a new sequence and nonce, proving the hold is still ours; a long timeout rather
    /// than a quick retry, as for heartbeats.
    pub async fn renew(&self, handle: &mut LockHandle) -> Result<(), ClusterError> {
        let me = self.me()?;
        let block = self
            .read_back(
                self.superblock.lock_block(handle.index),
                self.config.renew_policy,
            )
            .await?;
        let record = self.decode_lock(&block, handle.index)?;
        if !holds(&record, me, handle.mode) || record.lock_generation < handle.token {
            return Err(self.lost(handle, &record));
        }
        let mut next = record.clone();
        next.sequence += 1;
        next.nonce = self.nonce();
        let new = self.block_of(next.encode());
        let request = AtsRequest {
            op: "renew",
            target: format!("lock {}", handle.name),
            lba: self.superblock.lock_block(handle.index),
            expected: &block,
            new: &new,
            policy: self.config.renew_policy,
        };
        match self.resolved_ats(request).await? {
            AtsResult::Landed { .. } => {
                handle.image = new;
                Ok(())
            }
            AtsResult::Conflict { found } => {
                let record = self.decode_lock(&found, handle.index)?;
                Err(self.lost(handle, &record))
            }
        }
    }

    /// Releases a hold. The generation stays, so the next holder's token is higher than every earlier one.
    pub async fn release(&self, handle: &LockHandle) -> Result<(), ClusterError> {
        let me = self.me()?;
        for _ in 0..RACE_RETRIES {
            let block = self
                .read_back(
                    self.superblock.lock_block(handle.index),
                    self.config.io_policy,
                )
                .await?;
            let record = self.decode_lock(&block, handle.index)?;
            if !holds(&record, me, handle.mode) {
                return Err(self.lost(handle, &record));
            }
            let mut next = record.clone();
            next.sequence += 1;
            next.nonce = self.nonce();
            next.shared.retain(|h| *h != me);
            if handle.mode == LockMode::Exclusive || next.shared.is_empty() {
                next.mode = LockMode::Free;
                next.owner_id = Default::default();
                next.owner = Holder {
                    slot: 0,
                    slot_generation: 0,
                };
                next.shared.clear();
            }
            let new = self.block_of(next.encode());
            let request = AtsRequest {
                op: "release",
                target: format!("lock {}", handle.name),
                lba: self.superblock.lock_block(handle.index),
                expected: &block,
                new: &new,
                policy: self.config.io_policy,
            };
            match self.resolved_ats(request).await? {
                AtsResult::Landed { .. } => {
                    Counters::bump(&self.log.counters.releases);
                    self.note(
                        "lock_released",
                        format!("{} token {}", handle.name, handle.token),
                    );
                    return Ok(());
                }
                // While the outcome was unknown, another host may have acquired the lock after our release landed,
                // and written over it. If the record no longer lists us, the hold is over either way.
                AtsResult::Conflict { found } => {
                    let now = self.decode_lock(&found, handle.index)?;
                    if !holds(&now, me, handle.mode) {
                        Counters::bump(&self.log.counters.releases);
                        self.note(
                            "lock_released",
                            format!(
                                "{} token {}: the record moved on to generation {} while our release was unresolved",
                                handle.name, handle.token, now.lock_generation
                            ),
                        );
                        return Ok(());
                    }
                }
            }
        }
        Err(ClusterError::GaveUp {
            op: "release",
            lba: self.absolute_lba(self.superblock.lock_block(handle.index)),
            attempts: RACE_RETRIES,
        })
    }

    /// Rewrites a record that names this host with a new sequence and nonce; None when another host changed it.
    async fn reconfirm(
        &self,
        record: &LockRecord,
        image: &[u8],
        mut handle: LockHandle,
    ) -> Result<Option<LockHandle>, ClusterError> {
        let mut next = record.clone();
        next.sequence += 1;
        next.nonce = self.nonce();
        let new = self.block_of(next.encode());
        let request = AtsRequest {
            op: "reconfirm",
            target: format!("lock {}", record.name),
            lba: self.superblock.lock_block(record.index),
            expected: image,
            new: &new,
            policy: self.config.io_policy,
        };
        match self.resolved_ats(request).await? {
            AtsResult::Landed { .. } => {
                handle.image = new;
                Ok(Some(handle))
            }
            AtsResult::Conflict { .. } => Ok(None),
        }
    }

    /// This host's hold of `name`, if it has one (to release a lock taken by an earlier process of this host).
    pub async fn held(&self, name: &str) -> Result<Option<LockHandle>, ClusterError> {
        let me = self.me()?;
        let records = self.read_locks().await?;
        Ok(records.into_iter().find_map(|(record, image)| {
            if record.name != fit_name(name) {
                return None;
            }
            // Found, not acquired: good for release, never for acting on the lock.
            [LockMode::Exclusive, LockMode::Shared]
                .into_iter()
                .find_map(|mode| self.already_held(&record, &image, me, mode))
                .map(|handle| LockHandle {
                    lease_epoch: NO_EPOCH,
                    ..handle
                })
        }))
    }

    /// The record bound to `name`, binding a free record to it when there is none.
    async fn find_or_bind_record(&self, name: &str) -> Result<(LockRecord, Vec<u8>), ClusterError> {
        for _ in 0..RACE_RETRIES {
            let records = self.read_locks().await?;
            if let Some(found) = records.iter().find(|(r, _)| r.name == name) {
                return Ok(found.clone());
            }
            let Some((unbound, image)) = records.into_iter().find(|(r, _)| r.name.is_empty())
            else {
                return Err(ClusterError::NoFreeLockRecord {
                    locks: self.superblock.lock_count,
                });
            };
            let mut next = unbound.clone();
            next.name = name.to_string();
            next.sequence += 1;
            next.nonce = self.nonce();
            let new = self.block_of(next.encode());
            let request = AtsRequest {
                op: "bind",
                target: format!("lock {name}"),
                lba: self.superblock.lock_block(unbound.index),
                expected: &image,
                new: &new,
                policy: self.config.io_policy,
            };
            if let AtsResult::Landed { .. } = self.resolved_ats(request).await? {
                return Ok((next, new));
            }
        }
        Err(ClusterError::GaveUp {
            op: "bind",
            lba: self.absolute_lba(self.superblock.lock_block(0)),
            attempts: RACE_RETRIES,
        })
    }

    /// When a resolved write of ours landed but its caller never heard (an earlier attempt), the record already
    /// names us: that is our hold, not someone else's.
    fn already_held(
        &self,
        record: &LockRecord,
        image: &[u8],
        me: Holder,
        mode: LockMode,
    ) -> Option<LockHandle> {
        (record.mode == mode && holds(record, me, mode)).then(|| LockHandle {
            name: record.name.clone(),
            index: record.index,
            mode,
            token: record.lock_generation,
            broken: Vec::new(),
            lease_epoch: self.lease_epoch(),
            image: image.to_vec(),
        })
    }

    /// Splits a record's holders (other than `me`) into stale and live ones, by this host's observations.
    fn split_holders(&self, record: &LockRecord, me: Holder) -> (Vec<Holder>, Vec<Holder>) {
        let holders: Vec<Holder> = match record.mode {
            LockMode::Free => Vec::new(),
            LockMode::Exclusive => vec![record.owner],
            LockMode::Shared => record.shared.clone(),
        };
        holders
            .into_iter()
            .filter(|h| *h != me)
            .partition(|h| self.is_stale(*h))
    }

    /// A holder is stale when its slot now belongs to a later incarnation, was given up by it, or is dead on our
    /// clock. A holder generation newer than what we observed only means our observation is old: not stale.
    fn is_stale(&self, holder: Holder) -> bool {
        if holder.slot >= self.superblock.slot_count {
            // No such slot: no host can be alive behind it (a damaged record must not block the lock forever).
            return true;
        }
        let Some(slot) = self.observed_slot(holder.slot) else {
            return false;
        };
        if slot.generation > holder.slot_generation {
            return true;
        }
        if slot.generation < holder.slot_generation {
            return false;
        }
        slot.state == SlotState::Free || self.liveness(holder.slot) == Liveness::Dead
    }

    /// Fences stale holders that registered a PR key before their hold is broken (SPC-4 5.12.11.2.3).
    async fn fence_stale_holders(
        &self,
        record: &LockRecord,
        stale: &[Holder],
    ) -> Result<(), ClusterError> {
        let Some(own_key) = self.config.pr_key else {
            return Ok(());
        };
        for holder in stale {
            let Some(slot) = self.observed_slot(holder.slot) else {
                continue;
            };
            // A slot re-claimed by a new incarnation carries the new incarnation's key; it is not to be fenced.
            if slot.pr_key == 0
                || slot.pr_key == own_key
                || slot.generation != holder.slot_generation
            {
                continue;
            }
            self.preempt(own_key, slot.pr_key).await?;
            self.note(
                "fenced_peer",
                format!(
                    "{}: PREEMPT AND ABORT of key {:#x} ({}, slot {})",
                    record.name, slot.pr_key, slot.host_name, slot.index
                ),
            );
        }
        Ok(())
    }

    /// PREEMPT AND ABORT of `victim`. A RESERVATION CONFLICT has two meanings (SPC-4 5.13.11.4): this host is no
    /// longer registered (it was fenced itself), or no one holds the victim's key any more (another breaker fenced
    /// it first). READ KEYS tells them apart.
    async fn preempt(&self, own_key: u64, victim: u64) -> Result<(), ClusterError> {
        let policy = self.config.io_policy;
        let mut attempt = 1;
        let answer = loop {
            match self
                .disk
                .preempt_and_abort(own_key, victim, policy.timeout)
                .await
            {
                Err(DiskError::Transient { .. }) if attempt < policy.max_attempts => {
                    attempt += 1;
                    self.clock.sleep(self.jitter(policy.backoff)).await;
                }
                answer => break answer,
            }
        };
        let timeout = policy.timeout;
        match answer {
            Ok(()) => Ok(()),
            Err(DiskError::Fenced) => {
                let keys = self.disk.read_keys(timeout).await?;
                if !keys.contains(&own_key) {
                    Err(ClusterError::Fenced)
                } else if keys.contains(&victim) {
                    Err(ClusterError::PreemptRefused { victim })
                } else {
                    Ok(())
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    fn describe_holders(&self, holders: &[Holder]) -> String {
        holders
            .iter()
            .map(|h| match self.observed_slot(h.slot) {
                Some(slot) => format!("{} (slot {})", slot.host_name, h.slot),
                None => format!("slot {}", h.slot),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn lost(&self, handle: &LockHandle, record: &LockRecord) -> ClusterError {
        self.note(
            "lock_lost",
            format!(
                "{} token {}: record now {} generation {}",
                handle.name, handle.token, record.mode, record.lock_generation
            ),
        );
        ClusterError::LockLost {
            name: handle.name.clone(),
            token: handle.token,
            now_generation: record.lock_generation,
        }
    }

    fn decode_lock(&self, block: &[u8], index: u32) -> Result<LockRecord, ClusterError> {
        LockRecord::decode(block, index).map_err(|error| ClusterError::Format {
            lba: self.absolute_lba(self.superblock.lock_block(index)),
            error,
        })
    }

    fn me(&self) -> Result<Holder, ClusterError> {
        let (slot, slot_generation) = self.own_slot().ok_or(ClusterError::NotJoined)?;
        Ok(Holder {
            slot,
            slot_generation,
        })
    }
}

fn holds(record: &LockRecord, me: Holder, mode: LockMode) -> bool {
    match mode {
        LockMode::Exclusive => record.mode == LockMode::Exclusive && record.owner == me,
        LockMode::Shared => record.mode == LockMode::Shared && record.shared.contains(&me),
        LockMode::Free => false,
    }
}
