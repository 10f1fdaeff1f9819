//! Full-feature phase of a session, target role (RFC 7143), sans-IO.
//!
//! Call order: feed every received PDU to [`TargetSession::handle_pdu`]; then drain [`TargetSession::poll_event`]
//! (commands to execute, task management, text, logout) and report each outcome with
//! [`TargetSession::complete_command`] / [`TargetSession::complete_task_management`] /
//! [`TargetSession::answer_text`]; then drain [`TargetSession::poll_transmit`] onto the connection.
//!
//! What it does:
//! - Orders commands by CmdSN (RFC 7143 3.2.2.1, 4.2.2.1): commands inside the window [ExpCmdSN, MaxCmdSN] that
//!   arrive early wait in a bounded reorder buffer; commands outside the window are silently ignored; immediate
//!   commands are delivered at once and do not advance ExpCmdSN.
//! - Gathers write data (RFC 7143 4.2.2.x, 11.7, 11.8): immediate data, unsolicited Data-Out up to
//!   FirstBurstLength, then R2Ts of at most MaxBurstLength with up to MaxOutstandingR2T outstanding. Data-Out PDUs
//!   are checked (TTT, DataSN, buffer offset, length); with ErrorRecoveryLevel 0 a sequence error is fatal.
//! - Builds responses: Data-In segmented by the initiator's MaxRecvDataSegmentLength, status in the final Data-In
//!   when there is no sense data (11.7.4), residual overflow/underflow (11.4.5), StatSN numbering (4.2.2.2).
//! - NOP-Out/NOP-In both ways (11.18, 11.19), ABORT TASK for held and completed tasks (11.5.1) and for executed
//!   tasks whose response never reached the initiator (see [`TargetSession::abort_task`]), Logout (11.14), Reject
//!   of PDUs it cannot accept (11.17).
//!
//! Invariants: every task held is bounded in size (EDTL <= MAX_TASK_DATA_BYTES), the reorder buffer holds at most
//! the command window, and no PDU from the initiator can make this code panic.

use crate::budget::{Reservation, WriteBudget};
use crate::message::{
    self, reject, tmf, DataIn, DataOut, LogoutRequest, LogoutResponse, NopIn, NopOut,
    ReadyToTransfer, Reject, Residual, ScsiCommand, ScsiResponse, TargetSequence,
    TaskManagementRequest, TaskManagementResponse, TextRequest, TextResponse, RESERVED_TAG,
};
use crate::params::SessionParams;
use crate::pdu::{Opcode, Pdu, SerialNumber, BHS_LEN};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Largest expected data transfer length accepted for one write (bounds memory per task).
pub const MAX_TASK_DATA_BYTES: u32 = 64 << 20;
/// Tasks held awaiting Data-Out at once.
pub const MAX_TASKS_AWAITING_DATA: usize = 1024;
/// Bytes of write data one session may have reserved while their Data-Out arrives, unless the runtime sets
/// another bound ([`TargetSession::with_write_budget`]). Immediate commands are outside the CmdSN window, so
/// without this bound one session could claim MAX_TASKS_AWAITING_DATA times MAX_TASK_DATA_BYTES.
pub const MAX_PENDING_WRITE_BYTES: u64 = 256 << 20;

/// Executed tasks whose response was dropped that ABORT TASK still recognises; older ones are forgotten (and
/// answered TASK DOES NOT EXIST like any completed task).
pub const MAX_UNDELIVERED_RESPONSES: usize = 64;

/// SAM-5 TASK SET FULL status.
const TASK_SET_FULL: u8 = 0x28;

/// Identifies a command handed to the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskId(pub u64);

/// Work for the runtime.
#[derive(Debug)]
pub enum SessionEvent {
    /// Execute this SCSI command now; all its Data-Out has arrived.
    Execute {
        task: TaskId,
        itt: u32,
        /// Decoded LUN; an undecodable LUN field is `u64::MAX` (no such LUN).
        lun: u64,
        cdb: Vec<u8>,
        data_out: Vec<u8>,
        expected_transfer_length: u32,
        attribute: u8,
        read: bool,
        write: bool,
    },
    /// Perform a task management function and answer with `complete_task_management`.
    TaskManagement {
        itt: u32,
        function: u8,
        lun: u64,
        /// Executing tasks this function aborted: the runtime stops those that have not started, waits for the
        /// others, and only then answers (SAM-5 7.1). Their responses are discarded by the session.
        in_flight: Vec<TaskId>,
        referenced_task_tag: u32,
        ref_cmd_sn: u32,
    },
    /// A Text Request in full feature phase; answer with `answer_text`.
    Text { itt: u32, data: Vec<u8> },
    /// The initiator logged out; the Logout Response is already queued.
    Logout { reason: u8 },
}

/// The runtime's report of a finished command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutcome {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
    pub data_out_wanted: Option<u32>,
}

/// A condition that ends the connection (RFC 7143 7: with ErrorRecoveryLevel 0, connection failure).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A Data-Out names a target transfer tag this target never issued, so it belongs to no task, now or before
    /// (RFC 7143 11.7.4).
    #[error("Data-Out with a TTT never issued ({ttt:#x})")]
    UnissuedTargetTransferTag { ttt: u32 },
}

/// What went wrong in a write's data phase, with the SPC-4 sense it maps to (ABORTED COMMAND but for one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataError {
    /// 4B/00 DATA PHASE ERROR: DataSN out of sequence, or a sequence ended early.
    DataSequence,
    /// 4B/01 INVALID TARGET PORT TRANSFER TAG RECEIVED.
    InvalidTargetTransferTag,
    /// 4B/02 TOO MUCH WRITE DATA.
    TooMuchData,
    /// 4B/05 DATA OFFSET ERROR.
    DataOffset,
    /// 47/05 PROTOCOL SERVICE CRC ERROR: a data digest error in the task's data (RFC 7143 7.8).
    DataDigest,
    /// ILLEGAL REQUEST, 24/00 INVALID FIELD IN CDB: an expected data transfer length beyond MAX_TASK_DATA_BYTES.
    BeyondTaskLimit,
}

impl DataError {
    /// Fixed-format sense data (SPC-4 4.5.3), sense key ABORTED COMMAND.
    fn fixed_sense(self) -> [u8; 18] {
        const ABORTED_COMMAND: u8 = 0x0B;
        const ILLEGAL_REQUEST: u8 = 0x05;
        let (key, asc, ascq) = match self {
            DataError::DataSequence => (ABORTED_COMMAND, 0x4B, 0x00),
            DataError::InvalidTargetTransferTag => (ABORTED_COMMAND, 0x4B, 0x01),
            DataError::TooMuchData => (ABORTED_COMMAND, 0x4B, 0x02),
            DataError::DataOffset => (ABORTED_COMMAND, 0x4B, 0x05),
            DataError::DataDigest => (ABORTED_COMMAND, 0x47, 0x05),
            DataError::BeyondTaskLimit => (ILLEGAL_REQUEST, 0x24, 0x00),
        };
        let mut sense = [0u8; 18];
        sense[0] = 0x70;
        sense[2] = key;
        sense[7] = 10;
        sense[12] = asc;
        sense[13] = ascq;
        sense
    }
}

/// A solicitation still open: an R2T, or the unsolicited first burst (ttt = RESERVED_TAG).
#[derive(Debug)]
struct Solicitation {
    ttt: u32,
    offset: u32,
    length: u32,
    received: u32,
    next_data_sn: u32,
    /// Data received for this solicitation while an earlier one is still incomplete (MaxOutstandingR2T > 1):
    /// it joins the write's buffer when the data before it has arrived.
    staged: Vec<u8>,
}

impl Solicitation {
    fn new(ttt: u32, offset: u32, length: u32) -> Solicitation {
        Solicitation {
            ttt,
            offset,
            length,
            received: 0,
            next_data_sn: 0,
            staged: Vec::new(),
        }
    }
}

/// A write command gathering its Data-Out.
#[derive(Debug)]
struct PendingWrite {
    command: ScsiCommand,
    lun: u64,
    /// The data received so far from offset 0 without a gap. It grows as Data-Out arrives, never past what was
    /// solicited, so memory follows the data actually sent, not the length claimed.
    buffer: Vec<u8>,
    /// Completed solicitations that start beyond `buffer`, by offset, waiting for the data before them.
    parked: BTreeMap<u32, Vec<u8>>,
    /// The whole expected data transfer length, held from the target-wide budget until the command completes.
    reservation: Reservation,
    received: u32,
    /// Where the next R2T starts.
    next_r2t_offset: u32,
    open: Vec<Solicitation>,
    r2t_sn: u32,
}

impl PendingWrite {
    /// Moves data that arrived out of order into the buffer once everything before it is there: parked
    /// solicitations that start where the buffer ends, then the staged part of the open one that does.
    fn join_arrived_data(&mut self) {
        loop {
            let end = self.buffer.len() as u32;
            if let Some(part) = self.parked.remove(&end) {
                self.buffer.extend_from_slice(&part);
                continue;
            }
            if let Some(open) = self.open.iter_mut().find(|s| s.offset == end) {
                let staged = std::mem::take(&mut open.staged);
                self.buffer.extend_from_slice(&staged);
            }
            return;
        }
    }
}

/// What the session remembers of a task handed to the runtime, to build its response.
#[derive(Debug)]
struct Executing {
    reference: TaskReference,
    lun: [u8; 8],
    /// The decoded LUN (`u64::MAX` when undecodable).
    lun_number: u64,
    /// A task management function or PREEMPT AND ABORT aborted it while it executed: its response is discarded.
    aborted: bool,
    expected_transfer_length: u32,
    read: bool,
    r2ts_sent: u32,
    /// The write's data budget, given back when the command completes (the runtime holds its data until then).
    _data_reservation: Option<Reservation>,
}

/// How an ABORT TASK names a task: Referenced Task Tag and RefCmdSN (RFC 7143 11.5.4, 11.5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TaskReference {
    itt: u32,
    cmd_sn: u32,
    immediate: bool,
}

impl TaskReference {
    fn of(command: &ScsiCommand) -> TaskReference {
        TaskReference {
            itt: command.itt,
            cmd_sn: command.cmd_sn,
            immediate: command.immediate,
        }
    }

    /// Whether `request` names this task. RFC 7143 11.5.5: RefCmdSN is the CmdSN of the referenced task; for a task
    /// created by an immediate command it MUST be the TMF's own CmdSN (an immediate command carries the next CmdSN
    /// without consuming it, so its own CmdSN field is accepted too).
    fn named_by(&self, request: &TaskManagementRequest) -> bool {
        self.itt == request.referenced_task_tag
            && (request.ref_cmd_sn == self.cmd_sn
                || (self.immediate && request.ref_cmd_sn == request.cmd_sn))
    }
}

pub struct TargetSession {
    params: SessionParams,
    exp_cmd_sn: SerialNumber,
    stat_sn: u32,
    queue_depth: u32,
    /// Non-immediate PDUs that arrived before their turn, by CmdSN.
    reorder: HashMap<u32, Held>,
    writes: HashMap<u32, PendingWrite>,
    executing: HashMap<TaskId, Executing>,
    /// Executed tasks whose response the runtime dropped (fault injection), oldest first, at most
    /// MAX_UNDELIVERED_RESPONSES.
    dropped_responses: VecDeque<TaskReference>,
    /// Executed tasks whose response is built and waits in `transmit`, by ITT; removed when `poll_transmit` hands
    /// the PDU carrying the status to the runtime.
    queued_responses: HashMap<u32, TaskReference>,
    next_task: u64,
    next_ttt: u32,
    outstanding_ping: Option<u32>,
    events: VecDeque<SessionEvent>,
    /// PDUs waiting to be sent; their sequence numbers are filled in when they are handed over.
    transmit: VecDeque<Outgoing>,
    /// The highest MaxCmdSN told to the initiator: the window never shrinks below it (RFC 7143 3.2.2.1).
    advertised_max_cmd_sn: SerialNumber,
    logged_out: bool,
    /// Where writes reserve their data (shared by every session of the target).
    budget: WriteBudget,
    /// The most write data this session may have reserved at once while it arrives.
    max_pending_write_bytes: u64,
    /// A Text Response being sent in parts.
    long_text: Option<LongText>,
}

/// How an ABORT TASK is answered.
enum AbortAnswer {
    /// At once, with this TMF response code.
    Now(u8),
    /// FUNCTION COMPLETE once the runtime has stopped or finished this executing task.
    AfterInFlight(TaskId),
}

/// What fills a CmdSN slot of the reorder buffer.
#[derive(Debug)]
enum Held {
    /// A PDU that arrived before its turn.
    Pdu(Pdu),
    /// A CmdSN the session counts as received without a command: the command was aborted while it waited, or
    /// an ABORT TASK named a CmdSN that never arrived (RFC 7143 11.5.1 b). Skipped when its turn comes.
    Consumed,
}

/// A PDU waiting in the transmit queue. Its StatSN, ExpCmdSN and MaxCmdSN (bytes 24..36 of every target PDU,
/// RFC 7143 11) are assigned by [`TargetSession::poll_transmit`], in the order PDUs leave: responses of commands
/// that complete in any order still carry dense, increasing StatSNs, and a response withdrawn before it left
/// never took one.
#[derive(Debug)]
struct Outgoing {
    pdu: Pdu,
    numbering: Numbering,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Numbering {
    /// The PDU carries status: it takes the next StatSN (RFC 7143 4.2.2.2).
    Status,
    /// The PDU carries no status: it shows the next StatSN without taking it.
    NoStatus,
}

impl TargetSession {
    pub fn new(
        params: SessionParams,
        exp_cmd_sn: u32,
        stat_sn: u32,
        queue_depth: u32,
    ) -> TargetSession {
        TargetSession {
            params,
            exp_cmd_sn: SerialNumber(exp_cmd_sn),
            stat_sn,
            queue_depth: queue_depth.max(1),
            reorder: HashMap::new(),
            writes: HashMap::new(),
            executing: HashMap::new(),
            dropped_responses: VecDeque::new(),
            queued_responses: HashMap::new(),
            next_task: 1,
            next_ttt: 1,
            outstanding_ping: None,
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            advertised_max_cmd_sn: SerialNumber(exp_cmd_sn).plus(queue_depth.max(1) - 1),
            logged_out: false,
            budget: WriteBudget::unlimited(),
            max_pending_write_bytes: MAX_PENDING_WRITE_BYTES,
            long_text: None,
        }
    }

    /// Makes writes reserve their data from `budget` (shared with other sessions), and bounds what this session
    /// may hold at once to `per_session_bytes`. A write that does not fit either is answered TASK SET FULL.
    pub fn with_write_budget(
        mut self,
        budget: WriteBudget,
        per_session_bytes: u64,
    ) -> TargetSession {
        self.budget = budget;
        self.max_pending_write_bytes = per_session_bytes;
        self
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// Bytes of memory holding write data of tasks still gathering their Data-Out (capacity, not length).
    pub fn write_bytes_allocated(&self) -> usize {
        self.writes
            .values()
            .map(|w| {
                w.buffer.capacity()
                    + w.parked.values().map(Vec::capacity).sum::<usize>()
                    + w.open.iter().map(|s| s.staged.capacity()).sum::<usize>()
            })
            .sum()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// The next PDU to send. Once handed over, a command's response counts as delivered: an ABORT TASK for it is
    /// answered TASK DOES NOT EXIST (see [`TargetSession::abort_task`]).
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        let Outgoing { mut pdu, numbering } = self.transmit.pop_front()?;
        if !self.queued_responses.is_empty() && carries_command_status(&pdu) {
            self.queued_responses.remove(&pdu.itt());
        }
        let max_cmd_sn = self.max_cmd_sn();
        self.advertised_max_cmd_sn = max_cmd_sn;
        pdu.set_u32_at(24, self.stat_sn);
        pdu.set_u32_at(28, self.exp_cmd_sn.0);
        pdu.set_u32_at(32, max_cmd_sn.0);
        if numbering == Numbering::Status {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        Some(pdu)
    }

    fn queue(&mut self, pdu: Pdu, numbering: Numbering) {
        self.transmit.push_back(Outgoing { pdu, numbering });
    }

    pub fn is_logged_out(&self) -> bool {
        self.logged_out
    }

    /// Tasks the session still holds (reordering or awaiting Data-Out) or that the runtime has not completed.
    pub fn pending_tasks(&self) -> usize {
        self.reorder.len() + self.writes.len() + self.executing.len()
    }

    /// MaxCmdSN (RFC 7143 3.2.2.1): the window holds `queue_depth` commands, counting those still executing or
    /// gathering their data, so commands executing concurrently never exceed the queue depth. It never moves
    /// below what the initiator was already told.
    fn max_cmd_sn(&self) -> SerialNumber {
        let occupied = self.windowed_tasks().min(self.queue_depth as usize) as u32;
        let credit = self.queue_depth - occupied;
        let fresh = SerialNumber(self.exp_cmd_sn.0.wrapping_add(credit).wrapping_sub(1));
        if fresh.gt(self.advertised_max_cmd_sn) {
            fresh
        } else {
            self.advertised_max_cmd_sn
        }
    }

    /// Non-immediate commands that hold a slot of the command window: executing, or awaiting Data-Out.
    fn windowed_tasks(&self) -> usize {
        let executing = self.executing.values().filter(|e| !e.reference.immediate);
        let gathering = self.writes.values().filter(|w| !w.command.immediate);
        executing.count() + gathering.count()
    }

    /// Rejects a PDU the runtime could not hand over intact (e.g. a data digest error, RFC 7143 7.8).
    pub fn reject_pdu(&mut self, reason: u8, pdu: &Pdu) {
        self.reject(reason, pdu);
    }

    /// A PDU whose header was sound but whose data digest was wrong (RFC 7143 7.8, at ErrorRecoveryLevel 0): it
    /// is discarded and rejected with reason 02h, and the task its data belonged to ends with CHECK CONDITION,
    /// ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (47h/05h), since it cannot be retransmitted. For a SCSI
    /// Command with immediate data, the command's CmdSN is counted as received, so the commands after it run.
    pub fn data_digest_error(&mut self, header: &[u8; BHS_LEN]) {
        let mut pdu = Pdu::new(Opcode::NopOut);
        pdu.bhs = *header;
        self.reject(reject::DATA_DIGEST_ERROR, &pdu);
        let itt = pdu.itt();
        match pdu.opcode() {
            Some(Opcode::DataOut) => self.fail_write(itt, DataError::DataDigest),
            Some(Opcode::ScsiCommand) => {
                self.answer_with_data_error(itt, pdu.u32_at(20), DataError::DataDigest);
                if !pdu.immediate() {
                    let cmd_sn = SerialNumber(pdu.u32_at(24));
                    if cmd_sn.in_window(self.exp_cmd_sn, self.max_cmd_sn()) {
                        self.consume_cmd_sn(cmd_sn.0);
                    }
                }
            }
            // NOP-Out, Text, Logout: the Reject is the whole answer; the initiator may send it again.
            _ => {}
        }
    }

    /// CHECK CONDITION for a command that never ran because its data was lost, with all of `edtl` as residual.
    fn answer_with_data_error(&mut self, itt: u32, edtl: u32, error: DataError) {
        let response = ScsiResponse {
            response: 0,
            status: 0x02,
            residual: Residual::Underflow(edtl),
            itt,
            sequence: TargetSequence::default(),
            exp_data_sn: 0,
            sense: error.fixed_sense().to_vec(),
        };
        self.queue(response.to_pdu(), Numbering::Status);
    }

    fn reject(&mut self, reason: u8, pdu: &Pdu) {
        let mut header = pdu.bhs.to_vec();
        header.truncate(BHS_LEN);
        let reject = Reject {
            reason,
            sequence: TargetSequence::default(),
            data_sn_or_r2t_sn: 0,
            rejected_header: header,
        };
        self.queue(reject.to_pdu(), Numbering::Status);
    }

    /// Feeds one received PDU.
    pub fn handle_pdu(&mut self, pdu: Pdu) -> Result<(), SessionError> {
        let Some(opcode) = pdu.opcode() else {
            // RFC 7143 11.17.1: an unknown opcode is rejected with COMMAND NOT SUPPORTED.
            self.reject(reject::COMMAND_NOT_SUPPORTED, &pdu);
            return Ok(());
        };
        match opcode {
            Opcode::DataOut => self.handle_data_out(pdu),
            Opcode::SnackRequest => {
                // ErrorRecoveryLevel 0: SNACK is not supported (RFC 7143 11.16, 11.17.1).
                self.reject(reject::COMMAND_NOT_SUPPORTED, &pdu);
                Ok(())
            }
            Opcode::NopOut if pdu.itt() == RESERVED_TAG => {
                self.handle_ping_answer(&pdu);
                Ok(())
            }
            Opcode::ScsiCommand
            | Opcode::NopOut
            | Opcode::TaskManagementRequest
            | Opcode::TextRequest
            | Opcode::LogoutRequest => self.order(pdu),
            Opcode::LoginRequest => {
                // A login on a full-feature connection is a protocol error (RFC 7143 6.x).
                self.reject(reject::PROTOCOL_ERROR, &pdu);
                Ok(())
            }
            _ => {
                // Target-only opcodes sent by an initiator.
                self.reject(reject::PROTOCOL_ERROR, &pdu);
                Ok(())
            }
        }
    }

    /// CmdSN ordering (RFC 7143 3.2.2.1).
    fn order(&mut self, pdu: Pdu) -> Result<(), SessionError> {
        if pdu.immediate() {
            return self.dispatch(pdu);
        }
        let cmd_sn = SerialNumber(pdu.u32_at(24));
        if !cmd_sn.in_window(self.exp_cmd_sn, self.max_cmd_sn()) {
            // Outside the window: silently ignored (RFC 7143 3.2.2.1).
            return Ok(());
        }
        if cmd_sn != self.exp_cmd_sn {
            self.reorder.insert(cmd_sn.0, Held::Pdu(pdu));
            return Ok(());
        }
        self.exp_cmd_sn = self.exp_cmd_sn.plus(1);
        self.dispatch(pdu)?;
        self.dispatch_reordered()
    }

    /// Dispatches the held PDUs whose turn has come, in CmdSN order.
    fn dispatch_reordered(&mut self) -> Result<(), SessionError> {
        while let Some(next) = self.reorder.remove(&self.exp_cmd_sn.0) {
            self.exp_cmd_sn = self.exp_cmd_sn.plus(1);
            if let Held::Pdu(pdu) = next {
                self.dispatch(pdu)?;
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, pdu: Pdu) -> Result<(), SessionError> {
        match pdu.opcode() {
            Some(Opcode::ScsiCommand) => self.handle_command(pdu),
            Some(Opcode::NopOut) => {
                self.handle_nop_out(&pdu);
                Ok(())
            }
            Some(Opcode::TaskManagementRequest) => {
                self.handle_task_management(&pdu);
                Ok(())
            }
            Some(Opcode::TextRequest) => {
                self.handle_text(&pdu);
                Ok(())
            }
            Some(Opcode::LogoutRequest) => {
                self.handle_logout(&pdu);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn handle_command(&mut self, pdu: Pdu) -> Result<(), SessionError> {
        let command = match ScsiCommand::from_pdu(&pdu) {
            Ok(command) => command,
            Err(_) => {
                self.reject(reject::INVALID_PDU_FIELD, &pdu);
                return Ok(());
            }
        };
        if !self.dropped_responses.is_empty() {
            // The initiator reuses the tag: it has given up on the old task (an Initiator Task Tag is unique among
            // the initiator's outstanding tasks, RFC 7143 11.2.1), so an ABORT TASK naming the tag means the new one.
            self.dropped_responses.retain(|t| t.itt != command.itt);
        }
        let lun = message::decode_lun(command.lun).unwrap_or(u64::MAX);
        let edtl = command.expected_data_transfer_length;
        let immediate_len = command.data.len() as u32;
        if immediate_len > 0
            && (!command.write || !self.params.immediate_data || immediate_len > edtl)
        {
            // RFC 7143 11.3.4 / 13.11: immediate data only on writes, when negotiated, within EDTL.
            self.reject(reject::PROTOCOL_ERROR, &pdu);
            return Ok(());
        }
        if !command.write || edtl == 0 {
            self.execute(command, lun, Vec::new(), 0, None);
            return Ok(());
        }
        if edtl > MAX_TASK_DATA_BYTES {
            // Far beyond the MAXIMUM TRANSFER LENGTH the LU reports (SBC-4 6.6.4): the command is refused before any
            // data is gathered; unsolicited data that follows is discarded as data for an unknown task.
            self.answer_with_data_error(command.itt, edtl, DataError::BeyondTaskLimit);
            return Ok(());
        }
        if self.writes.contains_key(&command.itt) {
            self.reject(reject::TASK_IN_PROGRESS, &pdu);
            return Ok(());
        }
        let held: u64 = self.writes.values().map(|w| w.reservation.bytes()).sum();
        let reservation = if self.writes.len() >= MAX_TASKS_AWAITING_DATA
            || held + edtl as u64 > self.max_pending_write_bytes
        {
            None
        } else {
            self.budget.try_reserve(edtl as u64)
        };
        let Some(reservation) = reservation else {
            // SAM-5 5.3: TASK SET FULL when the target lacks the resources to take the task now; the initiator
            // retries later. Its Data-Out, if any follows, is discarded as data for an unknown task.
            self.respond_without_executing(command.itt, TASK_SET_FULL);
            return Ok(());
        };
        let first_burst = self.params.first_burst_length.min(edtl);
        let mut open = Vec::new();
        // Unsolicited Data-Out follows unless InitialR2T=Yes or F=1 (RFC 7143 11.3.1, 13.10).
        let unsolicited_end = if !self.params.initial_r2t && !command.final_bit {
            first_burst
        } else {
            immediate_len
        };
        if unsolicited_end > immediate_len {
            open.push(Solicitation::new(
                RESERVED_TAG,
                immediate_len,
                unsolicited_end - immediate_len,
            ));
        }
        let itt = command.itt;
        let mut command = command;
        // The immediate data is the start of the buffer (RFC 7143 11.3.4: it begins at offset 0).
        let buffer = std::mem::take(&mut command.data);
        let write = PendingWrite {
            command,
            lun,
            buffer,
            parked: BTreeMap::new(),
            reservation,
            received: immediate_len,
            next_r2t_offset: unsolicited_end,
            open,
            r2t_sn: 0,
        };
        self.writes.insert(itt, write);
        self.solicit(itt);
        self.finish_write_if_complete(itt);
        Ok(())
    }

    /// Sends R2Ts for the rest of a write, keeping at most MaxOutstandingR2T open (RFC 7143 13.17).
    fn solicit(&mut self, itt: u32) {
        let max_burst = self.params.max_burst_length.max(512);
        let max_outstanding = self.params.max_outstanding_r2t.max(1) as usize;
        let sequence = TargetSequence::default();
        let Some(write) = self.writes.get_mut(&itt) else {
            return;
        };
        let edtl = write.command.expected_data_transfer_length;
        while write.next_r2t_offset < edtl
            && write.open.iter().filter(|s| s.ttt != RESERVED_TAG).count() < max_outstanding
        {
            let length = (edtl - write.next_r2t_offset).min(max_burst);
            let ttt = next_ttt(&mut self.next_ttt);
            let r2t = ReadyToTransfer {
                lun: write.command.lun,
                itt,
                ttt,
                sequence,
                r2t_sn: write.r2t_sn,
                buffer_offset: write.next_r2t_offset,
                desired_length: length,
            };
            write
                .open
                .push(Solicitation::new(ttt, write.next_r2t_offset, length));
            write.r2t_sn += 1;
            write.next_r2t_offset += length;
            self.transmit.push_back(Outgoing {
                pdu: r2t.to_pdu(),
                numbering: Numbering::NoStatus,
            });
        }
    }

    fn handle_data_out(&mut self, pdu: Pdu) -> Result<(), SessionError> {
        let data_out = DataOut::from_pdu(pdu);
        let itt = data_out.itt;
        let Some(write) = self.writes.get_mut(&itt) else {
            // Data for a task we no longer hold (aborted, or failed by an earlier data error): RFC 7143 11.7 lets
            // the target discard it. A TTT we never issued cannot belong to any task.
            if data_out.ttt != RESERVED_TAG
                && SerialNumber(data_out.ttt).gt(SerialNumber(self.next_ttt))
            {
                return Err(SessionError::UnissuedTargetTransferTag { ttt: data_out.ttt });
            }
            return Ok(());
        };
        let Some(index) = write.open.iter().position(|s| s.ttt == data_out.ttt) else {
            self.fail_write(itt, DataError::InvalidTargetTransferTag);
            return Ok(());
        };
        let solicitation = &mut write.open[index];
        // RFC 7143 11.7.5: DataSN counts the Data-Out PDUs of one sequence from 0. ErrorRecoveryLevel 0 cannot ask
        // for a retransmission, so the task ends with CHECK CONDITION and the connection stays up.
        if data_out.data_sn != solicitation.next_data_sn {
            self.fail_write(itt, DataError::DataSequence);
            return Ok(());
        }
        let length = data_out.data.len() as u32;
        let expected_offset = solicitation.offset + solicitation.received;
        if data_out.buffer_offset != expected_offset {
            // DataPDUInOrder=Yes: data arrives at consecutive offsets (13.18).
            self.fail_write(itt, DataError::DataOffset);
            return Ok(());
        }
        if length > solicitation.length - solicitation.received {
            self.fail_write(itt, DataError::TooMuchData);
            return Ok(());
        }
        if solicitation.staged.is_empty() && expected_offset as usize == write.buffer.len() {
            // In order: straight into the buffer, growing it by at most what this solicitation covers.
            let still_due = (solicitation.length - solicitation.received) as usize;
            if write.buffer.capacity() - write.buffer.len() < still_due {
                write.buffer.reserve_exact(still_due);
            }
            write.buffer.extend_from_slice(&data_out.data);
        } else {
            if solicitation.staged.capacity() == 0 {
                solicitation
                    .staged
                    .reserve_exact(solicitation.length as usize);
            }
            solicitation.staged.extend_from_slice(&data_out.data);
        }
        solicitation.received += length;
        solicitation.next_data_sn += 1;
        write.received += length;
        let sequence_done = solicitation.received == solicitation.length;
        if data_out.final_bit && !sequence_done {
            // F ends the sequence before the solicited length: the data phase cannot complete (11.7.1).
            self.fail_write(itt, DataError::DataSequence);
            return Ok(());
        }
        if sequence_done {
            let done = write.open.remove(index);
            if !done.staged.is_empty() {
                write.parked.insert(done.offset, done.staged);
            }
            write.join_arrived_data();
            self.solicit(itt);
        }
        self.finish_write_if_complete(itt);
        Ok(())
    }

    /// Answers a command with a status and no data, without handing it to the runtime.
    fn respond_without_executing(&mut self, itt: u32, status: u8) {
        let response = ScsiResponse {
            response: 0,
            status,
            residual: Residual::None,
            itt,
            sequence: TargetSequence::default(),
            exp_data_sn: 0,
            sense: Vec::new(),
        };
        self.queue(response.to_pdu(), Numbering::Status);
    }

    /// Ends a write whose data phase went wrong: the task is dropped (later Data-Out for it is discarded) and
    /// answered CHECK CONDITION, ABORTED COMMAND with the SPC-4 data phase condition, as an ErrorRecoveryLevel 0
    /// target must when it cannot recover the sequence (RFC 7143 6.x, 7.1).
    fn fail_write(&mut self, itt: u32, error: DataError) {
        let Some(write) = self.writes.remove(&itt) else {
            return;
        };
        let response = ScsiResponse {
            response: 0,
            status: 0x02,
            residual: Residual::Underflow(
                write.command.expected_data_transfer_length - write.received,
            ),
            itt,
            sequence: TargetSequence::default(),
            exp_data_sn: write.r2t_sn,
            sense: error.fixed_sense().to_vec(),
        };
        self.queue(response.to_pdu(), Numbering::Status);
    }

    fn finish_write_if_complete(&mut self, itt: u32) {
        let complete = self
            .writes
            .get(&itt)
            .is_some_and(|w| w.received == w.command.expected_data_transfer_length);
        if !complete {
            return;
        }
        let Some(write) = self.writes.remove(&itt) else {
            return;
        };
        let mut buffer = write.buffer;
        // Every byte arrived, so the parts are joined; the resize only guards the invariant.
        buffer.resize(write.command.expected_data_transfer_length as usize, 0);
        self.execute(
            write.command,
            write.lun,
            buffer,
            write.r2t_sn,
            Some(write.reservation),
        );
    }

    fn execute(
        &mut self,
        command: ScsiCommand,
        lun: u64,
        data_out: Vec<u8>,
        r2ts_sent: u32,
        data_reservation: Option<Reservation>,
    ) {
        let task = TaskId(self.next_task);
        self.next_task += 1;
        self.executing.insert(
            task,
            Executing {
                reference: TaskReference::of(&command),
                lun: command.lun,
                lun_number: lun,
                aborted: false,
                expected_transfer_length: command.expected_data_transfer_length,
                read: command.read,
                r2ts_sent,
                _data_reservation: data_reservation,
            },
        );
        self.events.push_back(SessionEvent::Execute {
            task,
            itt: command.itt,
            lun,
            cdb: command.cdb,
            data_out,
            expected_transfer_length: command.expected_data_transfer_length,
            attribute: command.attribute,
            read: command.read,
            write: command.write,
        });
    }

    /// Ends an executed command without answering it: the runtime tells the session that the response for this
    /// task was dropped (fault injection: the lost reply). The task leaves the command window like any completed
    /// one; StatSN does not advance, so no gap shows in later responses. The session remembers the task (the last
    /// MAX_UNDELIVERED_RESPONSES of them) so that an ABORT TASK naming it answers FUNCTION COMPLETE.
    pub fn complete_command_silently(&mut self, task: TaskId) {
        let Some(executing) = self.executing.remove(&task).filter(|e| !e.aborted) else {
            return;
        };
        if self.dropped_responses.len() >= MAX_UNDELIVERED_RESPONSES {
            self.dropped_responses.pop_front();
        }
        self.dropped_responses.push_back(executing.reference);
    }

    /// Ends a task the runtime aborted (task management, a reset, or PREEMPT AND ABORT from another nexus)
    /// without a response: with TAS=0 an aborted task returns no status (SAM-5 5.6). It leaves the command window.
    pub fn end_aborted_command(&mut self, task: TaskId) {
        self.executing.remove(&task);
    }

    /// Builds the response PDUs of a finished command (RFC 7143 11.4, 11.7).
    pub fn complete_command(&mut self, task: TaskId, outcome: CommandOutcome) {
        // An aborted task ends without a response (SAM-5 5.6: the nexus that aborted it expects none).
        let Some(executing) = self.executing.remove(&task).filter(|e| !e.aborted) else {
            return;
        };
        let expected = executing.expected_transfer_length;
        let mut data_in = outcome.data_in;
        let residual = if !data_in.is_empty() || executing.read {
            let residual = Residual::of(data_in.len() as u32, expected);
            data_in.truncate(expected as usize);
            residual
        } else if let Some(wanted) = outcome.data_out_wanted {
            Residual::of(wanted, expected)
        } else {
            Residual::None
        };
        let status_in_data = outcome.sense.is_empty() && !data_in.is_empty();
        let segment = self.params.max_xmit_data_segment_length.max(512) as usize;
        let burst = self.params.max_burst_length.max(512) as usize;
        let pieces = data_in.len().div_ceil(segment);
        let mut offset = 0usize;
        for data_sn in 0..pieces {
            let end = (offset + segment).min(data_in.len());
            let last = end == data_in.len();
            let carries_status = last && status_in_data;
            let sequence = TargetSequence::default();
            let data_in_pdu = DataIn {
                // F ends a Data-In sequence (at most MaxBurstLength) and the last one (RFC 7143 11.7.1).
                final_bit: last || end.is_multiple_of(burst),
                acknowledge: false,
                status: carries_status.then_some(outcome.status),
                residual: if carries_status {
                    residual
                } else {
                    Residual::None
                },
                lun: executing.lun,
                itt: executing.reference.itt,
                ttt: RESERVED_TAG,
                sequence,
                data_sn: data_sn as u32,
                buffer_offset: offset as u32,
                data: data_in[offset..end].to_vec(),
            };
            let numbering = if carries_status {
                Numbering::Status
            } else {
                Numbering::NoStatus
            };
            self.queue(data_in_pdu.to_pdu(), numbering);
            offset = end;
        }
        self.queued_responses
            .insert(executing.reference.itt, executing.reference);
        if status_in_data {
            return;
        }
        let response = ScsiResponse {
            response: 0,
            status: outcome.status,
            residual,
            itt: executing.reference.itt,
            sequence: TargetSequence::default(),
            exp_data_sn: if pieces > 0 {
                pieces as u32
            } else {
                executing.r2ts_sent
            },
            sense: outcome.sense,
        };
        self.queue(response.to_pdu(), Numbering::Status);
    }

    fn handle_nop_out(&mut self, pdu: &Pdu) {
        let nop = NopOut::from_pdu(pdu);
        if nop.ttt != RESERVED_TAG {
            self.handle_ping_answer(pdu);
            return;
        }
        // RFC 7143 11.19: answer with the same data, within what the initiator accepts.
        let mut data = nop.data;
        data.truncate(self.params.max_xmit_data_segment_length as usize);
        let answer = NopIn {
            lun: nop.lun,
            itt: nop.itt,
            ttt: RESERVED_TAG,
            sequence: TargetSequence::default(),
            data,
        };
        self.queue(answer.to_pdu(), Numbering::Status);
    }

    fn handle_ping_answer(&mut self, pdu: &Pdu) {
        let ttt = pdu.u32_at(20);
        if self.outstanding_ping == Some(ttt) {
            self.outstanding_ping = None;
        }
    }

    /// A target-initiated NOP-In (RFC 7143 11.19: ITT reserved, TTT valid, StatSN not advanced).
    pub fn ping(&mut self) {
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
        self.outstanding_ping = Some(ttt);
        let nop = NopIn {
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt,
            sequence: TargetSequence::default(),
            data: Vec::new(),
        };
        self.queue(nop.to_pdu(), Numbering::NoStatus);
    }

    /// True while a ping has not been answered.
    pub fn ping_outstanding(&self) -> bool {
        self.outstanding_ping.is_some()
    }

    fn handle_task_management(&mut self, pdu: &Pdu) {
        let request = TaskManagementRequest::from_pdu(pdu);
        let lun = message::decode_lun(request.lun).unwrap_or(u64::MAX);
        match request.function {
            tmf::ABORT_TASK => match self.abort_task(&request) {
                AbortAnswer::Now(response) => self.answer_task_management(request.itt, response),
                AbortAnswer::AfterInFlight(task) => {
                    let event = self.tmf_event(&request, lun, vec![task]);
                    self.events.push_back(event);
                }
            },
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => {
                // Tasks this session holds for the LU are aborted; the runtime acts on the LU and waits for the
                // executing ones before it answers (SAM-5 7.3, 7.4, 7.6).
                let in_flight = self.abort_tasks_of_lun(lun);
                let event = self.tmf_event(&request, lun, in_flight);
                self.events.push_back(event);
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                self.writes.clear();
                let in_flight = self.abort_all_executing();
                let event = self.tmf_event(&request, lun, in_flight);
                self.events.push_back(event);
            }
            tmf::TASK_REASSIGN => {
                self.answer_task_management(request.itt, tmf::TASK_REASSIGNMENT_NOT_SUPPORTED)
            }
            _ => self.answer_task_management(request.itt, tmf::FUNCTION_NOT_SUPPORTED),
        }
    }

    fn tmf_event(
        &self,
        request: &TaskManagementRequest,
        lun: u64,
        in_flight: Vec<TaskId>,
    ) -> SessionEvent {
        SessionEvent::TaskManagement {
            itt: request.itt,
            function: request.function,
            lun,
            in_flight,
            referenced_task_tag: request.referenced_task_tag,
            ref_cmd_sn: request.ref_cmd_sn,
        }
    }

    /// ABORT TASK (RFC 7143 11.5.1): a task held here (awaiting data or reordering) is aborted: FUNCTION COMPLETE.
    ///
    /// An executed task whose SCSI Response has not reached the initiator — dropped by the runtime
    /// ([`TargetSession::complete_command_silently`]) or still waiting in the transmit queue — is also answered
    /// FUNCTION COMPLETE when Referenced Task Tag and RefCmdSN name it (11.5.4, 11.5.5). From the target's view the
    /// task is complete, but the initiator learns its outcome only from the response, which it never got; the
    /// abort leaves the outcome unknown to the initiator, which is what FUNCTION COMPLETE for ABORT TASK permits
    /// (11.5.1 a, 11.6.1). A queued response is withdrawn, so the initiator never sees a status for a task it was
    /// told is aborted. This is what ESXi needs when it aborts a slow ATS heartbeat: TASK DOES NOT EXIST there
    /// reads as a failing target and escalates to LUN reset.
    ///
    /// A task not found is either one whose command never arrived — RefCmdSN inside the CmdSN window and below the
    /// TMF's own CmdSN: the target must consider that CmdSN received and answer FUNCTION COMPLETE (11.5.1 b) — or
    /// one that already completed with its response delivered, or never existed: TASK DOES NOT EXIST (11.5.1 c;
    /// libiscsi's iSCSITMF.AbortTaskSimpleAsync checks this for a write it saw complete).
    fn abort_task(&mut self, request: &TaskManagementRequest) -> AbortAnswer {
        self.abort_task_now(request)
            .map_or_else(AbortAnswer::AfterInFlight, AbortAnswer::Now)
    }

    /// The answer to an ABORT TASK, or the executing task it must wait for.
    fn abort_task_now(&mut self, request: &TaskManagementRequest) -> Result<u8, TaskId> {
        let tag = request.referenced_task_tag;
        if self.writes.remove(&tag).is_some() {
            return Ok(tmf::FUNCTION_COMPLETE);
        }
        let queued = self
            .reorder
            .iter()
            .find(|(_, held)| matches!(held, Held::Pdu(pdu) if pdu.itt() == tag))
            .map(|(&cmd_sn, _)| cmd_sn);
        if let Some(cmd_sn) = queued {
            self.consume_cmd_sn(cmd_sn);
            return Ok(tmf::FUNCTION_COMPLETE);
        }
        if let Some(task) = self.executing_task_named_by(request) {
            // Executing now: the runtime aborts or waits for it before the answer goes out (SAM-5 7.2), and its
            // response is discarded.
            self.abort_executing(task);
            return Err(task);
        }
        if let Some(index) = self
            .dropped_responses
            .iter()
            .position(|t| t.named_by(request))
        {
            // Answered once: a later ABORT TASK for it finds no task (the abort ended it).
            self.dropped_responses.remove(index);
            return Ok(tmf::FUNCTION_COMPLETE);
        }
        if self
            .queued_responses
            .get(&tag)
            .is_some_and(|t| t.named_by(request))
        {
            self.withdraw_response(tag);
            return Ok(tmf::FUNCTION_COMPLETE);
        }
        let ref_cmd_sn = SerialNumber(request.ref_cmd_sn);
        let in_window = ref_cmd_sn.in_window(self.exp_cmd_sn, self.max_cmd_sn());
        let before_request = request.immediate || ref_cmd_sn.lt(SerialNumber(request.cmd_sn));
        if in_window && before_request && !self.reorder.contains_key(&ref_cmd_sn.0) {
            self.consume_cmd_sn(ref_cmd_sn.0);
            return Ok(tmf::FUNCTION_COMPLETE);
        }
        Ok(tmf::TASK_DOES_NOT_EXIST)
    }

    /// Removes the queued Data-In and SCSI Response PDUs of the task `itt`, whose response has not been handed to
    /// the runtime. Sequence numbers are assigned as PDUs leave, so the StatSN it would have taken goes to the next
    /// status and the initiator sees no gap (RFC 7143 4.2.2.2: StatSN counts the status the initiator receives).
    fn withdraw_response(&mut self, itt: u32) {
        self.queued_responses.remove(&itt);
        self.transmit.retain(|queued| {
            queued.pdu.itt() != itt
                || !matches!(
                    queued.pdu.opcode(),
                    Some(Opcode::DataIn | Opcode::ScsiResponse)
                )
        });
    }

    /// Aborts every task this session holds for `lun` (awaiting Data-Out, or waiting for its CmdSN turn), without
    /// responses, as ABORT TASK SET does and as PREEMPT AND ABORT asks for a preempted nexus (SPC-4 5.13.11.5,
    /// SAM-5 7.3). A queued command's CmdSN is still consumed, so later commands are not held back.
    ///
    /// Tasks of `lun` that the runtime is executing are marked aborted: their responses will be discarded. They
    /// are returned so the runtime can stop those that have not started and wait for those that have.
    pub fn abort_tasks_of_lun(&mut self, lun: u64) -> Vec<TaskId> {
        self.writes.retain(|_, write| write.lun != lun);
        let queued: Vec<u32> = self
            .reorder
            .iter()
            .filter(|(_, held)| {
                matches!(held, Held::Pdu(pdu) if pdu.opcode() == Some(Opcode::ScsiCommand)
                    && message::decode_lun(pdu.lun_field()) == Some(lun))
            })
            .map(|(&cmd_sn, _)| cmd_sn)
            .collect();
        for cmd_sn in queued {
            self.consume_cmd_sn(cmd_sn);
        }
        self.abort_executing_where(|executing| executing.lun_number == lun)
    }

    /// Marks every executing task aborted (target resets, SAM-5 6.3.2) and returns them.
    fn abort_all_executing(&mut self) -> Vec<TaskId> {
        self.abort_executing_where(|_| true)
    }

    fn abort_executing_where(&mut self, selected: impl Fn(&Executing) -> bool) -> Vec<TaskId> {
        let mut tasks: Vec<TaskId> = self
            .executing
            .iter()
            .filter(|(_, executing)| !executing.aborted && selected(executing))
            .map(|(&task, _)| task)
            .collect();
        tasks.sort_by_key(|task| task.0);
        for &task in &tasks {
            self.abort_executing(task);
        }
        tasks
    }

    fn abort_executing(&mut self, task: TaskId) {
        if let Some(executing) = self.executing.get_mut(&task) {
            executing.aborted = true;
        }
    }

    /// The executing task an ABORT TASK names (RFC 7143 11.5.4, 11.5.5), unless it is already aborted.
    fn executing_task_named_by(&self, request: &TaskManagementRequest) -> Option<TaskId> {
        self.executing
            .iter()
            .find(|(_, executing)| !executing.aborted && executing.reference.named_by(request))
            .map(|(&task, _)| task)
    }

    /// Marks a CmdSN as received without a command (its command was aborted or lost), so later commands are not
    /// held back waiting for it.
    fn consume_cmd_sn(&mut self, cmd_sn: u32) {
        self.reorder.insert(cmd_sn, Held::Consumed);
        // Dispatching inside a TMF cannot fail the connection: only SCSI commands and NOPs can be held, and both
        // are handled without fatal errors.
        let _ = self.dispatch_reordered();
    }

    fn answer_task_management(&mut self, itt: u32, response: u8) {
        let answer = TaskManagementResponse {
            response,
            itt,
            sequence: TargetSequence::default(),
        };
        self.queue(answer.to_pdu(), Numbering::Status);
    }

    /// The runtime's answer to a `SessionEvent::TaskManagement`.
    pub fn complete_task_management(&mut self, itt: u32, response: u8) {
        self.answer_task_management(itt, response);
    }

    fn handle_text(&mut self, pdu: &Pdu) {
        let request = TextRequest::from_pdu(pdu);
        if request.continue_bit {
            // Long text requests are not needed by any key we answer in full feature phase.
            self.reject(reject::PROTOCOL_ERROR, pdu);
            return;
        }
        if request.ttt != RESERVED_TAG {
            // RFC 7143 11.10.4: an empty Text Request with the TTT we gave asks for the next part of a long answer.
            match self.long_text.take() {
                Some(long) if long.itt == request.itt && long.ttt == request.ttt => {
                    self.answer_text(long.itt, long.rest);
                }
                other => {
                    self.long_text = other;
                    self.reject(reject::INVALID_PDU_FIELD, pdu);
                }
            }
            return;
        }
        // TTT 0xffffffff starts a new exchange, and resets one in progress (11.10.4).
        self.long_text = None;
        self.events.push_back(SessionEvent::Text {
            itt: request.itt,
            data: request.data,
        });
    }

    /// Answers a Text request with the given key=value bytes: in one Text Response, or, when they exceed what
    /// the initiator receives in one PDU (its MaxRecvDataSegmentLength, 13.12), in parts it asks for one by one
    /// (RFC 7143 11.11.1: C=1 with a TTT of ours on every part but the last).
    /// Also sends each later part, when the initiator asks for it.
    pub fn answer_text(&mut self, itt: u32, mut data: Vec<u8>) {
        let fits = self.params.max_xmit_data_segment_length.max(512) as usize;
        let rest = if data.len() > fits {
            data.split_off(fits)
        } else {
            Vec::new()
        };
        let last = rest.is_empty();
        let ttt = if last {
            RESERVED_TAG
        } else {
            next_ttt(&mut self.next_ttt)
        };
        let response = TextResponse {
            final_bit: last,
            continue_bit: !last,
            lun: [0; 8],
            itt,
            ttt,
            sequence: TargetSequence::default(),
            data,
        };
        self.queue(response.to_pdu(), Numbering::Status);
        if !last {
            self.long_text = Some(LongText { itt, ttt, rest });
        }
    }

    fn handle_logout(&mut self, pdu: &Pdu) {
        let request = LogoutRequest::from_pdu(pdu);
        // Reason 2 (remove the connection for recovery) needs ErrorRecoveryLevel 2 (RFC 7143 11.15.1: response 2,
        // connection recovery is not supported).
        let response_code = if request.reason == 2 { 2 } else { 0 };
        let response = LogoutResponse {
            response: response_code,
            itt: request.itt,
            sequence: TargetSequence::default(),
            time2wait: 0,
            time2retain: 0,
        };
        self.queue(response.to_pdu(), Numbering::Status);
        if response_code == 0 {
            self.logged_out = true;
            self.writes.clear();
            self.reorder.clear();
            self.events.push_back(SessionEvent::Logout {
                reason: request.reason,
            });
        }
    }
}

/// Takes the next Target Transfer Tag: never 0 nor the reserved 0xffffffff (RFC 7143 11.7.4).
fn next_ttt(counter: &mut u32) -> u32 {
    let ttt = *counter;
    *counter = counter.wrapping_add(1).max(1);
    if *counter == RESERVED_TAG {
        *counter = 1;
    }
    ttt
}

/// The rest of a Text Response too long for one PDU, sent when the initiator asks for it.
#[derive(Debug)]
struct LongText {
    itt: u32,
    ttt: u32,
    rest: Vec<u8>,
}

/// A SCSI Response, or a Data-In carrying status (S bit, RFC 7143 11.7.1): the PDU that ends a command.
fn carries_command_status(pdu: &Pdu) -> bool {
    match pdu.opcode() {
        Some(Opcode::ScsiResponse) => true,
        Some(Opcode::DataIn) => pdu.bhs[1] & 0x01 != 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::encode_lun;

    fn params() -> SessionParams {
        SessionParams {
            max_xmit_data_segment_length: 1024,
            first_burst_length: 2048,
            max_burst_length: 4096,
            max_outstanding_r2t: 2,
            initial_r2t: false,
            ..SessionParams::default()
        }
    }

    fn command(
        itt: u32,
        cmd_sn: u32,
        write: bool,
        edtl: u32,
        data: Vec<u8>,
        final_bit: bool,
    ) -> Pdu {
        ScsiCommand {
            immediate: false,
            final_bit,
            read: !write,
            write,
            attribute: 1,
            lun: encode_lun(0),
            itt,
            expected_data_transfer_length: edtl,
            cmd_sn,
            exp_stat_sn: 0,
            cdb: vec![if write { 0x2A } else { 0x28 }, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            data,
        }
        .to_pdu()
    }

    fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, len: usize, final_bit: bool) -> Pdu {
        DataOut {
            final_bit,
            lun: encode_lun(0),
            itt,
            ttt,
            exp_stat_sn: 0,
            data_sn,
            buffer_offset: offset,
            data: vec![(offset / 512) as u8; len],
        }
        .to_pdu()
    }

    fn drain(session: &mut TargetSession) -> Vec<Pdu> {
        std::iter::from_fn(|| session.poll_transmit()).collect()
    }

    fn executed(session: &mut TargetSession) -> Vec<(TaskId, u32, Vec<u8>)> {
        std::iter::from_fn(|| session.poll_event())
            .filter_map(|e| match e {
                SessionEvent::Execute {
                    task,
                    itt,
                    data_out,
                    ..
                } => Some((task, itt, data_out)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn read_data_in_is_segmented_with_status_in_last_pdu_and_residual() {
        let mut session = TargetSession::new(params(), 5, 100, 16);
        session
            .handle_pdu(command(1, 5, false, 2000, vec![], true))
            .unwrap();
        let (task, itt, _) = executed(&mut session).remove(0);
        assert_eq!(itt, 1);
        session.complete_command(
            task,
            CommandOutcome {
                data_in: vec![7; 2048],
                ..Default::default()
            },
        );
        let pdus = drain(&mut session);
        assert_eq!(pdus.len(), 2);
        let first = DataIn::from_pdu(&pdus[0]);
        let last = DataIn::from_pdu(&pdus[1]);
        assert_eq!(
            (first.data.len(), first.status, first.data_sn),
            (1024, None, 0)
        );
        assert_eq!(
            (
                last.data.len(),
                last.status,
                last.data_sn,
                last.buffer_offset
            ),
            (976, Some(0), 1, 1024)
        );
        assert_eq!(last.residual, Residual::Overflow(48));
        assert_eq!(last.sequence.stat_sn, 100);
        assert_eq!(last.sequence.exp_cmd_sn, 6);
    }

    #[test]
    fn sense_goes_in_a_scsi_response_and_statsn_advances() {
        let mut session = TargetSession::new(params(), 0, 7, 16);
        session
            .handle_pdu(command(1, 0, false, 512, vec![], true))
            .unwrap();
        let (task, ..) = executed(&mut session).remove(0);
        session.complete_command(
            task,
            CommandOutcome {
                status: 2,
                sense: vec![0x70; 18],
                ..Default::default()
            },
        );
        let response = ScsiResponse::from_pdu(&drain(&mut session)[0]);
        assert_eq!(
            (
                response.status,
                response.sense.len(),
                response.sequence.stat_sn
            ),
            (2, 18, 7)
        );
        assert_eq!(response.residual, Residual::Underflow(512));
    }

    #[test]
    fn write_gathers_immediate_unsolicited_and_r2t_data() {
        let mut session = TargetSession::new(params(), 0, 0, 16);
        // 8 KiB write: 512 immediate, unsolicited up to FirstBurstLength 2048, then R2Ts of 4096 (two allowed).
        session
            .handle_pdu(command(9, 0, true, 8192, vec![0; 512], false))
            .unwrap();
        let r2ts: Vec<_> = drain(&mut session)
            .iter()
            .map(ReadyToTransfer::from_pdu)
            .collect();
        assert_eq!(r2ts.len(), 2);
        assert_eq!(
            (
                r2ts[0].buffer_offset,
                r2ts[0].desired_length,
                r2ts[0].r2t_sn
            ),
            (2048, 4096, 0)
        );
        assert_eq!(
            (
                r2ts[1].buffer_offset,
                r2ts[1].desired_length,
                r2ts[1].r2t_sn
            ),
            (6144, 2048, 1)
        );
        session
            .handle_pdu(data_out(9, RESERVED_TAG, 0, 512, 1024, false))
            .unwrap();
        session
            .handle_pdu(data_out(9, RESERVED_TAG, 1, 1536, 512, true))
            .unwrap();
        for (i, offset) in [2048u32, 3072, 4096, 5120].into_iter().enumerate() {
            session
                .handle_pdu(data_out(
                    9,
                    r2ts[0].ttt,
                    i as u32,
                    offset,
                    1024,
                    offset == 5120,
                ))
                .unwrap();
        }
        assert!(executed(&mut session).is_empty(), "not all data yet");
        session
            .handle_pdu(data_out(9, r2ts[1].ttt, 0, 6144, 1024, false))
            .unwrap();
        session
            .handle_pdu(data_out(9, r2ts[1].ttt, 1, 7168, 1024, true))
            .unwrap();
        let done = executed(&mut session);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].2.len(), 8192);
        assert_eq!(done[0].2[7168], (7168 / 512) as u8);
    }

    /// A session with InitialR2T=Yes and no immediate data holding write ITT 3 of `edtl` bytes, and the R2Ts it
    /// sent for it (at most `max_outstanding_r2t` of at most `max_burst_length` each).
    fn write_awaiting_r2t_data(
        max_outstanding_r2t: u32,
        max_burst_length: u32,
        edtl: u32,
    ) -> (TargetSession, Vec<ReadyToTransfer>) {
        let p = SessionParams {
            max_outstanding_r2t,
            initial_r2t: true,
            immediate_data: false,
            max_burst_length,
            ..params()
        };
        let mut session = TargetSession::new(p, 0, 0, 16);
        session
            .handle_pdu(command(3, 0, true, edtl, vec![], true))
            .unwrap();
        let r2ts = drain(&mut session)
            .iter()
            .map(ReadyToTransfer::from_pdu)
            .collect();
        (session, r2ts)
    }

    #[test]
    fn r2ts_beyond_max_outstanding_wait_for_completed_sequences() {
        let (mut session, first) = write_awaiting_r2t_data(1, params().max_burst_length, 8192);
        assert_eq!(first.len(), 1);
        for (i, offset) in [0u32, 1024, 2048, 3072].into_iter().enumerate() {
            session
                .handle_pdu(data_out(
                    3,
                    first[0].ttt,
                    i as u32,
                    offset,
                    1024,
                    offset == 3072,
                ))
                .unwrap();
        }
        let second: Vec<_> = drain(&mut session)
            .iter()
            .map(ReadyToTransfer::from_pdu)
            .collect();
        assert_eq!((second[0].buffer_offset, second[0].r2t_sn), (4096, 1));
    }

    /// A session with InitialR2T=Yes holding write ITT 3 of 1024 bytes, and the R2T it sent for it.
    fn session_awaiting_write_data() -> (TargetSession, ReadyToTransfer) {
        let p = SessionParams {
            initial_r2t: true,
            ..params()
        };
        let mut session = TargetSession::new(p, 0, 0, 16);
        session
            .handle_pdu(command(3, 0, true, 1024, vec![], true))
            .unwrap();
        let r2t = ReadyToTransfer::from_pdu(&drain(&mut session)[0]);
        (session, r2t)
    }

    #[test]
    fn wrong_data_sn_fails_the_task_and_keeps_the_connection() {
        let (mut session, r2t) = session_awaiting_write_data();
        session
            .handle_pdu(data_out(3, r2t.ttt, 27, 0, 512, false))
            .unwrap();
        let response = ScsiResponse::from_pdu(&drain(&mut session)[0]);
        assert_eq!(
            (response.status, response.sense[2], response.sense[12]),
            (2, 0x0B, 0x4B)
        );
        // The rest of the task's data is discarded; nothing executes.
        session
            .handle_pdu(data_out(3, r2t.ttt, 1, 512, 512, true))
            .unwrap();
        assert!(executed(&mut session).is_empty());
        assert!(drain(&mut session).is_empty());
        assert_eq!(session.pending_tasks(), 0);
    }

    fn header_of(pdu: &Pdu) -> [u8; BHS_LEN] {
        pdu.bhs
    }

    #[test]
    fn a_data_digest_error_rejects_the_pdu_and_ends_its_task_with_protocol_service_crc_error() {
        // In a Data-Out: Reject 02h, then CHECK CONDITION 0B/47/05 for the write; its later data is discarded.
        let (mut session, r2t) = session_awaiting_write_data();
        session.data_digest_error(&header_of(&data_out(3, r2t.ttt, 0, 0, 512, false)));
        let answers = drain(&mut session);
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(
            Reject::from_pdu(&answers[0]).reason,
            reject::DATA_DIGEST_ERROR
        );
        let response = ScsiResponse::from_pdu(&answers[1]);
        assert_eq!(
            (
                response.itt,
                response.status,
                response.sense[2],
                response.sense[12],
                response.sense[13]
            ),
            (3, 2, 0x0B, 0x47, 0x05)
        );
        session
            .handle_pdu(data_out(3, r2t.ttt, 1, 512, 512, true))
            .unwrap();
        assert!(executed(&mut session).is_empty());
        assert_eq!(session.pending_tasks(), 0);

        // In a SCSI Command's immediate data: the same answers, and its CmdSN counts, so the next command runs.
        let immediate = command(4, 1, true, 512, vec![7; 512], true);
        session.data_digest_error(&header_of(&immediate));
        let answers = drain(&mut session);
        assert_eq!(
            Reject::from_pdu(&answers[0]).reason,
            reject::DATA_DIGEST_ERROR
        );
        let response = ScsiResponse::from_pdu(&answers[1]);
        assert_eq!(
            (response.itt, response.sense[12], response.sense[13]),
            (4, 0x47, 0x05)
        );
        session
            .handle_pdu(command(5, 2, false, 512, vec![], true))
            .unwrap();
        assert_eq!(
            executed(&mut session)
                .iter()
                .map(|e| e.1)
                .collect::<Vec<_>>(),
            [5]
        );

        // In a NOP-Out: only the Reject.
        let mut nop = Pdu::new(Opcode::NopOut);
        nop.bhs[0] |= 0x40;
        session.data_digest_error(&header_of(&nop));
        let answers = drain(&mut session);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].opcode(), Some(Opcode::Reject));
    }

    #[test]
    fn out_of_order_commands_run_in_cmdsn_order_and_out_of_window_ones_are_dropped() {
        let mut session = TargetSession::new(params(), u32::MAX - 1, 0, 4);
        session
            .handle_pdu(command(2, u32::MAX, false, 0, vec![], true))
            .unwrap();
        session
            .handle_pdu(command(9, 3, false, 0, vec![], true))
            .unwrap(); // beyond MaxCmdSN = 1
        session
            .handle_pdu(command(8, u32::MAX - 2, false, 0, vec![], true))
            .unwrap(); // below ExpCmdSN
        assert!(executed(&mut session).is_empty());
        session
            .handle_pdu(command(1, u32::MAX - 1, false, 0, vec![], true))
            .unwrap();
        let order: Vec<u32> = executed(&mut session).iter().map(|e| e.1).collect();
        assert_eq!(order, vec![1, 2]);
    }

    #[test]
    fn immediate_commands_do_not_advance_the_window() {
        let mut session = TargetSession::new(params(), 10, 0, 4);
        let mut pdu = command(1, 10, false, 0, vec![], true);
        pdu.set_immediate(true);
        session.handle_pdu(pdu).unwrap();
        let (task, ..) = executed(&mut session).remove(0);
        session.complete_command(task, CommandOutcome::default());
        let response = ScsiResponse::from_pdu(&drain(&mut session)[0]);
        assert_eq!(response.sequence.exp_cmd_sn, 10);
    }

    #[test]
    fn nop_out_is_echoed_and_pings_are_tracked() {
        let mut session = TargetSession::new(params(), 0, 3, 4);
        let nop = NopOut {
            itt: 5,
            ttt: RESERVED_TAG,
            cmd_sn: 0,
            data: b"hello".to_vec(),
            ..Default::default()
        };
        session.handle_pdu(nop.to_pdu()).unwrap();
        let answer = NopIn::from_pdu(&drain(&mut session)[0]);
        assert_eq!(
            (answer.itt, answer.data.as_slice(), answer.sequence.stat_sn),
            (5, &b"hello"[..], 3)
        );
        session.ping();
        let ping = NopIn::from_pdu(&drain(&mut session)[0]);
        assert_eq!(ping.itt, RESERVED_TAG);
        assert_eq!(ping.sequence.stat_sn, 4, "a ping does not consume a StatSN");
        assert!(session.ping_outstanding());
        let pong = NopOut {
            immediate: true,
            itt: RESERVED_TAG,
            ttt: ping.ttt,
            ..Default::default()
        };
        session.handle_pdu(pong.to_pdu()).unwrap();
        assert!(!session.ping_outstanding());
        assert!(drain(&mut session).is_empty());
    }

    #[test]
    fn abort_task_for_held_completed_and_unknown_tasks() {
        let p = SessionParams {
            initial_r2t: true,
            ..params()
        };
        let mut session = TargetSession::new(p, 0, 0, 16);
        session
            .handle_pdu(command(1, 0, true, 4096, vec![], true))
            .unwrap(); // awaiting data
        session
            .handle_pdu(command(2, 1, false, 0, vec![], true))
            .unwrap();
        let (task, ..) = executed(&mut session).remove(0);
        session.complete_command(task, CommandOutcome::default());
        drain(&mut session);
        let abort = |tag, ref_cmd_sn| {
            TaskManagementRequest {
                immediate: true,
                function: tmf::ABORT_TASK,
                itt: 100 + tag,
                referenced_task_tag: tag,
                cmd_sn: 2,
                ref_cmd_sn,
                ..Default::default()
            }
            .to_pdu()
        };
        // Held (awaiting data): aborted. Completed (CmdSN 1 < ExpCmdSN 2): does not exist. Never arrived (CmdSN 2,
        // in the window): considered received, FUNCTION COMPLETE. Beyond the window: does not exist.
        for (tag, ref_cmd_sn, expected) in [
            (1, 0, tmf::FUNCTION_COMPLETE),
            (2, 1, tmf::TASK_DOES_NOT_EXIST),
            (5, 2, tmf::FUNCTION_COMPLETE),
            (7, 900, tmf::TASK_DOES_NOT_EXIST),
        ] {
            session.handle_pdu(abort(tag, ref_cmd_sn)).unwrap();
            let response = TaskManagementResponse::from_pdu(&drain(&mut session)[0]);
            assert_eq!(response.response, expected, "task {tag}");
        }
        assert_eq!(session.pending_tasks(), 0);
        // CmdSN 2 was consumed by the abort: command 3 runs at once.
        session
            .handle_pdu(command(8, 3, false, 0, vec![], true))
            .unwrap();
        assert_eq!(executed(&mut session).len(), 1);
    }

    #[test]
    fn responses_in_completion_order_take_dense_statsns_and_the_window_counts_executing_tasks() {
        let mut session = TargetSession::new(params(), 0, 40, 4);
        for (itt, cmd_sn) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
            session
                .handle_pdu(command(itt, cmd_sn, false, 0, vec![], true))
                .unwrap();
        }
        let tasks = executed(&mut session);
        assert_eq!(tasks.len(), 4);
        // Four executing fill the window of four: MaxCmdSN stays at 3 (ExpCmdSN 4 - 1: closed).
        session.ping();
        let ping = drain(&mut session).remove(0);
        assert_eq!((ping.u32_at(28), ping.u32_at(32)), (4, 3));
        // A command beyond the window is ignored.
        session
            .handle_pdu(command(9, 4, false, 0, vec![], true))
            .unwrap();
        assert!(executed(&mut session).is_empty());
        // Completed in the order 3, 1: StatSNs 40 and 41 in that order; each completion opens one slot.
        for index in [2, 0] {
            session.complete_command(tasks[index].0, CommandOutcome::default());
        }
        let responses: Vec<(u32, u32, u32)> = drain(&mut session)
            .iter()
            .map(|pdu| (pdu.itt(), pdu.u32_at(24), pdu.u32_at(32)))
            .collect();
        assert_eq!(responses, vec![(3, 40, 5), (1, 41, 5)]);
    }

    #[test]
    fn abort_task_of_an_executing_task_waits_for_the_runtime_and_discards_its_response() {
        let mut session = TargetSession::new(params(), 0, 0, 16);
        session
            .handle_pdu(command(1, 0, false, 0, vec![], true))
            .unwrap();
        let (task, ..) = executed(&mut session).remove(0);
        session.handle_pdu(abort_request(1, 0, 1)).unwrap();
        assert!(
            drain(&mut session).is_empty(),
            "no answer before the task is gone"
        );
        let in_flight = match session.poll_event() {
            Some(SessionEvent::TaskManagement { in_flight, .. }) => in_flight,
            other => panic!("expected a task management event, got {other:?}"),
        };
        assert_eq!(in_flight, vec![task]);
        // The task finishes anyway: its response is discarded; the runtime then answers the TMF.
        session.complete_command(task, CommandOutcome::default());
        session.complete_task_management(1001, tmf::FUNCTION_COMPLETE);
        let sent = drain(&mut session);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].opcode(), Some(Opcode::TaskManagementResponse));
        assert_eq!(session.pending_tasks(), 0);
    }

    fn abort_request(tag: u32, ref_cmd_sn: u32, cmd_sn: u32) -> Pdu {
        TaskManagementRequest {
            immediate: true,
            function: tmf::ABORT_TASK,
            itt: 1000 + tag,
            referenced_task_tag: tag,
            cmd_sn,
            ref_cmd_sn,
            ..Default::default()
        }
        .to_pdu()
    }

    /// Sends one ABORT TASK and returns the TMF Response (the only PDU it produces here).
    fn abort_answer(
        session: &mut TargetSession,
        tag: u32,
        ref_cmd_sn: u32,
    ) -> TaskManagementResponse {
        let cmd_sn = session.exp_cmd_sn.0;
        session
            .handle_pdu(abort_request(tag, ref_cmd_sn, cmd_sn))
            .unwrap();
        let pdus = drain(session);
        assert_eq!(pdus.len(), 1, "one TMF response");
        TaskManagementResponse::from_pdu(&pdus[0])
    }

    #[test]
    fn abort_task_for_a_dropped_response_is_function_complete_once() {
        let mut session = TargetSession::new(params(), 0, 50, 16);
        // CmdSN 0: executed, response dropped by the runtime. CmdSN 1: executed and answered.
        session
            .handle_pdu(command(1, 0, true, 512, vec![3; 512], true))
            .unwrap();
        let (dropped, ..) = executed(&mut session).remove(0);
        session.complete_command_silently(dropped);
        assert!(drain(&mut session).is_empty(), "nothing sent for it");
        session
            .handle_pdu(command(2, 1, true, 512, vec![4; 512], true))
            .unwrap();
        let (answered, ..) = executed(&mut session).remove(0);
        session.complete_command(answered, CommandOutcome::default());
        let response = ScsiResponse::from_pdu(&drain(&mut session)[0]);
        assert_eq!((response.itt, response.sequence.stat_sn), (2, 50));
        assert_eq!(session.pending_tasks(), 0);

        // The right tag with the wrong RefCmdSN (RFC 7143 11.5.5) names no task.
        assert_eq!(
            abort_answer(&mut session, 1, 1).response,
            tmf::TASK_DOES_NOT_EXIST
        );
        // The response the initiator received: TASK DOES NOT EXIST (libiscsi AbortTaskSimpleAsync).
        assert_eq!(
            abort_answer(&mut session, 2, 1).response,
            tmf::TASK_DOES_NOT_EXIST
        );
        // The dropped one: FUNCTION COMPLETE, with the next StatSN (no gap for the dropped response).
        let answer = abort_answer(&mut session, 1, 0);
        assert_eq!(answer.response, tmf::FUNCTION_COMPLETE);
        assert_eq!(answer.sequence.stat_sn, 53);
        // The abort ended it: asked again, there is no such task.
        assert_eq!(
            abort_answer(&mut session, 1, 0).response,
            tmf::TASK_DOES_NOT_EXIST
        );
        // The window did not move for any of these (no CmdSN was consumed).
        assert_eq!(session.exp_cmd_sn.0, 2);
    }

    #[test]
    fn abort_task_withdraws_a_queued_response_and_keeps_statsn_dense() {
        let mut session = TargetSession::new(params(), 0, 10, 16);
        // Task 1: a read whose Data-In (two PDUs, status in the last) is built but not yet handed to the wire.
        session
            .handle_pdu(command(1, 0, false, 2048, vec![], true))
            .unwrap();
        let (read, ..) = executed(&mut session).remove(0);
        session.complete_command(
            read,
            CommandOutcome {
                data_in: vec![1; 2048],
                ..Default::default()
            },
        );
        // Task 2: answered after it, with the next StatSN; still queued too.
        session
            .handle_pdu(command(2, 1, true, 512, vec![2; 512], true))
            .unwrap();
        let (write, ..) = executed(&mut session).remove(0);
        session.complete_command(write, CommandOutcome::default());
        // ABORT TASK for task 1 arrives before the runtime drained the queue.
        session.handle_pdu(abort_request(1, 0, 2)).unwrap();
        let pdus = drain(&mut session);
        assert!(
            pdus.iter().all(|pdu| pdu.itt() != 1),
            "no Data-In or status for the aborted task"
        );
        assert_eq!(pdus.len(), 2);
        let response = ScsiResponse::from_pdu(&pdus[0]);
        assert_eq!((response.itt, response.sequence.stat_sn), (2, 10));
        let answer = TaskManagementResponse::from_pdu(&pdus[1]);
        assert_eq!(
            (answer.itt, answer.response, answer.sequence.stat_sn),
            (1001, tmf::FUNCTION_COMPLETE, 11)
        );
        // Task 2's response was handed over (delivered): its abort finds no task.
        assert_eq!(
            abort_answer(&mut session, 2, 1).response,
            tmf::TASK_DOES_NOT_EXIST
        );
        // Later responses continue the numbering.
        session
            .handle_pdu(command(3, 2, false, 0, vec![], true))
            .unwrap();
        let (task, ..) = executed(&mut session).remove(0);
        session.complete_command(task, CommandOutcome::default());
        assert_eq!(
            ScsiResponse::from_pdu(&drain(&mut session)[0])
                .sequence
                .stat_sn,
            13
        );
    }

    #[test]
    fn dropped_responses_are_bounded_and_forgotten_when_the_tag_is_reused() {
        let mut session = TargetSession::new(params(), 0, 0, 128);
        let total = MAX_UNDELIVERED_RESPONSES as u32 + 1;
        for n in 0..total {
            session
                .handle_pdu(command(n, n, false, 0, vec![], true))
                .unwrap();
            let (task, ..) = executed(&mut session).remove(0);
            session.complete_command_silently(task);
        }
        assert!(session.dropped_responses.len() <= MAX_UNDELIVERED_RESPONSES);
        // The oldest was forgotten: answered as a completed task.
        assert_eq!(
            abort_answer(&mut session, 0, 0).response,
            tmf::TASK_DOES_NOT_EXIST
        );
        assert_eq!(
            abort_answer(&mut session, total - 1, total - 1).response,
            tmf::FUNCTION_COMPLETE
        );
        // Tag 5 is reused by a new command that is answered: an abort naming the old task no longer matches.
        session
            .handle_pdu(command(5, total, false, 0, vec![], true))
            .unwrap();
        let (task, ..) = executed(&mut session).remove(0);
        session.complete_command(task, CommandOutcome::default());
        drain(&mut session);
        assert_eq!(
            abort_answer(&mut session, 5, 5).response,
            tmf::TASK_DOES_NOT_EXIST
        );
        assert_eq!(
            abort_answer(&mut session, 6, 6).response,
            tmf::FUNCTION_COMPLETE
        );
    }

    #[test]
    fn aborting_immediate_tasks_with_dropped_responses() {
        let mut session = TargetSession::new(params(), 7, 0, 16);
        let immediate = |session: &mut TargetSession, itt, cmd_sn| {
            let mut pdu = command(itt, cmd_sn, false, 0, vec![], true);
            pdu.set_immediate(true);
            session.handle_pdu(pdu).unwrap();
            let (task, ..) = executed(session).remove(0);
            session.complete_command_silently(task);
        };
        immediate(&mut session, 4, 7);
        // A non-immediate command takes CmdSN 7 and is answered: ExpCmdSN is 8.
        session
            .handle_pdu(command(5, 7, false, 0, vec![], true))
            .unwrap();
        let (task, ..) = executed(&mut session).remove(0);
        session.complete_command(task, CommandOutcome::default());
        drain(&mut session);
        // Named by the CmdSN it carried (below the window now): recognised as dropped.
        assert_eq!(
            abort_answer(&mut session, 4, 7).response,
            tmf::FUNCTION_COMPLETE
        );
        // RFC 7143 11.5.5: for an immediate command RefCmdSN is the TMF's own CmdSN. Recognised as dropped, so no
        // CmdSN is consumed (the never-arrived rule of 11.5.1 would consume CmdSN 8).
        immediate(&mut session, 6, 8);
        assert_eq!(
            abort_answer(&mut session, 6, 8).response,
            tmf::FUNCTION_COMPLETE
        );
        assert_eq!(session.exp_cmd_sn.0, 8);
    }

    #[test]
    fn aborting_a_luns_tasks_keeps_the_command_window_moving() {
        let p = SessionParams {
            initial_r2t: true,
            ..params()
        };
        let mut session = TargetSession::new(p, 0, 0, 16);
        session
            .handle_pdu(command(1, 1, false, 0, vec![], true))
            .unwrap(); // early: waits for CmdSN 0
        session
            .handle_pdu(command(2, 3, true, 1024, vec![], true))
            .unwrap(); // early too
        session.abort_tasks_of_lun(0);
        session
            .handle_pdu(command(3, 0, false, 0, vec![], true))
            .unwrap();
        session
            .handle_pdu(command(4, 2, false, 0, vec![], true))
            .unwrap();
        let order: Vec<u32> = executed(&mut session).iter().map(|e| e.1).collect();
        assert_eq!(
            order,
            vec![3, 4],
            "aborted commands never run, later ones are not held back"
        );
        session
            .handle_pdu(command(5, 4, false, 0, vec![], true))
            .unwrap();
        assert_eq!(
            executed(&mut session)
                .iter()
                .map(|e| e.1)
                .collect::<Vec<_>>(),
            vec![5]
        );
        assert!(drain(&mut session)
            .iter()
            .all(|pdu| pdu.opcode() != Some(Opcode::ReadyToTransfer)));
    }

    #[test]
    fn writes_beyond_the_held_bytes_bound_get_task_set_full() {
        let p = SessionParams {
            initial_r2t: true,
            immediate_data: false,
            ..params()
        };
        let mut session = TargetSession::new(p, 0, 0, 16);
        let big = MAX_TASK_DATA_BYTES;
        let fits = (MAX_PENDING_WRITE_BYTES / big as u64) as u32;
        for itt in 0..fits {
            let mut pdu = command(itt, 0, true, big, vec![], true);
            pdu.set_immediate(true);
            session.handle_pdu(pdu).unwrap();
        }
        drain(&mut session);
        let mut one_more = command(99, 0, true, big, vec![], true);
        one_more.set_immediate(true);
        session.handle_pdu(one_more).unwrap();
        let response = ScsiResponse::from_pdu(&drain(&mut session)[0]);
        assert_eq!((response.itt, response.status), (99, 0x28));
        assert_eq!(session.pending_tasks(), fits as usize);
    }

    #[test]
    fn data_arriving_out_of_order_across_r2ts_is_joined_in_place() {
        let (mut session, r2ts) = write_awaiting_r2t_data(2, 1024, 3072);
        assert_eq!(r2ts.len(), 2);
        // The second burst first, then the first: its data waits, then joins.
        for (r2t, data_sn) in [(&r2ts[1], 0), (&r2ts[1], 1), (&r2ts[0], 0), (&r2ts[0], 1)] {
            let offset = r2t.buffer_offset + data_sn * 512;
            session
                .handle_pdu(data_out(3, r2t.ttt, data_sn, offset, 512, data_sn == 1))
                .unwrap();
        }
        let third = ReadyToTransfer::from_pdu(&drain(&mut session)[0]);
        assert_eq!(third.buffer_offset, 2048);
        for data_sn in 0..2 {
            session
                .handle_pdu(data_out(
                    3,
                    third.ttt,
                    data_sn,
                    2048 + data_sn * 512,
                    512,
                    data_sn == 1,
                ))
                .unwrap();
        }
        let (_, itt, data) = executed(&mut session).remove(0);
        assert_eq!(itt, 3);
        let expected: Vec<u8> = (0..3072usize).map(|i| (i / 512) as u8).collect();
        assert_eq!(data, expected);
    }

    #[test]
    fn write_memory_follows_the_data_that_arrived_not_the_length_claimed() {
        let p = SessionParams {
            initial_r2t: true,
            immediate_data: false,
            ..params()
        };
        let mut session = TargetSession::new(p, 0, 0, 16);
        session
            .handle_pdu(command(3, 0, true, MAX_TASK_DATA_BYTES, vec![], true))
            .unwrap();
        let r2t = ReadyToTransfer::from_pdu(&drain(&mut session)[0]);
        assert_eq!(session.write_bytes_allocated(), 0);
        session
            .handle_pdu(data_out(3, r2t.ttt, 0, 0, 512, false))
            .unwrap();
        let allocated = session.write_bytes_allocated();
        // At most the one burst solicited, however long the write claims to be.
        assert!(
            (512..=p.max_burst_length as usize).contains(&allocated),
            "{allocated} bytes allocated"
        );
    }

    #[test]
    fn a_shared_budget_refuses_writes_with_task_set_full_until_reservations_return() {
        let p = SessionParams {
            initial_r2t: true,
            immediate_data: true,
            ..params()
        };
        let budget = WriteBudget::new(4096);
        let mut first = TargetSession::new(p, 0, 0, 16).with_write_budget(budget.clone(), u64::MAX);
        let mut second =
            TargetSession::new(p, 0, 0, 16).with_write_budget(budget.clone(), u64::MAX);
        first
            .handle_pdu(command(1, 0, true, 3072, vec![7; 1024], true))
            .unwrap();
        assert_eq!(budget.reserved(), 3072);
        second
            .handle_pdu(command(1, 0, true, 2048, vec![8; 1024], true))
            .unwrap();
        let refused = ScsiResponse::from_pdu(&drain(&mut second)[0]);
        assert_eq!((refused.itt, refused.status), (1, TASK_SET_FULL));
        assert_eq!(budget.refused(), 1);
        // The first write's data arrives and it runs; the reservation is held until the command completes.
        let r2t = ReadyToTransfer::from_pdu(&drain(&mut first)[0]);
        for (data_sn, offset) in [(0, 1024), (1, 1536), (2, 2048), (3, 2560)] {
            first
                .handle_pdu(data_out(1, r2t.ttt, data_sn, offset, 512, offset == 2560))
                .unwrap();
        }
        let (task, _, data) = executed(&mut first).remove(0);
        assert_eq!(data.len(), 3072);
        assert_eq!(budget.reserved(), 3072);
        first.complete_command(task, CommandOutcome::default());
        assert_eq!(budget.reserved(), 0);
        second
            .handle_pdu(command(2, 1, true, 2048, vec![8; 1024], true))
            .unwrap();
        assert_eq!(budget.reserved(), 2048);
        assert_eq!(ReadyToTransfer::from_pdu(&drain(&mut second)[0]).itt, 2);
        drop(second);
        assert_eq!(
            budget.reserved(),
            0,
            "a closed session gives its reservations back"
        );
    }

    #[test]
    fn a_text_answer_longer_than_the_initiators_segment_goes_in_parts_it_asks_for() {
        let mut session = TargetSession::new(params(), 0, 0, 16);
        let request = |itt: u32, ttt: u32, cmd_sn: u32| {
            TextRequest {
                immediate: false,
                final_bit: true,
                continue_bit: false,
                lun: [0; 8],
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn: 0,
                data: Vec::new(),
            }
            .to_pdu()
        };
        session.handle_pdu(request(5, RESERVED_TAG, 0)).unwrap();
        assert!(matches!(
            session.poll_event(),
            Some(SessionEvent::Text { itt: 5, .. })
        ));
        let answer: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        session.answer_text(5, answer.clone());
        let mut received = Vec::new();
        let mut cmd_sn = 1;
        loop {
            let parts = drain(&mut session);
            assert_eq!(parts.len(), 1, "one part per request");
            let part = TextResponse::from_pdu(&parts[0]);
            assert!(part.data.len() <= 1024, "{} bytes", part.data.len());
            received.extend_from_slice(&part.data);
            if part.final_bit {
                assert!(!part.continue_bit);
                assert_eq!(part.ttt, RESERVED_TAG);
                break;
            }
            assert!(part.continue_bit);
            assert_ne!(part.ttt, RESERVED_TAG);
            // A continuation naming another TTT is refused, and the answer waits for the right one.
            session
                .handle_pdu(request(5, part.ttt.wrapping_add(7), cmd_sn))
                .unwrap();
            cmd_sn += 1;
            assert_eq!(
                Reject::from_pdu(&drain(&mut session)[0]).reason,
                reject::INVALID_PDU_FIELD
            );
            session.handle_pdu(request(5, part.ttt, cmd_sn)).unwrap();
            cmd_sn += 1;
        }
        assert_eq!(received, answer);
    }

    #[test]
    fn a_write_beyond_the_per_task_limit_is_refused_and_the_connection_kept() {
        let mut session = TargetSession::new(params(), 0, 0, 16);
        session
            .handle_pdu(command(4, 0, true, MAX_TASK_DATA_BYTES + 512, vec![], true))
            .unwrap();
        let response = ScsiResponse::from_pdu(&drain(&mut session)[0]);
        assert_eq!(
            (
                response.itt,
                response.status,
                response.sense[2],
                response.sense[12]
            ),
            (4, 0x02, 0x05, 0x24)
        );
        assert_eq!(session.pending_tasks(), 0);
        session
            .handle_pdu(command(5, 1, false, 512, vec![], true))
            .unwrap();
        assert_eq!(executed(&mut session)[0].1, 5, "the next command runs");
    }

    #[test]
    fn logout_closes_and_unknown_opcodes_are_rejected() {
        let mut session = TargetSession::new(params(), 0, 0, 4);
        let mut unknown = Pdu::new(Opcode::NopOut);
        unknown.bhs[0] = 0x1C;
        session.handle_pdu(unknown).unwrap();
        let reject = Reject::from_pdu(&drain(&mut session)[0]);
        assert_eq!(reject.reason, reject::COMMAND_NOT_SUPPORTED);
        assert_eq!(reject.rejected_header[0], 0x1C);
        let logout = LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 4,
            ..Default::default()
        };
        session.handle_pdu(logout.to_pdu()).unwrap();
        assert!(session.is_logged_out());
        assert_eq!(
            LogoutResponse::from_pdu(&drain(&mut session)[0]).response,
            0
        );
    }

    #[test]
    fn immediate_data_on_a_read_is_rejected() {
        let mut session = TargetSession::new(params(), 0, 0, 4);
        let mut pdu = command(1, 0, false, 512, vec![1; 512], true);
        pdu.bhs[1] &= !0x20;
        session.handle_pdu(pdu).unwrap();
        assert_eq!(
            Reject::from_pdu(&drain(&mut session)[0]).reason,
            reject::PROTOCOL_ERROR
        );
    }
}
