//! Which pods can be traced, and their containers as probe targets.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use sonde_api::PodTarget;

/// A pod that runs (or is starting) on a node, with its containers that have a runtime id.
#[derive(Debug)]
pub struct LivePod<'a> {
    pub node: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub targets: Vec<PodTarget>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// `Some` for a pod bound to a node that is Running, or Pending with a running container.
pub fn live_pod(pod: &Pod) -> Option<LivePod<'_>> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let status = pod.status.as_ref()?;
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    let running = |s: &&k8s_openapi::api::core::v1::ContainerStatus| {
        s.state.as_ref().is_some_and(|st| st.running.is_some())
    };
    let live = match status.phase.as_deref() {
        Some("Running") => true,
        Some("Pending") => statuses.iter().any(|s| running(&s)),
        _ => false,
    };
    if !live {
        return None;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let targets = statuses
        .iter()
        .filter_map(|s| {
            let id = container_id(s.container_id.as_deref()?)?;
            Some(PodTarget {
                pod_uid: uid.clone(),
                namespace: namespace.clone(),
                pod: name.clone(),
                container: s.name.clone(),
                container_id: id.to_owned(),
            })
        })
        .collect();
    Some(LivePod {
        node,
        labels: pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
        targets,
    })
}

/// `containerd://abc` → `abc`; `None` while the runtime has not given an id yet.
pub fn container_id(raw: &str) -> Option<&str> {
    let id = raw.split_once("://").map_or(raw, |(_, id)| id);
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        assert_eq!(container_id("containerd://0123abcd"), Some("0123abcd"));
        assert_eq!(container_id("cri-o://ff00"), Some("ff00"));
        assert_eq!(container_id("docker://"), None);
        assert_eq!(container_id(""), None);
    }
}
