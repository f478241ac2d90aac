//! Which traced process gets which protocol settings, and which keys the kernel filter holds.
//!
//! Every protocol Tracepoint registers its targets here. Probes whose targets are whole pod
//! containers select by cgroup v2 id (processes started later in the container are traced at once);
//! probes with a process selector (standalone, or narrowing a pod) select by tgid. Where several
//! probes cover one process, their protocols are merged (the tables are shared anyway).
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sonde_protocols::{Kind, ParseConfig};

use crate::targets::TargetProcess;

/// Settings that apply to one traced process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub kinds: Vec<Kind>,
    pub config: ParseConfig,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// One probe's contribution.
#[derive(Clone, Debug)]
pub struct ProbeRoutes {
    pub kinds: Vec<Kind>,
    pub config: ParseConfig,
    pub targets: Vec<TargetProcess>,
    /// Select the targets' cgroups rather than their tgids.
    pub by_cgroup: bool,
}

/// Routes by tgid and by cgroup id; a tgid route wins.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub tgids: HashMap<u32, Arc<Route>>,
    pub cgroups: HashMap<u64, Arc<Route>>,
}

impl Routes {
    pub fn lookup(&self, tgid: u32, cgroup_id: u64) -> Option<Arc<Route>> {
        self.tgids
            .get(&tgid)
            .or_else(|| self.cgroups.get(&cgroup_id))
            .cloned()
    }

    /// Merges every probe's targets; `cgroup_of` gives a pid's cgroup v2 id.
    pub fn build(
        probes: &BTreeMap<String, ProbeRoutes>,
        cgroup_of: impl Fn(u32) -> Option<u64>,
    ) -> Routes {
        let mut tgids: HashMap<u32, Route> = HashMap::new();
        let mut cgroups: HashMap<u64, Route> = HashMap::new();
        for probe in probes.values() {
            for target in &probe.targets {
                let route = Route {
                    kinds: probe.kinds.clone(),
                    config: probe.config.clone(),
                    namespace: target.namespace.clone(),
                    pod: target.pod.clone(),
                    container: target.container.clone(),
                };
                let slot = match probe.by_cgroup.then(|| cgroup_of(target.pid)).flatten() {
                    Some(id) => cgroups.entry(id),
                    None => {
                        merge(tgids.entry(target.pid), route);
                        continue;
                    }
                };
                merge(slot, route);
            }
        }
        Routes {
            tgids: tgids.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            cgroups: cgroups.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        }
    }
}

fn merge<K>(slot: std::collections::hash_map::Entry<'_, K, Route>, route: Route) {
    use std::collections::hash_map::Entry;
    match slot {
        Entry::Vacant(v) => {
            v.insert(route);
        }
        Entry::Occupied(mut o) => {
            let existing = o.get_mut();
            for kind in route.kinds {
                if !existing.kinds.contains(&kind) {
                    existing.kinds.push(kind);
                }
            }
            existing.kinds.sort();
            existing.config.max_body_bytes = existing
                .config
                .max_body_bytes
                .max(route.config.max_body_bytes);
            existing.config.redact |= route.config.redact;
        }
    }
}

/// The cgroup2 mount point (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid
/// ones), from /proc/mounts.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The cgroup v2 id of process `pid` (what `bpf_get_current_cgroup_id` returns for its threads):
/// the inode number of its cgroup directory under the cgroup2 mount.
pub fn cgroup_id(root: &Path, pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = root.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: u32, pod: &str) -> TargetProcess {
        TargetProcess {
            pid,
            namespace: "ns".into(),
            pod: pod.into(),
            pod_uid: String::new(),
            container: "c".into(),
            container_id: String::new(),
            exe: "/bin/x".into(),
            cmdline: String::new(),
        }
    }

    #[test]
    fn overlapping_probes_merge_their_protocols_for_a_shared_process() {
        let mut probes = BTreeMap::new();
        probes.insert(
            "a".to_owned(),
            ProbeRoutes {
                kinds: vec![Kind::Http],
                config: ParseConfig::default(),
                targets: vec![target(10, "p")],
                by_cgroup: false,
            },
        );
        probes.insert(
            "b".to_owned(),
            ProbeRoutes {
                kinds: vec![Kind::Redis, Kind::Http],
                config: ParseConfig {
                    max_body_bytes: 4096,
                    redact: true,
                },
                targets: vec![target(10, "p"), target(11, "q")],
                by_cgroup: false,
            },
        );
        let routes = Routes::build(&probes, |_| None);
        let shared = routes.lookup(10, 0).unwrap();
        assert_eq!(shared.kinds, vec![Kind::Http, Kind::Redis]);
        assert_eq!(shared.config.max_body_bytes, 4096);
        assert_eq!(routes.lookup(11, 0).unwrap().pod, "q");
        assert!(routes.lookup(12, 0).is_none());
    }

    #[test]
    fn pod_probes_route_by_cgroup_so_later_processes_of_the_container_match() {
        let mut probes = BTreeMap::new();
        probes.insert(
            "a".to_owned(),
            ProbeRoutes {
                kinds: vec![Kind::Http],
                config: ParseConfig::default(),
                targets: vec![target(10, "p")],
                by_cgroup: true,
            },
        );
        let routes = Routes::build(&probes, |pid| (pid == 10).then_some(777));
        assert!(routes.tgids.is_empty());
        assert_eq!(routes.lookup(99, 777).unwrap().pod, "p");
    }

    #[test]
    fn this_process_has_a_cgroup_id() {
        let root = cgroup2_root().expect("a cgroup2 mount");
        assert!(cgroup_id(&root, std::process::id()).is_some());
    }
}
