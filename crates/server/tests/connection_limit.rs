//! The daemon-wide connection limit (`max_connections`, `--max-connections`): connections beyond it are closed at
//! accept, and a slot comes back when a connection ends.

use lunlock_initiator::{LoginOptions, Session};
use lunlock_server::{ServeOptions, TargetConfig};
use std::time::Duration;
use tokio::io::AsyncReadExt;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";

#[tokio::test]
async fn a_connection_beyond_the_limit_is_closed_and_a_freed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.path().to_path_buf(),
        lun_size_bytes: 1 << 20,
        max_connections: Some(1),
        ..ServeOptions::default()
    };
    let config = TargetConfig::from_options(&options).unwrap();
    assert_eq!(config.max_connections, 1);
    let target = lunlock_server::start(config).await.unwrap();
    let address = target.local_addrs()[0];
    let login = LoginOptions::new("iqn.2026-11.test:limit", TARGET);
    let first = Session::login(address, &login).await.unwrap();

    let mut refused = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte))
        .await
        .expect("the target closes a connection beyond the limit at once");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not served: {read:?}"
    );

    first.logout().await.unwrap();
    drop(first);
    // The slot is released when the first connection's task ends, which follows the logout shortly.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(session) = Session::login(address, &login).await {
            again = Some(session);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    again
        .expect("a freed slot admits a new connection")
        .logout()
        .await
        .unwrap();
    target.shutdown().await;
}
