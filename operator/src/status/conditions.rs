//! Ready, Degraded and Expired conditions, and the transitions between two statuses that deserve an Event.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use sonde_api::{ConditionType, NodeCounts, ResourceStatus};

use super::NodeView;

/// The status a resource should have now. `lastTransitionTime` is kept from `prev` for every
/// condition whose status did not flip, so an unchanged situation yields an identical status.
pub fn next_status(
    prev: Option<&ResourceStatus>,
    generation: Option<i64>,
    view: &NodeView,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> ResourceStatus {
    let expired = expires_at.is_some_and(|at| at <= now);
    let first_failure = view
        .failures
        .first()
        .map(|f| format!("{}: {}", f.node, f.message));
    let (ready, reason, message) = if expired {
        (
            false,
            "Expired",
            "spec.ttl has passed; the probe was removed from every node".to_owned(),
        )
    } else if view.selected == 0 {
        (
            false,
            "NoTargets",
            "no node runs a matching pod (or matches the node selector) yet".to_owned(),
        )
    } else if view.failed > 0 {
        let first = first_failure.clone().unwrap_or_default();
        (
            false,
            "Failed",
            format!(
                "{} of {} nodes failed; first: {first}",
                view.failed, view.selected
            ),
        )
    } else if view.ready == view.selected {
        (
            true,
            "AllNodesReady",
            format!("attached on {} of {} nodes", view.ready, view.selected),
        )
    } else {
        (
            false,
            "Pending",
            format!(
                "attached on {} of {} nodes; waiting for the agents",
                view.ready, view.selected
            ),
        )
    };
    let degraded = match &first_failure {
        Some(first) => (
            true,
            "ProbeFailed",
            format!("{} node(s) failed; {first}", view.failed),
        ),
        None => (false, "NoFailures", "no node reports a failure".to_owned()),
    };
    let expiry = match expires_at {
        Some(at) if expired => (true, "TTLExpired", format!("spec.ttl ran out at {at}")),
        Some(at) => (false, "TTLPending", format!("spec.ttl runs out at {at}")),
        None => (false, "NoTTL", "spec.ttl is not set".to_owned()),
    };
    let prev_conditions = prev.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let condition = |type_: ConditionType, (status, reason, message): (bool, &str, String)| {
        let status = if status { "True" } else { "False" };
        let last_transition_time = prev_conditions
            .iter()
            .find(|c| c.type_ == type_.as_str() && c.status == status)
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.as_str().to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };
    ResourceStatus {
        observed_generation: generation,
        conditions: vec![
            condition(ConditionType::Ready, (ready, reason, message)),
            condition(ConditionType::Degraded, degraded),
            condition(ConditionType::Expired, expiry),
        ],
        nodes: NodeCounts {
            selected: view.selected,
            ready: view.ready,
            failed: view.failed,
        },
        failures: view.failures.clone(),
        expires_at: expires_at.map(|at| at.to_string()),
    }
}

/// A condition that became True, worth a Kubernetes Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub condition: ConditionType,
    /// The condition's message (for Degraded: the agent's failure).
    pub message: String,
}

/// Conditions that are True in `next` and were not True in `prev`.
pub fn transitions(prev: Option<&ResourceStatus>, next: &ResourceStatus) -> Vec<Transition> {
    fn is_true(s: Option<&ResourceStatus>, t: ConditionType) -> Option<&Condition> {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == t.as_str()))
            .filter(|c| c.status == "True")
    }
    [
        ConditionType::Ready,
        ConditionType::Degraded,
        ConditionType::Expired,
    ]
    .into_iter()
    .filter(|t| is_true(prev, *t).is_none())
    .filter_map(|t| {
        is_true(Some(next), t).map(|c| Transition {
            condition: t,
            message: c.message.clone(),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_api::NodeFailure;

    fn view(selected: u32, ready: u32, failed: u32) -> NodeView {
        let failures = (0..failed.min(5))
            .map(|i| NodeFailure {
                node: format!("n{i}"),
                message: "bpftrace: syntax error".into(),
            })
            .collect();
        NodeView {
            selected,
            ready,
            failed,
            failures,
        }
    }

    fn get(s: &ResourceStatus, t: ConditionType) -> &Condition {
        s.conditions.iter().find(|c| c.type_ == t.as_str()).unwrap()
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn ready_when_every_selected_node_is_attached() {
        let s = next_status(
            None,
            Some(3),
            &view(2, 2, 0),
            None,
            t("2025-01-01T00:00:00Z"),
        );
        let ready = get(&s, ConditionType::Ready);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "AllNodesReady")
        );
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            s.nodes,
            NodeCounts {
                selected: 2,
                ready: 2,
                failed: 0
            }
        );
        assert_eq!(get(&s, ConditionType::Degraded).status, "False");
    }

    #[test]
    fn not_ready_without_targets_or_while_pending() {
        let now = t("2025-01-01T00:00:00Z");
        assert_eq!(
            get(
                &next_status(None, Some(1), &view(0, 0, 0), None, now),
                ConditionType::Ready
            )
            .reason,
            "NoTargets"
        );
        assert_eq!(
            get(
                &next_status(None, Some(1), &view(3, 2, 0), None, now),
                ConditionType::Ready
            )
            .reason,
            "Pending"
        );
    }

    #[test]
    fn a_failure_makes_it_degraded_with_the_agents_message() {
        let s = next_status(
            None,
            Some(1),
            &view(3, 2, 1),
            None,
            t("2025-01-01T00:00:00Z"),
        );
        let degraded = get(&s, ConditionType::Degraded);
        assert_eq!(degraded.status, "True");
        assert!(
            degraded.message.contains("n0: bpftrace: syntax error"),
            "{}",
            degraded.message
        );
        assert_eq!(get(&s, ConditionType::Ready).reason, "Failed");
        assert_eq!(s.failures.len(), 1);
    }

    #[test]
    fn past_its_ttl_it_is_expired_and_not_ready() {
        let s = next_status(
            None,
            Some(1),
            &view(0, 0, 0),
            Some(t("2025-01-01T00:30:00Z")),
            t("2025-01-01T01:00:00Z"),
        );
        assert_eq!(get(&s, ConditionType::Expired).status, "True");
        assert_eq!(get(&s, ConditionType::Expired).reason, "TTLExpired");
        assert_eq!(get(&s, ConditionType::Ready).reason, "Expired");
        assert_eq!(s.expires_at.as_deref(), Some("2025-01-01T00:30:00Z"));
    }

    #[test]
    fn last_transition_time_is_kept_while_a_condition_does_not_flip() {
        let first = next_status(
            None,
            Some(1),
            &view(2, 1, 0),
            None,
            t("2025-01-01T00:00:00Z"),
        );
        let same = next_status(
            Some(&first),
            Some(1),
            &view(2, 1, 0),
            None,
            t("2025-01-01T00:05:00Z"),
        );
        assert_eq!(
            first, same,
            "an unchanged situation must not produce a status patch"
        );
        let flipped = next_status(
            Some(&first),
            Some(1),
            &view(2, 2, 0),
            None,
            t("2025-01-01T00:10:00Z"),
        );
        let ready = get(&flipped, ConditionType::Ready);
        assert_eq!(ready.last_transition_time, Time(t("2025-01-01T00:10:00Z")));
        assert_eq!(
            get(&flipped, ConditionType::Degraded).last_transition_time,
            Time(t("2025-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn transitions_report_conditions_that_became_true_once() {
        let now = t("2025-01-01T00:00:00Z");
        let pending = next_status(None, Some(1), &view(2, 1, 0), None, now);
        let ready = next_status(Some(&pending), Some(1), &view(2, 2, 0), None, now);
        let found: Vec<_> = transitions(Some(&pending), &ready)
            .into_iter()
            .map(|t| t.condition)
            .collect();
        assert_eq!(found, [ConditionType::Ready]);
        assert!(transitions(Some(&ready), &ready).is_empty());
        let failed = next_status(Some(&ready), Some(1), &view(2, 1, 1), None, now);
        let found = transitions(Some(&ready), &failed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].condition, ConditionType::Degraded);
        assert!(found[0].message.contains("syntax error"));
    }
}
