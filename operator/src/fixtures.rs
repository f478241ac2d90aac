//! Builders for test objects: nodes, pods, the three kinds and NodeAssignments.
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Node, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, Time,
};
use k8s_openapi::jiff::Timestamp;
use sonde_api::{
    BpftraceScript, BpftraceScriptSpec, DynamicLog, DynamicLogSpec, Tracepoint, TracepointProbe,
    TracepointSpec,
};

pub fn time(s: &str) -> Time {
    Time(s.parse().unwrap())
}

/// One hour after every fixture's creation time.
pub fn now() -> Timestamp {
    "2025-01-01T01:00:00Z".parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        creation_timestamp: Some(time("2025-01-01T00:00:00Z")),
        ..Default::default()
    }
}

pub fn node(name: &str, node_labels: &[(&str, &str)]) -> Arc<Node> {
    Arc::new(Node {
        metadata: ObjectMeta {
            labels: labels(node_labels),
            ..meta(None, name)
        },
        ..Default::default()
    })
}

/// A Running pod on `node_name`; containers are (name, containerID).
pub fn pod(
    ns: &str,
    name: &str,
    node_name: &str,
    pod_labels: &[(&str, &str)],
    containers: &[(&str, &str)],
) -> Arc<Pod> {
    let statuses = containers
        .iter()
        .map(|(c, id)| ContainerStatus {
            name: c.to_string(),
            container_id: (!id.is_empty()).then(|| id.to_string()),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    Arc::new(Pod {
        metadata: ObjectMeta {
            labels: labels(pod_labels),
            ..meta(Some(ns), name)
        },
        spec: Some(PodSpec {
            node_name: Some(node_name.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(statuses),
            ..Default::default()
        }),
    })
}

pub fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        ..Default::default()
    }
}

pub fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

pub fn tracepoint(ns: &str, name: &str, selector: Option<LabelSelector>) -> Arc<Tracepoint> {
    let spec = TracepointSpec {
        selector,
        container: None,
        process: None,
        ttl: None,
        probe: TracepointProbe {
            protocols: Some(vec![sonde_api::Protocol::Http]),
            ..Default::default()
        },
    };
    Arc::new(Tracepoint {
        metadata: meta(Some(ns), name),
        spec,
        status: None,
    })
}

pub fn dynamic_log(ns: &str, name: &str, selector: Option<LabelSelector>) -> Arc<DynamicLog> {
    let spec = DynamicLogSpec {
        selector,
        container: None,
        process: None,
        ttl: None,
        function: "main.handle".into(),
        capture: None,
        max_string_bytes: None,
        table_name: None,
        metrics: vec![],
    };
    Arc::new(DynamicLog {
        metadata: meta(Some(ns), name),
        spec,
        status: None,
    })
}

pub fn bpftrace(name: &str) -> Arc<BpftraceScript> {
    let spec = BpftraceScriptSpec {
        program: "tracepoint:syscalls:sys_enter_openat { @opens[comm] = count(); }".into(),
        node_selector: BTreeMap::new(),
        pods: None,
        process: None,
        table_name: None,
        ttl: None,
    };
    Arc::new(BpftraceScript {
        metadata: meta(None, name),
        spec,
        status: None,
    })
}
