//! The real `lunlock` binary against a target started in-process on an ephemeral port.

mod support;

use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::io::{Read, Write};
use std::path::Path;
use support::{failed, lunlock, ok, runtime};

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const GIB: u64 = 1 << 30;

fn start(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    lun_size_bytes: u64,
) -> (RunningTarget, String) {
    let options = ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.to_path_buf(),
        lun_size_bytes,
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

/// xorshift64*: fast, deterministic pseudo-random bytes for a large image.
fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

#[test]
fn one_gib_image_written_and_read_back_is_byte_identical() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, &dir.path().join("data"), GIB);
    let image = dir.path().join("image.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&image).unwrap());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            fill_random(&mut state, &mut chunk);
            file.write_all(&chunk).unwrap();
        }
    }
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let started = std::time::Instant::now();
    ok(lunlock(&["write", &url, "-i", image.to_str().unwrap()]));
    let write_seconds = started.elapsed().as_secs_f64();
    let back = dir.path().join("back.bin");
    let started = std::time::Instant::now();
    ok(lunlock(&[
        "read",
        &url,
        "--lba",
        "0",
        "--count",
        &(GIB / 512).to_string(),
        "-o",
        back.to_str().unwrap(),
    ]));
    let read_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "1 GiB copy: write {:.0} MiB/s, read {:.0} MiB/s",
        1024.0 / write_seconds,
        1024.0 / read_seconds
    );

    let (mut a, mut b) = (
        std::fs::File::open(&image).unwrap(),
        std::fs::File::open(&back).unwrap(),
    );
    assert_eq!(a.metadata().unwrap().len(), GIB);
    assert_eq!(b.metadata().unwrap().len(), GIB);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for mib in 0..1024 {
        a.read_exact(&mut x).unwrap();
        b.read_exact(&mut y).unwrap();
        assert!(x == y, "the images differ in MiB {mib}");
    }
    runtime.block_on(target.shutdown());
}

#[test]
fn inquiry_readcap_and_discover_describe_the_lun() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, dir.path(), 64 << 20);
    let url = format!("iscsi://{portal}/{TARGET}/0");

    let inquiry = ok(lunlock(&["inquiry", &url]));
    assert!(inquiry.contains("vendor:      LUNLOCK"), "{inquiry}");
    let naa_line = inquiry
        .lines()
        .find(|l| l.starts_with("naa:"))
        .expect("an NAA designator");
    assert_eq!(
        naa_line.split_whitespace().nth(1).unwrap().len(),
        32,
        "16-byte NAA 6 designator"
    );
    assert!(inquiry
        .lines()
        .any(|l| l.starts_with("serial:") && l.len() > "serial:      ".len()));

    let readcap = ok(lunlock(&[
        "readcap",
        &url,
        "--header-digest",
        "--data-digest",
    ]));
    assert!(
        readcap.contains(&format!("blocks:       {}", (64 << 20) / 512)),
        "{readcap}"
    );
    assert!(readcap.contains("block size:   512"));

    let discover = ok(lunlock(&["discover", &format!("iscsi://{portal}")]));
    assert!(
        discover.contains(TARGET) && discover.contains(&format!("portal {portal},1")),
        "{discover}"
    );

    // Reading past the end fails before any I/O, with a clear message and a non-zero exit.
    let beyond = lunlock(&[
        "read",
        &url,
        "--lba",
        &((64 << 20) / 512).to_string(),
        "--count",
        "1",
    ]);
    assert!(!beyond.status.success());
    assert!(String::from_utf8_lossy(&beyond.stderr).contains("do not fit"));

    // A bad URL is one clear line.
    let bad = lunlock(&["inquiry", "iscsi://127.0.0.1:1/only-target"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad iSCSI URL"));
    runtime.block_on(target.shutdown());
}

#[test]
fn small_read_dumps_hex_of_what_was_written() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, &dir.path().join("data"), 16 << 20);
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let input = dir.path().join("hello.txt");
    std::fs::write(&input, b"hello, shared disk").unwrap();
    let written = lunlock(&["write", &url, "-i", input.to_str().unwrap(), "--lba", "5"]);
    assert!(written.status.success());
    let warning = String::from_utf8_lossy(&written.stderr);
    assert!(
        warning.starts_with("lunlock: warning: ") && warning.contains("padded with zeros"),
        "the warning goes through tracing: {warning}"
    );
    let quiet = std::process::Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(["write", &url, "-i", input.to_str().unwrap(), "--lba", "5"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(
        quiet.stderr.is_empty(),
        "RUST_LOG=error filters it: {quiet:?}"
    );
    let dump = ok(lunlock(&["read", &url, "--lba", "5", "--count", "1"]));
    assert!(dump.starts_with("00000a00  68 65 6c 6c 6f"), "{dump}");
    assert!(dump.contains("|hello, shared di|"), "{dump}");
    runtime.block_on(target.shutdown());
}

/// Issue 10's fence_scsi case: `lunlock persist` registers and reserves (Write Exclusive) as NODE2, and then every
/// one-shot command of NODE2 (`write`, `caw`, `read`) is that same I_T nexus, the reservation holder, while
/// another initiator name, or NODE2 with another ISID, is a stranger whose writes conflict.
#[test]
fn one_shot_commands_of_one_initiator_name_are_one_nexus() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (target, portal) = start(&runtime, &dir.path().join("data"), 16 << 20);
    let url = format!("iscsi://{portal}/{TARGET}/0");
    let node2 = ["--initiator-name", "iqn.2026-11.io.test:node2"];
    let node1 = ["--initiator-name", "iqn.2026-11.io.test:node1"];
    let with = |args: &[&str], nexus: &[&str]| lunlock(&[args, nexus].concat());
    let block = |byte: u8| {
        let path = dir.path().join(format!("block-{byte:02x}.bin"));
        std::fs::write(&path, vec![byte; 512]).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (old, new) = (block(0x11), block(0x22));

    ok(with(
        &["persist", "--out", "--register", "--param-sark=4e32", &url],
        &node2,
    ));
    ok(with(
        &[
            "persist",
            "--out",
            "--reserve",
            "--param-rk=4e32",
            "--prout-type=1",
            &url,
        ],
        &node2,
    ));
    let reservation = ok(with(&["persist", "-n", "-r", &url], &node2));
    assert!(
        reservation.contains("type: Write Exclusive"),
        "{reservation}"
    );

    ok(with(&["write", &url, "-i", &old, "--lba", "3"], &node2));
    let caw = ok(with(
        &["caw", &url, "--lba", "3", "--inc", &old, "--inw", &new],
        &node2,
    ));
    assert!(caw.starts_with("GOOD"), "{caw}");

    let stranger = failed(with(&["write", &url, "-i", &old, "--lba", "3"], &node1));
    assert!(stranger.contains("Reservation Conflict"), "{stranger}");
    let other_isid = ["--isid", "0x800000000001"];
    let other_port = failed(with(
        &["write", &url, "-i", &old, "--lba", "3"],
        &[&node2[..], &other_isid[..]].concat(),
    ));
    assert!(other_port.contains("Reservation Conflict"), "{other_port}");
    let caw_conflict = failed(with(
        &["caw", &url, "--lba", "3", "--inc", &new, "--inw", &old],
        &node1,
    ));
    assert!(
        caw_conflict.contains("Reservation Conflict"),
        "{caw_conflict}"
    );

    // Write Exclusive leaves reads to everyone; the block holds NODE2's COMPARE AND WRITE.
    let dump = ok(with(&["read", &url, "--lba", "3", "--count", "1"], &node1));
    assert!(dump.starts_with("00000600  22 22 22 22"), "{dump}");
    runtime.block_on(target.shutdown());
}
