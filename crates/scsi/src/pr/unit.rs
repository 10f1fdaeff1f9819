//! The reservation state of one logical unit at run time: PR state and SCSI-2 reservation behind one mutex, a
//! lock-free flag for the common case of no reservation at all, the APTPL persistence hook, and PREEMPT AND ABORT's
//! abort requests for the runtime.
//!
//! Invariant: `active` is true exactly when a persistent reservation or a SCSI-2 reservation exists; it is written
//! only under the mutex, after the state it summarises. READ/WRITE with `active == false` touch nothing shared.
//! A command racing with the RESERVE that sets the flag is ordered before that RESERVE, which SAM-5 allows for
//! concurrently received commands.

use super::conflict::{self, Role};
use super::state::{Effects, PrError, PrState, Registration};
use super::wire::{PrIn, PrOutCdb};
use crate::cdb::Command;
use crate::hold_time::{timed, SharedLock, Timed};
use crate::sense::{Condition, Sense};
use crate::ua::UnitAttentions;
use crate::{ItNexus, LoggedInNexuses, ResetKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Stores the APTPL state crash-safely. Called with the complete encoded state ([`super::encode_pr_state`]) after
/// every change of persistent PR state while APTPL is (or was just) in effect, BEFORE the command returns GOOD.
/// An `Err` means nothing was saved: the command then fails with HARDWARE ERROR / INTERNAL TARGET FAILURE (44/00,
/// SPC-4 4.5.6: "the device server detected a non-recoverable hardware failure" while performing the command) and
/// the in-memory state is left as it was before the command.
pub trait PrPersistence: Send + Sync {
    fn save(&self, state: &[u8]) -> std::io::Result<()>;
}

/// Why a reservation-related command did not complete with GOOD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Conflict,
    Check(Sense),
}

impl From<Sense> for Refusal {
    fn from(sense: Sense) -> Self {
        Refusal::Check(sense)
    }
}

impl From<PrError> for Refusal {
    fn from(error: PrError) -> Self {
        match error {
            PrError::Conflict => Refusal::Conflict,
            PrError::Check(sense) => Refusal::Check(sense),
        }
    }
}

#[derive(Default)]
struct Inner {
    pr: PrState,
    /// The SCSI-2 reservation holder (SPC-2 7.21).
    scsi2: Option<ItNexus>,
}

#[derive(Default)]
pub(crate) struct Reservations {
    inner: Mutex<Inner>,
    active: AtomicBool,
    persistence: Option<Arc<dyn PrPersistence>>,
    registration_limit: RegistrationLimit,
}

/// Registrations one logical unit keeps at most; beyond it REGISTER fails with INSUFFICIENT REGISTRATION
/// RESOURCES (SPC-4 5.13.7).
#[derive(Clone, Copy, Debug)]
struct RegistrationLimit(usize);

impl Default for RegistrationLimit {
    fn default() -> Self {
        RegistrationLimit(super::state::MAX_REGISTRATIONS)
    }
}

impl Reservations {
    /// Sets the most registrations this unit keeps (LU construction; nothing else runs yet).
    pub(crate) fn set_registration_limit(&mut self, limit: usize) {
        self.registration_limit = RegistrationLimit(limit);
    }

    fn lock(&self) -> Timed<MutexGuard<'_, Inner>> {
        let guard = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        timed(SharedLock::Reservations, guard)
    }

    fn refresh_active(&self, inner: &Inner) {
        let active = inner.pr.reservation.is_some() || inner.scsi2.is_some();
        self.active.store(active, Ordering::Release);
    }

    /// Install persistence and the restored state (LU construction; nothing else runs yet).
    pub(crate) fn install(
        &mut self,
        persistence: Arc<dyn PrPersistence>,
        restored: Option<PrState>,
    ) {
        self.persistence = Some(persistence);
        if let Some(state) = restored {
            let mut inner = self.lock();
            inner.pr = persisted_view(&state);
            let active = inner.pr.reservation.is_some();
            drop(inner);
            self.active.store(active, Ordering::Release);
        }
    }

    /// A copy of the PR state (tests, diagnostics).
    pub(crate) fn snapshot(&self) -> PrState {
        self.lock().pr.clone()
    }

    /// The reservation check for every command (SPC-4 5.13.1, SPC-2 5.5.1, SPC-3 5.6.3), after unit attentions.
    /// The fast path is one atomic load.
    pub(crate) fn check(&self, nexus: &ItNexus, command: &Command) -> Result<(), Refusal> {
        let reservation_command = matches!(
            command,
            Command::PersistentReserveIn(_)
                | Command::PersistentReserveOut(_)
                | Command::Reserve { .. }
                | Command::Release { .. }
        );
        if !self.active.load(Ordering::Acquire) && !reservation_command {
            return Ok(());
        }
        let inner = self.lock();
        if let Some(holder) = &inner.scsi2 {
            // SPC-3 5.6.3: while a SCSI-2 reservation exists, PERSISTENT RESERVE IN/OUT conflict for everyone.
            if matches!(
                command,
                Command::PersistentReserveIn(_) | Command::PersistentReserveOut(_)
            ) {
                return Err(Refusal::Conflict);
            }
            if holder != nexus && conflict::conflicts_with_scsi2(command) {
                return Err(Refusal::Conflict);
            }
        }
        // SPC-3 5.6.3: while any registration exists, RESERVE and RELEASE conflict for everyone.
        if matches!(command, Command::Reserve { .. } | Command::Release { .. })
            && !inner.pr.registrations.is_empty()
        {
            return Err(Refusal::Conflict);
        }
        if let Some(reservation) = &inner.pr.reservation {
            let role = if inner.pr.is_holder(nexus) {
                Role::Holder
            } else if inner.pr.registration_of(nexus).is_some() {
                Role::Registrant
            } else {
                Role::NonRegistrant
            };
            if conflict::conflicts(reservation.kind, role, conflict::class(command)) {
                return Err(Refusal::Conflict);
            }
        }
        Ok(())
    }

    pub(crate) fn persistent_reserve_in(&self, command: PrIn) -> Vec<u8> {
        let inner = self.lock();
        command.execute(&inner.pr, self.persistence.is_some())
    }

    /// PERSISTENT RESERVE OUT: decode the parameter list, apply to a copy, save it when APTPL is involved, commit,
    /// then establish unit attentions. Returns the nexuses whose tasks the command aborts (PREEMPT AND ABORT).
    /// `logged_in`: the nexuses logged in now, which REGISTER AND MOVE may name by initiator name alone.
    pub(crate) fn persistent_reserve_out(
        &self,
        nexus: &ItNexus,
        cdb: PrOutCdb,
        parameters: &[u8],
        logged_in: &dyn LoggedInNexuses,
        unit_attentions: &UnitAttentions,
    ) -> Result<Vec<ItNexus>, Refusal> {
        let command = cdb.with_parameters(parameters)?;
        if command.aptpl && self.persistence.is_none() {
            // SPC-4 6.14.3: APTPL with PTPL_C 0 is INVALID FIELD IN PARAMETER LIST.
            let byte = if command.action == super::ServiceActionOut::RegisterAndMove {
                21
            } else {
                20
            };
            return Err(Sense::invalid_parameter_field(byte, Some(0)).into());
        }
        let current = self.lock().pr.clone();
        let mut next = current.clone();
        let effects = next.apply_within(nexus, &command, logged_in, self.registration_limit.0)?;
        // The state is saved (an fsync) without holding the mutex, so commands that only read the reservations
        // (PERSISTENT RESERVE IN, TEST UNIT READY, ...) never wait for the disk behind it. Nothing else can change
        // the PR state meanwhile: it changes only here, and every PERSISTENT RESERVE OUT holds the whole medium's
        // range lock (see `lu::lock_request`); resets touch only the SCSI-2 reservation.
        if let Some(persistence) = &self.persistence {
            let saved = persisted_view(&next);
            if saved != persisted_view(&current) {
                let bytes = super::encode_pr_state(&saved);
                if persistence.save(&bytes).is_err() {
                    return Err(Sense::new(Condition::InternalTargetFailure).into());
                }
            }
        }
        let mut inner = self.lock();
        inner.pr = next;
        self.refresh_active(&inner);
        drop(inner);
        Ok(deliver(effects, unit_attentions, logged_in))
    }

    /// RESERVE(6)/(10) (SPC-2 7.21): the conflicts were checked by [`Reservations::check`].
    pub(crate) fn reserve_scsi2(&self, nexus: &ItNexus) -> Result<(), Refusal> {
        let mut inner = self.lock();
        if !inner.pr.registrations.is_empty() {
            return Err(Refusal::Conflict);
        }
        match &inner.scsi2 {
            Some(holder) if holder != nexus => Err(Refusal::Conflict),
            _ => {
                inner.scsi2 = Some(nexus.clone());
                self.refresh_active(&inner);
                Ok(())
            }
        }
    }

    /// RELEASE(6)/(10) (SPC-2 7.13): releases the nexus's own reservation; from anyone else a no-op.
    pub(crate) fn release_scsi2(&self, nexus: &ItNexus) -> Result<(), Refusal> {
        let mut inner = self.lock();
        if !inner.pr.registrations.is_empty() {
            return Err(Refusal::Conflict);
        }
        if inner.scsi2.as_ref() == Some(nexus) {
            inner.scsi2 = None;
            self.refresh_active(&inner);
        }
        Ok(())
    }

    /// Resets end SCSI-2 reservations (SPC-2 5.5.1: I_T nexus loss of the holder, LUN reset, hard reset);
    /// persistent reservations survive all of them (SPC-4 5.13.1).
    pub(crate) fn reset(&self, nexus: &ItNexus, kind: ResetKind) {
        let mut inner = self.lock();
        let release = match kind {
            ResetKind::NexusLoss => inner.scsi2.as_ref() == Some(nexus),
            _ => true,
        };
        if release {
            inner.scsi2 = None;
            self.refresh_active(&inner);
        }
    }
}

/// What survives a power loss (SPC-4 5.13.5): the whole state while APTPL is in effect, nothing otherwise. Saving
/// this view whenever it changes covers "APTPL is (or was just) in effect": clearing APTPL saves the empty state.
fn persisted_view(state: &PrState) -> PrState {
    if state.aptpl {
        state.clone()
    } else {
        PrState::default()
    }
}

/// The nexus a fully specified registration names.
fn nexus_of(registration: &Registration) -> ItNexus {
    ItNexus {
        initiator_name: registration.initiator_name.clone(),
        isid: registration.isid.unwrap_or(crate::Isid([0; 6])),
        target_name: registration.target_name.clone(),
        relative_target_port: registration.relative_target_port.unwrap_or(0),
    }
}

/// Establish `condition` for every nexus `registration` covers: the known ones, and the registration's own nexus
/// when it names exactly one (so a nexus that has not sent a command yet still gets it after its 29/00).
fn establish(unit_attentions: &UnitAttentions, registration: &Registration, condition: Condition) {
    if registration.isid.is_some() && registration.relative_target_port.is_some() {
        unit_attentions.establish(&nexus_of(registration), condition);
    } else {
        unit_attentions.establish_where(condition, |nexus| registration.covers(nexus));
    }
}

/// Establishes a PERSISTENT RESERVE OUT's unit attentions and returns the nexuses whose tasks it aborts, each once,
/// for the command's [`crate::SideEffects`].
///
/// A registration made with ALL_TG_PT, or from a TransportID without an ISID, covers several nexuses (SPC-4
/// 5.13.7): PREEMPT AND ABORT aborts the tasks of every one of them that is logged in (5.13.11.5), not of a nexus
/// made up from the registration's fields, which no session has (found by the pr_out fuzz target).
fn deliver(
    effects: Effects,
    unit_attentions: &UnitAttentions,
    logged_in: &dyn LoggedInNexuses,
) -> Vec<ItNexus> {
    for notify in effects.unit_attentions {
        establish(unit_attentions, &notify.registration, notify.condition);
    }
    // Only logged-in nexuses have tasks to abort; a registration made through SPEC_I_PT for a nexus that never
    // logged in has none. Nexuses of other targets reach other logical units, whatever their LUN numbers.
    let mut aborted: Vec<ItNexus> = Vec::new();
    logged_in.for_each_logged_in(&mut |nexus| {
        let preempted = effects.aborts.iter().any(|registration| {
            registration.covers(nexus) && nexus.target_name == registration.target_name
        });
        if preempted && !aborted.contains(nexus) {
            aborted.push(nexus.clone());
        }
    });
    aborted
}
