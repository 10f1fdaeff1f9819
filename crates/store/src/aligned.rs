//! Heap buffers with a chosen alignment, for O_DIRECT I/O.
//!
//! With O_DIRECT the kernel moves data straight between the device and the caller's memory, so the buffer address,
//! the file offset and the length must all be multiples of the device's (or file system's) alignment, or the call
//! fails with EINVAL. Callers of [`crate::BlockStore`] pass plain slices (a `Vec<u8>` is only 16-byte aligned), so
//! the file store copies through one of these when a slice is not aligned.
//!
//! Invariant: `len` bytes at `ptr` are allocated with `layout`, initialised (zeroed at allocation), and owned by the
//! buffer alone; `ptr` is a multiple of `layout.align()`.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

pub struct AlignedBuffer {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer owns its allocation exclusively (like a Vec<u8>); nothing in it is tied to a thread.
unsafe impl Send for AlignedBuffer {}
// SAFETY: shared references only read the bytes, as with a Vec<u8>.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// `len` zeroed bytes aligned to `alignment` (a power of two). `len` 0 is allowed and allocates one aligned
    /// unit, so the pointer is always valid and aligned.
    pub fn zeroed(len: usize, alignment: usize) -> AlignedBuffer {
        let layout = Layout::from_size_align(len.max(alignment), alignment)
            .expect("alignment is a power of two and the size does not overflow");
        // SAFETY: the layout has a non-zero size (at least `alignment`, which is >= 1).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuffer { ptr, len, layout }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes at `ptr` are ours (module invariant).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout, and freed only here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// True when `slice` starts at a multiple of `alignment`.
pub fn is_aligned(slice: &[u8], alignment: usize) -> bool {
    (slice.as_ptr() as usize).is_multiple_of(alignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_of_the_asked_length() {
        for (len, alignment) in [
            (0, 4096),
            (512, 4096),
            (4096, 4096),
            (12_288, 8192),
            (100, 512),
        ] {
            let mut buffer = AlignedBuffer::zeroed(len, alignment);
            assert_eq!(buffer.as_slice().len(), len);
            assert!(is_aligned(buffer.as_slice(), alignment));
            assert!(buffer.as_slice().iter().all(|b| *b == 0));
            buffer.as_mut_slice().fill(0xAB);
            assert!(buffer.as_slice().iter().all(|b| *b == 0xAB));
        }
    }

    #[test]
    fn an_offset_slice_is_not_aligned() {
        let buffer = AlignedBuffer::zeroed(8192, 4096);
        assert!(!is_aligned(&buffer.as_slice()[1..], 4096));
        assert!(is_aligned(&buffer.as_slice()[4096..], 4096));
    }
}
