//! The probe manager: one task that owns every running probe and applies the difference between
//! the desired probes and the running ones (start new, stop removed, update changed, leave the rest).
//!
//! It rescans host processes every [`RESCAN_EVERY`] so probes follow pods and processes that start or
//! stop (rereading only those the kernel names, see [`ProcessScanner`]), and at once when a process
//! execs, so that a short-lived process (a `curl`) is traced before it has done its work (at most
//! [`EXEC_RESCANS_PER_SECOND`] on average, see [`RescanBudget`]). It polls runtime statuses every
//! [`POLL_EVERY`], publishing them on a `watch` channel.
use std::collections::{BTreeMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sonde_api::{AssignedProbe, ProbeConfig, ProbeStatus};
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::bpftrace::BpftraceProbe;
use super::dynamic_log::DynamicLogProbe;
use super::profiler::ProfilerProbe;
use super::protocols::ProtocolProbe;
use super::{ProbeContext, RuntimeStatus};
use crate::targets::{
    CompiledSelector, ProcessScanner, ProcessTable, ProcessWatch, Rescan, TargetProcess,
    TargetsError, compile,
};
use crate::telemetry::Telemetry;

/// How often host processes are rescanned to follow pods and processes that come and go.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// How often runtime statuses are collected.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Rescans for execs, on average at most: a node that execs all the time (a build, a shell loop)
/// costs this many rescans a second, not one per exec.
pub const EXEC_RESCANS_PER_SECOND: f64 = 20.0;
/// Rescans for execs that may follow each other at once (`sh -c 'sleep 1; curl …'` execs three
/// times within milliseconds; each new image may be the one selected).
pub const EXEC_RESCAN_BURST: f64 = 10.0;

/// A token bucket for rescans after execs: [`EXEC_RESCAN_BURST`] at once, refilled at
/// [`EXEC_RESCANS_PER_SECOND`].
#[derive(Debug)]
struct RescanBudget {
    tokens: f64,
    at: Instant,
}

impl RescanBudget {
    fn new(now: Instant) -> RescanBudget {
        RescanBudget {
            tokens: EXEC_RESCAN_BURST,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * EXEC_RESCANS_PER_SECOND;
        self.tokens = (self.tokens + earned).min(EXEC_RESCAN_BURST);
        self.at = now;
    }

    /// When the next rescan may run.
    fn next(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let missing = (1.0 - self.tokens).max(0.0);
        now + Duration::from_secs_f64(missing / EXEC_RESCANS_PER_SECOND)
    }

    /// A rescan ran.
    fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

fn warn_no_exec_wakeups(error: &dyn std::fmt::Display) {
    warn!(
        %error,
        "cannot poll exec notifications: new processes are followed every {}s",
        RESCAN_EVERY.as_secs()
    );
}

enum Command {
    Apply(Vec<AssignedProbe>, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Talks to the manager task. Cheap to clone.
#[derive(Clone)]
pub struct ManagerHandle {
    tx: mpsc::Sender<Command>,
    statuses: watch::Receiver<Vec<ProbeStatus>>,
}

impl ManagerHandle {
    /// Makes `desired` the set of running probes; returns once every start/stop/update was issued.
    pub async fn apply(&self, desired: Vec<AssignedProbe>) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Apply(desired, ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Stops every probe (awaiting each runtime's stop) and ends the manager task.
    pub async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Command::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Every probe's status, sorted by id; changes whenever a status changes.
    pub fn statuses(&self) -> watch::Receiver<Vec<ProbeStatus>> {
        self.statuses.clone()
    }
}

/// One running probe, by kind. Every runtime has the same shape: start, status, update, stop.
enum Runtime {
    Bpftrace(BpftraceProbe),
    Protocols(ProtocolProbe),
    Profiler(ProfilerProbe),
    DynamicLog(DynamicLogProbe),
}

impl Runtime {
    fn status(&self) -> RuntimeStatus {
        match self {
            Runtime::Bpftrace(p) => p.status(),
            Runtime::Protocols(p) => p.status(),
            Runtime::Profiler(p) => p.status(),
            Runtime::DynamicLog(p) => p.status(),
        }
    }

    async fn stop(self) {
        match self {
            Runtime::Bpftrace(p) => p.stop().await,
            Runtime::Protocols(p) => p.stop().await,
            Runtime::Profiler(p) => p.stop().await,
            Runtime::DynamicLog(p) => p.stop().await,
        }
    }

    /// Hands a new generation or new targets to the runtime; false when `probe` needs another
    /// runtime kind (the caller then stops this one and starts afresh).
    async fn update(&mut self, probe: &AssignedProbe, targets: &[TargetProcess]) -> bool {
        match (self, &probe.config) {
            (Runtime::Bpftrace(rt), ProbeConfig::BpftraceScript(spec)) => {
                rt.update(probe, spec, targets).await
            }
            (Runtime::Protocols(rt), ProbeConfig::Tracepoint(spec))
                if spec.probe.protocols.is_some() =>
            {
                rt.update(probe, spec, targets).await
            }
            (Runtime::Profiler(rt), ProbeConfig::Tracepoint(spec))
                if spec.probe.profiler.is_some() =>
            {
                rt.update(probe, spec, targets).await
            }
            (Runtime::DynamicLog(rt), ProbeConfig::DynamicLog(spec)) => {
                rt.update(probe, spec, targets).await
            }
            _ => return false,
        }
        true
    }
}

struct Running {
    probe: AssignedProbe,
    /// The probe's process selector, compiled once for every rescan.
    selector: CompiledSelector,
    targets: Vec<TargetProcess>,
    runtime: Runtime,
}

struct Manager {
    ctx: ProbeContext,
    telemetry: Telemetry,
    running: BTreeMap<String, Running>,
    statuses: watch::Sender<Vec<ProbeStatus>>,
    /// Scans run on a blocking thread; the scanner keeps what it saw between them.
    scanner: Arc<Mutex<ProcessScanner>>,
    /// Last process-scan error, logged once until it changes.
    scan_error: Option<String>,
}

/// Starts the manager task.
pub fn spawn(ctx: ProbeContext, telemetry: Telemetry) -> ManagerHandle {
    let (tx, rx) = mpsc::channel(8);
    let (statuses, statuses_rx) = watch::channel(Vec::new());
    let watch = match ProcessWatch::start() {
        Ok(watch) => Some(watch),
        Err(error) => {
            warn!(%error, "no process notifications: every process rescan rereads all of /proc");
            None
        }
    };
    let execs = watch.as_ref().and_then(|watch| match watch.exec_waker() {
        Ok(execs) => Some(execs),
        Err(error) => {
            warn_no_exec_wakeups(&error);
            None
        }
    });
    let manager = Manager {
        ctx,
        telemetry,
        running: BTreeMap::new(),
        statuses,
        scanner: Arc::new(Mutex::new(ProcessScanner::new(Path::new("/proc"), watch))),
        scan_error: None,
    };
    tokio::spawn(manager.run(rx, execs).instrument(info_span!("probes")));
    ManagerHandle {
        tx,
        statuses: statuses_rx,
    }
}

fn start(ctx: &ProbeContext, probe: &AssignedProbe, targets: &[TargetProcess]) -> Runtime {
    match &probe.config {
        ProbeConfig::BpftraceScript(spec) => {
            Runtime::Bpftrace(BpftraceProbe::start(ctx, probe, spec, targets))
        }
        // Validation guarantees exactly one of protocols and profiler.
        ProbeConfig::Tracepoint(spec) if spec.probe.profiler.is_some() => {
            Runtime::Profiler(ProfilerProbe::start(ctx, probe, spec, targets))
        }
        ProbeConfig::Tracepoint(spec) => {
            Runtime::Protocols(ProtocolProbe::start(ctx, probe, spec, targets))
        }
        ProbeConfig::DynamicLog(spec) => {
            Runtime::DynamicLog(DynamicLogProbe::start(ctx, probe, spec, targets))
        }
    }
}

/// A probe's targets after a rescan: those of `before` whose process did not change, and those
/// among the changed processes (`resolved`), sorted.
fn updated_targets(
    before: &[TargetProcess],
    changed: &HashSet<u32>,
    resolved: Vec<TargetProcess>,
) -> Vec<TargetProcess> {
    let mut targets: Vec<TargetProcess> = before
        .iter()
        .filter(|t| !changed.contains(&t.pid))
        .cloned()
        .chain(resolved)
        .collect();
    targets.sort();
    targets
}

/// Resolves once `execs` polls readable; never without it.
async fn readable(
    execs: Option<&AsyncFd<OwnedFd>>,
) -> std::io::Result<AsyncFdReadyGuard<'_, OwnedFd>> {
    match execs {
        Some(execs) => execs.readable().await,
        None => std::future::pending().await,
    }
}

impl Manager {
    /// `execs`: readable after an exec (None without process notifications).
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, execs: Option<OwnedFd>) {
        let mut rescan = tokio::time::interval(RESCAN_EVERY);
        let mut poll = tokio::time::interval(POLL_EVERY);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut execs = execs.and_then(|fd| {
            // SAFETY: the AsyncFd owns the descriptor: it stays open, and is the same, for as long
            // as it is registered.
            match unsafe { AsyncFd::register(fd) } {
                Ok(execs) => Some(execs),
                Err(error) => {
                    warn_no_exec_wakeups(&error);
                    None
                }
            }
        });
        let exec_rescan = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(exec_rescan);
        // An exec was announced and its rescan is due when `exec_rescan` fires.
        let mut exec_due = false;
        let mut budget = RescanBudget::new(Instant::now());
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Apply(desired, ack)) => {
                        self.apply(desired).await;
                        self.publish();
                        let _ = ack.send(());
                    }
                    Some(Command::Shutdown(ack)) => {
                        self.stop_all().await;
                        let _ = ack.send(());
                        return;
                    }
                    None => {
                        self.stop_all().await;
                        return;
                    }
                },
                _ = rescan.tick() => {
                    if !self.running.is_empty() {
                        self.rescan().await;
                        self.publish();
                    }
                }
                ready = readable(execs.as_ref()), if !exec_due => match ready {
                    Ok(mut guard) => {
                        // Cleared before the rescan drains the ring: an exec after the drain wakes
                        // us again.
                        guard.clear_ready();
                        exec_due = true;
                        exec_rescan.as_mut().reset(budget.next(Instant::now()));
                    }
                    Err(error) => {
                        warn_no_exec_wakeups(&error);
                        execs = None;
                    }
                },
                () = &mut exec_rescan, if exec_due => {
                    exec_due = false;
                    if !self.running.is_empty() {
                        budget.spend(Instant::now());
                        self.rescan().await;
                        self.publish();
                    }
                }
                _ = poll.tick() => self.publish(),
            }
        }
    }

    /// Scans /proc on a blocking thread; None (logged once) when it fails.
    async fn scan(&mut self) -> Option<ProcessTable> {
        self.with_scanner(|scanner| scanner.scan().map(ProcessTable::from_processes))
            .await
    }

    /// Runs `scan` on the scanner on a blocking thread; None (logged once) when it fails.
    async fn with_scanner<T: Send + 'static>(
        &mut self,
        scan: impl FnOnce(&mut ProcessScanner) -> Result<T, TargetsError> + Send + 'static,
    ) -> Option<T> {
        let scanner = Arc::clone(&self.scanner);
        let result = tokio::task::spawn_blocking(move || {
            let mut scanner = scanner.lock().unwrap_or_else(|p| p.into_inner());
            scan(&mut scanner)
        })
        .await;
        let error = match result {
            Ok(Ok(found)) => {
                self.scan_error = None;
                return Some(found);
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the process scan panicked: {e}"),
        };
        if self.scan_error.as_ref() != Some(&error) {
            warn!(%error, "cannot scan host processes; probe targets are not updated");
            self.scan_error = Some(error);
        }
        None
    }

    async fn apply(&mut self, desired: Vec<AssignedProbe>) {
        let desired: BTreeMap<String, AssignedProbe> =
            desired.into_iter().map(|p| (p.id.clone(), p)).collect();
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|id| !desired.contains_key(*id))
            .cloned()
            .collect();
        for id in removed {
            if let Some(running) = self.running.remove(&id) {
                info!(probe = %id, "stopping removed probe");
                running
                    .runtime
                    .stop()
                    .instrument(info_span!("probe", id = %id))
                    .await;
            }
        }
        let changed = desired
            .iter()
            .any(|(id, p)| self.running.get(id).is_none_or(|r| r.probe != *p));
        if !changed {
            return;
        }
        let table = self.scan().await;
        for (id, probe) in desired {
            let span = info_span!("probe", id = %id);
            let targets = table.as_ref().map(|t| t.resolve(&probe));
            match self.running.remove(&id) {
                None => {
                    let targets = targets.unwrap_or_default();
                    let _g = span.enter();
                    info!(
                        owner_generation = probe.owner.generation,
                        targets = targets.len(),
                        "starting probe"
                    );
                    let runtime = start(&self.ctx, &probe, &targets);
                    self.running.insert(
                        id,
                        Running {
                            selector: compile(&probe),
                            probe,
                            targets,
                            runtime,
                        },
                    );
                }
                Some(running) if running.probe == probe => {
                    self.running.insert(id, running);
                }
                Some(mut running) => {
                    let targets = targets.unwrap_or_else(|| running.targets.clone());
                    let same_owner = running.probe.owner.uid == probe.owner.uid;
                    info!(parent: &span, owner_generation = probe.owner.generation, "updating probe");
                    let updated = same_owner
                        && running
                            .runtime
                            .update(&probe, &targets)
                            .instrument(span.clone())
                            .await;
                    match updated {
                        true => {
                            running.selector = compile(&probe);
                            running.probe = probe;
                            running.targets = targets;
                            self.running.insert(id, running);
                        }
                        false => {
                            // Another owner (deleted and re-created) or another config: start afresh.
                            info!(parent: &span, "restarting probe for its new owner or config");
                            running.runtime.stop().instrument(span.clone()).await;
                            let runtime = span.in_scope(|| start(&self.ctx, &probe, &targets));
                            self.running.insert(
                                id,
                                Running {
                                    selector: compile(&probe),
                                    probe,
                                    targets,
                                    runtime,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    /// Hands new targets to probes whose resolved processes changed. Only the processes that
    /// changed are matched again, unless a full scan reread everything.
    async fn rescan(&mut self) {
        let Some(found) = self.with_scanner(ProcessScanner::rescan).await else {
            return;
        };
        let (changed, table) = match found {
            Rescan::Unchanged => return,
            Rescan::Changed { pids, processes } => {
                (Some(pids), ProcessTable::from_processes(processes))
            }
            Rescan::Full(processes) => (None, ProcessTable::from_processes(processes)),
        };
        for (id, running) in &mut self.running {
            let targets = match &changed {
                None => table.resolve_compiled(&running.probe, &running.selector),
                Some(pids) => updated_targets(
                    &running.targets,
                    pids,
                    table.resolve_compiled(&running.probe, &running.selector),
                ),
            };
            if targets == running.targets {
                continue;
            }
            // Debug: every short-lived process a probe selects (each curl) comes and goes here.
            debug!(probe = %id, before = running.targets.len(), after = targets.len(), "probe targets changed");
            // The kind cannot change here (same probe), so update always applies.
            running
                .runtime
                .update(&running.probe, &targets)
                .instrument(info_span!("probe", id = %id))
                .await;
            running.targets = targets;
        }
    }

    async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        info!(probes = running.len(), "stopping every probe");
        futures::future::join_all(
            running
                .into_iter()
                .map(|(id, r)| r.runtime.stop().instrument(info_span!("probe", id = %id))),
        )
        .await;
        self.publish();
    }

    fn publish(&self) {
        let statuses: Vec<ProbeStatus> = self
            .running
            .iter()
            .map(|(id, r)| {
                let s = r.runtime.status();
                ProbeStatus {
                    id: id.clone(),
                    owner_uid: r.probe.owner.uid.clone(),
                    generation: r.probe.owner.generation,
                    state: s.state,
                    message: s.message,
                    targets_attached: s.targets_attached,
                    restarts: s.restarts,
                }
            })
            .collect();
        self.telemetry
            .set_probe_states(statuses.iter().map(|s| &s.state));
        // Resource metrics cover the targets of every probe, and go with the last probe on a pod.
        let resources = self.ctx.profiler.resources();
        resources.follow(self.running.values().flat_map(|r| &r.targets));
        self.statuses.send_if_modified(|current| {
            if *current == statuses {
                false
            } else {
                *current = statuses;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: u32, exe: &str) -> TargetProcess {
        TargetProcess {
            pid,
            exe: exe.into(),
            ..TargetProcess::default()
        }
    }

    #[test]
    fn a_rescan_keeps_unchanged_targets_and_replaces_changed_ones() {
        let before = vec![target(10, "/a"), target(20, "/a"), target(30, "/a")];
        // 20 exec'd something else (no longer resolved), 30 exited, 25 is new.
        let changed = HashSet::from([20, 25, 30]);
        let after = updated_targets(&before, &changed, vec![target(25, "/a")]);
        assert_eq!(after, vec![target(10, "/a"), target(25, "/a")]);
        // 10 exec'd another matching build: its new target replaces the old one.
        let after = updated_targets(&after, &HashSet::from([10]), vec![target(10, "/b")]);
        assert_eq!(after, vec![target(10, "/b"), target(25, "/a")]);
    }

    #[test]
    fn exec_rescans_run_at_once_for_a_burst_then_at_the_refill_rate_and_recover_when_quiet() {
        let start = Instant::now();
        let mut budget = RescanBudget::new(start);
        for _ in 0..EXEC_RESCAN_BURST as usize {
            assert_eq!(budget.next(start), start);
            budget.spend(start);
        }
        let interval = Duration::from_secs_f64(1.0 / EXEC_RESCANS_PER_SECOND);
        let next = budget.next(start);
        assert!(next > start && next <= start + interval, "{next:?}");
        budget.spend(next);
        assert!(budget.next(next) > next, "one token was earned and spent");
        // A quiet second refills the whole burst.
        let later = next + Duration::from_secs(1);
        for _ in 0..EXEC_RESCAN_BURST as usize {
            assert_eq!(budget.next(later), later);
            budget.spend(later);
        }
    }
}
