//! Sonde's custom resources, group `sonde.dev`, version `v1alpha1`.
//!
//! These types are the contract between `kubectl apply`, the operator and the node agents:
//! - [`Tracepoint`] and [`DynamicLog`] are namespaced and can only select pods of their own namespace.
//! - [`BpftraceScript`] is cluster-scoped because a bpftrace program runs as root on the node.
//! - [`NodeAssignment`] is cluster-scoped, one per node, named after the node: the operator writes its
//!   spec (every probe the node must run, with resolved targets), the node's agent writes its status.
//!
//! Validation that can happen at apply time is expressed as OpenAPI constraints and CEL rules
//! (`x-kubernetes-validations`) so that `kubectl apply` rejects bad input with a message naming the field.
#![forbid(unsafe_code)]

pub mod bpftrace;
pub mod common;
pub mod crds;
pub mod duration;
pub mod dynamic_log;
pub mod node_assignment;
pub mod tracepoint;

pub use bpftrace::{BpftraceScript, BpftraceScriptSpec, PodTargets};
pub use common::{
    ConditionType, NodeCounts, NodeFailure, ProcessSelector, ResourceStatus, Targeting,
};
pub use dynamic_log::{Capture, CaptureExpr, DynamicLog, DynamicLogSpec, MetricSpec, MetricType};
pub use node_assignment::{
    AssignedProbe, NodeAssignment, NodeAssignmentSpec, NodeAssignmentStatus, NodeCapabilities,
    PodTarget, ProbeConfig, ProbeOwner, ProbeState, ProbeStatus,
};
pub use tracepoint::{ProfilerSpec, Protocol, Tracepoint, TracepointProbe, TracepointSpec};

/// API group of every Sonde resource.
pub const GROUP: &str = "sonde.dev";
/// API version of every Sonde resource.
pub const VERSION: &str = "v1alpha1";
/// Finalizer the operator puts on Tracepoint, DynamicLog and BpftraceScript objects so that deleting
/// one removes its probes from every node before the object goes away.
pub const FINALIZER: &str = "sonde.dev/cleanup";
/// Field manager used by the operator for server-side apply.
pub const OPERATOR_MANAGER: &str = "sonde-operator";
/// Field manager used by the node agent for its NodeAssignment status.
pub const AGENT_MANAGER: &str = "sonde-agent";
