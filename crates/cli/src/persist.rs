//! `lunlock persist`: sg3_utils' `sg_persist` over iSCSI. The same options (long, short, and the underscore
//! spellings), the same output text on stdout and the same exit statuses (sg3_utils' `sg_lib.h` SG_LIB_* values), so
//! scripts written for `sg_persist /dev/sdX` (fence_scsi, cluster validation) work with an iSCSI URL in its place.
//!
//! The CDBs, parameter lists and response decoding live in `lunlock_initiator::pr` (SPC-4 6.13, 6.14); this module
//! only parses arguments, runs the commands and formats.
//!
//! The nexus. A registration belongs to the I_T nexus (initiator name + ISID), and every `lunlock persist` run is a
//! new iSCSI session, so the ISID must be the same on every run or a key registered by one run would belong to a
//! stranger in the next. Unless `--isid` is given, the ISID is the initiator name's default ISID
//! (`lunlock_initiator::isid::default_isid`: type 10b, RFC 7143 11.12.5, from an FNV-1a hash of the name, qualifier
//! 0), the one `read`, `write`, `caw` and the other one-shot commands use too, so a key registered here lets them
//! write under a registrants-only or Write Exclusive reservation of the same name. Two runs with the same name and
//! ISID at the same moment are one nexus: the second login reinstates the session (RFC 7143 6.3.5) and ends the
//! first.
//!
//! Unit attentions. `sg_persist` runs on a disk whose power-on unit attention the kernel consumed during the scan;
//! here every run is a fresh session whose first command would report it. So after login, TEST UNIT READY (allowed
//! under every reservation type, SPC-4 Table 63) absorbs pending unit attentions before the PR command, and any that
//! is not power-on/reset (29h) is named on stderr ("pending unit attention: ..."), so 2A/05 REGISTRATIONS PREEMPTED
//! is not lost silently.
//!
//! Deviations from sg_persist, each deliberate: several `--transport-id` options accumulate (sg_persist keeps the
//! last), keys must be all hex (sg_persist's sscanf stops at the first non-hex character), `--prout-type` above 0xf
//! is an error (sg_persist masks it), an unknown option exits 1 (sg_persist prints usage and exits 0), and a device
//! that cannot be reached or logged in to exits 15 (SG_LIB_FILE_ERROR) where sg_persist reports open(2)'s errno.
//! `--replace-lost` (a SPC-5 service action) is not offered.

use crate::client::describe_failure;
use crate::ClientOptions;
use lunlock_initiator::isid::{default_isid, parse_isid};
use lunlock_initiator::pr::{
    self, Capabilities, FullStatus, PrInAction, PrOutAction, PrType, ProutParameters, ReadKeys,
    ReadReservation, RegisterAndMoveParameters, ReservationKey, TransportId,
};
use lunlock_initiator::{DataDirection, ScsiOutcome, Session};
use std::process::ExitCode;

/// sg_persist's default and largest allocation length for PERSISTENT RESERVE IN.
const MAX_ALLOCATION_LENGTH: u16 = 8192;
/// How many unit attentions TEST UNIT READY may report before we give up (each report clears one).
const MAX_UNIT_ATTENTIONS: usize = 16;
/// The most TransportIDs one command line may give (sg_persist's MX_TIDS).
const MAX_TRANSPORT_IDS: usize = 32;
const VERSION: &str = "lunlock persist 1.0 (sg_persist 0.73 compatible)";

/// Exit statuses (sg3_utils' sg_lib.h).
pub mod exit {
    pub const OK: u8 = 0;
    pub const SYNTAX_ERROR: u8 = 1;
    pub const NOT_READY: u8 = 2;
    pub const MEDIUM_HARD: u8 = 3;
    pub const ILLEGAL_REQUEST: u8 = 5;
    pub const UNIT_ATTENTION: u8 = 6;
    pub const DATA_PROTECT: u8 = 7;
    pub const INVALID_OP: u8 = 9;
    pub const COPY_ABORTED: u8 = 10;
    pub const ABORTED_COMMAND: u8 = 11;
    pub const STANDBY: u8 = 12;
    pub const UNAVAILABLE: u8 = 13;
    pub const MISCOMPARE: u8 = 14;
    pub const FILE_ERROR: u8 = 15;
    pub const INVALID_PARAM: u8 = 19;
    pub const NO_SENSE: u8 = 20;
    pub const RECOVERED: u8 = 21;
    pub const LBA_OUT_OF_RANGE: u8 = 22;
    pub const RESERVATION_CONFLICT: u8 = 24;
    pub const CONDITION_MET: u8 = 25;
    pub const BUSY: u8 = 26;
    pub const TASK_SET_FULL: u8 = 27;
    pub const ACA_ACTIVE: u8 = 28;
    pub const TASK_ABORTED: u8 = 29;
    pub const CONTRADICT: u8 = 31;
    pub const TRANSPORT_ERROR: u8 = 35;
    pub const PROTECTION: u8 = 40;
    pub const MALFORMED: u8 = 97;
    pub const SENSE: u8 = 98;
    pub const OTHER: u8 = 99;
}

/// sg3_utils' short text for an exit status (sg_lib_data.c's exit string table).
pub fn exit_text(status: u8) -> &'static str {
    match status {
        exit::OK => "No errors",
        exit::SYNTAX_ERROR => "Syntax error",
        exit::NOT_READY => "Device not ready",
        exit::MEDIUM_HARD => "Medium or hardware error",
        exit::ILLEGAL_REQUEST => "Illegal request",
        exit::UNIT_ATTENTION => "Unit attention",
        exit::DATA_PROTECT => "Data protect",
        exit::INVALID_OP => "Illegal request, Invalid opcode",
        exit::COPY_ABORTED => "Copy aborted",
        exit::ABORTED_COMMAND => "Aborted command",
        exit::STANDBY => "Device not ready, standby",
        exit::UNAVAILABLE => "Device not ready, unavailable",
        exit::MISCOMPARE => "Miscompare",
        exit::FILE_ERROR => "File error",
        exit::INVALID_PARAM => "Illegal request, Invalid field in parameter list",
        exit::NO_SENSE => "No sense key",
        exit::RECOVERED => "Recovered error (warning)",
        exit::LBA_OUT_OF_RANGE => "LBA out of range",
        exit::RESERVATION_CONFLICT => "Reservation conflict",
        exit::CONDITION_MET => "Condition met",
        exit::BUSY => "Busy",
        exit::TASK_SET_FULL => "Task set full",
        exit::ACA_ACTIVE => "ACA active",
        exit::TASK_ABORTED => "Task aborted",
        exit::CONTRADICT => "Contradict",
        exit::TRANSPORT_ERROR => "Transport error",
        exit::PROTECTION => "Aborted command, protection error",
        exit::MALFORMED => "Malformed SCSI command response",
        exit::SENSE => "Some other sense error",
        _ => "Some other error",
    }
}

/// The exit status sg3_utils gives a finished command (sg_err_category_sense and sg_cmds_process_resp): from the
/// status byte, and for CHECK CONDITION from the sense key and a few ASC/ASCQ pairs.
pub fn category(outcome: &ScsiOutcome) -> u8 {
    match outcome.status {
        0x00 => exit::OK,
        0x02 => match outcome.sense_summary() {
            None => exit::SENSE,
            Some(sense) => match (sense.key, sense.asc, sense.ascq) {
                (0x0, _, _) => exit::NO_SENSE,
                (0x1, _, _) => exit::RECOVERED,
                (0x2, 0x04, 0x0B) => exit::STANDBY,
                (0x2, 0x04, 0x0C) => exit::UNAVAILABLE,
                (0x2, _, _) => exit::NOT_READY,
                (0x3 | 0x4 | 0x8, _, _) => exit::MEDIUM_HARD,
                (0x5, 0x20, 0x00) => exit::INVALID_OP,
                (0x5, 0x21, 0x00) => exit::LBA_OUT_OF_RANGE,
                (0x5, 0x26, 0x00) => exit::INVALID_PARAM,
                (0x5, _, _) => exit::ILLEGAL_REQUEST,
                (0x6, _, _) => exit::UNIT_ATTENTION,
                (0x7, _, _) => exit::DATA_PROTECT,
                (0xA, _, _) => exit::COPY_ABORTED,
                (0xB, 0x10, _) => exit::PROTECTION,
                (0xB, _, _) => exit::ABORTED_COMMAND,
                (0xE, _, _) => exit::MISCOMPARE,
                _ => exit::SENSE,
            },
        },
        0x04 => exit::CONDITION_MET,
        0x08 => exit::BUSY,
        0x18 => exit::RESERVATION_CONFLICT,
        0x28 => exit::TASK_SET_FULL,
        0x30 => exit::ACA_ACTIVE,
        0x40 => exit::TASK_ABORTED,
        _ => exit::OTHER,
    }
}

/// What to send: one PERSISTENT RESERVE IN or OUT service action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    In(PrInAction),
    Out(PrOutAction),
}

/// A fully checked command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub device: String,
    pub inquiry: bool,
    pub action: Action,
    pub reservation_key: ReservationKey,
    pub service_action_key: ReservationKey,
    pub pr_type: PrType,
    pub aptpl: bool,
    pub all_target_ports: bool,
    pub specify_initiator_ports: bool,
    pub transport_ids: Vec<TransportId>,
    pub unregister: bool,
    pub relative_target_port: u16,
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub hex: u8,
    pub allocation_length: u16,
    pub verbose: u8,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Print this on stderr and exit 0.
    Help(String),
    Version,
    /// Run the request after printing `notices` on stderr (sg_persist's warnings).
    Run {
        request: Request,
        notices: Vec<String>,
    },
}

/// A command line that cannot run: the message for stderr and the exit status (1 syntax error, 31 contradiction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    pub message: String,
    pub status: u8,
    pub show_usage: bool,
}

impl ArgError {
    fn syntax(message: impl Into<String>) -> ArgError {
        ArgError {
            message: message.into(),
            status: exit::SYNTAX_ERROR,
            show_usage: false,
        }
    }

    fn contradiction(message: impl Into<String>, show_usage: bool) -> ArgError {
        ArgError {
            message: message.into(),
            status: exit::CONTRADICT,
            show_usage,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    In,
    Out,
    ReadKeys,
    ReadReservation,
    ReadFullStatus,
    ReportCapabilities,
    Register,
    RegisterIgnore,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAbort,
    RegisterMove,
    ParamRk,
    ParamSark,
    ProutType,
    ParamAptpl,
    ParamAlltgpt,
    ParamSpecIPt,
    TransportId,
    RelativeTargetPort,
    Unreg,
    NoInquiry,
    InitiatorName,
    Isid,
    Hex,
    AllocLength,
    Maxlen,
    Device,
    Verbose,
    Version,
    Help,
    Readonly,
}

impl Opt {
    fn takes_argument(self) -> bool {
        matches!(
            self,
            Opt::ParamRk
                | Opt::ParamSark
                | Opt::ProutType
                | Opt::TransportId
                | Opt::RelativeTargetPort
                | Opt::InitiatorName
                | Opt::Isid
                | Opt::AllocLength
                | Opt::Maxlen
                | Opt::Device
        )
    }
}

/// Long names, sg_persist's (hyphen and underscore spellings) plus lunlock's nexus options.
const LONG_OPTIONS: &[(&str, Opt)] = &[
    ("alloc-length", Opt::AllocLength),
    ("alloc_length", Opt::AllocLength),
    ("clear", Opt::Clear),
    ("device", Opt::Device),
    ("help", Opt::Help),
    ("hex", Opt::Hex),
    ("in", Opt::In),
    ("initiator-name", Opt::InitiatorName),
    ("initiator_name", Opt::InitiatorName),
    ("isid", Opt::Isid),
    ("maxlen", Opt::Maxlen),
    ("no-inquiry", Opt::NoInquiry),
    ("no_inquiry", Opt::NoInquiry),
    ("out", Opt::Out),
    ("param-alltgpt", Opt::ParamAlltgpt),
    ("param_alltgpt", Opt::ParamAlltgpt),
    ("param-aptpl", Opt::ParamAptpl),
    ("param_aptpl", Opt::ParamAptpl),
    ("param-rk", Opt::ParamRk),
    ("param_rk", Opt::ParamRk),
    ("param-sark", Opt::ParamSark),
    ("param_sark", Opt::ParamSark),
    ("param-spec-i-pt", Opt::ParamSpecIPt),
    ("param_spec_i_pt", Opt::ParamSpecIPt),
    ("param-unreg", Opt::Unreg),
    ("param_unreg", Opt::Unreg),
    ("preempt", Opt::Preempt),
    ("preempt-abort", Opt::PreemptAbort),
    ("preempt_abort", Opt::PreemptAbort),
    ("prout-type", Opt::ProutType),
    ("prout_type", Opt::ProutType),
    ("read-full-status", Opt::ReadFullStatus),
    ("read_full_status", Opt::ReadFullStatus),
    ("read-keys", Opt::ReadKeys),
    ("read_keys", Opt::ReadKeys),
    ("readonly", Opt::Readonly),
    ("read-reservation", Opt::ReadReservation),
    ("read_reservation", Opt::ReadReservation),
    ("read-status", Opt::ReadFullStatus),
    ("read_status", Opt::ReadFullStatus),
    ("register", Opt::Register),
    ("register-ignore", Opt::RegisterIgnore),
    ("register_ignore", Opt::RegisterIgnore),
    ("register-move", Opt::RegisterMove),
    ("register_move", Opt::RegisterMove),
    ("release", Opt::Release),
    ("relative-target-port", Opt::RelativeTargetPort),
    ("relative_target_port", Opt::RelativeTargetPort),
    ("report-capabilities", Opt::ReportCapabilities),
    ("report_capabilities", Opt::ReportCapabilities),
    ("reserve", Opt::Reserve),
    ("transport-id", Opt::TransportId),
    ("transport_id", Opt::TransportId),
    ("unreg", Opt::Unreg),
    ("verbose", Opt::Verbose),
    ("version", Opt::Version),
];

fn short_option(letter: char) -> Option<Opt> {
    Some(match letter {
        'A' => Opt::PreemptAbort,
        'c' => Opt::ReportCapabilities,
        'C' => Opt::Clear,
        'd' => Opt::Device,
        'G' => Opt::Register,
        'H' => Opt::Hex,
        'h' => Opt::Help,
        'i' => Opt::In,
        'I' => Opt::RegisterIgnore,
        'k' => Opt::ReadKeys,
        'K' => Opt::ParamRk,
        'l' => Opt::AllocLength,
        'L' => Opt::Release,
        'm' => Opt::Maxlen,
        'M' => Opt::RegisterMove,
        'n' => Opt::NoInquiry,
        'o' => Opt::Out,
        'P' => Opt::Preempt,
        'Q' => Opt::RelativeTargetPort,
        'r' => Opt::ReadReservation,
        'R' => Opt::Reserve,
        's' => Opt::ReadFullStatus,
        'S' => Opt::ParamSark,
        'T' => Opt::ProutType,
        'U' => Opt::Unreg,
        'v' => Opt::Verbose,
        'V' => Opt::Version,
        'X' => Opt::TransportId,
        'y' => Opt::Readonly,
        'Y' => Opt::ParamAlltgpt,
        'Z' => Opt::ParamAptpl,
        _ => return None,
    })
}

/// getopt_long's lookup: an exact name, or a prefix that names one option (several spellings of one option are
/// not ambiguous).
fn long_option(name: &str) -> Result<Opt, ArgError> {
    if let Some(&(_, opt)) = LONG_OPTIONS.iter().find(|(long, _)| *long == name) {
        return Ok(opt);
    }
    let mut matches: Vec<Opt> = LONG_OPTIONS
        .iter()
        .filter(|(long, _)| long.starts_with(name))
        .map(|&(_, opt)| opt)
        .collect();
    matches.dedup();
    match matches.as_slice() {
        [opt] => Ok(*opt),
        [] => Err(ArgError::syntax(format!(
            "lunlock persist: unrecognized option '--{name}'"
        ))),
        _ => Err(ArgError::syntax(format!(
            "lunlock persist: option '--{name}' is ambiguous"
        ))),
    }
}

/// A command line split into options (with their values) and operands.
struct Tokens {
    options: Vec<(Opt, Option<String>)>,
    operands: Vec<String>,
}

/// Splits the command line GNU-getopt style (options may follow the device; `--` ends options).
fn tokenize(args: &[String]) -> Result<Tokens, ArgError> {
    let mut options = Vec::new();
    let mut operands = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            operands.extend(rest.by_ref().cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            let opt = long_option(name)?;
            let value = match (opt.takes_argument(), inline) {
                (true, Some(value)) => Some(value),
                (true, None) => Some(rest.next().cloned().ok_or_else(|| {
                    ArgError::syntax(format!(
                        "lunlock persist: option '--{name}' requires an argument"
                    ))
                })?),
                (false, Some(_)) => {
                    return Err(ArgError::syntax(format!(
                        "lunlock persist: option '--{name}' doesn't allow an argument"
                    )))
                }
                (false, None) => None,
            };
            options.push((opt, value));
        } else if arg.len() > 1 && arg.starts_with('-') {
            let letters: Vec<char> = arg[1..].chars().collect();
            for (index, &letter) in letters.iter().enumerate() {
                let opt = short_option(letter).ok_or_else(|| {
                    ArgError::syntax(format!("lunlock persist: invalid option -- '{letter}'"))
                })?;
                if !opt.takes_argument() {
                    options.push((opt, None));
                    continue;
                }
                let attached: String = letters[index + 1..].iter().collect();
                let value = if attached.is_empty() {
                    rest.next().cloned().ok_or_else(|| {
                        ArgError::syntax(format!(
                            "lunlock persist: option requires an argument -- '{letter}'"
                        ))
                    })?
                } else {
                    attached
                };
                options.push((opt, Some(value)));
                break;
            }
        } else {
            operands.push(arg.clone());
        }
    }
    Ok(Tokens { options, operands })
}

/// A hex number as sg_persist takes keys, types and ports: `0x` optional, at most `max` in value.
fn parse_hex(text: &str, max: u64) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16)
        .ok()
        .filter(|&value| value <= max)
}

/// TransportIDs from a file or stdin (`file=NAME` or `-`): one a line, blank lines and `#` comments skipped.
fn transport_ids_from_lines(text: &str) -> Result<Vec<TransportId>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| TransportId::parse(line).map_err(|e| e.to_string()))
        .collect()
}

fn transport_ids_argument(text: &str) -> Result<Vec<TransportId>, String> {
    if text == "-" {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
            .map_err(|e| format!("stdin: {e}"))?;
        return transport_ids_from_lines(&input);
    }
    if let Some(path) = text
        .strip_prefix("file=")
        .or_else(|| text.strip_prefix("FILE="))
    {
        let input = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        return transport_ids_from_lines(&input);
    }
    TransportId::parse(text)
        .map(|id| vec![id])
        .map_err(|e| e.to_string())
}

/// Parses and checks a `lunlock persist` command line the way sg_persist's main() does.
pub fn parse_args(args: &[String]) -> Result<Invocation, ArgError> {
    let Tokens { options, operands } = tokenize(args)?;
    let mut want_in = false;
    let mut want_out = false;
    let mut in_actions = Vec::new();
    let mut out_actions = Vec::new();
    let mut device = None;
    let mut help = 0;
    let mut version = false;
    let mut initiator_name = lunlock_initiator::DEFAULT_INITIATOR_NAME.to_string();
    let mut isid = None;
    let mut request = Request {
        device: String::new(),
        inquiry: true,
        action: Action::In(PrInAction::ReadKeys),
        reservation_key: ReservationKey(0),
        service_action_key: ReservationKey(0),
        pr_type: PrType(0),
        aptpl: false,
        all_target_ports: false,
        specify_initiator_ports: false,
        transport_ids: Vec::new(),
        unregister: false,
        relative_target_port: 0,
        initiator_name: String::new(),
        isid: [0; 6],
        hex: 0,
        allocation_length: MAX_ALLOCATION_LENGTH,
        verbose: 0,
    };
    for (opt, value) in options {
        let value = value.unwrap_or_default();
        match opt {
            Opt::In => want_in = true,
            Opt::Out => want_out = true,
            Opt::ReadKeys => in_actions.push(PrInAction::ReadKeys),
            Opt::ReadReservation => in_actions.push(PrInAction::ReadReservation),
            Opt::ReadFullStatus => in_actions.push(PrInAction::ReadFullStatus),
            Opt::ReportCapabilities => in_actions.push(PrInAction::ReportCapabilities),
            Opt::Register => out_actions.push(PrOutAction::Register),
            Opt::RegisterIgnore => out_actions.push(PrOutAction::RegisterAndIgnoreExistingKey),
            Opt::Reserve => out_actions.push(PrOutAction::Reserve),
            Opt::Release => out_actions.push(PrOutAction::Release),
            Opt::Clear => out_actions.push(PrOutAction::Clear),
            Opt::Preempt => out_actions.push(PrOutAction::Preempt),
            Opt::PreemptAbort => out_actions.push(PrOutAction::PreemptAndAbort),
            Opt::RegisterMove => out_actions.push(PrOutAction::RegisterAndMove),
            Opt::ParamRk => {
                request.reservation_key = ReservationKey(
                    parse_hex(&value, u64::MAX)
                        .ok_or_else(|| ArgError::syntax("bad argument to '--param-rk'"))?,
                )
            }
            Opt::ParamSark => {
                request.service_action_key = ReservationKey(
                    parse_hex(&value, u64::MAX)
                        .ok_or_else(|| ArgError::syntax("bad argument to '--param-sark'"))?,
                )
            }
            Opt::ProutType => {
                request.pr_type = PrType(
                    parse_hex(&value, 0xF)
                        .ok_or_else(|| ArgError::syntax("bad argument to '--prout-type'"))?
                        as u8,
                )
            }
            Opt::ParamAptpl => request.aptpl = true,
            Opt::ParamAlltgpt => request.all_target_ports = true,
            Opt::ParamSpecIPt => request.specify_initiator_ports = true,
            Opt::TransportId => {
                let ids = transport_ids_argument(&value).map_err(|why| {
                    ArgError::syntax(format!("bad argument to '--transport-id': {why}"))
                })?;
                request.transport_ids.extend(ids);
                if request.transport_ids.len() > MAX_TRANSPORT_IDS {
                    return Err(ArgError::syntax(format!(
                        "too many TransportIDs (at most {MAX_TRANSPORT_IDS})"
                    )));
                }
            }
            Opt::RelativeTargetPort => {
                let port = parse_hex(&value, u64::MAX)
                    .ok_or_else(|| ArgError::syntax("bad argument to '--relative-target-port'"))?;
                if port > 0xFFFF {
                    return Err(ArgError::syntax(
                        "argument to '--relative-target-port' 0 to ffff inclusive",
                    ));
                }
                request.relative_target_port = port as u16;
            }
            Opt::Unreg => request.unregister = true,
            Opt::NoInquiry => request.inquiry = false,
            Opt::InitiatorName => {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Err(ArgError::syntax("bad argument to '--initiator-name'"));
                }
                initiator_name = value;
            }
            Opt::Isid => {
                isid =
                    Some(parse_isid(&value).map_err(|why| {
                        ArgError::syntax(format!("bad argument to '--isid': {why}"))
                    })?)
            }
            Opt::Hex => request.hex = request.hex.saturating_add(1),
            Opt::AllocLength | Opt::Maxlen => {
                let (name, parsed) = if opt == Opt::Maxlen {
                    ("maxlen", value.parse::<u64>().ok())
                } else {
                    ("alloc-length", parse_hex(&value, u64::MAX))
                };
                let length = parsed
                    .ok_or_else(|| ArgError::syntax(format!("bad argument to '--{name}'")))?;
                if length > MAX_ALLOCATION_LENGTH as u64 {
                    return Err(ArgError::syntax(format!(
                        "'--{name}' argument exceeds maximum value ({MAX_ALLOCATION_LENGTH})"
                    )));
                }
                request.allocation_length = length as u16;
            }
            Opt::Device => device = Some(value),
            Opt::Verbose => request.verbose = request.verbose.saturating_add(1),
            Opt::Version => version = true,
            Opt::Help => help += 1,
            Opt::Readonly => {}
        }
    }
    let mut operands = operands.into_iter();
    if device.is_none() {
        device = operands.next();
    }
    if let Some(extra) = operands.next() {
        return Err(ArgError {
            message: format!("Unexpected extra argument: {extra}"),
            status: exit::SYNTAX_ERROR,
            show_usage: true,
        });
    }
    if help > 0 {
        return Ok(Invocation::Help(usage(help)));
    }
    if version {
        return Ok(Invocation::Version);
    }
    request.device = device.ok_or(ArgError {
        message: "No device name given".into(),
        status: exit::SYNTAX_ERROR,
        show_usage: true,
    })?;
    request.initiator_name = initiator_name;
    request.isid = isid.unwrap_or_else(|| default_isid(&request.initiator_name));
    let mut notices = Vec::new();
    request.action = choose_action(want_in, want_out, &in_actions, &out_actions, &mut notices)?;
    check_parameters(&request, &mut notices)?;
    Ok(Invocation::Run { request, notices })
}

/// sg_persist's rules for --in/--out and the service actions.
fn choose_action(
    want_in: bool,
    want_out: bool,
    in_actions: &[PrInAction],
    out_actions: &[PrOutAction],
    notices: &mut Vec<String>,
) -> Result<Action, ArgError> {
    if want_in && want_out {
        return Err(ArgError::contradiction(
            "choose '--in' _or_ '--out' (not both)",
            true,
        ));
    }
    if want_out {
        return match (out_actions, in_actions) {
            ([action], []) => Ok(Action::Out(*action)),
            _ => Err(ArgError::contradiction(
                ">> For Persistent Reserve Out one and only one appropriate\n>> service action must be chosen (e.g. '--register')",
                false,
            )),
        };
    }
    if !out_actions.is_empty() {
        return Err(ArgError::contradiction(
            ">> When a service action for Persistent Reserve Out is chosen the\n>> '--out' option must be given (as a safeguard)",
            false,
        ));
    }
    match in_actions {
        [] => {
            notices.push(
                ">> No service action given; assume Persistent Reserve In command\n>> with Read Keys service action"
                    .into(),
            );
            Ok(Action::In(PrInAction::ReadKeys))
        }
        [action] => Ok(Action::In(*action)),
        _ => Err(ArgError::contradiction(
            "Too many service actions given; choose one only",
            true,
        )),
    }
}

fn check_parameters(request: &Request, notices: &mut Vec<String>) -> Result<(), ArgError> {
    let moving = request.action == Action::Out(PrOutAction::RegisterAndMove);
    if (request.unregister || request.relative_target_port != 0) && !moving {
        return Err(ArgError::contradiction(
            "--unreg or --relative-target-port only useful with --register-move",
            true,
        ));
    }
    if moving && request.transport_ids.len() != 1 {
        return Err(ArgError::contradiction(
            "with --register-move one (and only one) --transport-id should be given",
            true,
        ));
    }
    if moving && request.specify_initiator_ports {
        return Err(ArgError::contradiction(
            "--param-spec-i-pt has no meaning with --register-move",
            true,
        ));
    }
    let needs_type = matches!(
        request.action,
        Action::Out(
            PrOutAction::Reserve
                | PrOutAction::Release
                | PrOutAction::Preempt
                | PrOutAction::PreemptAndAbort
        )
    );
    if needs_type && request.pr_type.0 == 0 {
        notices.push("warning>>> --prout-type probably needs to be given".into());
    }
    Ok(())
}

/// The usage text, sg_persist's layout (`-hh` for the rest).
pub fn usage(level: u32) -> String {
    if level < 2 {
        return "Usage: lunlock persist [OPTIONS] [DEVICE]
  where DEVICE is iscsi://host[:port]/target-iqn/lun and the main OPTIONS are:
    --clear|-C                 PR Out: Clear
    --help|-h                  print usage message, twice for more
    --in|-i                    request PR In command (default)
    --out|-o                   request PR Out command
    --param-rk=RK|-K RK        PR Out parameter reservation key
                               (RK is in hex)
    --param-sark=SARK|-S SARK    PR Out parameter service action
                                 reservation key (SARK is in hex)
    --preempt|-P               PR Out: Preempt
    --preempt-abort|-A         PR Out: Preempt and Abort
    --prout-type=TYPE|-T TYPE    PR Out type field (see '-hh')
    --read-full-status|-s      PR In: Read Full Status
    --read-keys|-k             PR In: Read Keys (default)
    --read-reservation|-r      PR In: Read Reservation
    --read-status|-s           PR In: Read Full Status
    --register|-G              PR Out: Register
    --register-ignore|-I       PR Out: Register and Ignore
    --register-move|-M         PR Out: Register and Move
    --release|-L               PR Out: Release
    --report-capabilities|-c   PR In: Report Capabilities
    --reserve|-R               PR Out: Reserve
    --unreg|-U                 optional with PR Out Register and Move
    --initiator-name=IQN       iSCSI initiator name of the nexus
    --isid=ISID                ISID of the nexus (6 bytes hex, e.g.
                               0x400001370000; default: derived from the
                               initiator name, as for lunlock read/write)

Performs a SCSI PERSISTENT RESERVE (IN or OUT) command over iSCSI. Invoking
'lunlock persist DEVICE' will do a PR In Read Keys command. Use '-hh'
for more options and TYPE meanings.
"
        .into();
    }
    "Usage: lunlock persist [OPTIONS] [DEVICE]
  where the other OPTIONS are:
    --alloc-length=LEN|-l LEN    allocation length hex value (used with
                                 PR In only) (default: 8192 (2000 in hex))
    --device=DEVICE|-d DEVICE    supply DEVICE as an option rather than
                                 an argument
    --hex|-H                   output response in hex (for PR In commands)
    --maxlen=LEN|-m LEN        allocation length in decimal (def: 8192)
    --no-inquiry|-n            skip INQUIRY (default: do INQUIRY)
    --param-alltgpt|-Y         PR Out parameter 'ALL_TG_PT'
    --param-aptpl|-Z           PR Out parameter 'APTPL'
    --param-spec-i-pt          PR Out parameter 'SPEC_I_PT' (implied by
                               --transport-id except with --register-move)
    --readonly|-y              accepted for compatibility (no effect)
    --relative-target-port=RTPI|-Q RTPI    relative target port identifier
    --transport-id=TIDS|-X TIDS    TransportID: iqn.NAME, iqn.NAME,i,0xISID,
                                   hex bytes, file=NAME or - (stdin)
    --verbose|-v               show CDBs and parameter lists
    --version|-V               output version string

For the main options use '--help' or '-h' once.

PR Out TYPE field value meanings:
  0:    obsolete (was 'read shared' in SPC)
  1:    write exclusive
  2:    obsolete (was 'read exclusive')
  3:    exclusive access
  4:    obsolete (was 'shared access')
  5:    write exclusive, registrants only
  6:    exclusive access, registrants only
  7:    write exclusive, all registrants
  8:    exclusive access, all registrants
"
    .into()
}

/// `sg_persist`'s INQUIRY lines: vendor, product and revision exactly as the target padded them, then the
/// peripheral device type.
pub fn format_inquiry(standard: &[u8]) -> String {
    let field = |range: std::ops::Range<usize>| {
        String::from_utf8_lossy(standard.get(range).unwrap_or_default()).into_owned()
    };
    let device_type = standard.first().map_or(0x1F, |b| b & 0x1F);
    let type_name = match device_type {
        0x00 => "disk".to_string(),
        0x01 => "tape".to_string(),
        0x05 => "cd/dvd".to_string(),
        0x0C => "storage array controller".to_string(),
        0x0D => "enclosure services device".to_string(),
        0x1F => "unknown or no device type".to_string(),
        other => format!("{other:#x}"),
    };
    format!(
        "  {}  {}  {}\n  Peripheral device type: {type_name}\n",
        field(8..16),
        field(16..32),
        field(32..36)
    )
}

pub fn format_read_keys(keys: &ReadKeys) -> String {
    let mut text = format!("  PR generation={:#x}, ", keys.generation);
    match keys.keys.len() {
        0 => text.push_str("there are NO registered reservation keys\n"),
        1 => text.push_str("1 registered reservation key follows:\n"),
        n => text.push_str(&format!("{n} registered reservation keys follow:\n")),
    }
    for key in &keys.keys {
        text.push_str(&format!("    {key}\n"));
    }
    text
}

fn scope_and_type(scope: u8, pr_type: PrType) -> String {
    let scope = if scope == 0 {
        "scope: LU_SCOPE, ".to_string()
    } else {
        format!("scope: {scope} ")
    };
    format!("{scope} type: {}", pr_type.name())
}

pub fn format_read_reservation(answer: &ReadReservation) -> String {
    let mut text = format!("  PR generation={:#x}, ", answer.generation);
    match &answer.reservation {
        None => text.push_str("there is NO reservation held\n"),
        Some(reservation) => text.push_str(&format!(
            "Reservation follows:\n    Key={}\n    {}\n",
            reservation.key,
            scope_and_type(reservation.scope, reservation.pr_type)
        )),
    }
    text
}

pub fn format_capabilities(caps: &Capabilities) -> String {
    let bit = |value: bool| value as u8;
    let mut text = String::from("Report capabilities response:\n");
    text.push_str(&format!(
        "  Replace Lost Reservation Capable(RLR_C): {}\n",
        bit(caps.replace_lost_reservation_capable)
    ));
    text.push_str(&format!(
        "  Compatible Reservation Handling(CRH): {}\n",
        bit(caps.compatible_reservation_handling)
    ));
    text.push_str(&format!(
        "  Specify Initiator Ports Capable(SIP_C): {}\n",
        bit(caps.specify_initiator_ports_capable)
    ));
    text.push_str(&format!(
        "  All Target Ports Capable(ATP_C): {}\n",
        bit(caps.all_target_ports_capable)
    ));
    text.push_str(&format!(
        "  Persist Through Power Loss Capable(PTPL_C): {}\n",
        bit(caps.persist_through_power_loss_capable)
    ));
    text.push_str(&format!(
        "  Type Mask Valid(TMV): {}\n",
        bit(caps.type_mask_valid)
    ));
    text.push_str(&format!("  Allow Commands: {}\n", caps.allow_commands));
    text.push_str(&format!(
        "  Persist Through Power Loss Active(PTPL_A): {}\n",
        bit(caps.persist_through_power_loss_active)
    ));
    if caps.type_mask_valid {
        text.push_str("    Support indicated in Type mask:\n");
        // sg_persist's order: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX, EX_AC_AR.
        for pr_type in [7, 6, 5, 3, 1, 8] {
            let pr_type = PrType(pr_type);
            text.push_str(&format!(
                "      {}: {}\n",
                pr_type.name(),
                bit(caps.supports(pr_type))
            ));
        }
    }
    text
}

pub fn format_full_status(status: &FullStatus) -> String {
    let mut text = format!("  PR generation={:#x}\n", status.generation);
    if status.descriptors.is_empty() {
        text.push_str("  No full status descriptors\n");
    }
    for descriptor in &status.descriptors {
        text.push_str(&format!("    Key={}\n", descriptor.key));
        if descriptor.all_target_ports {
            text.push_str("      All target ports bit set\n");
        } else {
            text.push_str("      All target ports bit clear\n");
            text.push_str(&format!(
                "      Relative port address: {:#x}\n",
                descriptor.relative_target_port
            ));
        }
        if descriptor.reservation_holder {
            text.push_str("      << Reservation holder >>\n");
            text.push_str(&format!(
                "      {}\n",
                scope_and_type(descriptor.scope, descriptor.pr_type)
            ));
        } else {
            text.push_str("      not reservation holder\n");
        }
        if !descriptor.transport_id.as_bytes().is_empty() {
            for line in pr::describe_transport_id("      ", descriptor.transport_id.as_bytes()) {
                text.push_str(&line);
                text.push('\n');
            }
        }
    }
    text
}

/// sg3_utils' hex dump layout: offset, 16 bytes a line with an extra space after the eighth.
pub fn format_hex(bytes: &[u8]) -> String {
    let mut text = String::new();
    for (line, chunk) in bytes.chunks(16).enumerate() {
        text.push_str(&format!(" {:02x}    ", line * 16));
        for (index, byte) in chunk.iter().enumerate() {
            if index == 8 {
                text.push(' ');
            }
            text.push_str(&format!(" {byte:02x}"));
        }
        text.push('\n');
    }
    text
}

/// sg3_utils' bare hex layout (`-HHH`): 16 bytes a line, no offsets.
fn format_bare_hex(bytes: &[u8]) -> String {
    let mut text = String::new();
    for chunk in bytes.chunks(16) {
        let mut line = String::new();
        for (index, byte) in chunk.iter().enumerate() {
            if index == 8 {
                line.push(' ');
            }
            line.push_str(&format!("{byte:02x} "));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// sg_persist's `--hex` output: REPORT CAPABILITIES as 8 bytes; otherwise `-H` prints the generation and the
/// additional length then the list, `-HH` the whole answer, `-HHH` the whole answer without offsets.
fn format_prin_hex(action: PrInAction, hex: u8, data: &[u8]) -> Result<String, String> {
    if action == PrInAction::ReportCapabilities {
        return Ok(format_hex(&data[..data.len().min(8)]));
    }
    if data.len() < 8 {
        return Err(format!("answer of {} bytes has no header", data.len()));
    }
    let generation = u32::from_be_bytes(data[0..4].try_into().expect("4 bytes"));
    let additional_length = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    let end = data.len().min(8 + additional_length);
    Ok(match hex {
        1 => {
            let mut text = format!("  PR generation={generation:#x}, ");
            if 8 + additional_length > data.len() {
                text.push_str(&format!(
                    "Additional length too large={additional_length}, truncate\n"
                ));
            } else {
                text.push_str(&format!("Additional length={additional_length}\n"));
            }
            text + &format_hex(&data[8..end])
        }
        2 => format_hex(&data[..end]),
        _ => format_bare_hex(&data[..end]),
    })
}

/// The stdout text for a PERSISTENT RESERVE IN answer, or why it is malformed.
pub fn format_prin(action: PrInAction, hex: u8, data: &[u8]) -> Result<String, String> {
    if hex > 0 {
        return format_prin_hex(action, hex, data);
    }
    let text = match action {
        PrInAction::ReadKeys => ReadKeys::parse(data).map(|keys| format_read_keys(&keys)),
        PrInAction::ReadReservation => {
            ReadReservation::parse(data).map(|answer| format_read_reservation(&answer))
        }
        PrInAction::ReportCapabilities => {
            Capabilities::parse(data).map(|caps| format_capabilities(&caps))
        }
        PrInAction::ReadFullStatus => {
            FullStatus::parse(data).map(|status| format_full_status(&status))
        }
    };
    text.map_err(|e| e.to_string())
}

/// sg_persist's stderr lines for a failed PR command, after the decoded status/sense line.
pub fn failure_lines(action: Action, outcome: &ScsiOutcome) -> Vec<String> {
    let status = category(outcome);
    let (direction, name, noun) = match action {
        Action::In(action) => ("PR in", action.name(), "PERSISTENT RESERVE IN"),
        Action::Out(action) => ("PR out", action.name(), "PERSISTENT RESERVE OUT"),
    };
    let is_out = matches!(action, Action::Out(_));
    let detail = match status {
        exit::INVALID_OP => "command not supported".to_string(),
        exit::ILLEGAL_REQUEST if is_out => {
            "bad field in cdb (perhaps unsupported service action)".to_string()
        }
        exit::ILLEGAL_REQUEST | exit::INVALID_PARAM if !is_out => {
            "bad field in cdb or parameter list (perhaps unsupported service action)".to_string()
        }
        exit::INVALID_PARAM => "bad field in parameter list".to_string(),
        other => exit_text(other).to_string(),
    };
    vec![
        describe_failure(noun, outcome),
        format!("{direction} ({name}): {detail}"),
        format!("lunlock persist failed: {}", exit_text(status)),
    ]
}

/// Entry point from `main`: parses, runs, and maps the result to sg_persist's exit status.
pub fn main(args: &[String]) -> ExitCode {
    let (request, notices) = match parse_args(args) {
        Ok(Invocation::Help(text)) => {
            eprint!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            eprintln!("version: {VERSION}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Run { request, notices }) => (request, notices),
        Err(error) => {
            eprintln!("{}", error.message);
            if error.show_usage {
                eprint!("{}", usage(1));
            }
            return ExitCode::from(error.status);
        }
    };
    for notice in notices {
        eprintln!("{notice}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lunlock persist: {error}");
            return ExitCode::from(exit::OTHER);
        }
    };
    ExitCode::from(runtime.block_on(run(&request)))
}

async fn login(request: &Request) -> Result<(Session, u64), String> {
    let client = ClientOptions {
        initiator_name: request.initiator_name.clone(),
        header_digest: false,
        data_digest: false,
    };
    crate::client::login_as(&request.device, &client, request.isid).await
}

/// Runs the request and returns the exit status; everything is printed on the way.
async fn run(request: &Request) -> u8 {
    let (session, lun) = match login(request).await {
        Ok(connected) => connected,
        Err(error) => {
            eprintln!(
                "lunlock persist: error opening device: {}: {error}",
                request.device
            );
            return exit::FILE_ERROR;
        }
    };
    let status = run_commands(request, &session, lun).await;
    let _ = session.logout().await;
    status
}

async fn run_commands(request: &Request, session: &Session, lun: u64) -> u8 {
    if let Err(status) = absorb_unit_attentions(session, lun).await {
        return status;
    }
    if request.inquiry {
        let cdb = lunlock_initiator::commands::inquiry_cdb(false, 0, 36);
        match session.execute(lun, &cdb, DataDirection::Read(36)).await {
            Ok(outcome) if outcome.is_good() => print!("{}", format_inquiry(&outcome.data_in)),
            Ok(outcome) => {
                println!("lunlock persist: SCSI INQUIRY failed on {}", request.device);
                eprintln!("{}", describe_failure("INQUIRY", &outcome));
                return category(&outcome);
            }
            Err(error) => {
                println!(
                    "lunlock persist: SCSI INQUIRY failed on {}: {error}",
                    request.device
                );
                return exit::TRANSPORT_ERROR;
            }
        }
    }
    let (cdb, direction) = command(request);
    if request.verbose > 0 {
        let noun = match request.action {
            Action::In(_) => "Persistent reservation in",
            Action::Out(_) => "Persistent reservation out",
        };
        eprintln!("    {noun} cdb: {}", format_bare_hex(&cdb).trim_end());
        if let DataDirection::Write(list) = &direction {
            eprintln!("    {noun} parameters:\n{}", format_hex(list).trim_end());
        }
    }
    let outcome = match session.execute(lun, &cdb, direction).await {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("lunlock persist: {error}");
            eprintln!(
                "lunlock persist failed: {}",
                exit_text(exit::TRANSPORT_ERROR)
            );
            return exit::TRANSPORT_ERROR;
        }
    };
    // sg3_utils treats NO SENSE and RECOVERED ERROR as success.
    let status = category(&outcome);
    if !matches!(status, exit::OK | exit::NO_SENSE | exit::RECOVERED) {
        for line in failure_lines(request.action, &outcome) {
            eprintln!("{line}");
        }
        return status;
    }
    match request.action {
        Action::In(action) => match format_prin(action, request.hex, &outcome.data_in) {
            Ok(text) => {
                print!("{text}");
                exit::OK
            }
            Err(why) => {
                eprintln!("lunlock persist: {why}");
                exit::MALFORMED
            }
        },
        Action::Out(action) => {
            if request.verbose > 0 {
                eprintln!("PR out: command ({}) successful", action.name());
            }
            exit::OK
        }
    }
}

/// TEST UNIT READY until no unit attention is pending (see the module header).
async fn absorb_unit_attentions(session: &Session, lun: u64) -> Result<(), u8> {
    for _ in 0..MAX_UNIT_ATTENTIONS {
        let outcome = session
            .execute(lun, &[0u8; 6], DataDirection::None)
            .await
            .map_err(|error| {
                eprintln!("lunlock persist: TEST UNIT READY: {error}");
                exit::TRANSPORT_ERROR
            })?;
        if outcome.is_good() {
            return Ok(());
        }
        match outcome.sense_summary() {
            Some(sense) if sense.key == 0x6 => {
                if sense.asc != 0x29 {
                    eprintln!(
                        "lunlock persist: pending unit attention: {}",
                        unit_attention_text(sense.asc, sense.ascq)
                    );
                }
            }
            _ => {
                eprintln!("{}", describe_failure("TEST UNIT READY", &outcome));
                return Err(category(&outcome));
            }
        }
    }
    eprintln!("lunlock persist: unit attentions keep coming; giving up");
    Err(exit::UNIT_ATTENTION)
}

fn unit_attention_text(asc: u8, ascq: u8) -> String {
    match (asc, ascq) {
        (0x2A, 0x03) => "Reservations preempted".into(),
        (0x2A, 0x04) => "Reservations released".into(),
        (0x2A, 0x05) => "Registrations preempted".into(),
        _ => lunlock_scsi::sense::describe(asc, ascq)
            .map(str::to_string)
            .unwrap_or_else(|| format!("asc={asc:#04x}, ascq={ascq:#04x}")),
    }
}

/// The CDB and data for the request.
pub fn command(request: &Request) -> (Vec<u8>, DataDirection) {
    match request.action {
        Action::In(action) => (
            pr::prin_cdb(action, request.allocation_length),
            DataDirection::Read(request.allocation_length as u32),
        ),
        Action::Out(action) => {
            let list = parameter_list(request, action);
            (
                pr::prout_cdb(action, request.pr_type, list.len() as u32),
                DataDirection::Write(list),
            )
        }
    }
}

fn parameter_list(request: &Request, action: PrOutAction) -> Vec<u8> {
    if action == PrOutAction::RegisterAndMove {
        return RegisterAndMoveParameters {
            reservation_key: request.reservation_key,
            service_action_key: request.service_action_key,
            unregister: request.unregister,
            activate_persist_through_power_loss: request.aptpl,
            relative_target_port: request.relative_target_port,
            transport_id: request.transport_ids[0].clone(),
        }
        .encode();
    }
    ProutParameters {
        reservation_key: request.reservation_key,
        service_action_key: request.service_action_key,
        // sg_persist sets SPEC_I_PT whenever TransportIDs are given.
        specify_initiator_ports: request.specify_initiator_ports
            || !request.transport_ids.is_empty(),
        all_target_ports: request.all_target_ports,
        activate_persist_through_power_loss: request.aptpl,
        transport_ids: request.transport_ids.clone(),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lunlock_initiator::pr::{FullStatusDescriptor, Reservation};
    use lunlock_iscsi::message::Residual;

    const URL: &str = "iscsi://127.0.0.1/iqn.2026-11.io.lunlock:default/0";

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    fn run_request(line: &str) -> (Request, Vec<String>) {
        match parse_args(&args(line)) {
            Ok(Invocation::Run { request, notices }) => (request, notices),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &str) -> ArgError {
        match parse_args(&args(line)) {
            Err(error) => error,
            other => panic!("{line}: expected an error, got {other:?}"),
        }
    }

    fn outcome(status: u8, key: u8, asc: u8, ascq: u8) -> ScsiOutcome {
        let sense = if status == 2 {
            vec![
                0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0,
            ]
        } else {
            Vec::new()
        };
        ScsiOutcome {
            status,
            sense,
            data_in: Vec::new(),
            residual: Residual::None,
        }
    }

    #[test]
    fn the_seed_sequence_parses() {
        let (register, notices) =
            run_request(&format!("--out --register --param-sark=abc123 {URL}"));
        assert!(notices.is_empty());
        assert_eq!(register.action, Action::Out(PrOutAction::Register));
        assert_eq!(register.service_action_key, ReservationKey(0xabc123));
        assert_eq!(register.device, URL);
        let (reserve, _) = run_request(&format!(
            "--out --reserve --param-rk=abc123 --prout-type=3 {URL}"
        ));
        assert_eq!(reserve.action, Action::Out(PrOutAction::Reserve));
        assert_eq!(reserve.reservation_key, ReservationKey(0xabc123));
        assert_eq!(reserve.pr_type, PrType::EXCLUSIVE_ACCESS);
        let (read, _) = run_request(&format!("-r {URL}"));
        assert_eq!(read.action, Action::In(PrInAction::ReadReservation));
        let (default, notices) = run_request(URL);
        assert_eq!(default.action, Action::In(PrInAction::ReadKeys));
        assert!(notices[0].contains("No service action given"));
    }

    #[test]
    fn short_options_cluster_and_take_attached_or_separate_values() {
        let (request, _) = run_request(&format!("-oGS 0xABC -K 1 -Z -Y -n {URL}"));
        assert_eq!(request.action, Action::Out(PrOutAction::Register));
        assert_eq!(request.service_action_key, ReservationKey(0xabc));
        assert_eq!(request.reservation_key, ReservationKey(1));
        assert!(request.aptpl && request.all_target_ports && !request.inquiry);
        let (request, _) = run_request(&format!("{URL} -oRK5 -T5"));
        assert_eq!(request.action, Action::Out(PrOutAction::Reserve));
        assert_eq!(request.reservation_key, ReservationKey(5));
        assert_eq!(request.pr_type, PrType(5));
    }

    #[test]
    fn every_service_action_has_its_long_and_short_option() {
        for (long, short, action) in [
            ("--read-keys", "-k", Action::In(PrInAction::ReadKeys)),
            (
                "--read-reservation",
                "-r",
                Action::In(PrInAction::ReadReservation),
            ),
            (
                "--read-full-status",
                "-s",
                Action::In(PrInAction::ReadFullStatus),
            ),
            (
                "--report-capabilities",
                "-c",
                Action::In(PrInAction::ReportCapabilities),
            ),
            (
                "--out --register",
                "-o -G",
                Action::Out(PrOutAction::Register),
            ),
            (
                "--out --register-ignore",
                "-o -I",
                Action::Out(PrOutAction::RegisterAndIgnoreExistingKey),
            ),
            (
                "--out --reserve",
                "-o -R",
                Action::Out(PrOutAction::Reserve),
            ),
            (
                "--out --release",
                "-o -L",
                Action::Out(PrOutAction::Release),
            ),
            ("--out --clear", "-o -C", Action::Out(PrOutAction::Clear)),
            (
                "--out --preempt",
                "-o -P",
                Action::Out(PrOutAction::Preempt),
            ),
            (
                "--out --preempt-abort",
                "-o -A",
                Action::Out(PrOutAction::PreemptAndAbort),
            ),
        ] {
            for spelling in [long, short] {
                let (request, _) = run_request(&format!("{spelling} -T 1 {URL}"));
                assert_eq!(request.action, action, "{spelling}");
            }
        }
        let (request, _) = run_request(&format!("--in --read_full_status {URL}"));
        assert_eq!(request.action, Action::In(PrInAction::ReadFullStatus));
        let (request, _) = run_request(&format!("-o -M -X iqn.x,i,0x800000000001 -Q 2 -U {URL}"));
        assert_eq!(request.action, Action::Out(PrOutAction::RegisterAndMove));
        assert_eq!(request.relative_target_port, 2);
        assert!(request.unregister);
    }

    #[test]
    fn long_options_take_values_with_equals_or_separately_and_unique_prefixes() {
        let (request, _) = run_request(&format!(
            "--out --register --param_sark ffffffffffffffff --param-aptpl --param-alltgpt {URL}"
        ));
        assert_eq!(request.service_action_key, ReservationKey(u64::MAX));
        assert!(request.aptpl && request.all_target_ports);
        let (request, _) = run_request(&format!("--report {URL}"));
        assert_eq!(request.action, Action::In(PrInAction::ReportCapabilities));
        let (request, _) = run_request(&format!("--device={URL} --no-inq"));
        assert_eq!(request.device, URL);
        assert!(!request.inquiry);
    }

    #[test]
    fn nexus_options_choose_name_and_isid() {
        let (request, _) = run_request(&format!(
            "--initiator-name iqn.2026-11.io.test:node1 --isid=0x80000000ABCD {URL}"
        ));
        assert_eq!(request.initiator_name, "iqn.2026-11.io.test:node1");
        assert_eq!(request.isid, [0x80, 0, 0, 0, 0xab, 0xcd]);
        let (default, _) = run_request(&format!("--initiator-name iqn.a {URL}"));
        assert_eq!(default.isid, default_isid("iqn.a"));
        assert_eq!(
            error(&format!("--isid 0x1234 {URL}")).status,
            exit::SYNTAX_ERROR
        );
        assert_eq!(
            error(&format!("--isid zz0000000000 {URL}")).status,
            exit::SYNTAX_ERROR
        );
        let reserved_type = error(&format!("--isid 0xc00000000001 {URL}"));
        assert_eq!(reserved_type.status, exit::SYNTAX_ERROR);
        assert!(
            reserved_type
                .message
                .starts_with("bad argument to '--isid': ISID \"0xc00000000001\": the type"),
            "{}",
            reserved_type.message
        );
    }

    #[test]
    fn bad_arguments_get_sg_persist_messages_and_statuses() {
        for (line, message, status) in [
            ("--param-rk=xyz", "bad argument to '--param-rk'", exit::SYNTAX_ERROR),
            ("--param-sark 12345678901234567", "bad argument to '--param-sark'", exit::SYNTAX_ERROR),
            ("-T 10", "bad argument to '--prout-type'", exit::SYNTAX_ERROR),
            ("-Q 10000", "argument to '--relative-target-port' 0 to ffff inclusive", exit::SYNTAX_ERROR),
            ("--bogus", "lunlock persist: unrecognized option '--bogus'", exit::SYNTAX_ERROR),
            ("--re", "lunlock persist: option '--re' is ambiguous", exit::SYNTAX_ERROR),
            ("-q", "lunlock persist: invalid option -- 'q'", exit::SYNTAX_ERROR),
            ("--out=1", "lunlock persist: option '--out' doesn't allow an argument", exit::SYNTAX_ERROR),
            ("--in --out -k", "choose '--in' _or_ '--out' (not both)", exit::CONTRADICT),
            ("--out", ">> For Persistent Reserve Out one and only one appropriate\n>> service action must be chosen (e.g. '--register')", exit::CONTRADICT),
            ("--out -G -R", ">> For Persistent Reserve Out one and only one appropriate\n>> service action must be chosen (e.g. '--register')", exit::CONTRADICT),
            ("--register", ">> When a service action for Persistent Reserve Out is chosen the\n>> '--out' option must be given (as a safeguard)", exit::CONTRADICT),
            ("-k -r", "Too many service actions given; choose one only", exit::CONTRADICT),
            ("-o -G --unreg", "--unreg or --relative-target-port only useful with --register-move", exit::CONTRADICT),
            ("-o -M", "with --register-move one (and only one) --transport-id should be given", exit::CONTRADICT),
            ("-X 5,zz", "bad argument to '--transport-id': bad TransportID: item 2 (\"zz\") is not a hex byte", exit::SYNTAX_ERROR),
        ] {
            let error = error(&format!("{line} {URL}"));
            assert_eq!(error.message, message, "{line}");
            assert_eq!(error.status, status, "{line}");
        }
        let missing = error("-k");
        assert_eq!(missing.message, "No device name given");
        assert!(missing.show_usage);
        assert_eq!(
            error(&format!("{URL} extra")).message,
            "Unexpected extra argument: extra"
        );
        assert_eq!(
            error("--param-rk").message,
            "lunlock persist: option '--param-rk' requires an argument"
        );
    }

    #[test]
    fn help_and_version_need_no_device() {
        assert!(
            matches!(parse_args(&args("-h")), Ok(Invocation::Help(text)) if text.contains("--register|-G"))
        );
        assert!(
            matches!(parse_args(&args("-hh")), Ok(Invocation::Help(text)) if text.contains("exclusive access, registrants only"))
        );
        assert_eq!(parse_args(&args("-V")), Ok(Invocation::Version));
    }

    #[test]
    fn reserve_without_type_warns_like_sg_persist() {
        let (_, notices) = run_request(&format!("-o -R -K 1 {URL}"));
        assert_eq!(
            notices,
            vec!["warning>>> --prout-type probably needs to be given"]
        );
    }

    #[test]
    fn commands_encode_cdb_and_parameter_list() {
        let (request, _) = run_request(&format!("-o -I -S abc -Z {URL}"));
        let (cdb, direction) = command(&request);
        assert_eq!(cdb, [0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0]);
        let DataDirection::Write(list) = direction else {
            panic!("PR OUT sends data");
        };
        assert_eq!(list[8..16], 0xabcu64.to_be_bytes());
        assert_eq!(list[20], 0x01);

        let (request, _) = run_request(&format!(
            "-o -G -S 1 -X iqn.2026-11.io.test:b -X iqn.2026-11.io.test:c,i,0x800000000001 {URL}"
        ));
        let (cdb, DataDirection::Write(list)) = command(&request) else {
            panic!("PR OUT sends data");
        };
        assert_eq!(list[20], 0x08, "TransportIDs imply SPEC_I_PT");
        assert_eq!(
            u32::from_be_bytes(cdb[5..9].try_into().unwrap()) as usize,
            list.len()
        );
        let ids = u32::from_be_bytes(list[24..28].try_into().unwrap()) as usize;
        assert_eq!(list.len(), 28 + ids);
        assert_eq!(list[28], 0x05);

        let (request, _) = run_request(&format!(
            "-o -M -K 1 -S 2 -T 3 -Q 1 -U -X iqn.2026-11.io.test:b,i,0x800000000001 {URL}"
        ));
        let (cdb, DataDirection::Write(list)) = command(&request) else {
            panic!("PR OUT sends data");
        };
        assert_eq!(cdb[..3], [0x5F, 0x07, 0x03]);
        assert_eq!(list[17], 0x02);
        assert_eq!(list[18..20], [0, 1]);
        assert_eq!(list[24], 0x45);
        // A name without ",i,0x" is sent as sg_persist sends it: FORMAT CODE 00b, the name alone (SPC-4 7.6.4.6).
        let (request, _) = run_request(&format!(
            "-o -M -K 1 -S 2 -T 3 -Q 1 -X iqn.2026-11.io.test:b {URL}"
        ));
        let (_, DataDirection::Write(list)) = command(&request) else {
            panic!("PR OUT sends data");
        };
        assert_eq!(list[24], 0x05);
        assert_eq!(&list[28..50], b"iqn.2026-11.io.test:b\0");

        let (request, _) = run_request(&format!("-s -l 100 {URL}"));
        let (cdb, direction) = command(&request);
        assert_eq!(cdb, [0x5E, 0x03, 0, 0, 0, 0, 0, 0x01, 0x00, 0]);
        assert!(matches!(direction, DataDirection::Read(256)));
        let (request, _) = run_request(&format!("-k -m 100 {URL}"));
        assert_eq!(request.allocation_length, 100);
        assert_eq!(error(&format!("-m 9000 {URL}")).status, exit::SYNTAX_ERROR);
    }

    #[test]
    fn read_keys_output_matches_sg_persist() {
        let keys = ReadKeys {
            generation: 6,
            additional_length: 16,
            keys: vec![ReservationKey(0xabc123), ReservationKey(0x1)],
        };
        assert_eq!(
            format_read_keys(&keys),
            "  PR generation=0x6, 2 registered reservation keys follow:\n    0xabc123\n    0x1\n"
        );
        let one = ReadKeys {
            generation: 1,
            additional_length: 8,
            keys: vec![ReservationKey(0xabc123)],
        };
        assert_eq!(
            format_read_keys(&one),
            "  PR generation=0x1, 1 registered reservation key follows:\n    0xabc123\n"
        );
        let none = ReadKeys {
            generation: 0,
            additional_length: 0,
            keys: Vec::new(),
        };
        assert_eq!(
            format_read_keys(&none),
            "  PR generation=0x0, there are NO registered reservation keys\n"
        );
    }

    #[test]
    fn read_reservation_output_matches_sg_persist() {
        let held = ReadReservation {
            generation: 2,
            reservation: Some(Reservation {
                key: ReservationKey(0xabc123),
                scope: 0,
                pr_type: PrType::EXCLUSIVE_ACCESS,
            }),
        };
        assert_eq!(
            format_read_reservation(&held),
            "  PR generation=0x2, Reservation follows:\n    Key=0xabc123\n    scope: LU_SCOPE,  type: Exclusive Access\n"
        );
        let none = ReadReservation {
            generation: 3,
            reservation: None,
        };
        assert_eq!(
            format_read_reservation(&none),
            "  PR generation=0x3, there is NO reservation held\n"
        );
    }

    #[test]
    fn capabilities_output_matches_sg_persist() {
        let caps = Capabilities::parse(&[0, 8, 0x1D, 0x91, 0xEA, 0x01, 0, 0]).unwrap();
        assert_eq!(
            format_capabilities(&caps),
            "Report capabilities response:
  Replace Lost Reservation Capable(RLR_C): 0
  Compatible Reservation Handling(CRH): 1
  Specify Initiator Ports Capable(SIP_C): 1
  All Target Ports Capable(ATP_C): 1
  Persist Through Power Loss Capable(PTPL_C): 1
  Type Mask Valid(TMV): 1
  Allow Commands: 1
  Persist Through Power Loss Active(PTPL_A): 1
    Support indicated in Type mask:
      Write Exclusive, all registrants: 1
      Exclusive Access, registrants only: 1
      Write Exclusive, registrants only: 1
      Exclusive Access: 1
      Write Exclusive: 1
      Exclusive Access, all registrants: 1
"
        );
    }

    #[test]
    fn full_status_output_matches_sg_persist() {
        let status = FullStatus {
            generation: 4,
            additional_length: 0,
            descriptors: vec![
                FullStatusDescriptor {
                    key: ReservationKey(0xa),
                    all_target_ports: false,
                    reservation_holder: true,
                    scope: 0,
                    pr_type: PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                    relative_target_port: 1,
                    transport_id: TransportId::iscsi("iqn.x", Some([0x80, 0, 0, 1, 0, 0])).unwrap(),
                },
                FullStatusDescriptor {
                    key: ReservationKey(0xb),
                    all_target_ports: true,
                    reservation_holder: false,
                    scope: 0,
                    pr_type: PrType(0),
                    relative_target_port: 0,
                    transport_id: TransportId::iscsi("iqn.y", None).unwrap(),
                },
            ],
        };
        assert_eq!(
            format_full_status(&status),
            "  PR generation=0x4
    Key=0xa
      All target ports bit clear
      Relative port address: 0x1
      << Reservation holder >>
      scope: LU_SCOPE,  type: Write Exclusive, registrants only
      Transport Id of initiator:
        iSCSI world wide unique port id: iqn.x,i,0x800000010000
    Key=0xb
      All target ports bit set
      not reservation holder
      Transport Id of initiator:
        iSCSI name: iqn.y
"
        );
        let empty = FullStatus {
            generation: 0,
            additional_length: 0,
            descriptors: Vec::new(),
        };
        assert_eq!(
            format_full_status(&empty),
            "  PR generation=0x0\n  No full status descriptors\n"
        );
    }

    #[test]
    fn inquiry_line_keeps_the_targets_padding() {
        let mut data = vec![0u8; 36];
        data[8..16].copy_from_slice(b"LUNLOCK ");
        data[16..32].copy_from_slice(b"lunlock LUN     ");
        data[32..36].copy_from_slice(b"0001");
        assert_eq!(
            format_inquiry(&data),
            "  LUNLOCK   lunlock LUN       0001\n  Peripheral device type: disk\n"
        );
    }

    #[test]
    fn malformed_answers_are_reported() {
        assert!(format_prin(PrInAction::ReadKeys, 0, &[0, 0]).is_err());
        assert!(format_prin(PrInAction::ReportCapabilities, 0, &[0, 9, 0, 0, 0, 0, 0, 0]).is_err());
        let mut answer = vec![0, 0, 0, 1, 0, 0, 0, 16];
        answer.extend(1..=16u8);
        assert_eq!(
            format_prin(PrInAction::ReadKeys, 1, &answer).unwrap(),
            "  PR generation=0x1, Additional length=16\n 00     01 02 03 04 05 06 07 08  09 0a 0b 0c 0d 0e 0f 10\n"
        );
        assert_eq!(
            format_prin(PrInAction::ReadKeys, 2, &answer[..12]).unwrap(),
            " 00     00 00 00 01 00 00 00 10  01 02 03 04\n"
        );
        assert_eq!(
            format_prin(PrInAction::ReadKeys, 3, &answer[..10]).unwrap(),
            "00 00 00 01 00 00 00 10  01 02\n"
        );
        assert!(format_prin(PrInAction::ReadKeys, 1, &answer[..12])
            .unwrap()
            .starts_with("  PR generation=0x1, Additional length too large=16, truncate\n"));
    }

    #[test]
    fn exit_statuses_follow_sg_lib_categories() {
        for (status, key, asc, ascq, expected) in [
            (0x18, 0, 0, 0, exit::RESERVATION_CONFLICT),
            (0x08, 0, 0, 0, exit::BUSY),
            (0x28, 0, 0, 0, exit::TASK_SET_FULL),
            (0x40, 0, 0, 0, exit::TASK_ABORTED),
            (0x02, 0x2, 0x04, 0x00, exit::NOT_READY),
            (0x02, 0x2, 0x04, 0x0B, exit::STANDBY),
            (0x02, 0x3, 0x11, 0x00, exit::MEDIUM_HARD),
            (0x02, 0x4, 0x44, 0x00, exit::MEDIUM_HARD),
            (0x02, 0x5, 0x24, 0x00, exit::ILLEGAL_REQUEST),
            (0x02, 0x5, 0x20, 0x00, exit::INVALID_OP),
            (0x02, 0x5, 0x26, 0x00, exit::INVALID_PARAM),
            (0x02, 0x5, 0x26, 0x04, exit::ILLEGAL_REQUEST),
            (0x02, 0x6, 0x2A, 0x05, exit::UNIT_ATTENTION),
            (0x02, 0x7, 0x27, 0x00, exit::DATA_PROTECT),
            (0x02, 0xB, 0x47, 0x00, exit::ABORTED_COMMAND),
            (0x02, 0xE, 0x1D, 0x00, exit::MISCOMPARE),
        ] {
            assert_eq!(
                category(&outcome(status, key, asc, ascq)),
                expected,
                "status {status:#x} sense {key:x}/{asc:02x}/{ascq:02x}"
            );
        }
        assert_eq!(category(&outcome(0x02, 0, 0, 0)), exit::NO_SENSE);
        let mut no_sense = outcome(0x02, 0, 0, 0);
        no_sense.sense.clear();
        assert_eq!(category(&no_sense), exit::SENSE);
    }

    #[test]
    fn failures_print_decoded_and_sg_persist_lines() {
        assert_eq!(
            failure_lines(Action::Out(PrOutAction::Reserve), &outcome(0x18, 0, 0, 0)),
            vec![
                "PERSISTENT RESERVE OUT failed: Reservation Conflict (status 0x18)",
                "PR out (Reserve): Reservation conflict",
                "lunlock persist failed: Reservation conflict",
            ]
        );
        assert_eq!(
            failure_lines(
                Action::Out(PrOutAction::Register),
                &outcome(0x02, 0x5, 0x26, 0x00)
            ),
            vec![
                "PERSISTENT RESERVE OUT failed: Check Condition: Illegal request, Invalid field in parameter list",
                "PR out (Register): bad field in parameter list",
                "lunlock persist failed: Illegal request, Invalid field in parameter list",
            ]
        );
        assert_eq!(
            failure_lines(
                Action::In(PrInAction::ReadKeys),
                &outcome(0x02, 0x6, 0x29, 0x00)
            )[1],
            "PR in (Read keys): Unit attention"
        );
    }
}
