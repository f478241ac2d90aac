//! Per-pod resource metrics (Pixie's "infra health") for the pods the agent profiles: CPU seconds,
//! memory working set and RSS, I/O bytes and network bytes, per namespace, pod and container.
//!
//! Sources, best first:
//! - the container's cgroup v2 directory: `cpu.stat` (`usage_usec`), `memory.current` minus
//!   `inactive_file` of `memory.stat` (working set, as kubelet computes it), `memory.stat` `anon`
//!   (RSS), `io.stat` (`rbytes`, `wbytes`) — these count processes that already exited;
//! - otherwise (standalone targets, or controllers not enabled in cgroup v2 on hybrid hosts) the
//!   sum over the container's live processes of `/proc/<pid>/stat`, `status` (`VmRSS`) and `io`;
//! - network bytes from `/proc/<pid>/net/dev` of one process per network namespace, without `lo`,
//!   only for namespaces other than the agent's own (a host-network process would report the node).
//!
//! Labels are bounded by the pods and containers on this node; in standalone mode there is one
//! series with empty labels for all profiled processes together. Hand-written readers: a few
//! `key value` files, which no maintained crate covers for cgroup v2 without pulling much more.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::targets::TargetProcess;

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

/// The metric families; refreshed by [`PodResources::refresh`].
#[derive(Clone, Debug, Default)]
pub struct PodResources {
    cpu: Family<PodLabels, Counter<f64>>,
    working_set: Family<PodLabels, Gauge>,
    rss: Family<PodLabels, Gauge>,
    io: Family<DirectionLabels, Counter>,
    network: Family<DirectionLabels, Counter>,
    /// Last cumulative readings, to turn them into counter increments.
    last: HashMap<PodLabels, Reading>,
}

impl PodResources {
    pub fn register(registry: &mut Registry) -> PodResources {
        let r = PodResources::default();
        registry.register(
            "sonde_pod_cpu_seconds",
            "CPU time used by the container (profiled pods)",
            r.cpu.clone(),
        );
        registry.register(
            "sonde_pod_memory_working_set_bytes",
            "Memory working set of the container: usage minus inactive file cache (profiled pods)",
            r.working_set.clone(),
        );
        registry.register(
            "sonde_pod_memory_rss_bytes",
            "Anonymous resident memory of the container (profiled pods)",
            r.rss.clone(),
        );
        registry.register(
            "sonde_pod_io_bytes",
            "Block I/O bytes of the container by direction (read, write) (profiled pods)",
            r.io.clone(),
        );
        registry.register(
            "sonde_pod_network_bytes",
            "Network bytes of the pod's network namespace by direction (receive, transmit), loopback excluded",
            r.network.clone(),
        );
        r
    }

    /// Reads every container of `targets` and updates the series; series of containers no longer
    /// targeted are removed.
    pub fn refresh(&mut self, targets: &BTreeMap<u32, TargetProcess>, cgroup2: Option<&Path>) {
        let mut groups: BTreeMap<PodLabels, Vec<u32>> = BTreeMap::new();
        for (pid, t) in targets {
            groups
                .entry(PodLabels {
                    namespace: t.namespace.clone(),
                    pod: t.pod.clone(),
                    container: t.container.clone(),
                })
                .or_default()
                .push(*pid);
        }
        let own_netns = netns(std::process::id());
        for (labels, pids) in &groups {
            let in_container = !labels.pod.is_empty();
            let cgroup = cgroup2
                .filter(|_| in_container)
                .and_then(|mount| pids.iter().find_map(|p| cgroup_dir(mount, *p)));
            let reading = read(cgroup.as_deref(), pids, own_netns.as_deref());
            self.publish(labels, reading);
        }
        let gone: Vec<PodLabels> = self
            .last
            .keys()
            .filter(|l| !groups.contains_key(*l))
            .cloned()
            .collect();
        for labels in gone {
            self.remove(&labels);
        }
    }

    fn publish(&mut self, labels: &PodLabels, reading: Reading) {
        let last = self.last.get(labels).cloned().unwrap_or_default();
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
        self.last.insert(labels.clone(), reading);
    }

    fn remove(&mut self, labels: &PodLabels) {
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
        self.last.remove(labels);
    }
}

/// The cgroup2 directory of `pid`, unless it is the root cgroup.
fn cgroup_dir(mount: &Path, pid: u32) -> Option<PathBuf> {
    let contents = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = contents.lines().find_map(|l| l.strip_prefix("0::"))?;
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
pub fn read(cgroup: Option<&Path>, pids: &[u32], own_netns: Option<&Path>) -> Reading {
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
        if Some(ns.as_path()) == own_netns || !seen.insert(ns) {
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
        let r = read(None, &[pid], netns(std::process::id()).as_deref());
        let _ = child.kill();
        let _ = child.wait();
        assert!(r.cpu_seconds.unwrap() > 0.0, "{r:?}");
        assert!(r.rss_bytes.unwrap() > 0, "{r:?}");
        assert_eq!(
            r.net_receive_bytes, None,
            "a host-network process reports no pod network"
        );
    }
}
