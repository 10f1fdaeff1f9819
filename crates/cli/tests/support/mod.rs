//! Helpers shared by the integration tests that run the real `lunlock` binary.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// The runtime an in-process target runs on while the test runs the binary.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `lunlock ARGS...` to the end.
pub fn lunlock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(args)
        .output()
        .expect("run lunlock")
}

/// Expects success; returns stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "lunlock failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Expects a failure; returns stderr.
pub fn failed(output: Output) -> String {
    assert!(
        !output.status.success(),
        "lunlock succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

/// A TCP port free on 127.0.0.1 at the time of asking, for a daemon the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on 127.0.0.1:`port` (a daemon the test started), or panics after 20 s (a
/// generous bound: the whole suite runs beside it).
pub fn wait_for_port(port: u16) {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("lunlock serve did not listen on {port}");
}

/// `lunlock serve` with the embedded default target (a 16 MiB LUN) on 127.0.0.1:`port`, its data in `data_dir`,
/// and its admin listener on a free loopback port (never the default one, which parallel tests would share).
pub fn serve_command(port: u16, data_dir: &Path) -> Command {
    let mut command = serve_command_without_admin(port, data_dir);
    command.args(["--admin", "127.0.0.1:0"]);
    command
}

/// [`serve_command`] with no `--admin`, for a test that gives its own.
pub fn serve_command_without_admin(port: u16, data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lunlock"));
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--lun-size",
            "16M",
        ])
        .arg("--data-dir")
        .arg(data_dir);
    command
}

/// A daemon the test started. Dropping it kills it, so a failing assertion does not leave it running (holding its
/// port, its files, or a file system the test mounted).
pub struct Daemon(Option<std::process::Child>);

impl Daemon {
    pub fn spawn(command: &mut Command) -> Daemon {
        Daemon(Some(command.spawn().expect("start lunlock serve")))
    }

    /// Sends signal `name` ("TERM", "INT", ...).
    pub fn signal(&self, name: &str) {
        let child = self.0.as_ref().expect("running");
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{name} {} failed", child.id());
    }

    /// Asks the daemon to shut down (SIGTERM) and waits for it: its exit status and what it wrote.
    pub fn stop(self) -> Output {
        self.signal("TERM");
        self.wait()
    }

    /// Waits for the daemon to exit (after a signal the test sent): its exit status and what it wrote.
    pub fn wait(mut self) -> Output {
        let child = self.0.take().expect("running");
        child.wait_with_output().expect("wait for lunlock serve")
    }
}

/// A daemon whose stderr the test reads: the admin listener's address, logged at start, and the log so far.
pub struct LoggingDaemon {
    pub daemon: Daemon,
    /// Lines of stderr read so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoggingDaemon {
    /// Spawns `command` with stderr piped, and keeps reading it on a thread (so the pipe never fills).
    pub fn spawn(command: &mut Command) -> LoggingDaemon {
        use std::io::BufRead;
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start lunlock serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        });
        LoggingDaemon {
            daemon: Daemon(Some(child)),
            log,
        }
    }

    /// Waits up to 20 s for a log line containing `needle`, and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        for _ in 0..400 {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no log line with {needle:?}: {:?}",
            self.log.lock().unwrap()
        );
    }

    /// The admin listener's base URL, e.g. http://127.0.0.1:40123, from the line the daemon logs at start.
    pub fn admin_url(&self) -> String {
        let line = self.wait_for_line("status page on http://");
        let start = line.find("http://").expect("a URL");
        let url: String = line[start..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        url.trim_end_matches('/').to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
