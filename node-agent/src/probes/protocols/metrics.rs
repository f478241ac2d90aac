//! Metrics of protocol tracing: RED histograms named after the OpenTelemetry semantic conventions,
//! capture losses and parse failures. Every label value is bounded: target identity (pods of this
//! node), and method/status/operation names the parsers take from fixed sets. Targets come and go
//! (pods are replaced, short-lived programs exit): the series of one no longer traced are removed
//! after [`GONE_TARGET_TTL`], so a node's series do not grow with every pod it ever ran.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sonde_common::conn::DROP_REASON_NAMES;

/// Bucket bounds (seconds): OpenTelemetry's HTTP defaults, plus sub-millisecond ones because
/// in-cluster calls are often that fast.
const BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
    0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// One of `sonde_common::conn::DROP_REASON_NAMES`, or one of [`AGENT_DROP_REASONS`].
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParseErrorLabels {
    /// A protocol name, or `unknown` for connections no enabled protocol recognised.
    pub protocol: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    pub http_request_method: &'static str,
    /// Empty (None) for a request that got no response.
    pub http_response_status_code: Option<u16>,
    /// Empty when a response came; else why none did (`timeout`, `connection_closed`).
    pub error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    pub db_system_name: &'static str,
    pub db_operation_name: &'static str,
    /// Empty unless the operation failed: its SQLSTATE or Redis error prefix (bounded values), or
    /// `timeout` / `connection_closed` when no answer came.
    pub error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    #[prometheus(flatten)]
    pub target: TargetLabels,
    /// Empty for NOERROR, else the response code's name (NXDOMAIN, SERVFAIL, REFUSED, …), or
    /// `timeout` / `connection_closed` when no answer came.
    pub error_type: &'static str,
}

/// How long the RED series of a target no longer traced (its pod deleted, its program exited, its
/// Tracepoint removed) stay: longer than any usual scrape interval, so that its last requests are
/// scraped; a target traced again within it keeps its series.
pub const GONE_TARGET_TTL: Duration = Duration::from_secs(300);

/// One RED series' labels, by family.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum RedLabels {
    HttpServer(HttpLabels),
    HttpClient(HttpLabels),
    Dns(DnsLabels),
    Db(DbLabels),
}

impl RedLabels {
    fn target(&self) -> &TargetLabels {
        match self {
            RedLabels::HttpServer(l) | RedLabels::HttpClient(l) => &l.target,
            RedLabels::Dns(l) => &l.target,
            RedLabels::Db(l) => &l.target,
        }
    }
}

/// The RED series made for each target, and since when the target is no longer traced.
#[derive(Debug, Default)]
struct RedSeries {
    targets: HashMap<TargetLabels, TargetSeries>,
}

#[derive(Debug, Default)]
struct TargetSeries {
    labels: HashSet<RedLabels>,
    gone_since: Option<Instant>,
}

/// Every metric of the protocols runtime; cheap to clone.
#[derive(Clone, Debug)]
pub struct ProtocolMetrics {
    pub dropped: Family<DropLabels, Counter>,
    pub parse_errors: Family<ParseErrorLabels, Counter>,
    /// Fds of traced processes the agent looked at because the kernel could not tell what they
    /// are (kernels without BTF: every fd not seen opened; else only when the kernel's walk failed).
    pub fd_lookups: Counter,
    /// Share of connections whose bytes are captured (below 1 while shedding: see
    /// [`super::governor`]).
    pub capture_share: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub http_server: Histograms<HttpLabels>,
    pub http_client: Histograms<HttpLabels>,
    pub dns: Histograms<DnsLabels>,
    pub db: Histograms<DbLabels>,
    /// Every RED series made, by target: kept here rather than by one runtime, so that the
    /// series of a runtime stopped and started again are still removed once their target goes.
    made: Arc<Mutex<RedSeries>>,
}

impl Default for ProtocolMetrics {
    fn default() -> Self {
        ProtocolMetrics {
            dropped: Family::default(),
            parse_errors: Family::default(),
            fd_lookups: Counter::default(),
            capture_share: Gauge::default(),
            http_server: Family::new_with_constructor(histogram),
            http_client: Family::new_with_constructor(histogram),
            dns: Family::new_with_constructor(histogram),
            db: Family::new_with_constructor(histogram),
            made: Arc::default(),
        }
    }
}

/// Losses the agent itself counts, next to the kernel's `DROP_REASON_NAMES`.
pub const DECODE_ERROR: &str = "decode_error";
/// A row written without its connection's addresses (an accept without peer address whose socket
/// was closed before it could be looked at, a lost open event).
pub const ADDRESSES_UNKNOWN: &str = "addresses_unknown";
/// A data event of a process the kernel traced but the agent has no route for: it left the
/// selection more than `RETIRED_ROUTE_GRACE` before its bytes were read (the agent fell that far
/// behind), or it was forked while too many children's routes were kept.
pub const UNROUTED: &str = "unrouted";
/// A data event on an fd not seen opened that was gone before the agent could tell whether it was
/// a socket (only where the kernel could not tell either: no BTF, a failed walk of the fd table).
pub const FD_GONE: &str = "fd_gone";
const AGENT_DROP_REASONS: [&str; 4] = [DECODE_ERROR, ADDRESSES_UNKNOWN, UNROUTED, FD_GONE];

impl ProtocolMetrics {
    /// The histogram of `labels`, made if need be and noted for [`Self::prune`].
    pub fn histogram(&self, labels: RedLabels) -> Histogram {
        let histogram = match &labels {
            RedLabels::HttpServer(l) => self.http_server.get_or_create(l).clone(),
            RedLabels::HttpClient(l) => self.http_client.get_or_create(l).clone(),
            RedLabels::Dns(l) => self.dns.get_or_create(l).clone(),
            RedLabels::Db(l) => self.db.get_or_create(l).clone(),
        };
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let target = made.targets.entry(labels.target().clone()).or_default();
        target.gone_since = None;
        target.labels.insert(labels);
        histogram
    }

    /// Removes the series of the targets that `traced` has not held for [`GONE_TARGET_TTL`] up
    /// to `now`; true if any went (handles to them must be dropped: what they observe would be
    /// seen by no one).
    pub fn prune(&self, traced: &HashSet<TargetLabels>, now: Instant) -> bool {
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let mut removed = false;
        made.targets.retain(|target, series| {
            if traced.contains(target) {
                series.gone_since = None;
                return true;
            }
            let since = *series.gone_since.get_or_insert(now);
            if now.saturating_duration_since(since) < GONE_TARGET_TTL {
                return true;
            }
            for labels in &series.labels {
                match labels {
                    RedLabels::HttpServer(l) => self.http_server.remove(l),
                    RedLabels::HttpClient(l) => self.http_client.remove(l),
                    RedLabels::Dns(l) => self.dns.remove(l),
                    RedLabels::Db(l) => self.db.remove(l),
                };
            }
            removed = true;
            false
        });
        removed
    }

    /// Whether series of some target exist (traced or waiting for [`Self::prune`] to remove them).
    pub fn has_series(&self) -> bool {
        !self
            .made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .targets
            .is_empty()
    }

    pub fn register(registry: &mut Registry) -> ProtocolMetrics {
        let m = ProtocolMetrics::default();
        // Every reason exists from the start, so "no loss" reads as 0 rather than as absent.
        for reason in DROP_REASON_NAMES.into_iter().chain(AGENT_DROP_REASONS) {
            let _ = m.dropped.get_or_create(&DropLabels { reason });
        }
        registry.register(
            "sonde_events_dropped",
            "Capture events lost before parsing, by reason (ring_full, truncated for syscalls with bytes beyond the 16 KiB captured, whose rows are usually whole, conn_map_full, args_map_full, unclassified_fd, read_failed, tgids_map_full, shed for syscalls of connections not captured while the node's CPUs were saturated; in the agent: decode_error, unrouted for bytes of a process without a route, addresses_unknown for rows written without the connection's addresses, and fd_gone for bytes of an fd not seen opened that was gone before anything could tell whether it was a socket)",
            m.dropped.clone(),
        );
        registry.register(
            "sonde_protocol_parse_errors",
            "Protocol frames that could not be parsed, and connections no enabled protocol recognised (protocol=unknown)",
            m.parse_errors.clone(),
        );
        registry.register(
            "sonde_protocol_fd_lookups",
            "File descriptors of traced processes the agent had to look at (pidfd_getfd) because the kernel could not tell what they are: on kernels without BTF every fd it did not see opened (sockets, files, pipes), else only those whose walk through the fd table failed",
            m.fd_lookups.clone(),
        );
        m.capture_share.set(1.0);
        registry.register(
            "sonde_capture_connection_share",
            "Share of traced connections whose bytes are captured: 1, except while the node's CPUs are saturated and capturing takes more than its budget (--saturated-capture-percent); then each request seen counts for 1/share in the RED histograms, and the syscalls of the others count in sonde_events_dropped_total{reason=\"shed\"}",
            m.capture_share.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests seen by protocol tracing",
            m.http_server.clone(),
        );
        registry.register(
            "http_client_request_duration_seconds",
            "Duration of HTTP client requests seen by protocol tracing",
            m.http_client.clone(),
        );
        registry.register(
            "dns_lookup_duration_seconds",
            "Duration of DNS lookups seen by protocol tracing",
            m.dns.clone(),
        );
        registry.register(
            "db_client_operation_duration_seconds",
            "Duration of database operations (PostgreSQL, MySQL, Redis) seen by protocol tracing",
            m.db.clone(),
        );
        m
    }
}
