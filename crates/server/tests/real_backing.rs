//! Real backing stores through a real TCP session: an O_DIRECT file LUN and block-device LUNs on loop devices,
//! each configured from a TOML file the way an operator would. The loop-device tests need root and fail without
//! it (see store/tests/support/loop_device.rs); every loop device is detached by a guard, also on failure.

#[path = "../../store/tests/support/loop_device.rs"]
mod loop_device;

use loop_device::{scratch_dir, LoopDevice};
use lunlock_initiator::{DataDirection, LoginOptions, Session};
use lunlock_server::{RunningTarget, ServeError, ServeOptions, TargetConfig};
use std::path::Path;

const TARGET: &str = "iqn.2026-11.io.lunlock:real";
const MIB: u64 = 1 << 20;

/// A config file in `dir` serving one LUN 0 with the given extra keys, on an ephemeral loopback port.
fn config_file(dir: &Path, lun_keys: &str) -> std::path::PathBuf {
    let path = dir.join("lunlock.toml");
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\n\n[[target]]\nname = \"{TARGET}\"\n\n[[target.lun]]\nid = 0\n{lun_keys}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn load(config: &Path) -> TargetConfig {
    TargetConfig::from_options(&ServeOptions {
        config: Some(config.to_path_buf()),
        ..ServeOptions::default()
    })
    .unwrap()
}

async fn start(config: &Path) -> RunningTarget {
    lunlock_server::start(load(config)).await.unwrap()
}

/// Logs in and consumes the POWER ON unit attention.
async fn login(target: &RunningTarget) -> Session {
    let session = Session::login(
        target.local_addrs()[0],
        &LoginOptions::new("iqn.2026-11.test:real-backing", TARGET),
    )
    .await
    .unwrap();
    let _ = session.execute(0, &[0u8; 6], DataDirection::None).await;
    session
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// MODE SENSE (6) of the Caching page, current values: WCE (byte 2 bit 2).
async fn write_cache_enabled(session: &Session) -> bool {
    let outcome = session
        .execute_checked(0, &[0x1A, 0x08, 0x08, 0, 255, 0], DataDirection::Read(255))
        .await
        .unwrap();
    let page = &outcome.data_in[4..];
    assert_eq!(page[0] & 0x3F, 0x08);
    page[2] & 0x04 != 0
}

/// READ CAPACITY (16) byte 14: (LBPME, LBPRZ).
async fn provisioning(session: &Session) -> (bool, bool) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let outcome = session
        .execute_checked(0, &cdb, DataDirection::Read(32))
        .await
        .unwrap();
    (
        outcome.data_in[14] & 0x80 != 0,
        outcome.data_in[14] & 0x40 != 0,
    )
}

/// Writes with and without FUA, reads back, and synchronizes the cache.
async fn round_trip(session: &Session, block_size: u32) {
    let first = pattern(8 * block_size as usize, 1);
    let second = pattern(3 * block_size as usize, 2);
    session
        .write(0, 0, block_size, first.clone(), true)
        .await
        .unwrap();
    session
        .write(0, 100, block_size, second.clone(), false)
        .await
        .unwrap();
    session.synchronize_cache(0).await.unwrap();
    assert_eq!(session.read(0, 0, 8, block_size).await.unwrap(), first);
    assert_eq!(session.read(0, 100, 3, block_size).await.unwrap(), second);
}

#[tokio::test]
async fn a_direct_io_file_lun_round_trips_over_iscsi_and_keeps_wce() {
    let dir = scratch_dir();
    let config = config_file(
        dir.path(),
        "size = \"4M\"\npath = \"direct.img\"\ndirect_io = true\n",
    );
    let target = start(&config).await;
    let session = login(&target).await;
    round_trip(&session, 512).await;
    assert!(
        write_cache_enabled(&session).await,
        "a file under O_DIRECT still has volatile metadata and device caches: WCE=1"
    );
    assert_eq!(provisioning(&session).await, (true, true));
    session.logout().await.unwrap();
    target.shutdown().await;
    // The bytes reached the file (O_DIRECT bypasses the page cache, so this reads what the disk holds).
    let image = std::fs::read(dir.path().join("lunlock-data/direct.img")).unwrap();
    assert_eq!(&image[..8 * 512], &pattern(8 * 512, 1)[..]);
    assert_eq!(&image[100 * 512..103 * 512], &pattern(3 * 512, 2)[..]);
}

#[tokio::test]
async fn a_loop_device_lun_serves_its_size_and_data_and_holds_the_device_exclusively() {
    let dir = scratch_dir();
    let backing = dir.path().join("loop.img");
    let device = LoopDevice::attach(&backing, 16 * MIB, 512);
    let config = config_file(
        dir.path(),
        &format!("path = \"{}\"\n", device.path.display()),
    );
    let target = start(&config).await;
    let session = login(&target).await;
    let capacity = session.read_capacity(0).await.unwrap();
    assert_eq!(
        (capacity.blocks, capacity.block_size),
        (16 * MIB / 512, 512),
        "READ CAPACITY is the device's size"
    );
    assert_eq!(
        provisioning(&session).await,
        (true, true),
        "a loop device on a hole-punching file system deallocates to zeros"
    );
    assert!(
        write_cache_enabled(&session).await,
        "buffered: the page cache is volatile"
    );
    round_trip(&session, 512).await;

    // A second daemon on the same device is refused at start, naming the file, line and key.
    let second = lunlock_server::start(load(&config)).await;
    let Err(ServeError::Config { line, message, .. }) = second else {
        panic!("a second opener must be refused");
    };
    assert!(
        message.contains("key `path`") && message.contains("busy"),
        "{message}"
    );
    assert_eq!(line, 8, "the line of `path`: {message}");

    session.logout().await.unwrap();
    target.shutdown().await;
    let image = std::fs::read(&backing).unwrap();
    assert_eq!(
        &image[..8 * 512],
        &pattern(8 * 512, 1)[..],
        "the data is on the device"
    );
}

#[tokio::test]
async fn a_direct_io_loop_device_lun_reports_wce_from_the_device_queue() {
    let dir = scratch_dir();
    let device = LoopDevice::attach(&dir.path().join("loop.img"), 8 * MIB, 4096);
    let config = config_file(
        dir.path(),
        &format!(
            "path = \"{}\"\nblock_size = 4096\ndirect_io = true\n",
            device.path.display()
        ),
    );
    let target = start(&config).await;
    let session = login(&target).await;
    assert_eq!(
        session.read_capacity(0).await.unwrap().blocks,
        8 * MIB / 4096
    );
    round_trip(&session, 4096).await;
    let name = device
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cache = std::fs::read_to_string(format!("/sys/block/{name}/queue/write_cache")).unwrap();
    assert_eq!(
        write_cache_enabled(&session).await,
        cache.trim() == "write back",
        "{cache:?}"
    );
    session.logout().await.unwrap();
    target.shutdown().await;
}

#[tokio::test]
async fn block_device_settings_it_cannot_honour_are_start_up_errors_naming_line_and_key() {
    let dir = scratch_dir();
    let device = LoopDevice::attach(&dir.path().join("loop.img"), 8 * MIB, 4096);
    let path = device.path.display();
    for (keys, key, line, reason) in [
        (
            format!("path = \"{path}\"\n"),
            "block_size",
            7,
            "logical sector size 4096",
        ),
        (
            format!("path = \"{path}\"\nblock_size = 512\n"),
            "block_size",
            9,
            "logical sector size 4096",
        ),
        (
            format!("path = \"{path}\"\nblock_size = 4096\nsize = \"4M\"\n"),
            "size",
            10,
            "8388608",
        ),
    ] {
        let config = config_file(dir.path(), &keys);
        let Err(ServeError::Config {
            path: file,
            line: at,
            message,
            ..
        }) = lunlock_server::start(load(&config)).await
        else {
            panic!("{keys:?} must be refused");
        };
        assert_eq!(file, config);
        assert_eq!(at, line, "{message}");
        assert!(message.contains(&format!("key `{key}`")), "{message}");
        assert!(message.contains(reason), "{message}");
    }
}
