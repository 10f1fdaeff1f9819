//! The checkers that run at every command the target executes (at the step where its effect happens, while other
//! commands are in flight), at target restarts and on every ATS verdict:
//! CAW linearizability, fencing of the protected counters, PR invariants, durability, and the resolver's verdicts
//! against what really happened. Mutual exclusion and liveness are checked by the actors' referee (`actors.rs`).

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
