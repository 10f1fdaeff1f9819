//! A store failure reaches the initiator as the sense data its kind calls for, and the daemon logs its cause: a
//! thin LUN whose file system fills up answers DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (SBC-4
//! 4.7.3.7), not a generic WRITE ERROR, and the log says "No space left on device".
//!
//! The full file system is a 2 MiB tmpfs, mounted for the test: it needs root, and fails loudly without it rather
//! than skip (CI runs as root).

mod support;

use support::{free_port, wait_for_port, Daemon};

use std::path::Path;
use std::process::{Command, Stdio};

/// A tmpfs mounted at a fresh directory; unmounted when dropped (also when the test panics).
struct SmallFileSystem {
    dir: tempfile::TempDir,
}

impl SmallFileSystem {
    fn mount(size: &str) -> SmallFileSystem {
        // SAFETY: geteuid has no preconditions and touches no memory.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test mounts a tmpfs and must run as root (CI does); it does not skip"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs failed");
        SmallFileSystem { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_file_system_is_space_allocation_failed_and_logged_with_its_cause() {
    let small = SmallFileSystem::mount("2m");
    let port = free_port();
    // A 64 MiB LUN, sparse, on 2 MiB of space: the first megabytes fit, then the file system is full.
    let serve = Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_lunlock"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--lun-size",
                "64M",
                "--admin",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(small.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_for_port(port);
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), vec![0x5Au8; 8 << 20]).unwrap();
    let url = format!("iscsi://127.0.0.1:{port}/iqn.2026-11.io.lunlock:default/0");
    let written = support::lunlock(&["write", &url, "--input", input.path().to_str().unwrap()]);
    let client_error = support::failed(written);
    assert!(
        client_error.contains("Data protect, Space allocation failed write protect"),
        "{client_error}"
    );
    let output = serve.stop();
    let log = String::from_utf8_lossy(&output.stderr);
    let line = log
        .lines()
        .find(|line| line.contains("store write failed"))
        .unwrap_or_else(|| panic!("no store failure in the log:\n{log}"));
    assert!(line.contains("No space left on device"), "{line}");
    assert!(
        line.contains("SPACE ALLOCATION FAILED WRITE PROTECT"),
        "{line}"
    );
    // The command's span names it.
    assert!(line.contains("command{lun=0"), "{line}");
    assert!(line.contains("op=WRITE"), "{line}");
}
