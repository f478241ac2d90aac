//! The drain thread: empties the capture ring buffer into the [`Tracker`] on an OS thread of its
//! own, running a current-thread tokio runtime.
//!
//! Why a thread of its own: a drain of a full batch takes milliseconds of parsing, which on the
//! agent's shared runtime held one of its two workers away from the HTTP API, the probe manager
//! and the Kubernetes watches; and the idle wake-ups (the drain timer, the once-a-second tick) are
//! one `epoll_wait` each on this thread instead of a trip through the shared runtime. The drain
//! timer backs off while the ring stays empty, so an idle agent wakes twice a second.
//!
//! The thread runs at the workloads' priority. A `SCHED_IDLE` (or nice 19) thread that yields to
//! them when the node is saturated was built and measured: with nginx under wrk on this project's
//! 2-vCPU VMs it cost nginx *more* throughput than a normal thread (6 points, median of 4 rounds)
//! and lost up to 15% of the requests to a full ring (BENCHMARKS.md), so it was not kept. On a
//! saturated node the agent does less instead: [`super::governor`] sheds connections.
use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Span, error};

use super::tracker::Tracker;

/// Ring-buffer records handled before the rows they made are appended.
const BATCH: usize = 4096;
/// How often the ring buffer is drained without a wake-up from the kernel (which comes once 2 MiB
/// wait): the latest a row appears under traffic. Each wake-up starts on cold caches (the
/// workloads ran meanwhile), so fewer, larger drains cost less per record: at 10,000 HTTP
/// requests/s, draining every 250 ms instead of 100 ms took the capture thread's CPU from
/// ~1.2 to ~1.0 µs per request (BENCHMARKS.md).
const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// The drain timer doubles while drains find nothing, up to this: an idle agent wakes twice a
/// second (this and the tick) instead of five times. The first row after a quiet spell may take
/// this long to appear. (Each wake-up costs ~0.1 ms of CPU on this project's VMs.)
const DRAIN_IDLE_EVERY: Duration = Duration::from_secs(1);
/// After a drain that saw an fd to look at through its process (a client connection whose local
/// address the kernel does not report, an fd not seen opened), the next drain comes this soon: the
/// kernel wakes the agent for one at most this often (`OPEN_WAKE_GAP_NS` on the kernel side), and
/// a short-lived process's fd must be looked at before it closes.
const LOOK_FOLLOW_UP: Duration = Duration::from_millis(10);
/// The thread's name, as `ps -L` and `/proc/<pid>/task/*/comm` show it.
pub const THREAD_NAME: &str = "sonde-capture";

/// The running drain thread.
pub struct DrainThread {
    cancel: CancellationToken,
    thread: JoinHandle<()>,
}

impl DrainThread {
    /// Starts draining `ring` into `tracker` on a new thread.
    pub fn spawn(tracker: Tracker, ring: RingBuf<MapData>) -> io::Result<DrainThread> {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let span = Span::current();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                // The whole thread runs inside the span: the runtime polls on this thread alone.
                let _entered = span.enter();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(event_loop(tracker, ring, token)),
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

/// Handles up to [`BATCH`] records, then appends the rows they made; returns how many it handled.
fn drain(rb: &mut RingBuf<MapData>, tracker: &mut Tracker) -> usize {
    let mut handled = 0;
    while handled < BATCH {
        let Some(item) = rb.next() else { break };
        tracker.handle(&item);
        handled += 1;
    }
    tracker.flush();
    tracker.govern();
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

/// The drain timer's delay after a drain that handled `handled` records, `wait` being its
/// interval: a full batch means more records wait, drained on the loop's next turn (after the
/// other branches had their chance) rather than an interval later; after an fd to look at,
/// [`LOOK_FOLLOW_UP`].
fn next_delay(wait: Duration, handled: usize, look_due: bool) -> Duration {
    if handled >= BATCH {
        Duration::ZERO
    } else if look_due {
        wait.min(LOOK_FOLLOW_UP)
    } else {
        wait
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
            _ = tick.tick() => {
                tracker.tick();
                tracker.govern();
            }
            () = &mut drain_timer => {
                let handled = drain(ring.get_mut(), &mut tracker);
                wait = next_wait(wait, handled);
                let delay = next_delay(wait, handled, tracker.take_look_due());
                drain_timer.as_mut().reset(Instant::now() + delay);
            }
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                let handled = drain(guard.get_inner_mut(), &mut tracker);
                if handled < BATCH {
                    guard.clear_ready();
                }
                let look_due = tracker.take_look_due();
                if wait > DRAIN_EVERY || look_due {
                    wait = wait.min(DRAIN_EVERY);
                    let delay = next_delay(wait, handled, look_due);
                    drain_timer.as_mut().reset(Instant::now() + delay);
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
        assert_eq!(waits, [500, 1000, 1000, 1000, 1000, 1000]);
        assert_eq!(next_wait(wait, 1), DRAIN_EVERY);
    }

    #[test]
    fn a_full_batch_is_followed_at_once_by_the_next() {
        assert_eq!(next_delay(DRAIN_EVERY, BATCH, false), Duration::ZERO);
        assert_eq!(next_delay(DRAIN_EVERY, BATCH - 1, false), DRAIN_EVERY);
        assert_eq!(next_delay(DRAIN_IDLE_EVERY, 0, false), DRAIN_IDLE_EVERY);
    }

    #[test]
    fn a_client_connection_that_opened_brings_the_next_drain_forward() {
        assert_eq!(next_delay(DRAIN_EVERY, 1, true), LOOK_FOLLOW_UP);
        assert_eq!(next_delay(DRAIN_IDLE_EVERY, 1, true), LOOK_FOLLOW_UP);
        assert_eq!(next_delay(DRAIN_EVERY, BATCH, true), Duration::ZERO);
    }
}
