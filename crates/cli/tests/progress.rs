//! Progress bars: `lunlock write` and `read` of large files, and `lock format`, draw one on a terminal only.
//! The terminal is a real pseudo-terminal from util-linux's `script`.

mod support;

use std::process::{Command, Stdio};
use support::{free_port, lunlock, ok, wait_for_port, Daemon};

/// Runs `lunlock ARGS` with a pseudo-terminal as its stdout and stderr; returns what the terminal showed.
fn on_a_terminal(args: &[&str]) -> String {
    let line = std::iter::once(env!("CARGO_BIN_EXE_lunlock"))
        .chain(args.iter().copied())
        .map(|arg| format!("'{arg}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script(1) from util-linux");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn large_transfers_draw_a_bar_on_a_terminal_and_nothing_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _daemon = Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_lunlock"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--lun-size",
                "128M",
            ])
            .args(["--admin", "none", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    let url = format!("iscsi://127.0.0.1:{port}/iqn.2026-11.io.lunlock:default/0");
    let image = dir.path().join("image");
    std::fs::write(&image, vec![7u8; 32 << 20]).unwrap();
    let image = image.to_str().unwrap();

    let piped = lunlock(&["write", &url, "-i", image]);
    assert!(piped.status.success(), "{piped:?}");
    assert!(
        piped.stderr.is_empty(),
        "no bar when stderr is not a terminal: {:?}",
        String::from_utf8_lossy(&piped.stderr)
    );

    let shown = on_a_terminal(&["write", &url, "-i", image]);
    assert!(
        shown.contains("%") && shown.contains("MiB/32.00 MiB"),
        "a bar on the terminal: {shown:?}"
    );
    let copy = dir.path().join("copy");
    let copy = copy.to_str().unwrap();
    let shown = on_a_terminal(&["read", &url, "--lba", "0", "--count", "65536", "-o", copy]);
    assert!(shown.contains("MiB/32.00 MiB"), "{shown:?}");
    assert_eq!(std::fs::read(copy).unwrap(), std::fs::read(image).unwrap());

    let format = [
        "lock", "format", &url, "--lba", "70000", "--slots", "2048", "--locks", "65536",
    ];
    let shown = on_a_terminal(&format);
    assert!(
        shown.contains("MiB/33.00 MiB") && shown.contains("formatted lockspace"),
        "{shown:?}"
    );
    let again = ok(lunlock(&[&format[..], &["--force"]].concat()));
    assert!(again.starts_with("formatted lockspace"), "{again:?}");
}
