//! Cluster-wide auto-telemetry (Pixie's default after install): protocol tracing and CPU profiling of
//! every pod, switched on by operator flags (the chart's `autoTelemetry` values) instead of resources.
//!
//! The operator synthesizes one probe per feature on every node, so the agents run them exactly like
//! a Tracepoint's. These probes have no resource behind them: their owner kind is [`OWNER_KIND`],
//! which no controller parses, so status aggregation, finalizers and Events never look for one.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use sonde_api::{
    AssignedProbe, PodTarget, ProbeConfig, ProbeOwner, ProfilerSpec, Protocol, TracepointProbe,
    TracepointSpec,
};

use crate::assignment::pods::LivePod;

/// `owner.kind` and first segment of the probe ids of auto-telemetry probes.
pub const OWNER_KIND: &str = "AutoTelemetry";
/// Namespace excluded unless the flag says otherwise (the operator's own is always excluded).
pub const DEFAULT_EXCLUDED: &str = "kube-system";

#[derive(Debug, thiserror::Error)]
pub enum AutoTelemetryError {
    #[error(
        "unknown protocol `{name}` in --auto-protocols: use a comma-separated list of http, dns, pgsql, mysql, redis"
    )]
    UnknownProtocol { name: String },
}

/// Parses one protocol name as the CRD spells it (`http`, `dns`, …).
pub fn parse_protocol(name: &str) -> Result<Protocol, AutoTelemetryError> {
    serde_json::from_value(serde_json::Value::String(name.trim().to_ascii_lowercase())).map_err(
        |_| AutoTelemetryError::UnknownProtocol {
            name: name.to_owned(),
        },
    )
}

/// What the flags switch on. The default is off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutoTelemetry {
    /// Protocols traced in every pod; empty: protocol tracing is off.
    pub protocols: Vec<Protocol>,
    /// Profiler frequency; 0: profiling is off.
    pub profiler_hz: u32,
    /// Pods of these namespaces are never targets.
    pub excluded_namespaces: BTreeSet<String>,
}

/// One switched-on feature: a probe config that every node runs for all its (non-excluded) pods.
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    /// `protocols` or `profiler`: the owner's name, the probe id's last segment, the metric label.
    pub name: &'static str,
    pub config: ProbeConfig,
}

impl AutoTelemetry {
    /// From the flags; `own_namespace` (the operator's) is always excluded, so Sonde never traces itself.
    pub fn new(
        protocols: &[Protocol],
        profiler_hz: u32,
        excluded: Option<&[String]>,
        own_namespace: &str,
    ) -> AutoTelemetry {
        let mut protocols = protocols.to_vec();
        protocols.sort();
        protocols.dedup();
        let default = [DEFAULT_EXCLUDED.to_owned()];
        let mut excluded_namespaces: BTreeSet<String> = excluded
            .unwrap_or(&default)
            .iter()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .collect();
        excluded_namespaces.insert(own_namespace.to_owned());
        AutoTelemetry {
            protocols,
            profiler_hz,
            excluded_namespaces,
        }
    }

    /// The features switched on, in id order.
    pub fn features(&self) -> Vec<Feature> {
        let tracepoint = |probe: TracepointProbe| {
            ProbeConfig::Tracepoint(TracepointSpec {
                selector: None,
                container: None,
                process: None,
                ttl: None,
                probe,
            })
        };
        let mut features = Vec::new();
        if self.profiler_hz > 0 {
            features.push(Feature {
                name: "profiler",
                config: tracepoint(TracepointProbe {
                    profiler: Some(ProfilerSpec {
                        frequency_hz: self.profiler_hz,
                    }),
                    ..Default::default()
                }),
            });
        }
        if !self.protocols.is_empty() {
            features.push(Feature {
                name: "protocols",
                config: tracepoint(TracepointProbe {
                    protocols: Some(self.protocols.clone()),
                    ..Default::default()
                }),
            });
        }
        features
    }

    /// Every container of the live pods outside the excluded namespaces, per node, sorted.
    pub fn targets_per_node<'a>(
        &self,
        pods_by_namespace: &HashMap<&str, Vec<LivePod<'a>>>,
    ) -> BTreeMap<&'a str, Vec<PodTarget>> {
        let mut per_node: BTreeMap<&str, Vec<PodTarget>> = BTreeMap::new();
        let included = pods_by_namespace
            .iter()
            .filter(|(ns, _)| !self.excluded_namespaces.contains(**ns))
            .flat_map(|(_, pods)| pods);
        for pod in included {
            per_node
                .entry(pod.node)
                .or_default()
                .extend(pod.targets.iter().cloned());
        }
        for targets in per_node.values_mut() {
            targets.sort();
        }
        per_node
    }
}

impl Feature {
    /// `AutoTelemetry/<name>`: stable, and never the id of a resource's probe.
    pub fn id(&self) -> String {
        AssignedProbe::id_for(OWNER_KIND, None, self.name)
    }

    /// The owner: no namespace, a uid that is stable across operator restarts, and a generation
    /// derived from the config, so it changes exactly when the flags change what the probe does.
    pub fn owner(&self) -> ProbeOwner {
        ProbeOwner {
            kind: OWNER_KIND.to_owned(),
            namespace: None,
            name: self.name.to_owned(),
            uid: format!("sonde-operator/auto-telemetry/{}", self.name),
            generation: config_generation(&self.config),
        }
    }

    pub fn probe(&self, targets: Vec<PodTarget>) -> AssignedProbe {
        AssignedProbe {
            id: self.id(),
            owner: self.owner(),
            config: self.config.clone(),
            targets,
            process: None,
        }
    }
}

/// FNV-1a of the config's JSON, as a positive i64: identical flags give the same generation in every
/// operator build and restart (std's hasher does not promise that).
fn config_generation(config: &ProbeConfig) -> i64 {
    let json = serde_json::to_string(config).unwrap_or_default();
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Kubernetes generations are positive; keep 62 bits and never 0.
    (hash >> 2) as i64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_parse_as_the_crd_spells_them_and_unknown_ones_are_refused() {
        assert_eq!(parse_protocol("http").unwrap(), Protocol::Http);
        assert_eq!(parse_protocol(" PgSQL ").unwrap(), Protocol::Pgsql);
        let err = parse_protocol("grpc").unwrap_err().to_string();
        assert!(err.contains("`grpc`") && err.contains("redis"), "{err}");
    }

    #[test]
    fn nothing_is_switched_on_by_default() {
        let auto = AutoTelemetry::new(&[], 0, None, "sonde-system");
        assert!(auto.features().is_empty());
        assert_eq!(
            auto.excluded_namespaces,
            BTreeSet::from(["kube-system".to_owned(), "sonde-system".to_owned()])
        );
    }

    #[test]
    fn the_operators_namespace_stays_excluded_whatever_the_list() {
        let auto = AutoTelemetry::new(
            &[Protocol::Http],
            0,
            Some(&["shop".to_owned(), "".to_owned()]),
            "sonde-system",
        );
        assert_eq!(
            auto.excluded_namespaces,
            BTreeSet::from(["shop".to_owned(), "sonde-system".to_owned()])
        );
    }

    #[test]
    fn the_generation_follows_the_flags_and_nothing_else() {
        let http = AutoTelemetry::new(&[Protocol::Http], 0, None, "a");
        let same = AutoTelemetry::new(&[Protocol::Http, Protocol::Http], 0, None, "b");
        let more = AutoTelemetry::new(&[Protocol::Dns, Protocol::Http], 0, None, "a");
        let owner = |a: &AutoTelemetry| a.features()[0].owner();
        assert_eq!(owner(&http), owner(&same));
        assert_ne!(owner(&http).generation, owner(&more).generation);
        assert_eq!(owner(&http).uid, owner(&more).uid);
        assert!(owner(&http).generation > 0);
        let hz = |n| AutoTelemetry::new(&[], n, None, "a").features()[0].owner();
        assert_ne!(hz(99).generation, hz(49).generation);
    }
}
