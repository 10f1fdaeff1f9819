//! `lunlock`: the target daemon (`serve`) and client commands over lunlock's own initiator.

mod admin;
mod bench;
mod caw;
mod client;
mod fault;
mod lock;
mod logging;
mod netfuzz;
mod persist;
mod progress;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lunlock",
    version,
    about = "Shared-disk arbitration: an iSCSI target with exact reservations and ATS, and its clients"
)]
struct Cli {
    #[command(subcommand)]
    command: TopLevel,
}

/// The commands: those `client::run` serves, plus target administration.
#[derive(Subcommand)]
enum TopLevel {
    #[command(flatten)]
    Standard(Command),
    /// Add, list or clear a running target's injected faults (docs/fault-injection.md).
    Fault {
        /// iscsi://host[:port]/target-iqn/lun
        url: String,
        /// Rules to add: [port=N:][lun=N:]OPCODE:ACTION[:PROBABILITY%], e.g. caw:drop-response:5%.
        specs: Vec<String>,
        /// Remove every rule (before adding SPECs, if any).
        #[arg(long)]
        clear: bool,
        /// Print the rules with their counters (the default with no SPEC and no --clear).
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        nexus: OneShotOptions,
    },
    /// A running target's admin API: LUNs, sessions, reservations, fault rules, metrics (docs/admin.md).
    Admin(admin::AdminArgs),
    /// One COMPARE AND WRITE, as sg_compare_and_write: exit status 14 on a miscompare.
    Caw(caw::CawArgs),
    /// Load generator: K sessions x QD commands of a workload (random/sequential I/O, COMPARE AND WRITE, heartbeats).
    Bench(Box<bench::BenchArgs>),
    /// Network fuzzer: logs in and sends random, mostly well-sequenced PDUs, checking after each burst that
    /// another session still reads (docs/fuzzing.md).
    Fuzz(Box<netfuzz::FuzzArgs>),
    /// The ATS lock manager: lockspace format, heartbeats, locks, status, demo (docs/lockspace-format.md).
    Lock {
        #[command(subcommand)]
        command: lock::LockCommand,
        #[command(flatten)]
        globals: lock::LockGlobals,
    },
}

/// Options shared by the client commands.
#[derive(clap::Args, Clone)]
struct ClientOptions {
    /// iSCSI initiator name to log in with.
    #[arg(long, default_value = lunlock_initiator::DEFAULT_INITIATOR_NAME)]
    initiator_name: String,
    /// Negotiate CRC32C header digests.
    #[arg(long)]
    header_digest: bool,
    /// Negotiate CRC32C data digests.
    #[arg(long)]
    data_digest: bool,
}

/// The I_T nexus of a one-shot command (one session, logged out when the command ends): the initiator name and an
/// ISID, by default the name's default ISID, the same for every one-shot command (`lunlock_initiator::isid`). So
/// `persist`, `read`, `write`, `caw`, `inquiry`, `readcap` and `fault` run under one initiator name are one
/// initiator port, and a key one registers is the others' too.
#[derive(clap::Args, Clone)]
struct OneShotOptions {
    #[command(flatten)]
    client: ClientOptions,
    /// ISID to log in with, 6 bytes in hex (e.g. 0x400001370000) [default: derived from the initiator name].
    #[arg(long, value_name = "ISID", value_parser = lunlock_initiator::isid::parse_isid)]
    isid: Option<[u8; 6]>,
}

impl OneShotOptions {
    /// The ISID to log in with: `--isid`, or the initiator name's default ISID.
    fn isid(&self) -> [u8; 6] {
        self.isid
            .unwrap_or_else(|| lunlock_initiator::isid::default_isid(&self.client.initiator_name))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the iSCSI target (defaults: one sparse 1 GiB LUN under ./lunlock-data on 127.0.0.1:3260).
    Serve {
        /// Portal to listen on (repeatable: several portals give several paths).
        #[arg(long = "listen", value_name = "ADDR:PORT")]
        listen: Vec<std::net::SocketAddr>,
        /// Data directory for LUN images and identities.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Size of LUN 0 when it is created (e.g. 1G, 512M, 4096).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        lun_size: Option<u64>,
        /// iSCSI name of the target.
        #[arg(long, value_name = "IQN")]
        target_name: Option<String>,
        /// TOML configuration file (several targets, LUNs, portals and allow-lists; see docs/config.md).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Permit non-loopback portals for targets without an initiator allow-list.
        #[arg(long)]
        allow_any_initiator: bool,
        /// Inject a fault into the default target (repeatable; docs/fault-injection.md), e.g. caw:busy:5%.
        #[arg(long = "fault", value_name = "SPEC", value_parser = parse_fault)]
        faults: Vec<lunlock_server::fault::FaultRule>,
        /// Accept `lunlock fault` commands even with no --fault given.
        #[arg(long)]
        enable_fault_injection: bool,
        /// Connections served at once over all portals (default 1024; overrides the file's max_connections).
        #[arg(long, value_name = "N")]
        max_connections: Option<usize>,
        /// Record how long the locks shared by a LUN's sessions are held; write the histograms to FILE as JSON at
        /// shutdown.
        #[arg(long, value_name = "FILE")]
        lock_stats: Option<PathBuf>,
        /// I/O engine for READ and WRITE: uring or threads (default: io_uring when it works here).
        #[arg(long, value_name = "ENGINE")]
        io_engine: Option<lunlock_server::engine::IoEngineKind>,
        /// Log lines as text or as JSON objects, on stderr.
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        log_format: logging::LogFormat,
        /// The least severe events logged (RUST_LOG, when set, takes precedence: e.g. warn,lunlock_server=debug).
        #[arg(long, value_name = "LEVEL", default_value = "info")]
        log_level: logging::LogLevel,
        /// Scheduling of the threads that run COMPARE AND WRITE and PERSISTENT RESERVE OUT: realtime (SCHED_FIFO
        /// 1, falling back to nice -10 without CAP_SYS_NICE) or normal.
        #[arg(long, value_name = "PRIORITY", default_value = "realtime")]
        arbitration_priority: lunlock_server::engine::ThreadPriority,
        /// Where the admin listener serves /metrics, the JSON API and the status page: ADDR:PORT, or none
        /// (default 127.0.0.1:9260; 127.0.0.1:0 picks a free port and logs it).
        #[arg(long, value_name = "ADDR:PORT|none", default_value = lunlock_server::admin::DEFAULT_ADMIN_ADDRESS, value_parser = parse_admin)]
        admin: AdminListen,
        /// The admin API's bearer token, in a file of mode 0600: required when --admin is not a loopback address.
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// List the targets and portals behind a portal (SendTargets).
    Discover {
        /// iscsi://host[:port]
        url: String,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Show a LUN's identity: vendor, product, revision, serial, NAA designator.
    Inquiry {
        /// iscsi://host[:port]/target-iqn/lun
        url: String,
        #[command(flatten)]
        nexus: OneShotOptions,
    },
    /// Show a LUN's capacity.
    Readcap {
        url: String,
        #[command(flatten)]
        nexus: OneShotOptions,
    },
    /// Read blocks: a hex dump to stdout, or raw bytes to a file.
    Read {
        url: String,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Write the raw blocks here instead of dumping them.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        nexus: OneShotOptions,
    },
    /// Write a file to the LUN, starting at a block.
    Write {
        url: String,
        #[arg(short = 'i', long = "input", value_name = "FILE")]
        input: PathBuf,
        #[arg(long, default_value_t = 0)]
        lba: u64,
        #[command(flatten)]
        nexus: OneShotOptions,
    },
    /// PERSISTENT RESERVE IN/OUT with sg_persist's options, output and exit statuses (`lunlock persist -h`).
    #[command(disable_help_flag = true)]
    Persist {
        /// sg_persist's options and the device URL, iscsi://host[:port]/target-iqn/lun.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true, num_args = 0..)]
        args: Vec<String>,
    },
}

fn parse_fault(text: &str) -> Result<lunlock_server::fault::FaultRule, String> {
    lunlock_server::fault::FaultRule::parse(text).map_err(|e| e.to_string())
}

fn parse_size(text: &str) -> Result<u64, String> {
    lunlock_server::parse_size(text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, TopLevel::Standard(Command::Serve { .. })) {
        if let Err(message) = logging::init_client() {
            eprintln!("lunlock: {message}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        TopLevel::Fault {
            url,
            specs,
            clear,
            list,
            nexus,
        } => fault::run(&url, &nexus, &fault::FaultRequest { specs, clear, list }),
        TopLevel::Lock { command, globals } => lock::run(command, &globals, &globals.client()),
        TopLevel::Caw(args) => return caw::main(args),
        TopLevel::Admin(args) => admin::main(&args),
        TopLevel::Bench(args) => return bench::main(*args),
        TopLevel::Fuzz(args) => return netfuzz::main(*args),
        TopLevel::Standard(Command::Serve {
            listen,
            data_dir,
            lun_size,
            target_name,
            config,
            allow_any_initiator,
            faults,
            enable_fault_injection,
            max_connections,
            lock_stats,
            io_engine,
            arbitration_priority,
            log_format,
            log_level,
            admin,
            admin_token_file,
        }) => {
            if let Err(message) = logging::init(log_format, log_level) {
                eprintln!("lunlock: {message}");
                return ExitCode::FAILURE;
            }
            let defaults = lunlock_server::ServeOptions::default();
            let options = lunlock_server::ServeOptions {
                listen: if listen.is_empty() {
                    defaults.listen
                } else {
                    listen
                },
                data_dir: data_dir.unwrap_or(defaults.data_dir),
                lun_size_bytes: lun_size.unwrap_or(defaults.lun_size_bytes),
                target_name: target_name.unwrap_or(defaults.target_name),
                config,
                allow_any_initiator,
                faults,
                enable_fault_injection,
                max_connections,
                lock_stats,
                io_engine,
                arbitration_priority,
                admin: lunlock_server::admin::AdminSettings {
                    listen: admin.0,
                    token_file: admin_token_file,
                },
            };
            lunlock_server::run_blocking(options).map_err(|e| e.to_string())
        }
        TopLevel::Standard(Command::Persist { args }) => return persist::main(&args),
        TopLevel::Standard(client_command) => client::run(client_command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lunlock: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `--admin`: an address, or none.
#[derive(Clone, Debug)]
struct AdminListen(Option<std::net::SocketAddr>);

fn parse_admin(text: &str) -> Result<AdminListen, String> {
    if text == "none" {
        return Ok(AdminListen(None));
    }
    text.parse()
        .map(|address| AdminListen(Some(address)))
        .map_err(|_| format!("{text:?} is not ADDR:PORT (e.g. 127.0.0.1:9260) or none"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "iscsi://127.0.0.1/iqn.x:t/0";

    fn one_shot(args: &[&str]) -> Result<OneShotOptions, String> {
        let line = [&["lunlock", "inquiry", URL][..], args].concat();
        match Cli::try_parse_from(line)
            .map_err(|e| e.to_string())?
            .command
        {
            TopLevel::Standard(Command::Inquiry { nexus, .. }) => Ok(nexus),
            _ => Err("not an inquiry".into()),
        }
    }

    #[test]
    fn one_shot_commands_default_to_the_names_isid_and_take_isid() {
        let named = one_shot(&["--initiator-name", "iqn.a"]).unwrap();
        assert_eq!(named.isid(), lunlock_initiator::isid::default_isid("iqn.a"));
        let chosen = one_shot(&["--isid", "0x400001370000"]).unwrap();
        assert_eq!(chosen.isid(), [0x40, 0, 0x01, 0x37, 0, 0]);
    }

    #[test]
    fn bad_isids_are_refused_in_plain_words() {
        let short = one_shot(&["--isid", "0x1234"]).err().unwrap();
        assert!(short.contains("is not 6 bytes in hex"), "{short}");
        let reserved = one_shot(&["--isid", "0xc00000000000"]).err().unwrap();
        assert!(reserved.contains("11b is reserved"), "{reserved}");
    }

    #[test]
    fn every_one_shot_command_takes_isid() {
        for command in [
            &["inquiry", URL][..],
            &["readcap", URL],
            &["read", URL],
            &["write", URL, "-i", "f"],
            &["caw", URL, "--lba", "0", "--in", "f"],
            &["fault", URL, "--list"],
        ] {
            let line = [&["lunlock"][..], command, &["--isid", "0x800000000001"]].concat();
            assert!(Cli::try_parse_from(&line).is_ok(), "{line:?}");
        }
    }
}
