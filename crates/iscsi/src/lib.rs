//! iSCSI (RFC 7143), sans-IO: PDU framing and digests, text keys, typed PDU views, login negotiation and the
//! full-feature session state machine, usable in the target and the initiator role. Nothing here touches a socket,
//! a file or a clock: callers feed bytes and values in and send the PDUs that come out.

pub mod budget;
pub mod chap;
pub mod login;
pub mod message;
pub mod params;
pub mod pdu;
pub mod session;
pub mod text;

pub use params::SessionParams;
pub use pdu::{Digests, FrameError, Opcode, Pdu, SerialNumber};
pub use text::{TextError, TextPairs};
