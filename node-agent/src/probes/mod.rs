//! Probes: the manager (diff desired vs running, follow targets, collect statuses) and one runtime
//! per probe kind.
//!
//! Contract used by the runtimes:
//! - [`ProbeContext`] is handed to every runtime.
//! - [`RuntimeStatus`] is what a runtime reports about itself.
pub mod bpftrace;
pub mod dynamic_log;
pub mod manager;
pub mod profiler;
pub mod protocols;
pub mod retire;
pub mod unavailable;

use sonde_api::ProbeState;

pub use manager::{ManagerHandle, spawn};

/// Everything a probe runtime needs from the agent, cheap to clone.
#[derive(Clone)]
pub struct ProbeContext {
    /// This node's name (`NODE_NAME`, or the host name standalone); fills the `node` column.
    pub node: String,
    pub tables: crate::tables::Store,
    pub bpftrace: std::sync::Arc<bpftrace::BpftraceShared>,
    pub protocols: std::sync::Arc<protocols::ProtocolsShared>,
    pub profiler: std::sync::Arc<profiler::ProfilerShared>,
    pub dynamic_log: std::sync::Arc<dynamic_log::DynamicLogShared>,
}

/// What a runtime reports about itself; becomes a `ProbeStatus` in the NodeAssignment.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeStatus {
    pub state: ProbeState,
    pub message: String,
    pub targets_attached: u32,
    pub restarts: u32,
}
