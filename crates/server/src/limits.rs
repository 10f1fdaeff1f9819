//! Daemon-wide limits (`[limits]` in the config file, docs/config.md): everything a client can make the target
//! hold is bounded by a named key with a safe default, and a client over a limit gets the protocol's answer (a
//! login reject, TASK SET FULL, INSUFFICIENT REGISTRATION RESOURCES), never unbounded memory.

use lunlock_iscsi::session::MAX_TASK_DATA_BYTES;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// The limits in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Normal sessions logged in to one target at once.
    pub sessions_per_target: usize,
    /// Normal sessions one initiator name holds at once, over every target.
    pub sessions_per_initiator: usize,
    /// The command window each session is granted (MaxCmdSN - ExpCmdSN + 1, RFC 7143 3.2.2.1).
    pub commands_per_session: u32,
    /// Our MaxRecvDataSegmentLength declaration (RFC 7143 13.12).
    pub max_recv_data_segment_length: u32,
    /// The most we accept for MaxBurstLength (13.13) and FirstBurstLength (13.14), and MaxOutstandingR2T (13.17).
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    /// Registrations each logical unit keeps (SPC-4 5.13.7).
    pub registrations_per_lun: usize,
    /// A connection that has not finished its login by then is closed.
    pub login_timeout: Duration,
    /// An idle full-feature connection is pinged this often (NOP-In, RFC 7143 11.19)...
    pub nop_in_interval: Duration,
    /// ...and closed after this many pings in a row go unanswered.
    pub nop_in_misses: u32,
    /// Write data reserved at once over every session (see `lunlock_iscsi::budget`).
    pub write_buffer_bytes: u64,
    /// Write data one session may have reserved at once.
    pub write_buffer_bytes_per_session: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // As many as the default connection limit. One initiator name may hold half: `lunlock bench` runs two
            // loads of up to 1,024 sessions under one name, each session its own ISID; a real host holds one
            // session per path and target.
            sessions_per_target: 4096,
            sessions_per_initiator: 2048,
            commands_per_session: 128,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 8,
            registrations_per_lun: lunlock_scsi::pr::MAX_REGISTRATIONS,
            login_timeout: Duration::from_secs(15),
            nop_in_interval: Duration::from_secs(5),
            // 80 s at the default interval. RFC 7143 sets no value. An initiator driven by one thread answers
            // only when it next services its socket: libiscsi's synchronous API does not while its caller sleeps,
            // and libiscsi's own Sanitize.Reset sleeps 60 s between TEST UNIT READYs. Closing such a connection
            // sooner makes it reconnect into a new nexus, whose unit attention starts the wait over, forever. A
            // host that is gone is found sooner anyway: its kernel resets the connection, or TCP gives up.
            nop_in_misses: 16,
            write_buffer_bytes: 1 << 30,
            write_buffer_bytes_per_session: 256 << 20,
        }
    }
}

/// The largest data segment, burst and first burst RFC 7143 allows (13.12-13.14: 2^24 - 1).
const MAX_SEGMENT_OR_BURST: u64 = (1 << 24) - 1;

/// `[limits]` as written; every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileLimits {
    sessions_per_target: Option<Spanned<u64>>,
    sessions_per_initiator: Option<Spanned<u64>>,
    commands_per_session: Option<Spanned<u64>>,
    max_recv_data_segment_length: Option<Spanned<u64>>,
    max_burst_length: Option<Spanned<u64>>,
    first_burst_length: Option<Spanned<u64>>,
    max_outstanding_r2t: Option<Spanned<u64>>,
    registrations_per_lun: Option<Spanned<u64>>,
    login_timeout_seconds: Option<Spanned<u64>>,
    nop_in_interval_seconds: Option<Spanned<u64>>,
    nop_in_misses: Option<Spanned<u64>>,
    write_buffer_bytes: Option<Spanned<String>>,
    write_buffer_bytes_per_session: Option<Spanned<String>>,
}

/// A limit that is out of range: the byte offset of its value, and the message naming the key.
#[derive(Debug)]
pub(crate) struct LimitError {
    pub offset: usize,
    pub message: String,
}

/// `n` from the key at `offset`, if within `min..=max`.
fn within(key: &str, n: u64, offset: usize, min: u64, max: u64) -> Result<u64, LimitError> {
    if (min..=max).contains(&n) {
        return Ok(n);
    }
    Err(LimitError {
        offset,
        message: format!("key `{key}`: {n} is not between {min} and {max}"),
    })
}

/// Reads one numeric key within `min..=max`, or keeps `default`.
fn number(
    key: &str,
    value: &Option<Spanned<u64>>,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, LimitError> {
    match value {
        Some(value) => within(key, *value.get_ref(), value.span().start, min, max),
        None => Ok(default),
    }
}

/// Reads one size key ("1GiB", "256M", "1048576") within `min..=max` bytes, or keeps `default`.
fn size(
    key: &str,
    value: &Option<Spanned<String>>,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, LimitError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let offset = value.span().start;
    let n = crate::config::parse_size(value.get_ref()).map_err(|message| LimitError {
        offset,
        message: format!("key `{key}`: {message}"),
    })?;
    within(key, n, offset, min, max)
}

impl FileLimits {
    pub(crate) fn resolve(&self) -> Result<Limits, LimitError> {
        let d = Limits::default();
        let max_burst_length = number(
            "max_burst_length",
            &self.max_burst_length,
            512,
            MAX_SEGMENT_OR_BURST,
            d.max_burst_length.into(),
        )?;
        let write_buffer_bytes = size(
            "write_buffer_bytes",
            &self.write_buffer_bytes,
            MAX_TASK_DATA_BYTES.into(),
            1 << 40,
            d.write_buffer_bytes,
        )?;
        Ok(Limits {
            sessions_per_target: number(
                "sessions_per_target",
                &self.sessions_per_target,
                1,
                65_536,
                d.sessions_per_target as u64,
            )? as usize,
            sessions_per_initiator: number(
                "sessions_per_initiator",
                &self.sessions_per_initiator,
                1,
                65_536,
                d.sessions_per_initiator as u64,
            )? as usize,
            commands_per_session: number(
                "commands_per_session",
                &self.commands_per_session,
                1,
                4096,
                d.commands_per_session.into(),
            )? as u32,
            max_recv_data_segment_length: number(
                "max_recv_data_segment_length",
                &self.max_recv_data_segment_length,
                512,
                MAX_SEGMENT_OR_BURST,
                d.max_recv_data_segment_length.into(),
            )? as u32,
            max_burst_length: max_burst_length as u32,
            // FirstBurstLength may not exceed MaxBurstLength (RFC 7143 13.14).
            first_burst_length: number(
                "first_burst_length",
                &self.first_burst_length,
                512,
                max_burst_length,
                u64::from(d.first_burst_length).min(max_burst_length),
            )? as u32,
            max_outstanding_r2t: number(
                "max_outstanding_r2t",
                &self.max_outstanding_r2t,
                1,
                65_535,
                d.max_outstanding_r2t.into(),
            )? as u32,
            registrations_per_lun: number(
                "registrations_per_lun",
                &self.registrations_per_lun,
                1,
                65_536,
                d.registrations_per_lun as u64,
            )? as usize,
            login_timeout: Duration::from_secs(number(
                "login_timeout_seconds",
                &self.login_timeout_seconds,
                1,
                3600,
                d.login_timeout.as_secs(),
            )?),
            nop_in_interval: Duration::from_secs(number(
                "nop_in_interval_seconds",
                &self.nop_in_interval_seconds,
                1,
                3600,
                d.nop_in_interval.as_secs(),
            )?),
            nop_in_misses: number(
                "nop_in_misses",
                &self.nop_in_misses,
                1,
                1000,
                d.nop_in_misses.into(),
            )? as u32,
            write_buffer_bytes,
            // A session's share may not exceed the whole, and must fit one largest write.
            write_buffer_bytes_per_session: size(
                "write_buffer_bytes_per_session",
                &self.write_buffer_bytes_per_session,
                MAX_TASK_DATA_BYTES.into(),
                write_buffer_bytes,
                d.write_buffer_bytes_per_session.min(write_buffer_bytes),
            )?,
        })
    }
}
