//! Helpers shared by the integration tests that run the real `lunlock` binary.

use std::process::{Command, Output};

/// The runtime an in-process target runs on while the test runs the binary.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `lunlock ARGS...` to the end.
pub fn lunlock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(args)
        .output()
        .expect("run lunlock")
}

/// Expects success; returns stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "lunlock failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Expects a failure; returns stderr.
pub fn failed(output: Output) -> String {
    assert!(
        !output.status.success(),
        "lunlock succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}
