//! Helpers shared by the server's integration tests.

use lunlock_initiator::{DataDirection, LoginOptions, Session};
use lunlock_server::RunningTarget;

/// Logs in to `target_name` on the target's first portal as `initiator`, and consumes the POWER ON unit attention
/// with a TEST UNIT READY, so the test's own first command is not answered with it.
#[allow(dead_code)] // tests/alua.rs names its portals with `login_at`
pub async fn login(target: &RunningTarget, target_name: &str, initiator: &str) -> Session {
    login_at(target, 0, target_name, initiator).await
}

/// [`login`] through the target's portal number `portal` (0-based, in configuration order).
pub async fn login_at(
    target: &RunningTarget,
    portal: usize,
    target_name: &str,
    initiator: &str,
) -> Session {
    let session = Session::login(
        target.local_addrs()[portal],
        &LoginOptions::new(initiator, target_name),
    )
    .await
    .unwrap();
    let _ = session.execute(0, &[0u8; 6], DataDirection::None).await;
    session
}
