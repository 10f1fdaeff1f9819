//! What the admin API answers: the targets, their LUNs with their persistent reservation state, the sessions, and
//! the counters, read from the runtime at one moment. docs/admin.md documents the schema.

use super::lockspace::LockspaceView;
use crate::server::{isid_text, lock, ServedTarget, Shared};
use crate::task::LunRuntime;
use lunlock_scsi::pr::PrType;
use lunlock_scsi::pr::{Holder, PrState, Registration};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Serialize)]
pub struct Overview {
    pub version: &'static str,
    /// Milliseconds since the Unix epoch, on the target's clock.
    pub now_ms: u64,
    pub started_ms: u64,
    pub connections: i64,
    pub targets: Vec<TargetView>,
    pub sessions: Vec<SessionView>,
}

#[derive(Serialize)]
pub struct TargetView {
    pub name: String,
    pub alias: Option<String>,
    pub fault_injection: bool,
    pub luns: Vec<LunView>,
}

#[derive(Serialize)]
pub struct LunView {
    pub id: u64,
    pub size_bytes: u64,
    pub block_size: u32,
    pub backing: String,
    pub direct_io: bool,
    pub read_only: bool,
    pub thin_provisioned: bool,
    pub tasks_in_flight: usize,
    pub counters: LunCounters,
    pub persistent_reservations: PrView,
    /// The COMPARE AND WRITE outcomes the target saw, per initiator.
    pub compare_and_write: Vec<CawView>,
    /// A lunlock lockspace on this LUN, as the target last read it; None when there is none.
    pub lockspace: Option<LockspaceView>,
}

#[derive(Serialize)]
pub struct LunCounters {
    pub commands: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub compare_and_write_good: u64,
    pub compare_and_write_miscompare: u64,
    pub reservation_conflicts: u64,
    pub unit_attentions_established: u64,
    /// Every command's latency: its count and sum, from which the page charts the mean.
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
}

/// The persistent reservation state (SPC-4 5.13), as PERSISTENT RESERVE IN READ FULL STATUS reports it.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct PrView {
    pub generation: u32,
    pub aptpl: bool,
    pub registrations: Vec<RegistrationView>,
    pub reservation: Option<ReservationView>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct RegistrationView {
    /// The reservation key, 16 hex digits with 0x.
    pub key: String,
    /// The iSCSI TransportID's name: an initiator port ("iqn...,i,0x<ISID>", RFC 7143 4.4.1, SPC-4 7.6.4.6
    /// format 01b), or the initiator device name alone (format 00b).
    pub transport_id: String,
    pub initiator: String,
    pub isid: Option<String>,
    /// None: registered through every target port (ALL_TG_PT).
    pub relative_target_port: Option<u16>,
    pub holder: bool,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ReservationView {
    /// The TYPE code (SPC-4 6.15.4 Table 172): 1, 3, 5, 6, 7 or 8.
    pub type_code: u8,
    pub type_name: &'static str,
    /// The holder's TransportID, or "all registrants" (types 7 and 8).
    pub holder: String,
    pub key: String,
}

#[derive(Serialize)]
pub struct CawView {
    pub initiator: String,
    pub good: u64,
    pub miscompare: u64,
    pub recent_miscompares: Vec<MiscompareView>,
}

#[derive(Serialize)]
pub struct MiscompareView {
    pub lba: u64,
    pub offset: Option<u64>,
    pub at_ms: u64,
}

#[derive(Serialize, Debug)]
pub struct SessionView {
    pub initiator: String,
    pub isid: String,
    pub target: String,
    pub tsih: u16,
    /// The initiator's address.
    pub peer: String,
    /// The portal (the target's address) the session logged in through.
    pub portal: String,
    pub since_ms: u64,
    /// Commands of this session running on the target's LUNs now.
    pub commands_in_flight: usize,
}

pub fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn overview(shared: &Shared, lockspaces: &super::lockspace::Watcher) -> Overview {
    Overview {
        version: env!("CARGO_PKG_VERSION"),
        now_ms: millis(SystemTime::now()),
        started_ms: millis(shared.started),
        connections: shared
            .metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        targets: shared
            .targets
            .iter()
            .map(|target| target_view(target, lockspaces))
            .collect(),
        sessions: sessions(shared),
    }
}

fn target_view(target: &ServedTarget, lockspaces: &super::lockspace::Watcher) -> TargetView {
    TargetView {
        name: target.definition.name.clone(),
        alias: target.definition.alias.clone(),
        fault_injection: target.faults.enabled(),
        luns: target
            .luns
            .iter()
            .map(|(id, runtime)| lun_view(target, *id, runtime, lockspaces))
            .collect(),
    }
}

fn lun_view(
    target: &ServedTarget,
    id: u64,
    runtime: &LunRuntime,
    lockspaces: &super::lockspace::Watcher,
) -> LunView {
    let config = target.definition.luns.iter().find(|lun| lun.id == id);
    let unit = &runtime.unit;
    let metrics = &runtime.metrics;
    let (good, miscompare) = metrics.compare_and_write();
    let latency = crate::metrics::LatencyClass::ALL.map(|class| metrics.latency(class));
    LunView {
        id,
        size_bytes: unit.capacity_blocks() * u64::from(unit.config().block_size),
        block_size: unit.config().block_size,
        backing: config
            .map(|lun| lun.path.display().to_string())
            .unwrap_or_default(),
        direct_io: config.is_some_and(|lun| lun.direct_io),
        read_only: unit.config().read_only,
        thin_provisioned: unit.config().thin_provisioned,
        tasks_in_flight: runtime.tasks_in_flight(),
        counters: LunCounters {
            commands: metrics.commands_total(),
            read_bytes: metrics.read_bytes(),
            written_bytes: metrics.written_bytes(),
            compare_and_write_good: good,
            compare_and_write_miscompare: miscompare,
            reservation_conflicts: metrics.reservation_conflicts(),
            unit_attentions_established: unit.unit_attentions().established(),
            latency_count: latency.iter().map(|h| h.count).sum(),
            latency_sum_seconds: latency.iter().map(|h| h.sum_seconds).sum(),
        },
        persistent_reservations: pr_view(&unit.pr_state()),
        compare_and_write: metrics
            .compare_and_write_by_initiator()
            .into_iter()
            .map(|(initiator, tally)| CawView {
                initiator,
                good: tally.good,
                miscompare: tally.miscompare,
                recent_miscompares: tally
                    .recent
                    .iter()
                    .map(|m| MiscompareView {
                        lba: m.lba,
                        offset: m.offset,
                        at_ms: millis(m.at),
                    })
                    .collect(),
            })
            .collect(),
        lockspace: lockspaces.view(&target.definition.name, id),
    }
}

pub fn pr_view(state: &PrState) -> PrView {
    let holder_id = state.reservation.as_ref().and_then(|r| match &r.holder {
        Holder::Registration(id) => Some(id.clone()),
        Holder::AllRegistrants => None,
    });
    let all_registrants = state
        .reservation
        .as_ref()
        .is_some_and(|r| r.holder == Holder::AllRegistrants);
    let registrations = state
        .registrations
        .iter()
        .map(|registration| RegistrationView {
            key: key_text(registration.key),
            transport_id: transport_id(registration),
            initiator: registration.initiator_name.clone(),
            isid: registration.isid.as_ref().map(isid_text),
            relative_target_port: registration.relative_target_port,
            holder: all_registrants || holder_id.as_ref() == Some(&registration.id()),
        })
        .collect();
    let reservation = state
        .reservation
        .as_ref()
        .map(|reservation| ReservationView {
            type_code: reservation.kind.code(),
            type_name: type_name(reservation.kind),
            holder: match &reservation.holder {
                Holder::AllRegistrants => "all registrants".to_string(),
                Holder::Registration(id) => state
                    .registrations
                    .iter()
                    .find(|r| r.id() == *id)
                    .map(transport_id)
                    .unwrap_or_else(|| id.initiator_name.clone()),
            },
            key: key_text(state.reservation_key()),
        });
    PrView {
        generation: state.generation,
        aptpl: state.aptpl,
        registrations,
        reservation,
    }
}

fn key_text(key: u64) -> String {
    format!("0x{key:016x}")
}

fn transport_id(registration: &Registration) -> String {
    match &registration.isid {
        Some(isid) => format!("{},i,0x{}", registration.initiator_name, isid_text(isid)),
        None => registration.initiator_name.clone(),
    }
}

/// The names sg_persist prints for each TYPE (SPC-4 6.15.4 Table 172).
pub fn type_name(kind: PrType) -> &'static str {
    match kind {
        PrType::WriteExclusive => "Write Exclusive",
        PrType::ExclusiveAccess => "Exclusive Access",
        PrType::WriteExclusiveRegistrantsOnly => "Write Exclusive, registrants only",
        PrType::ExclusiveAccessRegistrantsOnly => "Exclusive Access, registrants only",
        PrType::WriteExclusiveAllRegistrants => "Write Exclusive, all registrants",
        PrType::ExclusiveAccessAllRegistrants => "Exclusive Access, all registrants",
    }
}

fn sessions(shared: &Shared) -> Vec<SessionView> {
    // Copied out first: counting tasks takes each LUN's task lock, never under the session registry's.
    let registered: Vec<_> = lock(&shared.sessions)
        .iter()
        .map(|(nexus, handle)| (nexus.clone(), handle.tsih, handle.origin.clone()))
        .collect();
    let mut views: Vec<SessionView> = registered
        .into_iter()
        .map(|(nexus, tsih, origin)| SessionView {
            commands_in_flight: shared
                .target(&nexus.target_name)
                .map(|target| target.luns.values().map(|lun| lun.tasks_of(&nexus)).sum())
                .unwrap_or(0),
            initiator: nexus.initiator_name,
            isid: isid_text(&nexus.isid),
            target: nexus.target_name,
            tsih,
            peer: origin.peer.to_string(),
            portal: origin
                .portal
                .map(|portal| portal.to_string())
                .unwrap_or_default(),
            since_ms: millis(origin.since),
        })
        .collect();
    views.sort_by(|a, b| {
        (&a.target, &a.initiator, &a.isid).cmp(&(&b.target, &b.initiator, &b.isid))
    });
    views
}
