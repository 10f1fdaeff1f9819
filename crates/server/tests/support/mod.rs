//! Helpers shared by the server's integration tests.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

pub mod raw;

use lunlock_initiator::{DataDirection, LoginOptions, Session};
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;

/// Starts a target with the default configuration (one target, LUN 0 of 1 MiB under `dir`) on an ephemeral port of
/// 127.0.0.1.
pub async fn start(dir: &Path) -> RunningTarget {
    start_sized(dir, 1 << 20).await
}

/// [`start`] with a LUN of `lun_size_bytes`.
pub async fn start_sized(dir: &Path, lun_size_bytes: u64) -> RunningTarget {
    let options = ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.to_path_buf(),
        lun_size_bytes,
        ..ServeOptions::default()
    };
    lunlock_server::start(TargetConfig::from_options(&options).unwrap())
        .await
        .unwrap()
}

/// Starts a target from the TOML file at `config` (its relative paths are relative to the file's directory).
pub async fn start_from_file(config: std::path::PathBuf) -> RunningTarget {
    let options = ServeOptions {
        config: Some(config),
        ..ServeOptions::default()
    };
    lunlock_server::start(TargetConfig::from_options(&options).unwrap())
        .await
        .unwrap()
}

/// Logs in to `target_name` on the target's first portal as `initiator` (with a random ISID), and consumes the
/// POWER ON unit attention with a TEST UNIT READY, so the test's own first command is not answered with it.
pub async fn login(target: &RunningTarget, target_name: &str, initiator: &str) -> Session {
    login_with(target, LoginOptions::new(initiator, target_name)).await
}

/// [`login`] as the initiator port `initiator` with `isid`: several sessions of one initiator device.
pub async fn login_port(
    target: &RunningTarget,
    target_name: &str,
    initiator: &str,
    isid: [u8; 6],
) -> Session {
    let mut options = LoginOptions::new(initiator, target_name);
    options.isid = isid;
    login_with(target, options).await
}

/// [`login`] through the target's portal number `portal` (0-based, in configuration order).
pub async fn login_at(
    target: &RunningTarget,
    portal: usize,
    target_name: &str,
    initiator: &str,
) -> Session {
    login_through(target, portal, LoginOptions::new(initiator, target_name)).await
}

async fn login_with(target: &RunningTarget, options: LoginOptions) -> Session {
    login_through(target, 0, options).await
}

async fn login_through(target: &RunningTarget, portal: usize, options: LoginOptions) -> Session {
    let session = Session::login(target.local_addrs()[portal], &options)
        .await
        .unwrap();
    let _ = session.execute(0, &[0u8; 6], DataDirection::None).await;
    session
}
