//! Which processes the profiler samples: the union of every profiler probe's targets, selected in
//! the kernel by cgroup v2 id (whole containers, so processes that start between rescans are
//! sampled too) or by tgid (standalone targets, and probes narrowed by `spec.process`).
//!
//! The cgroup id the kernel reports (`bpf_get_current_cgroup_id`) is the inode of the process's
//! cgroup2 directory; on hybrid hosts cgroup2 is mounted at `/sys/fs/cgroup/unified`.
use std::collections::{BTreeMap, BTreeSet};

use crate::targets::TargetProcess;

/// The targets of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSelection {
    pub frequency_hz: u64,
    pub targets: Vec<TargetProcess>,
    /// The probe narrows its pods by `spec.process`: select those processes, not whole containers.
    pub by_process: bool,
}

/// What the kernel filter needs, plus how to name the processes it samples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub frequency_hz: u64,
    /// Target processes by pid (the identity that fills a row's target columns).
    pub processes: BTreeMap<u32, TargetProcess>,
    /// Pids whose whole container cgroup is selected.
    pub container_pids: BTreeSet<u32>,
}

impl Selection {
    /// The union of the probes' targets at the highest requested frequency.
    pub fn union<'a>(probes: impl IntoIterator<Item = &'a ProbeSelection>) -> Selection {
        let mut out = Selection::default();
        for probe in probes {
            out.frequency_hz = out.frequency_hz.max(probe.frequency_hz);
            for target in &probe.targets {
                if !probe.by_process && !target.container_id.is_empty() {
                    out.container_pids.insert(target.pid);
                }
                out.processes
                    .entry(target.pid)
                    .or_insert_with(|| target.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: u32, container_id: &str) -> TargetProcess {
        TargetProcess {
            pid,
            namespace: "ns".into(),
            pod: "pod".into(),
            pod_uid: "uid".into(),
            container: "c".into(),
            container_id: container_id.into(),
            exe: "/bin/x".into(),
            cmdline: "x".into(),
        }
    }

    #[test]
    fn union_takes_the_highest_frequency_and_selects_containers_unless_narrowed() {
        let a = ProbeSelection {
            frequency_hz: 49,
            targets: vec![target(1, "abc"), target(2, "")],
            by_process: false,
        };
        let b = ProbeSelection {
            frequency_hz: 99,
            targets: vec![target(3, "def")],
            by_process: true,
        };
        let s = Selection::union([&a, &b]);
        assert_eq!(s.frequency_hz, 99);
        assert_eq!(
            s.processes.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(s.container_pids, BTreeSet::from([1]));
    }
}
