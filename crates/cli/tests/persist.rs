//! `lunlock persist` (the real binary) against a target started in-process: the issue's seed sequence, fence_scsi's
//! sequence and Windows cluster validation's, each asserting sg_persist's exact output and exit statuses.
//!
//! Every run of the binary is a new iSCSI session, so these tests also prove that the default ISID is stable: a key
//! registered by one run is still ours in the next.

use lunlock_initiator::{DataDirection, LoginOptions, ScsiOutcome, Session};
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;
use std::process::{Command, Output};

const TARGET: &str = "iqn.2026-11.io.lunlock:default";

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
        lun_size_bytes: 16 << 20,
        ..ServeOptions::default()
    };
    let target = runtime
        .block_on(lunlock_server::start(
            TargetConfig::from_options(&options).unwrap(),
        ))
        .unwrap();
    let portal = target.local_addrs()[0].to_string();
    (target, portal)
}

fn persist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .arg("persist")
        .args(args)
        .output()
        .expect("run lunlock persist")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs and expects `status`, returning stdout.
fn expect(status: i32, args: &[&str]) -> String {
    let output = persist(args);
    assert_eq!(
        output.status.code(),
        Some(status),
        "lunlock persist {args:?}\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn ok(args: &[&str]) -> String {
    expect(0, args)
}

#[test]
fn seed_sequence_from_the_issue_works_as_written() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, dir.path());
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let url = url.as_str();

    let registered = ok(&["--out", "--register", "--param-sark=abc123", url]);
    let lines: Vec<&str> = registered.lines().collect();
    assert_eq!(lines.len(), 2, "{registered}");
    assert!(lines[0].starts_with("  LUNLOCK   "), "{registered}");
    assert_eq!(lines[1], "  Peripheral device type: disk");

    ok(&[
        "--out",
        "--reserve",
        "--param-rk=abc123",
        "--prout-type=3",
        url,
    ]);
    let reservation = ok(&["-r", url]);
    assert!(
        reservation.ends_with(
            "  PR generation=0x1, Reservation follows:\n    Key=0xabc123\n    scope: LU_SCOPE,  type: Exclusive Access\n"
        ),
        "{reservation}"
    );

    let keys = persist(&[url]);
    assert_eq!(keys.status.code(), Some(0), "{}", stderr(&keys));
    assert!(
        stdout(&keys).ends_with(
            "  PR generation=0x1, 1 registered reservation key follows:\n    0xabc123\n"
        ),
        "{}",
        stdout(&keys)
    );
    assert!(
        stderr(&keys).contains(">> No service action given; assume Persistent Reserve In command")
    );

    ok(&[
        "--out",
        "--release",
        "--param-rk=abc123",
        "--prout-type=3",
        url,
    ]);
    assert_eq!(
        ok(&["-n", "-r", url]),
        "  PR generation=0x1, there is NO reservation held\n"
    );

    ok(&["--out", "--register", "--param-rk=abc123", url]);
    assert_eq!(
        ok(&["-n", "-k", url]),
        "  PR generation=0x2, there are NO registered reservation keys\n"
    );
    runtime.block_on(target.shutdown());
}

/// Arguments are checked before any login, with sg_persist's messages and statuses; PR IN works against any
/// target. This test needs no PERSISTENT RESERVE OUT support.
#[test]
fn argument_errors_and_read_keys_on_an_unreserved_lun() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, dir.path());
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let url = url.as_str();

    assert_eq!(
        ok(&["-n", "-k", url]),
        "  PR generation=0x0, there are NO registered reservation keys\n"
    );
    let with_inquiry = ok(&["--in", "--read-keys", url]);
    assert!(with_inquiry.contains("  Peripheral device type: disk\n"));

    let bad_key = persist(&["--out", "--register", "--param-sark=xyz", url]);
    assert_eq!(bad_key.status.code(), Some(1));
    assert_eq!(stderr(&bad_key), "bad argument to '--param-sark'\n");
    let no_action = persist(&["--out", url]);
    assert_eq!(no_action.status.code(), Some(31));
    assert!(stderr(&no_action).contains("one and only one appropriate"));
    let unknown = persist(&["--frobnicate", url]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("unrecognized option '--frobnicate'"));
    let help = persist(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stderr(&help).contains("--register-ignore|-I"));
    let no_device = persist(&["-k"]);
    assert_eq!(no_device.status.code(), Some(1));
    assert!(stderr(&no_device).starts_with("No device name given\n"));

    // An unreachable portal is a device that cannot be opened.
    let unreachable = persist(&["-k", &format!("iscsi://127.0.0.1:1/{TARGET}/0")]);
    assert_eq!(unreachable.status.code(), Some(15));
    assert!(stderr(&unreachable).contains("error opening device"));
    runtime.block_on(target.shutdown());
}

fn isid_hex(isid: [u8; 6]) -> String {
    isid.iter().map(|b| format!("{b:02x}")).collect()
}

async fn login_nexus(portal: &str, name: &str, isid: [u8; 6]) -> Session {
    let mut options = LoginOptions::new(name, TARGET);
    options.isid = isid;
    Session::login(portal.parse().unwrap(), &options)
        .await
        .unwrap()
}

/// TEST UNIT READY until GOOD, returning the unit attentions it reported as (ASC, ASCQ).
async fn drain_unit_attentions(session: &Session) -> Vec<(u8, u8)> {
    let mut seen = Vec::new();
    for _ in 0..16 {
        let outcome = session
            .execute(0, &[0u8; 6], DataDirection::None)
            .await
            .unwrap();
        if outcome.is_good() {
            return seen;
        }
        let sense = outcome.sense_summary().expect("sense with CHECK CONDITION");
        assert_eq!(sense.key, 0x6, "only unit attentions expected");
        seen.push((sense.asc, sense.ascq));
    }
    panic!("unit attentions never stop: {seen:?}");
}

async fn write_block(session: &Session, lba: u8) -> ScsiOutcome {
    let cdb = [0x2A, 0, 0, 0, 0, lba, 0, 0, 1, 0];
    session
        .execute(0, &cdb, DataDirection::Write(vec![0x5A; 512]))
        .await
        .unwrap()
}

async fn read_block(session: &Session, lba: u8) -> ScsiOutcome {
    let cdb = [0x28, 0, 0, 0, 0, lba, 0, 0, 1, 0];
    session
        .execute(0, &cdb, DataDirection::Read(512))
        .await
        .unwrap()
}

/// fence_scsi (Pacemaker): each node registers with REGISTER AND IGNORE EXISTING KEY and APTPL, one node reserves
/// Write Exclusive, registrants only, and fencing a node is PREEMPT AND ABORT of its key. The victim then sees
/// REGISTRATIONS PREEMPTED, its writes conflict and its reads still work.
#[test]
fn fence_scsi_sequence_fences_the_victim() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, dir.path());
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let url = url.as_str();
    let node1 = "iqn.2026-11.io.test:node1";
    let node2 = "iqn.2026-11.io.test:node2";
    let isid1 = [0x80, 0, 0, 0, 0, 1];
    let isid2 = [0x80, 0, 0, 0, 0, 2];
    let (isid1_hex, isid2_hex) = (isid_hex(isid1), isid_hex(isid2));
    let nexus1 = ["--initiator-name", node1, "--isid", &isid1_hex];
    let nexus2 = ["--initiator-name", node2, "--isid", &isid2_hex];
    let with = |nexus: &[&str], args: &[&str]| -> Vec<String> {
        nexus
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .chain([url.to_string()])
            .collect()
    };
    let run = |status: i32, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect(status, &args)
    };

    // fence_scsi's unfence: sg_persist -n -o -I -S KEY -Z, once per node.
    run(0, with(&nexus1, &["-n", "-o", "-I", "-S", "0x10001", "-Z"]));
    run(0, with(&nexus2, &["-n", "-o", "-I", "-S", "0x20002", "-Z"]));
    assert!(run(0, with(&nexus1, &["-n", "-c"]))
        .contains("  Persist Through Power Loss Active(PTPL_A): 1\n"));
    run(
        0,
        with(&nexus1, &["-n", "-o", "-R", "-K", "0x10001", "-T", "5"]),
    );
    assert_eq!(
        run(0, with(&nexus2, &["-n", "-i", "-r"])),
        "  PR generation=0x2, Reservation follows:\n    Key=0x10001\n    scope: LU_SCOPE,  type: Write Exclusive, registrants only\n"
    );

    // The victim's own long-lived session on its nexus: a registrant may write under type 5.
    let victim = runtime.block_on(login_nexus(&portal, node2, isid2));
    runtime.block_on(drain_unit_attentions(&victim));
    assert!(runtime.block_on(write_block(&victim, 1)).is_good());

    // fence: sg_persist -n -o -A -T 5 -K MY_KEY -S VICTIM_KEY
    run(
        0,
        with(
            &nexus1,
            &[
                "-n", "-o", "-A", "-T", "5", "-K", "0x10001", "-S", "0x20002",
            ],
        ),
    );
    assert_eq!(
        run(0, with(&nexus1, &["-n", "-k"])),
        "  PR generation=0x3, 1 registered reservation key follows:\n    0x10001\n"
    );

    let attentions = runtime.block_on(drain_unit_attentions(&victim));
    assert_eq!(attentions, vec![(0x2A, 0x05)], "REGISTRATIONS PREEMPTED");
    let write = runtime.block_on(write_block(&victim, 1));
    assert_eq!(write.status, 0x18, "RESERVATION CONFLICT");
    assert!(runtime.block_on(read_block(&victim, 1)).is_good());
    runtime.block_on(victim.logout()).unwrap();

    // The fenced node's own attempt to reserve through the CLI conflicts, with sg_persist's exit status 24.
    let conflict = persist(
        &with(&nexus2, &["-n", "-o", "-R", "-K", "0x20002", "-T", "5"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(conflict.status.code(), Some(24));
    assert!(stderr(&conflict).contains("PR out (Reserve): Reservation conflict"));
    assert!(stderr(&conflict).contains("lunlock persist failed: Reservation conflict"));

    // Clean up as fence_scsi's operator would: clear everything.
    run(0, with(&nexus1, &["-n", "-o", "-C", "-K", "0x10001"]));
    assert_eq!(
        run(0, with(&nexus1, &["-n", "-k"])),
        "  PR generation=0x4, there are NO registered reservation keys\n"
    );
    runtime.block_on(target.shutdown());
}

/// Windows failover cluster validation ("Validate SCSI-3 Persistent Reservation"): register, reserve, read back
/// from the same node, a second node cannot take the reservation, release and unregister, with random keys.
#[test]
fn windows_validation_sequence_with_random_keys() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, dir.path());
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let url = url.as_str();
    let key_a = rand::random::<u64>() | 1;
    let key_b = key_a.wrapping_add(0x100) | 1;
    let (key_a, key_b) = (format!("{key_a:x}"), format!("{key_b:x}"));
    let node_a = ["--initiator-name", "iqn.1991-05.com.microsoft:node-a"];
    let node_b = ["--initiator-name", "iqn.1991-05.com.microsoft:node-b"];
    let args = |node: &[&str; 2], rest: &[&str]| -> Vec<String> {
        node.iter()
            .chain(rest)
            .map(|s| s.to_string())
            .chain([url.to_string()])
            .collect()
    };
    let run = |status: i32, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect(status, &args)
    };

    run(0, args(&node_a, &["-n", "-o", "-G", "-S", &key_a]));
    run(0, args(&node_b, &["-n", "-o", "-G", "-S", &key_b]));
    let keys = run(0, args(&node_a, &["-n", "-k"]));
    assert!(keys.starts_with("  PR generation=0x2, 2 registered reservation keys follow:\n"));
    assert!(
        keys.contains(&format!("    0x{key_a}\n")) && keys.contains(&format!("    0x{key_b}\n"))
    );

    run(
        0,
        args(&node_a, &["-n", "-o", "-R", "-K", &key_a, "-T", "6"]),
    );
    assert_eq!(
        run(0, args(&node_a, &["-n", "-r"])),
        format!(
            "  PR generation=0x2, Reservation follows:\n    Key=0x{key_a}\n    scope: LU_SCOPE,  type: Exclusive Access, registrants only\n"
        )
    );
    // Node B is a registrant but not the holder (type 6 is not an all-registrants type), so its RESERVE conflicts
    // (SPC-4 5.12.5.3).
    let other_type = persist(
        &args(&node_b, &["-n", "-o", "-R", "-K", &key_b, "-T", "3"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        other_type.status.code(),
        Some(24),
        "{}",
        stderr(&other_type)
    );

    run(
        0,
        args(&node_a, &["-n", "-o", "-L", "-K", &key_a, "-T", "6"]),
    );
    assert_eq!(
        run(0, args(&node_a, &["-n", "-r"])),
        "  PR generation=0x2, there is NO reservation held\n"
    );
    run(
        0,
        args(&node_a, &["-n", "-o", "-G", "-K", &key_a, "-S", "0"]),
    );
    run(0, args(&node_b, &["-n", "-o", "-G", "-K", &key_b]));
    assert_eq!(
        run(0, args(&node_a, &["-n", "-k"])),
        "  PR generation=0x4, there are NO registered reservation keys\n"
    );
    runtime.block_on(target.shutdown());
}

/// SPEC_I_PT registration of another initiator port, READ FULL STATUS in sg_persist's layout, and REGISTER AND MOVE
/// with UNREG to a third nexus named by its TransportID and the relative target port READ FULL STATUS reported.
#[test]
fn spec_i_pt_full_status_and_register_and_move() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, dir.path());
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let node = |n: u8| format!("iqn.2026-11.io.test:node{n}");
    // ISIDs without hex letters, so the TransportID text does not depend on the target's hex case.
    let isid = |n: u8| format!("80000000000{n}");
    let run = |status: i32, n: u8, args: &[&str]| {
        let (name, isid) = (node(n), isid(n));
        let mut all = vec!["--initiator-name", &name, "--isid", &isid, "-n"];
        all.extend_from_slice(args);
        all.push(&url);
        expect(status, &all)
    };
    let port_id = |n: u8| format!("{},i,0x{}", node(n), isid(n));

    run(0, 1, &["-o", "-G", "-S", "a1", "-X", &port_id(2)]);
    let status = run(0, 1, &["-s"]);
    assert!(status.starts_with("  PR generation=0x1\n"), "{status}");
    assert_eq!(status.matches("    Key=0xa1\n").count(), 2, "{status}");
    assert_eq!(
        status.matches("      not reservation holder\n").count(),
        2,
        "{status}"
    );
    for n in [1, 2] {
        let wanted = format!("        iSCSI world wide unique port id: {}\n", port_id(n));
        assert!(
            status.to_lowercase().contains(&wanted.to_lowercase()),
            "{wanted}{status}"
        );
    }
    let relative_port = status
        .lines()
        .find_map(|line| line.trim().strip_prefix("Relative port address: 0x"))
        .expect("a relative port address")
        .to_string();

    run(0, 1, &["-o", "-R", "-K", "a1", "-T", "1"]);
    let status = run(0, 1, &["-s"]);
    assert!(
        status.contains(
            "      << Reservation holder >>\n      scope: LU_SCOPE,  type: Write Exclusive\n"
        ),
        "{status}"
    );

    run(
        0,
        1,
        &[
            "-o",
            "-M",
            "-K",
            "a1",
            "-S",
            "c3",
            "-T",
            "1",
            "-Q",
            &relative_port,
            "-U",
            "-X",
            &port_id(3),
        ],
    );
    assert_eq!(
        run(0, 3, &["-r"]),
        "  PR generation=0x2, Reservation follows:\n    Key=0xc3\n    scope: LU_SCOPE,  type: Write Exclusive\n"
    );
    let keys = run(0, 2, &["-k"]);
    assert!(
        keys.starts_with("  PR generation=0x2, 2 registered reservation keys follow:\n"),
        "{keys}"
    );
    assert!(
        keys.contains("    0xa1\n") && keys.contains("    0xc3\n"),
        "{keys}"
    );
    // UNREG: the sender is no longer registered, so its RELEASE conflicts.
    run(24, 1, &["-o", "-L", "-K", "a1", "-T", "1"]);
    runtime.block_on(target.shutdown());
}

/// REGISTER AND MOVE to an initiator named without ISID (`--transport-id=iqn.NAME`: FORMAT CODE 00b, as sg_persist
/// sends it, SPC-4 7.6.4.6): the target moves to the one I_T nexus of that name logged in through the relative
/// target port given, and refuses a name with two such nexuses (INVALID FIELD IN PARAMETER LIST, exit status 19).
#[test]
fn register_and_move_to_an_initiator_named_without_isid() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, dir.path());
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let mover = ["--initiator-name", "iqn.2026-11.io.test:mover", "-n"];
    let run = |status: i32, args: &[&str]| {
        let all: Vec<&str> = mover
            .iter()
            .chain(args)
            .copied()
            .chain([url.as_str()])
            .collect();
        expect(status, &all)
    };
    let (single, twice) = ("iqn.2026-11.io.test:single", "iqn.2026-11.io.test:twice");
    let sessions = runtime.block_on(async {
        let mut sessions = Vec::new();
        for (name, isid) in [(single, 0x0B), (twice, 0x0C), (twice, 0x0D)] {
            let session = login_nexus(&portal, name, [0x80, 0, 0, 0, 0, isid]).await;
            drain_unit_attentions(&session).await;
            sessions.push(session);
        }
        sessions
    });

    run(0, &["-o", "-G", "-S", "a1"]);
    run(0, &["-o", "-R", "-K", "a1", "-T", "1"]);
    let status = run(0, &["-s"]);
    let port = status
        .lines()
        .find_map(|line| line.trim().strip_prefix("Relative port address: 0x"))
        .expect("a relative port address")
        .to_string();
    let move_to = |status: i32, name: &str| {
        run(
            status,
            &[
                "-o", "-M", "-K", "a1", "-S", "b2", "-T", "1", "-Q", &port, "-X", name,
            ],
        )
    };

    move_to(19, twice);
    assert_eq!(
        run(0, &["-r"]),
        "  PR generation=0x1, Reservation follows:\n    Key=0xa1\n    scope: LU_SCOPE,  type: Write Exclusive\n"
    );

    move_to(0, single);
    assert_eq!(
        run(0, &["-k"]),
        "  PR generation=0x2, 2 registered reservation keys follow:\n    0xa1\n    0xb2\n"
    );
    assert_eq!(
        run(0, &["-r"]),
        "  PR generation=0x2, Reservation follows:\n    Key=0xb2\n    scope: LU_SCOPE,  type: Write Exclusive\n"
    );
    let status = run(0, &["-s"]);
    let holder = status
        .split("    Key=")
        .find(|descriptor| descriptor.contains("<< Reservation holder >>"))
        .expect("a holder");
    assert!(holder.starts_with("0xb2\n"), "{status}");
    assert!(
        holder.contains(&format!(
            "iSCSI world wide unique port id: {single},i,0x80000000000b\n"
        )),
        "{status}"
    );
    assert!(runtime.block_on(write_block(&sessions[0], 1)).is_good());
    runtime.block_on(async {
        for session in sessions {
            session.logout().await.unwrap();
        }
    });
    runtime.block_on(target.shutdown());
}
