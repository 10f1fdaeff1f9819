//! The simulated disk and clock the real `cluster` code runs on: every command crosses the simulated network to
//! the simulated target, and every wait is on simulated time.

use crate::world::{lock, Reply, Request, World, BLOCK};
use lunlock_cluster::iscsi_disk::{classify_status, compare_and_write_cdb};
use lunlock_cluster::{Cause, CawOutcome, Clock, Disk, DiskError};
use lunlock_initiator::pr::{
    basic_prout, prin_cdb, prout_cdb, PrInAction, PrOutAction, PrType, ReadKeys,
    RegisterAndMoveParameters, ReservationKey, TransportId,
};
use lunlock_scsi::cdb::Command;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

pub type SimHandle = Arc<Mutex<World>>;

/// Simulated time as one host's clock sees it: each host's clock runs at its own rate (skew), so nothing that
/// compares durations across hosts can pass by accident.
#[derive(Clone)]
pub struct SimClock {
    pub world: SimHandle,
    /// Host seconds per simulated second, e.g. 1.002.
    pub rate: f64,
}

impl Clock for SimClock {
    fn now(&self) -> Duration {
        lock(&self.world).now.mul_f64(self.rate)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        let deadline = lock(&self.world).now + duration.div_f64(self.rate);
        Sleep {
            world: Arc::clone(&self.world),
            deadline,
            armed: false,
        }
    }
}

struct Sleep {
    world: SimHandle,
    deadline: Duration,
    armed: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut world = lock(&self.world);
        if world.now >= self.deadline {
            return Poll::Ready(());
        }
        if !self.armed {
            world.add_timer(self.deadline, cx.waker().clone());
            drop(world);
            self.armed = true;
        }
        Poll::Pending
    }
}

/// Waits for a command's reply until a deadline; None is "no answer in time".
struct AwaitReply {
    world: SimHandle,
    id: u64,
    deadline: Duration,
    armed: bool,
}

impl Future for AwaitReply {
    type Output = Option<Reply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        let id = self.id;
        let deadline = self.deadline;
        let mut world = lock(&self.world);
        if let Some(reply) = world.take_reply(id) {
            return Poll::Ready(Some(reply));
        }
        if world.now >= deadline {
            world.abandon(id);
            return Poll::Ready(None);
        }
        world.wait_reply(id, cx.waker().clone());
        if !self.armed {
            world.add_timer(deadline, cx.waker().clone());
            drop(world);
            self.armed = true;
        }
        Poll::Pending
    }
}

/// One actor's view of one LUN of the simulated target.
#[derive(Clone)]
pub struct SimDisk {
    pub world: SimHandle,
    pub actor: usize,
    pub incarnation: u64,
    pub lun: usize,
}

/// What REGISTER AND MOVE's destination and flags are, apart from the keys.
#[derive(Clone, Debug)]
pub struct MoveTo {
    /// The destination initiator (a format 00b TransportID names it without ISID).
    pub destination: TransportId,
    pub unregister: bool,
    pub aptpl: bool,
}

/// The CDB and parameter list of a REGISTER AND MOVE through relative target port 1 (every actor's).
pub fn register_and_move_command(
    pr_type: PrType,
    key: u64,
    service_action_key: u64,
    to: MoveTo,
) -> (Vec<u8>, Vec<u8>) {
    let parameters = RegisterAndMoveParameters {
        reservation_key: ReservationKey(key),
        service_action_key: ReservationKey(service_action_key),
        unregister: to.unregister,
        activate_persist_through_power_loss: to.aptpl,
        relative_target_port: 1,
        transport_id: to.destination,
    }
    .encode();
    let cdb = prout_cdb(
        PrOutAction::RegisterAndMove,
        pr_type,
        parameters.len() as u32,
    );
    (cdb, parameters)
}

impl SimDisk {
    /// Sends a command and waits for its reply at most `timeout`.
    pub async fn command(
        &self,
        cdb: Vec<u8>,
        data_out: Vec<u8>,
        expected_length: u32,
        timeout: Duration,
    ) -> Option<Reply> {
        let (id, deadline) = {
            let mut world = lock(&self.world);
            let id = world.submit(Request {
                id: 0,
                actor: self.actor,
                incarnation: self.incarnation,
                lun: self.lun,
                cdb,
                data_out,
                expected_length,
            });
            (id, world.now + timeout)
        };
        AwaitReply {
            world: Arc::clone(&self.world),
            id,
            deadline,
            armed: false,
        }
        .await
    }

    async fn checked(
        &self,
        what: &'static str,
        cdb: Vec<u8>,
        data_out: Vec<u8>,
        expected: u32,
        timeout: Duration,
    ) -> Result<Reply, DiskError> {
        let reply =
            self.command(cdb, data_out, expected, timeout)
                .await
                .ok_or(DiskError::Transient {
                    command: what,
                    cause: Cause::Simulated("timeout"),
                })?;
        classify_status(reply.status, &reply.sense).disk_result(what)?;
        Ok(reply)
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
        self.send_prout(cdb, parameters, timeout).await
    }

    /// A PERSISTENT RESERVE OUT whose outcome is GOOD or a [`DiskError`].
    async fn send_prout(
        &self,
        cdb: Vec<u8>,
        parameters: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), DiskError> {
        let length = parameters.len() as u32;
        self.checked(
            lunlock_initiator::status::command_name(&cdb),
            cdb,
            parameters,
            length,
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// REGISTER AND MOVE (see [`register_and_move_command`]).
    pub async fn register_and_move(
        &self,
        pr_type: PrType,
        key: u64,
        service_action_key: u64,
        to: MoveTo,
        timeout: Duration,
    ) -> Result<(), DiskError> {
        let (cdb, parameters) = register_and_move_command(pr_type, key, service_action_key, to);
        self.send_prout(cdb, parameters, timeout).await
    }
}

impl Disk for SimDisk {
    fn block_size(&self) -> u32 {
        BLOCK
    }

    async fn read(&self, lba: u64, count: u32, timeout: Duration) -> Result<Vec<u8>, DiskError> {
        let command = Command::read_16(lba, count, false);
        let reply = self
            .checked(
                command.row().name,
                command.encode(),
                Vec::new(),
                count * BLOCK,
                timeout,
            )
            .await?;
        Ok(reply.data_in)
    }

    async fn write(&self, lba: u64, data: Vec<u8>, timeout: Duration) -> Result<(), DiskError> {
        let blocks = (data.len() / BLOCK as usize) as u32;
        let command = Command::write_16(lba, blocks, true);
        let length = data.len() as u32;
        self.checked(command.row().name, command.encode(), data, length, timeout)
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
        let mut data = expected.to_vec();
        data.extend_from_slice(new);
        async move {
            let length = data.len() as u32;
            match self
                .command(compare_and_write_cdb(lba), data, length, timeout)
                .await
            {
                None => CawOutcome::Unknown(Cause::Simulated("timeout")),
                Some(reply) => classify_status(reply.status, &reply.sense).caw_outcome(),
            }
        }
    }

    async fn preempt_and_abort(
        &self,
        own_key: u64,
        victim_key: u64,
        timeout: Duration,
    ) -> Result<(), DiskError> {
        self.prout(
            PrOutAction::PreemptAndAbort,
            PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            own_key,
            victim_key,
            false,
            timeout,
        )
        .await
    }

    async fn read_keys(&self, timeout: Duration) -> Result<Vec<u64>, DiskError> {
        let cdb = prin_cdb(PrInAction::ReadKeys, 4096);
        let reply = self
            .checked(
                lunlock_initiator::status::command_name(&cdb),
                cdb,
                Vec::new(),
                4096,
                timeout,
            )
            .await?;
        let keys = ReadKeys::parse(&reply.data_in).map_err(|e| DiskError::Failed {
            command: "PERSISTENT RESERVE IN READ KEYS",
            cause: Cause::BadAnswer {
                what: "parameter data",
                reason: e.to_string(),
            },
        })?;
        Ok(keys.keys.iter().map(|k| k.0).collect())
    }
}
