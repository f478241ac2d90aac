//! Per-pod resource metrics (Pixie's "infra health") for every pod the agent's probes target: CPU
//! seconds, memory working set and RSS, I/O bytes and network bytes, per namespace, pod and container.
//!
//! Which pods have series is decided by the probe manager ([`PodResources::follow`], with the
//! targets of every running probe): a pod that no probe targets any more loses its series; the
//! followed pods are read again every [`FOLLOW_REFRESH`].
//!
//! Sources, best first:
//! - the container's cgroup v2 directory: `cpu.stat` (`usage_usec`), `memory.current` minus
//!   `inactive_file` of `memory.stat` (working set, as kubelet computes it), `memory.stat` `anon`
//!   (RSS), `io.stat` (`rbytes`, `wbytes`) — these count processes that already exited;
//! - otherwise (standalone targets, or controllers not enabled in cgroup v2 on hybrid hosts) the
//!   sum over the container's live processes of `/proc/<pid>/stat`, `status` (`VmRSS`) and `io`;
//! - network bytes from `/proc/<pid>/net/dev` of one process per network namespace, without `lo`,
//!   only for pods with a network namespace of their own: a host-network pod (or a standalone
//!   process) shares the node's namespace and would report the node's interfaces, so it has none.
//!
//! Labels are bounded by the pods and containers on this node; in standalone mode, where there
//! are no pods, each traced program has its series (`container` its file name, namespace and pod
//! empty). Hand-written readers: a few
//! `key value` files, which no maintained crate covers for cgroup v2 without pulling much more.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::targets::TargetProcess;
use crate::targets::cgroup::{cgroup2_mount, v2_path};

/// The followed pods are read again at least this often (and at once when they change).
pub const FOLLOW_REFRESH: Duration = Duration::from_secs(5);

/// `namespace`, `pod`, `container` of a series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Direction of I/O and network bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `read`/`write` (I/O) or `receive`/`transmit` (network).
    pub direction: &'static str,
}

/// One reading of a container's resources; None where no source had it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub cpu_seconds: Option<f64>,
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub net_receive_bytes: Option<u64>,
    pub net_transmit_bytes: Option<u64>,
}

/// Processes of each container, by series labels.
type Groups = BTreeMap<PodLabels, Vec<u32>>;

/// The metric families and what is followed. Cheap to clone: every clone shares one state.
#[derive(Clone, Debug, Default)]
pub struct PodResources {
    cpu: Family<PodLabels, Counter<f64>>,
    working_set: Family<PodLabels, Gauge>,
    rss: Family<PodLabels, Gauge>,
    io: Family<DirectionLabels, Counter>,
    network: Family<DirectionLabels, Counter>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Last cumulative readings, to turn them into counter increments.
    last: HashMap<PodLabels, Reading>,
    /// The containers that have series, as last handed to `follow`.
    followed: Groups,
    refreshed_at: Option<Instant>,
    /// A background read of the followed containers is running.
    reading: bool,
}

const SCOPE: &str = "(pods targeted by any probe)";

impl PodResources {
    pub fn register(registry: &mut Registry) -> PodResources {
        let r = PodResources::default();
        registry.register(
            "sonde_pod_cpu_seconds",
            format!("CPU time used by the container {SCOPE}"),
            r.cpu.clone(),
        );
        registry.register(
            "sonde_pod_memory_working_set_bytes",
            format!("Memory working set of the container: usage minus inactive file cache {SCOPE}"),
            r.working_set.clone(),
        );
        registry.register(
            "sonde_pod_memory_rss_bytes",
            format!("Anonymous resident memory of the container {SCOPE}"),
            r.rss.clone(),
        );
        registry.register(
            "sonde_pod_io_bytes",
            format!("Block I/O bytes of the container by direction (read, write) {SCOPE}"),
            r.io.clone(),
        );
        registry.register(
            "sonde_pod_network_bytes",
            format!(
                "Network bytes of the pod's own network namespace by direction (receive, transmit), \
                 loopback excluded, the same for every container of the pod; host-network pods have \
                 no series (they would report the node's interfaces) {SCOPE}"
            ),
            r.network.clone(),
        );
        r
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the containers of `targets` (every running probe's) the ones with series: series of
    /// containers no longer among them go at once; the followed ones are read when they changed
    /// or [`FOLLOW_REFRESH`] passed, on a blocking thread when called inside a Tokio runtime.
    pub fn follow<'a>(&self, targets: impl IntoIterator<Item = &'a TargetProcess>) {
        let groups = groups(targets);
        {
            let mut state = self.lock();
            let due = state
                .refreshed_at
                .is_none_or(|at| at.elapsed() >= FOLLOW_REFRESH);
            if state.reading || (groups == state.followed && !due) {
                return;
            }
            let gone: Vec<PodLabels> = state
                .last
                .keys()
                .filter(|l| !groups.contains_key(*l))
                .cloned()
                .collect();
            for labels in gone {
                self.remove(&mut state, &labels);
            }
            state.followed = groups.clone();
            state.refreshed_at = Some(Instant::now());
            state.reading = true;
        }
        let this = self.clone();
        let read = move || {
            this.read_and_publish(&groups, cgroup2_mount().as_deref());
            this.lock().reading = false;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(read)),
            Err(_) => read(),
        }
    }

    fn read_and_publish(&self, groups: &Groups, cgroup2: Option<&Path>) {
        let own_netns = netns(std::process::id());
        // With hostPID (as deployed) and standalone, pid 1 is the node's init: its namespace is the node's.
        let host_netns = netns(1);
        let shared: Vec<&Path> = own_netns
            .iter()
            .chain(&host_netns)
            .map(|p| p.as_path())
            .collect();
        for (labels, pids) in groups {
            let in_container = !labels.pod.is_empty();
            let cgroup = cgroup2
                .filter(|_| in_container)
                .and_then(|mount| pids.iter().find_map(|p| cgroup_dir(mount, *p)));
            let reading = read(cgroup.as_deref(), pids, &shared);
            let mut state = self.lock();
            // A container that stopped being followed while it was read keeps no series.
            if state.followed.contains_key(labels) {
                self.publish(&mut state, labels, reading);
            }
        }
    }

    fn publish(&self, state: &mut State, labels: &PodLabels, reading: Reading) {
        let last = state.last.get(labels).cloned().unwrap_or_default();
        let dir = |direction| DirectionLabels {
            namespace: labels.namespace.clone(),
            pod: labels.pod.clone(),
            container: labels.container.clone(),
            direction,
        };
        if let Some(cpu) = reading.cpu_seconds {
            let delta = cpu - last.cpu_seconds.unwrap_or(0.0);
            // A drop means the source changed (processes exited): count nothing this time.
            let counter = self.cpu.get_or_create(labels);
            if delta > 0.0 {
                counter.inc_by(delta);
            }
        }
        if let Some(v) = reading.working_set_bytes {
            self.working_set.get_or_create(labels).set(v as i64);
        }
        if let Some(v) = reading.rss_bytes {
            self.rss.get_or_create(labels).set(v as i64);
        }
        let counters = [
            (&self.io, "read", reading.io_read_bytes, last.io_read_bytes),
            (
                &self.io,
                "write",
                reading.io_write_bytes,
                last.io_write_bytes,
            ),
            (
                &self.network,
                "receive",
                reading.net_receive_bytes,
                last.net_receive_bytes,
            ),
            (
                &self.network,
                "transmit",
                reading.net_transmit_bytes,
                last.net_transmit_bytes,
            ),
        ];
        for (family, direction, now, before) in counters {
            if let Some(now) = now {
                let counter = family.get_or_create(&dir(direction));
                counter.inc_by(now.saturating_sub(before.unwrap_or(0)));
            }
        }
        state.last.insert(labels.clone(), reading);
    }

    fn remove(&self, state: &mut State, labels: &PodLabels) {
        self.cpu.remove(labels);
        self.working_set.remove(labels);
        self.rss.remove(labels);
        for direction in ["read", "write"] {
            self.io.remove(&DirectionLabels {
                namespace: labels.namespace.clone(),
                pod: labels.pod.clone(),
                container: labels.container.clone(),
                direction,
            });
        }
        for direction in ["receive", "transmit"] {
            self.network.remove(&DirectionLabels {
                namespace: labels.namespace.clone(),
                pod: labels.pod.clone(),
                container: labels.container.clone(),
                direction,
            });
        }
        state.last.remove(labels);
    }
}

/// Targets grouped by container (pids sorted, deduplicated).
fn groups<'a>(targets: impl IntoIterator<Item = &'a TargetProcess>) -> Groups {
    let mut groups = Groups::new();
    for t in targets {
        groups
            .entry(PodLabels {
                namespace: t.namespace.clone(),
                pod: t.pod.clone(),
                container: t.container_label(),
            })
            .or_default()
            .push(t.pid);
    }
    for pids in groups.values_mut() {
        pids.sort_unstable();
        pids.dedup();
    }
    groups
}

/// The cgroup2 directory of `pid`, unless it is the root cgroup.
fn cgroup_dir(mount: &Path, pid: u32) -> Option<PathBuf> {
    let path = v2_path(pid)?;
    let rel = path.trim_start_matches('/');
    (!rel.is_empty()).then(|| mount.join(rel))
}

/// `key value` lines → the value of `key`.
pub fn field(contents: &str, key: &str) -> Option<u64> {
    contents.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Sums `key=value` fields of every device line of `io.stat`.
pub fn io_stat(contents: &str, key: &str) -> u64 {
    contents
        .lines()
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// (receive, transmit) bytes of `/proc/<pid>/net/dev` without `lo`.
pub fn net_dev(contents: &str) -> (u64, u64) {
    let mut rx = 0;
    let mut tx = 0;
    for line in contents.lines().skip(2) {
        let Some((iface, stats)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = stats
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        rx += fields.first().copied().unwrap_or(0);
        tx += fields.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}

fn netns(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

fn read_file(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Clock ticks per second of `/proc/<pid>/stat`: USER_HZ, 100 on every Linux architecture's ABI.
const USER_HZ: f64 = 100.0;

/// utime + stime of `/proc/<pid>/stat`, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = read_file(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Reads one container: from its cgroup where possible, else from its processes.
/// `shared_netns`: namespaces that are not a pod's own (the agent's and the node's); processes in
/// them report no network bytes.
pub fn read(cgroup: Option<&Path>, pids: &[u32], shared_netns: &[&Path]) -> Reading {
    let mut r = Reading::default();
    if let Some(dir) = cgroup {
        r.cpu_seconds = read_file(dir.join("cpu.stat"))
            .and_then(|s| field(&s, "usage_usec"))
            .map(|us| us as f64 / 1e6);
        let stat = read_file(dir.join("memory.stat"));
        let current =
            read_file(dir.join("memory.current")).and_then(|s| s.trim().parse::<u64>().ok());
        if let (Some(current), Some(stat)) = (current, stat.as_deref()) {
            let inactive = field(stat, "inactive_file").unwrap_or(0);
            r.working_set_bytes = Some(current.saturating_sub(inactive));
            r.rss_bytes = field(stat, "anon");
        }
        if let Some(io) = read_file(dir.join("io.stat")) {
            r.io_read_bytes = Some(io_stat(&io, "rbytes"));
            r.io_write_bytes = Some(io_stat(&io, "wbytes"));
        }
    }
    if r.cpu_seconds.is_none() {
        let ticks: u64 = pids.iter().filter_map(|p| proc_cpu_ticks(*p)).sum();
        r.cpu_seconds = Some(ticks as f64 / USER_HZ);
    }
    if r.rss_bytes.is_none() {
        let kib: u64 = pids
            .iter()
            .filter_map(|p| read_file(format!("/proc/{p}/status")))
            .filter_map(|s| field(&s.replace(':', " "), "VmRSS"))
            .sum();
        r.rss_bytes = Some(kib * 1024);
        r.working_set_bytes = r.working_set_bytes.or(r.rss_bytes);
    }
    if r.io_read_bytes.is_none() {
        let ios: Vec<String> = pids
            .iter()
            .filter_map(|p| read_file(format!("/proc/{p}/io")))
            .collect();
        let sum = |key: &str| -> u64 {
            ios.iter()
                .filter_map(|s| field(&s.replace(':', " "), key))
                .sum()
        };
        r.io_read_bytes = Some(sum("read_bytes"));
        r.io_write_bytes = Some(sum("write_bytes"));
    }
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let (mut rx, mut tx, mut any) = (0u64, 0u64, false);
    for pid in pids {
        let Some(ns) = netns(*pid) else { continue };
        if shared_netns.contains(&ns.as_path()) || !seen.insert(ns) {
            continue;
        }
        if let Some(dev) = read_file(format!("/proc/{pid}/net/dev")) {
            let (r_, t_) = net_dev(&dev);
            rx += r_;
            tx += t_;
            any = true;
        }
    }
    if any {
        r.net_receive_bytes = Some(rx);
        r.net_transmit_bytes = Some(tx);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_and_proc_files_parse() {
        assert_eq!(
            field("usage_usec 1500000\nuser_usec 1\n", "usage_usec"),
            Some(1_500_000)
        );
        assert_eq!(field("anon 4096\nfile 1\n", "anon"), Some(4096));
        assert_eq!(
            field(&"VmRSS:\t  1234 kB\n".replace(':', " "), "VmRSS"),
            Some(1234)
        );
        assert_eq!(
            io_stat(
                "8:0 rbytes=10 wbytes=20 rios=1\n8:16 rbytes=5 wbytes=0\n",
                "rbytes"
            ),
            15
        );
        let dev = "Inter-|   Receive\n face |bytes    packets\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 2000 3 0 0 0 0 0 0 500 2 0 0 0 0 0 0\n";
        assert_eq!(net_dev(dev), (2000, 500));
    }

    #[test]
    fn a_busy_process_reports_cpu_and_memory_from_proc() {
        let mut child = std::process::Command::new("sh")
            // Busy until killed: a loop that ends could be a zombie (no memory) when it is read.
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let own = netns(std::process::id()).unwrap();
        let r = read(None, &[pid], &[own.as_path()]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(r.cpu_seconds.unwrap() > 0.0, "{r:?}");
        assert!(r.rss_bytes.unwrap() > 0, "{r:?}");
        assert_eq!(
            r.net_receive_bytes, None,
            "a host-network process reports no pod network"
        );
    }

    fn busy(prefix: &[&str]) -> std::process::Child {
        // Busy until killed: a loop that ends could be a zombie (no memory) when it is read.
        let mut cmd = std::process::Command::new(prefix.first().copied().unwrap_or("sh"));
        cmd.args(prefix.iter().skip(1));
        if !prefix.is_empty() {
            cmd.arg("sh");
        }
        cmd.args(["-c", "while :; do :; done"]).spawn().unwrap()
    }

    fn target(pid: u32, pod: &str) -> TargetProcess {
        TargetProcess {
            pid,
            namespace: "shop".into(),
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            container: "app".into(),
            container_id: String::new(),
            exe: "/bin/sh".into(),
            cmdline: "sh".into(),
        }
    }

    fn series(registry: &Registry, pod: &str) -> Vec<String> {
        let label = format!("pod=\"{pod}\"");
        crate::telemetry::scrape(registry)
            .lines()
            .filter(|l| l.starts_with("sonde_pod_") && l.contains(&label))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn followed_pods_get_series_and_lose_them_when_no_probe_targets_them() {
        let mut registry = Registry::default();
        let resources = PodResources::register(&mut registry);
        let (mut a, mut b) = (busy(&[]), busy(&[]));
        let (ta, tb) = (target(a.id(), "a"), target(b.id(), "b"));
        resources.follow([&ta, &tb]);
        let of_a = series(&registry, "a");
        assert!(
            of_a.iter()
                .any(|l| l.starts_with("sonde_pod_cpu_seconds_total{"))
                && of_a
                    .iter()
                    .any(|l| l.starts_with("sonde_pod_memory_rss_bytes{")),
            "{of_a:?}"
        );
        assert!(!series(&registry, "b").is_empty());
        resources.follow([&tb]);
        assert_eq!(series(&registry, "a"), Vec::<String>::new());
        assert!(!series(&registry, "b").is_empty());
        resources.follow(std::iter::empty());
        assert_eq!(series(&registry, "b"), Vec::<String>::new());
        for c in [&mut a, &mut b] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Standalone there are no pods: each program gets its series, named after it.
    #[test]
    fn processes_outside_any_pod_get_a_series_per_program() {
        let mut registry = Registry::default();
        let resources = PodResources::register(&mut registry);
        let (mut a, mut b) = (busy(&[]), busy(&[]));
        let bare = |pid, exe: &str| TargetProcess {
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
            exe: exe.into(),
            ..target(pid, "")
        };
        resources.follow([
            &bare(a.id(), "/usr/sbin/nginx"),
            &bare(b.id(), "/usr/bin/redis-server"),
        ]);
        let all = series(&registry, "");
        for program in ["nginx", "redis-server"] {
            let label = format!("container=\"{program}\"");
            assert!(
                all.iter()
                    .any(|l| l.starts_with("sonde_pod_cpu_seconds_total{") && l.contains(&label)),
                "{program}: {all:?}"
            );
        }
        for c in [&mut a, &mut b] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn only_a_pod_with_its_own_network_namespace_reports_network_bytes() {
        let own = netns(std::process::id()).unwrap();
        // pid 1's namespace may be unreadable in a sandbox; the agent's own is what this test shares.
        let host = netns(1);
        let shared: Vec<&Path> = std::iter::once(own.as_path())
            .chain(host.as_deref())
            .collect();
        let mut host_net = busy(&[]);
        // `unshare -n` gives the loop a network namespace of its own, as a pod sandbox has.
        let mut own_net = busy(&["unshare", "-n", "--"]);
        let pid = own_net.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while netns(pid).as_ref() == Some(&own) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let in_host = read(None, &[host_net.id()], &shared);
        let in_pod = read(None, &[pid], &shared);
        for c in [&mut host_net, &mut own_net] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(in_host.net_receive_bytes, None, "{in_host:?}");
        // A fresh namespace has only `lo`, which is left out: zero bytes, but reported.
        assert_eq!(in_pod.net_receive_bytes, Some(0), "{in_pod:?}");
        assert_eq!(in_pod.net_transmit_bytes, Some(0), "{in_pod:?}");
    }
}
