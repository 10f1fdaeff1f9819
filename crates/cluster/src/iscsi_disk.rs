//! [`Disk`] over an iSCSI session: READ(16), WRITE(16) with FUA, COMPARE AND WRITE with FUA, and PERSISTENT
//! RESERVE OUT. Every answer is sorted into "definite" and "unknown" as the resolver needs: only GOOD,
//! MISCOMPARE, RESERVATION CONFLICT and definite CHECK CONDITIONs are definite.

use crate::disk::{AbortResult, Cause, CawOutcome, Disk, DiskError, LoginFailure};
use lunlock_initiator::pr::{basic_prout, prin_cdb, PrInAction, PrOutAction, PrType, ReadKeys};
use lunlock_initiator::{DataDirection, InitiatorError, ScsiOutcome, Session};
use lunlock_scsi::cdb::Command;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const STATUS_GOOD: u8 = 0x00;
const STATUS_CHECK_CONDITION: u8 = 0x02;
const STATUS_RESERVATION_CONFLICT: u8 = 0x18;
const TMF_ABORT_TASK: u8 = 1;
/// Sense keys that say nothing was done and nothing will be: ILLEGAL REQUEST, MEDIUM ERROR, HARDWARE ERROR,
/// DATA PROTECT (SPC-4 Table 47). Others (UNIT ATTENTION, NOT READY, ABORTED COMMAND) leave the outcome open.
const DEFINITE_SENSE_KEYS: [u8; 4] = [0x05, 0x03, 0x04, 0x07];

/// One LUN through one session.
#[derive(Clone)]
pub struct IscsiDisk {
    session: Arc<Session>,
    lun: u64,
    block_size: u32,
}

impl IscsiDisk {
    pub fn new(session: Arc<Session>, lun: u64, block_size: u32) -> IscsiDisk {
        IscsiDisk {
            session,
            lun,
            block_size,
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn lun(&self) -> u64 {
        self.lun
    }

    /// Runs a command with its own timeout. On timeout the task is aborted (ABORT TASK, RFC 7143 11.5.1), as ESXi
    /// does with a slow ATS, and the outcome stays unknown.
    async fn run(
        &self,
        cdb: &[u8],
        direction: DataDirection,
        timeout: Duration,
    ) -> Result<ScsiOutcome, Cause> {
        let task = self
            .session
            .submit(self.lun, cdb, direction)
            .await
            .map_err(transport)?;
        let (itt, cmd_sn) = (task.itt, task.cmd_sn);
        match tokio::time::timeout(timeout, task.wait()).await {
            Ok(result) => result.map_err(transport),
            Err(_) => {
                let abort =
                    self.session
                        .task_management(TMF_ABORT_TASK, self.lun, Some((itt, cmd_sn)));
                let abort = match tokio::time::timeout(timeout, abort).await {
                    Ok(Ok(code)) => AbortResult::Answered(format!(
                        "{:?}",
                        lunlock_initiator::TmfResponse::from_code(code)
                    )),
                    Ok(Err(e)) => AbortResult::Failed(e.to_string()),
                    Err(_) => AbortResult::TimedOut,
                };
                Err(Cause::Timeout {
                    after: timeout,
                    abort,
                })
            }
        }
    }

    async fn run_checked(
        &self,
        cdb: &[u8],
        direction: DataDirection,
        timeout: Duration,
    ) -> Result<ScsiOutcome, DiskError> {
        let outcome =
            self.run(cdb, direction, timeout)
                .await
                .map_err(|cause| DiskError::Transient {
                    command: command_name(cdb),
                    cause,
                })?;
        classify(&outcome).disk_result(command_name(cdb))?;
        Ok(outcome)
    }

    /// PERSISTENT RESERVE OUT with the basic parameter list.
    pub async fn prout(
        &self,
        action: PrOutAction,
        pr_type: PrType,
        key: u64,
        service_action_key: u64,
        aptpl: bool,
        timeout: Duration,
    ) -> Result<(), DiskError> {
        let (cdb, parameters) = basic_prout(action, pr_type, key, service_action_key, aptpl);
        self.run_checked(&cdb, DataDirection::Write(parameters), timeout)
            .await
            .map(|_| ())
    }
}

/// Where and as whom to log in.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: std::net::SocketAddr,
    pub target_name: String,
    pub lun: u64,
    /// CHAP credentials for the login, from the URL.
    pub chap: Option<lunlock_initiator::ChapCredentials>,
}

/// Logs in as `initiator_name` with `isid` (the pair is the I_T nexus that registrations and reservations belong
/// to; see `lunlock_initiator::isid`), reports pending unit attentions away (a new I_T nexus has one) and learns the
/// block size with READ CAPACITY.
pub async fn connect(
    endpoint: &Endpoint,
    initiator_name: &str,
    isid: [u8; 6],
) -> Result<IscsiDisk, DiskError> {
    let mut options = lunlock_initiator::LoginOptions::new(initiator_name, &endpoint.target_name);
    options.chap = endpoint.chap.clone();
    options.isid = isid;
    let session = Session::login(endpoint.address, &options)
        .await
        .map_err(|e| {
            DiskError::Login(Box::new(LoginFailure {
                address: endpoint.address,
                initiator: initiator_name.to_string(),
                isid: lunlock_initiator::isid::isid_hex(&isid),
                cause: transport(e),
            }))
        })?;
    // SAM-5 5.14: each TEST UNIT READY reports one pending unit attention; a handful clears them all.
    for _ in 0..4 {
        if session.test_unit_ready(endpoint.lun).await.is_ok() {
            break;
        }
    }
    let capacity = session
        .read_capacity(endpoint.lun)
        .await
        .map_err(|e| DiskError::Failed {
            command: "READ CAPACITY",
            cause: transport(e),
        })?;
    Ok(IscsiDisk::new(
        Arc::new(session),
        endpoint.lun,
        capacity.block_size,
    ))
}

impl IscsiDisk {
    /// Registers `key` for this I_T nexus whatever was registered before (REGISTER AND IGNORE EXISTING KEY), with
    /// APTPL so fencing survives a target restart, and takes the WRITE EXCLUSIVE - REGISTRANTS ONLY reservation if
    /// no one holds one: then only registered hosts can write, and preempting a host's key fences it (the fence_scsi
    /// model).
    pub async fn join_fencing(&self, key: u64, timeout: Duration) -> Result<(), DiskError> {
        self.prout(
            PrOutAction::RegisterAndIgnoreExistingKey,
            PrType(0),
            0,
            key,
            true,
            timeout,
        )
        .await?;
        match self
            .prout(
                PrOutAction::Reserve,
                PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                key,
                0,
                false,
                timeout,
            )
            .await
        {
            // Another registrant holds the reservation already: every registrant may write under it.
            Ok(()) | Err(DiskError::Fenced) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Removes every registration and the reservation (PERSISTENT RESERVE OUT CLEAR, SPC-4 5.12.11.5), after
    /// registering `key` to be allowed to.
    pub async fn clear_fencing(&self, key: u64, timeout: Duration) -> Result<(), DiskError> {
        self.prout(
            PrOutAction::RegisterAndIgnoreExistingKey,
            PrType(0),
            0,
            key,
            false,
            timeout,
        )
        .await?;
        self.prout(PrOutAction::Clear, PrType(0), key, 0, false, timeout)
            .await
    }
}

fn transport(e: InitiatorError) -> Cause {
    Cause::Transport(Arc::new(e))
}

fn command_name(cdb: &[u8]) -> &'static str {
    lunlock_initiator::status::command_name(cdb)
}

/// A SCSI answer as the lock manager sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    Good,
    Fenced,
    Miscompare(Option<u64>, Cause),
    /// Nothing was done and retrying cannot help.
    Definite(Cause),
    /// The command may or may not have taken effect.
    Open(Cause),
}

impl Class {
    /// The COMPARE AND WRITE outcome this answer means.
    pub fn caw_outcome(self) -> CawOutcome {
        match self {
            Class::Good => CawOutcome::Written,
            Class::Fenced => CawOutcome::Fenced,
            Class::Miscompare(offset, _) => CawOutcome::Miscompare { offset },
            Class::Definite(why) => CawOutcome::Failed(why),
            Class::Open(why) => CawOutcome::Unknown(why),
        }
    }

    /// The result of a read or plain write this answer means.
    pub fn disk_result(self, command: &'static str) -> Result<(), DiskError> {
        match self {
            Class::Good => Ok(()),
            Class::Fenced => Err(DiskError::Fenced),
            Class::Definite(cause) => Err(DiskError::Failed { command, cause }),
            Class::Open(cause) | Class::Miscompare(_, cause) => {
                Err(DiskError::Transient { command, cause })
            }
        }
    }
}

fn classify(outcome: &ScsiOutcome) -> Class {
    classify_status(outcome.status, &outcome.sense)
}

/// Sorts a SCSI status and its sense data for the resolver (SAM-5 5.3 status codes, SPC-4 4.5 sense data).
pub fn classify_status(status: u8, sense_data: &[u8]) -> Class {
    match status {
        STATUS_GOOD => Class::Good,
        STATUS_RESERVATION_CONFLICT => Class::Fenced,
        STATUS_CHECK_CONDITION => {
            let Some(sense) = lunlock_initiator::SenseSummary::parse(sense_data) else {
                return Class::Open(Cause::NoSense);
            };
            let cause = Cause::Sense {
                key: sense.key,
                asc: sense.asc,
                ascq: sense.ascq,
            };
            if sense.key == 0x0E && sense.asc == 0x1D {
                Class::Miscompare(information_field(sense_data), cause)
            } else if DEFINITE_SENSE_KEYS.contains(&sense.key) {
                Class::Definite(cause)
            } else {
                Class::Open(cause)
            }
        }
        // BUSY, TASK SET FULL, ACA ACTIVE, TASK ABORTED: the command may or may not have run (the issue asks the
        // resolver to read back on BUSY too, since a target's BUSY after a lost reply says nothing of the first try).
        other => Class::Open(Cause::Status(other)),
    }
}

/// The INFORMATION field of fixed-format sense data when VALID is set (SPC-4 4.5.3); descriptor format carries it
/// in an information descriptor (type 0, SPC-4 4.5.2.2).
fn information_field(sense: &[u8]) -> Option<u64> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 if sense.len() >= 7 && sense[0] & 0x80 != 0 => {
            Some(u64::from(u32::from_be_bytes(sense[3..7].try_into().ok()?)))
        }
        0x72 | 0x73 => {
            let mut at = 8;
            while at + 12 <= sense.len() {
                if sense[at] == 0x00 && sense[at + 2] & 0x80 != 0 {
                    return Some(u64::from_be_bytes(sense[at + 4..at + 12].try_into().ok()?));
                }
                at += 2 + usize::from(sense[at + 1]);
            }
            None
        }
        _ => None,
    }
}

/// The lock manager's COMPARE AND WRITE CDB (SBC-4 5.3, Table 35): one block, with FUA so the write is durable
/// before GOOD.
pub fn compare_and_write_cdb(lba: u64) -> Vec<u8> {
    Command::compare_and_write(lba, 1, true).encode()
}

impl Disk for IscsiDisk {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    async fn read(&self, lba: u64, count: u32, timeout: Duration) -> Result<Vec<u8>, DiskError> {
        let cdb = Command::read_16(lba, count, false).encode();
        let length = count * self.block_size;
        let outcome = self
            .run_checked(&cdb, DataDirection::Read(length), timeout)
            .await?;
        Ok(outcome.data_in)
    }

    async fn write(&self, lba: u64, data: Vec<u8>, timeout: Duration) -> Result<(), DiskError> {
        let blocks = (data.len() / self.block_size as usize) as u32;
        let cdb = Command::write_16(lba, blocks, true).encode();
        self.run_checked(&cdb, DataDirection::Write(data), timeout)
            .await
            .map(|_| ())
    }

    fn compare_and_write(
        &self,
        lba: u64,
        expected: &[u8],
        new: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = CawOutcome> + Send {
        let mut data = Vec::with_capacity(expected.len() + new.len());
        data.extend_from_slice(expected);
        data.extend_from_slice(new);
        async move {
            let cdb = compare_and_write_cdb(lba);
            match self.run(&cdb, DataDirection::Write(data), timeout).await {
                Err(cause) => CawOutcome::Unknown(cause),
                Ok(outcome) => classify(&outcome).caw_outcome(),
            }
        }
    }

    fn preempt_and_abort(
        &self,
        own_key: u64,
        victim_key: u64,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        self.prout(
            PrOutAction::PreemptAndAbort,
            PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            own_key,
            victim_key,
            false,
            timeout,
        )
    }

    async fn read_keys(&self, timeout: Duration) -> Result<Vec<u64>, DiskError> {
        const ALLOCATION: u16 = 8192;
        let cdb = prin_cdb(PrInAction::ReadKeys, ALLOCATION);
        let outcome = self
            .run_checked(&cdb, DataDirection::Read(u32::from(ALLOCATION)), timeout)
            .await?;
        let keys = ReadKeys::parse(&outcome.data_in).map_err(|e| DiskError::Failed {
            command: "PERSISTENT RESERVE IN READ KEYS",
            cause: Cause::BadAnswer {
                what: "parameter data",
                reason: e.to_string(),
            },
        })?;
        Ok(keys.keys.iter().map(|k| k.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caw_cdb_names_one_block_with_fua() {
        let cdb = compare_and_write_cdb(0x1234);
        assert_eq!((cdb[0], cdb[1], cdb[13]), (0x89, 0x08, 1));
        assert_eq!(u64::from_be_bytes(cdb[2..10].try_into().unwrap()), 0x1234);
    }

    #[test]
    fn information_is_read_only_when_valid() {
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0xF0;
        fixed[3..7].copy_from_slice(&77u32.to_be_bytes());
        assert_eq!(information_field(&fixed), Some(77));
        fixed[0] = 0x70;
        assert_eq!(information_field(&fixed), None);
        let mut descriptor = vec![0x72, 0x0E, 0x1D, 0x00, 0, 0, 0, 12];
        descriptor.extend_from_slice(&[0x00, 0x0A, 0x80, 0]);
        descriptor.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(information_field(&descriptor), Some(9));
    }

    fn outcome(status: u8, key: u8, asc: u8) -> ScsiOutcome {
        let mut sense = vec![0u8; 18];
        sense[0] = 0x70;
        sense[2] = key;
        sense[12] = asc;
        ScsiOutcome {
            status,
            sense,
            data_in: Vec::new(),
            residual: Default::default(),
        }
    }

    #[test]
    fn outcomes_are_sorted_into_definite_and_open() {
        assert!(matches!(classify(&outcome(0, 0, 0)), Class::Good));
        assert!(matches!(classify(&outcome(0x18, 0, 0)), Class::Fenced));
        assert!(matches!(
            classify(&outcome(2, 0x0E, 0x1D)),
            Class::Miscompare(..)
        ));
        assert!(matches!(
            classify(&outcome(2, 0x05, 0x24)),
            Class::Definite(_)
        ));
        assert!(matches!(classify(&outcome(2, 0x06, 0x29)), Class::Open(_)));
        assert!(matches!(classify(&outcome(0x08, 0, 0)), Class::Open(_)));
        assert!(matches!(classify(&outcome(0x28, 0, 0)), Class::Open(_)));
    }
}
