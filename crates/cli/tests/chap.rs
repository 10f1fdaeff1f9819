//! CHAP through the real binaries: `lunlock serve --config` with chap_user/chap_secret_file, the client commands
//! with libiscsi-style credentials (`user%secret@`, or the secret in LUNLOCK_CHAP_SECRET), and a SIGHUP that
//! reloads a rotated secret without dropping the session that is still allowed, and closes one that is not.

mod support;

use lunlock_initiator::{ChapCredentials, Credentials, DataDirection, LoginOptions, Session};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{failed, free_port, lunlock, ok, wait_for_port, Daemon};

const TARGET: &str = "iqn.2026-12.io.lunlock:chap-cli";
const USER: &str = "cli-host";
const OLD_SECRET: &str = "the-first-secret-01";
const NEW_SECRET: &str = "the-rotated-secret-02";

fn write_secret(dir: &Path, secret: &str) {
    let path = dir.join("host.secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn write_config(dir: &Path, port: u16, allowed: Option<&str>) {
    let allowed = allowed.map_or(String::new(), |name| {
        format!("allowed_initiators = [\"{name}\"]\n")
    });
    std::fs::write(
        dir.join("lunlock.toml"),
        format!(
            "listen = [\"127.0.0.1:{port}\"]\n[[target]]\nname = \"{TARGET}\"\n{allowed}\
             chap_user = \"{USER}\"\nchap_secret_file = \"host.secret\"\n[[target.lun]]\nid = 0\nsize = \"4M\"\n"
        ),
    )
    .unwrap();
}

fn serve(dir: &Path, port: u16) -> Daemon {
    let daemon = Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_lunlock"))
            .args(["serve", "--admin", "127.0.0.1:0"])
            .arg("--config")
            .arg(dir.join("lunlock.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    daemon
}

fn url(port: u16, secret: Option<&str>) -> String {
    match secret {
        Some(secret) => format!("iscsi://{USER}%{secret}@127.0.0.1:{port}/{TARGET}/0"),
        None => format!("iscsi://{USER}@127.0.0.1:{port}/{TARGET}/0"),
    }
}

fn hangup(daemon: &Daemon) {
    daemon.signal("HUP");
}

/// Retries `check` for a few seconds: the reload happens on the daemon's own time after the signal.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn chap_session(port: u16, initiator: &str, secret: &str) -> Session {
    let mut options = LoginOptions::new(initiator, TARGET);
    options.chap = Some(ChapCredentials {
        initiator: Credentials {
            user: USER.into(),
            secret: secret.as_bytes().to_vec(),
        },
        target: None,
    });
    let session = Session::login(([127, 0, 0, 1], port).into(), &options)
        .await
        .expect("CHAP login");
    let _ = session.execute(0, &[0u8; 6], DataDirection::None).await;
    session
}

async fn ready(session: &Session) -> bool {
    matches!(
        session.execute(0, &[0u8; 6], DataDirection::None).await,
        Ok(outcome) if outcome.is_good()
    )
}

#[test]
fn client_commands_authenticate_and_a_sighup_rotates_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_secret(dir.path(), OLD_SECRET);
    write_config(dir.path(), port, None);
    let daemon = serve(dir.path(), port);

    let inquiry = ok(lunlock(&["inquiry", &url(port, Some(OLD_SECRET))]));
    assert!(inquiry.contains("LUNLOCK"), "{inquiry}");
    let refused = failed(lunlock(&["inquiry", &url(port, Some("a-wrong-secret-00"))]));
    assert!(refused.contains("authentication failure"), "{refused}");
    assert!(!refused.contains("a-wrong-secret-00"), "{refused}");
    let from_env = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(["inquiry", &url(port, None)])
        .env("LUNLOCK_CHAP_SECRET", OLD_SECRET)
        .output()
        .unwrap();
    assert!(ok(from_env).contains("LUNLOCK"));

    let runtime = support::runtime();
    let kept = runtime.block_on(chap_session(port, "iqn.2026-12.test:kept", OLD_SECRET));
    let dropped = runtime.block_on(chap_session(port, "iqn.2026-12.test:dropped", OLD_SECRET));

    // Rotate the secret: new logins need the new one; the sessions that proved the old one stay.
    write_secret(dir.path(), NEW_SECRET);
    hangup(&daemon);
    eventually("the rotated secret taking effect", || {
        lunlock(&["inquiry", &url(port, Some(NEW_SECRET))])
            .status
            .success()
    });
    failed(lunlock(&["inquiry", &url(port, Some(OLD_SECRET))]));
    assert!(runtime.block_on(ready(&kept)) && runtime.block_on(ready(&dropped)));

    // Narrow the allow-list: the session of the initiator left out is closed, the other keeps working.
    write_config(dir.path(), port, Some("iqn.2026-12.test:kept"));
    hangup(&daemon);
    eventually("the session left out being closed", || {
        !runtime.block_on(ready(&dropped))
    });
    assert!(runtime.block_on(ready(&kept)));
}
