//! `lunlock lock ...` as a user runs it: the real binary against a target started in-process.

mod support;

use lunlock_initiator::isid::{derived_isid, isid_hex, HEARTBEAT_SESSION};
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;
use std::process::Command;
use support::{failed, lunlock, ok, runtime};

const TARGET: &str = "iqn.2026-11.io.lunlock:default";

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

#[test]
fn format_acquire_release_and_status() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let a = ["--initiator-name", "iqn.2026-11.test:host-a"];
    let b = ["--initiator-name", "iqn.2026-11.test:host-b"];

    let out = ok(lunlock(&[
        "lock",
        "format",
        &url,
        "--slots",
        "4",
        "--locks",
        "8",
        "--heartbeat-ms",
        "200",
        "--dead-after-ms",
        "1600",
    ]));
    assert!(out.contains("4 slots, 8 locks"), "{out}");
    let refused = failed(lunlock(&["lock", "format", &url]));
    assert!(
        refused.contains("already exists") && refused.contains("--force"),
        "{refused}"
    );

    let out = ok(lunlock(
        &[&["lock", "acquire", &url, "vm-1.vmdk"][..], &a[..]].concat(),
    ));
    assert!(
        out.starts_with("acquired vm-1.vmdk exclusive token 1"),
        "{out}"
    );
    // Another host is refused while a's slot is not yet judged dead by it.
    let busy = failed(lunlock(
        &[&["lock", "acquire", &url, "vm-1.vmdk"][..], &b[..]].concat(),
    ));
    assert!(
        busy.contains("vm-1.vmdk is held by iqn.2026-11.test:host-a"),
        "{busy}"
    );

    let status = ok(lunlock(&["lock", "status", &url, "--watch-ms", "400"]));
    assert!(status.contains("vm-1.vmdk"), "{status}");
    assert!(status.contains("exclusive"), "{status}");
    assert!(status.contains("iqn.2026-11.test:host-a"), "{status}");

    let not_ours = failed(lunlock(
        &[&["lock", "release", &url, "vm-1.vmdk"][..], &b[..]].concat(),
    ));
    assert!(not_ours.contains("does not hold vm-1.vmdk"), "{not_ours}");
    let out = ok(lunlock(
        &[&["lock", "release", &url, "vm-1.vmdk"][..], &a[..]].concat(),
    ));
    assert!(out.contains("released vm-1.vmdk token 1"), "{out}");
    let out = ok(lunlock(
        &[
            &["lock", "acquire", &url, "vm-1.vmdk", "--shared"][..],
            &b[..],
        ]
        .concat(),
    ));
    assert!(
        out.starts_with("acquired vm-1.vmdk shared token 2"),
        "{out}"
    );

    let garbage = failed(lunlock(&["lock", "status", &url, "--lba", "100"]));
    assert!(
        garbage.contains("LBA 100") && garbage.contains("lunlock lock format"),
        "{garbage}"
    );
    runtime.block_on(target.shutdown());
}

/// The line of `lunlock lock status` that shows `host`'s slot.
fn slot_row<'a>(status: &'a str, host: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.contains(host))
        .unwrap_or_else(|| panic!("no slot row for {host}: {status}"))
}

/// `lunlock lock heartbeat` keeps this host's slot alive until interrupted, then gives it up; `acquire` from the same
/// host (same initiator name) attaches to that slot instead of claiming another.
#[test]
fn heartbeat_keeps_the_slot_alive_and_gives_it_up_on_interrupt() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let name = ["--initiator-name", "iqn.2026-11.test:beating"];
    ok(lunlock(&[
        "lock",
        "format",
        &url,
        "--slots",
        "4",
        "--locks",
        "4",
        "--heartbeat-ms",
        "100",
        "--dead-after-ms",
        "800",
    ]));
    let heartbeat = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args([&["lock", "heartbeat", &url][..], &name[..]].concat())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the heartbeat");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let status = ok(lunlock(&["lock", "status", &url, "--watch-ms", "400"]));
    let row = slot_row(&status, "iqn.2026-11.test:beating");
    assert!(row.contains("alive"), "{status}");
    let json = ok(lunlock(&[
        "lock",
        "status",
        &url,
        "--watch-ms",
        "400",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let slot = &report["slots"][0];
    assert_eq!(
        slot["host"].as_str(),
        Some("iqn.2026-11.test:beating"),
        "{json}"
    );
    assert_eq!(slot["state"].as_str(), Some("alive"), "{json}");
    assert!(slot["last_advance_ms"].as_u64().is_some(), "{json}");
    assert_eq!(report["live_hosts"].as_u64(), Some(1), "{json}");
    let out = ok(lunlock(
        &[&["lock", "acquire", &url, "db"][..], &name[..]].concat(),
    ));
    assert!(
        out.contains("slot 0"),
        "the acquire attached to the heartbeat's slot: {out}"
    );
    let pid = heartbeat.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let exit = heartbeat.wait_with_output().unwrap();
    assert!(
        exit.status.success(),
        "the heartbeat exits cleanly on SIGINT (the acquire, a one-shot command of its name, did not reinstate \
         its session): {exit:?}"
    );
    let heartbeat_isid = isid_hex(&derived_isid(name[1], HEARTBEAT_SESSION));
    let said = String::from_utf8_lossy(&exit.stderr);
    assert!(
        said.contains(&format!(
            "heartbeat session as {} ISID {heartbeat_isid}",
            name[1]
        )),
        "{said}"
    );
    let status = ok(lunlock(&["lock", "status", &url, "--watch-ms", "200"]));
    let row = slot_row(&status, "iqn.2026-11.test:beating");
    assert!(row.contains("free"), "{status}");
    runtime.block_on(target.shutdown());
}

/// The acceptance command, shortened: the demo formats a lockspace, sets the lost-reply fault through the target's
/// fault injection, runs the hosts, and prints the documented last line.
#[test]
fn demo_with_lost_replies_resolves_false_miscompares_without_violations() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let events = dir.path().join("events.jsonl");
    let output = lunlock(&[
        "lock",
        "demo",
        &url,
        "--hosts",
        "8",
        "--seconds",
        "8",
        "--faults",
        "caw:drop-response:5%",
        "--event-log",
        events.to_str().unwrap(),
    ]);
    // Each session its own ISID, in the demo's range: the hosts' are the range's third to tenth.
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    let isid = |index| {
        isid_hex(&derived_isid(
            lunlock_initiator::DEFAULT_INITIATOR_NAME,
            index,
        ))
    };
    let hosts = format!("ISIDs {}..{}", isid(0x0102), isid(0x0109));
    assert!(
        said.contains("demo sessions: admin ") && said.contains(&hosts),
        "{said}"
    );
    let out = ok(output);
    let last = out.lines().last().unwrap();
    let fields: std::collections::HashMap<&str, u64> = last
        .strip_prefix("demo ")
        .unwrap_or_else(|| panic!("last line: {last}"))
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    let keys: Vec<&str> = last
        .split(' ')
        .skip(1)
        .map(|kv| kv.split('=').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "hosts",
            "heartbeats",
            "acquisitions",
            "false_miscompares_resolved",
            "real_conflicts",
            "violations"
        ]
    );
    assert_eq!(fields["hosts"], 8);
    assert_eq!(fields["violations"], 0, "{out}");
    assert!(fields["false_miscompares_resolved"] > 0, "{out}");
    assert!(
        fields["acquisitions"] > 50 && fields["heartbeats"] > 50,
        "{out}"
    );
    // Every resolved lost reply is in the event log with its verdict and the digests that justify it.
    let log = std::fs::read_to_string(&events).unwrap();
    let resolved: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["verdict"] == "own_write_landed")
        .collect();
    assert_eq!(resolved.len() as u64, fields["false_miscompares_resolved"]);
    for event in &resolved {
        assert_eq!(event["found_digest"], event["written_digest"]);
        assert_ne!(event["expected_digest"], event["written_digest"]);
        assert!(event["outcome"].as_str().unwrap().starts_with("unknown"));
    }
    // The demo cleared the faults it set.
    let listing = ok(lunlock(&["fault", &url, "--list"]));
    assert!(!listing.contains("drop-response"), "{listing}");
    runtime.block_on(target.shutdown());
}

/// `lunlock caw`, as sg_compare_and_write: GOOD writes, a miscompare writes nothing and exits 14 with the offset.
#[test]
fn caw_writes_on_a_match_and_reports_a_miscompare_with_exit_status_14() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, url) = start(&runtime, dir.path());
    let file = |name: &str, bytes: Vec<u8>| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let zeros = file("zeros", vec![0; 512]);
    let mut ones_then_seven = vec![1u8; 512];
    ones_then_seven[100] = 7;
    let ones = file("ones", ones_then_seven.clone());
    let twos = file("twos", vec![2; 512]);
    let out = ok(lunlock(&[
        "caw", &url, "--lba", "10", "--inc", &zeros, "--inw", &ones,
    ]));
    assert!(out.starts_with("GOOD"), "{out}");
    let again = lunlock(&["caw", &url, "--lba", "10", "--inc", &zeros, "--inw", &twos]);
    assert_eq!(again.status.code(), Some(14));
    assert!(String::from_utf8_lossy(&again.stdout).contains("Miscompare at byte offset 0"));
    // Compare data that differs only at byte 100 miscompares there.
    let almost = file("almost", vec![1u8; 512]);
    let off = lunlock(&["caw", &url, "--lba", "10", "--inc", &almost, "--inw", &twos]);
    assert_eq!(off.status.code(), Some(14));
    assert!(
        String::from_utf8_lossy(&off.stdout).contains("offset 100"),
        "{off:?}"
    );
    // Nothing was written by the miscompares; a matching compare writes.
    let both = file("both", [ones_then_seven, vec![2; 512]].concat());
    ok(lunlock(&["caw", &url, "--lba", "10", "--in", &both]));
    let read_back = dir.path().join("back");
    ok(lunlock(&[
        "read",
        &url,
        "--lba",
        "10",
        "-o",
        read_back.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(read_back).unwrap(), vec![2; 512]);
    let short = failed(lunlock(&["caw", &url, "--lba", "10", "--in", &zeros]));
    assert!(short.contains("need 1024"), "{short}");
    runtime.block_on(target.shutdown());
}
