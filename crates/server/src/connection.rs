//! One TCP connection: the login phase, then the full feature phase, driving the sans-IO `iscsi` login and
//! session machines and executing SCSI commands through the target's dispatcher.
//!
//! A session is a task set, not a queue: each command becomes a future on its LUN (`task`), polled by this
//! connection's task beside the others, so commands run concurrently up to the command window and each response
//! goes out as soon as its command completes (StatSN is assigned as PDUs leave, in the `iscsi` session).
//! Task attributes order a session's commands per LUN (SAM-5 8.6, `scsi::task_set`). Nothing here waits for the
//! disk: block I/O runs on each LUN's I/O engine, and page-cache reads complete inline without waiting.
//!
//! Failure handling (RFC 7143 7): a header digest error, an oversized data segment or a fatal session error
//! closes this connection only; a data digest error rejects that PDU and keeps the connection.

use crate::fault::{self, Decision, FaultTable, Injected, FAULT_CONTROL_OPCODE};
use crate::metrics::LoginResult;
use crate::server::{isid_text, lock, nexus_lost, SessionSignals, Shared};
use crate::task::{run_command, wait_until_gone, CommandRequest, Executed, TaskControl};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use lunlock_iscsi::login::{self, LoginOutcome, LoginSettings, SessionKind, TargetLogin};
use lunlock_iscsi::message::{tmf, LoginRequest, LoginResponse};
use lunlock_iscsi::pdu::{self, Digests, FrameError, Opcode, Pdu};
use lunlock_iscsi::session::{CommandOutcome, SessionError, SessionEvent, TargetSession, TaskId};
use lunlock_iscsi::TextPairs;
use lunlock_scsi::sense::{Condition, Sense};
use lunlock_scsi::task_set::{self, TaskSet};
use lunlock_scsi::{
    Isid, ItNexus, NexusAccess, ResetKind, ScsiResponse, ScsiStatus, SideEffects, TaskAttribute,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

/// REPORT LUNS's operation code (SPC-4 6.33): answered by the target's dispatcher, for any LUN.
const REPORT_LUNS: u8 = lunlock_scsi::cdb::op::REPORT_LUNS;
/// MaxRecvDataSegmentLength in force during login (RFC 7143 13.12: the default until negotiated).
pub const LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// Free space kept in a connection's input buffer before each read.
const MIN_READ_SPACE_BYTES: usize = 16 * 1024;

/// Why a connection ended (for the log).
/// Why a connection ended; logged when it closes.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("connection closed by the initiator")]
    ByInitiator,
    #[error("read error: {0}")]
    Read(#[source] std::io::Error),
    #[error("write error: {0}")]
    Write(#[source] std::io::Error),
    /// A PDU that cannot be framed (a header digest error, a bad length): RFC 7143 7.8.
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("data digest error during login")]
    DataDigestDuringLogin,
    #[error("expected a Login Request, got opcode {0:#04x}")]
    NotALoginRequest(u8),
    #[error("status {class:02x}/{detail:02x}")]
    LoginRefused { class: u8, detail: u8 },
    #[error("login with a non-zero TSIH (multiple connections are not supported)")]
    AddConnection,
    #[error("refused: {0}")]
    NotAdmitted(#[from] crate::server::AdmissionError),
    #[error("target shutting down")]
    ShuttingDown,
    #[error("session reinstated or reset")]
    ReinstatedOrReset,
    #[error("initiator stopped answering NOP-In pings")]
    PingsUnanswered,
    #[error("target cold reset")]
    TargetColdReset,
    #[error("logged out")]
    LoggedOut,
    #[error("fault injection: reset-after")]
    FaultReset,
}

/// Buffered framing over the socket.
struct Wire {
    stream: TcpStream,
    input: Vec<u8>,
    /// Start of unconsumed bytes in `input`.
    start: usize,
    output: Vec<u8>,
    digests: Digests,
    max_recv_data_segment_length: u32,
    /// Header digest errors seen (0 or 1: the first closes the connection), for the daemon's counter.
    header_digest_errors: u64,
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
            Err(error) => {
                if matches!(error, FrameError::HeaderDigest { .. }) {
                    // RFC 7143 7.8: a header digest error leaves the PDU's length unknowable; the connection ends.
                    self.header_digest_errors += 1;
                }
                Err(Closed::Frame(error))
            }
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
        // Room for at least one more chunk; the buffer grows (doubling) only as large PDUs need, so an idle or
        // dropped connection costs a few KiB, not the largest PDU it could send.
        self.input.reserve(MIN_READ_SPACE_BYTES);
        match self.stream.read_buf(&mut self.input).await {
            Ok(0) => Err(Closed::ByInitiator),
            Ok(_) => Ok(()),
            Err(e) => Err(Closed::Read(e)),
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
        result.map_err(Closed::Write)
    }
}

/// Serves one accepted connection until it closes, in a span that names the peer and, once it has logged in, the
/// initiator, ISID and target: every event of the connection and of its commands says whose it is.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    portal_group_tag: u16,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!(
        "connection",
        %peer,
        initiator = tracing::field::Empty,
        isid = tracing::field::Empty,
        target = tracing::field::Empty,
    );
    serve_in_span(stream, peer, portal_group_tag, shared, shutdown)
        .instrument(span)
        .await
}

async fn serve_in_span(
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
        input: Vec::new(),
        start: 0,
        output: Vec::new(),
        digests: Digests::default(),
        max_recv_data_segment_length: LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH,
        header_digest_errors: 0,
    };
    let login_timeout = shared.limits.login_timeout;
    let logged_in = tokio::select! {
        _ = shutdown.changed() => return,
        result = tokio::time::timeout(login_timeout, login_phase(&mut wire, peer, portal_group_tag, &shared)) => result,
    };
    let (result, tsih, admission) = match logged_in {
        Ok(Ok(done)) => {
            shared.metrics.login(LoginResult::Success);
            done
        }
        Ok(Err(reason)) => {
            shared.metrics.login(LoginResult::Failure);
            tracing::warn!("login failed: {reason}");
            return;
        }
        Err(_) => {
            shared.metrics.login(LoginResult::Timeout);
            tracing::warn!("login timed out");
            return;
        }
    };
    let nexus = Arc::new(nexus_of(&result, portal_group_tag));
    let span = tracing::Span::current();
    span.record("initiator", tracing::field::display(&nexus.initiator_name));
    span.record("isid", tracing::field::display(isid_text(&nexus.isid)));
    span.record("target", tracing::field::display(&nexus.target_name));
    tracing::info!(
        "{} session tsih {tsih} for {} isid {} to {}",
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
    );
    wire.digests = result.params.digests();
    wire.max_recv_data_segment_length = result.params.max_recv_data_segment_length;
    let mut connection = FullFeature {
        session: TargetSession::new(
            result.params,
            result.exp_cmd_sn,
            result.next_stat_sn,
            shared.limits.commands_per_session,
        )
        .with_write_budget(
            shared.write_budget.clone(),
            shared.limits.write_buffer_bytes_per_session,
        ),
        kind: result.kind,
        nexus,
        shared: Arc::clone(&shared),
        local,
        close_all_after_flush: false,
        reset_requested: false,
        running: FuturesUnordered::new(),
        tmfs: FuturesUnordered::new(),
        task_sets: HashMap::new(),
        dormant: HashMap::new(),
        controls: HashMap::new(),
    };
    let signals = admission.map(Admission::complete);
    let reason = connection
        .run(&mut wire, signals.as_deref(), &mut shutdown)
        .await;
    if wire.header_digest_errors > 0 {
        shared
            .digest_errors
            .header
            .fetch_add(wire.header_digest_errors, Ordering::Relaxed);
    }
    tracing::info!("connection closed: {reason}");
    if let Some(signals) = signals {
        // The nexus loss is reported while the session is still registered, so a command waiting in
        // `Shared::settle_closed_peers` sees either the session (and waits for this) or its loss already done.
        nexus_lost(&shared, &connection.nexus);
        shared.unregister_session(&connection.nexus, tsih);
        signals.mark_torn_down();
    }
}

/// The I_T nexus a login result names (SAM-5 4.6.4).
fn nexus_of(result: &login::LoginResult, portal_group_tag: u16) -> ItNexus {
    ItNexus {
        initiator_name: result.initiator_name.clone(),
        isid: Isid(result.isid),
        target_name: result.target_name.clone().unwrap_or_default(),
        relative_target_port: portal_group_tag,
    }
}

/// A normal session registered before its final login response is sent ([`Shared::admit_session`]). If the
/// login does not complete after all (that response cannot be sent, or the login times out), dropping this
/// unregisters it, so a failed login never holds a place under the session limits.
struct Admission {
    shared: Arc<Shared>,
    key: ItNexus,
    tsih: u16,
    signals: Option<Arc<SessionSignals>>,
}

impl Admission {
    fn complete(mut self) -> Arc<SessionSignals> {
        self.signals.take().unwrap_or_default()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.signals.take().is_some() {
            self.shared.unregister_session(&self.key, self.tsih);
        }
    }
}

/// Registers a normal session under the session limits; the error says which limit, or why it cannot be
/// tracked.
fn admit(
    shared: &Arc<Shared>,
    wire: &Wire,
    result: &login::LoginResult,
    portal_group_tag: u16,
    tsih: u16,
) -> Result<Admission, Closed> {
    let socket = wire
        .stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(crate::server::AdmissionError::Untrackable)?;
    let key = nexus_of(result, portal_group_tag);
    let origin = crate::server::SessionOrigin {
        peer: wire
            .stream
            .peer_addr()
            .map_err(crate::server::AdmissionError::Untrackable)?,
        portal: wire.stream.local_addr().ok(),
        since: std::time::SystemTime::now(),
    };
    let signals = shared.admit_session(&key, tsih, result.chap_user.clone(), socket, origin)?;
    Ok(Admission {
        shared: Arc::clone(shared),
        key,
        tsih,
        signals: Some(signals),
    })
}

/// What this target offers in a login, from its targets and `[limits]`.
fn login_settings(shared: &Shared, portal_group_tag: u16) -> LoginSettings {
    let limits = &shared.limits;
    LoginSettings {
        targets: shared.targets.iter().map(|t| t.portal_target()).collect(),
        discovery_chap: crate::server::read(&shared.discovery_chap).clone(),
        portal_group_tag,
        max_recv_data_segment_length: limits.max_recv_data_segment_length,
        max_burst_length: limits.max_burst_length,
        first_burst_length: limits.first_burst_length,
        max_outstanding_r2t: limits.max_outstanding_r2t,
        queue_depth: limits.commands_per_session,
    }
}

async fn login_phase(
    wire: &mut Wire,
    peer: SocketAddr,
    portal_group_tag: u16,
    shared: &Arc<Shared>,
) -> Result<(login::LoginResult, u16, Option<Admission>), Closed> {
    let settings = login_settings(shared, portal_group_tag);
    let mut login = TargetLogin::new(settings);
    loop {
        let pdu = match wire.next().await? {
            Framed::Pdu(pdu) => pdu,
            Framed::DataDigestError(_) => return Err(Closed::DataDigestDuringLogin),
        };
        if pdu.opcode() != Some(Opcode::LoginRequest) {
            send_login_response(wire, &login.refuse_non_login_pdu(pdu.itt())).await?;
            return Err(Closed::NotALoginRequest(pdu.opcode_code()));
        }
        match login.handle_request(LoginRequest::from_pdu(&pdu)) {
            LoginOutcome::Continue(response) => send_login_response(wire, &response).await?,
            LoginOutcome::Fail(response) => {
                if (response.status_class, response.status_detail)
                    == login::status::AUTHENTICATION_FAILURE
                {
                    slow_down_failure(shared, peer).await;
                }
                send_login_response(wire, &response).await?;
                return Err(Closed::LoginRefused {
                    class: response.status_class,
                    detail: response.status_detail,
                });
            }
            LoginOutcome::Complete {
                mut response,
                result,
            } => {
                if result.requested_tsih != 0 {
                    // Adding a connection to an existing session needs MaxConnections > 1 (RFC 7143 13.2).
                    let status = login::status::SESSION_DOES_NOT_EXIST;
                    refuse_completed_login(wire, response, status).await?;
                    return Err(Closed::AddConnection);
                }
                let tsih = shared.allocate_tsih();
                let admission = match result.kind {
                    SessionKind::Normal => {
                        match admit(shared, wire, &result, portal_group_tag, tsih) {
                            Ok(admission) => Some(admission),
                            Err(reason) => {
                                // RFC 7143 11.13.5: 0302h Out of resources.
                                let status = login::status::OUT_OF_RESOURCES;
                                refuse_completed_login(wire, response, status).await?;
                                return Err(reason);
                            }
                        }
                    }
                    SessionKind::Discovery => None,
                };
                response.tsih = tsih;
                send_login_response(wire, &response).await?;
                return Ok((*result, tsih, admission));
            }
        }
    }
}

/// Answers a login the negotiation completed but the target cannot admit after all: the final response becomes a
/// Login reject with `status`, no transit and no keys (RFC 7143 11.13).
async fn refuse_completed_login(
    wire: &mut Wire,
    mut response: LoginResponse,
    status: (u8, u8),
) -> Result<(), Closed> {
    (response.status_class, response.status_detail) = status;
    response.transit = false;
    response.data.clear();
    send_login_response(wire, &response).await
}

/// Waits as long as the peer's recent authentication failures say (see `auth_throttle`), and logs the count.
/// Only the failing login waits: other logins from the same address go on.
async fn slow_down_failure(shared: &Shared, peer: SocketAddr) {
    shared.metrics.chap_failures.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let (delay, recent) = {
        let mut failures = lock(&shared.auth_failures);
        let delay = failures.record(peer.ip(), now);
        (delay, failures.recent(peer.ip(), now))
    };
    tracing::info!(
        "{peer}: authentication failure ({recent} recent from {}); answering in {} ms",
        peer.ip(),
        delay.as_millis()
    );
    tokio::time::sleep(delay).await;
}

async fn send_login_response(wire: &mut Wire, response: &LoginResponse) -> Result<(), Closed> {
    wire.queue(&response.to_pdu());
    wire.flush().await
}

/// What the LUN's counters need of a command after its request has been handed over: the CDB's first 16 bytes
/// (where every counted field is), its initiator and its Data-Out length.
struct CountedCommand {
    cdb: [u8; 16],
    cdb_length: usize,
    nexus: Arc<ItNexus>,
    data_out: usize,
}

impl CountedCommand {
    fn of(request: &CommandRequest) -> CountedCommand {
        let mut cdb = [0u8; 16];
        let cdb_length = request.cdb.len().min(cdb.len());
        cdb[..cdb_length].copy_from_slice(&request.cdb[..cdb_length]);
        CountedCommand {
            cdb,
            cdb_length,
            nexus: Arc::clone(&request.nexus),
            data_out: request.data_out.len(),
        }
    }

    fn record(
        &self,
        metrics: &crate::metrics::LunMetrics,
        response: &ScsiResponse,
        elapsed: Duration,
    ) {
        metrics.record(&crate::metrics::Finished {
            cdb: &self.cdb[..self.cdb_length],
            nexus: &self.nexus,
            data_out: self.data_out,
            response,
            elapsed,
        });
    }
}

/// A command that finished on its LUN, back at its connection.
struct Finished {
    task: TaskId,
    lun: u64,
    executed: Executed,
    /// Fault injection: the command ran, but its response is dropped.
    drop_response: bool,
    /// Fault injection: close the connection once this response is sent.
    reset_after: bool,
}

/// A task management function that finished (after waiting for the tasks it aborted).
struct TmfDone {
    itt: u32,
    response: u8,
    function: u8,
    lun: u64,
    /// The session's own tasks it aborted or waited for.
    tasks: usize,
    received: Instant,
    /// TARGET COLD RESET: every session of the target closes after the response (RFC 7143 11.5.1).
    close_all: bool,
}

/// RFC 7143 11.5.1's name of a task management function, for the log.
fn tmf_function_name(function: u8) -> String {
    match function {
        tmf::ABORT_TASK => "ABORT TASK".into(),
        tmf::ABORT_TASK_SET => "ABORT TASK SET".into(),
        tmf::CLEAR_ACA => "CLEAR ACA".into(),
        tmf::CLEAR_TASK_SET => "CLEAR TASK SET".into(),
        tmf::LOGICAL_UNIT_RESET => "LOGICAL UNIT RESET".into(),
        tmf::TARGET_WARM_RESET => "TARGET WARM RESET".into(),
        tmf::TARGET_COLD_RESET => "TARGET COLD RESET".into(),
        tmf::TASK_REASSIGN => "TASK REASSIGN".into(),
        other => format!("function {other}"),
    }
}

/// RFC 7143 11.6.1's name of a task management response, for the log.
fn tmf_response_name(response: u8) -> String {
    match response {
        tmf::FUNCTION_COMPLETE => "FUNCTION COMPLETE".into(),
        tmf::TASK_DOES_NOT_EXIST => "TASK DOES NOT EXIST".into(),
        tmf::LUN_DOES_NOT_EXIST => "LUN DOES NOT EXIST".into(),
        tmf::TASK_STILL_ALLEGIANT => "TASK STILL ALLEGIANT".into(),
        tmf::TASK_REASSIGNMENT_NOT_SUPPORTED => "TASK REASSIGNMENT NOT SUPPORTED".into(),
        tmf::FUNCTION_NOT_SUPPORTED => "FUNCTION NOT SUPPORTED".into(),
        tmf::AUTHORIZATION_FAILED => "AUTHORIZATION FAILED".into(),
        tmf::FUNCTION_REJECTED => "FUNCTION REJECTED".into(),
        other => format!("response {other}"),
    }
}

/// A command the task set keeps dormant until older tasks complete (SAM-5 8.6).
struct Dormant {
    lun: u64,
    request: CommandRequest,
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
    /// Commands executing, each a future polled by this connection's task.
    running: FuturesUnordered<BoxFuture<'static, Finished>>,
    /// Task management functions waiting for the tasks they aborted.
    tmfs: FuturesUnordered<BoxFuture<'static, TmfDone>>,
    /// One task set per LUN: this session's tasks, for SAM-5 task attribute ordering.
    task_sets: HashMap<u64, TaskSet>,
    dormant: HashMap<TaskId, Dormant>,
    /// Controls of this session's running tasks, to abort them.
    controls: HashMap<TaskId, Arc<TaskControl>>,
}

impl FullFeature {
    async fn run(
        &mut self,
        wire: &mut Wire,
        signals: Option<&SessionSignals>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Closed {
        let mut keepalive = tokio::time::interval(self.shared.limits.nop_in_interval);
        let misses_allowed = self.shared.limits.nop_in_misses;
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
                _ = shutdown.changed() => return Closed::ShuttingDown,
                _ = closed_by_other => return Closed::ReinstatedOrReset,
                _ = abort_requested => {
                    let luns = signals.map(|s| std::mem::take(&mut *lock(&s.abort_luns))).unwrap_or_default();
                    for lun in luns {
                        let aborted = self.session.abort_tasks_of_lun(lun);
                        self.abort_own(&aborted);
                    }
                    if let Err(reason) = self.settle(wire).await {
                        return reason;
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
                        if missed_pings >= misses_allowed {
                            return Closed::PingsUnanswered;
                        }
                    }
                    self.session.ping();
                    if let Err(reason) = self.transmit(wire).await {
                        return reason;
                    }
                }
                Some(finished) = self.running.next(), if !self.running.is_empty() => {
                    active_since_tick = true;
                    self.finish(finished);
                    if let Err(reason) = self.settle(wire).await {
                        return reason;
                    }
                }
                Some(done) = self.tmfs.next(), if !self.tmfs.is_empty() => {
                    self.answer_task_management(&done);
                    if let Err(reason) = self.settle(wire).await {
                        return reason;
                    }
                    if self.close_all_after_flush {
                        self.shared.close_target_sessions(&self.nexus.target_name);
                        return Closed::TargetColdReset;
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
                        return Closed::LoggedOut;
                    }
                }
            }
        }
    }

    /// Handles every complete PDU in the input buffer, runs what completes at once, then sends all responses in
    /// one write.
    async fn process_buffered(&mut self, wire: &mut Wire) -> Result<(), Closed> {
        while let Some(framed) = wire.try_decode()? {
            match framed {
                Framed::Pdu(pdu) => self.session.handle_pdu(pdu)?,
                Framed::DataDigestError(header) => {
                    // RFC 7143 7.8: a data digest error discards the PDU and rejects it, and ends the task whose
                    // data it carried; the connection survives.
                    let count = self
                        .shared
                        .digest_errors
                        .data
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    tracing::warn!(
                        "{}: data digest error in a PDU with opcode {:#04x} ITT {:#x} ({count} since start)",
                        self.nexus.initiator_name,
                        header[0] & 0x3F,
                        u32::from_be_bytes([header[16], header[17], header[18], header[19]]),
                    );
                    self.session.data_digest_error(&header);
                }
            }
            self.handle_events();
        }
        self.settle(wire).await
    }

    /// Collects every command and task management function that has completed without waiting (page-cache
    /// reads, in-memory commands), so one write carries a whole burst of responses, then transmits.
    async fn settle(&mut self, wire: &mut Wire) -> Result<(), Closed> {
        while let Some(Some(finished)) = self.running.next().now_or_never() {
            self.finish(finished);
        }
        while let Some(Some(done)) = self.tmfs.next().now_or_never() {
            self.answer_task_management(&done);
        }
        self.transmit(wire).await?;
        if self.reset_requested {
            return Err(Closed::FaultReset);
        }
        Ok(())
    }

    async fn transmit(&mut self, wire: &mut Wire) -> Result<(), Closed> {
        while let Some(pdu) = self.session.poll_transmit() {
            wire.queue(&pdu);
        }
        wire.flush().await
    }

    fn handle_events(&mut self) {
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
                    let attribute = task_attribute(attribute);
                    if let Some(sense) = task_set::aca_refusal(attribute) {
                        self.session.complete_command(task, check_condition(&sense));
                        continue;
                    }
                    let request = CommandRequest {
                        nexus: Arc::clone(&self.nexus),
                        lun,
                        cdb,
                        data_out,
                        expected_transfer_length,
                        task_tag: itt as u64,
                        attribute,
                        sessions: Arc::clone(&self.shared),
                        access: self.access(),
                    };
                    let enabled = self
                        .task_sets
                        .entry(lun)
                        .or_default()
                        .arrive(task.0, attribute);
                    if enabled {
                        self.start(task, lun, request);
                    } else {
                        self.dormant.insert(task, Dormant { lun, request });
                    }
                }
                SessionEvent::TaskManagement {
                    itt,
                    function,
                    lun,
                    in_flight,
                    ..
                } => self.task_management(itt, function, lun, in_flight),
                SessionEvent::Text { itt, data } => {
                    let answer = self.answer_text(&data);
                    self.session.answer_text(itt, answer);
                }
                SessionEvent::Logout { .. } => {}
            }
        }
    }

    /// What this session's initiator may access under the target's ACL, as the rules stand now.
    fn access(&self) -> Arc<NexusAccess> {
        match self.shared.target(&self.nexus.target_name) {
            Some(target) => target.access_for(&self.nexus.initiator_name),
            None => Arc::new(NexusAccess::FULL),
        }
    }

    /// Starts an enabled command: answered here when no LUN of a served target takes it (discovery sessions,
    /// REPORT LUNS, LUNs that do not exist or that the ACL masks), otherwise a future on its LUN.
    fn start(&mut self, task: TaskId, lun: u64, request: CommandRequest) {
        let runtime = self
            .shared
            .target(&self.nexus.target_name)
            .filter(|_| self.kind == SessionKind::Normal)
            .and_then(|target| {
                let routed = request.cdb.first() != Some(&REPORT_LUNS) && request.access.sees(lun);
                routed.then(|| target.luns.get(&lun).cloned()).flatten()
            });
        let Some(runtime) = runtime else {
            let outcome = self.execute_on_target(&request);
            self.finish(Finished {
                task,
                lun,
                executed: Executed::Done(outcome),
                drop_response: false,
                reset_after: false,
            });
            return;
        };
        let decision = self.consult_faults(lun, &request.cdb, request.task_tag as u32);
        let registration = runtime.register(&self.nexus);
        self.controls
            .insert(task, Arc::clone(&registration.control));
        let span = tracing::info_span!(
            "command",
            lun,
            itt = %format_args!("{:#x}", request.task_tag),
            op = %lunlock_scsi::registry::name(&request.cdb).unwrap_or("unsupported"),
        );
        let counted = CountedCommand::of(&request);
        self.running.push(Box::pin(
            async move {
                let started = Instant::now();
                let injected = decision.outcome.and_then(injected_response);
                if !decision.delay.is_zero() {
                    // Delays only this command: the others of the session keep running. The delay comes before
                    // the task starts, so an abort ends it at once (SAM-5 7.2): ABORT TASK, LUN RESET or PREEMPT AND
                    // ABORT does not wait it out, as an initiator's error handler, timing out a slow command, expects.
                    let control = Arc::clone(&registration.control);
                    tokio::select! {
                        _ = tokio::time::sleep(decision.delay) => {}
                        _ = control.aborted() => {}
                    }
                }
                let counted_on = Arc::clone(&runtime); // run_command takes `runtime`; its counters outlive it
                let executed = match injected {
                    _ if registration.control.is_aborted() => Executed::Aborted,
                    Some(response) => Executed::Done(response),
                    None => run_command(runtime, registration, request, decision.stall).await,
                };
                if let Executed::Done(response) = &executed {
                    counted.record(&counted_on.metrics, response, started.elapsed());
                }
                Finished {
                    task,
                    lun,
                    executed,
                    drop_response: decision.outcome == Some(Injected::DropResponse),
                    reset_after: decision.reset_after,
                }
            }
            .instrument(span),
        ));
    }

    /// Reports a finished command to the session and starts the dormant tasks it enabled.
    fn finish(&mut self, finished: Finished) {
        let Finished {
            task,
            lun,
            executed,
            drop_response,
            reset_after,
        } = finished;
        self.controls.remove(&task);
        self.reset_requested |= reset_after;
        match executed {
            Executed::Aborted => self.session.end_aborted_command(task),
            Executed::Done(response) => {
                for nexus in &response.effects.aborted_nexuses {
                    self.shared.request_abort(nexus, lun);
                }
                if drop_response {
                    // Tells the session this task's response was dropped: it stays abortable (ABORT TASK
                    // answers FUNCTION COMPLETE, RFC 7143 11.5.1, 11.6.1) instead of counting as delivered.
                    self.session.complete_command_silently(task);
                } else {
                    self.session.complete_command(task, outcome_of(response));
                }
            }
        }
        self.task_completed(task, lun);
    }

    /// Removes a task from its task set and starts what that enables (SAM-5 8.6).
    fn task_completed(&mut self, task: TaskId, lun: u64) {
        let enabled = match self.task_sets.get_mut(&lun) {
            Some(set) => set.complete(task.0),
            None => return,
        };
        if self.task_sets.get(&lun).is_some_and(TaskSet::is_empty) {
            self.task_sets.remove(&lun);
        }
        for key in enabled {
            let task = TaskId(key);
            if let Some(dormant) = self.dormant.remove(&task) {
                self.start(task, dormant.lun, dormant.request);
            }
        }
    }

    /// Aborts this session's tasks that the session machine marked aborted: dormant ones are dropped here,
    /// running ones are told to stop. Returns what to wait for.
    fn abort_own(&mut self, tasks: &[TaskId]) -> Vec<Arc<TaskControl>> {
        let mut gone = Vec::new();
        for &task in tasks {
            if let Some(dormant) = self.dormant.remove(&task) {
                self.session.end_aborted_command(task);
                self.task_completed(task, dormant.lun);
            } else if let Some(control) = self.controls.get(&task) {
                control.abort();
                gone.push(Arc::clone(control));
            }
        }
        gone
    }

    /// Commands no LUN runtime takes: a discovery session's (it has no logical units, RFC 7143 4.3), REPORT
    /// LUNS, and commands to LUNs that do not exist, all answered by the target's dispatcher without I/O.
    fn execute_on_target(&self, request: &CommandRequest) -> ScsiResponse {
        let target = self
            .shared
            .target(&self.nexus.target_name)
            .filter(|_| self.kind == SessionKind::Normal);
        let Some(target) = target else {
            return ScsiResponse {
                status: ScsiStatus::CheckCondition,
                sense: Sense::new(Condition::LogicalUnitNotSupported).to_fixed(),
                data_in: Vec::new(),
                data_out_wanted: None,
                effects: SideEffects::NONE,
            };
        };
        target.dispatcher.execute(&request.as_command())
    }

    /// Queues a TMF's response, and logs it: an initiator's error handler (a timeout, ABORT TASK, then LUN RESET)
    /// is otherwise invisible on the target's side.
    fn answer_task_management(&mut self, done: &TmfDone) {
        self.session
            .complete_task_management(done.itt, done.response);
        self.close_all_after_flush |= done.close_all;
        tracing::info!(
            "{} isid {}: task management {} lun {} ({} own task(s) in flight): {} after {} ms",
            self.nexus.initiator_name,
            isid_text(&self.nexus.isid),
            tmf_function_name(done.function),
            done.lun,
            done.tasks,
            tmf_response_name(done.response),
            done.received.elapsed().as_millis()
        );
    }

    /// Task management (SAM-5 7, RFC 7143 11.5). The tasks it aborts are stopped or waited for before it is
    /// answered; the answer comes from `tmfs` when they are gone.
    fn task_management(&mut self, itt: u32, function: u8, lun: u64, in_flight: Vec<TaskId>) {
        let own = self.abort_own(&in_flight);
        let Some(target) = self.shared.target(&self.nexus.target_name) else {
            self.session
                .complete_task_management(itt, tmf::FUNCTION_REJECTED);
            return;
        };
        let dispatcher = Arc::clone(&target.dispatcher);
        // A LUN the ACL masks does not exist for this nexus: its TMFs answer LUN DOES NOT EXIST.
        let lun_exists = dispatcher.lun_exists(lun) && self.access().sees(lun);
        let nexus = Arc::clone(&self.nexus);
        let (tasks, received) = (in_flight.len(), Instant::now());
        let answer = move |response: u8, close_all: bool| TmfDone {
            itt,
            response,
            function,
            lun,
            tasks,
            received,
            close_all,
        };
        let future: BoxFuture<'static, TmfDone> = match function {
            tmf::ABORT_TASK => Box::pin(async move {
                wait_until_gone(own).await;
                answer(tmf::FUNCTION_COMPLETE, false)
            }),
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET if lun_exists => Box::pin(async move {
                wait_until_gone(own).await;
                answer(tmf::FUNCTION_COMPLETE, false)
            }),
            tmf::LOGICAL_UNIT_RESET if lun_exists => {
                // SAM-5 6.3.3: a logical unit reset aborts the tasks of every I_T nexus on the unit.
                let mut gone = own;
                if let Some(runtime) = target.luns.get(&lun) {
                    gone.extend(runtime.abort_where(|_| true).0);
                }
                self.shared
                    .request_abort_on_target(&nexus.target_name, lun, &nexus);
                Box::pin(async move {
                    wait_until_gone(gone).await;
                    dispatcher.task_management(&nexus, Some(lun), ResetKind::LogicalUnitReset);
                    answer(tmf::FUNCTION_COMPLETE, false)
                })
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => {
                Box::pin(async move { answer(tmf::LUN_DOES_NOT_EXIST, false) })
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                // SAM-5 6.3.2: a hard reset aborts every task of every logical unit.
                let mut gone = own;
                for (&lun, runtime) in &target.luns {
                    gone.extend(runtime.abort_where(|_| true).0);
                    self.shared
                        .request_abort_on_target(&nexus.target_name, lun, &nexus);
                }
                let kind = if function == tmf::TARGET_COLD_RESET {
                    ResetKind::TargetColdReset
                } else {
                    ResetKind::TargetWarmReset
                };
                Box::pin(async move {
                    wait_until_gone(gone).await;
                    dispatcher.task_management(&nexus, None, kind);
                    answer(tmf::FUNCTION_COMPLETE, kind == ResetKind::TargetColdReset)
                })
            }
            _ => Box::pin(async move { answer(tmf::FUNCTION_NOT_SUPPORTED, false) }),
        };
        self.tmfs.push(future);
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
        let decision = match (self.faults(), cdb.first()) {
            (Some(faults), Some(&opcode)) => {
                faults.consult(self.nexus.relative_target_port, lun, opcode, itt)
            }
            _ => Decision::default(),
        };
        for action in decision.actions() {
            self.shared.metrics.fault_injected(action);
        }
        decision
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
                tracing::info!("fault control from {}: {done}", self.nexus.initiator_name);
                Some(CommandOutcome::default())
            }
            Err(reason) => {
                tracing::warn!(
                    "fault control from {} refused: {reason}",
                    self.nexus.initiator_name
                );
                Some(CommandOutcome {
                    status: ScsiStatus::CheckCondition as u8,
                    sense: Sense::new(Condition::InvalidFieldInParameterList).to_fixed(),
                    ..CommandOutcome::default()
                })
            }
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
fn injected_response(injected: Injected) -> Option<ScsiResponse> {
    let status = |status: ScsiStatus| ScsiResponse {
        status,
        sense: Vec::new(),
        data_in: Vec::new(),
        data_out_wanted: None,
        effects: SideEffects::NONE,
    };
    match injected {
        Injected::DropResponse => None,
        Injected::Busy => Some(status(ScsiStatus::Busy)),
        Injected::TaskSetFull => Some(status(ScsiStatus::TaskSetFull)),
        // What a buggy array reports: a miscompare at offset 0 without having compared (SBC-4 5.3).
        Injected::Miscompare => Some(ScsiResponse {
            sense: Sense::new(Condition::Miscompare)
                .with_information(0)
                .to_fixed(),
            ..status(ScsiStatus::CheckCondition)
        }),
    }
}

fn outcome_of(response: ScsiResponse) -> CommandOutcome {
    CommandOutcome {
        status: response.status as u8,
        sense: response.sense,
        data_in: response.data_in,
        data_out_wanted: response.data_out_wanted,
    }
}

fn check_condition(sense: &Sense) -> CommandOutcome {
    CommandOutcome {
        status: ScsiStatus::CheckCondition as u8,
        sense: sense.to_fixed(),
        ..CommandOutcome::default()
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
