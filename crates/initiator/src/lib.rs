//! lunlock's iSCSI initiator (RFC 7143, initiator role): login, discovery, and SCSI commands with many in flight
//! on one session.
//!
//! A [`Session`] owns one TCP connection. A reader task receives every PDU and completes waiting commands; a
//! writer task sends what callers and the reader queue (commands, Data-Out answering R2Ts, NOP-Out answering
//! target pings). `execute` may be called from many tasks at once: each command gets its own ITT and CmdSN inside
//! the target's window (RFC 7143 3.2.2.1), and a command waits only while that window is closed.
//!
//! Modules: `login` (security and operational stages, RFC 7143 6 and 13), `commands` (typed SCSI helpers and
//! task management), `status` (sg3_utils-style text for failed commands), `url` (libiscsi URLs), `pr`
//! (PERSISTENT RESERVE encoders and decoders), `isid` (ISIDs derived from the initiator name, and `--isid`). The
//! transport is generic over any byte stream ([`Session::login_over`]), which is how `tests/fake_peer.rs` drives it
//! against a scripted target.
//!
//! Data-In is placed by buffer offset and bounded by the command's expected length (RFC 7143 11.7.4); each R2T is
//! answered by its own Data-Out sequence, DataSN from 0, split at the target's MaxRecvDataSegmentLength
//! (RFC 7143 11.7, 11.8), so several R2Ts may be outstanding at once.

pub mod chap;
pub mod commands;
pub mod isid;
mod login;
pub mod pr;
pub mod status;
pub mod url;

pub use chap::ChapCredentials;
pub use commands::{
    Capacity, Designator, StandardInquiry, TargetPortGroupDescriptor, TargetPortGroupsReport,
    TmfResponse,
};
pub use login::{
    MAX_LOGIN_EXCHANGES, OUR_FIRST_BURST_LENGTH, OUR_MAX_BURST_LENGTH, OUR_MAX_OUTSTANDING_R2T,
    OUR_MAX_RECV_DATA_SEGMENT_LENGTH,
};
pub use lunlock_iscsi::chap::Credentials;
pub use status::ScsiFailure;
pub use url::{IscsiUrl, UrlError};

use lunlock_iscsi::message::{
    encode_lun, DataIn, DataOut, LogoutRequest, NopIn, NopOut, ReadyToTransfer, Reject, Residual,
    ScsiCommand, ScsiResponse, TargetSequence, TaskManagementRequest, TaskManagementResponse,
    TextRequest, TextResponse, RESERVED_TAG,
};
use lunlock_iscsi::pdu::{self, Digests, Opcode, Pdu, SerialNumber};
use lunlock_iscsi::{SessionParams, TextPairs};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

/// Default initiator name of lunlock's client commands.
pub const DEFAULT_INITIATOR_NAME: &str = "iqn.2026-11.io.lunlock:client";
/// The largest data segment the reader accepts. Login PDUs come before any negotiation, so this is the codec's
/// limit rather than our MaxRecvDataSegmentLength; a longer one is a framing error.
const LARGEST_ACCEPTED_SEGMENT: u32 = 1 << 24;

/// Why a call failed.
#[derive(Debug)]
pub enum InitiatorError {
    Io(std::io::Error),
    /// The target refused the login (RFC 7143 11.13.5).
    LoginRejected {
        class: u8,
        detail: u8,
    },
    /// The target broke the protocol or closed the connection.
    Protocol(String),
    Timeout(&'static str),
    /// The target rejected our PDU (RFC 7143 11.17).
    Rejected {
        reason: u8,
    },
    /// A SCSI command ended with a status other than GOOD; see [`Session::execute_checked`].
    Scsi(ScsiFailure),
    /// Our side of CHAP refused the target's answers (RFC 7143 12.1.3).
    Chap(chap::ChapError),
}

impl fmt::Display for InitiatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitiatorError::Io(e) => write!(f, "{e}"),
            InitiatorError::LoginRejected { class, detail } => {
                write!(
                    f,
                    "login rejected: {} ({class:02x}/{detail:02x})",
                    login_status_text(*class, *detail)
                )
            }
            InitiatorError::Protocol(m) => write!(f, "protocol error: {m}"),
            InitiatorError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            InitiatorError::Rejected { reason } => {
                write!(f, "target rejected the request (reason {reason:#04x})")
            }
            InitiatorError::Scsi(failure) => write!(f, "{failure}"),
            InitiatorError::Chap(error) => write!(f, "CHAP: {error}"),
        }
    }
}

impl std::error::Error for InitiatorError {}

impl From<std::io::Error> for InitiatorError {
    fn from(e: std::io::Error) -> Self {
        InitiatorError::Io(e)
    }
}

/// Status-Class and Status-Detail of a failed login (RFC 7143 11.13.5).
fn login_status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (0x01, _) => "the target moved (redirection)",
        (0x02, 0x01) => "authentication failure",
        (0x02, 0x02) => "authorization failure: this initiator is not allowed",
        (0x02, 0x03) => "target not found",
        (0x02, 0x04) => "target removed",
        (0x02, 0x05) => "unsupported version",
        (0x02, 0x07) => "missing parameter",
        (0x02, _) => "initiator error",
        (0x03, _) => "target error",
        _ => "unexpected status",
    }
}

/// Login parameters.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    pub initiator_name: String,
    /// The ISID (RFC 7143 11.12.5); `LoginOptions::new` picks a random one of type 0x80. Commands that act as one
    /// host choose theirs with [`isid::derived_isid`] instead, so that each run is the same I_T nexus.
    pub isid: [u8; 6],
    pub target_name: String,
    pub header_digest: bool,
    pub data_digest: bool,
    pub timeout: Duration,
    /// CHAP credentials; None logs in with AuthMethod=None.
    pub chap: Option<ChapCredentials>,
}

impl LoginOptions {
    pub fn new(initiator_name: &str, target_name: &str) -> LoginOptions {
        let random: [u8; 3] = rand::random();
        LoginOptions {
            initiator_name: initiator_name.to_string(),
            isid: [0x80, random[0], random[1], random[2], 0, 0],
            target_name: target_name.to_string(),
            header_digest: false,
            data_digest: false,
            timeout: Duration::from_secs(30),
            chap: None,
        }
    }
}

/// Direction and size of a command's data.
#[derive(Clone, Debug)]
pub enum DataDirection {
    None,
    Read(u32),
    Write(Vec<u8>),
}

/// The decoded part of sense data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseSummary {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl SenseSummary {
    /// Decodes fixed (0x70/0x71) and descriptor (0x72/0x73) sense data (SPC-4 4.5).
    pub fn parse(sense: &[u8]) -> Option<SenseSummary> {
        match sense.first()? & 0x7F {
            0x70 | 0x71 if sense.len() >= 14 => Some(SenseSummary {
                key: sense[2] & 0x0F,
                asc: sense[12],
                ascq: sense[13],
            }),
            0x72 | 0x73 if sense.len() >= 4 => Some(SenseSummary {
                key: sense[1] & 0x0F,
                asc: sense[2],
                ascq: sense[3],
            }),
            _ => None,
        }
    }
}

/// A finished command.
#[derive(Clone, Debug)]
pub struct ScsiOutcome {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
    pub residual: Residual,
}

impl ScsiOutcome {
    pub fn is_good(&self) -> bool {
        self.status == 0
    }

    pub fn sense_summary(&self) -> Option<SenseSummary> {
        SenseSummary::parse(&self.sense)
    }
}

/// The longest text answer gathered from parts (a SendTargets answer of every target and portal fits).
const MAX_TEXT_ANSWER_BYTES: usize = 4 << 20;

struct Pending {
    reply: oneshot::Sender<Result<ScsiOutcome, InitiatorError>>,
    lun: [u8; 8],
    data_in: Vec<u8>,
    /// The expected data transfer length of a read: Data-In beyond it is a protocol error (RFC 7143 11.7.4).
    read_length: u32,
    write_data: Option<Arc<Vec<u8>>>,
}

struct SessionState {
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    pending: HashMap<u32, Pending>,
    tmf_pending: HashMap<u32, oneshot::Sender<u8>>,
    logout_pending: Option<(u32, oneshot::Sender<()>)>,
    closed: Option<String>,
}

impl SessionState {
    fn update(&mut self, sequence: &TargetSequence, has_status: bool) {
        if has_status {
            self.exp_stat_sn = sequence.stat_sn.wrapping_add(1);
        }
        // RFC 7143 3.2.2.1: ExpCmdSN/MaxCmdSN only move forward; MaxCmdSN = ExpCmdSN - 1 means a closed window.
        if SerialNumber(sequence.exp_cmd_sn).gt(SerialNumber(self.exp_cmd_sn)) {
            self.exp_cmd_sn = sequence.exp_cmd_sn;
        }
        if SerialNumber(sequence.max_cmd_sn).gt(SerialNumber(self.max_cmd_sn)) {
            self.max_cmd_sn = sequence.max_cmd_sn;
        }
    }

    fn allocate_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG && !self.pending.contains_key(&itt) {
                return itt;
            }
        }
    }
}

impl Pending {
    /// A request answered by one PDU (Text, NOP-Out): no data phase.
    fn for_reply(reply: oneshot::Sender<Result<ScsiOutcome, InitiatorError>>) -> Pending {
        Pending {
            reply,
            lun: [0; 8],
            data_in: Vec::new(),
            read_length: 0,
            write_data: None,
        }
    }
}

/// The task attribute a command is sent with (RFC 7143 11.3.1 ATTR: SAM-5 8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskAttribute {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

/// A command sent and not yet waited for: its tag and CmdSN, which ABORT TASK names (RFC 7143 11.5.1).
pub struct Task {
    pub itt: u32,
    pub cmd_sn: u32,
    pub lun: u64,
    outcome: oneshot::Receiver<Result<ScsiOutcome, InitiatorError>>,
    state: Arc<Mutex<SessionState>>,
    timeout: Duration,
}

impl Task {
    /// Waits for the command's status, at most the session's per-command timeout.
    pub async fn wait(self) -> Result<ScsiOutcome, InitiatorError> {
        match tokio::time::timeout(self.timeout, self.outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(InitiatorError::Protocol(
                lock(&self.state)
                    .closed
                    .clone()
                    .unwrap_or_else(|| "connection closed".into()),
            )),
            Err(_) => {
                // Forget the task: a late answer for this ITT is then ignored by the reader.
                lock(&self.state).pending.remove(&self.itt);
                Err(InitiatorError::Timeout("the SCSI response"))
            }
        }
    }
}

/// A logged-in session (normal or discovery).
pub struct Session {
    state: Arc<Mutex<SessionState>>,
    window_opened: Arc<Notify>,
    outgoing: mpsc::UnboundedSender<Pdu>,
    params: SessionParams,
    timeout: Duration,
    target_name: String,
}

fn lock(state: &Mutex<SessionState>) -> std::sync::MutexGuard<'_, SessionState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// Logs in to a target over TCP (normal session): security stage with AuthMethod=None, then operational
    /// negotiation (see the `login` module).
    pub async fn login(
        address: SocketAddr,
        options: &LoginOptions,
    ) -> Result<Session, InitiatorError> {
        Self::connect(address, options, login::SessionKind::Normal).await
    }

    /// Logs in over an already open byte stream (a TCP stream, or an in-memory pipe in tests and simulations).
    pub async fn login_over<S>(stream: S, options: &LoginOptions) -> Result<Session, InitiatorError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        Self::establish(reader, writer, options, login::SessionKind::Normal).await
    }

    /// Lists the targets behind a portal with SendTargets=All (RFC 7143 Appendix C), as (target name, portal
    /// addresses "host:port,tpgt") pairs.
    pub async fn discover(
        address: SocketAddr,
        initiator_name: &str,
    ) -> Result<Vec<(String, Vec<String>)>, InitiatorError> {
        Self::discover_with(address, &LoginOptions::new(initiator_name, "")).await
    }

    /// [`Session::discover`] with full login options (CHAP credentials, digests); the target name is unused.
    pub async fn discover_with(
        address: SocketAddr,
        options: &LoginOptions,
    ) -> Result<Vec<(String, Vec<String>)>, InitiatorError> {
        let session = Self::connect(address, options, login::SessionKind::Discovery).await?;
        let mut request = TextPairs::new();
        request.push("SendTargets", "All");
        let answer = session.text(request).await?;
        session.logout().await?;
        Ok(send_targets(&answer))
    }

    async fn connect(
        address: SocketAddr,
        options: &LoginOptions,
        kind: login::SessionKind,
    ) -> Result<Session, InitiatorError> {
        let stream = tokio::time::timeout(options.timeout, TcpStream::connect(address))
            .await
            .map_err(|_| InitiatorError::Timeout("the TCP connection"))??;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        Self::establish(reader, writer, options, kind).await
    }

    /// Logs in on a fresh connection and starts the reader and writer tasks.
    async fn establish<R, W>(
        mut reader: R,
        mut writer: W,
        options: &LoginOptions,
        kind: login::SessionKind,
    ) -> Result<Session, InitiatorError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut buffer = Vec::new();
        let (response, params) = tokio::time::timeout(
            options.timeout,
            login::login_exchange(&mut reader, &mut writer, &mut buffer, options, kind),
        )
        .await
        .map_err(|_| InitiatorError::Timeout("the login response"))??;
        let state = Arc::new(Mutex::new(SessionState {
            cmd_sn: response.sequence.exp_cmd_sn,
            exp_cmd_sn: response.sequence.exp_cmd_sn,
            max_cmd_sn: response.sequence.max_cmd_sn,
            exp_stat_sn: response.sequence.stat_sn.wrapping_add(1),
            next_itt: 1,
            pending: HashMap::new(),
            tmf_pending: HashMap::new(),
            logout_pending: None,
            closed: None,
        }));
        let window_opened = Arc::new(Notify::new());
        let (outgoing, queue) = mpsc::unbounded_channel();
        let digests = params.digests();
        tokio::spawn(write_loop(writer, queue, digests, Arc::clone(&state)));
        tokio::spawn(read_loop(
            reader,
            buffer,
            params,
            Arc::clone(&state),
            Arc::clone(&window_opened),
            outgoing.clone(),
        ));
        Ok(Session {
            state,
            window_opened,
            outgoing,
            params,
            timeout: options.timeout,
            target_name: options.target_name.clone(),
        })
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// Changes the per-command timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs one SCSI command and returns its outcome whatever the status; see also [`Session::execute_checked`].
    pub async fn execute(
        &self,
        lun: u64,
        cdb: &[u8],
        direction: DataDirection,
    ) -> Result<ScsiOutcome, InitiatorError> {
        self.submit(lun, cdb, direction).await?.wait().await
    }

    /// Runs one SCSI command; a status other than GOOD becomes [`InitiatorError::Scsi`] with the decoded sense.
    pub async fn execute_checked(
        &self,
        lun: u64,
        cdb: &[u8],
        direction: DataDirection,
    ) -> Result<ScsiOutcome, InitiatorError> {
        let outcome = self.execute(lun, cdb, direction).await?;
        if outcome.is_good() {
            return Ok(outcome);
        }
        Err(InitiatorError::Scsi(ScsiFailure::from_outcome(
            cdb, &outcome,
        )))
    }

    /// Sends one SCSI command and returns at once with its task tag; [`Task::wait`] gives the outcome. Waits
    /// only while the target's command window is closed (RFC 7143 3.2.2.1).
    pub async fn submit(
        &self,
        lun: u64,
        cdb: &[u8],
        direction: DataDirection,
    ) -> Result<Task, InitiatorError> {
        self.submit_with_attribute(lun, cdb, direction, TaskAttribute::Simple)
            .await
    }

    /// [`Session::submit`] with a task attribute (SAM-5 8.6; the ATTR field, RFC 7143 11.3.1).
    pub async fn submit_with_attribute(
        &self,
        lun: u64,
        cdb: &[u8],
        direction: DataDirection,
        attribute: TaskAttribute,
    ) -> Result<Task, InitiatorError> {
        let (reply, outcome) = oneshot::channel();
        let lun_field = encode_lun(lun);
        let (read_length, write_data) = match direction {
            DataDirection::None => (0, None),
            DataDirection::Read(length) => (length, None),
            DataDirection::Write(data) => (0, Some(Arc::new(data))),
        };
        let write_length = match &write_data {
            Some(data) => u32::try_from(data.len()).map_err(|_| {
                InitiatorError::Protocol("write data longer than 4 GiB in one command".into())
            })?,
            None => 0,
        };
        // The CmdSN and the ITT are taken under one lock so commands reach the writer in CmdSN order.
        let (cmd_sn, itt) = loop {
            let notified = self.window_opened.notified();
            {
                let mut state = lock(&self.state);
                if let Some(reason) = &state.closed {
                    return Err(InitiatorError::Protocol(reason.clone()));
                }
                if SerialNumber(state.cmd_sn).le(SerialNumber(state.max_cmd_sn)) {
                    let cmd_sn = state.cmd_sn;
                    state.cmd_sn = state.cmd_sn.wrapping_add(1);
                    let itt = state.allocate_itt();
                    state.pending.insert(
                        itt,
                        Pending {
                            reply,
                            lun: lun_field,
                            data_in: Vec::with_capacity(read_length as usize),
                            read_length,
                            write_data: write_data.clone(),
                        },
                    );
                    let (immediate, unsolicited_end) = self.unsolicited_plan(write_length);
                    let command = ScsiCommand {
                        immediate: false,
                        final_bit: unsolicited_end == immediate,
                        read: read_length > 0,
                        write: write_length > 0,
                        attribute: attribute as u8,
                        lun: lun_field,
                        itt,
                        expected_data_transfer_length: write_length.max(read_length),
                        cmd_sn,
                        exp_stat_sn: state.exp_stat_sn,
                        cdb: cdb.to_vec(),
                        data: write_data
                            .as_ref()
                            .map(|d| d[..immediate as usize].to_vec())
                            .unwrap_or_default(),
                    };
                    if self.outgoing.send(command.to_pdu()).is_err() {
                        state.pending.remove(&itt);
                        return Err(InitiatorError::Protocol("the connection is closed".into()));
                    }
                    if let Some(data) = &write_data {
                        send_data_out(
                            &self.outgoing,
                            &self.params,
                            DataOutBurst {
                                lun: lun_field,
                                itt,
                                ttt: RESERVED_TAG,
                                exp_stat_sn: state.exp_stat_sn,
                                from: immediate,
                                to: unsolicited_end,
                            },
                            data,
                        );
                    }
                    break (cmd_sn, itt);
                }
            }
            tokio::time::timeout(self.timeout, notified)
                .await
                .map_err(|_| InitiatorError::Timeout("the target's command window to open"))?;
        };
        Ok(Task {
            itt,
            cmd_sn,
            lun,
            outcome,
            state: Arc::clone(&self.state),
            timeout: self.timeout,
        })
    }

    /// NOP-Out with a reply wanted (RFC 7143 11.18): proves the target and the connection are alive.
    pub async fn ping(&self) -> Result<(), InitiatorError> {
        let (reply, outcome) = oneshot::channel();
        let (itt, cmd_sn, exp_stat_sn) = self.immediate_request(|state, itt| {
            state.pending.insert(itt, Pending::for_reply(reply));
        });
        let request = NopOut {
            immediate: true,
            lun: [0; 8],
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn,
            data: Vec::new(),
        };
        self.send(request.to_pdu())?;
        self.await_reply(outcome, "the NOP-In").await??;
        Ok(())
    }

    /// How much write data goes with the command (immediate) and unsolicited (RFC 7143 13.10, 13.11, 13.14).
    fn unsolicited_plan(&self, write_length: u32) -> (u32, u32) {
        let first_burst = self.params.first_burst_length.min(write_length);
        let immediate = if self.params.immediate_data {
            first_burst.min(self.params.max_xmit_data_segment_length)
        } else {
            0
        };
        let unsolicited_end = if self.params.initial_r2t {
            immediate
        } else {
            first_burst
        };
        (immediate, unsolicited_end)
    }

    fn send(&self, pdu: Pdu) -> Result<(), InitiatorError> {
        self.outgoing
            .send(pdu)
            .map_err(|_| InitiatorError::Protocol(self.closed_reason()))
    }

    fn closed_reason(&self) -> String {
        lock(&self.state)
            .closed
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }

    /// Numbers for an immediate request (RFC 7143 3.2.2.1: it carries the next CmdSN without consuming it):
    /// a fresh ITT, registered by `register` under the state lock so the answer cannot race ahead of it.
    fn immediate_request(&self, register: impl FnOnce(&mut SessionState, u32)) -> (u32, u32, u32) {
        let mut state = lock(&self.state);
        let itt = state.allocate_itt();
        register(&mut state, itt);
        (itt, state.cmd_sn, state.exp_stat_sn)
    }

    /// Waits for the answer to a request, within the session's timeout.
    async fn await_reply<T>(
        &self,
        reply: oneshot::Receiver<T>,
        what: &'static str,
    ) -> Result<T, InitiatorError> {
        tokio::time::timeout(self.timeout, reply)
            .await
            .map_err(|_| InitiatorError::Timeout(what))?
            .map_err(|_| InitiatorError::Protocol(self.closed_reason()))
    }

    /// A Text request (one PDU each way), e.g. SendTargets.
    pub async fn text(&self, pairs: TextPairs) -> Result<TextPairs, InitiatorError> {
        let (reply, outcome) = oneshot::channel();
        let (itt, cmd_sn, exp_stat_sn) = self.immediate_request(|state, itt| {
            state.pending.insert(itt, Pending::for_reply(reply));
        });
        let request = TextRequest {
            immediate: true,
            final_bit: true,
            continue_bit: false,
            lun: [0; 8],
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn,
            data: pairs.encode(),
        };
        self.send(request.to_pdu())?;
        let outcome = self.await_reply(outcome, "the text response").await??;
        TextPairs::parse(&outcome.data_in).map_err(|e| InitiatorError::Protocol(e.to_string()))
    }

    /// A task management function; returns the TMF response code (RFC 7143 11.6.1).
    pub async fn task_management(
        &self,
        function: u8,
        lun: u64,
        referenced: Option<(u32, u32)>,
    ) -> Result<u8, InitiatorError> {
        let (reply, response) = oneshot::channel();
        let (itt, cmd_sn, exp_stat_sn) = self.immediate_request(|state, itt| {
            state.tmf_pending.insert(itt, reply);
        });
        let (referenced_task_tag, ref_cmd_sn) = referenced.unwrap_or((RESERVED_TAG, 0));
        let request = TaskManagementRequest {
            immediate: true,
            function,
            lun: encode_lun(lun),
            itt,
            referenced_task_tag,
            cmd_sn,
            exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        };
        self.send(request.to_pdu())?;
        self.await_reply(response, "the task management response")
            .await
    }

    /// Logs out (closes the session) and waits for the answer.
    pub async fn logout(&self) -> Result<(), InitiatorError> {
        let (reply, done) = oneshot::channel();
        let (itt, cmd_sn, exp_stat_sn) = self.immediate_request(|state, itt| {
            state.logout_pending = Some((itt, reply));
        });
        let request = LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn,
            exp_stat_sn,
        };
        self.send(request.to_pdu())?;
        self.await_reply(done, "the logout response").await
    }
}

/// Reads one whole PDU, keeping any bytes after it in `buffer` for the next call.
pub(crate) async fn read_pdu<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut Vec<u8>,
    digests: Digests,
) -> Result<Pdu, InitiatorError> {
    loop {
        match pdu::decode(buffer, digests, LARGEST_ACCEPTED_SEGMENT) {
            Ok(Some((pdu, used))) => {
                buffer.drain(..used);
                return Ok(pdu);
            }
            Ok(None) => {}
            Err(e) => return Err(InitiatorError::Protocol(e.to_string())),
        }
        buffer.reserve(256 * 1024);
        if reader.read_buf(buffer).await? == 0 {
            return Err(InitiatorError::Protocol(
                "the target closed the connection".into(),
            ));
        }
    }
}

/// The writer task: sends queued PDUs in order, coalescing what is queued into one write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Pdu>,
    digests: Digests,
    state: Arc<Mutex<SessionState>>,
) {
    let mut bytes = Vec::with_capacity(1 << 20);
    while let Some(pdu) = queue.recv().await {
        pdu.encode(digests, &mut bytes);
        // Coalesce whatever else is queued into the same write.
        while bytes.len() < (1 << 20) {
            match queue.try_recv() {
                Ok(more) => more.encode(digests, &mut bytes),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.write_all(&bytes).await {
            lock(&state)
                .closed
                .get_or_insert(format!("write failed: {e}"));
            return;
        }
        bytes.clear();
    }
}

/// The reader task: dispatches every PDU from the target; on any failure fails every waiting request.
async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buffer: Vec<u8>,
    params: SessionParams,
    state: Arc<Mutex<SessionState>>,
    window_opened: Arc<Notify>,
    outgoing: mpsc::UnboundedSender<Pdu>,
) {
    let reason = loop {
        let pdu = match read_pdu(&mut reader, &mut buffer, params.digests()).await {
            Ok(pdu) => pdu,
            Err(e) => break e.to_string(),
        };
        if let Err(reason) = handle_incoming(pdu, &params, &state, &outgoing) {
            break reason;
        }
        window_opened.notify_waiters();
    };
    let mut state = lock(&state);
    state.closed.get_or_insert(reason.clone());
    for (_, pending) in state.pending.drain() {
        let _ = pending
            .reply
            .send(Err(InitiatorError::Protocol(reason.clone())));
    }
    state.tmf_pending.clear();
    if let Some((_, done)) = state.logout_pending.take() {
        let _ = done.send(());
    }
    window_opened.notify_waiters();
}

fn handle_incoming(
    pdu: Pdu,
    params: &SessionParams,
    state: &Mutex<SessionState>,
    outgoing: &mpsc::UnboundedSender<Pdu>,
) -> Result<(), String> {
    let mut state = lock(state);
    match pdu.opcode() {
        Some(Opcode::DataIn) => {
            let data_in = DataIn::from_pdu(&pdu);
            state.update(&data_in.sequence, data_in.status.is_some());
            let Some(pending) = state.pending.get_mut(&data_in.itt) else {
                return Ok(());
            };
            // Reassemble by buffer offset (RFC 7143 11.7.4), never past the expected transfer length.
            let offset = data_in.buffer_offset as usize;
            let end = offset + data_in.data.len();
            if end > pending.read_length as usize {
                return Err(format!(
                    "Data-In for ITT {:#x} ends at byte {end}, past the expected length {}",
                    data_in.itt, pending.read_length
                ));
            }
            if pending.data_in.len() < end {
                pending.data_in.resize(end, 0);
            }
            pending.data_in[offset..end].copy_from_slice(&data_in.data);
            if let Some(status) = data_in.status {
                let pending = state.pending.remove(&data_in.itt).expect("checked above");
                let outcome = ScsiOutcome {
                    status,
                    sense: Vec::new(),
                    data_in: pending.data_in,
                    residual: data_in.residual,
                };
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Some(Opcode::ScsiResponse) => {
            let response = ScsiResponse::from_pdu(&pdu);
            state.update(&response.sequence, true);
            if let Some(pending) = state.pending.remove(&response.itt) {
                let outcome = ScsiOutcome {
                    status: response.status,
                    sense: response.sense,
                    data_in: pending.data_in,
                    residual: response.residual,
                };
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Some(Opcode::ReadyToTransfer) => {
            let r2t = ReadyToTransfer::from_pdu(&pdu);
            state.update(&r2t.sequence, false);
            let Some(pending) = state.pending.get(&r2t.itt) else {
                return Ok(());
            };
            let Some(data) = pending.write_data.clone() else {
                return Err(format!(
                    "R2T for a command without write data (ITT {:#x})",
                    r2t.itt
                ));
            };
            let end = r2t
                .buffer_offset
                .checked_add(r2t.desired_length)
                .filter(|&e| e as usize <= data.len());
            let Some(end) = end else {
                return Err("R2T beyond the command's data".into());
            };
            let burst = DataOutBurst {
                lun: pending.lun,
                itt: r2t.itt,
                ttt: r2t.ttt,
                exp_stat_sn: state.exp_stat_sn,
                from: r2t.buffer_offset,
                to: end,
            };
            send_data_out(outgoing, params, burst, &data);
        }
        Some(Opcode::NopIn) => {
            let nop = NopIn::from_pdu(&pdu);
            let is_ping = nop.itt == RESERVED_TAG;
            state.update(&nop.sequence, !is_ping);
            if let Some(pending) = state.pending.remove(&nop.itt) {
                // The answer to our own NOP-Out (`Session::ping`).
                let outcome = ScsiOutcome {
                    status: 0,
                    sense: Vec::new(),
                    data_in: nop.data,
                    residual: Residual::None,
                };
                let _ = pending.reply.send(Ok(outcome));
                return Ok(());
            }
            if nop.ttt != RESERVED_TAG {
                // A target ping: answer with the same TTT (RFC 7143 11.18).
                let answer = NopOut {
                    immediate: true,
                    lun: nop.lun,
                    itt: RESERVED_TAG,
                    ttt: nop.ttt,
                    cmd_sn: state.cmd_sn,
                    exp_stat_sn: state.exp_stat_sn,
                    data: Vec::new(),
                };
                let _ = outgoing.send(answer.to_pdu());
            }
        }
        Some(Opcode::TextResponse) => {
            let response = TextResponse::from_pdu(&pdu);
            state.update(&response.sequence, true);
            if response.continue_bit {
                // Part of a long answer (RFC 7143 11.11.1): keep it, and ask for the next part with an empty
                // Text Request carrying the target's TTT (11.10.4).
                let Some(pending) = state.pending.get_mut(&response.itt) else {
                    return Ok(());
                };
                if pending.data_in.len() + response.data.len() > MAX_TEXT_ANSWER_BYTES {
                    return Err(format!(
                        "a text answer longer than {MAX_TEXT_ANSWER_BYTES} bytes"
                    ));
                }
                pending.data_in.extend_from_slice(&response.data);
                let next = TextRequest {
                    immediate: true,
                    final_bit: true,
                    continue_bit: false,
                    lun: [0; 8],
                    itt: response.itt,
                    ttt: response.ttt,
                    cmd_sn: state.cmd_sn,
                    exp_stat_sn: state.exp_stat_sn,
                    data: Vec::new(),
                };
                let _ = outgoing.send(next.to_pdu());
                return Ok(());
            }
            if let Some(mut pending) = state.pending.remove(&response.itt) {
                pending.data_in.extend_from_slice(&response.data);
                let outcome = ScsiOutcome {
                    status: 0,
                    sense: Vec::new(),
                    data_in: pending.data_in,
                    residual: Residual::None,
                };
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Some(Opcode::TaskManagementResponse) => {
            let response = TaskManagementResponse::from_pdu(&pdu);
            state.update(&response.sequence, true);
            if let Some(reply) = state.tmf_pending.remove(&response.itt) {
                let _ = reply.send(response.response);
            }
        }
        Some(Opcode::LogoutResponse) => {
            if let Some((_, done)) = state.logout_pending.take() {
                let _ = done.send(());
            }
            return Err("logged out".into());
        }
        Some(Opcode::Reject) => {
            let reject = Reject::from_pdu(&pdu);
            state.update(&reject.sequence, true);
            if reject.rejected_header.len() >= 20 {
                let itt =
                    u32::from_be_bytes(reject.rejected_header[16..20].try_into().expect("4 bytes"));
                if let Some(pending) = state.pending.remove(&itt) {
                    let _ = pending.reply.send(Err(InitiatorError::Rejected {
                        reason: reject.reason,
                    }));
                }
            }
        }
        Some(Opcode::AsyncMessage) => {}
        other => return Err(format!("unexpected PDU from the target: {other:?}")),
    }
    Ok(())
}

/// Groups a SendTargets answer (RFC 7143 Appendix C): each TargetName is followed by its TargetAddress keys.
fn send_targets(answer: &TextPairs) -> Vec<(String, Vec<String>)> {
    let mut targets: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in answer.iter() {
        match key {
            "TargetName" => targets.push((value.to_string(), Vec::new())),
            "TargetAddress" => {
                if let Some(last) = targets.last_mut() {
                    last.1.push(value.to_string());
                }
            }
            _ => {}
        }
    }
    targets
}

/// One sequence of Data-Out PDUs: the unsolicited data of a command (TTT 0xffffffff), or the answer to one R2T.
struct DataOutBurst {
    lun: [u8; 8],
    itt: u32,
    ttt: u32,
    exp_stat_sn: u32,
    /// Buffer offsets: bytes `from..to` of the command's data.
    from: u32,
    to: u32,
}

/// Sends a burst as Data-Out PDUs of at most the target's MaxRecvDataSegmentLength, DataSN counting from 0 in
/// each sequence and F set on the last (RFC 7143 11.7).
fn send_data_out(
    outgoing: &mpsc::UnboundedSender<Pdu>,
    params: &SessionParams,
    burst: DataOutBurst,
    data: &[u8],
) {
    let segment = params.max_xmit_data_segment_length.max(512);
    let mut offset = burst.from;
    let mut data_sn = 0;
    while offset < burst.to {
        let end = offset.saturating_add(segment).min(burst.to);
        let pdu = DataOut {
            final_bit: end == burst.to,
            lun: burst.lun,
            itt: burst.itt,
            ttt: burst.ttt,
            exp_stat_sn: burst.exp_stat_sn,
            data_sn,
            buffer_offset: offset,
            data: data[offset as usize..end as usize].to_vec(),
        };
        let _ = outgoing.send(pdu.to_pdu());
        data_sn += 1;
        offset = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_parsing_handles_both_formats() {
        let fixed = [
            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0,
        ];
        assert_eq!(
            SenseSummary::parse(&fixed),
            Some(SenseSummary {
                key: 5,
                asc: 0x21,
                ascq: 0
            })
        );
        let descriptor = [0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0];
        assert_eq!(
            SenseSummary::parse(&descriptor),
            Some(SenseSummary {
                key: 6,
                asc: 0x29,
                ascq: 0
            })
        );
        assert_eq!(SenseSummary::parse(&[0x70, 0]), None);
    }

    #[test]
    fn send_targets_groups_addresses_under_their_target() {
        let mut answer = TextPairs::new();
        answer.push("TargetName", "iqn.x:a");
        answer.push("TargetAddress", "10.0.0.1:3260,1");
        answer.push("TargetAddress", "[fe80::1]:3260,2");
        answer.push("TargetName", "iqn.x:b");
        assert_eq!(
            send_targets(&answer),
            vec![
                (
                    "iqn.x:a".to_string(),
                    vec![
                        "10.0.0.1:3260,1".to_string(),
                        "[fe80::1]:3260,2".to_string()
                    ]
                ),
                ("iqn.x:b".to_string(), Vec::new()),
            ]
        );
    }

    #[test]
    fn unsolicited_plan_respects_the_negotiated_keys() {
        let (outgoing, _queue) = mpsc::unbounded_channel();
        let mut session = Session {
            state: Arc::new(Mutex::new(SessionState {
                cmd_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                exp_stat_sn: 0,
                next_itt: 1,
                pending: HashMap::new(),
                tmf_pending: HashMap::new(),
                logout_pending: None,
                closed: None,
            })),
            window_opened: Arc::new(Notify::new()),
            outgoing,
            params: SessionParams {
                first_burst_length: 65536,
                max_xmit_data_segment_length: 8192,
                immediate_data: true,
                initial_r2t: false,
                ..SessionParams::default()
            },
            timeout: Duration::from_secs(1),
            target_name: String::new(),
        };
        assert_eq!(session.unsolicited_plan(1 << 20), (8192, 65536));
        assert_eq!(session.unsolicited_plan(4096), (4096, 4096));
        session.params.initial_r2t = true;
        session.params.immediate_data = false;
        assert_eq!(session.unsolicited_plan(1 << 20), (0, 0));
    }
}
