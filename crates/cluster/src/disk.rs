//! What the lock manager needs from a disk and a clock. The lock manager is generic over both, so it runs the same
//! against a real target over iSCSI ([`crate::iscsi_disk::IscsiDisk`]) and under the deterministic simulator.

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// How one COMPARE AND WRITE (SBC-4 5.3) ended, as far as the host can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CawOutcome {
    /// GOOD: the new image is on the disk.
    Written,
    /// CHECK CONDITION, MISCOMPARE (0E/1D/00): the block did not hold the expected image. The offset of the first
    /// differing byte comes from the INFORMATION field when the target sets VALID.
    Miscompare { offset: Option<u64> },
    /// The write may or may not have happened: timeout, connection loss, task aborted, BUSY, TASK SET FULL, a unit
    /// attention. Only reading the block back can tell.
    Unknown(Cause),
    /// RESERVATION CONFLICT: this host has been fenced (its PR key was preempted). Nothing was written.
    Fenced,
    /// A definite error that retrying cannot fix (ILLEGAL REQUEST, MEDIUM ERROR, ...). Nothing was written.
    Failed(Cause),
}

/// What a host saw of a command that did not succeed: the target's answer, or what happened to the command on
/// the way.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Cause {
    /// CHECK CONDITION with this sense (SPC-4 4.5).
    #[error("{} ({key:02x}/{asc:02x}/{ascq:02x})", lunlock_initiator::status::additional_sense_text(*asc, *ascq))]
    Sense { key: u8, asc: u8, ascq: u8 },
    /// CHECK CONDITION without sense data.
    #[error("CHECK CONDITION without sense data")]
    NoSense,
    /// Another status than GOOD, CHECK CONDITION or RESERVATION CONFLICT (SAM-5 5.3): BUSY, TASK SET FULL, ACA
    /// ACTIVE, TASK ABORTED.
    #[error("{}", lunlock_initiator::status::status_name(*.0))]
    Status(u8),
    /// No answer within the timeout; then the command was aborted (ABORT TASK), with this result.
    #[error("timeout after {} ms ({abort})", .after.as_millis())]
    Timeout {
        after: std::time::Duration,
        abort: AbortResult,
    },
    /// The session failed the command: connection loss, a protocol error, a refused login.
    #[error("{0}")]
    Transport(std::sync::Arc<lunlock_initiator::InitiatorError>),
    /// The answer arrived but its data is unusable.
    #[error("{what}: {reason}")]
    BadAnswer { what: &'static str, reason: String },
    /// A request this disk does not serve.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A simulated fault (the simulator's and the memory disk's lost replies).
    #[error("{0}")]
    Simulated(&'static str),
}

/// How the ABORT TASK after a timeout ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbortResult {
    /// The target answered it with this task management response (RFC 7143 11.6.1).
    Answered(String),
    Failed(String),
    TimedOut,
}

impl fmt::Display for AbortResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortResult::Answered(response) => write!(f, "ABORT TASK answered {response}"),
            AbortResult::Failed(why) => write!(f, "ABORT TASK failed: {why}"),
            AbortResult::TimedOut => write!(f, "ABORT TASK timed out"),
        }
    }
}

/// Causes compare by what they say: the transport's error (an io::Error) has no equality of its own.
impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// A read or plain write that did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// Possibly transient: timeout, connection loss, unit attention, BUSY.
    #[error("{command}: {cause} (transient)")]
    Transient { command: &'static str, cause: Cause },
    /// RESERVATION CONFLICT.
    #[error("reservation conflict: this host has been fenced")]
    Fenced,
    #[error("{command}: {cause}")]
    Failed { command: &'static str, cause: Cause },
    /// The session to the disk could not be opened.
    #[error("{0}")]
    Login(Box<LoginFailure>),
}

/// A login that failed: to where, as whom, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("login to {address} as {initiator} ISID {isid}: {cause}")]
pub struct LoginFailure {
    pub address: std::net::SocketAddr,
    pub initiator: String,
    pub isid: String,
    pub cause: Cause,
}

/// One logical unit, addressed in blocks. Every call is independent, so implementations may be shared by tasks.
pub trait Disk: Send + Sync {
    fn block_size(&self) -> u32;

    /// Reads `count` consecutive blocks.
    fn read(
        &self,
        lba: u64,
        count: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, DiskError>> + Send;

    /// Writes whole blocks with FUA; used only by `format`, which owns the disk at that moment.
    fn write(
        &self,
        lba: u64,
        data: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// COMPARE AND WRITE of one block with FUA: `expected` and `new` are each one block.
    fn compare_and_write(
        &self,
        lba: u64,
        expected: &[u8],
        new: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = CawOutcome> + Send;

    /// PERSISTENT RESERVE OUT, PREEMPT AND ABORT (SPC-4 5.12.11.2.3) of `victim_key` by this host's `own_key`,
    /// keeping a WRITE EXCLUSIVE - REGISTRANTS ONLY reservation: removes the victim's registration, aborts its
    /// tasks, and makes its later writes fail with RESERVATION CONFLICT.
    fn preempt_and_abort(
        &self,
        own_key: u64,
        victim_key: u64,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// The registered PR keys (PERSISTENT RESERVE IN, READ KEYS, SPC-4 6.16.2).
    fn read_keys(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u64>, DiskError>> + Send;
}

/// A monotonic clock and a way to wait. Time is measured from an arbitrary origin and never compared across hosts.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The real clock: tokio's monotonic `Instant` and timer.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}
