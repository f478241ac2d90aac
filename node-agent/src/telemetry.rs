//! The agent's own metrics, all in one place so names and label sets stay consistent
//! (`sonde_<noun>_<unit>[_total]`, bounded label values). Runtimes register their own families
//! (e.g. bpftrace) on the same registry.
//!
//! prometheus-client appends `_total` to counter names and `_info` to info metrics when encoding.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use sonde_api::ProbeState;

/// `table` label. Table names come from validated resource names (a DynamicLog's prefixed with its
/// namespace), one per resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// A route template (`/v1/tables/{name}`), never a raw path.
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Metrics of the table store.
#[derive(Clone, Debug, Default)]
pub struct TableMetrics {
    pub rows: Family<TableLabels, Gauge>,
    pub bytes: Family<TableLabels, Gauge>,
    pub evicted: Family<TableLabels, Counter>,
    pub rejected: Family<TableLabels, Counter>,
    /// Tables dropped, rows and all, after no probe wrote to them for `--orphan-table-ttl`.
    pub retired: Counter,
}

/// Every metric the agent core emits about itself. Cheap to clone (families are `Arc`s inside).
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    pub tables: TableMetrics,
    pub probes: Family<StateLabels, Gauge>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub status_writes: Family<ResultLabels, Counter>,
    pub manifest_errors: Counter,
    /// Connections to the HTTPS listener dropped before their TLS handshake finished.
    pub tls_handshake_failures: Counter,
}

impl Telemetry {
    /// Creates the metrics and registers them, plus `sonde_agent_info{version,node,mode}`.
    pub fn register(registry: &mut Registry, node: &str, mode: &str) -> Telemetry {
        let t = Telemetry::default();
        registry.register(
            "sonde_agent",
            "Version, node and mode of this agent",
            Info::new(vec![
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("node".to_owned(), node.to_owned()),
                ("mode".to_owned(), mode.to_owned()),
            ]),
        );
        registry.register(
            "sonde_probes",
            "Probes on this node by state",
            t.probes.clone(),
        );
        registry.register(
            "sonde_table_rows",
            "Rows held per table",
            t.tables.rows.clone(),
        );
        registry.register(
            "sonde_table_bytes",
            "Estimated memory held per table, in bytes",
            t.tables.bytes.clone(),
        );
        registry.register(
            "sonde_table_rows_evicted",
            "Oldest rows dropped to stay within the table or total memory budget",
            t.tables.evicted.clone(),
        );
        registry.register(
            "sonde_table_rows_rejected",
            "Rows whose width did not match the table's columns",
            t.tables.rejected.clone(),
        );
        registry.register(
            "sonde_tables_retired",
            "Tables dropped with their rows and series after no probe wrote to them for --orphan-table-ttl",
            t.tables.retired.clone(),
        );
        registry.register(
            "sonde_http_requests",
            "HTTP requests served, by route template and status code",
            t.http_requests.clone(),
        );
        registry.register(
            "sonde_status_writes",
            "NodeAssignment status writes, by result",
            t.status_writes.clone(),
        );
        registry.register(
            "sonde_manifest_errors",
            "Problems found in --manifests files",
            t.manifest_errors.clone(),
        );
        registry.register(
            "sonde_http_tls_handshake_failures",
            "Connections to the agent's HTTPS listener dropped before their TLS handshake finished: plain-HTTP clients, clients that do not trust its CA, handshakes not done within 10 s",
            t.tls_handshake_failures.clone(),
        );
        t
    }

    /// Sets `sonde_probes{state}` from the current probe states.
    pub fn set_probe_states<'a>(&self, states: impl Iterator<Item = &'a ProbeState>) {
        let (mut pending, mut attached, mut failed) = (0, 0, 0);
        for s in states {
            match s {
                ProbeState::Pending => pending += 1,
                ProbeState::Attached => attached += 1,
                ProbeState::Failed => failed += 1,
            }
        }
        for (state, n) in [
            ("Pending", pending),
            ("Attached", attached),
            ("Failed", failed),
        ] {
            self.probes.get_or_create(&StateLabels { state }).set(n);
        }
    }
}

/// What `/metrics` shows of `registry`, for tests.
#[cfg(test)]
pub(crate) fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("encoding to a String cannot fail");
    text
}
