//! The copy manager's memory of EXTENDED COPY commands (SPC-4 5.16.4), per logical unit: which copies are in
//! progress (for the concurrency limits and OPERATION IN PROGRESS) and the status of the latest copy of each list
//! identifier per I_T nexus, for RECEIVE COPY RESULTS COPY STATUS (SPC-3 6.18.2).
//!
//! Bounded: at most [`limits::TOTAL_CONCURRENT_COPIES`] copies in progress and [`limits::RETAINED_COPY_STATUSES`]
//! records, the oldest finished record making room for a new one. Records of a nexus are forgotten when it is
//! lost, and every record at a logical unit reset or a target reset.

use super::limits;
use crate::sense::{Condition, Sense};
use crate::ItNexus;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// COPY MANAGER STATUS (SPC-3 6.18.2 Table 148).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyState {
    InProgress = 0x00,
    Completed = 0x01,
    CompletedWithErrors = 0x02,
}

#[derive(Debug)]
struct Record {
    key: u64,
    nexus: ItNexus,
    /// None for LIST ID USAGE 11b: counted while in progress, dropped when done.
    list_id: Option<u8>,
    state: CopyState,
    segments_processed: u16,
    bytes_transferred: u64,
}

#[derive(Debug, Default)]
struct Records {
    next_key: u64,
    /// Oldest first.
    records: VecDeque<Record>,
}

/// The records of one logical unit's copy manager.
#[derive(Debug, Default)]
pub(crate) struct CopyRecords {
    inner: Mutex<Records>,
}

impl CopyRecords {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a copy that starts now, or refuses it: the same nexus already runs a copy with this list
    /// identifier (OPERATION IN PROGRESS, SPC-4 5.16.4.2), or the concurrency limits are reached (INSUFFICIENT
    /// RESOURCES).
    pub(crate) fn begin(
        self: &Arc<Self>,
        nexus: &ItNexus,
        list_id: Option<u8>,
    ) -> Result<CopyTicket, Sense> {
        let mut inner = self.lock();
        let running = |record: &&Record| record.state == CopyState::InProgress;
        let in_progress = inner.records.iter().filter(running).count();
        let of_nexus = inner
            .records
            .iter()
            .filter(running)
            .filter(|record| record.nexus == *nexus)
            .collect::<Vec<_>>();
        if list_id.is_some() && of_nexus.iter().any(|record| record.list_id == list_id) {
            return Err(Sense::new(Condition::OperationInProgress));
        }
        if in_progress >= limits::TOTAL_CONCURRENT_COPIES as usize
            || of_nexus.len() >= limits::MAX_CONCURRENT_COPIES as usize
        {
            return Err(Sense::new(Condition::InsufficientResources));
        }
        if inner.records.len() >= limits::RETAINED_COPY_STATUSES {
            // Fewer copies run than records are kept, so a finished one is there to make room.
            if let Some(oldest) = inner.records.iter().position(|r| !running(&r)) {
                inner.records.remove(oldest);
            }
        }
        inner.next_key += 1;
        let key = inner.next_key;
        inner.records.push_back(Record {
            key,
            nexus: nexus.clone(),
            list_id,
            state: CopyState::InProgress,
            segments_processed: 0,
            bytes_transferred: 0,
        });
        Ok(CopyTicket {
            records: Arc::clone(self),
            key,
            finished: false,
        })
    }

    fn update(&self, key: u64, change: impl FnOnce(&mut Record)) {
        let mut inner = self.lock();
        if let Some(record) = inner.records.iter_mut().find(|r| r.key == key) {
            change(record);
        }
    }

    fn end(&self, key: u64, state: CopyState) {
        let mut inner = self.lock();
        let Some(at) = inner.records.iter().position(|r| r.key == key) else {
            return;
        };
        if inner.records[at].list_id.is_none() {
            inner.records.remove(at);
        } else {
            inner.records[at].state = state;
        }
    }

    /// COPY STATUS parameter data (SPC-3 6.18.2 Table 147) of the latest copy of `list_id` from `nexus`; None
    /// when there is none (the caller answers INVALID FIELD IN CDB).
    pub(crate) fn copy_status(&self, nexus: &ItNexus, list_id: u8) -> Option<Vec<u8>> {
        let inner = self.lock();
        let record = inner
            .records
            .iter()
            .rev()
            .find(|r| r.nexus == *nexus && r.list_id == Some(list_id))?;
        let mut data = vec![0u8; 12];
        data[0..4].copy_from_slice(&8u32.to_be_bytes()); // AVAILABLE DATA
        data[4] = record.state as u8; // HDD 0: lunlock holds no data
        data[5..7].copy_from_slice(&record.segments_processed.to_be_bytes());
        data[7] = 0x00; // TRANSFER COUNT UNITS: bytes
        let transferred = record.bytes_transferred.min(u32::MAX as u64) as u32;
        data[8..12].copy_from_slice(&transferred.to_be_bytes());
        Some(data)
    }

    /// I_T nexus loss: the nexus's copies are over and nobody can ask about them any more.
    pub(crate) fn forget_nexus(&self, nexus: &ItNexus) {
        self.lock().records.retain(|r| r.nexus != *nexus);
    }

    /// Logical unit or target reset.
    pub(crate) fn forget_all(&self) {
        self.lock().records.clear();
    }
}

/// A copy in progress in [`CopyRecords`]. Dropped without [`CopyTicket::finish`] (the command was aborted or
/// its connection lost), the copy counts as completed with errors.
#[derive(Debug)]
pub(crate) struct CopyTicket {
    records: Arc<CopyRecords>,
    key: u64,
    finished: bool,
}

impl CopyTicket {
    /// Progress for COPY STATUS: segments done and bytes written so far.
    pub(crate) fn progress(&self, segments_processed: u16, bytes_transferred: u64) {
        self.records.update(self.key, |record| {
            record.segments_processed = segments_processed;
            record.bytes_transferred = bytes_transferred;
        });
    }

    pub(crate) fn finish(mut self, succeeded: bool) {
        self.finished = true;
        let state = if succeeded {
            CopyState::Completed
        } else {
            CopyState::CompletedWithErrors
        };
        self.records.end(self.key, state);
    }
}

impl Drop for CopyTicket {
    fn drop(&mut self) {
        if !self.finished {
            self.records.end(self.key, CopyState::CompletedWithErrors);
        }
    }
}
