//! State shared by the controllers, the assignment pass and (through `metrics`) the HTTP server.
use std::sync::Arc;

use k8s_openapi::jiff;
use kube::Client;
use kube::runtime::events::Recorder;
use tokio::sync::Notify;

use crate::auto_telemetry::AutoTelemetry;
use crate::metrics::Metrics;
use crate::stores::Stores;

pub struct Context {
    /// Client with the operator's identity.
    pub client: Client,
    /// Caches of pods, nodes, the three kinds and NodeAssignments.
    pub stores: Stores,
    /// Counters and histograms served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events on the resources.
    pub recorder: Recorder,
    /// Wakes the assignment pass; notifications within its debounce window coalesce.
    pub assignments_changed: Arc<Notify>,
    /// Cluster-wide probes switched on by flags, added to every node's assignment.
    pub auto_telemetry: AutoTelemetry,
    /// When this operator started: a deletion's wait for agents counts from here at the earliest.
    pub started: jiff::Timestamp,
}
