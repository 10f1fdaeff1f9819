//! The hot path as one I/O request: READ and WRITE, checked here and performed by the runtime's I/O engine
//! (io_uring), which submits straight to the backing's descriptor. Every check and every answer stays in this
//! crate; the runtime only moves the bytes.

use crate::cdb::Command;
use crate::lu::{Admitted, LogicalUnit};
use crate::store_failure::{store_failure, StoreOperation};
use crate::{ScsiCommand, ScsiResponse, ScsiStatus, SideEffects};

/// The I/O an admitted READ or WRITE needs, in bytes of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockIo {
    Read {
        offset: u64,
        len: usize,
    },
    /// The data is the command's Data-Out (`Admitted::data_out`); with `fua` it must be durable before GOOD
    /// (SBC-4 4.15: an fdatasync after the write).
    Write {
        offset: u64,
        len: usize,
        fua: bool,
    },
}

impl LogicalUnit {
    /// For a READ (without FUA) or WRITE that moves data: the checks `run_admitted` would make (reservations,
    /// write protection, sanitize failure mode, the LBA range), then the one I/O it needs. None: another command,
    /// or one with nothing to transfer; run it with `run_admitted`. Call it holding the command's range lock, and
    /// keep holding it until [`LogicalUnit::finish_block_io`].
    pub fn plan_block_io(
        &self,
        cmd: &ScsiCommand,
        admitted: &Admitted,
    ) -> Option<Result<BlockIo, ScsiResponse>> {
        let (lba, blocks, write) = match *admitted.command() {
            Command::Read {
                lba,
                blocks,
                fua: false,
                ..
            } => (lba, blocks, None),
            Command::Write {
                lba, blocks, fua, ..
            } => (lba, blocks, Some(fua)),
            // WRITE ATOMIC runs on the thread engine: one store call under the same exclusive range, with its
            // atomic limits checked by `run_admitted`; the ring's write loop would resubmit the rest of a short
            // write as a second write, which an atomic write must never be.
            _ => return None,
        };
        if blocks.0 == 0 {
            return None;
        }
        let wanted = admitted.data_out_wanted();
        if let Err(refusal) = self.refuse_before_running(cmd, admitted) {
            return Some(Err(self.refused(refusal, wanted)));
        }
        if let Err(sense) = self.check_transfer(lba, blocks) {
            return Some(Err(self.check_condition(sense, wanted)));
        }
        let offset = lba.0 * self.block_size;
        let len = (blocks.0 * self.block_size) as usize;
        Some(Ok(match write {
            None => BlockIo::Read { offset, len },
            Some(fua) => BlockIo::Write { offset, len, fua },
        }))
    }

    /// The response to a planned I/O: the data read, or the error mapped to sense data and logged
    /// (`crate::store_failure`).
    pub fn finish_block_io(
        &self,
        admitted: &Admitted,
        io: BlockIo,
        result: std::io::Result<Vec<u8>>,
    ) -> ScsiResponse {
        let wanted = admitted.data_out_wanted();
        match (io, result) {
            (_, Ok(data_in)) => ScsiResponse {
                status: ScsiStatus::Good,
                sense: Vec::new(),
                data_in,
                data_out_wanted: wanted,
                effects: SideEffects::NONE,
            },
            (BlockIo::Read { .. }, Err(error)) => {
                self.check_condition(store_failure(StoreOperation::Read, &error), wanted)
            }
            (BlockIo::Write { .. }, Err(error)) => {
                self.check_condition(store_failure(StoreOperation::Write, &error), wanted)
            }
        }
    }
}
