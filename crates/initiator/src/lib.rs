//! Initiator library.
