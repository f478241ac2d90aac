//! BpftraceScript runtime: a supervised `bpftrace -f json` child per script.
//!
//! Contract used by the probe manager:
//! - `BpftraceShared::new(registry, bpftrace)` registers the runtime's metrics once at startup;
//!   `.with_capabilities(rx)` lets scripts that need a facility the node lacks fail for good.
//! - `BpftraceProbe::start(ctx, probe, spec, targets)` never fails synchronously: problems show in
//!   `status()` and are logged at WARN. It must be called inside a tokio runtime.
//! - `BpftraceProbe::status(&self) -> RuntimeStatus`
//! - `BpftraceProbe::update(&mut self, probe, spec, targets)` (async) restarts bpftrace only if the
//!   resolved program or table changed; otherwise it only refreshes the pid → pod mapping.
//! - A script with `spec.pods` runs only while a selected pod runs on the node (Pending with
//!   [`pod_filter::NO_POD_MESSAGE`] otherwise), and only sees those pods' processes.
//! - `BpftraceProbe::stop(self)` (async): SIGTERM, keep reading, SIGKILL after 5 s, reap.
//!
//! Parts: [`program`] reads the program text (printf formats, map arities, attach points),
//! [`uprobe_paths`] points uprobes into the target pods, [`pod_filter`] limits every probe to the
//! target pods' cgroups, [`format`](mod@format) turns printf lines into typed
//! values, [`output`] parses bpftrace's JSON lines, [`sink`] writes rows and map snapshots,
//! [`metrics`] exports them, [`supervisor`] runs and restarts the child, [`spawner`] forks it from a
//! thread that lives as long as the agent (so PR_SET_PDEATHSIG is safe).
pub mod format;
pub mod metrics;
pub mod output;
pub mod pod_filter;
pub mod program;
pub mod sink;
pub mod spawner;
pub mod supervisor;
pub mod uprobe_paths;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::registry::Registry;
use sonde_api::{AssignedProbe, BpftraceScriptSpec, NodeCapabilities, ProbeState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::format::Formats;
use self::metrics::BpftraceMetrics;
use self::pod_filter::{NO_POD_MESSAGE, PodFilterError};
use self::sink::{Identities, Sink, TokenBucket};
use self::supervisor::Supervisor;
use super::{ProbeContext, RuntimeStatus};
use crate::tables::TablesError;
use crate::targets::TargetProcess;

#[derive(Debug, thiserror::Error)]
pub enum BpftraceError {
    #[error(transparent)]
    UprobePath(#[from] uprobe_paths::UprobePathError),
    #[error(transparent)]
    PodFilter(#[from] PodFilterError),
    #[error("cannot create table {table} for the script's printf rows: {source}")]
    Table {
        table: String,
        #[source]
        source: Box<TablesError>,
    },
    #[error(
        "cannot write the bpftrace program to {path}: {source}; the agent needs a writable temp dir"
    )]
    ProgramFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bpftrace probes must be started inside the agent's tokio runtime")]
    NoRuntime,
}

/// State shared by every bpftrace probe (binary path, metrics, where programs are written, what
/// the node can do).
#[derive(Debug)]
pub struct BpftraceShared {
    pub bpftrace: PathBuf,
    pub metrics: BpftraceMetrics,
    program_dir: PathBuf,
    /// Where cgroup2 is mounted; None without it (scripts with `spec.pods` then cannot run).
    cgroup2: Option<PathBuf>,
    /// None until detected (and in tests without it).
    capabilities: watch::Receiver<Option<NodeCapabilities>>,
}

impl BpftraceShared {
    pub fn new(registry: &mut Registry, bpftrace: PathBuf) -> BpftraceShared {
        BpftraceShared {
            bpftrace,
            metrics: BpftraceMetrics::register(registry),
            program_dir: std::env::temp_dir(),
            cgroup2: crate::targets::cgroup::cgroup2_mount(),
            capabilities: watch::channel(None).1,
        }
        .with_stale_programs_removed()
    }

    /// The node's capabilities once detected: a script that fails while needing a facility they
    /// report unusable (kprobes, fentry) says so and is not restarted.
    pub fn with_capabilities(
        mut self,
        capabilities: watch::Receiver<Option<NodeCapabilities>>,
    ) -> BpftraceShared {
        self.capabilities = capabilities;
        self
    }

    /// Program files of agents that died without cleaning up (SIGKILL) are removed at startup.
    fn with_stale_programs_removed(self) -> BpftraceShared {
        let Ok(entries) = std::fs::read_dir(&self.program_dir) else {
            return self;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("sonde-bpftrace-"))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self
    }

    /// Writes a program to a new file only root can read (programs may name internal paths).
    /// `create_new` never follows a planted symlink; a leftover file of an earlier agent with the
    /// same pid is skipped.
    fn write_program(&self, program: &str) -> Result<PathBuf, BpftraceError> {
        loop {
            let n = NEXT_PROGRAM_FILE.fetch_add(1, Ordering::Relaxed);
            let path = self
                .program_dir
                .join(format!("sonde-bpftrace-{}-{n}.bt", std::process::id()));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            let result = match file {
                Err(error)
                    if error.kind() == std::io::ErrorKind::AlreadyExists && n < 1_000_000 =>
                {
                    continue;
                }
                Err(error) => Err(error),
                Ok(mut file) => file.write_all(program.as_bytes()),
            };
            return result
                .map(|()| path.clone())
                .map_err(|source| BpftraceError::ProgramFile { path, source });
        }
    }
}

/// Program file numbers, unique in this process even with several [`BpftraceShared`] (tests).
static NEXT_PROGRAM_FILE: AtomicU64 = AtomicU64::new(0);

/// What decides whether an update needs a restart.
#[derive(Clone, Debug, PartialEq)]
struct PlanKey {
    program: String,
    table: String,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// One running script.
pub struct BpftraceProbe {
    ctx: ProbeContext,
    probe_id: String,
    script: String,
    status: Arc<Mutex<RuntimeStatus>>,
    identities: Identities,
    child_pid: Arc<AtomicU32>,
    key: Option<PlanKey>,
    running: Option<Running>,
}

impl BpftraceProbe {
    pub fn start(
        ctx: &ProbeContext,
        probe: &AssignedProbe,
        spec: &BpftraceScriptSpec,
        targets: &[TargetProcess],
    ) -> BpftraceProbe {
        let mut this = BpftraceProbe {
            ctx: ctx.clone(),
            probe_id: probe.id.clone(),
            script: probe.owner.name.clone(),
            status: Arc::new(Mutex::new(RuntimeStatus {
                state: ProbeState::Pending,
                message: "starting bpftrace".into(),
                targets_attached: 0,
                restarts: 0,
            })),
            identities: Arc::new(Mutex::new(sink::identities(targets))),
            child_pid: Arc::new(AtomicU32::new(0)),
            key: None,
            running: None,
        };
        let plan = plan(&ctx.bpftrace, spec, targets);
        this.launch(probe, spec, plan);
        this
    }

    pub fn status(&self) -> RuntimeStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The bpftrace child's pid while one runs.
    pub fn child_pid(&self) -> Option<u32> {
        Some(self.child_pid.load(Ordering::SeqCst)).filter(|pid| *pid != 0)
    }

    pub async fn update(
        &mut self,
        probe: &AssignedProbe,
        spec: &BpftraceScriptSpec,
        targets: &[TargetProcess],
    ) {
        *self
            .identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = sink::identities(targets);
        let plan = plan(&self.ctx.bpftrace, spec, targets);
        if let Ok(Some(plan)) = &plan {
            let key = PlanKey {
                program: plan.program.clone(),
                table: table_name(probe, spec),
            };
            if self.key.as_ref() == Some(&key) && self.running.is_some() {
                return;
            }
        }
        self.halt().await;
        self.launch(probe, spec, plan);
    }

    pub async fn stop(mut self) {
        self.halt().await;
        self.ctx.bpftrace.metrics.script_stopped(&self.script);
    }

    async fn halt(&mut self) {
        if let Some(running) = self.running.take() {
            running.cancel.cancel();
            let _ = running.task.await;
        }
        self.key = None;
    }

    fn launch(
        &mut self,
        probe: &AssignedProbe,
        spec: &BpftraceScriptSpec,
        plan: Result<Option<Plan>, BpftraceError>,
    ) {
        self.script = probe.owner.name.clone();
        self.probe_id = probe.id.clone();
        self.ctx.bpftrace.metrics.script_started(&self.script);
        let launched = plan.and_then(|plan| match plan {
            Some(plan) => self.try_launch(probe, spec, plan),
            None => {
                self.wait_for_pods();
                Ok(())
            }
        });
        if let Err(error) = launched {
            let message = error.to_string();
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            // Updates relaunch a failed script: the same failure is logged once.
            if status.state != ProbeState::Failed || status.message != message {
                tracing::warn!(probe = %self.probe_id, "BpftraceScript cannot start: {message}");
            }
            status.state = ProbeState::Failed;
            status.message = message;
            status.targets_attached = 0;
        }
    }

    /// No bpftrace while no selected pod runs here; said once in the log.
    fn wait_for_pods(&mut self) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status.message != NO_POD_MESSAGE {
            tracing::info!(probe = %self.probe_id, "BpftraceScript waits: {NO_POD_MESSAGE}");
        }
        status.state = ProbeState::Pending;
        status.message = NO_POD_MESSAGE.into();
        status.targets_attached = 0;
    }

    fn try_launch(
        &mut self,
        probe: &AssignedProbe,
        spec: &BpftraceScriptSpec,
        resolved: Plan,
    ) -> Result<(), BpftraceError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| BpftraceError::NoRuntime)?;
        let table = table_name(probe, spec);
        let formats = Formats::new(&program::printf_formats(&spec.program));
        let writer = if formats.is_empty() {
            None
        } else {
            let writer = self
                .ctx
                .tables
                .create(&table, &probe.id, formats.columns().to_vec())
                .map_err(|source| BpftraceError::Table {
                    table: table.clone(),
                    source: Box::new(source),
                })?;
            Some(writer)
        };
        let shared = self.ctx.bpftrace.clone();
        let program_file = shared.write_program(&resolved.program)?;
        let sink = Sink {
            script: self.script.clone(),
            formats,
            map_arity: program::map_key_arity(&spec.program),
            writer,
            identities: self.identities.clone(),
            metrics: shared.metrics.clone(),
            status: self.status.clone(),
            targets_attached: resolved.targets_attached,
            limiter: TokenBucket::new(sink::ROWS_PER_SECOND, Instant::now()),
            wall_offset_ns: 0,
            attached: false,
        };
        let cancel = CancellationToken::new();
        let supervisor = Supervisor {
            probe: self.probe_id.clone(),
            kernel_probes: program::kernel_probe_types(&spec.program),
            capabilities: shared.capabilities.clone(),
            bpftrace: shared.bpftrace.clone(),
            program_file,
            sink,
            child_pid: self.child_pid.clone(),
            cancel: cancel.clone(),
        };
        // Its log lines carry the span of the probe that launched it.
        let task = runtime.spawn(tracing::Instrument::in_current_span(supervisor.run()));
        self.running = Some(Running { cancel, task });
        self.key = Some(PlanKey {
            program: resolved.program,
            table,
        });
        tracing::debug!(probe = %self.probe_id, "bpftrace script started");
        Ok(())
    }
}

impl Drop for BpftraceProbe {
    /// A probe dropped without `stop()` still ends its child (the task sees the cancellation).
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.cancel.cancel();
        }
    }
}

/// The program to run and how many target processes it covers.
struct Plan {
    program: String,
    targets_attached: u32,
}

/// What runs for `spec` with `targets`: None while a script with `spec.pods` has no selected pod
/// on this node. With `spec.pods`, only pod processes count and every probe is limited to their
/// cgroups; without it, the program runs on the whole node (uprobe paths resolved in `targets`).
fn plan(
    shared: &BpftraceShared,
    spec: &BpftraceScriptSpec,
    targets: &[TargetProcess],
) -> Result<Option<Plan>, BpftraceError> {
    if spec.pods.is_none() {
        let resolved = uprobe_paths::resolve(&spec.program, targets)?;
        return Ok(Some(Plan {
            program: resolved.program,
            targets_attached: resolved.targets_attached.unwrap_or(1),
        }));
    }
    // Without selected pods a `process` selector resolves on the whole node: those are not pods.
    let pods: Vec<TargetProcess> = targets
        .iter()
        .filter(|t| !t.pod.is_empty())
        .cloned()
        .collect();
    if pods.is_empty() {
        return Ok(None);
    }
    let mount: &Path = shared.cgroup2.as_deref().ok_or(PodFilterError::NoCgroup2)?;
    let (cgroups, found) = pod_filter::target_cgroups(mount, &pods)?;
    // All exited since the scan: the next one brings the targets up to date.
    if cgroups.is_empty() {
        return Ok(None);
    }
    let resolved = uprobe_paths::resolve(&spec.program, &pods)?;
    Ok(Some(Plan {
        program: pod_filter::restrict(&resolved.program, &cgroups)?,
        targets_attached: resolved.targets_attached.unwrap_or(found),
    }))
}

/// `spec.tableName`, else the resource name lower-cased with other characters turned into `_`.
pub fn table_name(probe: &AssignedProbe, spec: &BpftraceScriptSpec) -> String {
    spec.table_name
        .clone()
        .unwrap_or_else(|| crate::tables::identifier(&probe.owner.name))
}
