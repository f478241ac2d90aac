//! How a probe goes on the nodes it was assigned to, read from NodeAssignment specs and agent statuses.
use k8s_openapi::jiff::Timestamp;
use sonde_api::{NodeAssignment, NodeFailure, ProbeState};

/// At most this many per-node failures (and silent agents) are kept in a resource's status.
pub const MAX_FAILURES: usize = 5;

/// Agents that wrote their status within this long are trusted to report what they run. The agent
/// writes at least every 30 s (its heartbeat), so this allows three missed writes.
pub const AGENT_FRESHNESS: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub selected: u32,
    /// Selected nodes whose fresh agent reports the probe Attached.
    pub ready: u32,
    /// Selected nodes whose fresh agent reports the probe Failed.
    pub failed: u32,
    /// The first failures, by node name.
    pub failures: Vec<NodeFailure>,
    /// Selected nodes whose agent has not reported within [`AGENT_FRESHNESS`]: whatever it last
    /// said may no longer be true, so they count as neither ready nor failed.
    pub silent: u32,
    /// The first silent agents, by node name.
    pub silent_agents: Vec<SilentAgent>,
    /// When the first agent that is fresh now turns silent unless it reports again: a dead agent
    /// sends no event, so the status must be looked at again then.
    pub next_silent_at: Option<Timestamp>,
}

/// A node whose agent has not reported within [`AGENT_FRESHNESS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SilentAgent {
    pub node: String,
    /// Its last status write; `None` if it never wrote one.
    pub last_report: Option<Timestamp>,
}

/// Whether a node's agent is alive, as far as its status writes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agent {
    /// Reported recently (or the assignment is too new to expect a report); turns silent at this
    /// time unless it reports again (`None`: unknown, the object has no creation time).
    Fresh(Option<Timestamp>),
    Silent(Option<Timestamp>),
}

/// The agent's last status write, if it wrote one with a readable time.
fn last_report(na: &NodeAssignment) -> Option<Timestamp> {
    let last = na.status.as_ref().and_then(|s| s.last_update.as_deref());
    last.and_then(|t| t.parse::<Timestamp>().ok())
}

fn agent(na: &NodeAssignment, now: Timestamp) -> Agent {
    // Without any report, an agent gets the same time to write its first one from the moment its
    // node was given an assignment.
    let last = last_report(na);
    let Some(since) = last.or_else(|| na.metadata.creation_timestamp.as_ref().map(|t| t.0)) else {
        return Agent::Fresh(None);
    };
    let silent_at = since.checked_add(AGENT_FRESHNESS).ok();
    match silent_at {
        Some(at) if at > now => Agent::Fresh(Some(at)),
        _ => Agent::Silent(last),
    }
}

/// Counts the nodes whose spec holds probe `id` of owner `uid`, and how their agents report it at
/// `generation` (older reports mean the agent has not caught up yet: pending). Agents that have not
/// reported within [`AGENT_FRESHNESS`] at `now` are counted apart, as silent.
pub fn observe<'a>(
    id: &str,
    uid: &str,
    generation: i64,
    now: Timestamp,
    assignments: impl IntoIterator<Item = &'a NodeAssignment>,
) -> NodeView {
    let mut view = NodeView::default();
    let mut failures = Vec::new();
    let mut silent_agents = Vec::new();
    for na in assignments {
        // The operator writes probes sorted by id.
        let Ok(i) = na.spec.probes.binary_search_by(|p| p.id.as_str().cmp(id)) else {
            continue;
        };
        if na.spec.probes[i].owner.uid != uid {
            continue;
        }
        view.selected += 1;
        let node = || na.metadata.name.clone().unwrap_or_default();
        match agent(na, now) {
            Agent::Silent(last_report) => {
                view.silent += 1;
                silent_agents.push(SilentAgent {
                    node: node(),
                    last_report,
                });
                continue;
            }
            Agent::Fresh(Some(at)) => {
                view.next_silent_at = Some(view.next_silent_at.map_or(at, |n| n.min(at)));
            }
            Agent::Fresh(None) => {}
        }
        let reported = na.status.as_ref().and_then(|s| {
            s.probes
                .iter()
                .find(|p| p.id == id && p.owner_uid == uid && p.generation == generation)
        });
        match reported.map(|p| (p.state, &p.message)) {
            Some((ProbeState::Attached, _)) => view.ready += 1,
            Some((ProbeState::Failed, message)) => {
                view.failed += 1;
                failures.push(NodeFailure {
                    node: node(),
                    message: message.clone(),
                });
            }
            Some((ProbeState::Pending, _)) | None => {}
        }
    }
    failures.sort_by(|a, b| a.node.cmp(&b.node));
    failures.truncate(MAX_FAILURES);
    view.failures = failures;
    silent_agents.sort_by(|a, b| a.node.cmp(&b.node));
    silent_agents.truncate(MAX_FAILURES);
    view.silent_agents = silent_agents;
    view
}

/// Nodes where probe `id` of owner `uid` is still assigned, or still reported by an agent that
/// reported recently. Agents that never reported (or went silent) do not hold a deletion up.
pub fn nodes_still_running<'a>(
    id: &str,
    uid: &str,
    now: Timestamp,
    assignments: impl IntoIterator<Item = &'a NodeAssignment>,
) -> Vec<String> {
    let fresh = |na: &NodeAssignment| {
        last_report(na).is_some_and(|t| now.duration_since(t).unsigned_abs() < AGENT_FRESHNESS)
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

    use crate::fixtures::now;

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
        let view = observe(ID, "u1", 2, now(), &nas);
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
        assert_eq!(observe(ID, "other-uid", 2, now(), &nas).selected, 0);
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
        let view = observe(ID, "u1", 2, now(), &nas);
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

    #[test]
    fn an_agent_silent_for_longer_than_the_freshness_window_counts_as_neither_ready_nor_failed() {
        // now() is 2025-01-01T01:00:00Z.
        let reported_at = |mut na: NodeAssignment, at: &str| {
            na.status.get_or_insert_default().last_update = Some(at.into());
            na
        };
        let created_at = |mut na: NodeAssignment, at: &str| {
            na.metadata.creation_timestamp = Some(crate::fixtures::time(at));
            na
        };
        let nas = [
            // reported 30 s ago: trusted
            reported_at(
                assignment("live", true, Some((ProbeState::Attached, 2, ""))),
                "2025-01-01T00:59:30Z",
            ),
            // said Attached, then nothing for 3 minutes (SIGKILLed)
            reported_at(
                assignment("dead", true, Some((ProbeState::Attached, 2, ""))),
                "2025-01-01T00:57:00Z",
            ),
            // a failure reported by an agent that has gone silent is not trusted either
            reported_at(
                assignment("dead-failed", true, Some((ProbeState::Failed, 2, "boom"))),
                "2025-01-01T00:50:00Z",
            ),
            // assigned an hour ago, never reported
            created_at(assignment("never", true, None), "2025-01-01T00:00:00Z"),
            // assigned 10 s ago: its agent still has time to report
            created_at(assignment("new", true, None), "2025-01-01T00:59:50Z"),
        ];
        let view = observe(ID, "u1", 2, now(), &nas);
        assert_eq!(
            (view.selected, view.ready, view.failed, view.silent),
            (5, 1, 0, 3)
        );
        assert!(view.failures.is_empty());
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            view.silent_agents,
            [
                SilentAgent {
                    node: "dead".into(),
                    last_report: Some(t("2025-01-01T00:57:00Z"))
                },
                SilentAgent {
                    node: "dead-failed".into(),
                    last_report: Some(t("2025-01-01T00:50:00Z"))
                },
                SilentAgent {
                    node: "never".into(),
                    last_report: None
                },
            ]
        );
        // "live" turns silent at 01:01:30 unless it reports again; "new" at 01:01:50.
        assert_eq!(view.next_silent_at, Some(t("2025-01-01T01:01:30Z")));
    }
}
