//! Negotiated operational parameters of a session and its connection (RFC 7143 13).
//!
//! The login negotiation (`crate::login`) produces a [`SessionParams`]; the full-feature session
//! (`crate::session`) and the runtime read it. Defaults are the RFC's.

/// Operational parameters in force after login (RFC 7143 13.x for each field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// What we accept in one PDU's data segment: our own MaxRecvDataSegmentLength declaration (13.12).
    pub max_recv_data_segment_length: u32,
    /// The peer's MaxRecvDataSegmentLength: the largest data segment we may send (13.12).
    pub max_xmit_data_segment_length: u32,
    /// MaxBurstLength (13.13).
    pub max_burst_length: u32,
    /// FirstBurstLength (13.14).
    pub first_burst_length: u32,
    /// ImmediateData (13.11).
    pub immediate_data: bool,
    /// InitialR2T (13.10).
    pub initial_r2t: bool,
    /// MaxOutstandingR2T (13.17).
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder (13.18).
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder (13.19).
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel (13.20); lunlock supports 0.
    pub error_recovery_level: u8,
    /// HeaderDigest=CRC32C (13.1).
    pub header_digest: bool,
    /// DataDigest=CRC32C (13.1).
    pub data_digest: bool,
}

impl Default for SessionParams {
    /// The RFC 7143 defaults (a session that negotiated nothing).
    fn default() -> Self {
        SessionParams {
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            header_digest: false,
            data_digest: false,
        }
    }
}

impl SessionParams {
    /// The digests in force, for the PDU codec.
    pub fn digests(&self) -> crate::pdu::Digests {
        crate::pdu::Digests {
            header: self.header_digest,
            data: self.data_digest,
        }
    }
}
