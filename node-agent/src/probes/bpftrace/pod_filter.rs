//! Limits a script with `spec.pods` to the selected pods' processes.
//!
//! Every probe that fires in the context of a process (tracepoints, uprobes, kprobes, profile
//! samples, …) gets a predicate on bpftrace's `cgroup` builtin, the cgroup v2 id of the current
//! task, ANDed with the script's own predicate:
//! `tracepoint:a:b /pid > 1/ { }` → `tracepoint:a:b /(cgroup == 12 || cgroup == 34) && (pid > 1)/ { }`.
//! The ids are those of the target processes' cgroups (a container's cgroup), so processes started
//! in a selected container later are traced before the agent rescans, and every other process of
//! the node, even one running the same binary file, is not.
//!
//! BEGIN, END and interval probes do not fire in a process: they are left alone. Shapes the filter
//! cannot make sound are refused rather than run node-wide.
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

use super::program::probe_headers;
use crate::targets::{TargetProcess, cgroup};

/// Status message of a script with `spec.pods` while no selected pod runs on the node.
pub const NO_POD_MESSAGE: &str =
    "no pod matching spec.pods on this node; the script starts when one does";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PodFilterError {
    #[error(
        "spec.pods cannot limit `{point}` to the selected pods: iter: probes walk kernel objects from bpftrace's own process; remove the iter: probe or spec.pods (node-wide)"
    )]
    Iter { point: String },
    #[error(
        "spec.pods cannot limit `{point}` to the selected pods: the agent does not know whether this probe type fires in a process; use tracepoint:, rawtracepoint:, uprobe:, uretprobe:, usdt:, kprobe:, kretprobe:, fentry:, fexit:, profile:, software:, hardware: or watchpoint: probes, or remove spec.pods (node-wide)"
    )]
    UnknownProbe { point: String },
    #[error(
        "`{special}` and `{process}` share one block, but spec.pods limits only `{process}` to the selected pods (`{special}` does not fire in a process); give each its own block"
    )]
    Mixed { special: String, process: String },
    #[error(
        "the predicate of `{point}` has no closing `/`; write it as /expression/ before the block"
    )]
    UnterminatedPredicate { point: String },
    #[error(
        "a block without attach points in the program (near `{excerpt}`); every block needs a probe such as tracepoint:syscalls:sys_enter_openat"
    )]
    NoAttachPoint { excerpt: String },
    #[error(
        "spec.pods needs cgroup v2 to tell the selected pods' processes from the node's (bpftrace's cgroup builtin), and this node has no cgroup2 mount; mount cgroup2 or remove spec.pods (node-wide)"
    )]
    NoCgroup2,
    #[error(
        "{target} is in the root cgroup v2 with the node's own processes, so its events cannot be told apart; the node must run containers in cgroup v2 for spec.pods to work"
    )]
    RootCgroup { target: String },
    #[error(
        "the cgroup {path} of {target} lies outside the agent's cgroup namespace; run the agent in the host's cgroup namespace"
    )]
    OutsideNamespace { target: String, path: String },
}

/// Top-level words that start a definition, not a probe (C types; newer bpftrace's config, fn and
/// macro blocks, only ever run from probes).
const DEFINITIONS: [&str; 7] = [
    "struct", "union", "enum", "typedef", "config", "fn", "macro",
];

/// Probe types that fire in the context of the process that caused them (long and short names).
const PROCESS_PROBES: [&str; 28] = [
    "tracepoint",
    "t",
    "rawtracepoint",
    "rt",
    "uprobe",
    "u",
    "uretprobe",
    "ur",
    "usdt",
    "U",
    "kprobe",
    "k",
    "kretprobe",
    "kr",
    "kfunc",
    "kretfunc",
    "fentry",
    "fexit",
    "f",
    "fr",
    // Samples of whatever task runs on the CPU: the filter keeps the pods' samples.
    "profile",
    "p",
    "software",
    "s",
    "hardware",
    "h",
    "watchpoint",
    "w",
];

/// Probes outside any process (bpftrace's start and end, timers, its own signals).
const SPECIAL_PROBES: [&str; 7] = ["BEGIN", "END", "begin", "end", "interval", "i", "self"];

/// `program` with every process probe limited to the tasks of `cgroups` (cgroup v2 ids, at least
/// one).
pub fn restrict(program: &str, cgroups: &BTreeSet<u64>) -> Result<String, PodFilterError> {
    let filter = cgroups
        .iter()
        .map(|id| format!("cgroup == {id}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let mut out = String::with_capacity(program.len() + 64);
    let mut copied = 0;
    for header in probe_headers(program) {
        let Some(first) = header.points.first() else {
            let at = header.predicate.as_ref().map_or(0, |p| p.start);
            let at = header.block.unwrap_or(at);
            return Err(PodFilterError::NoAttachPoint {
                excerpt: excerpt(program, at),
            });
        };
        if DEFINITIONS.contains(&&program[first.clone()]) {
            continue;
        }
        let mut special = None;
        let mut process = None;
        for range in &header.points {
            let point = &program[range.clone()];
            let kind = point.split(':').next().unwrap_or(point);
            if SPECIAL_PROBES.contains(&kind) {
                special.get_or_insert(point);
            } else if PROCESS_PROBES.contains(&kind) {
                process.get_or_insert(point);
            } else if kind == "iter" || kind == "it" {
                return Err(PodFilterError::Iter {
                    point: point.into(),
                });
            } else {
                return Err(PodFilterError::UnknownProbe {
                    point: point.into(),
                });
            }
        }
        let process = match (special, process) {
            (Some(special), Some(process)) => {
                return Err(PodFilterError::Mixed {
                    special: special.into(),
                    process: process.into(),
                });
            }
            (_, None) => continue,
            (None, Some(process)) => process,
        };
        match (header.predicate, header.block) {
            (Some(predicate), _) => {
                if !program[predicate.end..].starts_with('/') {
                    return Err(PodFilterError::UnterminatedPredicate {
                        point: process.into(),
                    });
                }
                out.push_str(&program[copied..predicate.start]);
                let _ = write!(out, "({filter}) && ({})", &program[predicate.clone()]);
                copied = predicate.end;
            }
            (None, Some(block)) => {
                out.push_str(&program[copied..block]);
                let _ = write!(out, "/{filter}/ ");
                copied = block;
            }
            // Without a block bpftrace rejects the program: nothing runs.
            (None, None) => {}
        }
    }
    out.push_str(&program[copied..]);
    Ok(out)
}

/// Up to 20 characters of `program` from `at`.
fn excerpt(program: &str, at: usize) -> String {
    program
        .get(at..)
        .unwrap_or_default()
        .chars()
        .take(20)
        .collect()
}

/// The cgroup v2 ids of `targets` (each the inode of its cgroup directory under `mount`, what the
/// `cgroup` builtin returns for its threads) and how many targets have one. Targets gone since the
/// scan are skipped.
pub fn target_cgroups(
    mount: &Path,
    targets: &[TargetProcess],
) -> Result<(BTreeSet<u64>, u32), PodFilterError> {
    target_cgroups_with(targets, cgroup::v2_path, |path| cgroup::v2_id(mount, path))
}

/// `target_cgroups` with the reads injected: `cgroup_path(pid)` → its cgroup v2 path,
/// `inode(path)` → the inode of cgroup `path`.
fn target_cgroups_with(
    targets: &[TargetProcess],
    cgroup_path: impl Fn(u32) -> Option<String>,
    inode: impl Fn(&str) -> Option<u64>,
) -> Result<(BTreeSet<u64>, u32), PodFilterError> {
    let mut ids = BTreeSet::new();
    let mut found = 0u32;
    for target in targets {
        let Some(path) = cgroup_path(target.pid) else {
            continue;
        };
        let path = path.as_str();
        let name = || format!("{}/{} (pid {})", target.namespace, target.pod, target.pid);
        // The root's id is shared with every process outside a container cgroup.
        if path == "/" {
            return Err(PodFilterError::RootCgroup { target: name() });
        }
        if path.split('/').any(|c| c == "..") {
            return Err(PodFilterError::OutsideNamespace {
                target: name(),
                path: path.into(),
            });
        }
        if let Some(id) = inode(path) {
            ids.insert(id);
            found = found.saturating_add(1);
        }
    }
    Ok((ids, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn process_probes_get_the_cgroup_predicate_anded_with_their_own() {
        let program = r#"#include <linux/sched.h>
BEGIN { printf("start\n"); }
tracepoint:syscalls:sys_enter_openat,
uretprobe:/proc/7/root/bin/bash:readline /comm == "bash" && arg0 / 2 > 1/ { @[comm] = count(); }
kprobe:vfs_read, kretprobe:vfs_read { @reads = count(); }
interval:s:5 { print(@reads); }
struct point { int x; };
END { clear(@reads); }
"#;
        assert_eq!(
            restrict(program, &ids(&[12, 34])).unwrap(),
            r#"#include <linux/sched.h>
BEGIN { printf("start\n"); }
tracepoint:syscalls:sys_enter_openat,
uretprobe:/proc/7/root/bin/bash:readline /(cgroup == 12 || cgroup == 34) && (comm == "bash" && arg0 / 2 > 1)/ { @[comm] = count(); }
kprobe:vfs_read, kretprobe:vfs_read /cgroup == 12 || cgroup == 34/ { @reads = count(); }
interval:s:5 { print(@reads); }
struct point { int x; };
END { clear(@reads); }
"#
        );
    }

    #[test]
    fn predicates_with_comments_and_slashes_in_strings_keep_their_meaning() {
        let program = "t:a:b /* why */ /str(arg0) == \"/x/\" // path\n/{ }";
        assert_eq!(
            restrict(program, &ids(&[5])).unwrap(),
            "t:a:b /* why */ /(cgroup == 5) && (str(arg0) == \"/x/\" // path\n)/{ }"
        );
    }

    #[test]
    fn shapes_the_filter_cannot_make_sound_are_refused() {
        let refused = |program: &str| restrict(program, &ids(&[1])).unwrap_err();
        assert_eq!(
            refused("BEGIN, tracepoint:a:b { }"),
            PodFilterError::Mixed {
                special: "BEGIN".into(),
                process: "tracepoint:a:b".into()
            }
        );
        assert_eq!(
            refused("iter:task { }"),
            PodFilterError::Iter {
                point: "iter:task".into()
            }
        );
        assert_eq!(
            refused("newprobe:x { }"),
            PodFilterError::UnknownProbe {
                point: "newprobe:x".into()
            }
        );
        assert_eq!(
            refused("t:a:b /pid > 1 { }"),
            PodFilterError::UnterminatedPredicate {
                point: "t:a:b".into()
            }
        );
        assert!(matches!(
            refused("t:a:b { } { }"),
            PodFilterError::NoAttachPoint { .. }
        ));
        assert!(
            refused("BEGIN, t:a:b { }")
                .to_string()
                .contains("own block")
        );
    }

    fn target(pid: u32) -> TargetProcess {
        TargetProcess {
            pid,
            namespace: "demo".into(),
            pod: format!("shell-{pid}"),
            pod_uid: String::new(),
            container: String::new(),
            container_id: String::new(),
            exe: "/bin/bash".into(),
            cmdline: String::new(),
        }
    }

    #[test]
    fn cgroup_ids_are_read_per_target_and_gone_processes_skipped() {
        let path = |pid: u32| match pid {
            1 | 2 => Some("/kubepods/pod-a/c1".to_string()),
            3 => Some("/kubepods/pod-b/c2".to_string()),
            _ => None,
        };
        let inode = |path: &str| match path {
            "/kubepods/pod-a/c1" => Some(100),
            "/kubepods/pod-b/c2" => Some(200),
            _ => None,
        };
        let targets = [target(1), target(2), target(3), target(4)];
        assert_eq!(
            target_cgroups_with(&targets, path, inode),
            Ok((ids(&[100, 200]), 3))
        );
    }

    #[test]
    fn a_target_in_the_root_cgroup_is_refused_not_run_node_wide() {
        let err = target_cgroups_with(&[target(9)], |_| Some("/".into()), |_| Some(1)).unwrap_err();
        assert_eq!(
            err,
            PodFilterError::RootCgroup {
                target: "demo/shell-9 (pid 9)".into()
            }
        );
        let err = target_cgroups_with(
            &[target(9)],
            |_| Some("/../../kubepods/x".into()),
            |_| Some(1),
        )
        .unwrap_err();
        assert!(matches!(err, PodFilterError::OutsideNamespace { .. }));
    }
}
