//! Metrics: the runtime's own counters, and the counters and histograms users derive from captured
//! columns (`spec.metrics`), exported as `sonde_dynamic_log_<name>` with a `probe` label plus the
//! chosen columns as labels. Each user metric keeps at most [`MAX_SERIES`] label sets; values past
//! that are counted in `sonde_dynamic_log_series_dropped_total`. A stopped probe's user metrics go
//! at once (its metric names are free for others), its counters [`RETIRE_AFTER`] later.
//!
//! [`RETIRE_AFTER`]: crate::probes::retire::RETIRE_AFTER
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sonde_api::{MetricSpec, MetricType};

use crate::probes::retire::Retirements;
use crate::tables::Value;

/// Label sets kept per user metric.
pub const MAX_SERIES: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `ring_full`, `malformed`, `no_plan` or `unreturned`.
    pub reason: &'static str,
}

/// The runtime's own metrics; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct DynamicLogMetrics {
    pub rows: Family<ProbeLabels, Counter>,
    /// Calls whose entry was seen but whose return never came (panics, exits), evicted.
    pub unreturned: Family<ProbeLabels, Counter>,
    pub dropped: Family<DropLabels, Counter>,
    pub series_dropped: Family<ProbeLabels, Counter>,
    pub user: Arc<UserMetrics>,
    retiring: Retirements,
}

impl DynamicLogMetrics {
    pub fn register(registry: &mut Registry) -> DynamicLogMetrics {
        let m = DynamicLogMetrics::default();
        registry.register(
            "sonde_dynamic_log_rows",
            "Calls captured by a DynamicLog and written to its table",
            m.rows.clone(),
        );
        registry.register(
            "sonde_dynamic_log_unreturned_calls",
            "Calls whose entry was captured but whose return never came (panic, exit), evicted",
            m.unreturned.clone(),
        );
        registry.register(
            "sonde_dynamic_log_dropped_events",
            "Kernel events of DynamicLog probes that were lost or unusable, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "sonde_dynamic_log_series_dropped",
            "Observations of user metrics not exported because a metric reached its label-set cap",
            m.series_dropped.clone(),
        );
        registry.register_collector(Box::new(UserCollector(m.user.clone())));
        m
    }

    /// Probe `probe` runs (again) on this node: its counters stay.
    pub fn probe_started(&self, probe: &str) {
        self.retiring.started(probe);
    }

    /// Probe `probe` no longer runs on this node: its user metrics go now, its counters
    /// [`crate::probes::retire::RETIRE_AFTER`] from now unless it starts again.
    pub fn probe_stopped(&self, probe: &str) {
        self.user.remove(probe);
        let (metrics, name) = (self.clone(), probe.to_owned());
        self.retiring.stopped(probe, move || {
            let labels = ProbeLabels { probe: name };
            metrics.rows.remove(&labels);
            metrics.unreturned.remove(&labels);
            metrics.series_dropped.remove(&labels);
        });
    }
}

type Labels = Vec<(String, String)>;

/// Label sets a probe created, per metric name.
type SeriesByName = BTreeMap<String, Vec<Labels>>;

/// One exported metric name; probes defining the same name share it (their series differ by `probe`).
#[derive(Debug)]
enum Shared {
    Counter(Family<Labels, Counter>),
    Histogram(Family<Labels, Histogram>),
}

fn latency_histogram() -> Histogram {
    // 1 µs … ~17 s.
    Histogram::new(exponential_buckets(1e-6, 4.0, 13))
}

fn value_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 16))
}

#[derive(Debug, Default)]
struct State {
    families: BTreeMap<String, Shared>,
    /// Each probe's metric specs and the label sets it created, per metric name.
    probes: BTreeMap<String, (Vec<MetricSpec>, SeriesByName)>,
}

/// Every probe's user metrics, encoded at scrape time.
#[derive(Debug, Default)]
pub struct UserMetrics {
    state: Mutex<State>,
}

/// Metric-name-safe form: `[a-z0-9_]`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn label_value(v: Option<Value>) -> String {
    match v {
        Some(Value::String(s)) => s,
        Some(Value::Int64(v)) => v.to_string(),
        Some(Value::UInt64(v)) => v.to_string(),
        Some(Value::Boolean(v)) => v.to_string(),
        Some(Value::Float64(v)) => v.to_string(),
        Some(Value::Time(v)) => v.to_string(),
        Some(Value::Null) | None => String::new(),
    }
}

impl UserMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (Re)defines the metrics of `probe`; a name another probe uses with another type is refused
    /// with a message.
    pub fn define(&self, probe: &str, specs: &[MetricSpec]) -> Result<(), String> {
        self.remove(probe);
        let mut state = self.lock();
        for spec in specs {
            let name = sanitize(&spec.name);
            match (state.families.get(&name), spec.type_) {
                (None, MetricType::Counter) => {
                    state
                        .families
                        .insert(name, Shared::Counter(Family::default()));
                }
                (None, MetricType::Histogram) => {
                    let ctor = if spec.value.as_deref().is_none_or(|v| v == "latency") {
                        latency_histogram as fn() -> Histogram
                    } else {
                        value_histogram as fn() -> Histogram
                    };
                    state
                        .families
                        .insert(name, Shared::Histogram(Family::new_with_constructor(ctor)));
                }
                (Some(Shared::Counter(_)), MetricType::Counter)
                | (Some(Shared::Histogram(_)), MetricType::Histogram) => {}
                (Some(_), _) => {
                    return Err(format!(
                        "metric {} is already defined with another type by another DynamicLog; choose another name",
                        spec.name
                    ));
                }
            }
        }
        state
            .probes
            .insert(probe.to_owned(), (specs.to_vec(), BTreeMap::new()));
        Ok(())
    }

    /// Removes the probe's series (and the metric names nobody uses any more).
    pub fn remove(&self, probe: &str) {
        let mut state = self.lock();
        let Some((_, series)) = state.probes.remove(probe) else {
            return;
        };
        for (name, label_sets) in series {
            match state.families.get(&name) {
                Some(Shared::Counter(f)) => label_sets.iter().for_each(|l| {
                    f.remove(l);
                }),
                Some(Shared::Histogram(f)) => label_sets.iter().for_each(|l| {
                    f.remove(l);
                }),
                None => {}
            }
        }
        let used: Vec<String> = state
            .probes
            .values()
            .flat_map(|(specs, _)| specs.iter().map(|s| sanitize(&s.name)))
            .collect();
        state.families.retain(|name, _| used.contains(name));
    }

    /// Observes one row; `column` gives a captured column's value by name. Returns how many
    /// observations were dropped by the series cap.
    pub fn observe(&self, probe: &str, column: impl Fn(&str) -> Option<Value>) -> u64 {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some((specs, series)) = state.probes.get_mut(probe) else {
            return 0;
        };
        let mut dropped = 0;
        for spec in specs.iter() {
            let name = sanitize(&spec.name);
            let mut labels: Labels = vec![("probe".into(), probe.to_owned())];
            for l in &spec.labels {
                labels.push((sanitize(l), label_value(column(l))));
            }
            let known = series.entry(name.clone()).or_default();
            if !known.contains(&labels) {
                if known.len() >= MAX_SERIES {
                    dropped += 1;
                    continue;
                }
                known.push(labels.clone());
            }
            match state.families.get(&name) {
                Some(Shared::Counter(f)) => {
                    f.get_or_create(&labels).inc();
                }
                Some(Shared::Histogram(f)) => {
                    let col = spec.value.as_deref().unwrap_or("latency");
                    let value = match column(col) {
                        Some(Value::Int64(v)) if col == "latency" => v as f64 / 1e9,
                        Some(Value::Int64(v)) => v as f64,
                        Some(Value::UInt64(v)) => v as f64,
                        Some(Value::Float64(v)) => v,
                        _ => continue,
                    };
                    f.get_or_create(&labels).observe(value);
                }
                None => {}
            }
        }
        dropped
    }
}

/// Encodes [`UserMetrics`] at scrape time.
#[derive(Debug)]
struct UserCollector(Arc<UserMetrics>);

impl Collector for UserCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.lock();
        for (name, family) in &state.families {
            let name = format!("sonde_dynamic_log_{name}");
            match family {
                Shared::Counter(f) => f.encode(encoder.encode_descriptor(
                    &name,
                    "Calls counted by a DynamicLog metric",
                    None,
                    f.metric_type(),
                )?)?,
                Shared::Histogram(f) => f.encode(encoder.encode_descriptor(
                    &name,
                    "Values observed by a DynamicLog metric (latency in seconds)",
                    None,
                    f.metric_type(),
                )?)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::telemetry::scrape;
    use sonde_api::{MetricSpec, MetricType};

    use super::*;
    use crate::probes::retire::RETIRE_AFTER;

    #[tokio::test(start_paused = true)]
    async fn a_stopped_probes_user_metrics_go_at_once_and_its_counters_after_a_last_scrape() {
        let mut registry = Registry::default();
        let metrics = DynamicLogMetrics::register(&mut registry);
        let probe = "DynamicLog/shop/tick";
        let latency = MetricSpec {
            name: "tick_latency".into(),
            type_: MetricType::Histogram,
            labels: Vec::new(),
            value: None,
        };
        metrics.user.define(probe, &[latency]).unwrap();
        metrics.probe_started(probe);
        metrics.user.observe(probe, |_| Some(Value::Int64(1_000)));
        let labels = ProbeLabels {
            probe: probe.into(),
        };
        metrics.rows.get_or_create(&labels).inc();
        metrics.unreturned.get_or_create(&labels).inc();
        metrics.series_dropped.get_or_create(&labels).inc();
        let ours = |text: &str| text.matches(r#"probe="DynamicLog/shop/tick""#).count();
        assert!(scrape(&registry).contains("sonde_dynamic_log_tick_latency_count"));

        metrics.probe_stopped(probe);
        let text = scrape(&registry);
        assert!(!text.contains("sonde_dynamic_log_tick_latency"), "{text}");
        tokio::time::sleep(RETIRE_AFTER - Duration::from_secs(1)).await;
        assert_eq!(ours(&scrape(&registry)), 3, "counters still scraped");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = scrape(&registry);
        assert_eq!(ours(&text), 0, "{text}");
    }
}
