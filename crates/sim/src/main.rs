//! `lunlock-sim --seeds A..B [--steps N] [--faults LIST]`, or `--seed S` to replay one seed bit for bit.

use lunlock_cluster::BrokenVariant;
use lunlock_sim::{run_seed, FaultKind, SeedReport, SimOptions};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: lunlock-sim (--seeds A..B | --seed S) [--steps N] [--faults all|none|LIST] [--hosts N] \
[--echo] [--broken naive-resolver|ignore-dead-after|revive-lapsed-lease|unlocked-caw|oversized-atomic]
  --seeds A..B   run seeds A to B-1
  --seed S       replay one seed; with --echo print every event
  --steps N      events with faults on per seed (default 3800); a quiet phase follows
  --faults LIST  comma-separated: lost-request,lost-reply,delay,pause,host-crash,target-crash,partition,busy,miscompare";

struct Args {
    seeds: std::ops::Range<u64>,
    options: SimOptions,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut seeds = None;
    let mut options = SimOptions::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seeds" => {
                let text = value()?;
                let (a, b) = text
                    .split_once("..")
                    .ok_or_else(|| format!("--seeds {text}: expected A..B"))?;
                let a: u64 = a
                    .parse()
                    .map_err(|_| format!("--seeds {text}: bad start"))?;
                let b: u64 = b.parse().map_err(|_| format!("--seeds {text}: bad end"))?;
                if b <= a {
                    return Err(format!("--seeds {text}: the range is empty"));
                }
                seeds = Some(a..b);
            }
            "--seed" => {
                let text = value()?;
                let s: u64 = text
                    .parse()
                    .map_err(|_| format!("--seed {text}: not a number"))?;
                seeds = Some(s..s + 1);
            }
            "--steps" => {
                let text = value()?;
                options.steps = text
                    .parse()
                    .map_err(|_| format!("--steps {text}: not a number"))?;
            }
            "--hosts" => {
                let text = value()?;
                options.lock_hosts = text
                    .parse()
                    .ok()
                    .filter(|&n| (1..=32).contains(&n))
                    .ok_or_else(|| format!("--hosts {text}: 1 to 32"))?;
            }
            "--faults" => options.faults = parse_faults(value()?)?,
            "--echo" => options.echo = true,
            "--broken" => {
                let text = value()?;
                match text.as_str() {
                    "naive-resolver" => options.broken.naive_resolver = true,
                    "ignore-dead-after" => options.broken.ignore_dead_after = true,
                    "revive-lapsed-lease" => options.broken.revive_lapsed_lease = true,
                    "unlocked-caw" => options.broken_target.unlocked_compare_and_write = true,
                    "oversized-atomic" => options.broken_target.oversized_atomic_write = true,
                    _ => {
                        return Err(format!(
                        "--broken {text}: naive-resolver, ignore-dead-after, revive-lapsed-lease, unlocked-caw or oversized-atomic"
                    ))
                    }
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let seeds = seeds.ok_or_else(|| format!("give --seeds or --seed\n{USAGE}"))?;
    Ok(Args { seeds, options })
}

fn parse_faults(text: &str) -> Result<Vec<FaultKind>, String> {
    match text {
        "all" => Ok(FaultKind::ALL.to_vec()),
        "none" => Ok(Vec::new()),
        _ => text
            .split(',')
            .map(|name| {
                FaultKind::parse(name.trim())
                    .ok_or_else(|| format!("--faults: unknown fault {name}"))
            })
            .collect(),
    }
}

fn report_violation(report: &SeedReport) {
    println!("VIOLATION seed={} steps={}", report.seed, report.steps);
    for (step, message) in &report.violations {
        println!("  at step {step}: {message}");
    }
    println!("  last events:");
    for line in &report.trace {
        println!("    {line}");
    }
    println!(
        "  replay: cargo run --release -p lunlock-sim -- --seed {} --echo",
        report.seed
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let _ = BrokenVariant::default();
    let started = Instant::now();
    let (mut steps, mut faults, mut violations, mut seeds) = (0u64, 0u64, 0u64, 0u64);
    let (mut max_in_flight, mut lock_waits, mut out_of_order, mut aborted_in_flight) =
        (0u64, 0u64, 0u64, 0u64);
    let single = args.seeds.end - args.seeds.start == 1;
    for seed in args.seeds.clone() {
        let report = run_seed(seed, &args.options);
        seeds += 1;
        steps += report.steps;
        faults += report.faults;
        max_in_flight = max_in_flight.max(report.max_in_flight);
        lock_waits += report.lock_waits;
        out_of_order += report.out_of_order;
        aborted_in_flight += report.aborted_in_flight;
        if !report.violations.is_empty() {
            violations += report.violations.len() as u64;
            report_violation(&report);
        }
        if single {
            println!(
                "seed {} steps={} faults={} commands={} grants={} max_in_flight={} lock_waits={} out_of_order={} \
                 aborted_in_flight={} simulated={:.3}s trace_digest={:08x}",
                report.seed,
                report.steps,
                report.faults,
                report.commands,
                report.grants,
                report.max_in_flight,
                report.lock_waits,
                report.out_of_order,
                report.aborted_in_flight,
                report.simulated.as_secs_f64(),
                report.digest
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{:.0} steps per second ({steps} steps in {elapsed:.1} s)",
        steps as f64 / elapsed.max(1e-9)
    );
    // The target's concurrency, on its own line: scripts/test checks the format of the last one.
    println!(
        "target max_in_flight={max_in_flight} lock_waits={lock_waits} out_of_order={out_of_order} \
         aborted_in_flight={aborted_in_flight}"
    );
    println!("sim seeds={seeds} steps={steps} faults={faults} violations={violations}");
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
