//! SANITIZE (SBC-4 5.30) and the sanitize operation model (SBC-4 4.33).
//!
//! - OVERWRITE writes the initialization pattern to every logical block, OVERWRITE COUNT times, inverting it
//!   between passes when INVERT is set so that the last pass writes the pattern itself (SBC-4 5.30.2.2).
//! - BLOCK ERASE and CRYPTOGRAPHIC ERASE deallocate the whole medium on a thin-provisioned LU (LBPRZ=1: every block
//!   then reads as zeros); on a fully provisioned LU they write zeros. Either way the old data cannot be read back,
//!   and reads afterwards complete with GOOD status, as WABEREQ/WACEREQ 01b in VPD page B1h advertise.
//! - EXIT FAILURE MODE leaves the sanitize failure mode of a failed sanitize operation that was started with
//!   AUSE=1 (SBC-4 4.33.3, 5.30.5).
//!
//! While an operation runs, commands from every I_T nexus other than INQUIRY, REPORT LUNS and REQUEST SENSE are
//! terminated with NOT READY, LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS (SBC-4 4.33.2), and REQUEST SENSE
//! reports that condition. The operation holds the whole medium's range lock, so it starts only after every
//! command in flight has completed. A store error ends it in the sanitize failure mode: medium access commands are
//! then terminated with MEDIUM ERROR, SANITIZE COMMAND FAILED until a sanitize operation completes without error
//! or, for an unrestricted (AUSE=1) failure, EXIT FAILURE MODE is received (SBC-4 4.33.3).
//!
//! The operation is not a task (SBC-4 4.33.2): [`LogicalUnit::start_sanitize`] validates the command and marks the
//! operation in progress, and the [`SanitizeOperation`] it returns is run by the runtime on its I/O engine, holding
//! the whole medium. With IMMED=1 the command completes with GOOD as soon as the operation has started; without it,
//! the command completes when the operation does. Resets, aborts and nexus loss end the task, never the operation.
//! While it runs, NOT READY, SANITIZE IN PROGRESS and REQUEST SENSE carry its PROGRESS INDICATION.

use crate::cdb::{Command, SanitizeAction};
use crate::lu::{Admitted, Completed, LogicalUnit, Outcome};
use crate::pr::unit::Refusal;
use crate::range_lock::RangeGuard;
use crate::sense::{Condition, Sense};
use crate::{ScsiCommand, ScsiResponse, SideEffects};
use std::sync::atomic::Ordering;

/// Values of `LogicalUnit::sanitize`.
pub(crate) mod state {
    pub const IDLE: u8 = 0;
    pub const IN_PROGRESS: u8 = 1;
    /// Failed with AUSE=0: only a sanitize operation that completes without error leaves this mode.
    pub const FAILED_RESTRICTED: u8 = 2;
    /// Failed with AUSE=1: EXIT FAILURE MODE leaves it too.
    pub const FAILED_UNRESTRICTED: u8 = 3;
}

/// A started sanitize operation: run it with [`SanitizeOperation::run`] (on a thread that may wait for the disk).
#[derive(Debug)]
pub struct SanitizeOperation {
    immediate: bool,
    data_out_wanted: Option<u32>,
    ause: bool,
    /// The OVERWRITE parameters (None: BLOCK ERASE or CRYPTOGRAPHIC ERASE).
    overwrite: Option<OwnedOverwrite>,
}

#[derive(Debug)]
struct OwnedOverwrite {
    invert: bool,
    count: u8,
    pattern: Vec<u8>,
}

impl SanitizeOperation {
    /// IMMED=1: the command's GOOD goes out now, before the operation completes (SBC-4 5.30.1).
    pub fn immediate(&self) -> bool {
        self.immediate
    }

    /// The GOOD that answers a SANITIZE with IMMED=1 once the operation has started.
    pub fn started_response(&self) -> ScsiResponse {
        ScsiResponse {
            status: crate::ScsiStatus::Good,
            sense: Vec::new(),
            data_in: Vec::new(),
            data_out_wanted: self.data_out_wanted,
            effects: SideEffects::NONE,
        }
    }

    /// Performs the operation and leaves the unit idle, or in the sanitize failure mode on a store error.
    pub fn run(self, unit: &LogicalUnit) -> ScsiResponse {
        let outcome = unit.perform_sanitize(&self);
        unit.response_of(outcome.map_err(Refusal::Check), self.data_out_wanted)
    }
}

/// Bytes written per store call by OVERWRITE.
const OVERWRITE_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// A validated OVERWRITE parameter list (SBC-4 5.30.2.2 Table 135).
struct OverwriteParameters<'a> {
    invert: bool,
    count: u8,
    pattern: &'a [u8],
}

impl LogicalUnit {
    /// The answer to a command arriving while a sanitize operation is in progress (SBC-4 4.33.2): everything but
    /// INQUIRY, REPORT LUNS and REQUEST SENSE is NOT READY, SANITIZE IN PROGRESS. One atomic load otherwise.
    pub(crate) fn sanitize_in_progress_refusal(&self, opcode: u8) -> Option<Sense> {
        use crate::cdb::op;
        if self.sanitize.load(Ordering::Acquire) != state::IN_PROGRESS {
            return None;
        }
        match opcode {
            op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE => None,
            _ => Some(self.sanitize_in_progress_sense()),
        }
    }

    /// NOT READY, SANITIZE IN PROGRESS with the operation's PROGRESS INDICATION (SBC-4 4.33.2).
    pub(crate) fn sanitize_in_progress_sense(&self) -> Sense {
        let progress = self.sanitize_progress.load(Ordering::Relaxed);
        Sense::new(Condition::SanitizeInProgress).with_progress(progress as u16)
    }

    /// A SANITIZE that starts a sanitize operation (every service action but EXIT FAILURE MODE), checked and
    /// started: the reservation check, write protection, the failure-mode rules and the parameter list, then
    /// the operation is marked in progress. None: not such a command (run it with `run_admitted`). Call it while
    /// holding the whole medium (`Admitted::lock_request`) and keep holding it while the operation runs.
    pub fn start_sanitize(
        &self,
        cmd: &ScsiCommand,
        admitted: &Admitted,
        _guard: Option<&RangeGuard>,
    ) -> Option<Result<SanitizeOperation, ScsiResponse>> {
        let Command::Sanitize {
            immediate,
            ause,
            action,
            ..
        } = *admitted.command()
        else {
            return None;
        };
        if action == SanitizeAction::ExitFailureMode {
            return None;
        }
        let started = self.refuse_before_running(cmd, admitted).and_then(|()| {
            self.begin_sanitize(action, immediate, ause, admitted.data_out(cmd))
                .map_err(Refusal::Check)
        });
        Some(
            started
                .map(|operation| SanitizeOperation {
                    data_out_wanted: admitted.data_out_wanted(),
                    ..operation
                })
                .map_err(|refusal| self.refused(refusal, admitted.data_out_wanted())),
        )
    }

    /// True while a sanitize operation is in progress (REQUEST SENSE reports it, SBC-4 4.33.2).
    pub(crate) fn sanitize_in_progress(&self) -> bool {
        self.sanitize.load(Ordering::Acquire) == state::IN_PROGRESS
    }

    /// In the sanitize failure mode, commands that access the medium are terminated with MEDIUM ERROR, SANITIZE
    /// COMMAND FAILED (SBC-4 4.33.3); SANITIZE itself and commands that do not touch the medium still run.
    pub(crate) fn sanitize_failure_refusal(&self, command: &Command) -> Option<Sense> {
        let current = self.sanitize.load(Ordering::Acquire);
        if current != state::FAILED_RESTRICTED && current != state::FAILED_UNRESTRICTED {
            return None;
        }
        let accesses_medium = matches!(
            command,
            Command::Read { .. }
                | Command::Write { .. }
                | Command::WriteAndVerify { .. }
                | Command::Verify { .. }
                | Command::OrWrite { .. }
                | Command::CompareAndWrite { .. }
                | Command::WriteAtomic { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
                | Command::GetLbaStatus { .. }
                | Command::PreFetch { .. }
        );
        accesses_medium.then(|| Sense::new(Condition::SanitizeCommandFailed))
    }

    /// SANITIZE (SBC-4 5.30), start to finish in the caller's thread. The caller holds the whole medium's range
    /// lock and has checked write protection (SBC-4 4.11) for the service actions that change the medium.
    pub(crate) fn sanitize(
        &self,
        action: SanitizeAction,
        ause: bool,
        parameters: &[u8],
    ) -> Outcome {
        if action == SanitizeAction::ExitFailureMode {
            return self.exit_failure_mode();
        }
        let operation = self.begin_sanitize(action, false, ause, parameters)?;
        self.perform_sanitize(&operation)
    }

    /// EXIT FAILURE MODE (SBC-4 5.30.5).
    fn exit_failure_mode(&self) -> Outcome {
        match self.sanitize.load(Ordering::Acquire) {
            // SBC-4 4.33.3: a restricted failure is left only by a sanitize operation that succeeds.
            state::FAILED_RESTRICTED => Err(Sense::invalid_cdb_field(1, Some(4))),
            state::FAILED_UNRESTRICTED => {
                self.sanitize.store(state::IDLE, Ordering::Release);
                Ok(Completed::Good(Vec::new()))
            }
            // Not in the failure mode: there is nothing to exit.
            _ => Ok(Completed::Good(Vec::new())),
        }
    }

    /// Validates a SANITIZE that starts an operation and marks the operation in progress.
    fn begin_sanitize(
        &self,
        action: SanitizeAction,
        immediate: bool,
        ause: bool,
        parameters: &[u8],
    ) -> Result<SanitizeOperation, Sense> {
        // SBC-4 5.30.1: after a restricted failure, a SANITIZE with AUSE=1 is INVALID FIELD IN CDB.
        if self.sanitize.load(Ordering::Acquire) == state::FAILED_RESTRICTED && ause {
            return Err(Sense::invalid_cdb_field(1, Some(5)));
        }
        let overwrite = match action {
            SanitizeAction::Overwrite => {
                let parameters = self.overwrite_parameters(parameters)?;
                Some(OwnedOverwrite {
                    invert: parameters.invert,
                    count: parameters.count,
                    pattern: parameters.pattern.to_vec(),
                })
            }
            _ => None,
        };
        self.sanitize_progress.store(0, Ordering::Relaxed);
        self.sanitize.store(state::IN_PROGRESS, Ordering::Release);
        Ok(SanitizeOperation {
            immediate,
            data_out_wanted: None,
            ause,
            overwrite,
        })
    }

    /// The operation itself; leaves the unit idle or in the failure mode.
    fn perform_sanitize(&self, operation: &SanitizeOperation) -> Outcome {
        let result = match &operation.overwrite {
            Some(overwrite) => self.overwrite_medium(&OverwriteParameters {
                invert: overwrite.invert,
                count: overwrite.count,
                pattern: &overwrite.pattern,
            }),
            None => self.erase_medium(),
        }
        .and_then(|()| self.store.flush());
        match result {
            Ok(()) => {
                self.sanitize.store(state::IDLE, Ordering::Release);
                Ok(Completed::Good(Vec::new()))
            }
            Err(_) => {
                let failed = if operation.ause {
                    state::FAILED_UNRESTRICTED
                } else {
                    state::FAILED_RESTRICTED
                };
                self.sanitize.store(failed, Ordering::Release);
                Err(Sense::new(Condition::SanitizeCommandFailed))
            }
        }
    }

    /// SBC-4 5.30.1 Table 133 and 5.30.2.2: PARAMETER LIST LENGTH from 5 to block length + 4 (else INVALID FIELD
    /// IN CDB); OVERWRITE COUNT 0 is reserved, TEST other than 00b is not supported, INITIALIZATION PATTERN
    /// LENGTH from 1 to the block length (each else INVALID FIELD IN PARAMETER LIST); a pattern longer than the
    /// list that carries it is PARAMETER LIST LENGTH ERROR.
    fn overwrite_parameters<'a>(
        &self,
        parameters: &'a [u8],
    ) -> Result<OverwriteParameters<'a>, Sense> {
        let length = parameters.len() as u64;
        if length < 5 || length > self.block_size + 4 {
            return Err(Sense::invalid_cdb_field(7, None));
        }
        let count = parameters[0] & 0x1F;
        if count == 0 {
            return Err(Sense::invalid_parameter_field(0, Some(4)));
        }
        if parameters[0] & 0x60 != 0 {
            return Err(Sense::invalid_parameter_field(0, Some(6)));
        }
        let pattern_length = u16::from_be_bytes([parameters[2], parameters[3]]) as u64;
        if pattern_length == 0 || pattern_length > self.block_size {
            return Err(Sense::invalid_parameter_field(2, None));
        }
        if 4 + pattern_length > length {
            return Err(Sense::new(Condition::ParameterListLengthError));
        }
        Ok(OverwriteParameters {
            invert: parameters[0] & 0x80 != 0,
            count,
            pattern: &parameters[4..4 + pattern_length as usize],
        })
    }

    /// Every pass writes every block with the pattern repeated from the block's first byte (SBC-4 5.30.2.2).
    fn overwrite_medium(&self, parameters: &OverwriteParameters) -> std::io::Result<()> {
        let block: Vec<u8> = parameters
            .pattern
            .iter()
            .copied()
            .cycle()
            .take(self.block_size as usize)
            .collect();
        let inverse: Vec<u8> = block.iter().map(|byte| !byte).collect();
        let chunk_blocks = (OVERWRITE_CHUNK_BYTES / self.block_size).max(1) as usize;
        for pass in 0..parameters.count {
            // With INVERT the pattern alternates so that the last pass writes it as given.
            let inverted = parameters.invert && (parameters.count - 1 - pass) % 2 == 1;
            let passes = Progress {
                done: pass as u64,
                of: parameters.count as u64,
            };
            self.fill_medium(
                if inverted { &inverse } else { &block },
                chunk_blocks,
                passes,
            )?;
        }
        Ok(())
    }

    /// BLOCK ERASE and CRYPTOGRAPHIC ERASE: deallocate everything when deallocated blocks read as zeros (LBPRZ=1),
    /// else write zeros: a discard whose blocks read back as anything could leave the old data readable.
    fn erase_medium(&self) -> std::io::Result<()> {
        let capacity = self.capacity_blocks * self.block_size;
        if self.unmapped_reads_zero() {
            if capacity > 0 {
                self.store.deallocate(0, capacity)?;
            }
            return Ok(());
        }
        let zeros = vec![0u8; self.block_size as usize];
        self.fill_medium(
            &zeros,
            (OVERWRITE_CHUNK_BYTES / self.block_size).max(1) as usize,
            Progress { done: 0, of: 1 },
        )
    }

    /// Writes `block` to every logical block, `chunk_blocks` blocks per store call, as pass `passes.done` of
    /// `passes.of`, updating the PROGRESS INDICATION as it goes.
    fn fill_medium(
        &self,
        block: &[u8],
        chunk_blocks: usize,
        passes: Progress,
    ) -> std::io::Result<()> {
        let chunk_blocks = chunk_blocks.min(self.capacity_blocks.max(1) as usize);
        let chunk: Vec<u8> = block
            .iter()
            .copied()
            .cycle()
            .take(block.len() * chunk_blocks)
            .collect();
        let capacity = self.capacity_blocks * self.block_size;
        let mut offset = 0u64;
        while offset < capacity {
            let this = (capacity - offset).min(chunk.len() as u64) as usize;
            self.store.write_at(&chunk[..this], offset)?;
            offset += this as u64;
            self.sanitize_progress
                .store(passes.fraction(offset, capacity), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Where an operation of several passes is: `done` whole passes of `of`.
#[derive(Clone, Copy)]
struct Progress {
    done: u64,
    of: u64,
}

impl Progress {
    /// The PROGRESS INDICATION (SPC-4 4.5.2.4.4: a numerator over 65536) after `offset` of `capacity` bytes of the
    /// current pass.
    fn fraction(self, offset: u64, capacity: u64) -> u32 {
        let total = (self.of.max(1) as u128) * (capacity.max(1) as u128);
        let done = (self.done as u128) * (capacity as u128) + offset as u128;
        ((done * 65535) / total).min(65535) as u32
    }
}
