//! glibc malloc settings for a target that allocates and frees command buffers at tens of thousands a second.
//!
//! With glibc's defaults, a buffer of 128 KiB or more (a 128K READ's data, a large write's Data-Out) is its own
//! mmap, faulted in page by page and unmapped again when freed, and memory freed at the top of a heap is given
//! back to the kernel and faulted in again for the next command. A `perf` profile of 128K sequential reads put a
//! third of the target's CPU time in page faults, page clearing and unmapping. Measured here on page-cached 128K
//! sequential reads at QD32 (iscsi-perf, one session): about 7,800 IOPS with the defaults, 18,000 to 19,500 with
//! these settings; 4K random reads and writes at QD32 are unchanged or better (docs/performance.md).
//!
//! Memory stays bounded: what is kept is what a peak of the load used, and the load's buffers are bounded by
//! the command window and the write buffer limits (`[limits]`).

/// Allocations up to this size come from the heap (reused), not from their own mmap: the largest command buffer
/// the default limits allow a session to stage (a 64 MiB EDTL is refused) fits under it except the very largest.
const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free memory kept at the top of a heap before it is given back to the kernel.
const TRIM_THRESHOLD_BYTES: i32 = 256 << 20;
/// Heaps ("arenas") at most. glibc's default is 8 per CPU, and with the engine threads each taking one, free
/// memory scattered over many arenas grows the resident size: the network fuzzer's load took the daemon to
/// 50-97 MiB with the default and kept it at 22 MiB with 2.
const ARENA_MAX: i32 = 2;

/// Applies the settings; call before the runtime and the engine threads start. Returns what was set, for the log.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() -> String {
    let settings = [
        (
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD_BYTES,
            "mmap threshold",
        ),
        (
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD_BYTES,
            "trim threshold",
        ),
        (libc::M_ARENA_MAX, ARENA_MAX, "arenas"),
    ];
    let applied: Vec<String> = settings
        .iter()
        .map(|&(parameter, value, name)| {
            // SAFETY: mallopt takes a parameter number and a value; it only changes the allocator's settings.
            let ok = unsafe { libc::mallopt(parameter, value) } == 1;
            if ok {
                format!("{name} {}", shown(value))
            } else {
                format!("{name} not set")
            }
        })
        .collect();
    format!("malloc: {}", applied.join(", "))
}

/// Other C libraries have their own allocators and settings: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> String {
    "malloc: the C library's defaults".to_string()
}

fn shown(value: i32) -> String {
    if value >= 1 << 20 {
        format!("{} MiB", value >> 20)
    } else {
        value.to_string()
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Bytes the allocator holds in blocks of their own mmap.
    fn mmapped_bytes() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    fn every_setting_is_accepted_and_a_large_buffer_comes_from_the_heap() {
        let applied = super::tune();
        assert!(!applied.contains("not set"), "{applied}");
        let before = mmapped_bytes();
        let buffer = std::hint::black_box(vec![1u8; 4 << 20]);
        let during = mmapped_bytes();
        // With glibc's default threshold a 4 MiB buffer is its own mapping; now it is carved from a heap. (Other
        // tests of this binary allocate nothing near 32 MiB, the new threshold.)
        assert!(
            during < before + buffer.len(),
            "{applied}: {before} -> {during}"
        );
    }
}
