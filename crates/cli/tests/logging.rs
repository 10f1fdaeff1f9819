//! `lunlock serve --log-format json|text`: every event of a connection carries the connection's span (peer, and
//! once logged in the initiator, ISID and target), events of a command carry the command's span (LUN, task tag,
//! operation), and `--log-level` and RUST_LOG filter them.

mod support;

use support::{free_port, serve_command, wait_for_port, Daemon};

use std::process::{Command, Stdio};

const INITIATOR: &str = "iqn.2026-12.io.lunlock:logging-test";

/// Runs the daemon with `extra` arguments (and RUST_LOG as given), logs in once with `lunlock inquiry`, stops it,
/// and returns what it wrote to stderr.
fn daemon_log(extra: &[&str], rust_log: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = serve_command(port, dir.path());
    command
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let serve = Daemon::spawn(&mut command);
    wait_for_port(port);
    let url = format!("iscsi://127.0.0.1:{port}/iqn.2026-11.io.lunlock:default/0");
    support::ok(support::lunlock(&[
        "inquiry",
        &url,
        "--initiator-name",
        INITIATOR,
    ]));
    let output = serve.stop();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn json_lines_carry_the_connection_span_with_the_initiator() {
    let log = daemon_log(&["--log-format", "json"], None);
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert!(
        events.iter().any(|e| e["level"] == "INFO"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("listening on")),
        "{log}"
    );
    let login = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("normal session")
        })
        .unwrap_or_else(|| panic!("no login event in {log}"));
    let span = &login["span"];
    assert_eq!(span["name"], "connection", "{login}");
    assert_eq!(span["initiator"], INITIATOR, "{login}");
    assert_eq!(span["target"], "iqn.2026-11.io.lunlock:default", "{login}");
    assert!(
        span["isid"].as_str().is_some_and(|isid| !isid.is_empty()),
        "{login}"
    );
    assert!(
        span["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{login}"
    );
    let closed = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("connection closed")
        })
        .unwrap_or_else(|| panic!("no close event in {log}"));
    assert_eq!(closed["span"]["initiator"], INITIATOR, "{closed}");
}

#[test]
fn text_lines_name_the_span_and_the_level_filters_them() {
    let log = daemon_log(&[], None);
    let login = log
        .lines()
        .find(|line| line.contains("normal session"))
        .unwrap_or_else(|| panic!("no login line in {log}"));
    assert!(login.contains(" INFO "), "{login}");
    assert!(login.contains("connection{peer=127.0.0.1:"), "{login}");
    assert!(login.contains(&format!("initiator={INITIATOR}")), "{login}");

    let quiet = daemon_log(&["--log-level", "warn"], None);
    assert!(!quiet.contains("normal session"), "{quiet}");
    let from_env = daemon_log(&["--log-level", "info"], Some("warn"));
    assert!(
        !from_env.contains("normal session"),
        "RUST_LOG=warn wins: {from_env}"
    );
}

#[test]
fn a_bad_rust_log_is_refused_by_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "none"])
        .env("RUST_LOG", "lunlock_server=loud")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("RUST_LOG"), "{stderr}");
}
