//! Sense data (SPC-4 4.5): one table of (name, sense key, ASC, ASCQ, text), and the encoders built from it.
//!
//! Every error a command can end with is a [`Sense`] value built from a [`Condition`] of this table, so the
//! mapping from "what went wrong" to the bytes on the wire lives in one place. Add a row here rather than writing
//! sense bytes anywhere else.

/// SPC-4 4.5.6 sense keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

macro_rules! conditions {
    ($( $name:ident => ($key:ident, $asc:expr, $ascq:expr, $text:expr); )*) => {
        /// Every additional sense code lunlock reports (SPC-4 Table 48 / annex D).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Condition { $( $name, )* }

        impl Condition {
            /// Every condition, for tests and documentation.
            pub const ALL: &'static [Condition] = &[ $( Condition::$name, )* ];
            pub const fn key(self) -> SenseKey { match self { $( Condition::$name => SenseKey::$key, )* } }
            pub const fn asc(self) -> u8 { match self { $( Condition::$name => $asc, )* } }
            pub const fn ascq(self) -> u8 { match self { $( Condition::$name => $ascq, )* } }
            pub const fn text(self) -> &'static str { match self { $( Condition::$name => $text, )* } }
        }
    };
}

conditions! {
    NoAdditionalSense => (NoSense, 0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION");
    InvalidCommandOperationCode => (IllegalRequest, 0x20, 0x00, "INVALID COMMAND OPERATION CODE");
    LbaOutOfRange => (IllegalRequest, 0x21, 0x00, "LOGICAL BLOCK ADDRESS OUT OF RANGE");
    InvalidFieldInCdb => (IllegalRequest, 0x24, 0x00, "INVALID FIELD IN CDB");
    LogicalUnitNotSupported => (IllegalRequest, 0x25, 0x00, "LOGICAL UNIT NOT SUPPORTED");
    InvalidFieldInCommandInformationUnit => (IllegalRequest, 0x0E, 0x03, "INVALID FIELD IN COMMAND INFORMATION UNIT");
    InvalidFieldInParameterList => (IllegalRequest, 0x26, 0x00, "INVALID FIELD IN PARAMETER LIST");
    ParameterListLengthError => (IllegalRequest, 0x1A, 0x00, "PARAMETER LIST LENGTH ERROR");
    ParameterValueInvalid => (IllegalRequest, 0x26, 0x02, "PARAMETER VALUE INVALID");
    InvalidReleaseOfPersistentReservation => (IllegalRequest, 0x26, 0x04, "INVALID RELEASE OF PERSISTENT RESERVATION");
    SavingParametersNotSupported => (IllegalRequest, 0x39, 0x00, "SAVING PARAMETERS NOT SUPPORTED");
    InsufficientRegistrationResources => (IllegalRequest, 0x55, 0x04, "INSUFFICIENT REGISTRATION RESOURCES");
    MediumRemovalPrevented => (IllegalRequest, 0x53, 0x02, "MEDIUM REMOVAL PREVENTED");
    CommandSequenceError => (IllegalRequest, 0x2C, 0x00, "COMMAND SEQUENCE ERROR");
    InvalidMessageError => (IllegalRequest, 0x49, 0x00, "INVALID MESSAGE ERROR");
    WriteProtected => (DataProtect, 0x27, 0x00, "WRITE PROTECTED");
    SoftwareWriteProtected => (DataProtect, 0x27, 0x02, "LOGICAL UNIT SOFTWARE WRITE PROTECTED");
    SpaceAllocationFailedWriteProtect => (DataProtect, 0x27, 0x07, "SPACE ALLOCATION FAILED WRITE PROTECT");
    Miscompare => (Miscompare, 0x1D, 0x00, "MISCOMPARE DURING VERIFY OPERATION");
    UnrecoveredReadError => (MediumError, 0x11, 0x00, "UNRECOVERED READ ERROR");
    WriteError => (MediumError, 0x0C, 0x00, "WRITE ERROR");
    InternalTargetFailure => (HardwareError, 0x44, 0x00, "INTERNAL TARGET FAILURE");
    LogicalUnitNotReadyCauseNotReportable => (NotReady, 0x04, 0x00, "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE");
    LogicalUnitNotReadyManualInterventionRequired => (NotReady, 0x04, 0x03, "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED");
    MediumNotPresent => (NotReady, 0x3A, 0x00, "MEDIUM NOT PRESENT");
    SanitizeInProgress => (NotReady, 0x04, 0x1B, "LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS");
    SanitizeCommandFailed => (MediumError, 0x31, 0x03, "SANITIZE COMMAND FAILED");
    PowerOnResetOrBusDeviceReset => (UnitAttention, 0x29, 0x00, "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED");
    PowerOnOccurred => (UnitAttention, 0x29, 0x01, "POWER ON OCCURRED");
    ScsiBusResetOccurred => (UnitAttention, 0x29, 0x02, "SCSI BUS RESET OCCURRED");
    BusDeviceResetFunctionOccurred => (UnitAttention, 0x29, 0x03, "BUS DEVICE RESET FUNCTION OCCURRED");
    DeviceInternalReset => (UnitAttention, 0x29, 0x04, "DEVICE INTERNAL RESET");
    ItNexusLossOccurred => (UnitAttention, 0x29, 0x07, "I_T NEXUS LOSS OCCURRED");
    ModeParametersChanged => (UnitAttention, 0x2A, 0x01, "MODE PARAMETERS CHANGED");
    ReservationsPreempted => (UnitAttention, 0x2A, 0x03, "RESERVATIONS PREEMPTED");
    ReservationsReleased => (UnitAttention, 0x2A, 0x04, "RESERVATIONS RELEASED");
    RegistrationsPreempted => (UnitAttention, 0x2A, 0x05, "REGISTRATIONS PREEMPTED");
    CapacityDataHasChanged => (UnitAttention, 0x2A, 0x09, "CAPACITY DATA HAS CHANGED");
    ReportedLunsDataHasChanged => (UnitAttention, 0x3F, 0x0E, "REPORTED LUNS DATA HAS CHANGED");
    CommandsClearedByAnotherInitiator => (UnitAttention, 0x2F, 0x00, "COMMANDS CLEARED BY ANOTHER INITIATOR");
    CommandsClearedByPowerLossNotification => (UnitAttention, 0x2F, 0x01, "COMMANDS CLEARED BY POWER LOSS NOTIFICATION");
    CommandsClearedByDeviceServer => (UnitAttention, 0x2F, 0x02, "COMMANDS CLEARED BY DEVICE SERVER");
    InquiryDataHasChanged => (UnitAttention, 0x3F, 0x03, "INQUIRY DATA HAS CHANGED");
    CommandPhaseError => (AbortedCommand, 0x4A, 0x00, "COMMAND PHASE ERROR");
    DataPhaseError => (AbortedCommand, 0x4B, 0x00, "DATA PHASE ERROR");
    InitiatorDetectedErrorMessageReceived => (AbortedCommand, 0x48, 0x00, "INITIATOR DETECTED ERROR MESSAGE RECEIVED");
    LogicalUnitCommunicationFailure => (AbortedCommand, 0x08, 0x00, "LOGICAL UNIT COMMUNICATION FAILURE");
    NoAdditionalSenseAborted => (AbortedCommand, 0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION");
    // EXTENDED COPY (SPC-4 6.4, 5.16.7.3-4): parameter list errors found before any segment is processed are
    // ILLEGAL REQUEST; errors found while processing a segment are COPY ABORTED.
    TooManyTargetDescriptors => (IllegalRequest, 0x26, 0x06, "TOO MANY TARGET DESCRIPTORS");
    UnsupportedTargetDescriptorTypeCode => (IllegalRequest, 0x26, 0x07, "UNSUPPORTED TARGET DESCRIPTOR TYPE CODE");
    TooManySegmentDescriptors => (IllegalRequest, 0x26, 0x08, "TOO MANY SEGMENT DESCRIPTORS");
    UnsupportedSegmentDescriptorTypeCode => (IllegalRequest, 0x26, 0x09, "UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE");
    OperationInProgress => (IllegalRequest, 0x00, 0x16, "OPERATION IN PROGRESS");
    InsufficientResources => (IllegalRequest, 0x55, 0x03, "INSUFFICIENT RESOURCES");
    CopySegmentError => (CopyAborted, 0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION");
    ThirdPartyDeviceFailure => (CopyAborted, 0x0D, 0x01, "THIRD PARTY DEVICE FAILURE");
    CopyTargetDeviceNotReachable => (CopyAborted, 0x0D, 0x02, "COPY TARGET DEVICE NOT REACHABLE");
    IncorrectCopyTargetDeviceType => (CopyAborted, 0x0D, 0x03, "INCORRECT COPY TARGET DEVICE TYPE");
}

/// Sense-key-specific field pointer (SPC-4 4.5.2.4.2): which byte (and bit) of the CDB or parameter list was bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True: the error is in the CDB (C/D=1); false: in the parameter data.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit 0..=7 within the byte, when known (BPV=1).
    pub bit: Option<u8>,
}

/// One sense report: the condition plus the optional INFORMATION field and field pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub condition: Condition,
    /// INFORMATION field (VALID=1 when present): e.g. offset of the first miscompared byte.
    pub information: Option<u64>,
    pub field_pointer: Option<FieldPointer>,
    /// PROGRESS INDICATION in the sense-key specific bytes (SPC-4 4.5.2.4.4): the fraction of an operation done,
    /// in 65536ths, e.g. of a sanitize operation in progress (SBC-4 4.33.2).
    pub progress: Option<u16>,
    /// The EXTENDED COPY segment descriptor being processed when the copy was aborted (SPC-4 5.16.7.4 b): the
    /// third and fourth bytes of the COMMAND-SPECIFIC INFORMATION field. With a COPY ABORTED sense key the field
    /// pointer is then the segment pointer (SPC-4 4.5.2.4.5) with SD=0, an offset into the parameter list, whose
    /// bits are those of a parameter-data field pointer.
    pub copy_segment: Option<u16>,
}

impl Sense {
    pub const fn new(condition: Condition) -> Self {
        Sense {
            condition,
            information: None,
            field_pointer: None,
            progress: None,
            copy_segment: None,
        }
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, when known) of the CDB.
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            condition: Condition::InvalidFieldInCdb,
            information: None,
            field_pointer: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            progress: None,
            copy_segment: None,
        }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`) of the parameter data.
    pub const fn invalid_parameter_field(byte: u16, bit: Option<u8>) -> Self {
        Sense::new(Condition::InvalidFieldInParameterList).at_parameter_byte(byte, bit)
    }

    /// The same sense pointing at `byte` (and `bit`) of the parameter data.
    pub const fn at_parameter_byte(mut self, byte: u16, bit: Option<u8>) -> Self {
        self.field_pointer = Some(FieldPointer {
            in_cdb: false,
            byte,
            bit,
        });
        self
    }

    /// The same sense naming the EXTENDED COPY segment descriptor being processed (see [`Sense::copy_segment`]).
    pub const fn with_copy_segment(mut self, segment: u16) -> Self {
        self.copy_segment = Some(segment);
        self
    }

    pub const fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    pub const fn with_progress(mut self, progress: u16) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Fixed-format sense data (SPC-4 4.5.3), response code 0x70 (current error), 18 bytes.
    pub fn to_fixed(&self) -> Vec<u8> {
        let mut sense = vec![0u8; 18];
        sense[0] = 0x70;
        sense[2] = self.condition.key() as u8;
        if let Some(information) = self.information {
            sense[0] |= 0x80; // VALID
                              // Fixed format holds 4 bytes of INFORMATION; larger values are truncated as SPC-4 4.5.3 allows
                              // only for descriptor format. Callers that need 8 bytes use descriptor format.
            sense[3..7].copy_from_slice(&(information as u32).to_be_bytes());
        }
        sense[7] = 10; // additional sense length
        if let Some(segment) = self.copy_segment {
            sense[10..12].copy_from_slice(&segment.to_be_bytes());
        }
        sense[12] = self.condition.asc();
        sense[13] = self.condition.ascq();
        if let Some(pointer) = self.field_pointer {
            let mut byte15 = 0x80; // SKSV
            if pointer.in_cdb {
                byte15 |= 0x40;
            }
            if let Some(bit) = pointer.bit {
                byte15 |= 0x08 | (bit & 0x07);
            }
            sense[15] = byte15;
            sense[16..18].copy_from_slice(&pointer.byte.to_be_bytes());
        } else if let Some(progress) = self.progress {
            sense[15] = 0x80; // SKSV
            sense[16..18].copy_from_slice(&progress.to_be_bytes());
        }
        sense
    }

    /// Descriptor-format sense data (SPC-4 4.5.2), response code 0x72, with information and sense-key-specific
    /// descriptors when present. Used when the Control mode page's D_SENSE bit is set.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut sense = vec![
            0x72,
            self.condition.key() as u8,
            self.condition.asc(),
            self.condition.ascq(),
            0,
            0,
            0,
            0,
        ];
        if let Some(information) = self.information {
            sense.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            sense.extend_from_slice(&information.to_be_bytes());
        }
        if let Some(segment) = self.copy_segment {
            // Command-specific information descriptor (SPC-4 4.5.2.3): the segment number in the third and
            // fourth bytes of its 8-byte field.
            let [high, low] = segment.to_be_bytes();
            sense.extend_from_slice(&[0x01, 0x0A, 0x00, 0x00, 0, 0, high, low, 0, 0, 0, 0]);
        }
        if let Some(pointer) = self.field_pointer {
            let mut byte4 = 0x80;
            if pointer.in_cdb {
                byte4 |= 0x40;
            }
            if let Some(bit) = pointer.bit {
                byte4 |= 0x08 | (bit & 0x07);
            }
            let [high, low] = pointer.byte.to_be_bytes();
            sense.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, byte4, high, low, 0x00]);
        } else if let Some(progress) = self.progress {
            let [high, low] = progress.to_be_bytes();
            sense.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, 0x80, high, low, 0x00]);
        }
        sense[7] = (sense.len() - 8) as u8;
        sense
    }
}

impl From<Condition> for Sense {
    fn from(condition: Condition) -> Self {
        Sense::new(condition)
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.condition;
        write!(
            f,
            "{:?} ({:02X}/{:02X}/{:02X}) {}",
            c.key(),
            c.key() as u8,
            c.asc(),
            c.ascq(),
            c.text()
        )
    }
}

/// The sense key and INFORMATION field of sense data in either format (SPC-4 4.5.2, 4.5.3): what the runtime's
/// counters need of a finished command, e.g. the offset of a COMPARE AND WRITE's first miscompared byte
/// (SBC-4 5.3). None for data too short to hold a sense key.
pub fn key_and_information(sense: &[u8]) -> Option<(u8, Option<u64>)> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 => {
            let key = sense.get(2)? & 0x0F;
            let valid = sense[0] & 0x80 != 0;
            let information = sense
                .get(3..7)
                .filter(|_| valid)
                .map(|bytes| u32::from_be_bytes(bytes.try_into().expect("4 bytes")) as u64);
            Some((key, information))
        }
        0x72 | 0x73 => {
            let key = sense.get(1)? & 0x0F;
            Some((key, descriptor_information(sense.get(8..)?)))
        }
        _ => None,
    }
}

/// The information descriptor's field (descriptor type 00h, SPC-4 4.5.2.2) among descriptor-format descriptors.
fn descriptor_information(mut descriptors: &[u8]) -> Option<u64> {
    while descriptors.len() >= 2 {
        let length = 2 + descriptors[1] as usize;
        let descriptor = descriptors.get(..length)?;
        if descriptor[0] == 0x00 && length >= 12 {
            return Some(u64::from_be_bytes(descriptor[4..12].try_into().ok()?));
        }
        descriptors = &descriptors[length..];
    }
    None
}

/// Decoded text for an (ASC, ASCQ) pair, for clients printing sense data.
pub fn describe(asc: u8, ascq: u8) -> Option<&'static str> {
    Condition::ALL
        .iter()
        .find(|c| c.asc() == asc && c.ascq() == ascq)
        .map(|c| c.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_carries_key_asc_and_field_pointer() {
        let sense = Sense::invalid_cdb_field(2, Some(3)).to_fixed();
        assert_eq!(sense[0], 0x70);
        assert_eq!(sense[2], 0x05);
        assert_eq!((sense[12], sense[13]), (0x24, 0x00));
        assert_eq!(sense[15], 0x80 | 0x40 | 0x08 | 3);
        assert_eq!(&sense[16..18], &[0, 2]);
    }

    #[test]
    fn information_sets_valid_bit() {
        let sense = Sense::new(Condition::Miscompare)
            .with_information(7)
            .to_fixed();
        assert_eq!(sense[0], 0xF0);
        assert_eq!(&sense[3..7], &[0, 0, 0, 7]);
        let descriptor = Sense::new(Condition::Miscompare)
            .with_information(7)
            .to_descriptor();
        assert_eq!(descriptor[0], 0x72);
        assert_eq!(descriptor[7] as usize, descriptor.len() - 8);
        assert_eq!(descriptor[19], 7);
    }

    #[test]
    fn copy_aborted_sense_carries_the_segment_and_a_parameter_list_pointer() {
        let sense = Sense::new(Condition::CopyTargetDeviceNotReachable)
            .with_copy_segment(3)
            .at_parameter_byte(48, None);
        let fixed = sense.to_fixed();
        assert_eq!(fixed[2], 0x0A);
        assert_eq!(&fixed[10..14], &[0, 3, 0x0D, 0x02]);
        assert_eq!(fixed[15], 0x80, "SKSV, SD=0");
        assert_eq!(&fixed[16..18], &[0, 48]);
        let descriptor = sense.to_descriptor();
        assert_eq!(&descriptor[8..10], &[0x01, 0x0A]);
        assert_eq!(&descriptor[14..16], &[0, 3]);
        assert_eq!(descriptor[7] as usize, descriptor.len() - 8);
    }

    #[test]
    fn key_and_information_reads_both_formats_back() {
        let sense = Sense::new(Condition::Miscompare).with_information(4100);
        assert_eq!(
            key_and_information(&sense.to_fixed()),
            Some((0x0E, Some(4100)))
        );
        let copy_first = Sense::new(Condition::Miscompare)
            .with_copy_segment(1)
            .with_information(9);
        assert_eq!(
            key_and_information(&copy_first.to_descriptor()),
            Some((0x0E, Some(9)))
        );
        let plain = Sense::new(Condition::LbaOutOfRange).to_descriptor();
        assert_eq!(key_and_information(&plain), Some((0x05, None)));
        assert_eq!(key_and_information(&[0x70, 0]), None, "too short for a key");
        assert_eq!(key_and_information(&[0x00; 18]), None, "not sense data");
    }

    #[test]
    fn every_condition_is_described() {
        for condition in Condition::ALL {
            assert!(!condition.text().is_empty());
        }
    }
}
