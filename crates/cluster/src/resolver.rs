//! The miscompare resolver: every lockspace write goes through [`Host::resolved_ats`].
//!
//! An ATS that answers GOOD has landed. Any other answer that is not definite (MISCOMPARE, timeout, connection loss,
//! task aborted, BUSY, unit attention) is resolved by reading the block back. Every image the lock manager writes
//! is byte-unique (it carries a fresh nonce and an advanced sequence), so the block can only hold:
//! - our new image: our write landed, whatever the target said. A retried heartbeat whose first attempt landed but
//!   whose reply was lost is exactly this case ("ATS Miscompare detected between test and set HB images");
//! - the expected image: nothing landed, so the same write is retried after a jittered backoff, within a bound;
//! - anything else: another host won; the caller gets the found image and the log names its owner.

use crate::disk::{CawOutcome, Clock, Disk, DiskError};
use crate::events::{digest, AtsEvent, Verdict};
use crate::host::Host;
use crate::ClusterError;
use rand::Rng;
use std::time::Duration;

/// How hard to try one write.
#[derive(Clone, Copy, Debug)]
pub struct AtsPolicy {
    /// Per-attempt timeout of the COMPARE AND WRITE and of each read-back.
    pub timeout: Duration,
    /// Attempts in all, counting the first.
    pub max_attempts: u32,
    /// Backoff before a retry is uniformly random in [base, 2 * base).
    pub backoff: Duration,
}

/// What a resolved write came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtsResult {
    /// Our image is on the disk. `false_miscompare` is set when the target's answer said otherwise (or nothing).
    Landed { false_miscompare: bool },
    /// Another image is on the disk: someone else won. The found block is returned for the caller to decode.
    Conflict { found: Vec<u8> },
}

/// What one ATS is, for the log.
pub struct AtsRequest<'a> {
    pub op: &'static str,
    pub target: String,
    pub lba: u64,
    pub expected: &'a [u8],
    pub new: &'a [u8],
    pub policy: AtsPolicy,
}

impl<D: Disk, C: Clock> Host<D, C> {
    /// Writes `request.new` over `request.expected` with COMPARE AND WRITE and decides what happened.
    pub async fn resolved_ats(&self, request: AtsRequest<'_>) -> Result<AtsResult, ClusterError> {
        let lba = self.absolute_lba(request.lba);
        for attempt in 1..=request.policy.max_attempts {
            let started = self.clock.now();
            let outcome = self
                .disk
                .compare_and_write(lba, request.expected, request.new, request.policy.timeout)
                .await;
            let latency = self.clock.now().saturating_sub(started);
            let mut event = self.ats_event(&request, attempt, latency, &outcome);
            let target_offset = match &outcome {
                CawOutcome::Written => {
                    event.verdict = Verdict::Landed;
                    self.log.ats(&event);
                    return Ok(AtsResult::Landed {
                        false_miscompare: false,
                    });
                }
                CawOutcome::Fenced => {
                    event.verdict = Verdict::Fenced;
                    self.log.ats(&event);
                    return Err(ClusterError::Fenced);
                }
                CawOutcome::Failed(why) => {
                    event.verdict = Verdict::Failed;
                    self.log.ats(&event);
                    return Err(ClusterError::CompareAndWrite {
                        lba,
                        cause: why.clone(),
                    });
                }
                CawOutcome::Miscompare { offset } => *offset,
                CawOutcome::Unknown(_) => None,
            };
            event.target_miscompare_offset = target_offset;
            if self.config.broken.naive_resolver {
                if let Some(result) = self.naive_verdict(&request, &outcome, event).await? {
                    return Ok(result);
                }
                continue;
            }
            let found = self.read_back(request.lba, request.policy).await?;
            event.found_digest = Some(digest(&found));
            event.first_diff_offset = first_difference(request.expected, &found);
            let (owner, generation) = self.describe_image(request.lba, &found);
            event.found_owner = owner;
            event.found_generation = generation;
            if found == request.new {
                event.verdict = Verdict::OwnWriteLanded;
                self.log.ats(&event);
                return Ok(AtsResult::Landed {
                    false_miscompare: true,
                });
            }
            if found != request.expected {
                event.verdict = Verdict::RealConflict;
                self.log.ats(&event);
                return Ok(AtsResult::Conflict { found });
            }
            let last = attempt == request.policy.max_attempts;
            event.verdict = if last {
                Verdict::GaveUp
            } else {
                Verdict::NothingLandedRetry
            };
            self.log.ats(&event);
            if !last {
                self.clock.sleep(self.jitter(request.policy.backoff)).await;
            }
        }
        Err(ClusterError::GaveUp {
            op: request.op,
            lba,
            attempts: request.policy.max_attempts,
        })
    }

    /// The broken variant: a MISCOMPARE means "someone else won" without looking, an unknown outcome is retried.
    async fn naive_verdict(
        &self,
        request: &AtsRequest<'_>,
        outcome: &CawOutcome,
        mut event: AtsEvent,
    ) -> Result<Option<AtsResult>, ClusterError> {
        if let CawOutcome::Unknown(_) = outcome {
            event.verdict = Verdict::NothingLandedRetry;
            self.log.ats(&event);
            return Ok(None);
        }
        let found = self.read_back(request.lba, request.policy).await?;
        event.found_digest = Some(digest(&found));
        event.verdict = Verdict::RealConflict;
        self.log.ats(&event);
        Ok(Some(AtsResult::Conflict { found }))
    }

    /// Reads one block of the lockspace, retrying transient failures within the policy's attempt bound.
    pub(crate) async fn read_back(
        &self,
        lba: u64,
        policy: AtsPolicy,
    ) -> Result<Vec<u8>, ClusterError> {
        let mut last = None;
        for _ in 0..policy.max_attempts.max(1) {
            match self.read_blocks(lba, 1, policy.timeout).await {
                Ok(block) => return Ok(block),
                Err(DiskError::Fenced) => return Err(ClusterError::Fenced),
                Err(failed @ (DiskError::Failed { .. } | DiskError::Login(_))) => {
                    return Err(ClusterError::Disk(failed))
                }
                Err(transient @ DiskError::Transient { .. }) => last = Some(transient),
            }
            self.clock.sleep(self.jitter(policy.backoff)).await;
        }
        Err(ClusterError::ReadsFailed {
            lba: self.absolute_lba(lba),
            count: 1,
            attempts: policy.max_attempts.max(1),
            last: last.expect("at least one attempt failed"),
        })
    }

    /// A duration uniformly random in [base, 2 * base).
    pub(crate) fn jitter(&self, base: Duration) -> Duration {
        let base_us = base.as_micros().max(1) as u64;
        let extra = self.with_rng(|rng| rng.gen_range(0..base_us));
        Duration::from_micros(base_us + extra)
    }

    fn ats_event(
        &self,
        request: &AtsRequest<'_>,
        attempt: u32,
        latency: Duration,
        outcome: &CawOutcome,
    ) -> AtsEvent {
        AtsEvent {
            host: self.config.name.clone(),
            lockspace: self.superblock.lockspace_id.to_string(),
            op: request.op,
            target: request.target.clone(),
            lba: self.absolute_lba(request.lba),
            attempt,
            latency_us: latency.as_micros() as u64,
            outcome: describe_outcome(outcome),
            verdict: Verdict::Landed,
            expected_digest: digest(request.expected),
            written_digest: digest(request.new),
            found_digest: None,
            first_diff_offset: None,
            target_miscompare_offset: None,
            found_owner: None,
            found_generation: None,
        }
    }
}

fn describe_outcome(outcome: &CawOutcome) -> String {
    match outcome {
        CawOutcome::Written => "written".into(),
        CawOutcome::Miscompare { .. } => "miscompare".into(),
        CawOutcome::Unknown(why) => format!("unknown: {why}"),
        CawOutcome::Fenced => "fenced".into(),
        CawOutcome::Failed(why) => format!("failed: {why}"),
    }
}

/// The offset of the first byte where two images differ.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
        .map(|i| i as u64)
}

#[cfg(test)]
mod tests {
    use super::first_difference;

    #[test]
    fn first_difference_finds_the_first_byte_or_the_shorter_end() {
        assert_eq!(first_difference(b"abcd", b"abXd"), Some(2));
        assert_eq!(first_difference(b"abcd", b"abcd"), None);
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    }
}
