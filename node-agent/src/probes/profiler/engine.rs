//! The profiler's drain thread: owns the kernel state and the symbolizer. Each period it swaps the
//! kernel buffers, symbolizes the drained stacks and appends one `stack_traces` row per process and
//! folded stack. Symbolization is blocking CPU work, hence a thread of its own, not a tokio task.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};
use tracing::{debug, warn};

use super::kernel::{DrainedSample, Drops, Kernel};
use super::metrics::{DROP_REASONS, DropLabels, ProfilerMetrics};
use super::selection::Selection;
use super::symbolize::{LOST_USER_STACK_FRAME, Symbolizer, TRUNCATED_FRAME};
use crate::tables::{Row, TableWriter, Value};
use crate::targets::TargetProcess;
use crate::targets::cgroup::{cgroup_id, cgroup2_mount};

enum Command {
    Select(Selection),
    Stop,
}

/// What the engine reports to the probes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// The kernel side is loaded and sampling.
    pub running: bool,
    /// Why it is not.
    pub error: Option<String>,
    /// Pids currently selected (directly or through their container's cgroup).
    pub selected_pids: BTreeSet<u32>,
}

/// Talks to the drain thread.
pub struct EngineHandle {
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    pub status: Arc<Mutex<EngineStatus>>,
}

impl EngineHandle {
    /// Starts the thread; the kernel side is loaded there and failures land in `status`.
    pub fn spawn(
        period: Duration,
        selection: Selection,
        writer: TableWriter,
        metrics: ProfilerMetrics,
    ) -> EngineHandle {
        let (tx, rx) = channel();
        let status = Arc::new(Mutex::new(EngineStatus::default()));
        let thread_status = status.clone();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("sonde-profiler".into())
            .spawn(move || {
                let _g = span.enter();
                run(period, selection, rx, writer, metrics, thread_status)
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                lock(&status).error = Some(format!("cannot start the profiler thread: {e}"));
                None
            }
        };
        EngineHandle { tx, thread, status }
    }

    pub fn select(&self, selection: Selection) {
        let _ = self.tx.send(Command::Select(selection));
    }

    /// Drains the last samples, detaches everything and waits for the thread.
    pub fn stop(mut self) -> Option<JoinHandle<()>> {
        let _ = self.tx.send(Command::Stop);
        self.thread.take()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Engine {
    kernel: Kernel,
    symbolizer: Symbolizer,
    writer: TableWriter,
    metrics: ProfilerMetrics,
    status: Arc<Mutex<EngineStatus>>,
    selection: Selection,
    cgroup2: Option<PathBuf>,
    /// Identity of each selected container cgroup, for processes that started after the last rescan.
    cgroup_identity: HashMap<u64, TargetProcess>,
    last_drops: Drops,
}

fn run(
    period: Duration,
    selection: Selection,
    rx: Receiver<Command>,
    writer: TableWriter,
    metrics: ProfilerMetrics,
    status: Arc<Mutex<EngineStatus>>,
) {
    let hz = selection.frequency_hz.max(1);
    let kernel = match Kernel::start(hz) {
        Ok(k) => k,
        Err(e) => {
            warn!(error = %e, "the profiler cannot start");
            lock(&status).error = Some(e.to_string());
            return;
        }
    };
    metrics.frequency.set(hz as i64);
    let mut engine = Engine {
        kernel,
        symbolizer: Symbolizer::new(),
        writer,
        metrics,
        status,
        selection: Selection::default(),
        cgroup2: cgroup2_mount(),
        cgroup_identity: HashMap::new(),
        last_drops: Drops::default(),
    };
    engine.select(selection);
    lock(&engine.status).running = true;
    let mut next = Instant::now() + period;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Command::Select(selection)) => engine.select(selection),
            Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                engine.period();
                next += period;
                // After a long stall, start afresh rather than draining back to back.
                if next < Instant::now() {
                    next = Instant::now() + period;
                }
            }
        }
    }
    engine.period();
    engine.metrics.frequency.set(0);
    engine.metrics.selected.set(0);
    lock(&engine.status).running = false;
}

fn thread_cpu() -> f64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

impl Engine {
    fn fail(&self, message: String) {
        warn!(%message, "profiler error");
        lock(&self.status).error = Some(message);
    }

    fn select(&mut self, selection: Selection) {
        let cpu = thread_cpu();
        if let Err(e) = self.kernel.set_frequency(selection.frequency_hz.max(1)) {
            self.fail(e.to_string());
            return;
        }
        self.metrics.frequency.set(self.kernel.frequency() as i64);
        let mut cgroups = BTreeSet::new();
        let mut tgids = BTreeSet::new();
        self.cgroup_identity.clear();
        for (pid, target) in &selection.processes {
            let cgroup = match (&self.cgroup2, selection.container_pids.contains(pid)) {
                (Some(mount), true) => cgroup_id(mount, *pid),
                _ => None,
            };
            match cgroup {
                Some(id) => {
                    cgroups.insert(id);
                    self.cgroup_identity.insert(id, target.clone());
                }
                // No cgroup2 (or the process is already gone): select the process itself.
                None => {
                    tgids.insert(*pid);
                }
            }
            // Snapshot the maps of new processes now, in case they exit before the next drain.
            if !self.symbolizer.knows(*pid) {
                self.symbolizer.observe(*pid);
            }
        }
        if let Err(e) = self.kernel.select(&cgroups, &tgids) {
            self.fail(e.to_string());
            return;
        }
        self.metrics
            .selected
            .set((cgroups.len() + tgids.len()) as i64);
        {
            let mut status = lock(&self.status);
            status.selected_pids = selection.processes.keys().copied().collect();
            status.error = None;
        }
        self.selection = selection;
        self.metrics.processing_cpu.inc_by(thread_cpu() - cpu);
    }

    fn period(&mut self) {
        let cpu = thread_cpu();
        match self.kernel.swap_and_drain() {
            Ok(samples) => self.write(samples),
            Err(e) => self.fail(e.to_string()),
        }
        match self.kernel.drops() {
            Ok(drops) => {
                for (index, reason) in DROP_REASONS {
                    let i = index as usize;
                    let delta = drops[i].saturating_sub(self.last_drops[i]);
                    if delta > 0 {
                        self.metrics
                            .dropped
                            .get_or_create(&DropLabels { reason })
                            .inc_by(delta);
                    }
                }
                self.last_drops = drops;
            }
            Err(e) => self.fail(e.to_string()),
        }
        let selection = &self.selection;
        self.symbolizer.forget_except(|pid| {
            selection.processes.contains_key(&pid)
                || std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        self.metrics.periods.inc();
        self.metrics.processing_cpu.inc_by(thread_cpu() - cpu);
    }

    /// Symbolizes, folds and aggregates samples into rows.
    fn write(&mut self, samples: Vec<DrainedSample>) {
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let tgids: BTreeSet<u32> = samples.iter().map(|s| s.tgid).collect();
        for &tgid in &tgids {
            // Refresh the maps of live processes (exec, dlopen); keep the snapshot of dead ones.
            self.symbolizer.observe(tgid);
        }
        let mut rows: BTreeMap<(u32, String), u64> = BTreeMap::new();
        let (mut total, mut truncated) = (0u64, 0u64);
        for sample in samples {
            total += sample.count;
            let mut frames = Vec::new();
            if sample.user_lost {
                frames.push(LOST_USER_STACK_FRAME.to_owned());
            } else {
                let user = self.symbolizer.user_stack(sample.tgid, &sample.user);
                if user.truncated {
                    truncated += sample.count;
                    frames.push(TRUNCATED_FRAME.to_owned());
                }
                frames.extend(user.frames);
            }
            frames.extend(self.symbolizer.kernel_stack(&sample.kernel));
            *rows.entry((sample.tgid, frames.join(";"))).or_default() += sample.count;
        }
        self.metrics.samples.inc_by(total);
        self.metrics.truncated.inc_by(truncated);
        debug!(
            samples = total,
            rows = rows.len(),
            processes = tgids.len(),
            "profile period drained"
        );
        for ((tgid, stack), count) in rows {
            let identity = self.identity(tgid);
            self.writer.append(Row {
                time_ns,
                namespace: identity
                    .as_ref()
                    .map(|t| t.namespace.clone())
                    .unwrap_or_default(),
                pod: identity.as_ref().map(|t| t.pod.clone()).unwrap_or_default(),
                container: identity
                    .as_ref()
                    .map(|t| t.container.clone())
                    .unwrap_or_default(),
                pid: i64::from(tgid),
                values: vec![
                    Value::Int64(stack_trace_id(&stack)),
                    Value::String(stack),
                    Value::Int64(count as i64),
                ],
            });
        }
    }

    /// The target a sampled process belongs to: itself, or the container cgroup it runs in.
    fn identity(&self, tgid: u32) -> Option<TargetProcess> {
        if let Some(t) = self.selection.processes.get(&tgid) {
            return Some(t.clone());
        }
        let mount = self.cgroup2.as_ref()?;
        let id = cgroup_id(mount, tgid)?;
        self.cgroup_identity.get(&id).cloned()
    }
}

/// A stable id for a folded stack: 64-bit FNV-1a (hand-written: eight lines, and the id must not
/// change between agent versions the way std's hasher may).
pub fn stack_trace_id(stack: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stack.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_trace_ids_are_stable_and_distinguish_stacks() {
        assert_eq!(stack_trace_id(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(stack_trace_id("main;hot"), stack_trace_id("main;hot"));
        assert_ne!(stack_trace_id("main;hot"), stack_trace_id("main;cold"));
    }
}
