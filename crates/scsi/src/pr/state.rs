//! The persistent reservation state machine (SPC-4 5.13), pure: a [`PrState`] plus one PERSISTENT RESERVE OUT
//! request in, the new state (by mutation) and the side effects (unit attentions, task aborts) out.
//!
//! The caller applies a request to a clone of the state and commits the clone only after the APTPL state was saved,
//! so a failed save leaves the old state untouched (rollback for free).
//!
//! Choices where SPC-4 leaves room, documented once here:
//! - A registration is identified by initiator port (name + ISID, or name alone for a format 00b TransportID given
//!   with SPEC_I_PT) and target port (a relative target port identifier, or every port with ALL_TG_PT).
//! - REGISTER AND MOVE always moves to one I_T nexus: a format 00b TransportID (name alone) is taken for the one
//!   I_T nexus of that name logged in now through the given relative target port, and refused when there are none
//!   or several ([`PrState::apply`] gets the logged-in nexuses from the runtime; this module stays I/O-free).
//! - PREEMPT and PREEMPT AND ABORT never remove the preempting nexus's own registration (SPC-4 5.13.11.4.3 b: "other
//!   than the I_T nexus on which the command was received").
//! - PRGENERATION is incremented by every successful REGISTER, REGISTER AND IGNORE EXISTING KEY, CLEAR, PREEMPT,
//!   PREEMPT AND ABORT and REGISTER AND MOVE (SPC-4 6.13.2), except a REGISTER with SARK 0 from an unregistered
//!   nexus, for which SPC-4 5.13.7 says "do nothing except return GOOD status". RESERVE and RELEASE leave it.

use super::{PrOutCommand, PrType, ServiceActionOut, TransportId};
use crate::sense::{Condition, Sense};
use crate::{Isid, ItNexus, LoggedInNexuses};
use std::collections::BTreeSet;

/// One registration (SPC-4 5.13.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub key: u64,
    pub initiator_name: String,
    /// None: every initiator port of that name (a format 00b iSCSI TransportID given with SPEC_I_PT).
    pub isid: Option<Isid>,
    /// None: every target port (ALL_TG_PT).
    pub relative_target_port: Option<u16>,
    /// The SCSI target device's name, to build the nexus that receives unit attentions.
    pub target_name: String,
}

impl Registration {
    /// True when commands arriving through `nexus` act for this registration.
    pub fn covers(&self, nexus: &ItNexus) -> bool {
        self.initiator_name == nexus.initiator_name
            && self.isid.is_none_or(|isid| isid == nexus.isid)
            && self
                .relative_target_port
                .is_none_or(|port| port == nexus.relative_target_port)
    }

    /// The same registrant (same identity, key aside).
    fn same_identity(&self, other: &Registration) -> bool {
        self.id() == other.id()
    }

    pub fn id(&self) -> RegistrantId {
        RegistrantId {
            initiator_name: self.initiator_name.clone(),
            isid: self.isid,
            relative_target_port: self.relative_target_port,
        }
    }

    fn for_nexus(nexus: &ItNexus, key: u64, all_target_ports: bool) -> Registration {
        Registration {
            key,
            initiator_name: nexus.initiator_name.clone(),
            isid: Some(nexus.isid),
            relative_target_port: (!all_target_ports).then_some(nexus.relative_target_port),
            target_name: nexus.target_name.clone(),
        }
    }
}

/// A registrant's identity: initiator port(s) and target port(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrantId {
    pub initiator_name: String,
    pub isid: Option<Isid>,
    pub relative_target_port: Option<u16>,
}

/// Who holds the reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// The holding registrant (types 1, 3, 5, 6); always present in [`PrState::registrations`].
    Registration(RegistrantId),
    /// Every registrant (types 7, 8).
    AllRegistrants,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub holder: Holder,
    pub kind: PrType,
}

/// The persistent reservation state of one logical unit. Registrations are kept in registration order (READ KEYS
/// lists them so).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrState {
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// Activate persist through power loss (SPC-4 5.13.5), from the last REGISTER / REGISTER AND IGNORE / REGISTER
    /// AND MOVE.
    pub aptpl: bool,
}

/// What a unit attention is addressed to: a registration's initiator and target ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub registration: Registration,
    pub condition: Condition,
}

/// Side effects of a successful PERSISTENT RESERVE OUT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub unit_attentions: Vec<Notify>,
    /// Registrations whose nexuses' tasks PREEMPT AND ABORT aborts (SPC-4 5.13.11.5).
    pub aborts: Vec<Registration>,
}

/// Why a PERSISTENT RESERVE OUT failed: RESERVATION CONFLICT status, or CHECK CONDITION with sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrError {
    Conflict,
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(sense: Sense) -> Self {
        PrError::Check(sense)
    }
}

/// Named limit on registrations per logical unit, so SPEC_I_PT lists cannot grow memory (and the APTPL file)
/// without bound; beyond it REGISTER fails with INSUFFICIENT REGISTRATION RESOURCES (SPC-4 5.13.7).
pub const MAX_REGISTRATIONS: usize = 1024;

/// SPEC_I_PT given to an already registered nexus (SPC-4 5.13.7 Table 44: INVALID FIELD IN CDB).
const SPEC_I_PT_INVALID: Sense = Sense::new(Condition::InvalidFieldInCdb);

impl PrState {
    /// Index of the registration acting for `nexus`.
    pub fn registration_of(&self, nexus: &ItNexus) -> Option<usize> {
        self.registrations.iter().position(|r| r.covers(nexus))
    }

    /// True when `nexus` holds the reservation (every registrant does for types 7 and 8; SPC-4 5.13.10).
    pub fn is_holder(&self, nexus: &ItNexus) -> bool {
        match (&self.reservation, self.registration_of(nexus)) {
            (Some(reservation), Some(index)) => match reservation.holder {
                Holder::AllRegistrants => true,
                Holder::Registration(ref holder) => self.registrations[index].id() == *holder,
            },
            _ => false,
        }
    }

    /// The key READ RESERVATION reports: the holder's, or 0 for all-registrants types (SPC-4 6.13.3.3).
    pub fn reservation_key(&self) -> u64 {
        match self.reservation.as_ref().map(|r| &r.holder) {
            Some(Holder::Registration(holder)) => self
                .registrations
                .iter()
                .find(|r| r.id() == *holder)
                .map_or(0, |r| r.key),
            _ => 0,
        }
    }

    /// Apply one PERSISTENT RESERVE OUT from `nexus`; `logged_in` are the nexuses logged in now (REGISTER AND MOVE
    /// resolves a name-only TransportID through them). On error `self` may be partly changed: callers work on a
    /// clone.
    pub fn apply(
        &mut self,
        nexus: &ItNexus,
        command: &PrOutCommand,
        logged_in: &dyn LoggedInNexuses,
    ) -> Result<Effects, PrError> {
        self.apply_within(nexus, command, logged_in, MAX_REGISTRATIONS)
    }

    /// [`PrState::apply`] with at most `max_registrations` registrations (the LU's configured limit).
    pub fn apply_within(
        &mut self,
        nexus: &ItNexus,
        command: &PrOutCommand,
        logged_in: &dyn LoggedInNexuses,
        max_registrations: usize,
    ) -> Result<Effects, PrError> {
        let mut effects = Effects::default();
        match command.action {
            ServiceActionOut::Register | ServiceActionOut::RegisterAndIgnoreExistingKey => {
                self.register(nexus, command, &mut effects, max_registrations)?
            }
            ServiceActionOut::Reserve => self.reserve(nexus, command)?,
            ServiceActionOut::Release => self.release(nexus, command, &mut effects)?,
            ServiceActionOut::Clear => self.clear(nexus, command, &mut effects)?,
            ServiceActionOut::Preempt | ServiceActionOut::PreemptAndAbort => {
                self.preempt(nexus, command, &mut effects)?
            }
            ServiceActionOut::RegisterAndMove => {
                self.register_and_move(nexus, command, logged_in, max_registrations)?
            }
        }
        Ok(effects)
    }

    /// The caller's registration, checking the RESERVATION KEY (SPC-4 5.13.7: a mismatch is RESERVATION CONFLICT).
    fn checked_registration(&self, nexus: &ItNexus, key: u64) -> Result<usize, PrError> {
        match self.registration_of(nexus) {
            Some(index) if self.registrations[index].key == key => Ok(index),
            _ => Err(PrError::Conflict),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 5.13.7, Tables 43/44).
    fn register(
        &mut self,
        nexus: &ItNexus,
        command: &PrOutCommand,
        effects: &mut Effects,
        max_registrations: usize,
    ) -> Result<(), PrError> {
        let ignore = command.action == ServiceActionOut::RegisterAndIgnoreExistingKey;
        let sark = command.service_action_key;
        match self.registration_of(nexus) {
            None => {
                if !ignore && command.key != 0 {
                    return Err(PrError::Conflict);
                }
                if sark == 0 {
                    if !command.transport_ids.is_empty() {
                        return Err(Sense::invalid_parameter_field(8, None).into());
                    }
                    return Ok(());
                }
                let mut added = vec![Registration::for_nexus(nexus, sark, command.all_tg_pt)];
                for id in &command.transport_ids {
                    let registration = Registration {
                        key: sark,
                        initiator_name: id.name.clone(),
                        isid: id.isid,
                        relative_target_port: (!command.all_tg_pt)
                            .then_some(nexus.relative_target_port),
                        target_name: nexus.target_name.clone(),
                    };
                    let duplicate = added.iter().any(|r| r.same_identity(&registration))
                        || self
                            .registrations
                            .iter()
                            .any(|r| r.same_identity(&registration));
                    // SPC-4 6.14.3: a TransportID naming a nexus that is already registered makes the whole
                    // command fail; nothing is registered.
                    if duplicate {
                        return Err(Sense::invalid_parameter_field(id.offset, None).into());
                    }
                    added.push(registration);
                }
                if self.registrations.len() + added.len() > max_registrations {
                    return Err(Sense::new(Condition::InsufficientRegistrationResources).into());
                }
                self.registrations.extend(added);
                self.aptpl = command.aptpl;
            }
            Some(index) => {
                if !ignore && command.key != self.registrations[index].key {
                    return Err(PrError::Conflict);
                }
                if command.spec_i_pt {
                    return Err(SPEC_I_PT_INVALID.into());
                }
                if sark == 0 {
                    self.unregister(index, nexus, effects);
                } else {
                    self.registrations[index].key = sark;
                    self.aptpl = command.aptpl;
                }
            }
        }
        self.bump();
        Ok(())
    }

    /// Remove registration `index` (SPC-4 5.13.11.3): the holder's unregistration releases its reservation
    /// (announced with RESERVATIONS RELEASED to the other registrants for types 5 and 6), and an all-registrants
    /// reservation ends with the last registrant.
    fn unregister(&mut self, index: usize, nexus: &ItNexus, effects: &mut Effects) {
        let removed = self.registrations.remove(index);
        let Some(reservation) = self.reservation.clone() else {
            return;
        };
        match reservation.holder {
            Holder::Registration(holder) if holder == removed.id() => {
                self.reservation = None;
                if matches!(
                    reservation.kind,
                    PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
                ) {
                    self.notify_all_except(nexus, Condition::ReservationsReleased, effects);
                }
            }
            Holder::Registration(_) => {}
            Holder::AllRegistrants => {
                if self.registrations.is_empty() {
                    self.reservation = None;
                }
            }
        }
    }

    fn notify_all_except(&self, nexus: &ItNexus, condition: Condition, effects: &mut Effects) {
        for registration in &self.registrations {
            if !registration.covers(nexus) {
                effects.unit_attentions.push(Notify {
                    registration: registration.clone(),
                    condition,
                });
            }
        }
    }

    /// RESERVE (SPC-4 5.13.9).
    fn reserve(&mut self, nexus: &ItNexus, command: &PrOutCommand) -> Result<(), PrError> {
        let index = self.checked_registration(nexus, command.key)?;
        let kind = command.kind.ok_or(Sense::invalid_cdb_field(2, Some(3)))?;
        match &self.reservation {
            Some(existing) => {
                // Re-reserving what one holds is a no-op; anything else conflicts.
                if self.is_holder(nexus) && existing.kind == kind {
                    Ok(())
                } else {
                    Err(PrError::Conflict)
                }
            }
            None => {
                self.reservation = Some(Reservation {
                    holder: if kind.all_registrants() {
                        Holder::AllRegistrants
                    } else {
                        Holder::Registration(self.registrations[index].id())
                    },
                    kind,
                });
                Ok(())
            }
        }
    }

    /// RELEASE (SPC-4 5.13.11.2).
    fn release(
        &mut self,
        nexus: &ItNexus,
        command: &PrOutCommand,
        effects: &mut Effects,
    ) -> Result<(), PrError> {
        self.checked_registration(nexus, command.key)?;
        let Some(reservation) = self.reservation.clone() else {
            return Ok(());
        };
        if !self.is_holder(nexus) {
            return Ok(());
        }
        if command.kind != Some(reservation.kind) {
            return Err(Sense::new(Condition::InvalidReleaseOfPersistentReservation).into());
        }
        self.reservation = None;
        if !matches!(
            reservation.kind,
            PrType::WriteExclusive | PrType::ExclusiveAccess
        ) {
            self.notify_all_except(nexus, Condition::ReservationsReleased, effects);
        }
        Ok(())
    }

    /// CLEAR (SPC-4 5.13.11.6).
    fn clear(
        &mut self,
        nexus: &ItNexus,
        command: &PrOutCommand,
        effects: &mut Effects,
    ) -> Result<(), PrError> {
        self.checked_registration(nexus, command.key)?;
        self.notify_all_except(nexus, Condition::ReservationsPreempted, effects);
        self.registrations.clear();
        self.reservation = None;
        self.bump();
        Ok(())
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4, 5.13.11.5).
    fn preempt(
        &mut self,
        nexus: &ItNexus,
        command: &PrOutCommand,
        effects: &mut Effects,
    ) -> Result<(), PrError> {
        let own = self.checked_registration(nexus, command.key)?;
        let kind = command.kind.ok_or(Sense::invalid_cdb_field(2, Some(3)))?;
        let sark = command.service_action_key;
        let own_identity = self.registrations[own].clone();
        let reservation = self.reservation.clone();
        let preempts_reservation = match &reservation {
            None => false,
            Some(Reservation {
                holder: Holder::AllRegistrants,
                ..
            }) => sark == 0,
            Some(Reservation {
                holder: Holder::Registration(holder),
                ..
            }) => self
                .registrations
                .iter()
                .any(|r| r.id() == *holder && r.key == sark),
        };
        if sark == 0 && !preempts_reservation {
            // SPC-4 5.13.11.4.3/4: a zero SARK preempts only an all-registrants reservation.
            return Err(Sense::invalid_parameter_field(8, None).into());
        }
        let victims: Vec<Registration> = self
            .registrations
            .iter()
            .filter(|r| !r.same_identity(&own_identity))
            // SARK 0 (only valid when preempting an all-registrants reservation) removes every other registrant.
            .filter(|r| sark == 0 || r.key == sark)
            .cloned()
            .collect();
        if victims.is_empty() && !preempts_reservation {
            return Err(PrError::Conflict);
        }
        self.registrations
            .retain(|r| !victims.iter().any(|v| v.same_identity(r)));
        for victim in &victims {
            effects.unit_attentions.push(Notify {
                registration: victim.clone(),
                condition: Condition::RegistrationsPreempted,
            });
        }
        if command.action == ServiceActionOut::PreemptAndAbort {
            effects.aborts = victims.clone();
        }
        match reservation {
            Some(old) if preempts_reservation => {
                self.reservation = Some(Reservation {
                    holder: if kind.all_registrants() {
                        Holder::AllRegistrants
                    } else {
                        Holder::Registration(own_identity.id())
                    },
                    kind,
                });
                if old.kind != kind {
                    // SPC-4 5.13.11.4.3 e: remaining registrants learn that the reservation they lived under changed.
                    self.notify_all_except(nexus, Condition::ReservationsReleased, effects);
                }
            }
            Some(old) => self.reservation = Some(old),
            None => {}
        }
        self.bump();
        Ok(())
    }

    /// REGISTER AND MOVE (SPC-4 5.13.8).
    fn register_and_move(
        &mut self,
        nexus: &ItNexus,
        command: &PrOutCommand,
        logged_in: &dyn LoggedInNexuses,
        max_registrations: usize,
    ) -> Result<(), PrError> {
        let own = self.checked_registration(nexus, command.key)?;
        let Some(reservation) = self.reservation.clone() else {
            return Err(PrError::Conflict);
        };
        match &reservation.holder {
            Holder::Registration(holder) if *holder == self.registrations[own].id() => {}
            _ => return Err(PrError::Conflict),
        }
        let sark = command.service_action_key;
        if sark == 0 {
            return Err(Sense::invalid_parameter_field(8, None).into());
        }
        let destination = command
            .transport_ids
            .first()
            .ok_or(Sense::new(Condition::ParameterListLengthError))?;
        let destination_port = TargetPort {
            target_name: &nexus.target_name,
            relative_target_port: command.relative_target_port,
        };
        let isid = destination_isid(destination, &destination_port, logged_in)?;
        let target = Registration {
            key: sark,
            initiator_name: destination.name.clone(),
            isid: Some(isid),
            relative_target_port: Some(command.relative_target_port),
            target_name: nexus.target_name.clone(),
        };
        let moving_to_self = isid == nexus.isid
            && target.initiator_name == nexus.initiator_name
            && command.relative_target_port == nexus.relative_target_port;
        if moving_to_self {
            // SPC-4 5.13.8: a TransportID naming the I_T nexus that sent the command is INVALID FIELD IN PARAMETER
            // LIST.
            return Err(transport_id_invalid(destination).into());
        }
        let own_identity = self.registrations[own].clone();
        let existing = self
            .registrations
            .iter()
            .position(|r| r.same_identity(&target));
        let destination_id = target.id();
        match existing {
            Some(index) => self.registrations[index].key = sark,
            None if self.registrations.len() >= max_registrations => {
                return Err(Sense::new(Condition::InsufficientRegistrationResources).into());
            }
            None => self.registrations.push(target),
        }
        self.reservation = Some(Reservation {
            holder: Holder::Registration(destination_id),
            kind: reservation.kind,
        });
        if command.unreg {
            self.registrations
                .retain(|r| !r.same_identity(&own_identity));
        }
        self.aptpl = command.aptpl;
        self.bump();
        Ok(())
    }
}

/// A target port of this SCSI target device: where REGISTER AND MOVE's destination nexus must be logged in.
struct TargetPort<'a> {
    target_name: &'a str,
    relative_target_port: u16,
}

/// INVALID FIELD IN PARAMETER LIST with the field pointer (C/D = 0) at the first byte of the TransportID, which
/// for REGISTER AND MOVE is byte 24 of the parameter list (SPC-4 6.14.4; field pointer: SPC-4 4.5.2.4.2).
fn transport_id_invalid(id: &TransportId) -> Sense {
    Sense::invalid_parameter_field(id.offset, None)
}

/// The ISID of the initiator port REGISTER AND MOVE moves to (SPC-4 5.13.8). A format 01b iSCSI TransportID names
/// the port itself (name and ISID). A format 00b one names only the initiator device (SPC-4 7.6.4.6), which may
/// have several ports; it stands for a port here only when exactly one I_T nexus of that name is logged in now
/// through the given relative target port, since the move needs one I_T nexus (the registration it creates is
/// an I_T nexus's, and so is the reservation). None or several such nexuses: the TransportID does not name the
/// destination, INVALID FIELD IN PARAMETER LIST pointing at it.
fn destination_isid(
    destination: &TransportId,
    port: &TargetPort,
    logged_in: &dyn LoggedInNexuses,
) -> Result<Isid, Sense> {
    if let Some(isid) = destination.isid {
        return Ok(isid);
    }
    let isids = logged_in_isids(&destination.name, port, logged_in);
    let mut matching = isids.iter();
    match (matching.next(), matching.next()) {
        (Some(isid), None) => Ok(*isid),
        (None, _) | (Some(_), Some(_)) => Err(transport_id_invalid(destination)),
    }
}

/// The ISIDs of the I_T nexuses logged in now whose initiator port has `initiator_name` and whose target port is
/// `port`, each once (the runtime may list a nexus more than once; it is still one nexus).
fn logged_in_isids(
    initiator_name: &str,
    port: &TargetPort,
    logged_in: &dyn LoggedInNexuses,
) -> BTreeSet<Isid> {
    let mut isids = BTreeSet::new();
    logged_in.for_each_logged_in(&mut |nexus| {
        if nexus.initiator_name == initiator_name
            && nexus.target_name == port.target_name
            && nexus.relative_target_port == port.relative_target_port
        {
            isids.insert(nexus.isid);
        }
    });
    isids
}
