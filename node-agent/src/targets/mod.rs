//! Which host processes a probe applies to: pods → cgroups → processes, narrowed by a process
//! selector; in standalone mode, the process selector alone.
//!
//! - [`cgroup`]: (pod uid, container id) from `/proc/<pid>/cgroup` (cgroup v1/v2; containerd, CRI-O,
//!   Docker; systemd and cgroupfs drivers).
//! - [`process`]: the /proc snapshot, reread incrementally by [`ProcessScanner`].
//! - [`process_watch`]: process notifications from the kernel (new, exec'd, exited), which tell
//!   the scanner what to reread.
//! - [`selector`]: `process.exe` globs and `process.cmdline` regexes.
//!
//! Contract used by the rest of the agent: [`TargetProcess`], [`ProcessTable::scan`],
//! [`ProcessTable::resolve`] and [`validate`].
use std::path::PathBuf;

use sonde_api::{AssignedProbe, PodTarget};

pub mod cgroup;
pub mod process;
pub mod process_watch;
pub mod selector;

pub use cgroup::ContainerIdentity;
pub use process::{ProcessInfo, ProcessScanner, Rescan};
pub use process_watch::{Changes, ProcessWatch};
pub use selector::{ProcessMatcher, validate};

/// A host process a probe applies to, with the Kubernetes identity of its container.
/// In standalone mode `namespace`, `pod`, `pod_uid`, `container` and `container_id` are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetProcess {
    pub pid: u32,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub container_id: String,
    /// Executable path as seen inside the process's own root (from `/proc/<pid>/exe`).
    pub exe: PathBuf,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
}

impl TargetProcess {
    /// The `container` of its rows and series: its container's name in a pod; outside any
    /// (standalone, `sonde-agent --manifests`), the file name of the program it runs, so that the
    /// services of one machine are told apart.
    pub fn container_label(&self) -> String {
        if !self.pod.is_empty() || !self.container.is_empty() {
            return self.container.clone();
        }
        self.exe
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The executable as reachable from the host: `/proc/<pid>/root/<exe>`.
    pub fn host_exe(&self) -> PathBuf {
        let rel = self.exe.strip_prefix("/").unwrap_or(&self.exe);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(rel)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("cannot read {path}: {source}; the agent needs the host's /proc (hostPID: true)")]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "process.exe {value:?} is not a valid path or glob: {source}; use a path such as /usr/sbin/nginx or a glob such as */nginx"
    )]
    ExeGlob {
        value: String,
        #[source]
        source: globset::Error,
    },
    #[error(
        "process.cmdline {value:?} is not a valid regular expression: {source}; escape special characters such as ( [ . with a backslash"
    )]
    CmdlineRegex {
        value: String,
        #[source]
        source: Box<regex::Error>,
    },
}

/// Snapshot of the host's processes, taken by [`ProcessTable::scan`].
#[derive(Clone, Debug, Default)]
pub struct ProcessTable {
    processes: Vec<ProcessInfo>,
    /// Never a target: probing the agent itself would feed its own output back to it.
    own_pid: u32,
}

impl ProcessTable {
    /// Reads /proc.
    pub fn scan() -> Result<ProcessTable, TargetsError> {
        Ok(Self::from_processes(process::scan_processes(
            std::path::Path::new("/proc"),
        )?))
    }

    /// A table of the given processes (for tests and for callers that filter a scan).
    pub fn from_processes(processes: Vec<ProcessInfo>) -> ProcessTable {
        ProcessTable {
            processes,
            own_pid: std::process::id(),
        }
    }

    /// Every process of the snapshot, by pid.
    pub fn processes(&self) -> &[ProcessInfo] {
        &self.processes
    }

    /// The processes a probe applies to, sorted by pid:
    /// - with `targets`: processes in one of those containers (by container id), narrowed by `process`;
    /// - without `targets` but with `process`: every process it matches (standalone);
    /// - with neither: none.
    ///
    /// A selector that does not compile matches nothing; [`validate`] says why.
    pub fn resolve(&self, probe: &AssignedProbe) -> Vec<TargetProcess> {
        self.resolve_compiled(probe, &compile(probe))
    }

    /// [`ProcessTable::resolve`] with the probe's selector compiled before ([`compile`]): the
    /// agent rescans often, and compiling a glob or regular expression costs more than matching it
    /// against a few processes.
    pub fn resolve_compiled(
        &self,
        probe: &AssignedProbe,
        selector: &CompiledSelector,
    ) -> Vec<TargetProcess> {
        let Ok(matcher) = selector else {
            return Vec::new();
        };
        let selected = |p: &ProcessInfo| {
            p.pid != self.own_pid
                && matcher
                    .as_ref()
                    .is_none_or(|m| m.matches(&p.exe, p.started_as.as_deref(), &p.cmdline))
        };
        let mut out: Vec<TargetProcess> = if probe.targets.is_empty() {
            if matcher.is_none() {
                return Vec::new();
            }
            self.processes
                .iter()
                .filter(|p| selected(p))
                .map(standalone_target)
                .collect()
        } else {
            self.processes
                .iter()
                .filter(|p| selected(p))
                .filter_map(|p| {
                    let identity = p.container.as_ref()?;
                    let target = probe.targets.iter().find(|t| {
                        !t.container_id.is_empty()
                            && bare_id(&t.container_id) == identity.container_id
                    })?;
                    Some(pod_target(p, target))
                })
                .collect()
        };
        out.sort();
        out.dedup();
        out
    }
}

/// A probe's process selector, compiled: None without one, an error when it does not compile (it
/// then matches nothing).
pub type CompiledSelector = Result<Option<ProcessMatcher>, TargetsError>;

/// Compiles `probe`'s process selector.
pub fn compile(probe: &AssignedProbe) -> CompiledSelector {
    probe.process.as_ref().map(ProcessMatcher::new).transpose()
}

/// `containerd://<id>` → `<id>`, lower-cased like the cgroup side.
fn bare_id(id: &str) -> String {
    id.rsplit_once("://")
        .map_or(id, |(_, bare)| bare)
        .to_ascii_lowercase()
}

fn standalone_target(p: &ProcessInfo) -> TargetProcess {
    TargetProcess {
        pid: p.pid,
        namespace: String::new(),
        pod: String::new(),
        pod_uid: String::new(),
        container: String::new(),
        container_id: String::new(),
        exe: p.exe.clone(),
        cmdline: p.cmdline.clone(),
    }
}

fn pod_target(p: &ProcessInfo, target: &PodTarget) -> TargetProcess {
    TargetProcess {
        pid: p.pid,
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        pod_uid: target.pod_uid.clone(),
        container: target.container.clone(),
        container_id: bare_id(&target.container_id),
        exe: p.exe.clone(),
        cmdline: p.cmdline.clone(),
    }
}

#[cfg(test)]
mod tests;
