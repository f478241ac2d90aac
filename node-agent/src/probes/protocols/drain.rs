//! The drain thread: empties the capture ring buffer into the [`Tracker`] on an OS thread of its
//! own (a current-thread tokio runtime), at a CPU priority of its own.
//!
//! Why a thread of its own: its scheduling policy. By default ([`Priority::Idle`], `SCHED_IDLE`) it
//! runs on the CPU time the workloads leave, and a workload thread that wakes up preempts it at
//! once. When the node's CPUs are saturated the agent falls behind, the ring fills, and the kernel
//! side stops copying the syscalls that no longer fit (counted in
//! `sonde_events_dropped_total{reason="ring_full"}`; their stream positions still advance, so the
//! parsers see the gaps): an overloaded service pays little more than the bare hooks instead of
//! losing a share of its CPU to the agent. With CPU to spare, the policy changes nothing. In a
//! cluster the agent pod's CPU request (its cgroup weight) sets its share against other pods; the
//! policy orders the drain thread within the agent. (Nice 19 was tried first: a nice-19 thread still
//! keeps the CPU for its slice when a workload thread wakes, which cost nginx under wrk up to 10
//! points of throughput.)
//!
//! A current-thread runtime also makes the idle wake-ups (the drain timer, the once-a-second tick)
//! one `epoll_wait` each on this thread, instead of a trip through the agent's shared runtime.
use std::fmt;
use std::io;
use std::str::FromStr;
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, error, warn};

use super::tracker::Tracker;

/// CPU priority of the drain thread (agent flag `--capture-priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_IDLE`: the workloads come first; what the agent cannot keep up with is dropped,
    /// counted.
    #[default]
    Idle,
    /// The workloads' own (`SCHED_OTHER`, nice 0): complete records, slower services under
    /// overload.
    Normal,
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Priority, String> {
        match s {
            "idle" => Ok(Priority::Idle),
            "normal" => Ok(Priority::Normal),
            other => Err(format!(
                "unknown capture priority {other:?}: use idle (the default: workloads first) or normal"
            )),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::Idle => "idle",
            Priority::Normal => "normal",
        })
    }
}

/// Ring-buffer records handled before the rows they made are appended.
const BATCH: usize = 4096;
/// How often the ring buffer is drained without a wake-up from the kernel (which comes once 256 KiB
/// wait): the latest a row appears under traffic.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// The drain timer doubles while drains find nothing, up to this: an idle agent wakes twice a
/// second (this and the tick) instead of eleven times. The first row after a quiet spell may take
/// this long to appear. (Each wake-up costs ~0.1 ms of CPU on this project's VMs.)
const DRAIN_IDLE_EVERY: Duration = Duration::from_secs(1);
/// The thread's name, as `ps -L` and `/proc/<pid>/task/*/comm` show it.
pub const THREAD_NAME: &str = "sonde-capture";

/// The running drain thread.
pub struct DrainThread {
    cancel: CancellationToken,
    thread: JoinHandle<()>,
}

impl DrainThread {
    /// Starts draining `ring` into `tracker` on a new thread of `priority`.
    pub fn spawn(
        tracker: Tracker,
        ring: RingBuf<MapData>,
        priority: Priority,
    ) -> io::Result<DrainThread> {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let span = Span::current();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let _entered = span.enter();
                if let Err(e) = set_own_priority(priority) {
                    warn!(%priority, "cannot set the capture thread's priority: {e}");
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(event_loop(tracker, ring, token).in_current_span()),
                    Err(e) => error!(
                        "cannot start the capture thread's runtime: {e}; protocol tracing produces nothing"
                    ),
                }
            })?;
        Ok(DrainThread { cancel, thread })
    }

    /// Stops the thread once it has finished the batch at hand.
    pub async fn stop(self) {
        self.cancel.cancel();
        let thread = self.thread;
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
            error!("the capture thread panicked");
        }
    }
}

/// Gives the calling thread `priority` (Linux: pid 0 is the calling thread alone). Moving to
/// `SCHED_IDLE` needs no privilege.
fn set_own_priority(priority: Priority) -> io::Result<()> {
    if priority == Priority::Normal {
        return Ok(());
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Handles up to [`BATCH`] records, then appends the rows they made; returns how many it handled.
fn drain(rb: &mut RingBuf<MapData>, tracker: &mut Tracker) -> usize {
    let mut handled = 0;
    while handled < BATCH {
        let Some(item) = rb.next() else { break };
        tracker.handle(&item);
        handled += 1;
    }
    tracker.flush();
    handled
}

/// The drain timer's next wait after a drain that handled `handled` records.
fn next_wait(wait: Duration, handled: usize) -> Duration {
    if handled > 0 {
        DRAIN_EVERY
    } else {
        (wait * 2).min(DRAIN_IDLE_EVERY)
    }
}

async fn event_loop(mut tracker: Tracker, ring: RingBuf<MapData>, cancel: CancellationToken) {
    // SAFETY: the AsyncFd owns the RingBuf, which owns the map's fd: the fd stays open and is not
    // reused while it is registered, and is deregistered before the RingBuf is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(e) => {
            error!("cannot poll the capture ring buffer: {e}; protocol tracing produces nothing");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The kernel side wakes us only when a lot is waiting; below that, this timer drains the ring.
    let mut wait = DRAIN_EVERY;
    let drain_timer = tokio::time::sleep(wait);
    tokio::pin!(drain_timer);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => tracker.tick(),
            () = &mut drain_timer => {
                wait = next_wait(wait, drain(ring.get_mut(), &mut tracker));
                drain_timer.as_mut().reset(Instant::now() + wait);
            }
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                if drain(guard.get_inner_mut(), &mut tracker) < BATCH {
                    guard.clear_ready();
                }
                if wait > DRAIN_EVERY {
                    wait = DRAIN_EVERY;
                    drain_timer.as_mut().reset(Instant::now() + wait);
                }
            }
        }
    }
    // Whatever is left is finished by the next start; tables keep the rows written so far.
    tracker.tick();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_timer_backs_off_to_a_second_while_idle_and_returns_at_once_under_traffic() {
        let mut wait = DRAIN_EVERY;
        let mut waits = Vec::new();
        for _ in 0..6 {
            wait = next_wait(wait, 0);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(next_wait(wait, 1), DRAIN_EVERY);
    }

    #[test]
    fn priorities_parse_from_their_names_and_a_wrong_one_names_the_choices() {
        assert_eq!("idle".parse(), Ok(Priority::Idle));
        assert_eq!("normal".parse(), Ok(Priority::Normal));
        assert_eq!(Priority::default(), Priority::Idle);
        let err = "low".parse::<Priority>().unwrap_err();
        assert!(
            err.contains("\"low\"") && err.contains("idle") && err.contains("normal"),
            "{err}"
        );
    }
}
