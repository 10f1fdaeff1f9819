//! The admin listener against the real binary: `/metrics` parses as Prometheus text and moves with traffic, the
//! API reports the PR state that `lunlock persist` reads, requests from other origins or host names are refused,
//! a non-loopback listener demands its token, and a taken admin port stops the start with its address.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use support::{free_port, lunlock, ok, serve_command_without_admin, wait_for_port, LoggingDaemon};

const TARGET: &str = "iqn.2026-11.io.lunlock:default";

struct Served {
    _daemon: LoggingDaemon,
    url: String,
    admin: String,
    _dir: tempfile::TempDir,
}

/// `lunlock serve` with `extra` arguments; its admin listener on a free loopback port unless `extra` names one.
fn serve(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = serve_command_without_admin(port, dir.path());
    if !extra.contains(&"--admin") {
        command.args(["--admin", "127.0.0.1:0"]);
    }
    command.args(extra).stdout(Stdio::null());
    let daemon = LoggingDaemon::spawn(&mut command);
    wait_for_port(port);
    let admin = daemon.admin_url();
    Served {
        _daemon: daemon,
        url: format!("iscsi://127.0.0.1:{port}/{TARGET}/0"),
        admin,
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET with extra headers: (status, body).
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().expect("HTTP GET");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn json(url: &str) -> serde_json::Value {
    let (status, body) = get(url, &[]);
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A request written by hand, for a Host header no client library would send.
fn raw_status(admin: &str, request: &str) -> u16 {
    let address = admin.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn scrape(admin: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(&format!("{admin}/metrics"), &[]);
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|line| Ok(line.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses")
}

/// The value of the sample `name` whose labels include every pair of `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name} {labels:?} in {:?}",
        scrape.samples.iter().map(|s| &s.metric).collect::<Vec<_>>()
    );
    found[0]
}

/// Two COMPARE AND WRITEs of block 8 from zeros: the first matches and writes ones, the second then miscompares.
fn good_then_miscompare(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("caw");
    let mut both = vec![0u8; 512];
    both.extend_from_slice(&[1u8; 512]);
    std::fs::write(&data, &both).unwrap();
    let path = data.to_str().unwrap();
    ok(lunlock(&["caw", url, "--lba", "8", "--in", path]));
    let second = lunlock(&["caw", url, "--lba", "8", "--in", path]);
    assert_eq!(second.status.code(), Some(14), "a miscompare: {second:?}");
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let served = serve(&[]);
    ok(lunlock(&["inquiry", &served.url]));
    let before = scrape(&served.admin);
    let inquiries = sample(&before, "lunlock_commands_total", &[("opcode", "INQUIRY")]);
    ok(lunlock(&["inquiry", &served.url]));
    ok(lunlock(&[
        "persist",
        "--out",
        "--register",
        "--param-sark=0x1234",
        &served.url,
    ]));
    good_then_miscompare(&served.url);
    let after = scrape(&served.admin);
    assert!(sample(&after, "lunlock_commands_total", &[("opcode", "INQUIRY")]) > inquiries);
    assert_eq!(
        sample(
            &after,
            "lunlock_compare_and_write_total",
            &[("outcome", "good")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "lunlock_compare_and_write_total",
            &[("outcome", "miscompare")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "lunlock_pr_out_total",
            &[("service_action", "REGISTER")]
        ),
        1.0
    );
    assert_eq!(
        sample(&after, "lunlock_written_bytes_total", &[("lun", "0")]),
        512.0
    );
    assert!(sample(&after, "lunlock_logins_total", &[("result", "success")]) >= 4.0);
    assert!(sample(&after, "lunlock_unit_attentions_established_total", &[]) >= 0.0);
    let caw_latency = [("class", "compare_and_write")];
    assert_eq!(
        sample(
            &after,
            "lunlock_command_duration_seconds_count",
            &caw_latency
        ),
        2.0
    );
    let histogram = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "lunlock_command_duration_seconds"
                && s.labels.get("class") == Some("compare_and_write")
        })
        .expect("the CAW latency histogram");
    assert!(
        matches!(&histogram.value, prometheus_parse::Value::Histogram(buckets) if buckets.len() == 17),
        "16 bounds and +Inf: {:?}",
        histogram.value
    );
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "lunlock_build_info"));
}

/// The registrations and reservation `lunlock persist --in --read-full-status` prints: (keys, holder's
/// TransportID, type text, generation).
fn persist_view(url: &str) -> (Vec<u64>, String, String, u64) {
    let text = ok(lunlock(&["persist", "--in", "--read-full-status", url]));
    let mut keys = Vec::new();
    let (mut holder, mut kind, mut generation) = (String::new(), String::new(), 0);
    let mut holding = false;
    for line in text.lines().map(str::trim) {
        if let Some(hex) = line.strip_prefix("PR generation=0x") {
            generation = u64::from_str_radix(hex, 16).unwrap();
        } else if let Some(hex) = line.strip_prefix("Key=0x") {
            keys.push(u64::from_str_radix(hex, 16).unwrap());
            holding = false;
        } else if line.contains("Reservation holder") {
            holding = true;
        } else if let Some(rest) = line.strip_prefix("scope: LU_SCOPE,  type: ") {
            kind = rest.to_string();
        } else if let Some(id) = line.strip_prefix("iSCSI world wide unique port id: ") {
            if holding {
                holder = id.to_string();
            }
        }
    }
    (keys, holder, kind, generation)
}

#[test]
fn the_api_reports_the_reservation_state_lunlock_persist_reads() {
    let served = serve(&[]);
    let url = &served.url;
    ok(lunlock(&[
        "persist",
        "--out",
        "--register",
        "--param-sark=0xaaa1",
        url,
    ]));
    let other = ["--initiator-name", "iqn.2026-12.io.lunlock:admin-test-b"];
    ok(lunlock(
        &[
            &["persist", "--out", "--register", "--param-sark=0xbbb2"][..],
            &other,
            &[url],
        ]
        .concat(),
    ));
    ok(lunlock(&[
        "persist",
        "--out",
        "--reserve",
        "--param-rk=0xaaa1",
        "--prout-type=5",
        url,
    ]));
    let (keys, holder, kind, generation) = persist_view(url);
    let api = json(&format!(
        "{}/api/v1/targets/{TARGET}/luns/0/reservations",
        served.admin
    ));
    let api_keys: Vec<u64> = api["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            u64::from_str_radix(r["key"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
        })
        .collect();
    assert_eq!(api_keys, keys);
    assert_eq!(api["generation"].as_u64(), Some(generation));
    assert_eq!(api["reservation"]["holder"].as_str(), Some(holder.as_str()));
    assert_eq!(
        api["reservation"]["type_name"].as_str(),
        Some(kind.as_str())
    );
    assert_eq!(api["reservation"]["type_code"].as_u64(), Some(5));
    let holders: Vec<bool> = api["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["holder"].as_bool().unwrap())
        .collect();
    assert_eq!(holders, [true, false]);
    // The same state through `lunlock admin`, as JSON and as a table.
    let shown = ok(lunlock(&[
        "admin",
        &served.admin,
        "--json",
        "reservations",
        TARGET,
        "0",
    ]));
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown, api);
    let table = ok(lunlock(&[
        "admin",
        &served.admin,
        "reservations",
        TARGET,
        "0",
    ]));
    assert!(
        table.contains(&holder) && table.contains("0x000000000000bbb2"),
        "{table}"
    );
    let sessions = json(&format!("{}/api/v1/sessions", served.admin));
    assert_eq!(
        sessions.as_array().map(Vec::len),
        Some(0),
        "one-shot sessions have logged out"
    );
}

#[test]
fn requests_for_other_host_names_or_from_other_origins_are_refused() {
    let served = serve(&[]);
    let admin = &served.admin;
    let host = admin.trim_start_matches("http://");
    let status = |request: String| raw_status(admin, &request);
    let plain = format!("GET /api/v1/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert_eq!(status(plain), 200);
    let rebound =
        "GET /api/v1/status HTTP/1.1\r\nHost: attacker.example:9260\r\nConnection: close\r\n\r\n";
    assert_eq!(
        status(rebound.to_string()),
        421,
        "a DNS name in Host (DNS rebinding)"
    );
    let cross = format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: {host}\r\nOrigin: http://attacker.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status(cross), 403);
    let same = format!("GET /api/v1/status HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nConnection: close\r\n\r\n");
    assert_eq!(status(same), 200, "the status page's own requests");
    // Without fault injection there is no request that changes state.
    let post = format!(
        "POST /api/v1/targets/{TARGET}/faults HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(status(post), 405);
}

#[test]
fn fault_rules_are_set_and_cleared_only_from_the_same_origin() {
    let served = serve(&["--enable-fault-injection"]);
    let admin = &served.admin;
    let host = admin.trim_start_matches("http://");
    let body = r#"{"rule":"caw:delay=5"}"#;
    let post = |origin: &str| {
        format!(
            "POST /api/v1/targets/{TARGET}/faults HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    assert_eq!(
        raw_status(admin, &post("Origin: http://attacker.example\r\n")),
        403,
        "CSRF"
    );
    assert_eq!(raw_status(admin, &post("")), 201);
    let listed = ok(lunlock(&["admin", admin, "--json", "faults", TARGET]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["rules"][0]["rule"].as_str(),
        Some("caw:delay=5:100%")
    );
    let cleared = ok(lunlock(&[
        "admin", admin, "--json", "faults", TARGET, "--clear",
    ]));
    let cleared: serde_json::Value = serde_json::from_str(&cleared).unwrap();
    assert_eq!(cleared["rules"].as_array().map(Vec::len), Some(0));
    let refused = lunlock(&["admin", admin, "faults", TARGET, "--set", "caw:explode"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("422"),
        "{refused:?}"
    );
}

#[test]
fn a_listener_beyond_loopback_demands_a_bearer_token_from_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let refused = support::failed(lunlock(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--admin",
        "0.0.0.0:0",
    ]));
    assert!(
        refused.contains("--admin-token-file") && refused.contains("0.0.0.0:0"),
        "{refused}"
    );
    let token_file = dir.path().join("token");
    let token = "4f1c2b7d9e0a3c5b8d6f1e2a4c7b9d0e";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let served = serve(&[
        "--admin",
        "0.0.0.0:0",
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ]);
    let admin = served.admin.replace("0.0.0.0", "127.0.0.1");
    assert_eq!(get(&format!("{admin}/metrics"), &[]).0, 401);
    assert_eq!(
        get(
            &format!("{admin}/api/v1/status"),
            &[("Authorization", "Bearer wrong")]
        )
        .0,
        401
    );
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(
            &format!("{admin}/api/v1/status"),
            &[("Authorization", &bearer)]
        )
        .0,
        200
    );
    assert_eq!(
        get(&format!("{admin}/"), &[]).0,
        200,
        "the page loads, then asks for the token"
    );
    let luns = ok(lunlock(&[
        "admin",
        &admin,
        "--token-file",
        token_file.to_str().unwrap(),
        "luns",
    ]));
    assert!(luns.contains(TARGET), "{luns}");
}

#[test]
fn a_taken_admin_port_stops_the_start_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin",
            &address,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = support::failed(output);
    assert!(
        stderr.contains(&format!("cannot listen for the admin API on {address}")),
        "{stderr}"
    );
}

#[test]
fn the_target_reads_a_lockspace_and_reports_its_hosts() {
    let served = serve(&[]);
    let url = &served.url;
    ok(lunlock(&[
        "lock",
        "format",
        url,
        "--slots",
        "4",
        "--locks",
        "4",
        "--heartbeat-ms",
        "200",
        "--dead-after-ms",
        "2000",
    ]));
    let mut heartbeat = Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(["lock", "heartbeat", "--host-name", "<b>host-a</b>", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_url = format!("{}/api/v1/status", served.admin);
    let mut state = String::new();
    for _ in 0..100 {
        let status = json(&status_url);
        let hosts = &status["targets"][0]["luns"][0]["lockspace"]["hosts"];
        state = hosts[0]["state"].as_str().unwrap_or("").to_string();
        if state == "alive" {
            assert_eq!(hosts[0]["host"].as_str(), Some("<b>host-a</b>"));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = heartbeat.kill();
    let _ = heartbeat.wait();
    assert_eq!(state, "alive");
}
