//! Shedding under saturation: while the node's CPUs are saturated, every cycle the capture thread
//! spends parsing is a cycle a workload waited for. There the agent captures fewer connections
//! instead of taking that CPU: the kernel still counts a shed connection's bytes (its stream
//! positions and `conn_stats` stay right) but copies none of them, and counts each syscall it
//! skipped (`sonde_events_dropped_total{reason="shed"}`).
//!
//! Connections fall into [`SHED_SLOTS`] slots by a hash of their identity; the agent keeps a
//! power-of-two share of them (`kept` slots, the highest ones), so a connection is captured or
//! shed whole, a share that halves keeps a subset of the connections it kept, and each captured
//! request stands for `SHED_SLOTS / kept` requests in the RED histograms ([`Governor::weight`]),
//! which so keep estimating every request's rate and latency.
//!
//! Saturated means tasks waited for a CPU ([`SATURATED_WAIT`] of the time or more, the kernel's
//! pressure stall information, `/proc/pressure/cpu`) or the CPUs were [`SATURATED_BUSY`] busy
//! (`/proc/stat`). Busy time alone misses it: nginx under wrk on two vCPUs with Sonde left the CPUs
//! 6–8% idle, as a server preempted by the agent leaves its client nothing to do, while tasks
//! waited for a CPU 7–13% of the time (0–1% untraced).
//!
//! Once per [`WINDOW`], from the event loop: when the node was saturated and the capture thread
//! used more than its budget, the share drops to what the budget pays for; when the node has room
//! again it doubles, a window at a time. Between the two it holds: a share that made room by
//! shedding would saturate the node again if it came back whole.
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use nix::time::{ClockId, clock_gettime};
use prometheus_client::metrics::gauge::Gauge;
use sonde_common::conn::SHED_SLOTS;
use tracing::{debug, info, warn};

/// How long the node's and the capture thread's CPU are measured before a decision.
pub const WINDOW: Duration = Duration::from_millis(500);
/// The node is saturated when tasks waited for a CPU this share of a window or more...
pub const SATURATED_WAIT: f64 = 0.05;
/// ... or when its CPUs were busy this share of it.
pub const SATURATED_BUSY: f64 = 0.95;
/// The node has room for more capture when tasks waited less than this share of a window...
pub const ROOM_WAIT: f64 = 0.01;
/// ... and its CPUs were busy less than this share of it.
pub const ROOM_BUSY: f64 = 0.85;
/// Default of the capture thread's CPU budget on a saturated node, in percent of the node's CPUs
/// (agent flag `--saturated-capture-percent`): what lighter eBPF tracers publish as their whole
/// cost (0.5–1.5% for Beyla).
pub const DEFAULT_BUDGET_PERCENT: f64 = 1.0;

/// Whether and how the agent sheds connections on a saturated node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shedding {
    /// False: every connection is captured, saturated node or not.
    pub enabled: bool,
    /// The capture thread's CPU on a saturated node, in percent of the node's CPUs.
    pub budget_percent: f64,
}

impl Default for Shedding {
    fn default() -> Self {
        Shedding {
            enabled: true,
            budget_percent: DEFAULT_BUDGET_PERCENT,
        }
    }
}

/// How loaded the node's CPUs were over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Share of the time the CPUs were busy (0–1).
    pub busy: f64,
    /// Share of the time some task waited for a CPU (0–1; 0 where the kernel does not tell).
    pub waiting: f64,
}

impl Load {
    fn saturated(self) -> bool {
        self.waiting >= SATURATED_WAIT || self.busy >= SATURATED_BUSY
    }

    fn has_room(self) -> bool {
        self.waiting < ROOM_WAIT && self.busy < ROOM_BUSY
    }
}

/// The slots to keep after a window: `kept` now, the node's `load`, the capture thread using
/// `used` CPUs of a `budget` (in CPUs).
pub fn decide(kept: u32, load: Load, used: f64, budget: f64) -> u32 {
    if load.saturated() {
        if used <= budget {
            return kept;
        }
        // What the budget pays for, were the cost proportional to the connections kept; down to
        // a power of two so that the weights stay whole.
        let affordable = (f64::from(kept) * budget / used).floor().max(1.0) as u32;
        let power = 1 << (u32::BITS - 1 - affordable.leading_zeros());
        return power.min(kept);
    }
    if load.has_room() {
        return (kept * 2).min(SHED_SLOTS);
    }
    kept
}

/// Microseconds some task waited for a CPU, from `/proc/pressure/cpu` (None: the kernel was
/// built or booted without pressure stall information).
fn cpu_wait_us() -> Option<u64> {
    let pressure = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    parse_cpu_wait(&pressure)
}

/// The `total=` of the `some` line of `/proc/pressure/cpu`.
fn parse_cpu_wait(pressure: &str) -> Option<u64> {
    let some = pressure.lines().find(|l| l.starts_with("some "))?;
    some.split_ascii_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Jiffies of all CPUs together from the first line of `/proc/stat`: (busy, total).
fn node_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_node_jiffies(stat.lines().next()?)
}

/// (busy, total) of a `/proc/stat` `cpu` line: idle and iowait are not busy; guest time is
/// already in user time.
fn parse_node_jiffies(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait))
}

/// The node's CPUs (online), from the per-CPU lines of `/proc/stat`: the budget is a share of
/// them, whatever CPU limit the agent itself runs under.
fn node_cpus() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpus = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    u32::try_from(cpus).ok().filter(|&n| n > 0)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// A window's starting point.
struct Mark {
    at: Instant,
    node: (u64, u64),
    wait_us: Option<u64>,
    thread: Duration,
}

impl Mark {
    fn now() -> Option<Mark> {
        Some(Mark {
            at: Instant::now(),
            node: node_jiffies()?,
            wait_us: cpu_wait_us(),
            thread: thread_cpu()?,
        })
    }

    /// The node's load from `self` to `now`, `elapsed` apart.
    fn load_until(&self, now: &Mark, elapsed: Duration) -> Load {
        let total = now.node.1.saturating_sub(self.node.1);
        let busy = if total == 0 {
            0.0
        } else {
            now.node.0.saturating_sub(self.node.0) as f64 / total as f64
        };
        // PSI counts wall time in which at least one task waited, whatever the number of CPUs.
        let waiting = match (self.wait_us, now.wait_us) {
            (Some(before), Some(after)) => {
                after.saturating_sub(before) as f64 / 1e6 / elapsed.as_secs_f64()
            }
            _ => 0.0,
        };
        Load { busy, waiting }
    }
}

/// Decides, on the capture thread, the share of connections the kernel captures.
pub struct Governor {
    map: Array<MapData, u32>,
    /// False: never sheds ([`Shedding::enabled`]).
    enabled: bool,
    /// The budget in CPUs ([`Shedding::budget_percent`] of the node's).
    budget: f64,
    kept: u32,
    mark: Option<Mark>,
    share: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Governor {
    /// Starts with every connection captured; measures the thread that calls [`Governor::step`].
    pub fn new(
        map: Array<MapData, u32>,
        settings: Shedding,
        share: Gauge<f64, std::sync::atomic::AtomicU64>,
    ) -> Governor {
        let cpus = node_cpus().unwrap_or(1);
        let mut governor = Governor {
            map,
            enabled: settings.enabled,
            budget: settings.budget_percent / 100.0 * f64::from(cpus),
            kept: SHED_SLOTS,
            mark: None,
            share,
        };
        governor.write(SHED_SLOTS);
        governor
    }

    /// How many requests each captured one stands for.
    pub fn weight(&self) -> u32 {
        SHED_SLOTS / self.kept
    }

    /// How many of the [`SHED_SLOTS`] slots are shed.
    pub fn shed(&self) -> u32 {
        SHED_SLOTS - self.kept
    }

    /// Decides again if a window has passed since the last decision.
    pub fn step(&mut self) {
        if !self.enabled {
            return;
        }
        let Some(mark) = &self.mark else {
            self.mark = Mark::now();
            return;
        };
        let elapsed = mark.at.elapsed();
        if elapsed < WINDOW {
            return;
        }
        let Some(now) = Mark::now() else { return };
        let load = mark.load_until(&now, elapsed);
        let used = now.thread.saturating_sub(mark.thread).as_secs_f64() / elapsed.as_secs_f64();
        self.mark = Some(now);
        let kept = decide(self.kept, load, used, self.budget);
        if kept == self.kept {
            return;
        }
        // Whole capture left or regained is news; the steps between, at most two a second, are not.
        if kept < self.kept {
            let message = format!(
                "the node's CPUs are saturated ({:.0}% busy, tasks waiting for one {:.0}% of the time) and capturing took {:.0} millicores (budget {:.0}): capturing {kept} in {SHED_SLOTS} of the connections, each request seen counting for {}",
                load.busy * 100.0,
                load.waiting * 100.0,
                used * 1000.0,
                self.budget * 1000.0,
                SHED_SLOTS / kept
            );
            if self.kept == SHED_SLOTS {
                info!("{message}");
            } else {
                debug!("{message}");
            }
        } else if kept == SHED_SLOTS {
            info!(
                "the node's CPUs have room ({:.0}% busy, tasks waiting for one {:.0}% of the time): capturing every connection again",
                load.busy * 100.0,
                load.waiting * 100.0
            );
        } else {
            debug!(
                "the node's CPUs have room: capturing {kept} in {SHED_SLOTS} of the connections"
            );
        }
        self.write(kept);
    }

    fn write(&mut self, kept: u32) {
        match self.map.set(0, SHED_SLOTS - kept, 0) {
            Ok(()) => {
                self.kept = kept;
                self.share.set(f64::from(kept) / f64::from(SHED_SLOTS));
            }
            Err(e) => warn!("cannot set the share of connections captured: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: f64 = 0.05;

    fn waiting(share: f64) -> Load {
        Load {
            busy: 0.9,
            waiting: share,
        }
    }

    fn busy(share: f64) -> Load {
        Load {
            busy: share,
            waiting: 0.0,
        }
    }

    #[test]
    fn a_saturated_node_keeps_what_the_budget_pays_for_in_powers_of_two() {
        // 130 millicores at full capture, 50 allowed: 24.6 of 64 slots, so 16.
        assert_eq!(decide(64, waiting(0.10), 0.130, BUDGET), 16);
        // Already shed to 16 and still over: 16 × 0.05 / 0.07 = 11.4, so 8.
        assert_eq!(decide(16, busy(0.97), 0.070, BUDGET), 8);
        // Far over: one slot at least, never none.
        assert_eq!(decide(64, busy(1.0), 50.0, BUDGET), 1);
        assert_eq!(decide(1, waiting(1.0), 50.0, BUDGET), 1);
    }

    #[test]
    fn a_saturated_node_with_capture_in_budget_changes_nothing() {
        assert_eq!(decide(64, busy(1.0), 0.049, BUDGET), 64);
        assert_eq!(decide(8, waiting(0.2), 0.01, BUDGET), 8);
    }

    #[test]
    fn a_node_with_room_gets_the_connections_back_a_window_at_a_time() {
        assert_eq!(decide(8, busy(0.5), 0.01, BUDGET), 16);
        assert_eq!(decide(32, busy(0.84), 0.01, BUDGET), 64);
        assert_eq!(decide(64, busy(0.1), 0.5, BUDGET), 64);
        // Between room and saturation, a shed share holds, however much capture costs.
        assert_eq!(decide(8, busy(0.90), 1.0, BUDGET), 8);
        assert_eq!(decide(8, waiting(0.02), 1.0, BUDGET), 8);
        assert_eq!(decide(64, busy(0.94), 1.0, BUDGET), 64);
    }

    #[test]
    fn the_connections_of_one_process_spread_evenly_over_the_slots() {
        use sonde_common::conn::shed_slot;
        // 64 connections per slot on average: fds in sequence, generations as open times in ns.
        let mut per_slot = [0u32; SHED_SLOTS as usize];
        for fd in 0..4096u32 {
            let generation = 1_000_000_000 + u64::from(fd) * 37_911;
            per_slot[shed_slot(4242, fd % 512, generation) as usize] += 1;
        }
        let (least, most) = (per_slot.iter().min(), per_slot.iter().max());
        assert!(least >= Some(&32) && most <= Some(&96), "{per_slot:?}");
        // One connection keeps its slot, and the same fd reused is another connection.
        assert_eq!(shed_slot(1, 5, 77), shed_slot(1, 5, 77));
        let slots: std::collections::HashSet<u32> = (0..64u64)
            .map(|g| shed_slot(1, 5, 1_000 + g * 1_000_003))
            .collect();
        assert!(slots.len() > 32, "{slots:?}");
    }

    #[test]
    fn cpu_pressure_is_the_some_line_s_total() {
        let text = "some avg10=1.50 avg60=0.57 avg300=2.53 total=9270658726\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_cpu_wait(text), Some(9_270_658_726));
        assert_eq!(parse_cpu_wait("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_cpu_wait("some avg10=0.00\n"), None);
    }

    #[test]
    fn proc_stat_busy_time_leaves_out_idle_and_iowait_and_counts_guests_once() {
        let line = "cpu  100 5 50 800 20 3 2 10 40 0";
        assert_eq!(parse_node_jiffies(line), Some((170, 990)));
        assert_eq!(parse_node_jiffies("cpu0 1 2 3 4 5 6 7 8 9 10"), None);
        assert_eq!(parse_node_jiffies("cpu  1 2 3"), None);
        let (busy, total) = node_jiffies().expect("/proc/stat of this machine");
        assert!(busy <= total && total > 0, "{busy} of {total}");
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        // "0-1", "0-3,8-11": ranges of online CPUs.
        let expected: u32 = online
            .trim()
            .split(',')
            .map(|range| match range.split_once('-') {
                Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
                None => 1,
            })
            .sum();
        assert_eq!(node_cpus(), Some(expected));
    }

    #[test]
    fn this_thread_s_cpu_time_moves_while_it_works() {
        let before = thread_cpu().expect("CLOCK_THREAD_CPUTIME_ID");
        let start = Instant::now();
        let mut x = 0u64;
        // Until 5 ms of CPU went by (however long a busy machine takes to give them).
        while thread_cpu().is_some_and(|now| now < before + Duration::from_millis(5)) {
            x = std::hint::black_box(x.wrapping_add(1));
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the thread's CPU time stands still"
            );
        }
        assert!(x > 0);
    }
}
