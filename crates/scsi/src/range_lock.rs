//! LBA range locks: what makes COMPARE AND WRITE atomic (SBC-4 5.3, 4.29) against every overlapping command from
//! every session and portal, while commands on other ranges run in parallel.
//!
//! The medium is cut into regions of [`REGION_BLOCKS`]; region `r` maps to stripe `r % STRIPES`, one `RwLock` each.
//! Reads take their stripes shared; anything that changes the medium takes them exclusively. A range spanning
//! several regions takes its stripes in ascending stripe order, so two commands can never wait on each other in a
//! cycle. Commands run synchronously and hold the guard only across their own store calls, never across an await.
//!
//! Invariant: two commands whose ranges overlap share at least one region, hence one stripe, so at most one of them
//! holds it exclusively at a time.

use crate::cdb::{BlockCount, Lba};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Stripes per logical unit.
pub const STRIPES: usize = 64;
/// Blocks per region (1 MiB of 512-byte blocks).
pub const REGION_BLOCKS: u64 = 2048;

pub(crate) struct RangeLocks {
    stripes: Vec<RwLock<()>>,
}

/// Held while a command touches its range; dropping it releases the stripes.
pub(crate) struct RangeGuard<'a> {
    _shared: Vec<RwLockReadGuard<'a, ()>>,
    _exclusive: Vec<RwLockWriteGuard<'a, ()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Shared,
    Exclusive,
}

impl Default for RangeLocks {
    fn default() -> Self {
        RangeLocks {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl RangeLocks {
    /// The stripes covering `[lba, lba + blocks)`, ascending; every stripe when the range is unbounded (None).
    fn stripes_for(range: Option<(Lba, BlockCount)>) -> Vec<usize> {
        let Some((lba, blocks)) = range else {
            return (0..STRIPES).collect();
        };
        let first = lba.0 / REGION_BLOCKS;
        let last = lba.0.saturating_add(blocks.0.max(1) - 1) / REGION_BLOCKS;
        if last - first + 1 >= STRIPES as u64 {
            return (0..STRIPES).collect();
        }
        let mut stripes: Vec<usize> = (first..=last)
            .map(|r| (r % STRIPES as u64) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
    }

    /// Locks a range (None: the whole medium) for the given access.
    pub(crate) fn lock(&self, range: Option<(Lba, BlockCount)>, access: Access) -> RangeGuard<'_> {
        let stripes = Self::stripes_for(range);
        // A poisoned stripe only means another command panicked while holding it; the lock protects no data of
        // its own, so the guard is still meaningful.
        let shared = |i: &usize| self.stripes[*i].read().unwrap_or_else(|p| p.into_inner());
        let exclusive = |i: &usize| self.stripes[*i].write().unwrap_or_else(|p| p.into_inner());
        match access {
            Access::Shared => RangeGuard {
                _shared: stripes.iter().map(shared).collect(),
                _exclusive: Vec::new(),
            },
            Access::Exclusive => RangeGuard {
                _shared: Vec::new(),
                _exclusive: stripes.iter().map(exclusive).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_share_a_stripe_and_stripes_are_ascending() {
        let a = RangeLocks::stripes_for(Some((Lba(REGION_BLOCKS - 1), BlockCount(2))));
        assert_eq!(a, vec![0, 1]);
        let wrapped = RangeLocks::stripes_for(Some((
            Lba((STRIPES as u64 - 1) * REGION_BLOCKS),
            BlockCount(REGION_BLOCKS + 1),
        )));
        assert_eq!(wrapped, vec![0, STRIPES - 1]);
        assert_eq!(RangeLocks::stripes_for(None).len(), STRIPES);
        assert_eq!(
            RangeLocks::stripes_for(Some((Lba(0), BlockCount(REGION_BLOCKS * 100)))).len(),
            STRIPES
        );
        assert_eq!(
            RangeLocks::stripes_for(Some((Lba(5), BlockCount(0)))),
            vec![0]
        );
    }
}
