//! The one place where a backing store's failure becomes sense data, and is logged with its cause.
//!
//! The store reports an `io::Error`; the initiator must learn what kind of failure it was, since its recovery
//! differs: a thin LU out of space (SBC-4 4.7.3.7: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT) is not a
//! bad sector (MEDIUM ERROR, WRITE ERROR or UNRECOVERED READ ERROR, SBC-4 4.18), and a backing remounted read-only
//! is write protection (DATA PROTECT, WRITE PROTECTED). The cause itself (the errno and its message) is logged
//! here, because the sense data has no room for it.

use crate::sense::{Condition, Sense};
use std::io;

/// What the store was asked to do when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOperation {
    Read,
    Write,
    /// Making written data durable (fdatasync): a file system can run out of space here too, when it allocates
    /// delayed blocks.
    Flush,
    /// UNMAP, or WRITE SAME with UNMAP: giving blocks back.
    Deallocate,
}

impl StoreOperation {
    fn name(self) -> &'static str {
        match self {
            StoreOperation::Read => "read",
            StoreOperation::Write => "write",
            StoreOperation::Flush => "flush",
            StoreOperation::Deallocate => "deallocate",
        }
    }
}

/// The sense data for a store failure (see the module comment), after logging it with its cause.
pub fn store_failure(operation: StoreOperation, error: &io::Error) -> Sense {
    let condition = condition_for(operation, error);
    tracing::warn!(
        errno = error.raw_os_error(),
        "store {} failed: {error}; answering {}",
        operation.name(),
        condition.text()
    );
    Sense::new(condition)
}

fn condition_for(operation: StoreOperation, error: &io::Error) -> Condition {
    match (error.raw_os_error(), operation) {
        (Some(libc_errno::ENOSPC | libc_errno::EDQUOT), StoreOperation::Read) => {
            Condition::UnrecoveredReadError
        }
        (Some(libc_errno::ENOSPC | libc_errno::EDQUOT), _) => {
            Condition::SpaceAllocationFailedWriteProtect
        }
        (Some(libc_errno::EROFS), StoreOperation::Write | StoreOperation::Deallocate) => {
            Condition::WriteProtected
        }
        (_, StoreOperation::Read) => Condition::UnrecoveredReadError,
        (_, StoreOperation::Write | StoreOperation::Flush | StoreOperation::Deallocate) => {
            Condition::WriteError
        }
    }
}

/// The Linux errno values this mapping distinguishes (the crate has no libc dependency: it is sans-IO).
mod libc_errno {
    pub const EROFS: i32 = 30;
    pub const ENOSPC: i32 = 28;
    pub const EDQUOT: i32 = 122;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(operation: StoreOperation, errno: i32) -> Condition {
        condition_for(operation, &io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn out_of_space_is_space_allocation_failed_and_other_failures_are_medium_errors() {
        use StoreOperation::*;
        for operation in [Write, Flush, Deallocate] {
            assert_eq!(
                condition(operation, libc_errno::ENOSPC),
                Condition::SpaceAllocationFailedWriteProtect
            );
            assert_eq!(
                condition(operation, libc_errno::EDQUOT),
                Condition::SpaceAllocationFailedWriteProtect
            );
            assert_eq!(condition(operation, 5), Condition::WriteError, "EIO");
        }
        assert_eq!(
            condition(Write, libc_errno::EROFS),
            Condition::WriteProtected
        );
        assert_eq!(condition(Read, 5), Condition::UnrecoveredReadError);
        assert_eq!(
            condition_for(Read, &io::Error::other("no errno")),
            Condition::UnrecoveredReadError
        );
        let sense = store_failure(Write, &io::Error::from_raw_os_error(libc_errno::ENOSPC));
        assert_eq!(
            (
                sense.condition.key(),
                sense.condition.asc(),
                sense.condition.ascq()
            ),
            (crate::sense::SenseKey::DataProtect, 0x27, 0x07)
        );
    }
}
