//! One SCSI command's way through the runtime, and the tasks in flight on each logical unit.
//!
//! A command runs as a future owned by its connection task, beside the others of its session:
//! 1. `LogicalUnit::admit`: unit attention, decode and Data-Out checks (no I/O, no lock);
//! 2. its LBA range lock, awaited: the command parks, its thread does not (scsi::range_lock);
//! 3. execution: in-memory commands inline; a READ the page cache holds inline through RWF_NOWAIT; anything else
//!    that may wait for the disk on the LUN's I/O engine (`engine`); EXTENDED COPY chunk by chunk on the engines
//!    of the LUNs it copies between (`xcopy`).
//!
//! Every command in flight is registered with its LUN ([`LunRuntime`]), so task management and PREEMPT AND ABORT
//! can abort it: a command not yet running stops at its next step, one already running finishes its I/O (its
//! buffers stay with the engine until then) and its response is discarded. Whoever aborted it waits for it to
//! be gone before answering (SAM-5 7.1, 7.6; SPC-4 5.13.11.5).

use crate::engine::IoEngine;
use crate::latch::Latch;
use crate::server::Shared;
use crate::uring::Uring;
use lunlock_scsi::cdb::Command;
use lunlock_scsi::hold_time::{timed, SharedLock, Timed};
use lunlock_scsi::range_lock::RangeGuard;
use lunlock_scsi::sense::{Condition, Sense};
use lunlock_scsi::{
    Admission, Admitted, BlockIo, ItNexus, LogicalUnit, NexusAccess, SanitizeOperation,
    ScsiCommand, ScsiResponse, ScsiStatus, SideEffects, TaskAttribute,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A logical unit as the runtime serves it: the sans-IO unit, its I/O engine and its tasks in flight.
pub struct LunRuntime {
    pub unit: Arc<LogicalUnit>,
    pub engine: Arc<IoEngine>,
    /// The arbitration threads: COMPARE AND WRITE and PERSISTENT RESERVE OUT run here, scheduled ahead of bulk
    /// I/O (`lunlock_scsi::registry::Row::arbitrates`).
    pub arbitration: Arc<IoEngine>,
    /// With the io_uring engine: READ and WRITE go through this ring; everything else through `engine`.
    pub uring: Option<Arc<Uring>>,
    /// Commands, bytes and COMPARE AND WRITE outcomes, for `/metrics` and the admin API.
    pub metrics: crate::metrics::LunMetrics,
    tasks: Mutex<HashMap<u64, Arc<TaskControl>>>,
    next_key: AtomicU64,
}

/// What others can do to a task in flight: abort it, and wait for it to be gone.
pub struct TaskControl {
    pub nexus: Arc<ItNexus>,
    aborted: Latch,
    /// Set when the task is gone (its registration dropped: finished, aborted, or its connection closed).
    gone: Latch,
}

impl TaskControl {
    pub fn abort(&self) {
        self.aborted.set();
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.is_set()
    }

    /// Resolves once `abort` has been called.
    pub(crate) async fn aborted(&self) {
        self.aborted.wait().await
    }

    async fn gone(&self) {
        self.gone.wait().await
    }

    fn mark_gone(&self) {
        self.gone.set();
    }
}

/// Waits until every task in `tasks` is gone.
pub async fn wait_until_gone(tasks: Vec<Arc<TaskControl>>) {
    for task in tasks {
        task.gone().await;
    }
}

/// A task's registration with its LUN; dropping it unregisters the task and wakes whoever waits for it.
pub struct Registration {
    lun: Arc<LunRuntime>,
    key: u64,
    pub control: Arc<TaskControl>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.lun.tasks().remove(&self.key);
        self.control.mark_gone();
    }
}

impl LunRuntime {
    pub fn new(
        unit: Arc<LogicalUnit>,
        engine: Arc<IoEngine>,
        arbitration: Arc<IoEngine>,
        uring: Option<Arc<Uring>>,
    ) -> Arc<LunRuntime> {
        Arc::new(LunRuntime {
            unit,
            engine,
            arbitration,
            uring,
            metrics: Default::default(),
            tasks: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
        })
    }

    /// Registers a task of `nexus` as in flight on this LUN.
    pub fn register(self: &Arc<Self>, nexus: &Arc<ItNexus>) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(TaskControl {
            nexus: Arc::clone(nexus),
            aborted: Latch::default(),
            gone: Latch::default(),
        });
        self.tasks().insert(key, Arc::clone(&control));
        Registration {
            lun: Arc::clone(self),
            key,
            control,
        }
    }

    /// Aborts every task in flight that `selected` picks, and returns what to wait on and the nexuses
    /// whose tasks were aborted (each once).
    pub fn abort_where(
        &self,
        selected: impl Fn(&Arc<TaskControl>) -> bool,
    ) -> (Vec<Arc<TaskControl>>, Vec<Arc<ItNexus>>) {
        let tasks = self.tasks();
        let mut receivers = Vec::new();
        let mut nexuses: Vec<Arc<ItNexus>> = Vec::new();
        for control in tasks.values().filter(|c| selected(c)) {
            control.abort();
            receivers.push(Arc::clone(control));
            if !nexuses.iter().any(|n| **n == *control.nexus) {
                nexuses.push(Arc::clone(&control.nexus));
            }
        }
        (receivers, nexuses)
    }

    /// Tasks in flight on this LUN now.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks().len()
    }

    /// Tasks of `nexus` in flight on this LUN now.
    pub fn tasks_of(&self, nexus: &ItNexus) -> usize {
        self.tasks()
            .values()
            .filter(|control| *control.nexus == *nexus)
            .count()
    }

    fn tasks(&self) -> Timed<std::sync::MutexGuard<'_, HashMap<u64, Arc<TaskControl>>>> {
        timed(SharedLock::LunTasks, crate::server::lock(&self.tasks))
    }
}

/// A command handed to a LUN, owning its CDB and Data-Out.
pub struct CommandRequest {
    pub nexus: Arc<ItNexus>,
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub data_out: Vec<u8>,
    pub expected_transfer_length: u32,
    pub task_tag: u64,
    pub attribute: TaskAttribute,
    /// The session registry: it tells the logical unit which nexuses are logged in now, which REGISTER AND MOVE
    /// asks when its TransportID names an initiator without ISID (SPC-4 5.13.8). Owned, since the command may run
    /// on an engine thread.
    pub sessions: Arc<Shared>,
    /// What the nexus may access: the target's ACL entry for its initiator, when the command arrived.
    pub access: Arc<NexusAccess>,
}

impl CommandRequest {
    pub(crate) fn as_command(&self) -> ScsiCommand<'_> {
        ScsiCommand {
            nexus: &self.nexus,
            lun: self.lun,
            cdb: &self.cdb,
            data_out: &self.data_out,
            expected_transfer_length: self.expected_transfer_length,
            task_tag: self.task_tag,
            attribute: self.attribute,
            logged_in: &*self.sessions,
            access: &self.access,
        }
    }
}

/// How a command ended.
pub enum Executed {
    /// It ran (or was refused): its response. The response's side effects name the nexuses a PREEMPT AND ABORT
    /// preempted, whose sessions must drop what they still hold for this LUN.
    Done(ScsiResponse),
    /// It was aborted: no response goes out.
    Aborted,
}

/// Runs one command on its LUN (see the module comment). `registration` ties it to the LUN's tasks in flight.
/// `stall` is fault injection's slow disk: a wait while holding the range, before the I/O.
pub async fn run_command(
    lun: Arc<LunRuntime>,
    registration: Registration,
    request: CommandRequest,
    stall: Duration,
) -> Executed {
    let control = Arc::clone(&registration.control);
    let outcome = execute(&lun, &control, request, stall).await;
    if control.is_aborted() {
        return Executed::Aborted;
    }
    drop(registration);
    outcome
}

async fn execute(
    lun: &Arc<LunRuntime>,
    control: &Arc<TaskControl>,
    request: CommandRequest,
    stall: Duration,
) -> Executed {
    if control.is_aborted() {
        return Executed::Aborted;
    }
    let admitted = match lun.unit.admit(&request.as_command()) {
        Admission::Done(response) => return done(response),
        Admission::Ready(admitted) => admitted,
    };
    if lun
        .unit
        .reservation_refuses(&request.as_command(), &admitted)
    {
        // The reservation may belong to a nexus whose connection its peer has just closed: see that loss first,
        // so the command is refused only because of nexuses that exist when it arrived. The check that counts
        // comes later, under the command's range.
        request
            .sessions
            .settle_closed_peers(&request.nexus.target_name)
            .await;
    }
    let guard = match admitted.lock_request() {
        None => None,
        Some(lock) => tokio::select! {
            guard = lun.unit.range_locks().lock(lock) => Some(guard),
            _ = control.aborted() => return Executed::Aborted,
        },
    };
    if !stall.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(stall) => {}
            _ = control.aborted() => return Executed::Aborted,
        }
    }
    if control.is_aborted() {
        return Executed::Aborted;
    }
    let command = request.as_command();
    if let Some(started) = lun.unit.start_sanitize(&command, &admitted, guard.as_ref()) {
        return match started {
            Err(refused) => done(refused),
            Ok(operation) => run_sanitize(lun, control, operation, guard).await,
        };
    }
    if matches!(admitted.command(), Command::ExtendedCopy { .. }) {
        // The copy may span the target's LUNs that this nexus's ACL lets it see, and takes its own ranges, chunk
        // by chunk (`crate::xcopy`). A descriptor naming a masked LUN finds no such LU and is refused.
        let target_luns = request
            .sessions
            .target(&request.nexus.target_name)
            .map(|target| {
                target
                    .luns
                    .iter()
                    .filter(|(id, _)| request.access.sees(**id))
                    .map(|(_, runtime)| Arc::clone(runtime))
                    .collect()
            })
            .unwrap_or_default();
        return crate::xcopy::run_extended_copy(lun, control, &command, &admitted, target_luns)
            .await;
    }
    if !admitted.may_wait_for_disk() {
        return done(lun.unit.run_admitted(&command, &admitted, guard.as_ref()));
    }
    if let Some(response) = lun
        .unit
        .try_run_without_waiting(&command, &admitted, guard.as_ref())
    {
        return done(response);
    }
    // FUA asks for the data on the medium before GOOD (SBC-4 4.15), not for the range to stay locked until then:
    // the write itself runs under the range, then the range is released and the flush is shared with every other
    // flush in flight (group commit). Whatever reads the new data meanwhile depends on it only through commands
    // that flush it themselves before their own GOOD: one fdatasync covers every write completed before it.
    let (admitted, fua) = admitted.deferring_fua();
    if let Some(uring) = &lun.uring {
        if let Some(answer) = run_on_ring(lun, uring, &command, &admitted).await {
            drop(guard);
            return done(make_durable_if(fua, lun, answer).await);
        }
    }
    let (response, guard) = run_on_engine(lun, request, admitted, guard, fua).await;
    let preempted = &response.effects.aborted_nexuses;
    if !preempted.is_empty() {
        // PREEMPT AND ABORT (SPC-4 5.13.11.5): the preempted nexuses' tasks are aborted before the range is
        // released, so none of those queued behind it runs; then we wait for them to be gone.
        abort_preempted(lun, control, preempted).await;
    }
    drop(guard);
    Executed::Done(response)
}

/// A sanitize operation is not a task (SBC-4 4.33.2): it runs on the engine to its end, holding the whole medium,
/// whatever happens to the command that started it (an abort, a reset, the connection's loss). With IMMED=1 the
/// command is answered GOOD at once; otherwise it waits for the operation, unless it is aborted first.
async fn run_sanitize(
    lun: &Arc<LunRuntime>,
    control: &Arc<TaskControl>,
    operation: SanitizeOperation,
    guard: Option<RangeGuard>,
) -> Executed {
    let started = operation.started_response();
    let immediate = operation.immediate();
    let unit = Arc::clone(&lun.unit);
    let engine = Arc::clone(&lun.engine);
    let running = tokio::spawn(async move {
        let job = move || {
            let response = operation.run(&unit);
            drop(guard);
            response
        };
        engine.run(job).await
    });
    if immediate {
        return done(started);
    }
    tokio::select! {
        finished = running => match finished {
            Ok(Ok(response)) => done(response),
            _ => done(internal_failure(&lun.unit)),
        },
        _ = control.aborted() => Executed::Aborted,
    }
}

fn done(response: ScsiResponse) -> Executed {
    Executed::Done(response)
}

/// With `fua`, makes a successful write durable before its GOOD goes out, on the engine (the flush is shared with
/// the others in flight, see `lunlock_store::group_commit`). A failed flush turns the GOOD into the write error.
async fn make_durable_if(fua: bool, lun: &Arc<LunRuntime>, response: ScsiResponse) -> ScsiResponse {
    if !fua || response.status != ScsiStatus::Good {
        return response;
    }
    let unit = Arc::clone(&lun.unit);
    match lun.engine.run(move || unit.make_durable(response)).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!("{error}");
            internal_failure(&lun.unit)
        }
    }
}

/// READ and WRITE through the LUN's ring (the caller holds the range). None: not such a command, or the ring
/// could not take it now (the thread engine runs it instead; nothing was done).
async fn run_on_ring(
    lun: &LunRuntime,
    uring: &Uring,
    command: &ScsiCommand<'_>,
    admitted: &Admitted,
) -> Option<ScsiResponse> {
    let io = match lun.unit.plan_block_io(command, admitted)? {
        Ok(io) => io,
        Err(refused) => return Some(refused),
    };
    let result = match io {
        BlockIo::Read { offset, len } => uring.read(offset, len).await,
        BlockIo::Write { offset, len, fua } => {
            let data = &admitted.data_out(command)[..len];
            uring.write(offset, data, fua).await.map(|()| Vec::new())
        }
    };
    if matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
        return None;
    }
    if result.is_err() {
        // finish_block_io logs the failure with its cause and the sense it becomes; this adds where it happened.
        tracing::debug!("{uring:?}: {io:?} failed");
    }
    Some(lun.unit.finish_block_io(admitted, io, result))
}

/// Runs an admitted command on the LUN's I/O engine; the job owns the request and the range guard until the
/// store calls are done, and gives the guard back so the caller decides when the range is released. With `fua`
/// (a write run with [`Admitted::deferring_fua`]) the same job releases the range and then makes the write durable:
/// one trip to the engine, and the flush holds back nobody waiting for the range.
async fn run_on_engine(
    lun: &Arc<LunRuntime>,
    request: CommandRequest,
    admitted: Admitted,
    guard: Option<RangeGuard>,
    fua: bool,
) -> (ScsiResponse, Option<RangeGuard>) {
    let unit = Arc::clone(&lun.unit);
    let engine = if admitted.command().arbitrates() {
        &lun.arbitration
    } else {
        &lun.engine
    };
    let job = move || {
        let response = unit.run_admitted(&request.as_command(), &admitted, guard.as_ref());
        if !fua {
            return (response, guard);
        }
        drop(guard);
        (unit.make_durable(response), None)
    };
    match engine.run(job).await {
        Ok(done) => done,
        Err(error) => {
            tracing::error!("{error}");
            (internal_failure(&lun.unit), None)
        }
    }
}

fn internal_failure(unit: &LogicalUnit) -> ScsiResponse {
    ScsiResponse {
        status: ScsiStatus::CheckCondition,
        sense: unit.encode_sense(&Sense::new(Condition::InternalTargetFailure)),
        data_in: Vec::new(),
        data_out_wanted: None,
        effects: SideEffects::NONE,
    }
}

/// Aborts the preempted nexuses' tasks on this LUN (except `own`, the PREEMPT AND ABORT itself, whose nexus may
/// be among them) and waits for them. The Control mode page reports TAS=0, so they end without status, and each
/// nexus that lost a task gets COMMANDS CLEARED BY ANOTHER INITIATOR (SAM-5 5.6; SPC-4 7.5.8).
async fn abort_preempted(lun: &Arc<LunRuntime>, own: &Arc<TaskControl>, preempted: &[ItNexus]) {
    let (gone, nexuses) =
        lun.abort_where(|control| !Arc::ptr_eq(control, own) && preempted.contains(&control.nexus));
    for nexus in &nexuses {
        lun.unit
            .unit_attentions()
            .establish(nexus, Condition::CommandsClearedByAnotherInitiator);
    }
    wait_until_gone(gone).await;
}
