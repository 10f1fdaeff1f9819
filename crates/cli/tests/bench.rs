//! `lunlock bench` as a user runs it: the real binary against a target started in-process. The assertions are on
//! behaviour (counts, errors, the final block content, the output's shape), never on how fast anything ran.

use lunlock_initiator::isid::{derived_isid, isid_hex};
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const SECONDS: &str = "2";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start(runtime: &tokio::runtime::Runtime, dir: &Path) -> (RunningTarget, String) {
    let options = ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.to_path_buf(),
        lun_size_bytes: 64 << 20,
        enable_fault_injection: true,
        ..ServeOptions::default()
    };
    let target = runtime
        .block_on(lunlock_server::start(
            TargetConfig::from_options(&options).unwrap(),
        ))
        .unwrap();
    let url = format!("iscsi://{}/{TARGET}/0", target.local_addrs()[0]);
    (target, url)
}

fn lunlock(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(args)
        .output()
        .expect("run lunlock")
}

/// Runs a bench that must succeed; returns stdout, after checking stderr carries no terminal drawing.
fn bench(url: &str, args: &[&str]) -> String {
    let mut all = vec!["bench", url, "--seconds", SECONDS];
    all.extend_from_slice(args);
    let output = lunlock(&all);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lunlock bench {args:?} failed: {stderr}\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // stderr is a pipe here: the progress line must stay hidden, leaving only whole lines.
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "terminal drawing on a non-terminal stderr: {stderr:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

fn bench_json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let stdout = bench(url, &all);
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The key=value pairs of the summary's last line, which starts with `bench `.
fn summary(stdout: &str) -> std::collections::HashMap<String, String> {
    let last = stdout.lines().last().expect("a summary");
    let pairs = last
        .strip_prefix("bench ")
        .unwrap_or_else(|| panic!("{last}"));
    pairs
        .split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("{pair}"));
            (key.to_string(), value.to_string())
        })
        .collect()
}

fn count(summary: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    summary
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {summary:?}"))
        .parse()
        .unwrap()
}

#[test]
fn randread_at_queue_depth_8_completes_reads_without_errors() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let stdout = bench(&url, &["--workload", "randread", "--qd", "8"]);
    let summary = summary(&stdout);
    assert_eq!(summary["workload"], "randread");
    assert_eq!(
        (summary["qd"].as_str(), summary["bs"].as_str()),
        ("8", "4096")
    );
    assert!(count(&summary, "good") > 0, "{stdout}");
    assert_eq!(count(&summary, "errors"), 0);
    assert_eq!(count(&summary, "miscompare"), 0);
    runtime.block_on(target.shutdown());
}

#[test]
fn randwrite_writes_across_the_region() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let report = bench_json(
        &url,
        &[
            "--workload",
            "randwrite",
            "--qd",
            "4",
            "--bs",
            "8k",
            "--sessions",
            "2",
        ],
    );
    assert_eq!(report["workload"], "randwrite");
    assert_eq!(report["bs"], 8192);
    assert!(report["good"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0);
    assert_eq!(report["isids"].as_array().unwrap().len(), 2);
    runtime.block_on(target.shutdown());
}

#[test]
fn contended_caw_counts_miscompares_apart_and_leaves_one_sessions_image() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let report = bench_json(
        &url,
        &[
            "--workload",
            "caw-contended",
            "--sessions",
            "4",
            "--lba",
            "40",
        ],
    );
    assert_eq!(report["workload"], "caw-contended");
    let good = report["good"].as_u64().unwrap();
    let miscompare = report["miscompare"].as_u64().expect("miscompares counted");
    assert!(good > 0, "{report}");
    assert_eq!(report["commands"].as_u64().unwrap(), good + miscompare);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["verified"], true);
    let isids: Vec<&str> = report["isids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|isid| isid.as_str().unwrap())
        .collect();
    let distinct: std::collections::HashSet<_> = isids.iter().collect();
    assert_eq!((isids.len(), distinct.len()), (4, 4), "{isids:?}");
    // Bench's own range of session indices, so none is the one-shot commands' (or lock heartbeat's) nexus.
    let name = lunlock_initiator::DEFAULT_INITIATOR_NAME;
    let expected: Vec<String> = (0x1000..0x1004)
        .map(|index| isid_hex(&derived_isid(name, index)))
        .collect();
    assert_eq!(isids, expected);

    // Read the block back with another command: it holds a whole image, written by one of the four sessions.
    let back = dir.path().join("block.bin");
    let read = lunlock(&[
        "read",
        &url,
        "--lba",
        "40",
        "--count",
        "1",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(read.status.success());
    let block = std::fs::read(&back).unwrap();
    assert_eq!(block.len(), 512);
    let stamp = &block[..32];
    assert_eq!(&stamp[..8], b"LLBENCH1");
    assert!(block.chunks(32).all(|chunk| chunk == stamp), "a torn image");
    let session = u32::from_be_bytes(stamp[16..20].try_into().unwrap());
    assert!(session < 4, "written by session {session}");
    runtime.block_on(target.shutdown());
}

#[test]
fn heartbeats_of_four_sessions_are_counted_with_their_lateness() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let report = bench_json(
        &url,
        &[
            "--workload",
            "heartbeat",
            "--sessions",
            "4",
            "--interval-ms",
            "200",
        ],
    );
    assert_eq!(report["workload"], "heartbeat");
    assert_eq!(report["interval_ms"], 200);
    let heartbeats = report["heartbeats"].as_u64().unwrap();
    assert!(heartbeats > 0, "{report}");
    assert_eq!(report["good"].as_u64().unwrap(), heartbeats);
    assert!(report["late_heartbeats"].is_u64(), "{report}");
    assert!(report["max_heartbeat_lateness_us"].is_number(), "{report}");
    assert_eq!(report["errors"], 0);
    assert_eq!(report["verified"], true);
    runtime.block_on(target.shutdown());
}

#[test]
fn heartbeat_beside_a_background_read_load_reports_both_apart() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let stdout = bench(
        &url,
        &[
            "--workload",
            "heartbeat",
            "--sessions",
            "2",
            "--interval-ms",
            "200",
            "--background-workload",
            "randread",
            "--background-sessions",
            "2",
            "--background-qd",
            "8",
        ],
    );
    let summary = summary(&stdout);
    assert!(count(&summary, "heartbeats") > 0, "{stdout}");
    assert!(summary.contains_key("late_heartbeats"));
    assert_eq!(summary["background_workload"], "randread");
    assert!(count(&summary, "background_good") > 0, "{stdout}");
    assert_eq!(
        count(&summary, "errors") + count(&summary, "background_errors"),
        0
    );
    runtime.block_on(target.shutdown());
}

#[test]
fn bad_arguments_fail_before_any_load_with_one_clear_line() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let odd = lunlock(&["bench", &url, "--workload", "randread", "--bs", "1000"]);
    assert!(!odd.status.success());
    assert!(
        String::from_utf8_lossy(&odd.stderr).contains("not a multiple of the LUN's 512-byte block"),
        "{}",
        String::from_utf8_lossy(&odd.stderr)
    );
    let writes_beside_caw = lunlock(&[
        "bench",
        &url,
        "--workload",
        "caw-contended",
        "--background-workload",
        "randwrite",
    ]);
    assert!(!writes_beside_caw.status.success());
    assert!(String::from_utf8_lossy(&writes_beside_caw.stderr).contains("overwrite"));
    runtime.block_on(target.shutdown());
}

#[test]
fn errors_are_counted_and_make_the_exit_status_non_zero() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let fault = lunlock(&["fault", &url, "caw:busy:20%"]);
    assert!(
        fault.status.success(),
        "{}",
        String::from_utf8_lossy(&fault.stderr)
    );
    let output = lunlock(&[
        "bench",
        &url,
        "--workload",
        "caw-uncontended",
        "--sessions",
        "2",
        "--seconds",
        "1",
        "--json",
    ]);
    assert!(!output.status.success(), "BUSY answers must fail the run");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["first_error"].as_str().unwrap().contains("Busy"),
        "{report}"
    );
    // The load went on after each BUSY (re-read, retry): GOOD CAWs were still counted.
    assert!(report["good"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["verified"],
        Value::Null,
        "outcomes were unknown, so nothing is claimed"
    );
    runtime.block_on(target.shutdown());
}
