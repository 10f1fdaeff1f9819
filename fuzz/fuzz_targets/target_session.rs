//! The full-feature session state machine, target role (`lunlock_iscsi::session::TargetSession`), driven the way
//! `crates/server/src/connection.rs` drives it: every PDU from the initiator goes to `handle_pdu`, the events are
//! taken at once, and the runtime's answers (command outcomes, dropped responses, aborted tasks, task management
//! and text answers, pings, PREEMPT AND ABORT from another nexus, data digest errors) come in whatever order the
//! input says, between PDUs.
//!
//! The PDUs are structure-aware: SCSI Command, Data-Out, Task Management, Text, NOP-Out, SNACK, Logout, and raw
//! bytes, with CmdSN, ITT, TTT, DataSN and buffer offsets drawn either from what the session has said (the next
//! CmdSN, an R2T it sent, the next offset of a sequence) or from the input, so the fuzzer reaches the data phase,
//! reordering and aborts rather than only the Reject paths.
//!
//! Asserts: no panic; every PDU sent is a target opcode; StatSN is dense (each status-carrying PDU takes the next
//! one, the others show it); ExpCmdSN and MaxCmdSN never move back and the window never exceeds the queue depth;
//! data segments stay within the initiator's MaxRecvDataSegmentLength; R2Ts stay within MaxBurstLength; Data-In
//! offsets and DataSNs run in order; executed writes carry exactly EDTL bytes; task management names only tasks
//! still executing; and the tasks the session holds stay bounded (reorder buffer within the window, writes
//! within MAX_TASKS_AWAITING_DATA).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lunlock_iscsi::message::{
    self, reject, DataOut, LogoutRequest, NopOut, ReadyToTransfer, ScsiCommand,
    TaskManagementRequest, TextRequest, RESERVED_TAG,
};
use lunlock_iscsi::pdu::{self, Digests, Opcode, Pdu, SerialNumber, BHS_LEN};
use lunlock_iscsi::session::{
    CommandOutcome, SessionEvent, TargetSession, TaskId, MAX_TASKS_AWAITING_DATA,
    MAX_TASK_DATA_BYTES,
};
use lunlock_iscsi::SessionParams;
use std::collections::HashMap;

/// Steps per input: keeps one run short.
const MAX_STEPS: usize = 256;

#[derive(Arbitrary, Debug)]
struct Input {
    params: Params,
    exp_cmd_sn: u32,
    stat_sn: u32,
    queue_depth: u8,
    steps: Vec<Step>,
}

/// Negotiated parameters, mapped into what `TargetLogin` can produce with the server's `LoginSettings`.
#[derive(Arbitrary, Debug)]
struct Params {
    max_recv: u16,
    max_xmit: u32,
    max_burst: u32,
    first_burst: u32,
    max_outstanding_r2t: u8,
    immediate_data: bool,
    initial_r2t: bool,
}

impl Params {
    fn session_params(&self) -> SessionParams {
        let max_burst = 512 + self.max_burst % (1_048_576 - 511);
        SessionParams {
            // Small, so the fuzzer's data segments can reach it.
            max_recv_data_segment_length: 512 + self.max_recv as u32 % 8192,
            max_xmit_data_segment_length: 512 + self.max_xmit % ((1 << 24) - 512),
            max_burst_length: max_burst,
            first_burst_length: (512 + self.first_burst % (262_144 - 511)).min(max_burst),
            immediate_data: self.immediate_data,
            initial_r2t: self.initial_r2t,
            max_outstanding_r2t: 1 + self.max_outstanding_r2t as u32 % 8,
            ..SessionParams::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    Pdu(PduKind),
    /// The runtime finishes an executing task.
    Complete {
        pick: u8,
        status: u8,
        sense_len: u8,
        data_in_len: u16,
        data_out_wanted: Option<u32>,
    },
    /// The runtime drops the task's response (fault injection).
    CompleteSilently { pick: u8 },
    /// The runtime ends an aborted task without a response.
    EndAborted { pick: u8 },
    /// The runtime answers a task management function, after ending the tasks it aborted.
    AnswerTmf {
        pick: u8,
        response: u8,
        complete_in_flight: bool,
    },
    AnswerText { pick: u8, len: u8 },
    Ping,
    /// PREEMPT AND ABORT from another nexus aborts this session's tasks of a LUN.
    AbortLun { lun: u8 },
    /// A PDU whose data digest was wrong: the runtime rejects it.
    DataDigestError(PduKind),
    /// Sends everything queued.
    Transmit,
}

#[derive(Arbitrary, Debug)]
enum PduKind {
    Command {
        immediate: bool,
        final_bit: bool,
        read: bool,
        write: bool,
        attribute: u8,
        lun: Lun,
        itt: Tag,
        edtl: Length,
        cmd_sn: Sn,
        cdb: [u8; 16],
        extended_cdb: Vec<u8>,
        immediate_len: u16,
    },
    DataOut {
        /// Which R2T (or, with `unsolicited`, which write) the data answers.
        pick: u8,
        unsolicited: bool,
        len: u16,
        final_bit: Option<bool>,
        ttt: Option<u32>,
        data_sn: Option<u32>,
        offset: Option<u32>,
    },
    Tmf {
        immediate: bool,
        function: u8,
        lun: Lun,
        itt: Tag,
        referenced: Tag,
        cmd_sn: Sn,
        ref_cmd_sn: Sn,
    },
    Text {
        immediate: bool,
        final_bit: bool,
        continue_bit: bool,
        itt: Tag,
        ttt: u32,
        cmd_sn: Sn,
        data: Vec<u8>,
    },
    NopOut {
        immediate: bool,
        itt: Tag,
        ttt: Option<u32>,
        cmd_sn: Sn,
        data_len: u16,
    },
    Snack {
        itt: Tag,
        bhs: [u8; 16],
    },
    Logout {
        immediate: bool,
        reason: u8,
        itt: Tag,
        cid: u16,
        cmd_sn: Sn,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Lun {
    Zero,
    Small(u8),
    Raw([u8; 8]),
}

impl Lun {
    fn field(self) -> [u8; 8] {
        match self {
            Lun::Zero => message::encode_lun(0),
            Lun::Small(n) => message::encode_lun(n as u64 % 4),
            Lun::Raw(field) => field,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Tag {
    Pool(u8),
    Reserved,
    Raw(u32),
}

impl Tag {
    fn value(self) -> u32 {
        match self {
            Tag::Pool(n) => 1 + n as u32 % 16,
            Tag::Reserved => RESERVED_TAG,
            Tag::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sn {
    /// The next CmdSN (consumed by a non-immediate PDU).
    Next,
    /// Ahead of the next one: arrives early, waits in the reorder buffer.
    Ahead(u8),
    /// Behind: a duplicate or a stale one.
    Behind(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Length {
    Small(u16),
    Blocks(u8),
    Raw(u32),
}

impl Length {
    fn value(self) -> u32 {
        match self {
            Length::Small(n) => n as u32,
            Length::Blocks(n) => n as u32 * 512,
            Length::Raw(n) => n,
        }
    }
}

/// A write the harness sent, for unsolicited Data-Out.
struct SentWrite {
    itt: u32,
    lun: [u8; 8],
    next_offset: u32,
    next_data_sn: u32,
}

/// An R2T the session sent, with how far the harness has answered it.
struct OpenR2t {
    r2t: ReadyToTransfer,
    sent: u32,
    next_data_sn: u32,
}

struct Harness {
    session: TargetSession,
    params: SessionParams,
    queue_depth: u32,
    next_cmd_sn: u32,
    executing: Vec<(TaskId, u32, u32)>,
    tmfs: Vec<(u32, Vec<TaskId>)>,
    texts: Vec<u32>,
    writes: Vec<SentWrite>,
    r2ts: Vec<OpenR2t>,
    // What the initiator has seen.
    expected_stat_sn: u32,
    last_exp_cmd_sn: Option<u32>,
    last_max_cmd_sn: Option<u32>,
    data_in: HashMap<u32, (u32, u32)>,
    largest_text_answer: usize,
}

fuzz_target!(|input: Input| {
    let params = input.params.session_params();
    let queue_depth = 1 + input.queue_depth as u32 % 64;
    let mut h = Harness {
        session: TargetSession::new(params, input.exp_cmd_sn, input.stat_sn, queue_depth),
        params,
        queue_depth,
        next_cmd_sn: input.exp_cmd_sn,
        executing: Vec::new(),
        tmfs: Vec::new(),
        texts: Vec::new(),
        writes: Vec::new(),
        r2ts: Vec::new(),
        expected_stat_sn: input.stat_sn,
        last_exp_cmd_sn: None,
        last_max_cmd_sn: None,
        data_in: HashMap::new(),
        largest_text_answer: 0,
    };
    for step in input.steps.iter().take(MAX_STEPS) {
        if !h.step(step) {
            break;
        }
        h.take_events();
        h.check_bounds();
        if h.session.is_logged_out() {
            break;
        }
    }
    h.transmit();
});

impl Harness {
    /// One step; false when the connection ends.
    fn step(&mut self, step: &Step) -> bool {
        match step {
            Step::Pdu(kind) => {
                let Some(pdu) = self.build(kind) else {
                    return true;
                };
                // As the server's Wire does: the PDU goes through the codec with the connection's limit, and one
                // the codec refuses ends the connection.
                let bytes = pdu.to_bytes(Digests::default());
                let pdu = match pdu::decode(
                    &bytes,
                    Digests::default(),
                    self.params.max_recv_data_segment_length,
                ) {
                    Ok(Some((pdu, _))) => pdu,
                    _ => return false,
                };
                if let Err(error) = self.session.handle_pdu(pdu) {
                    // A fatal error closes the connection; what was queued is still flushed.
                    let _ = error.to_string();
                    self.transmit();
                    return false;
                }
            }
            Step::Complete {
                pick,
                status,
                sense_len,
                data_in_len,
                data_out_wanted,
            } => {
                if let Some((task, _, _)) = self.take_executing(*pick) {
                    let sense = if *sense_len == 0 {
                        Vec::new()
                    } else {
                        let mut sense = vec![0u8; 8 + (*sense_len as usize % 244)];
                        sense[0] = 0x70;
                        sense
                    };
                    self.session.complete_command(
                        task,
                        CommandOutcome {
                            status: *status,
                            sense,
                            data_in: vec![0x5A; *data_in_len as usize],
                            data_out_wanted: *data_out_wanted,
                        },
                    );
                }
            }
            Step::CompleteSilently { pick } => {
                if let Some((task, _, _)) = self.take_executing(*pick) {
                    self.session.complete_command_silently(task);
                }
            }
            Step::EndAborted { pick } => {
                if let Some((task, _, _)) = self.take_executing(*pick) {
                    self.session.end_aborted_command(task);
                }
            }
            Step::AnswerTmf {
                pick,
                response,
                complete_in_flight,
            } => {
                if !self.tmfs.is_empty() {
                    let (itt, in_flight) = self.tmfs.remove(*pick as usize % self.tmfs.len());
                    for task in in_flight {
                        if let Some(at) = self.executing.iter().position(|e| e.0 == task) {
                            self.executing.remove(at);
                            if *complete_in_flight {
                                // The task had already finished: its response must be discarded.
                                self.session.complete_command(task, CommandOutcome::default());
                            } else {
                                self.session.end_aborted_command(task);
                            }
                        }
                    }
                    self.session.complete_task_management(itt, *response);
                }
            }
            Step::AnswerText { pick, len } => {
                if !self.texts.is_empty() {
                    let itt = self.texts.remove(*pick as usize % self.texts.len());
                    let answer = b"TargetName=iqn.2026-11.io.lunlock:fuzz\0"
                        .iter()
                        .copied()
                        .cycle()
                        .take(*len as usize)
                        .collect::<Vec<u8>>();
                    self.largest_text_answer = self.largest_text_answer.max(answer.len());
                    self.session.answer_text(itt, answer);
                }
            }
            Step::Ping => {
                if !self.session.ping_outstanding() {
                    self.session.ping();
                }
            }
            Step::AbortLun { lun } => {
                let lun = *lun as u64 % 4;
                for task in self.session.abort_tasks_of_lun(lun) {
                    assert!(
                        self.executing.iter().any(|e| e.0 == task),
                        "abort_tasks_of_lun named {task:?}, which is not executing"
                    );
                }
            }
            Step::DataDigestError(kind) => {
                if let Some(pdu) = self.build(kind) {
                    let mut rejected = Pdu::new(Opcode::NopOut);
                    rejected.bhs = pdu.bhs;
                    self.session.reject_pdu(reject::DATA_DIGEST_ERROR, &rejected);
                }
            }
            Step::Transmit => self.transmit(),
        }
        true
    }

    fn take_executing(&mut self, pick: u8) -> Option<(TaskId, u32, u32)> {
        if self.executing.is_empty() {
            return None;
        }
        Some(self.executing.remove(pick as usize % self.executing.len()))
    }

    fn cmd_sn(&mut self, sn: Sn, immediate: bool) -> u32 {
        match sn {
            Sn::Next => {
                let cmd_sn = self.next_cmd_sn;
                if !immediate {
                    self.next_cmd_sn = self.next_cmd_sn.wrapping_add(1);
                }
                cmd_sn
            }
            Sn::Ahead(n) => self.next_cmd_sn.wrapping_add(1 + n as u32 % 64),
            Sn::Behind(n) => self.next_cmd_sn.wrapping_sub(1 + n as u32 % 64),
            Sn::Raw(v) => v,
        }
    }

    fn build(&mut self, kind: &PduKind) -> Option<Pdu> {
        let max_recv = self.params.max_recv_data_segment_length as usize;
        Some(match kind {
            PduKind::Command {
                immediate,
                final_bit,
                read,
                write,
                attribute,
                lun,
                itt,
                edtl,
                cmd_sn,
                cdb,
                extended_cdb,
                immediate_len,
            } => {
                let edtl = edtl.value();
                let itt = itt.value();
                let cmd_sn = self.cmd_sn(*cmd_sn, *immediate);
                let data_len = (*immediate_len as usize).min(max_recv);
                let mut full_cdb = cdb.to_vec();
                full_cdb.extend(extended_cdb.iter().take(240));
                if *write {
                    self.writes.push(SentWrite {
                        itt,
                        lun: lun.field(),
                        next_offset: data_len as u32,
                        next_data_sn: 0,
                    });
                    if self.writes.len() > 64 {
                        self.writes.remove(0);
                    }
                }
                ScsiCommand {
                    immediate: *immediate,
                    final_bit: *final_bit,
                    read: *read,
                    write: *write,
                    attribute: *attribute,
                    lun: lun.field(),
                    itt,
                    expected_data_transfer_length: edtl,
                    cmd_sn,
                    exp_stat_sn: self.expected_stat_sn,
                    cdb: full_cdb,
                    data: vec![0xC3; data_len],
                }
                .to_pdu()
            }
            PduKind::DataOut {
                pick,
                unsolicited,
                len,
                final_bit,
                ttt,
                data_sn,
                offset,
            } => {
                let len = (*len as u32).min(max_recv as u32);
                let (itt, lun, default_ttt, default_sn, default_offset, default_final);
                if *unsolicited || self.r2ts.is_empty() {
                    if self.writes.is_empty() {
                        return None;
                    }
                    let at = *pick as usize % self.writes.len();
                    let w = &mut self.writes[at];
                    (itt, lun) = (w.itt, w.lun);
                    default_ttt = RESERVED_TAG;
                    default_sn = w.next_data_sn;
                    default_offset = w.next_offset;
                    default_final = false;
                    w.next_offset = w.next_offset.wrapping_add(len);
                    w.next_data_sn = w.next_data_sn.wrapping_add(1);
                } else {
                    let at = *pick as usize % self.r2ts.len();
                    let open = &mut self.r2ts[at];
                    (itt, lun) = (open.r2t.itt, open.r2t.lun);
                    default_ttt = open.r2t.ttt;
                    default_sn = open.next_data_sn;
                    default_offset = open.r2t.buffer_offset.wrapping_add(open.sent);
                    open.sent = open.sent.wrapping_add(len);
                    open.next_data_sn = open.next_data_sn.wrapping_add(1);
                    default_final = open.sent >= open.r2t.desired_length;
                    if default_final {
                        self.r2ts.remove(at);
                    }
                }
                DataOut {
                    final_bit: final_bit.unwrap_or(default_final),
                    lun,
                    itt,
                    ttt: ttt.unwrap_or(default_ttt),
                    exp_stat_sn: self.expected_stat_sn,
                    data_sn: data_sn.unwrap_or(default_sn),
                    buffer_offset: offset.unwrap_or(default_offset),
                    data: vec![0x96; len as usize],
                }
                .to_pdu()
            }
            PduKind::Tmf {
                immediate,
                function,
                lun,
                itt,
                referenced,
                cmd_sn,
                ref_cmd_sn,
            } => {
                let cmd_sn_value = self.cmd_sn(*cmd_sn, *immediate);
                let ref_cmd_sn = match ref_cmd_sn {
                    Sn::Next => cmd_sn_value,
                    Sn::Ahead(n) => cmd_sn_value.wrapping_add(1 + *n as u32 % 64),
                    Sn::Behind(n) => cmd_sn_value.wrapping_sub(1 + *n as u32 % 64),
                    Sn::Raw(v) => *v,
                };
                TaskManagementRequest {
                    immediate: *immediate,
                    function: *function % 16,
                    lun: lun.field(),
                    itt: itt.value(),
                    referenced_task_tag: referenced.value(),
                    cmd_sn: cmd_sn_value,
                    exp_stat_sn: self.expected_stat_sn,
                    ref_cmd_sn,
                    exp_data_sn: 0,
                }
                .to_pdu()
            }
            PduKind::Text {
                immediate,
                final_bit,
                continue_bit,
                itt,
                ttt,
                cmd_sn,
                data,
            } => TextRequest {
                immediate: *immediate,
                final_bit: *final_bit,
                continue_bit: *continue_bit,
                lun: [0; 8],
                itt: itt.value(),
                ttt: *ttt,
                cmd_sn: self.cmd_sn(*cmd_sn, *immediate),
                exp_stat_sn: self.expected_stat_sn,
                data: data.iter().copied().take(max_recv).collect(),
            }
            .to_pdu(),
            PduKind::NopOut {
                immediate,
                itt,
                ttt,
                cmd_sn,
                data_len,
            } => NopOut {
                immediate: *immediate,
                lun: [0; 8],
                itt: itt.value(),
                ttt: ttt.unwrap_or(RESERVED_TAG),
                cmd_sn: self.cmd_sn(*cmd_sn, *immediate),
                exp_stat_sn: self.expected_stat_sn,
                data: vec![0x11; (*data_len as usize).min(max_recv)],
            }
            .to_pdu(),
            PduKind::Snack { itt, bhs } => {
                let mut pdu = Pdu::new(Opcode::SnackRequest);
                pdu.bhs[1] = 0x80 | (bhs[0] & 0x0F);
                pdu.set_itt(itt.value());
                pdu.bhs[20..36].copy_from_slice(bhs);
                pdu
            }
            PduKind::Logout {
                immediate,
                reason,
                itt,
                cid,
                cmd_sn,
            } => LogoutRequest {
                immediate: *immediate,
                reason: *reason % 4,
                itt: itt.value(),
                cid: *cid,
                cmd_sn: self.cmd_sn(*cmd_sn, *immediate),
                exp_stat_sn: self.expected_stat_sn,
            }
            .to_pdu(),
            PduKind::Raw(bytes) => {
                let mut bytes = bytes.clone();
                if bytes.len() < BHS_LEN {
                    bytes.resize(BHS_LEN, 0);
                }
                match pdu::decode(&bytes, Digests::default(), max_recv as u32) {
                    Ok(Some((pdu, _))) => pdu,
                    _ => return None,
                }
            }
        })
    }

    /// Takes every event, as `FullFeature::handle_events` does after each PDU.
    fn take_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Execute {
                    task,
                    itt,
                    cdb,
                    data_out,
                    expected_transfer_length,
                    write,
                    ..
                } => {
                    assert!(cdb.len() >= 16, "a CDB of {} bytes", cdb.len());
                    if write && expected_transfer_length > 0 {
                        assert_eq!(
                            data_out.len(),
                            expected_transfer_length as usize,
                            "a write executed without all its data"
                        );
                        assert!(expected_transfer_length <= MAX_TASK_DATA_BYTES);
                    } else {
                        assert!(data_out.is_empty(), "Data-Out for a command that writes nothing");
                    }
                    assert!(
                        !self.executing.iter().any(|e| e.0 == task),
                        "{task:?} handed out twice"
                    );
                    self.executing.push((task, itt, expected_transfer_length));
                }
                SessionEvent::TaskManagement { itt, in_flight, .. } => {
                    for task in &in_flight {
                        assert!(
                            self.executing.iter().any(|e| e.0 == *task),
                            "task management waits for {task:?}, which is not executing"
                        );
                    }
                    self.tmfs.push((itt, in_flight));
                }
                SessionEvent::Text { itt, data } => {
                    assert!(data.len() <= self.params.max_recv_data_segment_length as usize);
                    self.texts.push(itt);
                }
                SessionEvent::Logout { .. } => {}
            }
        }
    }

    fn check_bounds(&self) {
        // Tasks the session holds beyond those the runtime executes: the reorder buffer (at most the window)
        // and the writes gathering data.
        let held = self.session.pending_tasks();
        assert!(
            held <= self.executing.len() + self.queue_depth as usize + MAX_TASKS_AWAITING_DATA,
            "{held} tasks held with {} executing and a queue depth of {}",
            self.executing.len(),
            self.queue_depth
        );
    }

    /// Drains the transmit queue and checks every PDU the initiator would see.
    fn transmit(&mut self) {
        let mut count = 0usize;
        while let Some(pdu) = self.session.poll_transmit() {
            count += 1;
            assert!(count <= 1 << 20, "the transmit queue does not end");
            self.check_outgoing(&pdu);
        }
    }

    fn check_outgoing(&mut self, pdu: &Pdu) {
        let opcode = pdu.opcode().expect("the target sends only known opcodes");
        let carries_status = match opcode {
            Opcode::ScsiResponse
            | Opcode::TaskManagementResponse
            | Opcode::TextResponse
            | Opcode::LogoutResponse
            | Opcode::Reject => true,
            Opcode::DataIn => pdu.bhs[1] & 0x01 != 0,
            Opcode::NopIn => pdu.itt() != RESERVED_TAG,
            Opcode::ReadyToTransfer => false,
            other => panic!("the target sent an initiator opcode {other:?}"),
        };
        // RFC 7143 4.2.2.2: StatSN counts status; PDUs without status show the next one.
        assert_eq!(
            pdu.u32_at(24),
            self.expected_stat_sn,
            "StatSN of {opcode:?} is not the next one"
        );
        if carries_status {
            self.expected_stat_sn = self.expected_stat_sn.wrapping_add(1);
        }
        // RFC 7143 3.2.2.1: ExpCmdSN and MaxCmdSN never move back; the window is at most the queue depth.
        let exp = pdu.u32_at(28);
        let max = pdu.u32_at(32);
        if let Some(last) = self.last_exp_cmd_sn {
            assert!(SerialNumber(last).le(SerialNumber(exp)), "ExpCmdSN moved back");
        }
        if let Some(last) = self.last_max_cmd_sn {
            assert!(SerialNumber(last).le(SerialNumber(max)), "MaxCmdSN moved back");
        }
        self.last_exp_cmd_sn = Some(exp);
        self.last_max_cmd_sn = Some(max);
        let window = max.wrapping_sub(exp).wrapping_add(1) as i32;
        assert!(
            (0..=self.queue_depth as i32).contains(&window),
            "command window of {window} with queue depth {}",
            self.queue_depth
        );
        // Data segments fit what the initiator receives (the session never sends less than 512 per PDU).
        let max_xmit = self.params.max_xmit_data_segment_length.max(512) as usize;
        match opcode {
            Opcode::DataIn | Opcode::NopIn => assert!(
                pdu.data.len() <= max_xmit,
                "{opcode:?} with {} bytes, MaxRecvDataSegmentLength {max_xmit}",
                pdu.data.len()
            ),
            Opcode::ScsiResponse => assert!(pdu.data.len() <= 2 + 252),
            Opcode::Reject => assert_eq!(pdu.data.len(), BHS_LEN),
            Opcode::TextResponse => assert!(pdu.data.len() <= self.largest_text_answer),
            _ => assert!(pdu.data.is_empty(), "{opcode:?} with data"),
        }
        match opcode {
            Opcode::ReadyToTransfer => {
                let r2t = ReadyToTransfer::from_pdu(pdu);
                assert_ne!(r2t.ttt, RESERVED_TAG, "an R2T with the reserved TTT");
                assert!(
                    r2t.desired_length > 0
                        && r2t.desired_length <= self.params.max_burst_length.max(512),
                    "R2T of {} bytes, MaxBurstLength {}",
                    r2t.desired_length,
                    self.params.max_burst_length
                );
                assert!(
                    r2t.buffer_offset as u64 + r2t.desired_length as u64
                        <= MAX_TASK_DATA_BYTES as u64
                );
                self.r2ts.push(OpenR2t {
                    r2t,
                    sent: 0,
                    next_data_sn: 0,
                });
                if self.r2ts.len() > 64 {
                    self.r2ts.remove(0);
                }
            }
            Opcode::DataIn => {
                let data_sn = pdu.u32_at(36);
                let offset = pdu.u32_at(40);
                let len = pdu.data.len() as u32;
                assert!(len > 0, "an empty Data-In");
                if data_sn == 0 {
                    assert_eq!(offset, 0, "the first Data-In does not start at 0");
                } else {
                    let previous = self.data_in.get(&pdu.itt()).copied();
                    assert_eq!(
                        previous,
                        Some((data_sn - 1, offset)),
                        "Data-In out of order (DataSN {data_sn}, offset {offset})"
                    );
                }
                self.data_in.insert(pdu.itt(), (data_sn, offset + len));
            }
            _ => {}
        }
    }
}
