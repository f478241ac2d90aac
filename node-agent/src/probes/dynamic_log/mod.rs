//! DynamicLog runtime: logs added to a running program from its debug information, without
//! recompiling it.
//!
//! Contract used by the probe manager:
//! - `DynamicLogShared::new(registry)`: once at startup (metrics; the eBPF object loads on first use).
//! - `DynamicLogProbe::start(ctx, probe, spec, targets)` never fails synchronously: problems show in
//!   `status()`. Must be called inside the agent's tokio runtime.
//! - `DynamicLogProbe::status(&self) -> RuntimeStatus`
//! - `DynamicLogProbe::update(&mut self, probe, spec, targets)` (async): new spec or new processes.
//! - `DynamicLogProbe::stop(self)` (async): detaches everything this probe attached.
//!
//! How a call becomes a row: [`running`] opens the file each target process runs (not the one now
//! at its path, which a deploy may have replaced), [`analyze`] reads its ELF and DWARF ([`binary`],
//! [`dwarf`], [`types`]), replays the calling convention ([`goabi`], [`sysv`]) to place the parameters, turns the
//! capture expressions ([`expr`]) into kernel plans and renderers ([`plan`]) and finds every RET
//! ([`rets`]). [`kernel`] stores the plans by attach cookie in the one precompiled uprobe program and
//! attaches it at the entry and at each RET of each target process. Its events are decoded
//! ([`decode`]), entries joined with returns by goroutine or thread and frame depth ([`join`]), and
//! rows written to the table; [`metrics`] derives the user's counters and histograms.
//!
//! The table always has `goid` (Go) or `tid` (C, C++, Rust) after the target columns, so
//! `capture.goroutine` changes nothing. Go's pre-1.17 stack ABI is planned from the producer string
//! but not tested here (no such toolchain); without the register ABI's `g` in R14 calls are joined by
//! thread id.
pub mod abi;
pub mod analyze;
pub mod binary;
pub mod decode;
pub mod dwarf;
pub mod expr;
pub mod goabi;
pub mod join;
pub mod kernel;
pub mod metrics;
pub mod plan;
pub mod prologue;
pub mod rets;
pub mod running;
pub mod rust_enum;
pub mod rustabi;
pub mod sysv;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use sonde_api::{AssignedProbe, DynamicLogSpec, ProbeState};
use sonde_common::dynlog::EventHeader;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info, warn};

use self::analyze::{Analysis, Returns, analyze_binary};
use self::binary::Binary;
use self::decode::Record;
use self::join::{Joiner, Open};
use self::kernel::{Kernel, Link, Point, Sink};
use self::metrics::{DynamicLogMetrics, ProbeLabels};
use self::plan::{ColumnPlan, Planned};
use self::running::{FileKey, RunningFile, running_key};
use super::{ProbeContext, RuntimeStatus};
use crate::tables::{Column, ColumnType, Row, TableWriter, Value};
use crate::targets::TargetProcess;

/// Open calls followed per binary of a probe; more are evicted and counted.
const MAX_OPEN_CALLS: usize = 65_536;
/// A call open longer than this is taken as never returning.
const MAX_CALL_AGE: Duration = Duration::from_secs(600);
/// How often old open calls are evicted.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// State shared by every DynamicLog probe.
#[derive(Debug)]
pub struct DynamicLogShared {
    pub metrics: DynamicLogMetrics,
    kernel: Mutex<Option<Arc<Kernel>>>,
}

impl DynamicLogShared {
    pub fn new(registry: &mut Registry) -> DynamicLogShared {
        DynamicLogShared {
            metrics: DynamicLogMetrics::register(registry),
            kernel: Mutex::new(None),
        }
    }

    /// The loaded eBPF object, loading it on first use (and again after a failed load).
    fn kernel(&self) -> Result<Arc<Kernel>, String> {
        let mut guard = self.kernel.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = guard.as_ref() {
            return Ok(k.clone());
        }
        let k = Arc::new(Kernel::load(self.metrics.clone()).map_err(|e| e.to_string())?);
        *guard = Some(k.clone());
        Ok(k)
    }
}

enum Command {
    Update {
        probe: Box<AssignedProbe>,
        spec: Box<DynamicLogSpec>,
        targets: Vec<TargetProcess>,
    },
    Stop(oneshot::Sender<()>),
}

pub struct DynamicLogProbe {
    status: Arc<Mutex<RuntimeStatus>>,
    tx: Option<mpsc::UnboundedSender<Command>>,
}

fn set_status(status: &Mutex<RuntimeStatus>, state: ProbeState, message: String, attached: u32) {
    let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
    s.state = state;
    s.message = message;
    s.targets_attached = attached;
}

impl DynamicLogProbe {
    pub fn start(
        ctx: &ProbeContext,
        probe: &AssignedProbe,
        spec: &DynamicLogSpec,
        targets: &[TargetProcess],
    ) -> DynamicLogProbe {
        let status = Arc::new(Mutex::new(RuntimeStatus {
            state: ProbeState::Pending,
            message: "reading the targets' debug information".into(),
            targets_attached: 0,
            restarts: 0,
        }));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            set_status(
                &status,
                ProbeState::Failed,
                "DynamicLog probes must be started inside the agent's tokio runtime".into(),
                0,
            );
            return DynamicLogProbe { status, tx: None };
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor::new(ctx, probe, spec, status.clone());
        let span = tracing::Span::current();
        runtime.spawn(actor.run(rx, targets.to_vec()).instrument(span));
        DynamicLogProbe {
            status,
            tx: Some(tx),
        }
    }

    pub fn status(&self) -> RuntimeStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub async fn update(
        &mut self,
        probe: &AssignedProbe,
        spec: &DynamicLogSpec,
        targets: &[TargetProcess],
    ) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Update {
                probe: Box::new(probe.clone()),
                spec: Box::new(spec.clone()),
                targets: targets.to_vec(),
            });
        }
    }

    pub async fn stop(self) {
        if let Some(tx) = self.tx {
            let (ack, done) = oneshot::channel();
            if tx.send(Command::Stop(ack)).is_ok() {
                let _ = done.await;
            }
        }
    }
}

/// A probe on one binary: its cookies, where to attach, and the sink of its events.
struct Capture {
    entry_offset: u64,
    returns: Returns,
    entry_cookie: u64,
    ret_cookie: Option<u64>,
    sink: Arc<SinkState>,
}

/// Turns one binary's events into rows.
struct SinkState {
    owner: String,
    planned: Planned,
    writer: TableWriter,
    joiner: Mutex<Joiner<Vec<Value>>>,
    targets: Arc<RwLock<HashMap<u32, TargetProcess>>>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, to date rows from kernel timestamps.
    clock_offset: i64,
    metrics: DynamicLogMetrics,
    /// Column names in row order (for metric labels).
    names: Vec<String>,
    reported_evictions: Mutex<u64>,
}

fn decode_columns(columns: &[ColumnPlan], records: &[Record], out: &mut Vec<Value>) {
    let mut at = 0;
    for c in columns {
        let n = c.render.slots();
        let part = records.get(at..at + n).unwrap_or(&[]);
        out.push(if part.len() == n {
            decode::column(&c.render, part)
        } else {
            Value::Null
        });
        at += n;
    }
}

impl SinkState {
    fn on_entry(&self, h: &EventHeader, records: Vec<Record>) {
        let mut values = Vec::with_capacity(self.names.len());
        values.push(Value::Int64(h.goid as i64));
        decode_columns(&self.planned.entry_columns, &records, &mut values);
        if self.planned.ret.is_none() {
            self.emit(h.tgid, h.ktime_ns, values);
            return;
        }
        self.joiner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .enter(
                h.tgid,
                h.goid,
                Open {
                    depth: h.depth,
                    ktime_ns: h.ktime_ns,
                    data: values,
                },
            );
    }

    fn on_return(&self, h: &EventHeader, records: Vec<Record>) {
        let open = self
            .joiner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leave(h.tgid, h.goid, h.depth);
        let Some(open) = open else {
            return;
        };
        let mut values = open.data;
        decode_columns(&self.planned.return_columns, &records, &mut values);
        if self.planned.latency {
            values.push(Value::Int64(h.ktime_ns.saturating_sub(open.ktime_ns) as i64));
        }
        self.emit(h.tgid, open.ktime_ns, values);
    }

    fn emit(&self, tgid: u32, ktime_ns: u64, values: Vec<Value>) {
        let (namespace, pod, container) = self
            .targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tgid)
            .map(|t| (t.namespace.clone(), t.pod.clone(), t.container.clone()))
            .unwrap_or_default();
        let dropped = self.metrics.user.observe(&self.owner, |name| {
            self.names
                .iter()
                .position(|n| n == name)
                .and_then(|i| values.get(i).cloned())
        });
        let labels = ProbeLabels {
            probe: self.owner.clone(),
        };
        if dropped > 0 {
            self.metrics
                .series_dropped
                .get_or_create(&labels)
                .inc_by(dropped);
        }
        self.metrics.rows.get_or_create(&labels).inc();
        self.writer.append(Row {
            time_ns: (ktime_ns as i64).saturating_add(self.clock_offset),
            namespace,
            pod,
            container,
            pid: i64::from(tgid),
            values,
        });
    }

    /// Evicts old open calls (and those of `gone` processes) and counts them.
    fn sweep(&self, now_ns: u64, gone: &[u32]) {
        let evicted = {
            let mut j = self.joiner.lock().unwrap_or_else(PoisonError::into_inner);
            for pid in gone {
                j.forget_process(*pid);
            }
            j.evict_before(now_ns.saturating_sub(MAX_CALL_AGE.as_nanos() as u64));
            j.evicted
        };
        let mut reported = self
            .reported_evictions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if evicted > *reported {
            self.metrics
                .unreturned
                .get_or_create(&ProbeLabels {
                    probe: self.owner.clone(),
                })
                .inc_by(evicted - *reported);
            *reported = evicted;
        }
    }
}

fn clock_ns(id: nix::time::ClockId) -> i64 {
    nix::time::clock_gettime(id)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

/// The table's columns for a plan: goid (Go) or tid, the captures, latency.
fn columns_of(planned: &Planned) -> Vec<Column> {
    let mut cols = vec![Column::new(
        if planned.go { "goid" } else { "tid" },
        ColumnType::Int64,
    )];
    for c in planned.entry_columns.iter().chain(&planned.return_columns) {
        cols.push(Column::new(c.name.clone(), c.render.column_type()));
    }
    if planned.latency {
        cols.push(Column::new("latency", ColumnType::Int64));
    }
    cols
}

/// The table a DynamicLog writes to: `<namespace>.<table>`, `<table>` being `spec.tableName` or
/// else the resource's name with `-` and `.` turned into `_` (like a BpftraceScript's), e.g.
/// `shop.checkout_orders`.
///
/// The namespace keeps DynamicLogs of two namespaces from ever sharing a table, or learning of each
/// other through a column conflict: namespaced resources never reach another namespace. The `.`,
/// in no other table's name (identifiers), keeps them apart from cluster-wide tables too.
pub fn table_name(probe: &AssignedProbe, spec: &DynamicLogSpec) -> String {
    // A DynamicLog always has a namespace (manifests without one get `default`, as here).
    let namespace = probe.owner.namespace.as_deref().unwrap_or("default");
    let table = spec
        .table_name
        .clone()
        .unwrap_or_else(|| crate::tables::identifier(&probe.owner.name));
    format!("{namespace}.{table}")
}

/// Owns one probe's attachments; runs as a task, driven by [`Command`]s.
struct Actor {
    ctx: ProbeContext,
    probe: AssignedProbe,
    spec: DynamicLogSpec,
    status: Arc<Mutex<RuntimeStatus>>,
    kernel: Result<Arc<Kernel>, String>,
    targets: Arc<RwLock<HashMap<u32, TargetProcess>>>,
    binaries: HashMap<FileKey, Result<Arc<Capture>, String>>,
    attached: HashMap<u32, (FileKey, Vec<Link>)>,
    failures: BTreeMap<u32, String>,
    table: Option<(TableWriter, Vec<Column>)>,
    notes: Vec<String>,
}

impl Actor {
    fn new(
        ctx: &ProbeContext,
        probe: &AssignedProbe,
        spec: &DynamicLogSpec,
        status: Arc<Mutex<RuntimeStatus>>,
    ) -> Actor {
        let kernel = ctx.dynamic_log.kernel();
        Actor {
            ctx: ctx.clone(),
            probe: probe.clone(),
            spec: spec.clone(),
            status,
            kernel,
            targets: Arc::default(),
            binaries: HashMap::new(),
            attached: HashMap::new(),
            failures: BTreeMap::new(),
            table: None,
            notes: Vec::new(),
        }
    }

    fn table_name(&self) -> String {
        table_name(&self.probe, &self.spec)
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, targets: Vec<TargetProcess>) {
        if let Err(e) = self
            .ctx
            .dynamic_log
            .metrics
            .user
            .define(&self.probe.id, &self.spec.metrics)
        {
            self.notes.push(e);
        }
        self.ctx.dynamic_log.metrics.probe_started(&self.probe.id);
        self.apply(targets).await;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Update { probe, spec, targets }) => {
                        let (probe, spec) = (*probe, *spec);
                        if spec != self.spec {
                            info!(probe = %probe.id, "DynamicLog spec changed; attaching afresh");
                            self.teardown();
                            self.spec = spec;
                            self.notes.clear();
                            if let Err(e) = self.ctx.dynamic_log.metrics.user.define(&probe.id, &self.spec.metrics) {
                                self.notes.push(e);
                            }
                        }
                        self.probe = probe;
                        self.apply(targets).await;
                    }
                    Some(Command::Stop(ack)) => {
                        self.teardown();
                        self.ctx.dynamic_log.metrics.probe_stopped(&self.probe.id);
                        let _ = ack.send(());
                        return;
                    }
                    None => {
                        self.teardown();
                        self.ctx.dynamic_log.metrics.probe_stopped(&self.probe.id);
                        return;
                    }
                },
                _ = sweep.tick() => self.sweep(&[]),
            }
        }
    }

    fn sweep(&self, gone: &[u32]) {
        let now = clock_ns(nix::time::ClockId::CLOCK_MONOTONIC) as u64;
        for capture in self.binaries.values().flatten() {
            capture.sink.sweep(now, gone);
        }
    }

    /// Detaches everything and forgets every analysis (new spec, or stop).
    fn teardown(&mut self) {
        if let Ok(kernel) = &self.kernel {
            for (_, (_, links)) in self.attached.drain() {
                kernel.detach(links);
            }
            for capture in self.binaries.values().flatten() {
                kernel.uninstall(capture.entry_cookie);
                if let Some(c) = capture.ret_cookie {
                    kernel.uninstall(c);
                }
            }
        }
        self.sweep(&[]);
        self.binaries.clear();
        self.failures.clear();
        self.table = None;
    }

    async fn apply(&mut self, targets: Vec<TargetProcess>) {
        let kernel = match &self.kernel {
            Ok(k) => k.clone(),
            Err(e) => {
                set_status(&self.status, ProbeState::Failed, e.clone(), 0);
                return;
            }
        };
        {
            let mut map = self.targets.write().unwrap_or_else(PoisonError::into_inner);
            map.clear();
            map.extend(targets.iter().map(|t| (t.pid, t.clone())));
        }
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|pid| !targets.iter().any(|t| t.pid == **pid))
            .copied()
            .collect();
        for pid in &gone {
            if let Some((_, links)) = self.attached.remove(pid) {
                kernel.detach(links);
            }
        }
        // A process that exec'd another binary keeps its pid: its probes sit on the old file and
        // see nothing, so attach it afresh.
        let reexecuted: Vec<u32> = self
            .attached
            .iter()
            .filter(|(pid, (key, _))| running_key(**pid).is_some_and(|now| now != *key))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in reexecuted {
            if let Some((_, links)) = self.attached.remove(&pid) {
                info!(probe = %self.probe.id, pid, "DynamicLog target runs another executable now; attaching afresh");
                kernel.detach(links);
            }
        }
        if !gone.is_empty() {
            self.sweep(&gone);
        }
        self.failures
            .retain(|pid, _| targets.iter().any(|t| t.pid == *pid));
        for target in &targets {
            if self.attached.contains_key(&target.pid) {
                continue;
            }
            match self.attach(&kernel, target).await {
                Ok(()) => {
                    self.failures.remove(&target.pid);
                }
                Err(message) => {
                    if self.failures.get(&target.pid) != Some(&message) {
                        warn!(probe = %self.probe.id, pid = target.pid, %message, "DynamicLog cannot attach");
                    }
                    self.failures.insert(target.pid, message);
                }
            }
        }
        self.publish(targets.len());
    }

    /// The capture of the binary `running` (one analysis per binary, shared by its processes).
    async fn capture_for(
        &mut self,
        running: &RunningFile,
        target: &TargetProcess,
    ) -> Result<Arc<Capture>, String> {
        if let Some(result) = self.binaries.get(&running.key) {
            return result.clone();
        }
        // Read the file the process runs; name it by its path for messages and debuglink lookup.
        let file = running.path();
        let path = target.host_exe();
        let root = PathBuf::from(format!("/proc/{}/root", target.pid));
        let spec = self.spec.clone();
        let result = tokio::task::spawn_blocking(move || {
            analyze_binary(&Binary::read_as(&file, &path, &root)?, &spec)
        })
        .await
        .map_err(|e| format!("the analysis of {} panicked: {e}", target.exe.display()))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|analysis| self.install(analysis));
        self.binaries.insert(running.key, result.clone());
        result
    }

    /// Creates the table (first binary) and installs the plans of one analysed binary.
    fn install(&mut self, analysis: Analysis) -> Result<Arc<Capture>, String> {
        let kernel = self.kernel.clone()?;
        let columns = columns_of(&analysis.planned);
        let writer = match &self.table {
            Some((writer, existing)) if *existing == columns => writer.clone(),
            Some((_, existing)) => {
                let describe = |c: &[Column]| {
                    c.iter()
                        .map(|c| format!("{}:{:?}", c.name, c.ty))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(format!(
                    "this binary's {} gives columns ({}) unlike the table's ({}); trace one build per DynamicLog",
                    analysis.planned.function,
                    describe(&columns),
                    describe(existing)
                ));
            }
            None => {
                let writer = self
                    .ctx
                    .tables
                    .create(&self.table_name(), &self.probe.id, columns.clone())
                    .map_err(|e| e.to_string())?;
                info!(probe = %self.probe.id, table = %writer.table(), "DynamicLog rows go to this table");
                self.table = Some((writer.clone(), columns.clone()));
                writer
            }
        };
        for note in &analysis.planned.notes {
            if !self.notes.contains(note) {
                self.notes.push(note.clone());
            }
        }
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let sink = Arc::new(SinkState {
            owner: self.probe.id.clone(),
            planned: analysis.planned.clone(),
            writer,
            joiner: Mutex::new(Joiner::new(MAX_OPEN_CALLS)),
            targets: self.targets.clone(),
            clock_offset: clock_ns(nix::time::ClockId::CLOCK_REALTIME)
                - clock_ns(nix::time::ClockId::CLOCK_MONOTONIC),
            metrics: self.ctx.dynamic_log.metrics.clone(),
            names,
            reported_evictions: Mutex::new(0),
        });
        let entry_cookie = kernel.new_cookie();
        let entry_sink: Sink = {
            let sink = sink.clone();
            Arc::new(move |h: &EventHeader, r: Vec<Record>| sink.on_entry(h, r))
        };
        kernel
            .install(entry_cookie, &analysis.planned.entry, entry_sink)
            .map_err(|e| e.to_string())?;
        let ret_cookie = match &analysis.planned.ret {
            Some(plan) => {
                let cookie = kernel.new_cookie();
                let ret_sink: Sink = {
                    let sink = sink.clone();
                    Arc::new(move |h: &EventHeader, r: Vec<Record>| sink.on_return(h, r))
                };
                if let Err(e) = kernel.install(cookie, plan, ret_sink) {
                    kernel.uninstall(entry_cookie);
                    return Err(e.to_string());
                }
                Some(cookie)
            }
            None => None,
        };
        Ok(Arc::new(Capture {
            entry_offset: analysis.entry_offset,
            returns: analysis.returns,
            entry_cookie,
            ret_cookie,
            sink,
        }))
    }

    async fn attach(&mut self, kernel: &Kernel, target: &TargetProcess) -> Result<(), String> {
        let running = RunningFile::open(target.pid, &target.exe).map_err(|e| e.to_string())?;
        let key = running.key;
        let capture = self.capture_for(&running, target).await?;
        let mut points = vec![Point {
            offset: capture.entry_offset,
            cookie: capture.entry_cookie,
            uretprobe: false,
        }];
        if let Some(cookie) = capture.ret_cookie {
            match &capture.returns {
                Returns::None => {}
                Returns::Rets(offsets) => points.extend(offsets.iter().map(|&offset| Point {
                    offset,
                    cookie,
                    uretprobe: false,
                })),
                Returns::Uretprobe(offset) => points.push(Point {
                    offset: *offset,
                    cookie,
                    uretprobe: true,
                }),
            }
        }
        debug!(probe = %self.probe.id, pid = target.pid, dev = key.0, inode = key.1, ?points, "DynamicLog attaching");
        // Through the open file, not the path: the path may name a newer build by now.
        let links = kernel
            .attach(&running.path(), &target.host_exe(), target.pid, &points)
            .map_err(|e| e.to_string())?;
        info!(probe = %self.probe.id, pid = target.pid, function = %capture.sink.planned.function, points = points.len(), "DynamicLog attached");
        self.attached.insert(target.pid, (key, links));
        Ok(())
    }

    fn publish(&self, targets: usize) {
        let attached = self.attached.len() as u32;
        let function = &self.spec.function;
        let notes = if self.notes.is_empty() {
            String::new()
        } else {
            format!("; {}", self.notes.join("; "))
        };
        let first_failure = self
            .failures
            .iter()
            .next()
            .map(|(pid, m)| format!("pid {pid}: {m}"));
        let (state, message) = if targets == 0 {
            (
                ProbeState::Pending,
                format!("waiting for a process to trace {function} in{notes}"),
            )
        } else if attached == 0 {
            (
                ProbeState::Failed,
                first_failure.unwrap_or_else(|| "no process could be attached".into()),
            )
        } else {
            let failed = match (&first_failure, self.failures.len()) {
                (Some(f), n) => format!("; {n} failed, first {f}"),
                _ => String::new(),
            };
            (
                ProbeState::Attached,
                format!(
                    "tracing {function} in {attached} of {targets} processes into table {}{failed}{notes}",
                    self.table_name()
                ),
            )
        };
        set_status(&self.status, state, message, attached);
    }
}

#[cfg(test)]
mod tests {
    use sonde_api::{ProbeConfig, ProbeOwner};

    use super::*;

    fn probe(namespace: &str, name: &str, spec: &DynamicLogSpec) -> AssignedProbe {
        AssignedProbe {
            id: format!("DynamicLog/{namespace}/{name}"),
            owner: ProbeOwner {
                kind: "DynamicLog".into(),
                namespace: Some(namespace.into()),
                name: name.into(),
                uid: format!("uid-{namespace}-{name}"),
                generation: 1,
            },
            config: ProbeConfig::DynamicLog(spec.clone()),
            targets: Vec::new(),
            process: None,
        }
    }

    fn spec(table_name: Option<&str>) -> DynamicLogSpec {
        DynamicLogSpec {
            selector: None,
            container: None,
            process: None,
            ttl: None,
            function: "main.Fib".into(),
            capture: None,
            max_string_bytes: None,
            table_name: table_name.map(str::to_owned),
            metrics: Vec::new(),
        }
    }

    #[test]
    fn tables_are_named_by_namespace_then_resource_or_table_name() {
        let default = spec(None);
        assert_eq!(
            table_name(&probe("shop", "tick-ok", &default), &default),
            "shop.tick_ok"
        );
        assert_eq!(
            table_name(&probe("team-a", "tick-ok", &default), &default),
            "team-a.tick_ok"
        );
        assert_eq!(
            table_name(&probe("shop", "v1.2-orders", &default), &default),
            "shop.v1_2_orders"
        );
        // A chosen tableName is qualified too: two namespaces choosing `ticks` get a table each.
        let chosen = spec(Some("ticks"));
        assert_eq!(
            table_name(&probe("shop", "a", &chosen), &chosen),
            "shop.ticks"
        );
        assert_eq!(
            table_name(&probe("team-a", "b", &chosen), &chosen),
            "team-a.ticks"
        );
    }
}
