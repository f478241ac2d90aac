//! How a probe goes on the nodes it was assigned to, read from NodeAssignment specs and agent statuses.
use k8s_openapi::jiff::Timestamp;
use sonde_api::{NodeAssignment, NodeFailure, ProbeState};

/// At most this many per-node failures are kept in a resource's status.
pub const MAX_FAILURES: usize = 5;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub selected: u32,
    pub ready: u32,
    pub failed: u32,
    /// The first failures, by node name.
    pub failures: Vec<NodeFailure>,
}

/// Counts the nodes whose spec holds probe `id` of owner `uid`, and how their agents report it at
/// `generation` (older reports mean the agent has not caught up yet: pending).
pub fn observe<'a>(
    id: &str,
    uid: &str,
    generation: i64,
    assignments: impl IntoIterator<Item = &'a NodeAssignment>,
) -> NodeView {
    let mut view = NodeView::default();
    let mut failures = Vec::new();
    for na in assignments {
        // The operator writes probes sorted by id.
        let Ok(i) = na.spec.probes.binary_search_by(|p| p.id.as_str().cmp(id)) else {
            continue;
        };
        if na.spec.probes[i].owner.uid != uid {
            continue;
        }
        view.selected += 1;
        let reported = na.status.as_ref().and_then(|s| {
            s.probes
                .iter()
                .find(|p| p.id == id && p.owner_uid == uid && p.generation == generation)
        });
        match reported.map(|p| (p.state, &p.message)) {
            Some((ProbeState::Attached, _)) => view.ready += 1,
            Some((ProbeState::Failed, message)) => {
                view.failed += 1;
                let node = na.metadata.name.clone().unwrap_or_default();
                failures.push(NodeFailure {
                    node,
                    message: message.clone(),
                });
            }
            Some((ProbeState::Pending, _)) | None => {}
        }
    }
    failures.sort_by(|a, b| a.node.cmp(&b.node));
    failures.truncate(MAX_FAILURES);
    view.failures = failures;
    view
}

/// Agents that wrote their status within this long are trusted to report what they run.
pub const AGENT_FRESHNESS: std::time::Duration = std::time::Duration::from_secs(120);

/// Nodes where probe `id` of owner `uid` is still assigned, or still reported by an agent that
/// reported recently. Agents that never reported (or went silent) do not hold a deletion up.
pub fn nodes_still_running<'a>(
    id: &str,
    uid: &str,
    now: Timestamp,
    assignments: impl IntoIterator<Item = &'a NodeAssignment>,
) -> Vec<String> {
    let fresh = |na: &NodeAssignment| {
        let last = na.status.as_ref().and_then(|s| s.last_update.as_deref());
        last.and_then(|t| t.parse::<Timestamp>().ok())
            .is_some_and(|t| now.duration_since(t).unsigned_abs() < AGENT_FRESHNESS)
    };
    let mut nodes: Vec<String> = assignments
        .into_iter()
        .filter(|na| {
            let assigned = na
                .spec
                .probes
                .iter()
                .any(|p| p.id == id && p.owner.uid == uid);
            let reported = fresh(na)
                && na
                    .status
                    .as_ref()
                    .is_some_and(|s| s.probes.iter().any(|p| p.id == id && p.owner_uid == uid));
            assigned || reported
        })
        .map(|na| na.metadata.name.clone().unwrap_or_default())
        .collect();
    nodes.sort();
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use sonde_api::{
        AssignedProbe, NodeAssignmentSpec, NodeAssignmentStatus, ProbeConfig, ProbeOwner,
        ProbeStatus,
    };

    const ID: &str = "BpftraceScript/opens";

    fn assignment(
        node: &str,
        assigned: bool,
        reported: Option<(ProbeState, i64, &str)>,
    ) -> NodeAssignment {
        let probes = if assigned {
            vec![AssignedProbe {
                id: ID.into(),
                owner: ProbeOwner {
                    kind: "BpftraceScript".into(),
                    name: "opens".into(),
                    uid: "u1".into(),
                    generation: 2,
                    namespace: None,
                },
                config: ProbeConfig::BpftraceScript(
                    crate::fixtures::bpftrace("opens").spec.clone(),
                ),
                targets: vec![],
                process: None,
            }]
        } else {
            vec![]
        };
        let status = reported.map(|(state, generation, message)| NodeAssignmentStatus {
            probes: vec![ProbeStatus {
                id: ID.into(),
                owner_uid: "u1".into(),
                generation,
                state,
                message: message.into(),
                targets_attached: 0,
                restarts: 0,
            }],
            ..Default::default()
        });
        NodeAssignment {
            metadata: ObjectMeta {
                name: Some(node.into()),
                ..Default::default()
            },
            spec: NodeAssignmentSpec {
                probe_count: probes.len() as u32,
                probes,
            },
            status,
        }
    }

    #[test]
    fn counts_selected_ready_and_failed_nodes_for_the_current_generation() {
        let nas = [
            assignment("n1", true, Some((ProbeState::Attached, 2, ""))),
            assignment("n2", true, Some((ProbeState::Failed, 2, "syntax error"))),
            assignment("n3", true, Some((ProbeState::Attached, 1, ""))),
            assignment("n4", true, None),
            assignment("n5", false, Some((ProbeState::Attached, 2, ""))),
        ];
        let view = observe(ID, "u1", 2, &nas);
        assert_eq!((view.selected, view.ready, view.failed), (4, 1, 1));
        assert_eq!(
            view.failures,
            vec![NodeFailure {
                node: "n2".into(),
                message: "syntax error".into()
            }]
        );
    }

    #[test]
    fn a_probe_of_a_recreated_resource_with_another_uid_is_not_counted() {
        let nas = [assignment("n1", true, Some((ProbeState::Attached, 2, "")))];
        assert_eq!(observe(ID, "other-uid", 2, &nas).selected, 0);
    }

    #[test]
    fn only_the_first_failures_are_kept() {
        let nas: Vec<_> = (0..8)
            .rev()
            .map(|i| {
                assignment(
                    &format!("n{i}"),
                    true,
                    Some((ProbeState::Failed, 2, "boom")),
                )
            })
            .collect();
        let view = observe(ID, "u1", 2, &nas);
        assert_eq!(view.failed, 8);
        let nodes: Vec<_> = view.failures.iter().map(|f| f.node.as_str()).collect();
        assert_eq!(nodes, ["n0", "n1", "n2", "n3", "n4"]);
    }
    #[test]
    fn deletion_waits_for_assigned_nodes_and_fresh_agents_only() {
        let now: Timestamp = "2025-01-01T01:00:00Z".parse().unwrap();
        let with_update = |mut na: NodeAssignment, at: &str| {
            na.status.as_mut().unwrap().last_update = Some(at.into());
            na
        };
        let nas = [
            // still in the spec
            assignment("n1", true, None),
            // removed from the spec, but a live agent still runs it
            with_update(
                assignment("n2", false, Some((ProbeState::Attached, 2, ""))),
                "2025-01-01T00:59:30Z",
            ),
            // removed from the spec; the agent went silent long ago
            with_update(
                assignment("n3", false, Some((ProbeState::Attached, 2, ""))),
                "2025-01-01T00:10:00Z",
            ),
            // removed from the spec; the agent never reported a time
            assignment("n4", false, Some((ProbeState::Attached, 2, ""))),
            assignment("n5", false, None),
        ];
        assert_eq!(nodes_still_running(ID, "u1", now, &nas), ["n1", "n2"]);
        assert!(nodes_still_running(ID, "u1", now, &nas[2..]).is_empty());
    }
}
