//! The checkers that run at every command the target executes (at the step where its effect happens, while other
//! commands are in flight), at target restarts and on every ATS verdict:
//! CAW linearizability, fencing of the protected counters, PR invariants, durability, WRITE ATOMIC across power
//! loss, and the resolver's verdicts against what really happened. Mutual exclusion and liveness are checked by the actors' referee (`actors.rs`).

use crate::store::TrackingStore;
use crate::world::{Reply, Request, BLOCK};
use lunlock_cluster::demo::CounterImage;
use lunlock_cluster::events::{digest, AtsEvent, Verdict};
use lunlock_scsi::cdb::{op, Command};
use lunlock_scsi::pr::{Holder, PrState};
use lunlock_scsi::LogicalUnit;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

/// A checker's finding.
#[derive(Clone, Debug)]
pub struct Violation {
    pub at: Duration,
    pub step: u64,
    pub message: String,
}

#[derive(Default)]
pub struct Checks {
    pub violations: Vec<Violation>,
    pub step: u64,
    /// Blocks of LUN 0 holding the protected counters (one per lock), whose writes must never go back in token.
    pub counter_lbas: Range<u64>,
    /// Every COMPARE AND WRITE that executed with GOOD on LUN 0: (actor, LBA, digest of the new image).
    landed: BTreeSet<(usize, u64, String)>,
    /// PRgeneration last seen per LUN (SPC-4 6.16.2: it only grows, except when a power loss resets it).
    pr_generation: BTreeMap<usize, u32>,
    /// PR state of each LUN when the target lost power.
    pub pr_before_crash: Vec<PrState>,
    /// Blocks of LUN 0 that only the WRITE ATOMIC client writes, always from the first one.
    pub atomic_lbas: Range<u64>,
}

/// Most blocks the WRITE ATOMIC client writes at once (it writes the smaller of this and MAXIMUM ATOMIC TRANSFER
/// LENGTH).
pub const ATOMIC_RANGE_BLOCKS: u64 = 8;

/// Block `index` of the WRITE ATOMIC client's write `stamp` of `count` blocks: stamp, index and count, then words
/// that mix the stamp with the index, so a block of one write passes neither for another write's block nor for
/// another block of the same write.
pub fn atomic_image(stamp: u64, count: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity((count * BLOCK as u64) as usize);
    for index in 0..count {
        data.extend_from_slice(&stamp.to_le_bytes());
        data.extend_from_slice(&index.to_le_bytes());
        data.extend_from_slice(&count.to_le_bytes());
        for _ in 3..BLOCK / 8 {
            data.extend_from_slice(&atomic_word(stamp, index).to_le_bytes());
        }
    }
    data
}

fn atomic_word(stamp: u64, index: u64) -> u64 {
    (stamp ^ index.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// (stamp, index, count) of one block of [`atomic_image`]; None for zeros or anything else.
fn atomic_block(block: &[u8]) -> Option<(u64, u64, u64)> {
    let word =
        |at: usize| u64::from_le_bytes(block[at * 8..at * 8 + 8].try_into().expect("8 bytes"));
    let (stamp, index, count) = (word(0), word(1), word(2));
    let whole = block.len() == BLOCK as usize
        && index < count
        && (3..BLOCK as usize / 8).all(|at| word(at) == atomic_word(stamp, index));
    whole.then_some((stamp, index, count))
}

/// Whether `blocks` (the atomic range from its first block) hold one write's image whole, or were never written.
pub fn atomic_range_is_whole(blocks: &[Vec<u8>]) -> bool {
    if blocks
        .iter()
        .all(|block| block.iter().all(|&byte| byte == 0))
    {
        return true;
    }
    let Some((stamp, 0, count)) = blocks.first().and_then(|block| atomic_block(block)) else {
        return false;
    };
    count as usize <= blocks.len()
        && blocks[..count as usize]
            .iter()
            .enumerate()
            .all(|(index, block)| atomic_block(block) == Some((stamp, index as u64, count)))
}

/// What a checker needs from before a command executes.
pub struct Before {
    block: Option<Vec<u8>>,
}

impl Checks {
    pub fn violation(&mut self, at: Duration, message: String) {
        self.violations.push(Violation {
            at,
            step: self.step,
            message,
        });
    }

    pub fn before_command(&self, request: &Request, store: &TrackingStore) -> Before {
        Before {
            block: caw_lba(&request.cdb).map(|lba| store.block(lba)),
        }
    }

    pub fn after_command(
        &mut self,
        now: Duration,
        request: &Request,
        reply: &Reply,
        before: Before,
        store: &TrackingStore,
        lu: &LogicalUnit,
    ) {
        match request.cdb[0] {
            op::COMPARE_AND_WRITE => {
                if let Some(pre) = before.block {
                    self.compare_and_write(now, request, reply, &pre, store);
                }
            }
            op::PERSISTENT_RESERVE_OUT => self.pr_invariants(now, request.lun, &lu.pr_state()),
            _ => {}
        }
    }

    /// CAW linearizability (SBC-4 5.3). The target runs many commands at once, but each command's effect on the
    /// medium happens in one simulation step (for a correct target, its execution under its range lock), and
    /// `pre` is the block just before that step: a GOOD CAW is linearized at its write, so the block must have held
    /// the expected image right before it and hold the new image right after; a MISCOMPARE is linearized at its
    /// compare, leaves the block untouched and reports the first differing byte. A target that compares and writes
    /// in separate steps lets another write in between, and its GOOD then replaces an image it never compared.
    fn compare_and_write(
        &mut self,
        now: Duration,
        request: &Request,
        reply: &Reply,
        pre: &[u8],
        store: &TrackingStore,
    ) {
        let Some(lba) = caw_lba(&request.cdb) else {
            return;
        };
        if request.data_out.len() != 2 * BLOCK as usize {
            return;
        }
        let (expected, new) = request.data_out.split_at(BLOCK as usize);
        let post = store.block(lba);
        let id = request.id;
        match reply.status {
            0x00 => {
                if pre != expected {
                    self.violation(
                        now,
                        format!("CAW #{id} lba {lba}: GOOD although the block differed"),
                    );
                }
                if post != new {
                    self.violation(
                        now,
                        format!("CAW #{id} lba {lba}: GOOD but the new image is not there"),
                    );
                }
                if request.lun == 0 {
                    self.landed.insert((request.actor, lba, digest(new)));
                    if self.counter_lbas.contains(&lba) {
                        self.fencing(now, id, lba, pre, new);
                    }
                }
            }
            0x02 if reply.sense.get(2).map(|k| k & 0x0F) == Some(0x0E) => {
                if pre == expected {
                    self.violation(
                        now,
                        format!("CAW #{id} lba {lba}: MISCOMPARE although the block matched"),
                    );
                }
                if post != pre {
                    self.violation(
                        now,
                        format!("CAW #{id} lba {lba}: MISCOMPARE but the block changed"),
                    );
                }
                let first = pre.iter().zip(expected).position(|(a, b)| a != b);
                let valid = reply.sense.first().is_some_and(|b| b & 0x80 != 0);
                let information = reply
                    .sense
                    .get(3..7)
                    .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
                if valid && first != information {
                    self.violation(
                        now,
                        format!("CAW #{id} lba {lba}: INFORMATION {information:?} but the first difference is at {first:?}"),
                    );
                }
            }
            _ => {
                if post != pre {
                    self.violation(
                        now,
                        format!("CAW #{id} lba {lba}: failed but the block changed"),
                    );
                }
            }
        }
    }

    /// A protected counter records the token of its writer: a write that lowers it came from a holder whose lock
    /// had been broken, which PR fencing or the compare should have stopped.
    fn fencing(&mut self, now: Duration, id: u64, lba: u64, pre: &[u8], new: &[u8]) {
        let (before, after) = (counter_token(pre), counter_token(new));
        if after < before {
            self.violation(
                now,
                format!("fencing: CAW #{id} wrote counter lba {lba} under token {after} over token {before}"),
            );
        }
    }

    /// SPC-4 5.13: PRgeneration never decreases; a registrant-type reservation is held by a registrant; the
    /// all-registrants types are held by all registrants.
    fn pr_invariants(&mut self, now: Duration, lun: usize, state: &PrState) {
        let last = self
            .pr_generation
            .insert(lun, state.generation)
            .unwrap_or(0);
        if state.generation < last {
            self.violation(
                now,
                format!(
                    "PR lun {lun}: generation went from {last} to {}",
                    state.generation
                ),
            );
        }
        let Some(reservation) = &state.reservation else {
            return;
        };
        let all_registrants = matches!(reservation.kind.code(), 7 | 8);
        match &reservation.holder {
            Holder::AllRegistrants if !all_registrants => self.violation(
                now,
                format!(
                    "PR lun {lun}: type {} held by all registrants",
                    reservation.kind.code()
                ),
            ),
            Holder::Registration(_) if all_registrants => self.violation(
                now,
                format!("PR lun {lun}: all-registrants type held by one registrant"),
            ),
            Holder::Registration(id) => {
                let registered = state.registrations.iter().any(|r| {
                    r.initiator_name == id.initiator_name
                        && r.isid == id.isid
                        && r.relative_target_port == id.relative_target_port
                });
                if !registered {
                    self.violation(
                        now,
                        format!("PR lun {lun}: the reservation holder is not a registrant"),
                    );
                }
            }
            Holder::AllRegistrants => {
                if state.registrations.is_empty() {
                    self.violation(
                        now,
                        format!("PR lun {lun}: all-registrants reservation without registrants"),
                    );
                }
            }
        }
    }

    /// WRITE ATOMIC across a power loss (SBC-4 4.29): after the crash store kept or lost each block, the atomic
    /// range holds one write's image whole (the newest, or one flushed before), never part of one write and part
    /// of another. Commands in flight at the crash never reached the store (execution is one step), so this covers
    /// every acknowledged and every unacknowledged WRITE ATOMIC.
    pub fn atomic_writes_after_crash(&mut self, now: Duration, store: &TrackingStore) {
        let blocks: Vec<Vec<u8>> = self
            .atomic_lbas
            .clone()
            .map(|lba| store.block(lba))
            .collect();
        if !atomic_range_is_whole(&blocks) {
            let first = self.atomic_lbas.start;
            let seen: Vec<Option<(u64, u64, u64)>> =
                blocks.iter().map(|b| atomic_block(b)).collect();
            self.violation(
                now,
                format!("atomic: after the crash the WRITE ATOMIC range at lba {first} holds a mix: {seen:x?}"),
            );
        }
    }

    /// Durability of APTPL (SPC-4 5.13.5): after a power loss the state is what it was, when APTPL was in effect,
    /// and empty otherwise.
    pub fn check_restored(&mut self, now: Duration, after: &[PrState]) {
        let before = std::mem::take(&mut self.pr_before_crash);
        for (lun, (was, is)) in before.iter().zip(after).enumerate() {
            let expected = if was.aptpl {
                was.clone()
            } else {
                PrState::default()
            };
            if *is != expected {
                self.violation(
                    now,
                    format!("durability: LUN {lun} PR state after restart is {is:?}, expected {expected:?}"),
                );
            }
            self.pr_generation.insert(lun, is.generation);
        }
    }

    /// Checks a resolver verdict against the truth: `current` is the block as it is at the moment of the verdict.
    pub fn verdict(&mut self, now: Duration, actor: usize, event: &AtsEvent, current: &[u8]) {
        let written = event.written_digest.clone();
        let landed = self.landed.contains(&(actor, event.lba, written.clone()));
        // A read-back may legitimately have missed a delayed attempt that landed after it executed; but a verdict
        // that saw its own image, or that guessed without reading while the image is there, is wrong.
        let saw_own = event.found_digest.as_deref() == Some(event.written_digest.as_str());
        let guessed = event.found_digest.is_none() && digest(current) == written;
        match event.verdict {
            Verdict::Landed | Verdict::OwnWriteLanded if !landed => self.violation(
                now,
                format!(
                    "resolver: a{actor} {} lba {}: verdict {:?} but that write never executed",
                    event.op, event.lba, event.verdict
                ),
            ),
            Verdict::RealConflict | Verdict::NothingLandedRetry | Verdict::GaveUp if saw_own || guessed => self.violation(
                now,
                format!(
                    "resolver: a{actor} {} lba {}: verdict {:?} while its own write is on the disk (outcome {})",
                    event.op, event.lba, event.verdict, event.outcome
                ),
            ),
            _ => {}
        }
    }
}

/// The LBA of a well-formed COMPARE AND WRITE CDB; None for any other.
pub fn caw_lba(cdb: &[u8]) -> Option<u64> {
    match Command::parse(cdb) {
        Ok(Command::CompareAndWrite { lba, .. }) => Some(lba.0),
        _ => None,
    }
}

/// The token of a protected counter block; 0 for a never-written or unreadable block.
pub fn counter_token(block: &[u8]) -> u64 {
    CounterImage::decode(block).map_or(0, |c| c.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks_of(image: &[u8]) -> Vec<Vec<u8>> {
        image.chunks(BLOCK as usize).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn a_whole_write_or_an_untouched_range_passes() {
        let mut range = blocks_of(&atomic_image(7, 3));
        range.extend(vec![vec![0u8; BLOCK as usize]; 5]);
        assert!(atomic_range_is_whole(&range));
        assert!(atomic_range_is_whole(&vec![vec![0u8; BLOCK as usize]; 8]));
    }

    /// What a crash store that tears a multi-block write leaves: some blocks of the new write, some of the old one
    /// (or zeros). Each must be caught.
    #[test]
    fn a_torn_write_atomic_is_caught() {
        let (old, new) = (
            blocks_of(&atomic_image(1, 4)),
            blocks_of(&atomic_image(2, 4)),
        );
        for torn_at in 1..4 {
            let mut torn = new[..torn_at].to_vec();
            torn.extend_from_slice(&old[torn_at..]);
            assert!(
                !atomic_range_is_whole(&torn),
                "new up to block {torn_at}, old after"
            );
            let mut lost_first = old[..torn_at].to_vec();
            lost_first.extend_from_slice(&new[torn_at..]);
            assert!(
                !atomic_range_is_whole(&lost_first),
                "old up to block {torn_at}, new after"
            );
            let mut over_zeros = new[..torn_at].to_vec();
            over_zeros.extend(vec![vec![0u8; BLOCK as usize]; 4 - torn_at]);
            assert!(
                !atomic_range_is_whole(&over_zeros),
                "new over a never-written range"
            );
        }
        let mut swapped = new.clone();
        swapped.swap(0, 1);
        assert!(!atomic_range_is_whole(&swapped), "blocks out of place");
    }
}
