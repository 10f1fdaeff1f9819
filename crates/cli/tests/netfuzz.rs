//! `lunlock fuzz` against the real daemon: it runs its bursts without a finding, and the daemon still serves.

mod support;

use lunlock_initiator::{DataDirection, LoginOptions, Session};
use std::process::{Command, Stdio};
use support::{free_port, wait_for_port};

const TARGET: &str = "iqn.2026-11.io.lunlock:default";

#[test]
fn fifteen_seconds_of_fuzzing_find_nothing_and_the_target_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .args(["--lun-size", "64M", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lunlock serve");
    let url = format!("iscsi://127.0.0.1:{port}/{TARGET}/0");
    wait_for_port(port);
    let findings = dir.path().join("findings");
    let output = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(["fuzz", &url, "--seconds", "15", "--seed", "3", "--out"])
        .arg(&findings)
        .output()
        .expect("run lunlock fuzz");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fuzz failed:\n{stdout}\n{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    let field = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= in {summary:?}"))
    };
    assert!(summary.starts_with("fuzz seconds=15 seed=3 "), "{summary}");
    assert_eq!(field("findings"), 0);
    assert!(field("pdus") > 1000, "{summary}");
    assert!(field("bursts") > 10, "{summary}");
    assert!(!findings.exists(), "a findings file was written");
    let served = support::runtime().block_on(async {
        let session = Session::login(
            format!("127.0.0.1:{port}").parse().unwrap(),
            &LoginOptions::new("iqn.2026-12.test:after-fuzz", TARGET),
        )
        .await
        .expect("log in after the fuzzing");
        session.test_unit_ready(0).await.expect("TEST UNIT READY");
        session
            .execute(
                0,
                &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                DataDirection::Read(512),
            )
            .await
            .expect("READ")
    });
    assert!(
        served.is_good(),
        "READ after fuzzing: {:?}",
        served.sense_summary()
    );
    daemon.kill().unwrap();
    let _ = daemon.wait();
}
