//! EXTENDED COPY inside the target: the copy's chunks move from one LUN's store to another's on their I/O engines,
//! never through the initiator and never blocking a reactor thread.
//!
//! The `scsi` crate parses, checks and plans the copy (`LogicalUnit::start_extended_copy`); this module carries
//! the plan out. Per chunk (at most 1 MiB): wait for the source range shared, read it on the source LUN's engine,
//! release it; wait for the destination range exclusive, write it on the destination LUN's engine, release it.
//! Holding one range at a time, a copy never waits while holding another range, so copies in opposite directions
//! or within one LUN cannot deadlock, and the range lock table's FIFO order keeps them fair to other commands.
//! An abort is seen while waiting for a range; a chunk already on an engine finishes first.
//!
//! The copy may name exactly the LUNs of the target the nexus is logged in to (its login checked the target's
//! `allowed_initiators`): the plan is made over those, so a CSCD naming another target's LUN is refused before
//! anything is read or written (CVE-2020-28374).

use crate::task::{Executed, LunRuntime, TaskControl};
use lunlock_scsi::range_lock::{LockRequest, RangeGuard};
use lunlock_scsi::{Admitted, CopyChunk, CopyFailure, CopyStart, ExtendedCopy, LogicalUnit};
use lunlock_scsi::{ItNexus, ScsiCommand};
use std::sync::Arc;

/// Runs an admitted EXTENDED COPY sent to `lun` (its copy manager) over the LUNs of `target_luns`.
pub(crate) async fn run_extended_copy(
    lun: &Arc<LunRuntime>,
    control: &Arc<TaskControl>,
    command: &ScsiCommand<'_>,
    admitted: &Admitted,
    target_luns: Vec<Arc<LunRuntime>>,
) -> Executed {
    let units: Vec<&LogicalUnit> = target_luns.iter().map(|runtime| &*runtime.unit).collect();
    let mut copy = match lun.unit.start_extended_copy(command, admitted, &units) {
        CopyStart::Answered(response) => return Executed::Done(response),
        CopyStart::Run(copy) => copy,
    };
    match copy_every_chunk(&mut copy, control, command.nexus, &target_luns).await {
        Some(outcome) => Executed::Done(copy.finish(&lun.unit, outcome)),
        // Dropping the copy records it as ended with errors.
        None => Executed::Aborted,
    }
}

/// Copies the plan's chunks in order. None: the task was aborted.
async fn copy_every_chunk(
    copy: &mut ExtendedCopy,
    control: &Arc<TaskControl>,
    nexus: &ItNexus,
    luns: &[Arc<LunRuntime>],
) -> Option<Result<(), CopyFailure>> {
    while let Some(chunk) = copy.next_chunk() {
        let source = &luns[chunk.source];
        let destination = &luns[chunk.destination];
        let guard = locked(source, chunk.source_lock(), control).await?;
        let data = match on_engine(source, chunk, guard, nexus, Step::Read).await {
            Ok(data) => data,
            Err(failure) => return Some(Err(failure)),
        };
        let guard = locked(destination, chunk.destination_lock(), control).await?;
        if let Err(failure) = on_engine(destination, chunk, guard, nexus, Step::Write(data)).await {
            return Some(Err(failure));
        }
        copy.chunk_copied(&chunk);
    }
    Some(Ok(()))
}

/// Waits for a range of `lun`, unless the task is aborted first.
async fn locked(
    lun: &LunRuntime,
    request: LockRequest,
    control: &TaskControl,
) -> Option<RangeGuard> {
    if control.is_aborted() {
        return None;
    }
    tokio::select! {
        guard = lun.unit.range_locks().lock(request) => Some(guard),
        _ = control.aborted() => None,
    }
}

/// One half of a chunk.
enum Step {
    Read,
    Write(Vec<u8>),
}

/// Runs one step of a chunk on `lun`'s engine, holding `guard` until the store call returns.
async fn on_engine(
    lun: &Arc<LunRuntime>,
    chunk: CopyChunk,
    guard: RangeGuard,
    nexus: &ItNexus,
    step: Step,
) -> Result<Vec<u8>, CopyFailure> {
    let unit = Arc::clone(&lun.unit);
    let nexus = nexus.clone();
    let job = move || {
        let result = match step {
            Step::Read => unit.read_copy_chunk(&nexus, &chunk),
            Step::Write(data) => unit
                .write_copy_chunk(&nexus, &chunk, &data)
                .map(|()| Vec::new()),
        };
        drop(guard);
        result
    };
    match lun.engine.run(job).await {
        Ok(result) => result,
        Err(error) => {
            tracing::warn!("EXTENDED COPY: {error}");
            Err(chunk.engine_failure())
        }
    }
}
