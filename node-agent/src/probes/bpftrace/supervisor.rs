//! Runs one script's bpftrace child: spawn, read its output, restart it with backoff when it
//! exits (logged at WARN; not when the node lacks a facility the script needs), and stop it
//! (SIGTERM, keep draining, SIGKILL after a deadline, reap) when cancelled.
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sonde_api::{NodeCapabilities, ProbeState};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use super::program::KernelFacility;
use super::sink::{Sink, monotonic_to_wall_offset_ns};
use super::spawner;
use crate::capabilities::facility;
use crate::probes::RuntimeStatus;

/// Time between SIGTERM and SIGKILL when stopping.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
const MAX_STDOUT_LINE: usize = 256 * 1024;
const MAX_STDERR_LINE: usize = 4096;
const STDERR_LINES_KEPT: usize = 32;
/// Output still arriving after bpftrace exited (maps printed at exit) is read for this long at most.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// One supervised script.
pub struct Supervisor {
    /// The probe's id, for the log.
    pub probe: String,
    /// The program's probe types that need a kernel facility.
    pub kernel_probes: Vec<(String, KernelFacility)>,
    pub capabilities: watch::Receiver<Option<NodeCapabilities>>,
    pub bpftrace: PathBuf,
    pub program_file: PathBuf,
    pub sink: Sink,
    pub child_pid: Arc<AtomicU32>,
    pub cancel: CancellationToken,
}

struct Run {
    exit: Option<ExitStatus>,
    stderr: VecDeque<String>,
    ran_for: Duration,
}

impl Supervisor {
    /// Runs until cancelled; removes the program file and the script's map series at the end.
    pub async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        let mut first = true;
        while !self.cancel.is_cancelled() {
            if !first {
                self.count_restart();
            }
            first = false;
            let run = self.run_once().await;
            if self.cancel.is_cancelled() {
                break;
            }
            if run.ran_for >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            if !self.report_exit(&run, backoff) {
                // It cannot succeed on this node: it stays Failed until its program changes.
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.cancel.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.sink.metrics.maps.remove_script(&self.sink.script);
        let _ = std::fs::remove_file(&self.program_file);
    }

    fn status(&self) -> std::sync::MutexGuard<'_, RuntimeStatus> {
        self.sink
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn count_restart(&self) {
        self.sink
            .metrics
            .restarts
            .get_or_create(&self.sink.metrics.script(&self.sink.script))
            .inc();
        let mut status = self.status();
        status.restarts = status.restarts.saturating_add(1);
    }

    async fn run_once(&mut self) -> Run {
        let started = Instant::now();
        let mut run = Run {
            exit: None,
            stderr: VecDeque::new(),
            ran_for: Duration::ZERO,
        };
        {
            let mut status = self.status();
            // A script that failed to start stays Failed (with bpftrace's message) until it attaches.
            if status.state != ProbeState::Failed {
                status.state = ProbeState::Pending;
                status.message = "starting bpftrace".into();
            }
        }
        self.sink.attached = false;
        self.sink.wall_offset_ns = monotonic_to_wall_offset_ns();

        let mut command = Command::new(&self.bpftrace);
        command
            .arg("-f")
            .arg("json")
            .arg(&self.program_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C meant for the agent must not kill scripts behind its back.
            .process_group(0);
        let mut child = match spawner::spawn(command).await {
            Ok(child) => child,
            Err(error) => {
                run.stderr.push_back(format!(
                    "cannot run {}: {error}; install bpftrace or point the agent at it",
                    self.bpftrace.display()
                ));
                return run;
            }
        };
        let pid = child.id();
        self.child_pid.store(pid.unwrap_or(0), Ordering::SeqCst);
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            run.stderr
                .push_back("bpftrace started without output pipes".into());
            return run;
        };
        let mut out = FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_STDOUT_LINE));
        let mut err = FramedRead::new(stderr, LinesCodec::new_with_max_length(MAX_STDERR_LINE));
        let (mut out_open, mut err_open) = (true, true);
        let mut kill_at: Option<tokio::time::Instant> = None;
        let cancel = self.cancel.clone();
        loop {
            tokio::select! {
                line = out.next(), if out_open => out_open = self.on_stdout(line),
                line = err.next(), if err_open => err_open = on_stderr(line, &mut run.stderr),
                status = child.wait() => {
                    run.exit = status.ok();
                    break;
                }
                () = cancel.cancelled(), if kill_at.is_none() => {
                    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                    kill_at = Some(tokio::time::Instant::now() + STOP_DEADLINE);
                }
                () = sleep_until(kill_at) => {
                    let _ = child.start_kill();
                }
            }
        }
        self.child_pid.store(0, Ordering::SeqCst);
        // bpftrace prints its maps on exit; read what is left in the pipes.
        let drain = async {
            while out_open || err_open {
                tokio::select! {
                    line = out.next(), if out_open => out_open = self.on_stdout(line),
                    line = err.next(), if err_open => err_open = on_stderr(line, &mut run.stderr),
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await;
        run.ran_for = started.elapsed();
        run
    }

    /// Handles one stdout item; returns whether the stream is still open.
    fn on_stdout(&mut self, line: Option<Result<String, LinesCodecError>>) -> bool {
        match line {
            Some(Ok(line)) => {
                self.sink.handle_line(&line);
                true
            }
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                self.sink.unparsed();
                true
            }
            Some(Err(LinesCodecError::Io(_))) | None => false,
        }
    }

    /// Shows why bpftrace stopped in the status and, once per exit, in the log. False when a
    /// restart cannot help: it failed needing a facility the node's capabilities lack.
    fn report_exit(&self, run: &Run, backoff: Duration) -> bool {
        let exit = run.exit.map_or_else(
            || "could not be started".to_string(),
            |s| format!("exited ({s})"),
        );
        let detail = failure_message(&run.stderr, &self.program_file);
        let attached = self.sink.attached;
        let what = match (attached, detail.is_empty()) {
            (true, true) => format!("bpftrace {exit}"),
            (true, false) => format!("bpftrace {exit}: {detail}"),
            (false, true) => format!("bpftrace {exit} before attaching any probe"),
            (false, false) => detail,
        };
        // A missing bpftrace is not the kernel's fault.
        let failed = run.exit.is_some_and(|s| !s.success());
        let hopeless = failed
            .then(|| {
                let caps = self.capabilities.borrow();
                unsupported(&self.kernel_probes, caps.as_ref()?)
            })
            .flatten();
        let retry = hopeless.is_none();
        let restarting = format!("restarting in {}s", backoff.as_secs());
        let mut status = self.status();
        let (state, message, logged) = match hopeless {
            Some(why) => {
                let message = format!("{what}; {why}");
                (ProbeState::Failed, message.clone(), message)
            }
            None if attached => {
                let message = format!("{what}; {restarting}");
                (ProbeState::Pending, message.clone(), message)
            }
            None => (
                ProbeState::Failed,
                what.clone(),
                format!("{what}; {restarting}"),
            ),
        };
        tracing::warn!(probe = %self.probe, restarts = status.restarts, "BpftraceScript stopped: {logged}");
        if state == ProbeState::Failed {
            status.targets_attached = 0;
        }
        status.state = state;
        status.message = message;
        retry
    }
}

/// Why a script whose probe types are `kernel_probes` cannot run on a node with `caps`, when they
/// need a facility the capability self-test found unusable.
fn unsupported(
    kernel_probes: &[(String, KernelFacility)],
    caps: &NodeCapabilities,
) -> Option<String> {
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (kind, needs) in kernel_probes {
        let (usable, name) = match needs {
            KernelFacility::Kprobes => (caps.kprobes, facility::KPROBES),
            KernelFacility::Fentry => (caps.fentry, facility::FENTRY),
        };
        if !usable {
            missing.entry(name).or_default().push(kind.clone());
        }
    }
    if missing.is_empty() {
        return None;
    }
    let reasons: Vec<String> = missing
        .iter()
        .map(|(name, kinds)| {
            let why = caps
                .errors
                .get(*name)
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            format!(
                "this node cannot attach {} probes (its capabilities report {name}: false{why})",
                kinds.join("/")
            )
        })
        .collect();
    Some(format!(
        "{}; not retrying: use probe types the node supports (see capabilities in GET /v1/status), such as tracepoint: or uprobe:",
        reasons.join("; ")
    ))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn on_stderr(line: Option<Result<String, LinesCodecError>>, kept: &mut VecDeque<String>) -> bool {
    match line {
        Some(Ok(line)) => {
            if kept.len() == STDERR_LINES_KEPT {
                kept.pop_front();
            }
            kept.push_back(line);
            true
        }
        Some(Err(LinesCodecError::MaxLineLengthExceeded)) => true,
        Some(Err(LinesCodecError::Io(_))) | None => false,
    }
}

/// bpftrace's own words about why it stopped: its `ERROR:` lines (else its last lines), with the
/// temporary program path shown as `program` and the harmless RLIMIT_MEMLOCK warning left out.
pub fn failure_message(stderr: &VecDeque<String>, program_file: &Path) -> String {
    let path = program_file.display().to_string();
    let lines: Vec<String> = stderr
        .iter()
        .map(|l| l.replace(&path, "program").trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains("RLIMIT_MEMLOCK"))
        .collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    let chosen: Vec<&String> = if errors.is_empty() {
        lines.iter().rev().take(3).rev().collect()
    } else {
        errors
    };
    let mut message = chosen
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    if message.len() > 1024 {
        let mut cut = 1024;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_facilities_the_node_lacks_make_a_script_hopeless() {
        let probes = vec![
            ("kprobe".to_string(), KernelFacility::Kprobes),
            ("kretprobe".to_string(), KernelFacility::Kprobes),
            ("fentry".to_string(), KernelFacility::Fentry),
        ];
        let mut caps = NodeCapabilities {
            fentry: true,
            ..NodeCapabilities::default()
        };
        caps.errors
            .insert(facility::KPROBES.into(), "no kprobe PMU".into());
        let why = unsupported(&probes, &caps).unwrap_or_default();
        assert!(
            why.starts_with("this node cannot attach kprobe/kretprobe probes (its capabilities report kprobes: false (no kprobe PMU)); not retrying"),
            "{why}"
        );
        caps.kprobes = true;
        assert_eq!(unsupported(&probes, &caps), None);
        assert_eq!(unsupported(&[], &NodeCapabilities::default()), None);
    }

    #[test]
    fn failure_message_keeps_bpftraces_error_lines_and_hides_the_temp_path() {
        let stderr: VecDeque<String> = [
            "ERROR: Unknown error -1: couldn't set RLIMIT_MEMLOCK for bpftrace. If your program is not loading, you can try \"ulimit -l 8192\" to fix the problem",
            "/tmp/sonde-1-2.bt:1:21-22: ERROR: syntax error, unexpected }, expecting ) or \",\"",
            "BEGIN { printf(\"hi\" }",
            "                    ~",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(
            failure_message(&stderr, Path::new("/tmp/sonde-1-2.bt")),
            "program:1:21-22: ERROR: syntax error, unexpected }, expecting ) or \",\""
        );
    }
}
