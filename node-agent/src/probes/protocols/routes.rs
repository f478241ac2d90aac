//! Which traced process gets which protocol settings, and which keys the kernel filter holds.
//!
//! Every protocol Tracepoint registers its targets here. Probes whose targets are whole pod
//! containers select by cgroup v2 id (processes started later in the container are traced at once);
//! probes with a process selector (standalone, or narrowing a pod) select by tgid. Where several
//! probes cover one process, their protocols are merged (the tables are shared anyway). A route
//! outlives its selection by [`RETIRED_ROUTE_GRACE`], for the bytes captured before.
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sonde_protocols::{Kind, ParseConfig};

use crate::targets::TargetProcess;
use crate::targets::selector::ExecPattern;

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
    /// Programs the probe's process selector names exactly: the kernel selects a process that
    /// starts one in its exec.
    pub exec_patterns: Vec<ExecPattern>,
}

/// How long a route outlives its selection. The capture ring still holds what the kernel captured
/// while the process was selected: a short-lived client exits, and the rescan after it deselects
/// it, before the capture thread (a second between drains at most while traffic is light) has read
/// its bytes.
pub const RETIRED_ROUTE_GRACE: Duration = Duration::from_secs(10);

/// Routes by tgid and by cgroup id; a tgid route wins, and a selected key's route wins over a
/// retired one. Routes by exec name are those of processes the kernel selected in their exec,
/// until the process scan finds them.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub tgids: HashMap<u32, Arc<Route>>,
    pub cgroups: HashMap<u64, Arc<Route>>,
    pub execs: HashMap<ExecPattern, Arc<Route>>,
    /// Routes of keys no longer selected, until their deadline.
    retired_tgids: HashMap<u32, (Arc<Route>, Instant)>,
    retired_cgroups: HashMap<u64, (Arc<Route>, Instant)>,
}

impl Routes {
    pub fn lookup(&self, tgid: u32, cgroup_id: u64) -> Option<Arc<Route>> {
        self.tgids
            .get(&tgid)
            .or_else(|| self.cgroups.get(&cgroup_id))
            .or_else(|| self.retired_tgids.get(&tgid).map(|(route, _)| route))
            .or_else(|| self.retired_cgroups.get(&cgroup_id).map(|(route, _)| route))
            .cloned()
    }

    /// `next` takes over at `now`: the routes it no longer has are retired until `now` +
    /// [`RETIRED_ROUTE_GRACE`]; those retired before stay until their own deadline.
    pub fn succeeded_by(self, mut next: Routes, now: Instant) -> Routes {
        next.retired_tgids = retire(self.tgids, self.retired_tgids, &next.tgids, now);
        next.retired_cgroups = retire(self.cgroups, self.retired_cgroups, &next.cgroups, now);
        next
    }

    /// Merges every probe's targets; `cgroup_of` gives a pid's cgroup v2 id.
    pub fn build(
        probes: &BTreeMap<String, ProbeRoutes>,
        cgroup_of: impl Fn(u32) -> Option<u64>,
    ) -> Routes {
        let mut tgids: HashMap<u32, Route> = HashMap::new();
        let mut cgroups: HashMap<u64, Route> = HashMap::new();
        let mut execs: HashMap<ExecPattern, Route> = HashMap::new();
        for probe in probes.values() {
            for pattern in &probe.exec_patterns {
                let route = Route {
                    kinds: probe.kinds.clone(),
                    config: probe.config.clone(),
                    namespace: String::new(),
                    pod: String::new(),
                    container: pattern.label().to_owned(),
                };
                merge(execs.entry(pattern.clone()), route);
            }
            for target in &probe.targets {
                let route = Route {
                    kinds: probe.kinds.clone(),
                    config: probe.config.clone(),
                    namespace: target.namespace.clone(),
                    pod: target.pod.clone(),
                    container: target.container_label(),
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
            execs: execs.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            ..Routes::default()
        }
    }
}

impl Routes {
    /// The route of a process the kernel selected in its exec of a program started by `path`
    /// (empty if unknown) whose thread's name is `comm`: that of every pattern it matches, merged.
    pub fn exec_route(&self, path: &[u8], comm: &[u8]) -> Option<Arc<Route>> {
        let mut matching = self
            .execs
            .iter()
            .filter(|(pattern, _)| pattern.matches(path, comm))
            .map(|(_, route)| route);
        let first = matching.next()?;
        let mut merged: Option<Route> = None;
        for route in matching {
            merge_into(
                merged.get_or_insert_with(|| (**first).clone()),
                (**route).clone(),
            );
        }
        Some(merged.map_or_else(|| first.clone(), Arc::new))
    }
}

fn retire<K: Hash + Eq>(
    old: HashMap<K, Arc<Route>>,
    mut retired: HashMap<K, (Arc<Route>, Instant)>,
    current: &HashMap<K, Arc<Route>>,
    now: Instant,
) -> HashMap<K, (Arc<Route>, Instant)> {
    retired.retain(|key, (_, until)| *until > now && !current.contains_key(key));
    for (key, route) in old {
        if !current.contains_key(&key) {
            retired.insert(key, (route, now + RETIRED_ROUTE_GRACE));
        }
    }
    retired
}

fn merge<K>(slot: std::collections::hash_map::Entry<'_, K, Route>, route: Route) {
    use std::collections::hash_map::Entry;
    match slot {
        Entry::Vacant(v) => {
            v.insert(route);
        }
        Entry::Occupied(mut o) => merge_into(o.get_mut(), route),
    }
}

/// `route`'s protocols and settings added to `existing`'s.
fn merge_into(existing: &mut Route, route: Route) {
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
                exec_patterns: Vec::new(),
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
                exec_patterns: Vec::new(),
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
                exec_patterns: Vec::new(),
            },
        );
        let routes = Routes::build(&probes, |pid| (pid == 10).then_some(777));
        assert!(routes.tgids.is_empty());
        assert_eq!(routes.lookup(99, 777).unwrap().pod, "p");
    }

    #[test]
    fn a_process_outside_any_pod_is_labelled_by_its_program() {
        let mut nginx = target(10, "");
        (nginx.namespace, nginx.container, nginx.exe) =
            (String::new(), String::new(), "/usr/sbin/nginx".into());
        let routes = Routes::build(&one_probe(vec![nginx, target(11, "p")], false), |_| None);
        let container = |pid| routes.lookup(pid, 0).map(|r| r.container.clone());
        assert_eq!(container(10).as_deref(), Some("nginx"));
        assert_eq!(container(11).as_deref(), Some("c"));
    }

    fn one_probe(targets: Vec<TargetProcess>, by_cgroup: bool) -> BTreeMap<String, ProbeRoutes> {
        BTreeMap::from([(
            "a".to_owned(),
            ProbeRoutes {
                kinds: vec![Kind::Http],
                config: ParseConfig::default(),
                targets,
                by_cgroup,
                exec_patterns: Vec::new(),
            },
        )])
    }

    #[test]
    fn a_program_named_by_two_probes_gets_both_their_protocols_and_is_labelled_by_its_name() {
        let file = |name: &str, prefix| ExecPattern::File {
            name: name.into(),
            prefix,
        };
        let probe = |kinds, exec_patterns| ProbeRoutes {
            kinds,
            config: ParseConfig::default(),
            targets: Vec::new(),
            by_cgroup: false,
            exec_patterns,
        };
        let probes = BTreeMap::from([
            (
                "a".to_owned(),
                probe(vec![Kind::Http], vec![file("curl", false)]),
            ),
            (
                "b".to_owned(),
                probe(
                    vec![Kind::Dns],
                    vec![file("cur", true), ExecPattern::Path("/usr/bin/psql".into())],
                ),
            ),
        ]);
        let routes = Routes::build(&probes, |_| None);
        let curl = routes.exec_route(b"/usr/bin/curl", b"curl").unwrap();
        assert_eq!(curl.kinds, vec![Kind::Http, Kind::Dns]);
        let curly = routes.exec_route(b"/usr/bin/curly", b"curly").unwrap();
        assert_eq!(
            (curly.kinds.clone(), curly.container.as_str()),
            (vec![Kind::Dns], "cur")
        );
        let psql = routes.exec_route(b"/usr/bin/psql", b"psql").unwrap();
        assert_eq!(psql.container, "psql");
        assert!(routes.exec_route(b"/usr/bin/wget", b"wget").is_none());
        assert!(routes.tgids.is_empty() && routes.cgroups.is_empty());
    }

    #[test]
    fn a_deselected_process_keeps_its_route_for_the_grace_period_then_loses_it() {
        let start = Instant::now();
        let both = Routes::build(
            &one_probe(vec![target(10, "p"), target(11, "q")], false),
            |_| None,
        );
        let only_11 = Routes::build(&one_probe(vec![target(11, "q")], false), |_| None);
        let routes = both.succeeded_by(only_11.clone(), start);
        assert!(!routes.tgids.contains_key(&10), "no longer selected");
        assert_eq!(
            routes.lookup(10, 0).map(|r| r.pod.clone()),
            Some("p".into())
        );
        assert_eq!(
            routes.lookup(11, 0).map(|r| r.pod.clone()),
            Some("q".into())
        );
        // Still retired at a change within the grace period, gone at one after it.
        let later = start + RETIRED_ROUTE_GRACE / 2;
        let routes = routes.succeeded_by(only_11.clone(), later);
        assert!(routes.lookup(10, 0).is_some());
        let routes = routes.succeeded_by(only_11, start + RETIRED_ROUTE_GRACE);
        assert!(routes.lookup(10, 0).is_none());
    }

    #[test]
    fn a_selected_route_wins_over_a_retired_one_and_cgroups_retire_too() {
        let now = Instant::now();
        let in_p = Routes::build(&one_probe(vec![target(10, "p")], true), |_| Some(777));
        let none = Routes::build(&one_probe(vec![], true), |_| None);
        let routes = in_p.succeeded_by(none, now);
        assert_eq!(
            routes.lookup(99, 777).map(|r| r.pod.clone()),
            Some("p".into())
        );
        // The same cgroup selected again for another pod: the new route answers.
        let in_r = Routes::build(&one_probe(vec![target(10, "r")], true), |_| Some(777));
        let routes = routes.succeeded_by(in_r, now);
        assert_eq!(
            routes.lookup(99, 777).map(|r| r.pod.clone()),
            Some("r".into())
        );
        assert!(routes.retired_cgroups.is_empty());
    }
}
