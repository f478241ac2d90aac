//! The operator's own metrics; every name and label value is defined here.
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabels {
    /// `protocols` or `profiler`.
    pub feature: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// `complete` (every node answered), `partial` (some did not), `failed` (none did).
    pub outcome: &'static str,
}

/// Kind label of the assignment pass (all NodeAssignments at once).
pub const ASSIGNMENT_KIND: &str = "NodeAssignment";

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    applies: Counter,
    leader: Gauge,
    auto_targets: Family<FeatureLabels, Gauge>,
    queries: Family<QueryLabels, Counter>,
    query_node_failures: Counter,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let applies = Counter::default();
        let leader = Gauge::default();
        let auto_targets = Family::<FeatureLabels, Gauge>::default();
        let queries = Family::<QueryLabels, Counter>::default();
        let query_node_failures = Counter::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "sonde_operator_reconciles",
            "Reconciliations, by resource kind",
            reconciles.clone(),
        );
        registry.register(
            "sonde_operator_reconcile_errors",
            "Failed reconciliations, by resource kind and error",
            errors.clone(),
        );
        registry.register(
            "sonde_operator_reconcile_duration_seconds",
            "Time spent in one reconciliation, by resource kind",
            duration.clone(),
        );
        registry.register(
            "sonde_operator_assignment_applies",
            "NodeAssignments written (server-side apply) because their desired spec changed",
            applies.clone(),
        );
        registry.register(
            "sonde_operator_leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "sonde_operator_auto_telemetry_targets",
            "Containers targeted by a cluster-wide auto-telemetry feature on all nodes",
            auto_targets.clone(),
        );
        registry.register(
            "sonde_operator_table_queries",
            "Queries of every node's tables, by whether every node, some or none answered",
            queries.clone(),
        );
        registry.register(
            "sonde_operator_table_query_node_failures",
            "Nodes whose agent did not answer a query of every node's tables (named in its Sonde-Failed-Nodes header)",
            query_node_failures.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            applies,
            leader,
            auto_targets,
            queries,
            query_node_failures,
        }
    }

    /// A query of every node's tables answered, `failed_nodes` of them without their agent.
    pub fn queried(&self, outcome: &'static str, failed_nodes: usize) {
        self.queries.get_or_create(&QueryLabels { outcome }).inc();
        self.query_node_failures.inc_by(failed_nodes as u64);
    }

    pub fn reconciled(&self, kind: &'static str, took: Duration) {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        self.duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, kind: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { kind, error })
            .inc();
    }

    pub fn applied(&self) {
        self.applies.inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Sets the targets of an auto-telemetry feature; returns the value before, None the first time.
    pub fn set_auto_telemetry_targets(
        &self,
        feature: &'static str,
        targets: usize,
    ) -> Option<usize> {
        let labels = FeatureLabels { feature };
        let first = self.auto_targets.get(&labels).is_none();
        let before = self.auto_targets.get_or_create(&labels).set(targets as i64);
        (!first).then_some(before as usize)
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_under_sonde_names() {
        let m = Metrics::new();
        m.reconciled("Tracepoint", Duration::from_millis(3));
        m.failed("Tracepoint", "patch_status");
        m.applied();
        m.set_leader(true);
        assert_eq!(m.set_auto_telemetry_targets("protocols", 3), None);
        assert_eq!(m.set_auto_telemetry_targets("protocols", 4), Some(3));
        m.queried("partial", 2);
        let text = m.encode().unwrap();
        for want in [
            "sonde_operator_reconciles_total{kind=\"Tracepoint\"} 1",
            "sonde_operator_reconcile_errors_total{kind=\"Tracepoint\",error=\"patch_status\"} 1",
            "sonde_operator_reconcile_duration_seconds_count{kind=\"Tracepoint\"} 1",
            "sonde_operator_assignment_applies_total 1",
            "sonde_operator_leader 1",
            "sonde_operator_auto_telemetry_targets{feature=\"protocols\"} 4",
            "sonde_operator_table_queries_total{outcome=\"partial\"} 1",
            "sonde_operator_table_query_node_failures_total 2",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
    }
}
