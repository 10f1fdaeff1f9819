//! `lunlock admin URL ...`: the admin API of a running target (docs/admin.md), as tables or, with `--json`, as
//! the API's own JSON.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The admin listener, e.g. http://127.0.0.1:9260
    url: String,
    #[command(subcommand)]
    what: AdminCommand,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The bearer token's file (mode 0600), for a target whose admin API is not on loopback.
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// Targets and their LUNs: size, backing, flags, commands, reservation.
    Luns,
    /// Sessions: initiator, ISID, target, portal, since, commands in flight.
    Sessions,
    /// A LUN's persistent reservation state: generation, registrations with their TransportIDs, holder, type.
    Reservations { target: String, lun: u64 },
    /// A target's fault rules; --set adds one, --clear removes them all (fault injection must be enabled).
    Faults {
        target: String,
        /// A rule to add, in the form of docs/fault-injection.md (e.g. caw:delay=200).
        #[arg(long, value_name = "RULE")]
        set: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// The raw Prometheus exposition.
    Metrics,
}

/// The failures `lunlock admin` reports, one line each.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: HTTP {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: the answer is not the API's JSON: {reason}")]
    Malformed { url: String, reason: String },
    #[error("token file {}: {reason}", path.display())]
    Token { path: PathBuf, reason: String },
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(args: &AdminArgs) -> Result<Client, AdminClientError> {
        let token = match &args.token_file {
            Some(path) => Some(lunlock_server::admin::read_token(path).map_err(|e| {
                AdminClientError::Token {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        Ok(Client {
            base: args.url.trim_end_matches('/').to_string(),
            token,
            agent,
        })
    }

    /// Sends a request and returns the body of a 2xx answer; any other status is an error with the API's reason.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<String, AdminClientError> {
        let url = format!("{}{path}", self.base);
        let failed = |source: ureq::Error| AdminClientError::Request {
            url: url.clone(),
            source: Box::new(source),
        };
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut response = match (method, body) {
            ("POST", Some(body)) => {
                let mut request = self.agent.post(&url);
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                request.send_json(body)
            }
            ("DELETE", _) => {
                let mut request = self.agent.delete(&url);
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                request.call()
            }
            _ => {
                let mut request = self.agent.get(&url);
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                request.call()
            }
        }
        .map_err(failed)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(failed)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(AdminClientError::Refused {
                url,
                status,
                message,
            });
        }
        Ok(text)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminClientError> {
        let text = self.send(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| AdminClientError::Malformed {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })
    }
}

/// Path segments are the target's IQN, which has colons and dots but nothing that needs escaping in a path;
/// anything else is percent-encoded.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn main(args: &AdminArgs) -> Result<(), String> {
    run(args).map_err(|e| e.to_string())
}

fn run(args: &AdminArgs) -> Result<(), AdminClientError> {
    let client = Client::new(args)?;
    let output = match &args.what {
        AdminCommand::Metrics => client.send("GET", "/metrics", None)?,
        AdminCommand::Luns => {
            let targets = client.json("GET", "/api/v1/targets", None)?;
            shown(args.json, &targets, luns_table)
        }
        AdminCommand::Sessions => {
            let sessions = client.json("GET", "/api/v1/sessions", None)?;
            shown(args.json, &sessions, sessions_table)
        }
        AdminCommand::Reservations { target, lun } => {
            let path = format!(
                "/api/v1/targets/{}/luns/{lun}/reservations",
                segment(target)
            );
            let state = client.json("GET", &path, None)?;
            shown(args.json, &state, reservations_text)
        }
        AdminCommand::Faults { target, set, clear } => {
            let path = format!("/api/v1/targets/{}/faults", segment(target));
            if *clear {
                client.json("DELETE", &path, None)?;
            }
            if let Some(rule) = set {
                client.json("POST", &path, Some(serde_json::json!({ "rule": rule })))?;
            }
            let faults = client.json("GET", &path, None)?;
            shown(args.json, &faults, faults_table)
        }
    };
    print!("{output}");
    if !output.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn shown(json: bool, value: &Value, table: fn(&Value) -> String) -> String {
    if json {
        serde_json::to_string_pretty(value).unwrap_or_default()
    } else {
        table(value)
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn luns_table(targets: &Value) -> String {
    let mut table = new_table(&[
        "target",
        "LUN",
        "size",
        "backing",
        "flags",
        "commands",
        "reservation",
        "registrations",
    ]);
    for target in items(targets) {
        for lun in items(&target["luns"]) {
            let flags: Vec<&str> = [
                ("read_only", "ro"),
                ("direct_io", "direct"),
                ("thin_provisioned", "thin"),
            ]
            .iter()
            .filter(|(key, _)| lun[*key].as_bool() == Some(true))
            .map(|(_, flag)| *flag)
            .collect();
            let pr = &lun["persistent_reservations"];
            let reservation = match &pr["reservation"] {
                Value::Null => "-".to_string(),
                r => format!("type {} by {}", text(&r["type_code"]), text(&r["holder"])),
            };
            table.add_row(vec![
                text(&target["name"]),
                text(&lun["id"]),
                format!("{} MiB", lun["size_bytes"].as_u64().unwrap_or(0) >> 20),
                text(&lun["backing"]),
                flags.join(","),
                text(&lun["counters"]["commands"]),
                reservation,
                items(&pr["registrations"]).len().to_string(),
            ]);
        }
    }
    table.to_string()
}

fn sessions_table(sessions: &Value) -> String {
    let mut table = new_table(&["initiator", "ISID", "target", "peer", "portal", "in flight"]);
    for session in items(sessions) {
        table.add_row(
            [
                "initiator",
                "isid",
                "target",
                "peer",
                "portal",
                "commands_in_flight",
            ]
            .map(|key| text(&session[key])),
        );
    }
    table.to_string()
}

fn reservations_text(state: &Value) -> String {
    let mut out = format!(
        "generation {}, APTPL {}\n",
        text(&state["generation"]),
        if state["aptpl"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        }
    );
    match &state["reservation"] {
        Value::Null => out.push_str("no reservation\n"),
        r => out.push_str(&format!(
            "reservation: {} (type {}), key {}, held by {}\n",
            text(&r["type_name"]),
            text(&r["type_code"]),
            text(&r["key"]),
            text(&r["holder"])
        )),
    }
    let mut table = new_table(&["key", "TransportID", "target port", "holder"]);
    for registration in items(&state["registrations"]) {
        table.add_row(vec![
            text(&registration["key"]),
            text(&registration["transport_id"]),
            match &registration["relative_target_port"] {
                Value::Null => "all".to_string(),
                port => text(port),
            },
            if registration["holder"].as_bool() == Some(true) {
                "yes"
            } else {
                ""
            }
            .to_string(),
        ]);
    }
    out + &table.to_string()
}

fn faults_table(faults: &Value) -> String {
    let enabled = faults["enabled"].as_bool() == Some(true);
    let mut table = new_table(&["rule", "matched", "hits"]);
    for rule in items(&faults["rules"]) {
        table.add_row(["rule", "matched", "hits"].map(|key| text(&rule[key])));
    }
    format!(
        "fault injection {}\n{table}",
        if enabled { "enabled" } else { "not enabled" }
    )
}
