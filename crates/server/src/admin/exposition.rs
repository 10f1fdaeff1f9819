//! `/metrics`: the runtime's counters in OpenMetrics text (which Prometheus scrapes), produced at scrape time by a
//! `prometheus_client` collector over the atomics of [`crate::metrics`]. Names carry their unit, counters end in
//! `_total` and histograms are in seconds, as Prometheus's naming rules ask. docs/admin.md lists them all.

use crate::metrics::{HistogramSnapshot, LatencyClass, LoginResult};
use crate::server::{lock, Shared};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::fmt::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;

type Labels = Vec<(&'static str, String)>;

/// The collector: holds the runtime's shared state and reads it on each scrape.
#[derive(Clone)]
pub struct TargetCollector(pub Arc<Shared>);

impl std::fmt::Debug for TargetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetCollector")
    }
}

/// The exposition of `shared`'s counters now.
pub fn render(shared: &Arc<Shared>) -> Result<String, Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TargetCollector(Arc::clone(shared))));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One metric family: its descriptor once, then a sample per label set.
fn family<T: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels, T)>,
) -> Result<(), Error> {
    let samples: Vec<_> = samples.into_iter().collect();
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, first.metric_type())?;
    if let [(labels, value)] = samples.as_slice() {
        if labels.is_empty() {
            return value.encode(metric); // a bare sample, `name 3`, rather than `name{} 3`
        }
    }
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

/// Each LUN of each target, with its labels.
fn luns(shared: &Shared) -> impl Iterator<Item = (Labels, &Arc<crate::task::LunRuntime>)> {
    shared.targets.iter().flat_map(|target| {
        target.luns.iter().map(move |(id, runtime)| {
            let labels = vec![
                ("target", target.definition.name.clone()),
                ("lun", id.to_string()),
            ];
            (labels, runtime)
        })
    })
}

fn with(labels: &Labels, more: &[(&'static str, String)]) -> Labels {
    labels.iter().cloned().chain(more.iter().cloned()).collect()
}

impl prometheus_client::collector::Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let shared = &self.0;
        build_info(&mut encoder)?;
        command_families(&mut encoder, shared)?;
        latency_family(&mut encoder, shared)?;
        lun_counter_families(&mut encoder, shared)?;
        session_families(&mut encoder, shared)?;
        Ok(())
    }
}

fn build_info(encoder: &mut DescriptorEncoder) -> Result<(), Error> {
    let labels: Labels = vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "commit",
            option_env!("LUNLOCK_COMMIT")
                .unwrap_or("unknown")
                .to_string(),
        ),
    ];
    let info = prometheus_client::metrics::info::Info::new(labels);
    let metric = encoder.encode_descriptor(
        "lunlock_build",
        "The lunlock build serving: its version and commit.",
        None,
        MetricType::Info,
    )?;
    info.encode(metric)
}

/// Commands by opcode, and PERSISTENT RESERVE OUT by service action (the same counters, named as sg_persist does).
fn command_families(encoder: &mut DescriptorEncoder, shared: &Shared) -> Result<(), Error> {
    let mut commands = Vec::new();
    let mut pr_out = Vec::new();
    for (labels, runtime) in luns(shared) {
        let (rows, unknown) = runtime.metrics.commands();
        for (row, count) in rows {
            let opcode = [("opcode", row.full_name())];
            commands.push((with(&labels, &opcode), counter(count)));
            if row.opcode == lunlock_scsi::registry::op::PERSISTENT_RESERVE_OUT {
                let action = row.service_action_name.unwrap_or(row.name).to_string();
                pr_out.push((with(&labels, &[("service_action", action)]), counter(count)));
            }
        }
        if unknown > 0 {
            let opcode = [("opcode", "unsupported".to_string())];
            commands.push((with(&labels, &opcode), counter(unknown)));
        }
    }
    family(
        encoder,
        "lunlock_commands",
        "SCSI commands that ended with a status, by LUN and command.",
        None,
        commands,
    )?;
    family(
        encoder,
        "lunlock_pr_out",
        "PERSISTENT RESERVE OUT commands that ended with a status, by service action.",
        None,
        pr_out,
    )
}

fn latency_family(encoder: &mut DescriptorEncoder, shared: &Shared) -> Result<(), Error> {
    let mut samples: Vec<(Labels, HistogramSnapshot)> = Vec::new();
    for (labels, runtime) in luns(shared) {
        for class in LatencyClass::ALL {
            let snapshot = runtime.metrics.latency(class);
            samples.push((
                with(&labels, &[("class", class.label().to_string())]),
                snapshot,
            ));
        }
    }
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "lunlock_command_duration",
        "From a command's arrival at its LUN to its status, by LUN and kind of command.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (labels, snapshot) in &samples {
        let buckets: Vec<(f64, u64)> = snapshot.cumulative.clone();
        metric.encode_family(labels)?.encode_histogram::<Labels>(
            snapshot.sum_seconds,
            snapshot.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn lun_counter_families(encoder: &mut DescriptorEncoder, shared: &Shared) -> Result<(), Error> {
    type Reading =
        fn(&crate::task::LunRuntime) -> Vec<(&'static [(&'static str, &'static str)], u64)>;
    let families: [(&str, &str, Option<Unit>, Reading); 5] = [
        (
            "lunlock_read",
            "Data-In bytes sent by commands that ended with a status.",
            Some(Unit::Bytes),
            |lun| vec![(&[], lun.metrics.read_bytes())],
        ),
        (
            "lunlock_written",
            "Bytes written to the medium by commands that ended GOOD.",
            Some(Unit::Bytes),
            |lun| vec![(&[], lun.metrics.written_bytes())],
        ),
        (
            "lunlock_compare_and_write",
            "COMPARE AND WRITE commands by outcome: GOOD, or MISCOMPARE (SBC-4 5.3).",
            None,
            |lun| {
                let (good, miscompare) = lun.metrics.compare_and_write();
                vec![
                    (&[("outcome", "good")], good),
                    (&[("outcome", "miscompare")], miscompare),
                ]
            },
        ),
        (
            "lunlock_reservation_conflicts",
            "Commands refused with RESERVATION CONFLICT.",
            None,
            |lun| vec![(&[], lun.metrics.reservation_conflicts())],
        ),
        (
            "lunlock_unit_attentions_established",
            "Unit attention conditions queued for an I_T nexus (SAM-5 5.14).",
            None,
            |lun| vec![(&[], lun.unit.unit_attentions().established())],
        ),
    ];
    for (name, help, unit, reading) in families {
        let mut samples = Vec::new();
        for (labels, runtime) in luns(shared) {
            for (extra, value) in reading(runtime) {
                let extra: Labels = extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
                samples.push((with(&labels, &extra), counter(value)));
            }
        }
        family(encoder, name, help, unit.as_ref(), samples)?;
    }
    let in_flight =
        luns(shared).map(|(labels, runtime)| (labels, gauge(runtime.tasks_in_flight() as i64)));
    family(
        encoder,
        "lunlock_tasks_in_flight",
        "Commands running on the LUN now.",
        None,
        in_flight,
    )
}

fn session_families(encoder: &mut DescriptorEncoder, shared: &Shared) -> Result<(), Error> {
    let metrics = &shared.metrics;
    let mut sessions: std::collections::BTreeMap<String, i64> = shared
        .targets
        .iter()
        .map(|t| (t.definition.name.clone(), 0))
        .collect();
    for nexus in lock(&shared.sessions).keys() {
        *sessions.entry(nexus.target_name.clone()).or_default() += 1;
    }
    family(
        encoder,
        "lunlock_sessions",
        "Normal sessions logged in now, by target.",
        None,
        sessions
            .into_iter()
            .map(|(target, count)| (vec![("target", target)], gauge(count))),
    )?;
    let connections = metrics.connections.load(Ordering::Relaxed);
    family(
        encoder,
        "lunlock_connections",
        "TCP connections open now, discovery and logins in progress included.",
        None,
        [(Labels::new(), gauge(connections))],
    )?;
    family(
        encoder,
        "lunlock_logins",
        "Logins by result.",
        None,
        LoginResult::ALL.map(|result| {
            (
                vec![("result", result.label().to_string())],
                counter(metrics.logins(result)),
            )
        }),
    )?;
    family(
        encoder,
        "lunlock_chap_failures",
        "Logins that failed CHAP authentication.",
        None,
        [(
            Labels::new(),
            counter(metrics.chap_failures.load(Ordering::Relaxed)),
        )],
    )?;
    let digests = &shared.digest_errors;
    family(
        encoder,
        "lunlock_digest_errors",
        "CRC32C digest errors (RFC 7143 7.8), by digest.",
        None,
        [
            ("header", digests.header.load(Ordering::Relaxed)),
            ("data", digests.data.load(Ordering::Relaxed)),
        ]
        .map(|(kind, value)| (vec![("digest", kind.to_string())], counter(value))),
    )?;
    let mut faults = metrics.faults_injected();
    for action in crate::fault::Decision::ACTIONS {
        faults.entry(action).or_insert(0);
    }
    family(
        encoder,
        "lunlock_faults_injected",
        "Fault injection actions carried out, by action (docs/fault-injection.md).",
        None,
        faults
            .into_iter()
            .map(|(action, count)| (vec![("action", action.to_string())], counter(count))),
    )
}
