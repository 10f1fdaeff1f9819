//! Test support shared by the store and server tests: a loop device over a sparse file, detached when the guard
//! drops (also when the test panics), and a scratch directory on a file system that accepts O_DIRECT.
//!
//! These tests need root (losetup). They fail loudly without it rather than skip: CI runs as root, and a skipped
//! test would hide a broken block-device path.

#![allow(dead_code)] // each test crate uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory under Cargo's per-target temporary directory: it lives on the same file system as the
/// build, which accepts O_DIRECT, where /tmp may be a tmpfs that refuses it.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch directory")
}

/// Panics unless running as root: losetup needs it, and these tests must not pass by doing nothing.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test attaches loop devices with losetup and must run as root (CI does); it does not skip"
    );
}

/// An attached loop device; `Drop` detaches it.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    /// Creates a sparse `size_bytes` file at `backing` and attaches it, with `sector_bytes` logical sectors.
    pub fn attach(backing: &Path, size_bytes: u64, sector_bytes: u32) -> LoopDevice {
        require_root();
        std::fs::File::create(backing)
            .and_then(|f| f.set_len(size_bytes))
            .expect("loop backing file");
        let output = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--sector-size",
                &sector_bytes.to_string(),
            ])
            .arg(backing)
            .output()
            .expect("losetup runs (util-linux installed)");
        assert!(
            output.status.success(),
            "losetup --find --show {}: {}",
            backing.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        // The guard exists before any further check, so a failing assertion still detaches the device.
        let device = LoopDevice {
            path: PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()),
        };
        assert!(
            device.path.to_string_lossy().starts_with("/dev/loop"),
            "losetup printed {:?}",
            device.path
        );
        device
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let detached = Command::new("losetup").arg("-d").arg(&self.path).status();
        if !matches!(detached, Ok(status) if status.success()) {
            eprintln!(
                "warning: could not detach {}: {detached:?}",
                self.path.display()
            );
        }
    }
}
