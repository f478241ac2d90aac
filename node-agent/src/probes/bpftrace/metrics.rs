//! The runtime's own counters and the maps scripts print, exported as Prometheus series.
//!
//! Maps become gauges `sonde_bpftrace_<map>{script, key | key0, key1…}` holding the latest printed
//! value. `stats()` maps add a `stat` label (`count`, `average`, `total`). `hist()`/`lhist()` maps
//! become cumulative gauges `sonde_bpftrace_<map>_bucket{…, le}` (Prometheus histogram buckets,
//! upper bounds inclusive, always ending with `+Inf`, which bpftrace prints only for an open top
//! bucket). String-valued maps are skipped.
//! Each map keeps at most [`MAX_SERIES_PER_MAP`] series; the rest are counted as dropped.
//! A script's map series go when it stops; its counters [`RETIRE_AFTER`] later.
//!
//! [`RETIRE_AFTER`]: crate::probes::retire::RETIRE_AFTER
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::output::{MapEntry, MapValue};
use crate::probes::retire::Retirements;

pub const MAX_SERIES_PER_MAP: usize = 1000;

/// Map names that would collide with the runtime's own families.
const RESERVED_MAP_NAMES: [&str; 4] = [
    "restarts",
    "unparsed_lines",
    "rows_dropped",
    "series_dropped",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptLabels {
    pub script: String,
}

/// Why rows of a script were not stored: over its rate limit, lost by bpftrace, or no table.
pub const RATE_LIMIT: &str = "rate_limit";
pub const LOST_EVENTS: &str = "lost_events";
pub const NO_TABLE: &str = "no_table";
pub const ROW_DROP_REASONS: [&str; 3] = [RATE_LIMIT, LOST_EVENTS, NO_TABLE];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub script: String,
    /// One of [`ROW_DROP_REASONS`].
    pub reason: &'static str,
}

/// Every bpftrace metric; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct BpftraceMetrics {
    pub restarts: Family<ScriptLabels, Counter>,
    pub unparsed_lines: Family<ScriptLabels, Counter>,
    pub rows_dropped: Family<DropLabels, Counter>,
    pub series_dropped: Family<ScriptLabels, Counter>,
    pub maps: Arc<MapSnapshots>,
    retiring: Retirements,
}

impl BpftraceMetrics {
    pub fn register(registry: &mut Registry) -> BpftraceMetrics {
        let metrics = BpftraceMetrics::default();
        registry.register(
            "sonde_bpftrace_restarts",
            "Times a bpftrace script was started again after it exited",
            metrics.restarts.clone(),
        );
        registry.register(
            "sonde_bpftrace_unparsed_lines",
            "printf lines of a script that matched none of its formats",
            metrics.unparsed_lines.clone(),
        );
        registry.register(
            "sonde_bpftrace_rows_dropped",
            "Rows of a script that were not stored, by reason",
            metrics.rows_dropped.clone(),
        );
        registry.register(
            "sonde_bpftrace_series_dropped",
            "Map entries not exported because a map exceeded its series cap",
            metrics.series_dropped.clone(),
        );
        registry.register_collector(Box::new(metrics.maps.clone()));
        metrics
    }

    pub fn script(&self, script: &str) -> ScriptLabels {
        ScriptLabels {
            script: script.to_string(),
        }
    }

    /// `script` runs (again) on this node: its counters stay.
    pub fn script_started(&self, script: &str) {
        self.retiring.started(script);
    }

    /// `script` no longer runs on this node: its counters go
    /// [`crate::probes::retire::RETIRE_AFTER`] from now, unless it starts again.
    pub fn script_stopped(&self, script: &str) {
        let (metrics, name) = (self.clone(), script.to_owned());
        self.retiring
            .stopped(script, move || metrics.remove_counters(&name));
    }

    fn remove_counters(&self, script: &str) {
        let labels = self.script(script);
        self.restarts.remove(&labels);
        self.unparsed_lines.remove(&labels);
        self.series_dropped.remove(&labels);
        for reason in ROW_DROP_REASONS {
            self.rows_dropped.remove(&DropLabels {
                script: script.to_owned(),
                reason,
            });
        }
    }
}

type Labels = Vec<(String, String)>;

/// One exported family: (labels, value) per series.
#[derive(Clone, Debug, Default)]
struct Series(Vec<(Labels, f64)>);

/// The latest printed maps of every running script, by script then metric name.
#[derive(Debug, Default)]
pub struct MapSnapshots {
    scripts: Mutex<BTreeMap<String, BTreeMap<String, Series>>>,
}

impl MapSnapshots {
    /// Replaces the series of one map of one script; returns how many entries were dropped by the cap.
    pub fn update(
        &self,
        script: &str,
        map: &str,
        key_arity: Option<usize>,
        entries: &[MapEntry],
    ) -> usize {
        let base = format!("sonde_bpftrace_{}", sanitize(map));
        if RESERVED_MAP_NAMES.contains(&sanitize(map).as_str()) {
            return entries.len();
        }
        let mut families: BTreeMap<String, Series> = BTreeMap::new();
        families.entry(base.clone()).or_default();
        let mut dropped = 0;
        for (index, entry) in entries.iter().enumerate() {
            if index >= MAX_SERIES_PER_MAP {
                dropped = entries.len() - MAX_SERIES_PER_MAP;
                break;
            }
            let mut labels: Labels = vec![("script".into(), script.into())];
            if let Some(key) = &entry.key {
                match key_arity {
                    Some(n) if n > 1 => {
                        for (i, part) in key.splitn(n, ',').enumerate() {
                            labels.push((format!("key{i}"), part.to_string()));
                        }
                    }
                    _ => labels.push(("key".into(), key.clone())),
                }
            }
            match &entry.value {
                MapValue::Number(v) => families
                    .entry(base.clone())
                    .or_default()
                    .0
                    .push((labels, *v)),
                MapValue::Stats {
                    count,
                    average,
                    total,
                } => {
                    let series = &mut families.entry(base.clone()).or_default().0;
                    for (stat, v) in [("count", count), ("average", average), ("total", total)] {
                        let mut l = labels.clone();
                        l.push(("stat".into(), stat.into()));
                        series.push((l, *v));
                    }
                }
                MapValue::Histogram(buckets) => {
                    let series = &mut families.entry(format!("{base}_bucket")).or_default().0;
                    let mut cumulative = 0.0;
                    for (le, count) in buckets {
                        cumulative += count;
                        let mut l = labels.clone();
                        l.push((
                            "le".into(),
                            le.map_or_else(|| "+Inf".to_string(), |v| v.to_string()),
                        ));
                        series.push((l, cumulative));
                    }
                    // bpftrace stops at the highest non-empty bucket, which has a bound; a
                    // Prometheus histogram always ends with `+Inf` (histogram_quantile needs it).
                    if buckets.last().is_some_and(|(le, _)| le.is_some()) {
                        let mut l = labels.clone();
                        l.push(("le".into(), "+Inf".into()));
                        series.push((l, cumulative));
                    }
                }
                MapValue::Other => {}
            }
        }
        families.retain(|_, s| !s.0.is_empty());
        let mut scripts = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        let script_maps = scripts.entry(script.to_string()).or_default();
        script_maps.retain(|name, _| name != &base && name != &format!("{base}_bucket"));
        script_maps.extend(families);
        dropped
    }

    /// Forgets every series of a stopped script.
    pub fn remove_script(&self, script: &str) {
        self.scripts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(script);
    }
}

impl Collector for MapSnapshots {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Scripts may print maps of the same name: one family per metric name across scripts.
        let mut by_name: BTreeMap<String, Vec<(Labels, f64)>> = BTreeMap::new();
        {
            let scripts = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
            for maps in scripts.values() {
                for (name, series) in maps {
                    by_name
                        .entry(name.clone())
                        .or_default()
                        .extend(series.0.iter().cloned());
                }
            }
        }
        for (name, series) in &by_name {
            let mut family = encoder.encode_descriptor(
                name,
                "Latest value of a map printed by a BpftraceScript",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (labels, value) in series {
                ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// Metric-name-safe form of a map name: `[a-zA-Z0-9_]`, other characters become `_`.
pub fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::scrape;
    use std::time::Duration;

    #[test]
    fn printed_maps_become_gauges_and_disappear_with_their_script() {
        let mut registry = Registry::default();
        let metrics = BpftraceMetrics::register(&mut registry);
        let entries = vec![MapEntry {
            key: Some("16255,python3".into()),
            value: MapValue::Number(3.0),
        }];
        metrics
            .maps
            .update("BpftraceScript/opens", "mk", Some(2), &entries);
        metrics.maps.update(
            "BpftraceScript/opens",
            "s",
            None,
            &[MapEntry {
                key: None,
                value: MapValue::Number(147.0),
            }],
        );
        metrics.maps.update(
            "BpftraceScript/opens",
            "h",
            None,
            &[MapEntry {
                key: None,
                value: MapValue::Histogram(vec![(Some(7.0), 1.0), (None, 2.0)]),
            }],
        );
        let text = scrape(&registry);
        assert!(
            text.contains(
                r#"sonde_bpftrace_mk{script="BpftraceScript/opens",key0="16255",key1="python3"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"sonde_bpftrace_s{script="BpftraceScript/opens"} 147"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sonde_bpftrace_h_bucket{script="BpftraceScript/opens",le="+Inf"} 3"#),
            "{text}"
        );
        metrics.maps.remove_script("BpftraceScript/opens");
        assert!(!scrape(&registry).contains("sonde_bpftrace_s{"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_scripts_counters_stay_for_a_last_scrape_then_go() {
        let mut registry = Registry::default();
        let metrics = BpftraceMetrics::register(&mut registry);
        for script in ["opens", "other"] {
            metrics.script_started(script);
            metrics
                .restarts
                .get_or_create(&metrics.script(script))
                .inc();
        }
        let opens = metrics.script("opens");
        metrics.unparsed_lines.get_or_create(&opens).inc();
        metrics.series_dropped.get_or_create(&opens).inc();
        for reason in ROW_DROP_REASONS {
            metrics
                .rows_dropped
                .get_or_create(&DropLabels {
                    script: "opens".into(),
                    reason,
                })
                .inc();
        }
        metrics.script_stopped("opens");
        tokio::time::sleep(crate::probes::retire::RETIRE_AFTER - Duration::from_secs(1)).await;
        assert_eq!(scrape(&registry).matches(r#"script="opens""#).count(), 6);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = scrape(&registry);
        assert!(!text.contains(r#"script="opens""#), "{text}");
        assert!(
            text.contains(r#"sonde_bpftrace_restarts_total{script="other"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_hist_printed_up_to_a_bounded_bucket_still_gets_the_inf_bucket_prometheus_needs() {
        // bpftrace prints hist() buckets only up to the highest non-empty one, which has a
        // bound; without `le="+Inf"` histogram_quantile() answers NaN.
        let mut registry = Registry::default();
        let metrics = BpftraceMetrics::register(&mut registry);
        let buckets = vec![(Some(0.0), 1.0), (Some(1.0), 0.0), (Some(8191.0), 2.0)];
        metrics.maps.update(
            "BpftraceScript/lat",
            "lat",
            None,
            &[MapEntry {
                key: None,
                value: MapValue::Histogram(buckets),
            }],
        );
        let text = scrape(&registry);
        for series in [
            r#"sonde_bpftrace_lat_bucket{script="BpftraceScript/lat",le="1"} 1"#,
            r#"sonde_bpftrace_lat_bucket{script="BpftraceScript/lat",le="8191"} 3"#,
            r#"sonde_bpftrace_lat_bucket{script="BpftraceScript/lat",le="+Inf"} 3"#,
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }
    }

    #[test]
    fn series_past_the_cap_are_dropped_and_reported() {
        let maps = MapSnapshots::default();
        let entries: Vec<MapEntry> = (0..MAX_SERIES_PER_MAP + 5)
            .map(|i| MapEntry {
                key: Some(i.to_string()),
                value: MapValue::Number(1.0),
            })
            .collect();
        assert_eq!(maps.update("s", "m", Some(1), &entries), 5);
    }
}
