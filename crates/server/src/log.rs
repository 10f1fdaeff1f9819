//! One-line events on stderr: logins, logouts, rejects, errors. Deliberately tiny: an operator reads these with
//! journalctl; structured event logs come with the lock manager (issue 4).

use std::fmt::Arguments;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn event(message: Arguments<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "{}.{:03} lunlock: {message}",
        now.as_secs(),
        now.subsec_millis()
    );
}
