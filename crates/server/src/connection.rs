//! One TCP connection: the login phase, then the full feature phase, driving the sans-IO `iscsi` login and
//! session machines and executing SCSI commands through the target's dispatcher.
//!
//! Commands run inline in this task, in CmdSN order: data is normally in the page cache, so a pread/pwrite is
//! cheaper than handing the command to another thread (see docs/architecture.md). Only commands that may wait for
//! the disk (SYNCHRONIZE CACHE, FUA writes) run under `block_in_place`, so they do not stall other connections
//! scheduled on the same worker.
//!
//! Failure handling (RFC 7143 7): a header digest error, an oversized data segment or a fatal session error
//! closes this connection only; a data digest error rejects that PDU and keeps the connection.

use crate::fault::{self, Decision, FaultTable, Injected, FAULT_CONTROL_OPCODE};
use crate::log;
use crate::server::{isid_text, lock, nexus_lost, SessionSignals, Shared};
use lunlock_iscsi::login::{self, LoginOutcome, LoginSettings, SessionKind, TargetLogin};
use lunlock_iscsi::message::{reject, tmf, LoginRequest, LoginResponse};
use lunlock_iscsi::pdu::{self, Digests, FrameError, Opcode, Pdu};
use lunlock_iscsi::session::{CommandOutcome, SessionEvent, TargetSession};
use lunlock_iscsi::TextPairs;
use lunlock_scsi::sense::{Condition, Sense};
use lunlock_scsi::{Isid, ItNexus, ResetKind, ScsiCommand, ScsiStatus, TaskAttribute};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// PERSISTENT RESERVE OUT's operation code (SPC-4 6.14).
const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
/// A login must finish within this time.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// An idle full-feature connection is pinged this often (NOP-In)...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and closed after this many pings go unanswered.
pub const KEEPALIVE_MISSES_ALLOWED: u32 = 3;
/// MaxRecvDataSegmentLength in force during login (RFC 7143 13.12: the default until negotiated).
pub const LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// Command window granted to each session.
pub const SESSION_QUEUE_DEPTH: u32 = 128;
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Why a connection ended (for the log).
type Closed = String;

/// Buffered framing over the socket.
struct Wire {
    stream: TcpStream,
    input: Vec<u8>,
    /// Start of unconsumed bytes in `input`.
    start: usize,
    output: Vec<u8>,
    digests: Digests,
    max_recv_data_segment_length: u32,
}

enum Framed {
    Pdu(Pdu),
    /// The PDU's data digest was wrong; the header (valid) is given for the Reject.
    DataDigestError(Box<[u8; pdu::BHS_LEN]>),
}

impl Wire {
    /// Decodes one PDU from the bytes already received, without reading.
    fn try_decode(&mut self) -> Result<Option<Framed>, Closed> {
        let available = &self.input[self.start..];
        match pdu::decode(available, self.digests, self.max_recv_data_segment_length) {
            Ok(Some((pdu, used))) => {
                self.consume(used);
                Ok(Some(Framed::Pdu(pdu)))
            }
            Ok(None) => Ok(None),
            Err(FrameError::DataDigest {
                header,
                frame_length,
                ..
            }) => {
                self.consume(frame_length);
                Ok(Some(Framed::DataDigestError(header)))
            }
            Err(error) => Err(error.to_string()),
        }
    }

    fn consume(&mut self, used: usize) {
        self.start += used;
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes. Cancel-safe (it runs inside `select!`): `read_buf` appends only what it read, so a
    /// cancelled read leaves the buffer as it was.
    async fn fill(&mut self) -> Result<(), Closed> {
        if self.start > 0 && self.start * 2 >= self.input.len() {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.reserve(READ_CHUNK_BYTES);
        match self.stream.read_buf(&mut self.input).await {
            Ok(0) => Err("connection closed by the initiator".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read error: {e}")),
        }
    }

    async fn next(&mut self) -> Result<Framed, Closed> {
        loop {
            if let Some(framed) = self.try_decode()? {
                return Ok(framed);
            }
            self.fill().await?;
        }
    }

    fn queue(&mut self, pdu: &Pdu) {
        pdu.encode(self.digests, &mut self.output);
    }

    async fn flush(&mut self) -> Result<(), Closed> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.output).await;
        self.output.clear();
        result.map_err(|e| format!("write error: {e}"))
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    portal_group_tag: u16,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let mut wire = Wire {
        stream,
        input: Vec::with_capacity(READ_CHUNK_BYTES),
        start: 0,
        output: Vec::with_capacity(64 * 1024),
        digests: Digests::default(),
        max_recv_data_segment_length: LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH,
    };
    let logged_in = tokio::select! {
        _ = shutdown.changed() => return,
        result = tokio::time::timeout(LOGIN_TIMEOUT, login_phase(&mut wire, portal_group_tag, &shared)) => result,
    };
    let (result, tsih) = match logged_in {
        Ok(Ok(done)) => done,
        Ok(Err(reason)) => {
            log::event(format_args!("{peer}: login failed: {reason}"));
            return;
        }
        Err(_) => {
            log::event(format_args!("{peer}: login timed out"));
            return;
        }
    };
    let nexus = Arc::new(ItNexus {
        initiator_name: result.initiator_name.clone(),
        isid: Isid(result.isid),
        target_name: result.target_name.clone().unwrap_or_default(),
        relative_target_port: portal_group_tag,
    });
    log::event(format_args!(
        "{peer}: {} session tsih {tsih} for {} isid {} to {}",
        if result.kind == SessionKind::Discovery {
            "discovery"
        } else {
            "normal"
        },
        nexus.initiator_name,
        isid_text(&nexus.isid),
        if nexus.target_name.is_empty() {
            "-"
        } else {
            &nexus.target_name
        },
    ));
    wire.digests = result.params.digests();
    wire.max_recv_data_segment_length = result.params.max_recv_data_segment_length;
    let mut connection = FullFeature {
        session: TargetSession::new(
            result.params,
            result.exp_cmd_sn,
            result.next_stat_sn,
            SESSION_QUEUE_DEPTH,
        ),
        kind: result.kind,
        nexus,
        shared: Arc::clone(&shared),
        local,
        close_all_after_flush: false,
        reset_requested: false,
    };
    let signals = (result.kind == SessionKind::Normal)
        .then(|| shared.register_session(&connection.nexus, tsih));
    let reason = connection
        .run(&mut wire, signals.as_deref(), &mut shutdown)
        .await;
    log::event(format_args!("{peer}: connection closed: {reason}"));
    if result.kind == SessionKind::Normal {
        shared.unregister_session(&connection.nexus, tsih);
        nexus_lost(&shared, &connection.nexus);
    }
}

async fn login_phase(
    wire: &mut Wire,
    portal_group_tag: u16,
    shared: &Shared,
) -> Result<(login::LoginResult, u16), Closed> {
    let settings = LoginSettings {
        targets: shared.targets.iter().map(|t| t.portal_target()).collect(),
        portal_group_tag,
        queue_depth: SESSION_QUEUE_DEPTH,
        ..LoginSettings::default()
    };
    let mut login = TargetLogin::new(settings);
    loop {
        let pdu = match wire.next().await? {
            Framed::Pdu(pdu) => pdu,
            Framed::DataDigestError(_) => return Err("data digest error during login".into()),
        };
        if pdu.opcode() != Some(Opcode::LoginRequest) {
            return Err(format!(
                "expected a Login Request, got opcode {:#04x}",
                pdu.opcode_code()
            ));
        }
        match login.handle_request(LoginRequest::from_pdu(&pdu)) {
            LoginOutcome::Continue(response) => send_login_response(wire, &response).await?,
            LoginOutcome::Fail(response) => {
                send_login_response(wire, &response).await?;
                return Err(format!(
                    "status {:02x}/{:02x}",
                    response.status_class, response.status_detail
                ));
            }
            LoginOutcome::Complete {
                mut response,
                result,
            } => {
                if result.requested_tsih != 0 {
                    // Adding a connection to an existing session needs MaxConnections > 1 (RFC 7143 13.2).
                    (response.status_class, response.status_detail) =
                        login::status::SESSION_DOES_NOT_EXIST;
                    response.transit = false;
                    response.data.clear();
                    send_login_response(wire, &response).await?;
                    return Err(
                        "login with a non-zero TSIH (multiple connections are not supported)"
                            .into(),
                    );
                }
                let tsih = shared.allocate_tsih();
                response.tsih = tsih;
                send_login_response(wire, &response).await?;
                return Ok((*result, tsih));
            }
        }
    }
}

async fn send_login_response(wire: &mut Wire, response: &LoginResponse) -> Result<(), Closed> {
    wire.queue(&response.to_pdu());
    wire.flush().await
}

struct FullFeature {
    session: TargetSession,
    kind: SessionKind,
    nexus: Arc<ItNexus>,
    shared: Arc<Shared>,
    local: Option<SocketAddr>,
    /// Set by TARGET COLD RESET: after the response is sent, every session of the target closes.
    close_all_after_flush: bool,
    /// A reset-after fault fired: close once the responses are sent.
    reset_requested: bool,
}

impl FullFeature {
    async fn run(
        &mut self,
        wire: &mut Wire,
        signals: Option<&SessionSignals>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Closed {
        let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
        keepalive.tick().await;
        let mut active_since_tick = false;
        let mut missed_pings = 0;
        loop {
            let closed_by_other = async {
                match signals {
                    Some(signals) => signals.close.notified().await,
                    None => std::future::pending().await,
                }
            };
            let abort_requested = async {
                match signals {
                    Some(signals) => signals.abort.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return "target shutting down".into(),
                _ = closed_by_other => return "session reinstated or reset".into(),
                _ = abort_requested => {
                    let luns = signals.map(|s| std::mem::take(&mut *lock(&s.abort_luns))).unwrap_or_default();
                    for lun in luns {
                        self.session.abort_tasks_of_lun(lun);
                    }
                }
                _ = keepalive.tick() => {
                    if active_since_tick {
                        active_since_tick = false;
                        missed_pings = 0;
                        continue;
                    }
                    if self.session.ping_outstanding() {
                        missed_pings += 1;
                        if missed_pings >= KEEPALIVE_MISSES_ALLOWED {
                            return "initiator stopped answering NOP-In pings".into();
                        }
                    }
                    self.session.ping();
                    if let Err(reason) = self.transmit(wire).await {
                        return reason;
                    }
                }
                filled = wire.fill() => {
                    if let Err(reason) = filled {
                        return reason;
                    }
                    active_since_tick = true;
                    if let Err(reason) = self.process_buffered(wire).await {
                        return reason;
                    }
                    if self.session.is_logged_out() {
                        return "logged out".into();
                    }
                    if self.close_all_after_flush {
                        self.shared.close_target_sessions(&self.nexus.target_name);
                        return "target cold reset".into();
                    }
                }
            }
        }
    }

    /// Handles every complete PDU in the input buffer, then sends all responses in one write.
    async fn process_buffered(&mut self, wire: &mut Wire) -> Result<(), Closed> {
        while let Some(framed) = wire.try_decode()? {
            match framed {
                Framed::Pdu(pdu) => self.session.handle_pdu(pdu).map_err(|e| e.to_string())?,
                Framed::DataDigestError(header) => {
                    // RFC 7143 7.8: a data digest error discards the PDU and rejects it; the connection survives.
                    let mut rejected = Pdu::new(Opcode::NopOut);
                    rejected.bhs = *header;
                    self.session
                        .reject_pdu(reject::DATA_DIGEST_ERROR, &rejected);
                }
            }
            self.handle_events().await;
        }
        self.transmit(wire).await?;
        if self.reset_requested {
            return Err("fault injection: reset-after".into());
        }
        Ok(())
    }

    async fn transmit(&mut self, wire: &mut Wire) -> Result<(), Closed> {
        while let Some(pdu) = self.session.poll_transmit() {
            wire.queue(&pdu);
        }
        wire.flush().await
    }

    async fn handle_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Execute {
                    task,
                    lun,
                    cdb,
                    data_out,
                    expected_transfer_length,
                    attribute,
                    itt,
                    ..
                } => {
                    if let Some(outcome) = self.fault_control(&cdb, &data_out) {
                        self.session.complete_command(task, outcome);
                        continue;
                    }
                    let decision = self.consult_faults(lun, &cdb, itt);
                    if !decision.delay.is_zero() {
                        tokio::time::sleep(decision.delay).await;
                    }
                    self.reset_requested |= decision.reset_after;
                    if let Some(outcome) = decision.outcome.and_then(injected_outcome) {
                        self.session.complete_command(task, outcome);
                        continue;
                    }
                    let outcome = self.execute(
                        lun,
                        &cdb,
                        &data_out,
                        expected_transfer_length,
                        attribute,
                        itt,
                    );
                    if decision.outcome == Some(Injected::DropResponse) {
                        // Tells the session this task's response was dropped: it stays abortable (ABORT TASK
                        // answers FUNCTION COMPLETE, RFC 7143 11.5.1, 11.6.1) instead of counting as delivered.
                        self.session.complete_command_silently(task);
                    } else {
                        self.session.complete_command(task, outcome);
                    }
                }
                SessionEvent::TaskManagement {
                    itt, function, lun, ..
                } => {
                    let response = self.task_management(function, lun);
                    self.session.complete_task_management(itt, response);
                }
                SessionEvent::Text { itt, data } => {
                    let answer = self.answer_text(&data);
                    self.session.answer_text(itt, answer);
                }
                SessionEvent::Logout { .. } => {}
            }
        }
    }

    /// The fault table of this session's target (none for discovery sessions).
    fn faults(&self) -> Option<&FaultTable> {
        if self.kind != SessionKind::Normal {
            return None;
        }
        self.shared
            .target(&self.nexus.target_name)
            .map(|t| &t.faults)
    }

    fn consult_faults(&self, lun: u64, cdb: &[u8], itt: u32) -> Decision {
        match (self.faults(), cdb.first()) {
            (Some(faults), Some(&opcode)) => faults.consult(lun, opcode, itt),
            _ => Decision::default(),
        }
    }

    /// LUNLOCK FAULT CONTROL (docs/fault-injection.md), a target-level control answered before the dispatcher
    /// and never itself subject to faults. None: not this command, or fault injection is off for the target, so
    /// the dispatcher rejects the opcode like any unknown one.
    fn fault_control(&self, cdb: &[u8], data_out: &[u8]) -> Option<CommandOutcome> {
        if cdb.first() != Some(&FAULT_CONTROL_OPCODE) {
            return None;
        }
        let faults = self.faults().filter(|f| f.enabled())?;
        if data_out.is_empty() {
            return Some(CommandOutcome {
                data_in: faults.listing().into_bytes(),
                ..CommandOutcome::default()
            });
        }
        let text = String::from_utf8_lossy(data_out);
        match fault::control(faults, &text) {
            Ok(done) => {
                log::event(format_args!(
                    "fault control from {}: {done}",
                    self.nexus.initiator_name
                ));
                Some(CommandOutcome::default())
            }
            Err(reason) => {
                log::event(format_args!(
                    "fault control from {} refused: {reason}",
                    self.nexus.initiator_name
                ));
                Some(CommandOutcome {
                    status: ScsiStatus::CheckCondition as u8,
                    sense: Sense::new(Condition::InvalidFieldInParameterList).to_fixed(),
                    ..CommandOutcome::default()
                })
            }
        }
    }

    fn execute(
        &self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        expected_transfer_length: u32,
        attribute: u8,
        itt: u32,
    ) -> CommandOutcome {
        let Some(target) = self
            .shared
            .target(&self.nexus.target_name)
            .filter(|_| self.kind == SessionKind::Normal)
        else {
            // A discovery session has no logical units (RFC 7143 4.3).
            return CommandOutcome {
                status: ScsiStatus::CheckCondition as u8,
                sense: Sense::new(Condition::LogicalUnitNotSupported).to_fixed(),
                ..CommandOutcome::default()
            };
        };
        let command = ScsiCommand {
            nexus: &self.nexus,
            lun,
            cdb,
            data_out,
            expected_transfer_length,
            task_tag: itt as u64,
            attribute: task_attribute(attribute),
        };
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let response = if multi_thread && may_wait_for_disk(cdb) {
            tokio::task::block_in_place(|| target.dispatcher.execute(&command))
        } else {
            target.dispatcher.execute(&command)
        };
        if cdb.first() == Some(&PERSISTENT_RESERVE_OUT) {
            self.forward_abort_requests(target, lun);
        }
        CommandOutcome {
            status: response.status as u8,
            sense: response.sense,
            data_in: response.data_in,
            data_out_wanted: response.data_out_wanted,
        }
    }

    /// PREEMPT AND ABORT (SPC-4 5.13.11.5) aborts the preempted nexuses' tasks: each one's session drops what it
    /// holds for this LUN. Commands already executing finish first (they run to completion on their connection's
    /// task); everything they send afterwards meets the new reservation.
    fn forward_abort_requests(&self, target: &crate::server::ServedTarget, lun: u64) {
        let Some(unit) = target.dispatcher.logical_unit(lun) else {
            return;
        };
        for nexus in unit.take_abort_requests() {
            self.shared.request_abort(&nexus, lun);
        }
    }

    fn task_management(&mut self, function: u8, lun: u64) -> u8 {
        let Some(target) = self.shared.target(&self.nexus.target_name) else {
            return tmf::FUNCTION_REJECTED;
        };
        let dispatcher = &target.dispatcher;
        let lun_exists = dispatcher.lun_ids().contains(&lun);
        match function {
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET if lun_exists => tmf::FUNCTION_COMPLETE,
            tmf::LOGICAL_UNIT_RESET if lun_exists => {
                dispatcher.task_management(&self.nexus, Some(lun), ResetKind::LogicalUnitReset);
                tmf::FUNCTION_COMPLETE
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => {
                tmf::LUN_DOES_NOT_EXIST
            }
            tmf::TARGET_WARM_RESET => {
                dispatcher.task_management(&self.nexus, None, ResetKind::TargetWarmReset);
                tmf::FUNCTION_COMPLETE
            }
            tmf::TARGET_COLD_RESET => {
                dispatcher.task_management(&self.nexus, None, ResetKind::TargetColdReset);
                // RFC 7143 11.5.1: after a cold reset the target drops all connections.
                self.close_all_after_flush = true;
                tmf::FUNCTION_COMPLETE
            }
            _ => tmf::FUNCTION_NOT_SUPPORTED,
        }
    }

    /// SendTargets (RFC 7143 Appendix C): every target this initiator may use (discovery session), or the
    /// session's own target (normal session, `SendTargets=` empty), with every portal.
    fn answer_text(&self, data: &[u8]) -> Vec<u8> {
        let Ok(request) = TextPairs::parse(data) else {
            return Vec::new();
        };
        let mut answer = TextPairs::new();
        for (key, value) in request.iter() {
            if key != "SendTargets" {
                answer.push(key, "NotUnderstood");
                continue;
            }
            let wanted = |name: &str| match (self.kind, value) {
                (SessionKind::Discovery, "All") => true,
                (SessionKind::Normal, "") | (SessionKind::Normal, "All") => {
                    name == self.nexus.target_name
                }
                (_, specific) => name == specific,
            };
            let portals = crate::server::lock(&self.shared.portals).clone();
            for target in &self.shared.targets {
                let name = &target.definition.name;
                if !wanted(name) || !target.portal_target().admits(&self.nexus.initiator_name) {
                    continue;
                }
                answer.push("TargetName", name.clone());
                for (address, tag) in &portals {
                    let shown = match (address.ip().is_unspecified(), self.local) {
                        (true, Some(local)) => SocketAddr::new(local.ip(), address.port()),
                        _ => *address,
                    };
                    answer.push("TargetAddress", format!("{shown},{tag}"));
                }
            }
        }
        answer.encode()
    }
}

/// The response an injected fault gives instead of executing; None for drop-response, which executes.
fn injected_outcome(injected: Injected) -> Option<CommandOutcome> {
    let status = |status: ScsiStatus| CommandOutcome {
        status: status as u8,
        ..CommandOutcome::default()
    };
    match injected {
        Injected::DropResponse => None,
        Injected::Busy => Some(status(ScsiStatus::Busy)),
        Injected::TaskSetFull => Some(status(ScsiStatus::TaskSetFull)),
        // What a buggy array reports: a miscompare at offset 0 without having compared (SBC-4 5.3).
        Injected::Miscompare => Some(CommandOutcome {
            sense: Sense::new(Condition::Miscompare)
                .with_information(0)
                .to_fixed(),
            ..status(ScsiStatus::CheckCondition)
        }),
    }
}

fn task_attribute(code: u8) -> TaskAttribute {
    match code {
        0 => TaskAttribute::Untagged,
        2 => TaskAttribute::Ordered,
        3 => TaskAttribute::HeadOfQueue,
        4 => TaskAttribute::Aca,
        _ => TaskAttribute::Simple,
    }
}

/// Commands that may block on the disk rather than the page cache: cache flushes and FUA writes.
fn may_wait_for_disk(cdb: &[u8]) -> bool {
    const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    // SANITIZE overwrites or deallocates the whole medium: seconds of I/O.
    const SANITIZE: u8 = 0x48;
    const FUA_WRITES: [u8; 9] = [0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x89, 0x8B, 0x9C];
    match cdb.first() {
        Some(&SYNCHRONIZE_CACHE_10) | Some(&SYNCHRONIZE_CACHE_16) | Some(&SANITIZE) => true,
        Some(opcode) if FUA_WRITES.contains(opcode) => cdb.get(1).is_some_and(|b| b & 0x08 != 0),
        _ => false,
    }
}
