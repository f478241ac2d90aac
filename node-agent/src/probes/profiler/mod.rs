//! Tracepoint (profiler) runtime: a continuous sampling CPU profiler, like Pixie's.
//!
//! - [`kernel`]: the perf-event program on every CPU's cpu-clock, filter maps, double-buffered counts.
//! - [`selection`](mod@selection): which processes are sampled (cgroup v2 ids of containers, or tgids).
//! - [`maps`] and [`symbolize`]: addresses → `function (file:line)` frames with blazesym.
//! - [`engine`]: the drain thread that writes table [`TABLE`] every period.
//! - [`pprof`] and [`flamegraph`]: the rows of that table as a pprof profile or a flame graph SVG.
//! - The per-pod resource metrics ([`crate::resources`]) are registered here; the probe manager
//!   decides their pods (the targets of every probe) and refreshes them.
//!
//! Every profiler probe shares one kernel state ([`ProfilerShared`]): the programs sample the union
//! of the probes' targets at the highest frequency any of them asks for, and are detached when the
//! last probe stops. Stacks are walked through frame pointers only; stacks that end before a process
//! or thread entry point are marked with a `[truncated: no frame pointers]` root frame.
//!
//! Contract used by the probe manager: `ProfilerShared::new(&mut Registry)`,
//! `ProfilerProbe::{start, status, update, stop}`.
pub mod engine;
pub use sonde_profile::{flamegraph, pprof};
pub mod kernel;
pub mod maps;
mod metrics;
pub mod selection;
pub mod symbolize;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::registry::Registry;
use sonde_api::{AssignedProbe, ProbeState, TracepointSpec};
use tracing::warn;

use self::engine::EngineHandle;
use self::metrics::ProfilerMetrics;
use self::selection::{ProbeSelection, Selection};
use super::{ProbeContext, RuntimeStatus};
use crate::resources::PodResources;
use crate::tables::{Column, ColumnType, TableWriter};
use crate::targets::TargetProcess;

/// The table every profiler probe writes to.
pub const TABLE: &str = "stack_traces";
/// How often samples are drained, symbolized and written, unless configured otherwise.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
pub use sonde_profile::query::DEFAULT_FREQUENCY_HZ;

/// The columns of [`TABLE`] after the target columns.
pub fn columns() -> Vec<Column> {
    [
        ("stack_trace_id", ColumnType::Int64),
        ("stack_trace", ColumnType::String),
        ("count", ColumnType::Int64),
    ]
    .into_iter()
    .map(|(name, ty)| Column::new(name, ty))
    .collect()
}

/// State shared by every profiler probe: the one kernel state and its drain thread.
pub struct ProfilerShared {
    period: Duration,
    metrics: ProfilerMetrics,
    resources: PodResources,
    state: Mutex<SharedState>,
}

#[derive(Default)]
struct SharedState {
    probes: BTreeMap<String, ProbeSelection>,
    engine: Option<EngineHandle>,
    writer: Option<TableWriter>,
    /// Why the table could not be created.
    table_error: Option<String>,
}

impl ProfilerShared {
    /// Registers the profiler's metrics; samples are drained every [`DEFAULT_PERIOD`].
    pub fn new(registry: &mut Registry) -> ProfilerShared {
        ProfilerShared::with_period(registry, DEFAULT_PERIOD)
    }

    /// Like [`ProfilerShared::new`] with another drain period (`--profiler-period`).
    pub fn with_period(registry: &mut Registry, period: Duration) -> ProfilerShared {
        ProfilerShared {
            period: period.max(Duration::from_millis(100)),
            metrics: ProfilerMetrics::register(registry),
            resources: PodResources::register(registry),
            state: Mutex::new(SharedState::default()),
        }
    }

    /// The per-pod resource metrics, registered here once; the probe manager decides their pods.
    pub fn resources(&self) -> &PodResources {
        &self.resources
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces one probe's targets and pushes the new union to the kernel.
    fn register(&self, ctx_tables: &crate::tables::Store, id: &str, probe: ProbeSelection) {
        let mut state = self.lock();
        state.probes.insert(id.to_owned(), probe);
        if state.writer.is_none() {
            match ctx_tables.create(TABLE, "profiler", columns()) {
                Ok(w) => state.writer = Some(w),
                Err(e) => state.table_error = Some(e.to_string()),
            }
        }
        let selection = Selection::union(state.probes.values());
        match (&state.engine, &state.writer) {
            (Some(engine), _) => engine.select(selection),
            (None, Some(writer)) => {
                let engine = EngineHandle::spawn(
                    self.period,
                    selection,
                    writer.clone(),
                    self.metrics.clone(),
                );
                state.engine = Some(engine);
            }
            (None, None) => {}
        }
    }

    /// Removes one probe; the last one out stops the kernel side (returns the thread to join).
    fn unregister(&self, id: &str) -> Option<std::thread::JoinHandle<()>> {
        let mut state = self.lock();
        state.probes.remove(id);
        if state.probes.is_empty() {
            return state.engine.take().and_then(EngineHandle::stop);
        }
        let selection = Selection::union(state.probes.values());
        if let Some(engine) = &state.engine {
            engine.select(selection);
        }
        None
    }

    fn status(&self, id: &str) -> RuntimeStatus {
        let state = self.lock();
        let targets = state.probes.get(id).map(|p| p.targets.as_slice());
        let targets = targets.unwrap_or_default();
        let failed = |message: String| RuntimeStatus {
            state: ProbeState::Failed,
            message,
            targets_attached: 0,
            restarts: 0,
        };
        if let Some(e) = &state.table_error {
            return failed(format!("cannot create table {TABLE}: {e}"));
        }
        let Some(engine) = &state.engine else {
            return failed("the profiler is not running".into());
        };
        let status = engine
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(e) = status.error {
            return failed(e);
        }
        if !status.running {
            return RuntimeStatus {
                state: ProbeState::Pending,
                message: "loading the profiler's eBPF programs".into(),
                targets_attached: 0,
                restarts: 0,
            };
        }
        let attached = targets
            .iter()
            .filter(|t| status.selected_pids.contains(&t.pid))
            .count();
        let hz = Selection::union(state.probes.values()).frequency_hz;
        RuntimeStatus {
            state: ProbeState::Attached,
            message: format!(
                "sampling {attached} process(es) at {hz} Hz per CPU into table {TABLE} every {}s \
                 (frame-pointer stacks; stacks without frame pointers are marked truncated)",
                self.period.as_secs_f64()
            ),
            targets_attached: attached as u32,
            restarts: 0,
        }
    }
}

/// One profiler Tracepoint.
pub struct ProfilerProbe {
    shared: Arc<ProfilerShared>,
    tables: crate::tables::Store,
    id: String,
}

fn selection(
    probe: &AssignedProbe,
    spec: &TracepointSpec,
    targets: &[TargetProcess],
) -> ProbeSelection {
    let hz = spec
        .probe
        .profiler
        .as_ref()
        .map_or(DEFAULT_FREQUENCY_HZ, |p| p.frequency_hz);
    ProbeSelection {
        frequency_hz: u64::from(hz.clamp(1, 1000)),
        targets: targets.to_vec(),
        by_process: probe.process.is_some(),
    }
}

impl ProfilerProbe {
    pub fn start(
        ctx: &ProbeContext,
        probe: &AssignedProbe,
        spec: &TracepointSpec,
        targets: &[TargetProcess],
    ) -> ProfilerProbe {
        ctx.profiler
            .register(&ctx.tables, &probe.id, selection(probe, spec, targets));
        ProfilerProbe {
            shared: ctx.profiler.clone(),
            tables: ctx.tables.clone(),
            id: probe.id.clone(),
        }
    }

    pub fn status(&self) -> RuntimeStatus {
        self.shared.status(&self.id)
    }

    pub async fn update(
        &mut self,
        probe: &AssignedProbe,
        spec: &TracepointSpec,
        targets: &[TargetProcess],
    ) {
        self.shared
            .register(&self.tables, &self.id, selection(probe, spec, targets));
    }

    pub async fn stop(self) {
        if let Some(thread) = self.shared.unregister(&self.id) {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                warn!("the profiler thread ended badly");
            }
        }
    }
}
