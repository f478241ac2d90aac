//! Where a script's output goes: printf lines → table rows (rate-limited), printed maps →
//! metric snapshots, `attached_probes` → the probe's status.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use nix::time::{ClockId, clock_gettime};
use sonde_api::ProbeState;

use super::format::Formats;
use super::metrics::{self, BpftraceMetrics, DropLabels};
use super::output::{OutputEvent, parse_line};
use crate::probes::RuntimeStatus;
use crate::tables::{Row, TableWriter};
use crate::targets::TargetProcess;

/// Rows per second a script may store; the rest are counted as dropped.
pub const ROWS_PER_SECOND: f64 = 10_000.0;

/// Kubernetes identity of a target process, for the row's target columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// pid → identity of the probe's target processes; replaced when targets change.
pub type Identities = Arc<Mutex<HashMap<i64, Identity>>>;

pub fn identities(targets: &[TargetProcess]) -> HashMap<i64, Identity> {
    targets
        .iter()
        .map(|t| {
            let identity = Identity {
                namespace: t.namespace.clone(),
                pod: t.pod.clone(),
                container: t.container.clone(),
            };
            (i64::from(t.pid), identity)
        })
        .collect()
}

/// Everything one script's output is written to.
pub struct Sink {
    pub script: String,
    pub formats: Formats,
    pub map_arity: BTreeMap<String, usize>,
    pub writer: Option<TableWriter>,
    pub identities: Identities,
    pub metrics: BpftraceMetrics,
    pub status: Arc<Mutex<RuntimeStatus>>,
    pub targets_attached: u32,
    pub limiter: TokenBucket,
    /// REALTIME − MONOTONIC, refreshed at every start (bpftrace 0.17's `nsecs` is CLOCK_MONOTONIC).
    pub wall_offset_ns: i64,
    pub attached: bool,
}

impl Sink {
    pub fn handle_line(&mut self, line: &str) {
        match parse_line(line) {
            OutputEvent::AttachedProbes(_) => {
                self.attached = true;
                let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
                status.state = ProbeState::Attached;
                status.message = String::new();
                status.targets_attached = self.targets_attached;
            }
            OutputEvent::Printf(text) => self.printf(&text),
            OutputEvent::Map { name, entries } => {
                let dropped = self.metrics.maps.update(
                    &self.script,
                    &name,
                    self.map_arity.get(&name).copied(),
                    &entries,
                );
                if dropped > 0 {
                    self.metrics
                        .series_dropped
                        .get_or_create(&self.metrics.script(&self.script))
                        .inc_by(dropped as u64);
                }
            }
            OutputEvent::LostEvents(lost) => {
                self.drop_rows(metrics::LOST_EVENTS, lost);
            }
            OutputEvent::Ignored => {}
            OutputEvent::Unrecognized => self.unparsed(),
        }
    }

    pub fn unparsed(&self) {
        self.metrics
            .unparsed_lines
            .get_or_create(&self.metrics.script(&self.script))
            .inc();
    }

    fn drop_rows(&self, reason: &'static str, count: u64) {
        let labels = DropLabels {
            script: self.script.clone(),
            reason,
        };
        self.metrics
            .rows_dropped
            .get_or_create(&labels)
            .inc_by(count);
    }

    fn printf(&mut self, text: &str) {
        let Some(parsed) = self.formats.parse_line(text) else {
            self.unparsed();
            return;
        };
        let Some(writer) = &self.writer else {
            self.drop_rows(metrics::NO_TABLE, 1);
            return;
        };
        if !self.limiter.take(Instant::now()) {
            self.drop_rows(metrics::RATE_LIMIT, 1);
            return;
        }
        let time_ns = match parsed.monotonic_ns {
            Some(monotonic) => monotonic.saturating_add(self.wall_offset_ns),
            None => wall_now_ns(),
        };
        let pid = parsed.pid.unwrap_or(0);
        let identity = parsed
            .pid
            .and_then(|pid| {
                self.identities
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&pid)
                    .cloned()
            })
            .unwrap_or_default();
        writer.append(Row {
            time_ns,
            namespace: identity.namespace,
            pod: identity.pod,
            container: identity.container,
            pid,
            values: parsed.values,
        });
    }
}

fn clock_ns(clock: ClockId) -> i64 {
    clock_gettime(clock).map_or(0, |t| {
        t.tv_sec()
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec())
    })
}

pub fn wall_now_ns() -> i64 {
    clock_ns(ClockId::CLOCK_REALTIME)
}

/// Offset that turns a CLOCK_MONOTONIC timestamp into nanoseconds since the epoch.
pub fn monotonic_to_wall_offset_ns() -> i64 {
    clock_ns(ClockId::CLOCK_REALTIME) - clock_ns(ClockId::CLOCK_MONOTONIC)
}

/// Token bucket with a one-second burst. Hand-written: twelve lines do not warrant a crate.
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_token_bucket_allows_its_rate_then_refills_with_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3.0, start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(400)));
        assert!(!bucket.take(start + Duration::from_millis(400)));
    }

    #[test]
    fn monotonic_offset_turns_a_monotonic_reading_into_wall_time() {
        let offset = monotonic_to_wall_offset_ns();
        let wall = clock_ns(ClockId::CLOCK_MONOTONIC) + offset;
        assert!((wall - wall_now_ns()).abs() < 1_000_000_000);
    }
}
