//! Tracepoint (protocols) runtime: protocol tracing from syscall tracepoints.
//!
//! Contract used by the probe manager (same shape as the bpftrace runtime):
//! - `ProtocolsShared::new(registry)`: once at startup (metrics). The eBPF programs are loaded and
//!   attached when the first protocol probe starts and detached when the last one stops.
//! - `ProtocolProbe::start(ctx, probe, spec, targets)` never fails synchronously: problems show in
//!   `status()`. It must be called inside a tokio runtime.
//! - `ProtocolProbe::status(&self) -> RuntimeStatus`
//! - `ProtocolProbe::update(&mut self, probe, spec, targets)` (async): new settings or targets.
//! - `ProtocolProbe::stop(self)` (async).
//!
//! RED series outlive the runtime: while it runs, its tracker removes those of targets gone for
//! [`metrics::GONE_TARGET_TTL`]; once the last probe stopped, a task of the agent's runtime does,
//! until none is left or a probe starts again.
//!
//! Parts: [`kernel`] loads the eBPF side (`node-agent-ebpf/src/protocols`) and keeps its filter maps
//! equal to [`routes`] (which process gets which protocols); [`drain`] empties the ring buffer on a
//! thread of its own; [`governor`] sheds connections while the node's CPUs are saturated;
//! [`events`] decodes the ring buffer;
//! [`sockets`] tells what an fd is; [`conn`] reassembles and parses one connection; [`tracker`] is
//! the event loop's state; [`rows`] and [`metrics`] are its outputs. Parsers come from
//! `sonde-protocols`.
pub mod conn;
pub mod drain;
pub mod events;
pub mod governor;
pub mod kernel;
pub mod metrics;
pub mod routes;
pub mod rows;
pub mod sockets;
pub mod tracker;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use sonde_api::{AssignedProbe, ProbeState, Protocol, TracepointSpec};
use sonde_protocols::{Kind, ParseConfig};
use tokio::task::AbortHandle;
use tracing::{error, info, info_span};

use self::drain::DrainThread;
use self::governor::{Governor, Shedding};
use self::kernel::Kernel;
use self::metrics::ProtocolMetrics;
use self::routes::{ProbeRoutes, Routes};
use self::rows::Tables;
use self::tracker::Tracker;
use super::{ProbeContext, RuntimeStatus};
use crate::targets::TargetProcess;
use crate::targets::selector::exec_patterns;

/// Default of `spec.probe.maxBodyBytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 512;
/// Default of how often open connections get a `conn_stats` row (agent flag `--conn-stats-interval`).
pub const DEFAULT_CONN_STATS_INTERVAL: Duration = Duration::from_secs(10);
/// While no protocol probe runs, how often the RED series of targets gone are looked at (the
/// tracker does it as often while it runs).
const IDLE_PRUNE_EVERY: Duration = Duration::from_secs(10);
/// The Kind of an API protocol.
pub fn kind_of(protocol: Protocol) -> Kind {
    match protocol {
        Protocol::Http => Kind::Http,
        Protocol::Dns => Kind::Dns,
        Protocol::Pgsql => Kind::Pgsql,
        Protocol::Mysql => Kind::Mysql,
        Protocol::Redis => Kind::Redis,
    }
}

struct Running {
    kernel: Kernel,
    drain: DrainThread,
}

#[derive(Default)]
struct Inner {
    probes: BTreeMap<String, ProbeRoutes>,
    running: Option<Running>,
    tables: Option<Arc<Mutex<Tables>>>,
    /// Removes the RED series of gone targets while nothing runs (see [`ProtocolsShared::prune_while_idle`]).
    idle_pruner: Option<AbortHandle>,
}

/// State shared by every protocol probe: metrics, the loaded programs and who is traced how.
pub struct ProtocolsShared {
    pub metrics: ProtocolMetrics,
    routes: Arc<RwLock<Routes>>,
    inner: Mutex<Inner>,
    cgroup_root: Option<PathBuf>,
    conn_stats_every: Duration,
    shedding: Shedding,
}

impl std::fmt::Debug for ProtocolsShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtocolsShared").finish_non_exhaustive()
    }
}

impl ProtocolsShared {
    pub fn new(registry: &mut Registry) -> ProtocolsShared {
        ProtocolsShared::with_conn_stats_interval(registry, DEFAULT_CONN_STATS_INTERVAL)
    }

    /// Open connections with new traffic get a `conn_stats` row every `every` (checked once a
    /// second).
    pub fn with_conn_stats_interval(registry: &mut Registry, every: Duration) -> ProtocolsShared {
        ProtocolsShared {
            metrics: ProtocolMetrics::register(registry),
            routes: Arc::new(RwLock::new(Routes::default())),
            inner: Mutex::new(Inner::default()),
            cgroup_root: crate::targets::cgroup::cgroup2_mount(),
            conn_stats_every: every,
            shedding: Shedding::default(),
        }
    }

    /// Whether and how connections are shed while the node's CPUs are saturated (see
    /// [`governor`]); by default they are, over [`governor::DEFAULT_BUDGET_PERCENT`] of the node's CPUs.
    pub fn with_shedding(mut self, shedding: Shedding) -> ProtocolsShared {
        self.shedding = shedding;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces probe `id`; loads the programs if it is the first.
    fn register(&self, ctx: &ProbeContext, id: &str, probe: ProbeRoutes) -> Result<(), String> {
        let mut inner = self.lock();
        let tables = inner
            .tables
            .get_or_insert_with(|| Arc::new(Mutex::new(Tables::new(ctx.tables.clone()))))
            .clone();
        {
            let mut tables = tables.lock().unwrap_or_else(PoisonError::into_inner);
            for kind in probe.kinds.iter().copied().map(Some).chain([None]) {
                tables.ensure(kind, id).map_err(|e| e.to_string())?;
            }
        }
        inner.probes.insert(id.to_owned(), probe);
        if inner.running.is_none() {
            // The tracker prunes from now on; the idle pruner, which checks `running` under this
            // lock, would otherwise find it set and end by itself.
            if let Some(pruner) = inner.idle_pruner.take() {
                pruner.abort();
            }
            let (kernel, maps) = Kernel::load(false).map_err(|e| e.to_string())?;
            let tracker = Tracker::new(
                self.routes.clone(),
                tables,
                self.metrics.clone(),
                maps.conns,
                maps.drops,
                self.conn_stats_every,
            )
            .with_governor(Governor::new(
                maps.shed,
                self.shedding,
                self.metrics.capture_share.clone(),
            ));
            let drain = info_span!("protocols")
                .in_scope(|| DrainThread::spawn(tracker, maps.ring))
                .map_err(|e| {
                    format!("cannot start the capture thread: {e}; the agent may have hit its thread limit")
                })?;
            info!("protocol tracing attached to the syscall tracepoints");
            inner.running = Some(Running { kernel, drain });
        }
        self.apply_routes(&mut inner)
    }

    /// Removes probe `id`; returns the running programs to stop if it was the last.
    fn unregister(&self, id: &str) -> Option<Running> {
        let mut inner = self.lock();
        inner.probes.remove(id);
        if inner.probes.is_empty() {
            *self.routes.write().unwrap_or_else(PoisonError::into_inner) = Routes::default();
            return inner.running.take();
        }
        if let Err(e) = self.apply_routes(&mut inner) {
            error!("{e}");
        }
        None
    }

    /// After the runtime stopped: every target it traced is gone from now (those gone before keep
    /// their time), and a task removes their series once [`metrics::GONE_TARGET_TTL`] passed,
    /// as the tracker would have. Does nothing if a probe started meanwhile.
    fn prune_while_idle(self: &Arc<Self>) {
        let mut inner = self.lock();
        if inner.running.is_some() {
            return;
        }
        self.metrics.prune(&HashSet::new(), now());
        if let Some(old) = inner.idle_pruner.take() {
            old.abort();
        }
        if !self.metrics.has_series() {
            return;
        }
        // Holds the state, not a weak reference: the series stay registered when every probe
        // and context is gone, so they must still go.
        let shared = self.clone();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now() + IDLE_PRUNE_EVERY;
            let mut every = tokio::time::interval_at(start, IDLE_PRUNE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let inner = shared.lock();
                if inner.running.is_some() {
                    return;
                }
                shared.metrics.prune(&HashSet::new(), now());
                if !shared.metrics.has_series() {
                    return;
                }
            }
        });
        inner.idle_pruner = Some(task.abort_handle());
    }

    fn apply_routes(&self, inner: &mut Inner) -> Result<(), String> {
        let root = self.cgroup_root.clone();
        let routes = Routes::build(&inner.probes, |pid| {
            root.as_deref()
                .and_then(|r| crate::targets::cgroup::cgroup_id(r, pid))
        });
        let tgids: HashSet<u32> = routes.tgids.keys().copied().collect();
        let cgroups: HashSet<u64> = routes.cgroups.keys().copied().collect();
        let execs: HashSet<_> = routes.execs.keys().cloned().collect();
        {
            let mut current = self.routes.write().unwrap_or_else(PoisonError::into_inner);
            let before = std::mem::take(&mut *current);
            *current = before.succeeded_by(routes, std::time::Instant::now());
        }
        if let Some(running) = inner.running.as_mut() {
            // The routes above first: a process the kernel selects for a name finds its route.
            let kernel = &mut running.kernel;
            kernel
                .set_filter(&tgids, &cgroups)
                .and_then(|()| kernel.set_execs(&execs, &tgids))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// One protocol Tracepoint on this node.
pub struct ProtocolProbe {
    shared: Arc<ProtocolsShared>,
    ctx: ProbeContext,
    id: String,
    status: RuntimeStatus,
}

fn probe_routes(
    probe: &AssignedProbe,
    spec: &TracepointSpec,
    targets: &[TargetProcess],
) -> ProbeRoutes {
    let mut kinds: Vec<Kind> = spec
        .probe
        .protocols
        .iter()
        .flatten()
        .copied()
        .map(kind_of)
        .collect();
    kinds.sort();
    kinds.dedup();
    ProbeRoutes {
        kinds,
        config: ParseConfig {
            max_body_bytes: spec
                .probe
                .max_body_bytes
                .map_or(DEFAULT_MAX_BODY_BYTES, |b| b as usize),
            redact: spec.probe.redact.unwrap_or(true),
        },
        targets: targets.to_vec(),
        by_cgroup: probe.process.is_none() && !probe.targets.is_empty(),
        // Standalone selectors only: one that narrows pods would need the pod's cgroup checked too.
        exec_patterns: match &probe.process {
            Some(selector) if probe.targets.is_empty() => exec_patterns(selector),
            _ => Vec::new(),
        },
    }
}

impl ProtocolProbe {
    pub fn start(
        ctx: &ProbeContext,
        probe: &AssignedProbe,
        spec: &TracepointSpec,
        targets: &[TargetProcess],
    ) -> ProtocolProbe {
        let mut this = ProtocolProbe {
            shared: ctx.protocols.clone(),
            ctx: ctx.clone(),
            id: probe.id.clone(),
            status: RuntimeStatus {
                state: ProbeState::Pending,
                message: String::new(),
                targets_attached: 0,
                restarts: 0,
            },
        };
        this.apply(probe, spec, targets);
        this
    }

    fn apply(&mut self, probe: &AssignedProbe, spec: &TracepointSpec, targets: &[TargetProcess]) {
        let routes = probe_routes(probe, spec, targets);
        let names: Vec<&str> = routes.kinds.iter().map(|k| k.name()).collect();
        let names = names.join(",");
        self.status = match self.shared.register(&self.ctx, &self.id, routes) {
            Ok(()) if targets.is_empty() => RuntimeStatus {
                state: ProbeState::Pending,
                message: format!("tracing {names}; no target process on this node yet"),
                targets_attached: 0,
                restarts: 0,
            },
            Ok(()) => RuntimeStatus {
                state: ProbeState::Attached,
                message: match targets.len() {
                    1 => format!("tracing {names} on 1 process"),
                    n => format!("tracing {names} on {n} processes"),
                },
                targets_attached: targets.len() as u32,
                restarts: 0,
            },
            Err(message) => {
                error!(probe = %self.id, "{message}");
                RuntimeStatus {
                    state: ProbeState::Failed,
                    message,
                    targets_attached: 0,
                    restarts: 0,
                }
            }
        };
    }

    pub fn status(&self) -> RuntimeStatus {
        self.status.clone()
    }

    pub async fn update(
        &mut self,
        probe: &AssignedProbe,
        spec: &TracepointSpec,
        targets: &[TargetProcess],
    ) {
        self.apply(probe, spec, targets);
    }

    pub async fn stop(self) {
        if let Some(running) = self.shared.unregister(&self.id) {
            running.drain.stop().await;
            drop(running.kernel);
            info!("protocol tracing detached: no protocol probe left");
            self.shared.prune_while_idle();
        }
    }
}

/// The time series are pruned at: Tokio's clock, which tests can pause and move (outside them, the
/// system's monotonic clock).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Table names and owner, for callers that list what this runtime writes.
pub fn tables_of(kinds: &[Kind]) -> Vec<&'static str> {
    kinds
        .iter()
        .map(|k| k.table())
        .chain([rows::CONN_STATS_TABLE])
        .collect()
}
