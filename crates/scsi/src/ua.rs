//! Unit attention conditions (SAM-5 5.14, SPC-4 5.14 / 6.29), kept per I_T nexus per logical unit.
//!
//! Invariants:
//! - Each nexus has a queue of pending conditions ordered by precedence (highest first, SAM-5 5.14 "unit attention
//!   condition precedence"): power on / reset / nexus loss (29h) before everything else, then reservation changes
//!   (2Ah/03..05), then parameter changes (2Ah other, 3Fh), then commands cleared (2Fh). A condition is queued once.
//! - Establishing a 29h condition clears every lower-precedence condition for that nexus: the reset made them
//!   meaningless (SAM-5 5.14: "the logical unit may clear any pending lower precedence unit attention").
//! - A nexus never seen before reports POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00) on its first command,
//!   because from its point of view the logical unit just came into existence.
//! - A parameter-change condition (e.g. MODE PARAMETERS CHANGED, SPC-4 6.9) remembers the parameter state the nexus
//!   last saw. While the condition is pending the nexus has run no command under the new parameters (every command
//!   but INQUIRY, REPORT LUNS and REQUEST SENSE would have received the condition, and REQUEST SENSE consumes it), so
//!   when a later change restores exactly that state there is nothing left to report and the condition is withdrawn.
//!
//! Concurrency: the map is split into shards, each behind its own small mutex, so commands of different sessions
//! almost never contend; a lock is never held across storage I/O.

use crate::hold_time::{timed, SharedLock, Timed};
use crate::sense::Condition;
use crate::ItNexus;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Number of shards: a power of two comfortably above the number of worker threads.
const SHARD_COUNT: usize = 16;
/// Named limit on queued conditions per nexus; a nexus that never sends commands cannot grow memory unboundedly.
const MAX_QUEUED_PER_NEXUS: usize = 8;
/// Nexuses a shard remembers before it forgets those with nothing but a reset pending (16,384 per logical unit).
/// Every ISID an initiator logs in with is a nexus, and each lost one keeps I_T NEXUS LOSS OCCURRED pending; a
/// client cycling through ISIDs must not grow this table without bound (found by `lunlock fuzz`).
const MAX_NEXUSES_PER_SHARD: usize = 1024;

/// Precedence rank of a unit attention condition: lower is reported first (SAM-5 5.14).
fn rank(condition: Condition) -> u8 {
    match (condition.asc(), condition.ascq()) {
        (0x29, 0x01) => 0,
        (0x29, 0x02) => 1,
        (0x29, 0x03) => 2,
        (0x29, 0x00) => 3,
        (0x29, _) => 4,
        (0x2A, 0x03..=0x05) => 5,
        (0x2A, _) | (0x3F, _) => 6,
        _ => 7,
    }
}

#[derive(Default)]
struct Shard {
    nexuses: HashMap<ItNexus, Vec<Condition>>,
    /// For pending parameter-change conditions: the parameter state the nexus saw before the first change.
    baselines: HashMap<(ItNexus, Condition), u64>,
}

impl Shard {
    /// Makes room for one more nexus when the shard is full: forgets the nexuses whose pending conditions are all
    /// resets (29h), typically lost nexuses holding I_T NEXUS LOSS OCCURRED. A forgotten nexus is an unseen one,
    /// which reports POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00) first: still a reset, which is what
    /// tells an initiator that its state at the logical unit is gone (SAM-5 5.14, 6.3).
    fn make_room(&mut self) {
        if self.nexuses.len() < MAX_NEXUSES_PER_SHARD {
            return;
        }
        self.nexuses
            .retain(|_, queue| queue.is_empty() || queue.iter().any(|c| c.asc() != 0x29));
        let nexuses = &self.nexuses;
        self.baselines
            .retain(|(nexus, _), _| nexuses.contains_key(nexus));
    }
}

/// The unit attention state of one logical unit.
pub struct UnitAttentions {
    shards: Vec<Mutex<Shard>>,
    /// Conditions queued for a nexus since start (the runtime's `lunlock_unit_attentions_established_total`).
    established: AtomicU64,
}

impl Default for UnitAttentions {
    fn default() -> Self {
        UnitAttentions::new()
    }
}

impl UnitAttentions {
    pub fn new() -> Self {
        UnitAttentions {
            shards: (0..SHARD_COUNT)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            established: AtomicU64::new(0),
        }
    }

    fn shard(&self, nexus: &ItNexus) -> Timed<std::sync::MutexGuard<'_, Shard>> {
        let mut hasher = DefaultHasher::new();
        nexus.hash(&mut hasher);
        let index = (hasher.finish() as usize) % SHARD_COUNT;
        // A poisoned shard only means another thread panicked mid-update of plain data; the data stays usable.
        let guard = self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        timed(SharedLock::UnitAttentions, guard)
    }

    /// The condition to report to `nexus` now, if any, removing it (the command that receives it is terminated
    /// with CHECK CONDITION; SAM-5 5.14). Registers a new nexus with 29/00 first.
    pub fn take(&self, nexus: &ItNexus) -> Option<Condition> {
        let mut shard = self.shard(nexus);
        if !shard.nexuses.contains_key(nexus) {
            shard.make_room();
        }
        let queue = shard
            .nexuses
            .entry(nexus.clone())
            .or_insert_with(|| vec![Condition::PowerOnResetOrBusDeviceReset]);
        if queue.is_empty() {
            return None;
        }
        let condition = queue.remove(0);
        shard.baselines.remove(&(nexus.clone(), condition));
        Some(condition)
    }

    /// Nexuses remembered now (seen, or with a condition established).
    pub fn remembered_nexuses(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .nexuses
                    .len()
            })
            .sum()
    }

    /// The condition that would be reported, without removing it.
    pub fn peek(&self, nexus: &ItNexus) -> Option<Condition> {
        let shard = self.shard(nexus);
        match shard.nexuses.get(nexus) {
            Some(queue) => queue.first().copied(),
            None => Some(Condition::PowerOnResetOrBusDeviceReset),
        }
    }

    /// Establish `condition` for one nexus.
    pub fn establish(&self, nexus: &ItNexus, condition: Condition) {
        let mut shard = self.shard(nexus);
        match shard.nexuses.get_mut(nexus) {
            Some(queue) => self.counted(insert(queue, condition)),
            // An unseen nexus will report 29/00 first, which outranks or equals anything else worth queueing,
            // except the more specific resets; keep those.
            None => {
                let mut queue = vec![Condition::PowerOnResetOrBusDeviceReset];
                self.counted(insert(&mut queue, condition));
                shard.make_room();
                shard.nexuses.insert(nexus.clone(), queue);
            }
        }
    }

    /// Establish `condition` for every known nexus except `except` (e.g. the one whose command caused it).
    pub fn establish_all(&self, condition: Condition, except: Option<&ItNexus>) {
        for shard in &self.shards {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (nexus, queue) in shard.nexuses.iter_mut() {
                if Some(nexus) != except {
                    self.counted(insert(queue, condition));
                }
            }
        }
    }
}

impl UnitAttentions {
    /// Establish `condition` for every known nexus for which `matches` holds (e.g. every I_T nexus of a
    /// registration made with ALL_TG_PT).
    pub fn establish_where(&self, condition: Condition, matches: impl Fn(&ItNexus) -> bool) {
        for shard in &self.shards {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (nexus, queue) in shard.nexuses.iter_mut() {
                if matches(nexus) {
                    self.counted(insert(queue, condition));
                }
            }
        }
    }

    /// A shared parameter changed from state `before` to `after` (opaque encodings of the parameters): establish
    /// `condition` for every known nexus except `except`, or withdraw it from a nexus whose pending condition was
    /// established while the parameters were `after` (see the module header).
    pub fn establish_parameter_change(
        &self,
        condition: Condition,
        except: Option<&ItNexus>,
        before: u64,
        after: u64,
    ) {
        for shard in &self.shards {
            let mut guard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let Shard { nexuses, baselines } = &mut *guard;
            for (nexus, queue) in nexuses.iter_mut() {
                if Some(nexus) == except {
                    continue;
                }
                let key = (nexus.clone(), condition);
                if queue.contains(&condition) {
                    if baselines.get(&key) == Some(&after) {
                        queue.retain(|queued| *queued != condition);
                        baselines.remove(&key);
                    }
                } else if before != after {
                    self.counted(insert(queue, condition));
                    baselines.insert(key, before);
                }
            }
        }
    }
}

impl UnitAttentions {
    /// Conditions established for some nexus since start (each nexus it was queued for counts once).
    pub fn established(&self) -> u64 {
        self.established.load(Ordering::Relaxed)
    }

    fn counted(&self, inserted: bool) {
        if inserted {
            self.established.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Insert by precedence; resets (29h) clear everything of lower precedence. False if it was already queued.
fn insert(queue: &mut Vec<Condition>, condition: Condition) -> bool {
    if queue.contains(&condition) {
        return false;
    }
    let new_rank = rank(condition);
    if condition.asc() == 0x29 {
        queue.retain(|queued| rank(*queued) <= new_rank);
    }
    let position = queue
        .iter()
        .position(|queued| rank(*queued) > new_rank)
        .unwrap_or(queue.len());
    queue.insert(position, condition);
    queue.truncate(MAX_QUEUED_PER_NEXUS);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Isid;

    fn nexus(n: u8) -> ItNexus {
        ItNexus {
            initiator_name: format!("iqn.test:{n}"),
            isid: Isid([0, 0, 0, 0, 0, n]),
            target_name: "iqn.target".into(),
            relative_target_port: 1,
        }
    }

    #[test]
    fn lost_nexuses_are_forgotten_before_the_table_grows_without_bound() {
        let ua = UnitAttentions::new();
        let live = nexus(1);
        assert_eq!(
            ua.take(&live),
            Some(Condition::PowerOnResetOrBusDeviceReset)
        );
        ua.establish(&live, Condition::ReservationsPreempted);
        assert_eq!(ua.established(), 1);
        ua.establish(&live, Condition::ReservationsPreempted);
        assert_eq!(ua.established(), 1, "already queued: not established again");
        // An initiator cycling through ISIDs: each nexus logs in, runs a command, and is lost.
        for i in 0..100_000u32 {
            let bytes = i.to_be_bytes();
            let cycling = ItNexus {
                isid: Isid([0x80, 0, bytes[0], bytes[1], bytes[2], bytes[3]]),
                ..nexus(2)
            };
            ua.take(&cycling);
            ua.establish(&cycling, Condition::ItNexusLossOccurred);
        }
        assert!(
            ua.remembered_nexuses() <= SHARD_COUNT * MAX_NEXUSES_PER_SHARD,
            "{} nexuses remembered",
            ua.remembered_nexuses()
        );
        // A nexus with something other than a reset pending is never forgotten.
        assert_eq!(ua.take(&live), Some(Condition::ReservationsPreempted));
        assert_eq!(ua.take(&live), None);
    }

    #[test]
    fn new_nexus_reports_power_on_once() {
        let ua = UnitAttentions::new();
        assert_eq!(
            ua.peek(&nexus(1)),
            Some(Condition::PowerOnResetOrBusDeviceReset)
        );
        assert_eq!(
            ua.take(&nexus(1)),
            Some(Condition::PowerOnResetOrBusDeviceReset)
        );
        assert_eq!(ua.take(&nexus(1)), None);
    }

    #[test]
    fn reset_outranks_and_clears_lower_conditions() {
        let ua = UnitAttentions::new();
        let a = nexus(1);
        assert!(ua.take(&a).is_some());
        ua.establish(&a, Condition::ModeParametersChanged);
        ua.establish(&a, Condition::ReservationsPreempted);
        assert_eq!(ua.peek(&a), Some(Condition::ReservationsPreempted));
        ua.establish(&a, Condition::BusDeviceResetFunctionOccurred);
        assert_eq!(ua.take(&a), Some(Condition::BusDeviceResetFunctionOccurred));
        assert_eq!(ua.take(&a), None);
    }

    #[test]
    fn establish_all_skips_the_cause_and_reaches_others() {
        let ua = UnitAttentions::new();
        let (a, b) = (nexus(1), nexus(2));
        ua.take(&a);
        ua.take(&b);
        ua.establish_all(Condition::ModeParametersChanged, Some(&a));
        assert_eq!(ua.take(&a), None);
        assert_eq!(ua.take(&b), Some(Condition::ModeParametersChanged));
    }

    #[test]
    fn parameter_change_undone_before_it_was_seen_is_withdrawn() {
        let ua = UnitAttentions::new();
        let (a, b, c) = (nexus(1), nexus(2), nexus(3));
        ua.take(&a);
        ua.take(&b);
        ua.take(&c);
        ua.establish_parameter_change(Condition::ModeParametersChanged, Some(&a), 0, 1);
        // c saw the change (its next command got the condition); b did not.
        assert_eq!(ua.take(&c), Some(Condition::ModeParametersChanged));
        ua.establish_parameter_change(Condition::ModeParametersChanged, Some(&a), 1, 0);
        assert_eq!(ua.take(&a), None);
        assert_eq!(ua.take(&b), None, "b never ran a command under state 1");
        assert_eq!(
            ua.take(&c),
            Some(Condition::ModeParametersChanged),
            "c ran commands under state 1"
        );
        // A change to a third state keeps b's condition even if a later one goes back to 1.
        ua.establish_parameter_change(Condition::ModeParametersChanged, Some(&a), 0, 2);
        ua.establish_parameter_change(Condition::ModeParametersChanged, Some(&a), 2, 1);
        assert_eq!(ua.take(&b), Some(Condition::ModeParametersChanged));
    }

    #[test]
    fn precedence_table() {
        // (established in this order, expected report order)
        let cases: &[(&[Condition], &[Condition])] = &[
            (
                &[
                    Condition::ModeParametersChanged,
                    Condition::ItNexusLossOccurred,
                ],
                &[Condition::ItNexusLossOccurred],
            ),
            (
                &[
                    Condition::ItNexusLossOccurred,
                    Condition::RegistrationsPreempted,
                    Condition::ModeParametersChanged,
                ],
                &[
                    Condition::ItNexusLossOccurred,
                    Condition::RegistrationsPreempted,
                    Condition::ModeParametersChanged,
                ],
            ),
            (
                &[
                    Condition::ItNexusLossOccurred,
                    Condition::BusDeviceResetFunctionOccurred,
                ],
                &[Condition::BusDeviceResetFunctionOccurred],
            ),
            (
                &[
                    Condition::ReservationsReleased,
                    Condition::ReservationsReleased,
                ],
                &[Condition::ReservationsReleased],
            ),
        ];
        for (established, expected) in cases {
            let ua = UnitAttentions::new();
            let a = nexus(3);
            ua.take(&a);
            for condition in *established {
                ua.establish(&a, *condition);
            }
            let mut reported = Vec::new();
            while let Some(condition) = ua.take(&a) {
                reported.push(condition);
            }
            assert_eq!(&reported[..], *expected, "established {established:?}");
        }
    }
}
