//! `lunlock serve --lock-stats FILE`: the hold-time histograms of the locks a LUN's sessions share, written as JSON
//! at shutdown, move with traffic.

mod support;

use support::{free_port, serve_command, wait_for_port, Daemon};

use std::process::{Command, Stdio};

#[test]
fn lock_statistics_are_written_at_shutdown_and_count_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("locks.json");
    let port = free_port();
    let serve = Daemon::spawn(
        serve_command(port, dir.path())
            .arg("--lock-stats")
            .arg(&stats)
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    let url = format!("iscsi://127.0.0.1:{port}/iqn.2026-11.io.lunlock:default/0");
    let bench = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args([
            "bench",
            &url,
            "--workload",
            "randread",
            "--qd",
            "4",
            "--seconds",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    serve.signal("INT");
    assert!(serve.wait().status.success());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let locks = json["locks"].as_array().unwrap();
    let range_table = locks
        .iter()
        .find(|l| l["name"] == "range lock table")
        .expect("the range lock table is reported");
    assert!(range_table["acquisitions"].as_u64().unwrap() > 100);
    let hold = &range_table["hold_ns"];
    let (p50, max) = (hold["p50"].as_u64().unwrap(), hold["max"].as_u64().unwrap());
    assert!(p50 <= max, "{hold}");
    for lock in locks {
        assert!(
            lock["hold_ns"]["p999"].as_u64().unwrap() <= lock["hold_ns"]["max"].as_u64().unwrap()
        );
    }
}
