//! One line of `bpftrace -f json` stdout → an [`OutputEvent`].
//!
//! Shapes seen from bpftrace 0.17 (captured in `tests/fixtures/bpftrace/`):
//! `{"type": "attached_probes", "data": {"probes": 2}}`, `{"type": "printf", "data": "…\n"}`,
//! `{"type": "map", "data": {"@m": {"bash": 3}}}` (multi-key maps join keys with `,`; scalar maps
//! hold the number directly), `{"type": "stats", "data": {"@st": {"count": 1, "average": 3, "total": 3}}}`
//! (`avg()` maps print as `stats` with a plain number), `{"type": "hist", "data": {"@h": [{"min": 4,
//! "max": 7, "count": 1}]}}` (keyed: an object of bucket lists), `{"type": "lost_events", …}`,
//! `time`, `value` and empty lines.
use serde_json::Value as Json;

#[derive(Clone, Debug, PartialEq)]
pub enum OutputEvent {
    AttachedProbes(u64),
    Printf(String),
    /// A printed map: every (key, value) pair; scalar maps have one entry with key `None`.
    Map {
        name: String,
        entries: Vec<MapEntry>,
    },
    LostEvents(u64),
    /// Output the runtime has no use for (`time`, `value`, blank lines, …).
    Ignored,
    /// Not JSON, or JSON of an unexpected shape.
    Unrecognized,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MapEntry {
    /// bpftrace's key text (`"1234,bash"` for multi-key maps); `None` for scalar maps.
    pub key: Option<String>,
    pub value: MapValue,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MapValue {
    Number(f64),
    /// `stats()`: count, average, total.
    Stats {
        count: f64,
        average: f64,
        total: f64,
    },
    /// `hist()`/`lhist()`: (upper bound inclusive, or None for the open top bucket; count).
    Histogram(Vec<(Option<f64>, f64)>),
    /// Strings, tuples and other values that are not numbers.
    Other,
}

pub fn parse_line(line: &str) -> OutputEvent {
    let line = line.trim();
    if line.is_empty() {
        return OutputEvent::Ignored;
    }
    let Ok(json) = serde_json::from_str::<Json>(line) else {
        return OutputEvent::Unrecognized;
    };
    let data = &json["data"];
    match json["type"].as_str() {
        Some("attached_probes") => data["probes"]
            .as_u64()
            .map_or(OutputEvent::Unrecognized, OutputEvent::AttachedProbes),
        Some("printf") => data.as_str().map_or(OutputEvent::Unrecognized, |s| {
            OutputEvent::Printf(s.to_string())
        }),
        Some("lost_events") => {
            let lost = data
                .as_u64()
                .or_else(|| data["events"].as_u64())
                .or_else(|| data["lost"].as_u64());
            lost.map_or(OutputEvent::Unrecognized, OutputEvent::LostEvents)
        }
        Some(kind @ ("map" | "stats" | "hist")) => map_event(kind, data),
        Some(_) => OutputEvent::Ignored,
        None => OutputEvent::Unrecognized,
    }
}

fn map_event(kind: &str, data: &Json) -> OutputEvent {
    let Some((name, value)) = data.as_object().and_then(|o| o.iter().next()) else {
        return OutputEvent::Unrecognized;
    };
    let name = name.trim_start_matches('@').to_string();
    let single = |v: &Json| leaf(kind, v);
    let entries = match value {
        Json::Object(keys) if !is_stats_leaf(kind, value) => keys
            .iter()
            .map(|(k, v)| MapEntry {
                key: Some(k.clone()),
                value: single(v),
            })
            .collect(),
        other => vec![MapEntry {
            key: None,
            value: single(other),
        }],
    };
    OutputEvent::Map { name, entries }
}

fn is_stats_leaf(kind: &str, value: &Json) -> bool {
    kind == "stats"
        && value.get("count").is_some_and(Json::is_number)
        && value.get("average").is_some()
}

fn leaf(kind: &str, value: &Json) -> MapValue {
    match (kind, value) {
        ("stats", v) if is_stats_leaf(kind, v) => MapValue::Stats {
            count: v["count"].as_f64().unwrap_or(0.0),
            average: v["average"].as_f64().unwrap_or(0.0),
            total: v["total"].as_f64().unwrap_or(0.0),
        },
        ("hist", Json::Array(buckets)) => MapValue::Histogram(
            buckets
                .iter()
                .map(|b| (b["max"].as_f64(), b["count"].as_f64().unwrap_or(0.0)))
                .collect(),
        ),
        (_, Json::Number(n)) => n.as_f64().map_or(MapValue::Other, MapValue::Number),
        _ => MapValue::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_and_printf_lines_parse() {
        assert_eq!(
            parse_line(r#"{"type": "attached_probes", "data": {"probes": 2}}"#),
            OutputEvent::AttachedProbes(2)
        );
        assert_eq!(
            parse_line(
                r#"{"type": "printf", "data": "time_:429398363287 pid:16169 comm:bash x:ff\n"}"#
            ),
            OutputEvent::Printf("time_:429398363287 pid:16169 comm:bash x:ff\n".into())
        );
        assert_eq!(parse_line(""), OutputEvent::Ignored);
        assert_eq!(
            parse_line(r#"{"type": "time", "data": "20:48:34\n"}"#),
            OutputEvent::Ignored
        );
        assert_eq!(parse_line("ERROR: not json"), OutputEvent::Unrecognized);
    }

    #[test]
    fn keyed_scalar_and_negative_maps_parse() {
        let event = parse_line(
            r#"{"type": "map", "data": {"@mk": {"16255,python3": 3, "16169,bash": 9}}}"#,
        );
        let OutputEvent::Map { name, entries } = event else {
            panic!("not a map: {event:?}")
        };
        assert_eq!(name, "mk");
        assert!(entries.contains(&MapEntry {
            key: Some("16255,python3".into()),
            value: MapValue::Number(3.0)
        }));
        assert_eq!(entries.len(), 2);
        assert_eq!(
            parse_line(r#"{"type": "map", "data": {"@neg": -5}}"#),
            OutputEvent::Map {
                name: "neg".into(),
                entries: vec![MapEntry {
                    key: None,
                    value: MapValue::Number(-5.0)
                }]
            }
        );
    }

    #[test]
    fn stats_avg_and_hist_maps_parse() {
        assert_eq!(
            parse_line(
                r#"{"type": "stats", "data": {"@st": {"count": 147, "average": 16227, "total": 2385434}}}"#
            ),
            OutputEvent::Map {
                name: "st".into(),
                entries: vec![MapEntry {
                    key: None,
                    value: MapValue::Stats {
                        count: 147.0,
                        average: 16227.0,
                        total: 2385434.0
                    }
                }]
            }
        );
        assert_eq!(
            parse_line(r#"{"type": "stats", "data": {"@a": 16227}}"#),
            OutputEvent::Map {
                name: "a".into(),
                entries: vec![MapEntry {
                    key: None,
                    value: MapValue::Number(16227.0)
                }]
            }
        );
        let event = parse_line(
            r#"{"type": "hist", "data": {"@x": {"1": [{"min": 4, "max": 7, "count": 1}], "2": [{"min": 512, "max": 1023, "count": 1}]}}}"#,
        );
        let OutputEvent::Map { entries, .. } = event else {
            panic!("not a map: {event:?}")
        };
        assert_eq!(
            entries[1],
            MapEntry {
                key: Some("2".into()),
                value: MapValue::Histogram(vec![(Some(1023.0), 1.0)])
            }
        );
    }

    /// Stable one-line rendering of an event, for the captured-output fixture.
    fn render(event: &OutputEvent) -> String {
        let value = |v: &MapValue| match v {
            MapValue::Number(n) => n.to_string(),
            MapValue::Stats {
                count,
                average,
                total,
            } => {
                format!("stats[count={count} average={average} total={total}]")
            }
            MapValue::Histogram(buckets) => {
                let parts: Vec<String> = buckets
                    .iter()
                    .map(|(le, c)| {
                        format!("{}:{c}", le.map_or("inf".to_string(), |l| l.to_string()))
                    })
                    .collect();
                format!("hist[{}]", parts.join(" "))
            }
            MapValue::Other => "other".to_string(),
        };
        match event {
            OutputEvent::AttachedProbes(n) => format!("attached_probes {n}"),
            OutputEvent::Printf(text) => format!("printf {text:?}"),
            OutputEvent::Map { name, entries } => {
                let parts: Vec<String> = entries
                    .iter()
                    .map(|e| match &e.key {
                        Some(k) => format!("{k}={}", value(&e.value)),
                        None => value(&e.value),
                    })
                    .collect();
                format!("map {name} {}", parts.join(" "))
            }
            OutputEvent::LostEvents(n) => format!("lost_events {n}"),
            OutputEvent::Ignored => "ignored".to_string(),
            OutputEvent::Unrecognized => "unrecognized".to_string(),
        }
    }

    #[test]
    fn captured_bpftrace_0_17_output_parses_as_expected() {
        let captured = include_str!("../../../tests/fixtures/bpftrace/output-0.17.ndjson");
        let expected = include_str!("../../../tests/fixtures/bpftrace/output-0.17.expected");
        let rendered: Vec<String> = captured.lines().map(|l| render(&parse_line(l))).collect();
        assert_eq!(rendered, expected.lines().collect::<Vec<_>>());
    }
}
