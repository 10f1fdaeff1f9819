//! The lunlock target daemon: TCP portals, login and full-feature sessions over the sans-IO `iscsi` crate,
//! SCSI execution through the `scsi` crate's dispatcher, storage from the `store` crate, and configuration.

pub mod admin;
pub mod allocator;
pub mod auth_throttle;
pub mod config;
mod connection;
mod descriptors;
pub mod engine;
pub mod fault;
mod latch;
pub mod limits;
pub mod lock_stats;
pub mod metrics;
mod pr_state;
pub mod secrets;
pub mod server;
mod task;
pub mod uring;
mod xcopy;

pub use config::{parse_size, ServeError, ServeOptions, TargetConfig};
pub use server::{run_blocking, start, RunningTarget};
