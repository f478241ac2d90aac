//! The drain thread: empties the capture ring buffer into the [`Tracker`] on an OS thread of its
//! own (a current-thread tokio runtime), at a CPU priority of its own.
//!
//! Why a thread of its own: its nice value. At the default ([`DEFAULT_NICE`], 19) the traced
//! workloads come first when the node's CPUs are saturated: the agent falls behind, the ring
//! fills, and the kernel side stops copying the syscalls that no longer fit (counted in
//! `sonde_events_dropped_total{reason="ring_full"}`; their stream positions still advance, so the
//! parsers see the gaps). An overloaded service then pays little more than the bare hooks instead
//! of losing a share of its CPU to the agent. With CPU to spare, the nice value changes nothing.
//! In a cluster the agent pod's CPU request (its cgroup weight) sets its share against other
//! pods; the nice value orders the drain thread within the agent.
//!
//! A current-thread runtime also makes the idle wake-ups (the drain timer, the once-a-second tick)
//! one `epoll_wait` each on this thread, instead of a trip through the agent's shared runtime.
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, error, warn};

use super::tracker::Tracker;

/// Default nice value of the drain thread (agent flag `--capture-nice`).
pub const DEFAULT_NICE: i32 = 19;
/// Ring-buffer records handled before the rows they made are appended.
const BATCH: usize = 4096;
/// How often the ring buffer is drained without a wake-up from the kernel (which comes once 256 KiB
/// wait): the latest a row appears under light traffic. Every timer wake-up costs the idle agent;
/// at 20 ms they were most of its idle CPU.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// The thread's name, as `ps -L` and `/proc/<pid>/task/*/comm` show it.
pub const THREAD_NAME: &str = "sonde-capture";

/// The running drain thread.
pub struct DrainThread {
    cancel: CancellationToken,
    thread: JoinHandle<()>,
}

impl DrainThread {
    /// Starts draining `ring` into `tracker` on a new thread at nice value `nice`.
    pub fn spawn(tracker: Tracker, ring: RingBuf<MapData>, nice: i32) -> io::Result<DrainThread> {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let span = Span::current();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let _entered = span.enter();
                if let Err(e) = set_own_nice(nice) {
                    warn!(nice, "cannot set the capture thread's nice value: {e}");
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

/// Sets the calling thread's nice value (Linux: `PRIO_PROCESS` with a thread id is that thread
/// alone). Raising it needs no privilege; lowering it below the current value needs CAP_SYS_NICE.
fn set_own_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain syscall on this thread's id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Handles up to [`BATCH`] records, then appends the rows they made; true when the ring is empty.
fn drain(rb: &mut RingBuf<MapData>, tracker: &mut Tracker) -> bool {
    let mut empty = false;
    for _ in 0..BATCH {
        let Some(item) = rb.next() else {
            empty = true;
            break;
        };
        tracker.handle(&item);
    }
    tracker.flush();
    empty
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
    let mut drain_timer = tokio::time::interval(DRAIN_EVERY);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => tracker.tick(),
            _ = drain_timer.tick() => {
                drain(ring.get_mut(), &mut tracker);
            }
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                if drain(guard.get_inner_mut(), &mut tracker) {
                    guard.clear_ready();
                }
            }
        }
    }
    // Whatever is left is finished by the next start; tables keep the rows written so far.
    tracker.tick();
}
