//! A logical unit (SAM-5 4.6.19): decodes a command, applies the checks every command shares, and executes it over
//! a [`BlockStore`].
//!
//! Order of checks for every command (SAM-5 5.14, SPC-4 5.14, SBC-4 4.15):
//! 1. unit attention (except INQUIRY, REPORT LUNS, REQUEST SENSE, which neither report nor clear one);
//! 2. CDB decode ([`Command::parse`]): opcode, reserved/unsupported fields, control byte;
//! 3. Data-Out length agrees with the CDB (else 0E/03, nothing written; RFC 7143 11.4.5.1 allows this answer);
//! 4. reservations ([`crate::pr`], SPC-4 5.13.1, SPC-2 5.5.1): RESERVATION CONFLICT; a single atomic load when no
//!    reservation of any kind exists;
//! 5. the command's own checks (range, limits, write protection) and execution.
//!
//! Shared state is small and behind fine-grained locks or atomics; none is held across store I/O, and READ/WRITE
//! touch only the unit-attention shard of their own nexus.

use crate::alua::TargetPortGroups;
use crate::cdb::Command;
use crate::pr::unit::{PrPersistence, Refusal, Reservations};
use crate::pr::wire::PrOutCdb;
use crate::pr::{decode_pr_state, PrState, PrStateError};
use crate::range_lock::{LockRequest, RangeGuard, RangeLocks};
use crate::sense::{Condition, Sense};
use crate::ua::UnitAttentions;
use crate::{ItNexus, ResetKind, ScsiCommand, ScsiResponse, ScsiStatus, SideEffects};
use lunlock_store::journal::AtomicJournal;
use lunlock_store::BlockStore;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Identity and behaviour of one logical unit, chosen by the target's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalUnitConfig {
    /// Logical block size in bytes (512 or 4096 typically); a power of two, at least 512.
    pub block_size: u32,
    /// Physical block size in bytes: a power-of-two multiple of `block_size`, at most 2^15 logical blocks (the
    /// exponent is a 4-bit field). 4096 with 512-byte logical blocks is a 512e drive. It is the granularity of
    /// what the LU reports about itself: LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY (16)), the
    /// optimal transfer and unmap granularities (VPD B0h) and the extents of GET LBA STATUS.
    pub physical_block_size: u32,
    /// T10 vendor identification (INQUIRY bytes 8..16), ASCII, padded or cut to 8 bytes.
    pub vendor: String,
    /// Product identification, 16 bytes.
    pub product: String,
    /// Product revision level, 4 bytes.
    pub revision: String,
    /// Unit serial number (VPD page 80h).
    pub serial: String,
    /// NAA IEEE Registered Extended designator (SPC-4 7.8.6.6.5), 16 bytes, first nibble 6.
    pub naa: [u8; 16],
    pub read_only: bool,
    /// Thin provisioning (SBC-4 4.7): UNMAP, WRITE SAME with UNMAP, GET LBA STATUS, LBPME.
    pub thin_provisioned: bool,
}

/// What [`LogicalUnit::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Answered without touching the medium (unit attention, bad CDB, ...).
    Done(ScsiResponse),
    /// Passed the checks: wait for its range, then [`LogicalUnit::run_admitted`].
    Ready(Admitted),
}

/// A command that passed admission: decoded, with the Data-Out it will use.
#[derive(Debug)]
pub struct Admitted {
    command: Command,
    /// How much of the received Data-Out the command uses (a prefix).
    data_out_len: usize,
    data_out_wanted: Option<u32>,
    lock: Option<LockRequest>,
}

impl Admitted {
    /// The LBA range the command must hold while it runs, if any.
    pub fn lock_request(&self) -> Option<LockRequest> {
        self.lock
    }

    /// The decoded command.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// The part of the received Data-Out the command uses.
    pub fn data_out<'d>(&self, cmd: &ScsiCommand<'d>) -> &'d [u8] {
        &cmd.data_out[..self.data_out_len.min(cmd.data_out.len())]
    }

    pub(crate) fn data_out_wanted(&self) -> Option<u32> {
        self.data_out_wanted
    }

    /// The same command with its FUA bit cleared, and whether it was set, for a WRITE, ORWRITE, COMPARE AND WRITE
    /// or WRITE ATOMIC. The caller runs the returned command under the range lock, may release the range, and then must call
    /// [`LogicalUnit::make_durable`] before answering: FUA asks for durability before the status (SBC-4 4.15), and
    /// the flush then need not hold back the commands waiting for the range. Any other command comes back as is.
    pub fn deferring_fua(mut self) -> (Admitted, bool) {
        let fua = match &mut self.command {
            Command::Write { fua, .. }
            | Command::OrWrite { fua, .. }
            | Command::CompareAndWrite { fua, .. }
            | Command::WriteAtomic { fua, .. } => fua,
            _ => return (self, false),
        };
        let had = std::mem::replace(fua, false);
        (self, had)
    }

    /// Whether running it may wait for the disk (see [`Command::may_wait_for_disk`]).
    pub fn may_wait_for_disk(&self) -> bool {
        self.command.may_wait_for_disk()
    }
}

/// The outcome of a successfully executed command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    Good(Vec<u8>),
    ConditionMet,
}

pub(crate) type Outcome = Result<Completed, Sense>;

/// Mode parameters that can be changed by MODE SELECT (SPC-4 7.5.8 Control page, SBC-4 6.5.5 Caching page).
pub(crate) struct ModeState {
    /// D_SENSE: report descriptor-format sense data.
    pub descriptor_sense: AtomicBool,
    /// SWP: software write protect.
    pub software_write_protect: AtomicBool,
    /// WCE: write cache enabled (reported; lunlock always honours FUA and SYNCHRONIZE CACHE).
    pub write_cache_enabled: AtomicBool,
}

pub struct LogicalUnit {
    pub(crate) config: LogicalUnitConfig,
    pub(crate) store: Arc<dyn BlockStore>,
    pub(crate) block_size: u64,
    pub(crate) capacity_blocks: u64,
    pub(crate) unit_attentions: UnitAttentions,
    pub(crate) mode: ModeState,
    /// Nexuses holding a PREVENT ALLOW MEDIUM REMOVAL prevention (SBC-4 5.13, SPC-4 6.13).
    pub(crate) prevent_removal: Mutex<HashSet<ItNexus>>,
    /// Serialises MODE SELECT so concurrent selects of different pages never interleave their validation.
    pub(crate) mode_select: Mutex<()>,
    /// Persistent and SCSI-2 reservations.
    pub(crate) reservations: Reservations,
    /// LBA range locks: COMPARE AND WRITE atomicity (see `range_lock`).
    pub(crate) range_locks: RangeLocks,
    /// Sanitize operation state (`crate::sanitize::state`, SBC-4 4.33).
    pub(crate) sanitize: AtomicU8,
    /// Progress of the sanitize operation in progress, in 65536ths (SBC-4 4.33.2, SPC-4 4.5.2.4.4).
    pub(crate) sanitize_progress: AtomicU32,
    /// Why the LU is offline (its saved state could not be restored), when it is: it then answers only INQUIRY
    /// and REPORT LUNS, and everything else with NOT READY, MANUAL INTERVENTION REQUIRED.
    pub(crate) offline: Option<String>,
    /// The target's ports in target port groups (`crate::alua`), for REPORT TARGET PORT GROUPS and VPD page 83h.
    pub(crate) port_groups: Arc<TargetPortGroups>,
    /// The copy manager's records of EXTENDED COPY commands, for RECEIVE COPY RESULTS (`crate::xcopy`).
    pub(crate) copies: Arc<crate::xcopy::CopyRecords>,
    /// Makes WRITE ATOMIC of several blocks all or nothing across a power loss (`lunlock_store::journal`); without
    /// it the LU promises one block, what every backing writes whole.
    pub(crate) atomic_journal: Option<Arc<AtomicJournal>>,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("config", &self.config)
            .field("capacity_blocks", &self.capacity_blocks)
            .finish()
    }
}

impl LogicalUnit {
    pub fn new(config: LogicalUnitConfig, store: Arc<dyn BlockStore>) -> LogicalUnit {
        assert!(
            config.block_size >= 512 && config.block_size.is_power_of_two(),
            "block size must be a power of two >= 512"
        );
        assert!(
            config.physical_block_size.is_power_of_two()
                && config.physical_block_size >= config.block_size
                && config.physical_block_size / config.block_size <= 1 << 15,
            "physical block size must be a power-of-two multiple of the block size, at most 2^15 blocks"
        );
        let block_size = config.block_size as u64;
        let capacity_blocks = store.capacity_bytes() / block_size;
        LogicalUnit {
            config,
            store,
            block_size,
            capacity_blocks,
            unit_attentions: UnitAttentions::new(),
            mode: ModeState {
                descriptor_sense: AtomicBool::new(false),
                software_write_protect: AtomicBool::new(false),
                write_cache_enabled: AtomicBool::new(true),
            },
            prevent_removal: Mutex::new(HashSet::new()),
            mode_select: Mutex::new(()),
            reservations: Reservations::default(),
            range_locks: RangeLocks::default(),
            sanitize: AtomicU8::new(crate::sanitize::state::IDLE),
            sanitize_progress: AtomicU32::new(0),
            offline: None,
            port_groups: Arc::new(TargetPortGroups::default()),
            copies: Arc::default(),
            atomic_journal: None,
        }
    }

    /// Limits the registrations this LU keeps (default [`crate::pr::MAX_REGISTRATIONS`]): one more REGISTER, or a
    /// SPEC_I_PT list that would pass it, fails with INSUFFICIENT REGISTRATION RESOURCES (SPC-4 5.13.7).
    pub fn with_registration_limit(mut self, limit: usize) -> LogicalUnit {
        self.reservations.set_registration_limit(limit);
        self
    }

    /// Installs the journal that makes WRITE ATOMIC of up to its capacity all or nothing across a power loss
    /// (SBC-4 4.29). The caller recovers it against this LU's store first ([`AtomicJournal::recover`]), so no
    /// interrupted write is left half done when the LU starts answering.
    pub fn with_atomic_journal(mut self, journal: Arc<AtomicJournal>) -> LogicalUnit {
        self.atomic_journal = Some(journal);
        self
    }

    /// Installs the target's target port groups (SPC-4 5.16), which the runtime knows from its portals. Without
    /// this call the LU reports one group 1 holding relative target port 1 ([`TargetPortGroups::default`]).
    pub fn with_target_port_groups(mut self, port_groups: Arc<TargetPortGroups>) -> LogicalUnit {
        self.port_groups = port_groups;
        self
    }

    /// Installs APTPL persistence and restores a previously saved state (`restored`: bytes a [`PrPersistence`]
    /// saved, or None when nothing was saved yet). With persistence installed REPORT CAPABILITIES reports PTPL_C
    /// and APTPL is accepted; without it APTPL=1 is INVALID FIELD IN PARAMETER LIST. Restored registrations get no
    /// unit attention of their own: every nexus sees POWER ON, RESET, OR BUS DEVICE RESET OCCURRED first anyway.
    pub fn with_persistence(
        mut self,
        persistence: Arc<dyn PrPersistence>,
        restored: Option<&[u8]>,
    ) -> Result<LogicalUnit, PrStateError> {
        let state = restored.map(decode_pr_state).transpose()?;
        self.reservations.install(persistence, state);
        Ok(self)
    }

    /// A copy of the persistent reservation state (diagnostics and tests).
    pub fn pr_state(&self) -> PrState {
        self.reservations.snapshot()
    }

    pub fn config(&self) -> &LogicalUnitConfig {
        &self.config
    }

    /// Capacity in logical blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    /// The unit attention state, for the reservation code to establish 2Ah conditions.
    pub fn unit_attentions(&self) -> &UnitAttentions {
        &self.unit_attentions
    }

    /// Writes are refused: configured read-only, store read-only, or SWP set (SBC-4 4.11).
    pub(crate) fn write_protected(&self) -> bool {
        self.config.read_only
            || self.store.is_read_only()
            || self.mode.software_write_protect.load(Ordering::Relaxed)
    }

    /// Writes are refused to this command's nexus: the LU is write-protected, or the nexus's ACL exports it
    /// read-only (SBC-4 4.11 applies per I_T nexus: MODE SENSE shows WP to that nexus only).
    pub(crate) fn write_protected_for(&self, cmd: &ScsiCommand) -> bool {
        self.write_protected() || cmd.access.read_only
    }

    /// Sense bytes in the format the Control mode page's D_SENSE selects (SPC-4 4.5.1).
    pub fn encode_sense(&self, sense: &Sense) -> Vec<u8> {
        if self.mode.descriptor_sense.load(Ordering::Relaxed) {
            sense.to_descriptor()
        } else {
            sense.to_fixed()
        }
    }

    pub(crate) fn check_condition(
        &self,
        sense: Sense,
        data_out_wanted: Option<u32>,
    ) -> ScsiResponse {
        ScsiResponse {
            status: ScsiStatus::CheckCondition,
            sense: self.encode_sense(&sense),
            data_in: Vec::new(),
            data_out_wanted,
            effects: SideEffects::NONE,
        }
    }

    /// Reconciles the Data-Out received with what the CDB asks for, when the initiator's expected data transfer
    /// length disagreed with the CDB (RFC 7143 11.4.5.1, FCP-4 9.4.2 option a): excess data is ignored; a block
    /// write short of data writes only the whole blocks received. The transport reports the residual either way.
    /// WRITE SAME with more than its one block is refused (see below).
    /// None when the command cannot run on the data received (a short parameter list or comparison block): the
    /// caller answers INVALID FIELD IN COMMAND INFORMATION UNIT (option b) and nothing is written.
    fn fit_data_out<'d>(
        &self,
        command: Command,
        data_out: &'d [u8],
        wanted: u32,
    ) -> Option<(Command, &'d [u8])> {
        let wanted = wanted as usize;
        match data_out.len().cmp(&wanted) {
            std::cmp::Ordering::Equal => Some((command, data_out)),
            // WRITE SAME's Data-Out is one logical block (SBC-4 5.50): more than that means the initiator and the
            // device server disagree on the block length, and replicating the first part of it could write a wrong
            // pattern over the whole range, so the command is refused instead (option b).
            std::cmp::Ordering::Greater if matches!(command, Command::WriteSame { .. }) => None,
            std::cmp::Ordering::Greater => Some((command, &data_out[..wanted])),
            std::cmp::Ordering::Less => {
                let block_size = self.config.block_size as usize;
                let whole_blocks = data_out.len() / block_size;
                let shortened = command.limited_to_blocks(whole_blocks as u64)?;
                Some((shortened, &data_out[..whole_blocks * block_size]))
            }
        }
    }

    /// Takes the LU offline: state it must not run without (its APTPL reservations) could not be restored. It
    /// still identifies itself (INQUIRY, REPORT LUNS) so an operator can see which LU it is; every other command
    /// gets NOT READY, LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED (SPC-4 4.5.6, 04/03) rather than
    /// running as if it had no reservations.
    pub fn offline(mut self, reason: String) -> LogicalUnit {
        self.offline = Some(reason);
        self
    }

    /// Why the LU is offline, if it is.
    pub fn offline_reason(&self) -> Option<&str> {
        self.offline.as_deref()
    }

    /// Executes one command addressed to this logical unit, synchronously: [`LogicalUnit::admit`], then the range
    /// lock (blocking the thread while an overlapping command holds it), then [`LogicalUnit::run_admitted`].
    /// The runtime does the same three steps itself, waiting for the range asynchronously.
    pub fn execute(&self, cmd: &ScsiCommand) -> ScsiResponse {
        match self.admit(cmd) {
            Admission::Done(response) => response,
            Admission::Ready(admitted) => {
                let guard = admitted
                    .lock_request()
                    .map(|request| self.range_locks.lock_blocking(request));
                self.run_admitted(cmd, &admitted, guard.as_ref())
            }
        }
    }

    /// The LBA range locks of this unit, for the runtime to wait on asynchronously.
    pub fn range_locks(&self) -> &RangeLocks {
        &self.range_locks
    }

    /// The checks that need neither the range lock nor the medium (SAM-5 5.14 order: offline, unit attention,
    /// sanitize in progress, CDB decode, Data-Out length). A command that passes them is [`Admitted`]: it then
    /// waits for its range and runs with [`LogicalUnit::run_admitted`].
    pub fn admit(&self, cmd: &ScsiCommand) -> Admission {
        match self.admission(cmd) {
            Ok(admitted) => Admission::Ready(admitted),
            Err(response) => Admission::Done(response),
        }
    }

    fn admission(&self, cmd: &ScsiCommand) -> Result<Admitted, ScsiResponse> {
        let opcode = cmd.cdb.first().copied().unwrap_or(0xFF);
        if self.offline.is_some()
            && !matches!(
                opcode,
                crate::cdb::op::INQUIRY | crate::cdb::op::REPORT_LUNS
            )
        {
            return Err(self.check_condition(
                Sense::new(Condition::LogicalUnitNotReadyManualInterventionRequired),
                None,
            ));
        }
        let parsed = Command::parse(cmd.cdb);
        let data_out_wanted = parsed
            .as_ref()
            .ok()
            .map(|command| {
                command
                    .data_out_length(self.config.block_size)
                    .min(u32::MAX as u64) as u32
            })
            .filter(|wanted| *wanted > 0);

        // SAM-5 5.14 / SPC-4 5.14: these three are neither blocked by nor consume a unit attention.
        let ua_exempt = matches!(
            opcode,
            crate::cdb::op::INQUIRY | crate::cdb::op::REPORT_LUNS | crate::cdb::op::REQUEST_SENSE
        );
        if !ua_exempt {
            if let Some(condition) = self.unit_attentions.take(cmd.nexus) {
                return Err(self.check_condition(Sense::new(condition), data_out_wanted));
            }
        }
        // SBC-4 4.33.2: while a sanitize operation runs, only INQUIRY, REPORT LUNS and REQUEST SENSE proceed.
        if let Some(sense) = self.sanitize_in_progress_refusal(opcode) {
            return Err(self.check_condition(sense, data_out_wanted));
        }
        let command = match parsed {
            Ok(command) => command,
            Err(sense) => return Err(self.check_condition(sense, data_out_wanted)),
        };
        // SBC-4 5.3: COMPARE AND WRITE carries exactly twice NUMBER OF LOGICAL BLOCKS of data; a different amount
        // means the field does not describe the data, and an atomic compare cannot run on part of it.
        if matches!(command, Command::CompareAndWrite { .. })
            && cmd.data_out.len() as u64 != data_out_wanted.unwrap_or(0) as u64
        {
            return Err(self.check_condition(Sense::invalid_cdb_field(13, None), data_out_wanted));
        }
        let writes_protected_medium = command.writes_medium() && self.write_protected_for(cmd);
        let Some((command, data_out)) =
            self.fit_data_out(command, cmd.data_out, data_out_wanted.unwrap_or(0))
        else {
            // A write-protected LU refuses a write before any data would be transferred (SBC-4 4.11), so how much
            // data came does not matter: DATA PROTECT, as for the same command with the right amount.
            let condition = if writes_protected_medium {
                Condition::WriteProtected
            } else {
                Condition::InvalidFieldInCommandInformationUnit
            };
            return Err(self.check_condition(Sense::new(condition), data_out_wanted));
        };
        // The range lock comes from the command's row in the registry (SBC-4 5.3: reads share their blocks, writers
        // hold them exclusively; UNMAP, WRITE SAME to the end, SANITIZE and reservation changes hold the medium).
        let lock = command.lock_request();
        Ok(Admitted {
            data_out_len: data_out.len(),
            command,
            data_out_wanted,
            lock,
        })
    }

    /// Runs an admitted command: the reservation check, then the command itself over the store. Call it while
    /// holding the guard for [`Admitted::lock_request`] (None when it asks for none). The range lock is taken
    /// before the reservation check and held through execution, and reservation changes hold the whole medium: a
    /// reservation cannot change between a command's check and its I/O (a COMPARE AND WRITE's compare and write
    /// included), and PREEMPT AND ABORT waits for commands in flight.
    pub fn run_admitted(
        &self,
        cmd: &ScsiCommand,
        admitted: &Admitted,
        _guard: Option<&RangeGuard>,
    ) -> ScsiResponse {
        let data_out_wanted = admitted.data_out_wanted;
        let command = admitted.command.clone();
        let data_out = admitted.data_out(cmd);
        let cmd = &ScsiCommand { data_out, ..*cmd };
        if let Err(refusal) = self.reservations.check(cmd.nexus, &command) {
            return self.refused(refusal, data_out_wanted);
        }
        let result = match command {
            Command::PersistentReserveOut(prout) => {
                return self.persistent_reserve_out(cmd, prout, data_out_wanted)
            }
            Command::Reserve { .. } => self
                .reservations
                .reserve_scsi2(cmd.nexus)
                .map(|()| Completed::Good(Vec::new())),
            Command::Release { .. } => self
                .reservations
                .release_scsi2(cmd.nexus)
                .map(|()| Completed::Good(Vec::new())),
            // A logical unit alone can copy only within itself; the Dispatcher and the runtime offer the copy
            // every LU of the nexus's target.
            Command::ExtendedCopy { .. } => {
                return crate::xcopy::execute_blocking(self, cmd, admitted, &[self])
            }
            _ => self.run(&command, cmd).map_err(Refusal::Check),
        };
        self.response_of(result, data_out_wanted)
    }

    /// PERSISTENT RESERVE OUT (SPC-4 6.16), answered with the nexuses a PREEMPT AND ABORT aborted as its side
    /// effect, for the runtime to abort their tasks before it sends this GOOD (SPC-4 5.13.11.5).
    fn persistent_reserve_out(
        &self,
        cmd: &ScsiCommand,
        prout: PrOutCdb,
        data_out_wanted: Option<u32>,
    ) -> ScsiResponse {
        let outcome = self.reservations.persistent_reserve_out(
            cmd.nexus,
            prout,
            cmd.data_out,
            cmd.logged_in,
            &self.unit_attentions,
        );
        match outcome {
            Ok(aborted_nexuses) => ScsiResponse {
                effects: SideEffects { aborted_nexuses },
                ..self.response_of(Ok(Completed::Good(Vec::new())), data_out_wanted)
            },
            Err(refusal) => self.refused(refusal, data_out_wanted),
        }
    }

    /// The second half of a command run with [`Admitted::deferring_fua`]: a GOOD becomes GOOD once everything
    /// written before this call is on the medium (a shared flush), or the write error if the flush fails
    /// (SBC-4 4.15; 03h/0Ch/00h, the sense a FUA write's failed flush gets). Blocks: call it on an I/O engine.
    pub fn make_durable(&self, response: ScsiResponse) -> ScsiResponse {
        if response.status != ScsiStatus::Good {
            return response;
        }
        match self.flush() {
            Ok(()) => response,
            Err(sense) => self.check_condition(sense, response.data_out_wanted),
        }
    }

    /// The reservations in force now would refuse this command (RESERVATION CONFLICT). A hint for the runtime,
    /// taken without the command's range: the check that decides is the one [`LogicalUnit::run_admitted`] makes.
    pub fn reservation_refuses(&self, cmd: &ScsiCommand, admitted: &Admitted) -> bool {
        self.reservations
            .check(cmd.nexus, &admitted.command)
            .is_err()
    }

    /// The reservation check, write protection and the sanitize failure mode: what refuses a command that passed
    /// admission before it touches the medium.
    pub(crate) fn refuse_before_running(
        &self,
        cmd: &ScsiCommand,
        admitted: &Admitted,
    ) -> Result<(), Refusal> {
        self.reservations.check(cmd.nexus, &admitted.command)?;
        if admitted.command.writes_medium() && self.write_protected_for(cmd) {
            return Err(Refusal::Check(Sense::new(Condition::WriteProtected)));
        }
        match self.sanitize_failure_refusal(&admitted.command) {
            Some(sense) => Err(Refusal::Check(sense)),
            None => Ok(()),
        }
    }

    /// The response for a command's result.
    pub(crate) fn response_of(
        &self,
        result: Result<Completed, Refusal>,
        data_out_wanted: Option<u32>,
    ) -> ScsiResponse {
        match result {
            Ok(Completed::Good(data_in)) => ScsiResponse {
                status: ScsiStatus::Good,
                sense: Vec::new(),
                data_in,
                data_out_wanted,
                effects: SideEffects::NONE,
            },
            Ok(Completed::ConditionMet) => ScsiResponse {
                status: ScsiStatus::ConditionMet,
                sense: Vec::new(),
                data_in: Vec::new(),
                data_out_wanted,
                effects: SideEffects::NONE,
            },
            Err(refusal) => self.refused(refusal, data_out_wanted),
        }
    }

    /// Runs an admitted READ, or answers a COMPARE AND WRITE that miscompares, if the store can serve it without
    /// waiting for the disk (the page cache holds it),
    /// so the runtime may answer it on a reactor thread. None: the command must go through
    /// [`LogicalUnit::run_admitted`] on the I/O engine; nothing has changed, so that is always safe.
    pub fn try_run_without_waiting(
        &self,
        cmd: &ScsiCommand,
        admitted: &Admitted,
        _guard: Option<&RangeGuard>,
    ) -> Option<ScsiResponse> {
        let (lba, blocks) = match admitted.command {
            Command::Read {
                lba,
                blocks,
                fua: false,
                ..
            } => (lba, blocks),
            Command::CompareAndWrite { lba, blocks, .. } => {
                // A MISCOMPARE writes nothing, so it need not wait for an engine thread: with 16 initiators racing
                // for one lock block, most COMPARE AND WRITEs end this way.
                self.refuse_before_running(cmd, admitted).ok()?;
                let sense = self.miscompare_without_waiting(lba, blocks, admitted.data_out(cmd))?;
                return Some(self.check_condition(sense, admitted.data_out_wanted));
            }
            _ => return None,
        };
        if blocks.0 == 0 || self.check_transfer(lba, blocks).is_err() {
            return None;
        }
        if self.sanitize_failure_refusal(&admitted.command).is_some()
            || self
                .reservations
                .check(cmd.nexus, &admitted.command)
                .is_err()
        {
            return None;
        }
        let mut data = vec![0u8; (blocks.0 * self.block_size) as usize];
        let served = self
            .store
            .read_at_without_waiting(&mut data, lba.0 * self.block_size);
        matches!(served, Ok(true)).then(|| ScsiResponse {
            status: ScsiStatus::Good,
            sense: Vec::new(),
            data_in: data,
            data_out_wanted: admitted.data_out_wanted,
            effects: SideEffects::NONE,
        })
    }

    pub(crate) fn refused(&self, refusal: Refusal, data_out_wanted: Option<u32>) -> ScsiResponse {
        match refusal {
            Refusal::Check(sense) => self.check_condition(sense, data_out_wanted),
            Refusal::Conflict => ScsiResponse {
                status: ScsiStatus::ReservationConflict,
                sense: Vec::new(),
                data_in: Vec::new(),
                data_out_wanted,
                effects: SideEffects::NONE,
            },
        }
    }

    fn run(&self, command: &Command, cmd: &ScsiCommand) -> Outcome {
        if command.writes_medium() && self.write_protected_for(cmd) {
            // SBC-4 4.11: write protection is DATA PROTECT / WRITE PROTECTED, checked before the range.
            return Err(Sense::new(Condition::WriteProtected));
        }
        if let Some(sense) = self.sanitize_failure_refusal(command) {
            return Err(sense);
        }
        match *command {
            Command::Sanitize { action, ause, .. } => self.sanitize(action, ause, cmd.data_out),
            Command::CompareAndWrite { lba, blocks, fua } => {
                self.compare_and_write(lba, blocks, fua, cmd.data_out)
            }
            Command::TestUnitReady => Ok(Completed::Good(Vec::new())),
            Command::RequestSense {
                descriptor,
                allocation_length,
            } => Ok(Completed::Good(self.request_sense(
                cmd.nexus,
                descriptor,
                allocation_length,
            ))),
            Command::Inquiry {
                evpd,
                page_code,
                allocation_length,
            } => self.inquiry(cmd.nexus, evpd, page_code, allocation_length),
            Command::ReportLuns { .. } => {
                // Answered by the Dispatcher, which knows every LUN; a bare LogicalUnit reports only LUN 0.
                let mut data = vec![0u8; 16];
                data[3] = 8;
                Ok(Completed::Good(data))
            }
            Command::ModeSense {
                ten,
                dbd,
                llbaa,
                page_control,
                page_code,
                subpage_code,
                allocation_length,
            } => self.mode_sense(
                ten,
                dbd,
                llbaa,
                page_control,
                page_code,
                subpage_code,
                allocation_length,
                self.write_protected_for(cmd),
            ),
            Command::ModeSelect {
                ten,
                pf,
                save_pages,
                ..
            } => self.mode_select(cmd.nexus, ten, pf, save_pages, cmd.data_out),
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                allocation_length,
            } => crate::opcodes::report(rctd, options, opcode, service_action, allocation_length)
                .map(Completed::Good),
            Command::ReportSupportedTmfs {
                repd,
                allocation_length,
            } => Ok(Completed::Good(crate::opcodes::report_tmfs(
                repd,
                allocation_length,
            ))),
            Command::ReportTargetPortGroups {
                format,
                allocation_length,
            } => Ok(Completed::Good(crate::alua::report_target_port_groups(
                &self.port_groups,
                format,
                allocation_length,
            ))),
            Command::StartStopUnit {
                power_condition,
                load_eject,
                start,
                ..
            } => self.start_stop_unit(cmd.nexus, power_condition, load_eject, start),
            Command::PreventAllowMediumRemoval { prevent } => {
                self.prevent_allow(cmd.nexus, prevent)
            }
            Command::ReadDefectData {
                twelve,
                plist,
                glist,
                format,
                allocation_length,
            } => Ok(Completed::Good(read_defect_data(
                twelve,
                plist,
                glist,
                format,
                allocation_length,
            ))),
            Command::ReadCapacity10 => Ok(Completed::Good(self.read_capacity_10())),
            Command::ReadCapacity16 { allocation_length } => {
                Ok(Completed::Good(self.read_capacity_16(allocation_length)))
            }
            Command::Read {
                lba, blocks, fua, ..
            } => self.read(lba, blocks, fua),
            Command::Write {
                lba, blocks, fua, ..
            } => self.write(lba, blocks, fua, cmd.data_out),
            Command::WriteAndVerify { lba, blocks, .. } => {
                self.write(lba, blocks, true, cmd.data_out)
            }
            Command::Verify {
                lba,
                blocks,
                byte_check,
                ..
            } => self.verify(lba, blocks, byte_check, cmd.data_out),
            Command::OrWrite { lba, blocks, fua } => self.or_write(lba, blocks, fua, cmd.data_out),
            Command::WriteAtomic {
                lba, blocks, fua, ..
            } => self.write_atomic(lba, blocks, fua, cmd.data_out),
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
                ten,
            } => self.write_same(lba, blocks, unmap, anchor, ndob, ten, cmd.data_out),
            Command::Unmap { anchor, .. } => self.unmap(anchor, cmd.data_out),
            Command::GetLbaStatus {
                lba,
                allocation_length,
            } => self.get_lba_status(lba, allocation_length),
            Command::SynchronizeCache { lba, blocks, .. } => self.synchronize_cache(lba, blocks),
            Command::PreFetch { lba, blocks, .. } => self.pre_fetch(lba, blocks),
            Command::PersistentReserveIn(command) => Ok(Completed::Good(
                self.reservations.persistent_reserve_in(command),
            )),
            Command::ReceiveCopyResults {
                request,
                allocation_length,
            } => self.receive_copy_results(cmd.nexus, request, allocation_length),
            // Executed by `run_admitted`, which alone can answer RESERVATION CONFLICT.
            Command::PersistentReserveOut(_)
            | Command::Reserve { .. }
            | Command::Release { .. }
            | Command::ExtendedCopy { .. } => Ok(Completed::Good(Vec::new())),
        }
    }

    /// REQUEST SENSE (SPC-4 6.29): reports and clears a pending unit attention (SAM-5 5.14 allows either this or
    /// preserving it; Linux and LIO report it), else NO SENSE.
    fn request_sense(&self, nexus: &ItNexus, descriptor: bool, allocation_length: u32) -> Vec<u8> {
        let sense = match self.unit_attentions.take(nexus) {
            Some(condition) => Sense::new(condition),
            // SBC-4 4.33.2: REQUEST SENSE reports a sanitize operation in progress.
            None if self.sanitize_in_progress() => self.sanitize_in_progress_sense(),
            None => Sense::new(Condition::NoAdditionalSense),
        };
        let mut data = if descriptor {
            sense.to_descriptor()
        } else {
            sense.to_fixed()
        };
        data.truncate(allocation_length as usize);
        data
    }

    /// START STOP UNIT (SBC-4 5.25): lunlock has no medium to spin; accept the power conditions SBC-4 Table 96
    /// defines and refuse ejecting while removal is prevented (SBC-4 5.25: LOEJ=1 START=0 with prevention ->
    /// MEDIUM REMOVAL PREVENTED).
    fn start_stop_unit(
        &self,
        _nexus: &ItNexus,
        power_condition: u8,
        load_eject: bool,
        start: bool,
    ) -> Outcome {
        match power_condition {
            0x0 | 0x1 | 0x2 | 0x3 | 0x7 | 0xA | 0xB => {}
            _ => return Err(Sense::invalid_cdb_field(4, Some(7))),
        }
        if power_condition == 0 && load_eject && !start && !self.lock_prevent().is_empty() {
            return Err(Sense::new(Condition::MediumRemovalPrevented));
        }
        Ok(Completed::Good(Vec::new()))
    }

    fn lock_prevent(&self) -> std::sync::MutexGuard<'_, HashSet<ItNexus>> {
        self.prevent_removal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-4 5.13): PREVENT 00b allow, 01b prevent; 10b/11b are obsolete for
    /// direct-access devices and refused.
    fn prevent_allow(&self, nexus: &ItNexus, prevent: u8) -> Outcome {
        match prevent {
            0 => {
                self.lock_prevent().remove(nexus);
            }
            1 => {
                self.lock_prevent().insert(nexus.clone());
            }
            _ => return Err(Sense::invalid_cdb_field(4, Some(1))),
        }
        Ok(Completed::Good(Vec::new()))
    }

    /// Task management reaching this logical unit (SAM-5 6.3, 7).
    pub fn reset(&self, nexus: &ItNexus, kind: ResetKind) {
        self.reservations.reset(nexus, kind);
        match kind {
            ResetKind::NexusLoss => self.copies.forget_nexus(nexus),
            ResetKind::LogicalUnitReset
            | ResetKind::TargetWarmReset
            | ResetKind::TargetColdReset => self.copies.forget_all(),
        }
        match kind {
            // SAM-5 6.3.3: a logical unit reset clears prevention and establishes 29/03 for every I_T nexus.
            ResetKind::LogicalUnitReset => {
                self.lock_prevent().clear();
                self.unit_attentions
                    .establish_all(Condition::BusDeviceResetFunctionOccurred, None);
            }
            // SAM-5 6.3.2: a hard reset (TARGET WARM/COLD RESET) is reported as 29/02 SCSI BUS RESET OCCURRED
            // ... for iSCSI (RFC 7143 11.5.1) the target reports POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
            ResetKind::TargetWarmReset | ResetKind::TargetColdReset => {
                self.lock_prevent().clear();
                self.unit_attentions
                    .establish_all(Condition::PowerOnResetOrBusDeviceReset, None);
            }
            // SAM-5 6.3.4: I_T nexus loss: the prevention held by that nexus ends; 29/07 to that nexus.
            ResetKind::NexusLoss => {
                self.lock_prevent().remove(nexus);
                self.unit_attentions
                    .establish(nexus, Condition::ItNexusLossOccurred);
            }
        }
    }
}

/// READ DEFECT DATA (10)/(12) (SBC-4 5.17, 5.18): lunlock has no defects, so the list is empty; the header echoes
/// the requested lists and format.
fn read_defect_data(
    twelve: bool,
    plist: bool,
    glist: bool,
    format: u8,
    allocation_length: u32,
) -> Vec<u8> {
    let flags = (plist as u8) << 4 | (glist as u8) << 3 | format;
    let mut data = if twelve { vec![0u8; 8] } else { vec![0u8; 4] };
    data[1] = flags;
    data.truncate(allocation_length as usize);
    data
}

pub(crate) fn truncate(mut data: Vec<u8>, allocation_length: u32) -> Vec<u8> {
    data.truncate(allocation_length as usize);
    data
}
