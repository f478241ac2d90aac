//! Ready, Degraded and Expired conditions, and the transitions between two statuses that deserve an Event.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use sonde_api::{ConditionType, NodeCounts, ResourceStatus};

use super::NodeView;
use super::aggregate::AGENT_FRESHNESS;

/// Agents' pods carry this label (chart: `app.kubernetes.io/component: agent`).
const AGENT_POD_LABEL: &str = "app.kubernetes.io/component=agent";

/// The status a resource should have now. `lastTransitionTime` is kept from `prev` for every
/// condition whose status did not flip, so an unchanged situation yields an identical status.
/// `invalid` says why the spec cannot be assigned to any node (the resource was left out).
pub fn next_status(
    prev: Option<&ResourceStatus>,
    generation: Option<i64>,
    view: &NodeView,
    invalid: Option<&str>,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> ResourceStatus {
    let expired = expires_at.is_some_and(|at| at <= now);
    let first_failure = view
        .failures
        .first()
        .map(|f| format!("{}: {}", f.node, f.message));
    let silent = silent_agents(view);
    let (ready, reason, message) = if expired {
        (
            false,
            "Expired",
            "spec.ttl has passed; the probe was removed from every node".to_owned(),
        )
    } else if let Some(invalid) = invalid {
        (false, INVALID_SELECTOR, invalid.to_owned())
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
    } else if let Some(silent) = &silent {
        (
            false,
            AGENT_NOT_REPORTING,
            format!(
                "attached on {} of {} nodes; {silent}",
                view.ready, view.selected
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
    let degraded = match (&first_failure, &silent, invalid) {
        (_, _, Some(invalid)) => (true, INVALID_SELECTOR, invalid.to_owned()),
        (Some(first), None, _) => (
            true,
            "ProbeFailed",
            format!("{} node(s) failed; {first}", view.failed),
        ),
        (Some(first), Some(silent), _) => (
            true,
            "ProbeFailed",
            format!("{} node(s) failed; {first}; and {silent}", view.failed),
        ),
        (None, Some(silent), _) => (true, AGENT_NOT_REPORTING, silent.clone()),
        (None, None, _) => (false, "NoFailures", "no node reports a failure".to_owned()),
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

/// Ready and Degraded reason when the spec cannot be assigned (bad selector or process pattern).
pub const INVALID_SELECTOR: &str = "InvalidSelector";
/// Ready and Degraded reason when a selected node's agent has gone silent.
pub const AGENT_NOT_REPORTING: &str = "AgentNotReporting";

/// Which agents went silent, and how to check on them; `None` if none did.
fn silent_agents(view: &NodeView) -> Option<String> {
    let first = view.silent_agents.first()?;
    let when = |last: Option<Timestamp>| match last {
        Some(t) => format!("has not reported since {t}"),
        None => "has never reported".to_owned(),
    };
    let check = format!(
        "check it is running: kubectl get pods -A -l {AGENT_POD_LABEL} --field-selector spec.nodeName={}",
        first.node
    );
    if view.silent == 1 {
        return Some(format!(
            "the agent on node {} {} (nothing within {}s); {check}",
            first.node,
            when(first.last_report),
            AGENT_FRESHNESS.as_secs()
        ));
    }
    let listed: Vec<String> = view
        .silent_agents
        .iter()
        .map(|a| format!("{} ({})", a.node, when(a.last_report)))
        .collect();
    let more = view.silent as usize - listed.len();
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Some(format!(
        "the agents on {} nodes have not reported within {}s: {}{more}; {check}",
        view.silent,
        AGENT_FRESHNESS.as_secs(),
        listed.join(", ")
    ))
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
            ..Default::default()
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
                &next_status(None, Some(1), &view(0, 0, 0), None, None, now),
                ConditionType::Ready
            )
            .reason,
            "NoTargets"
        );
        assert_eq!(
            get(
                &next_status(None, Some(1), &view(3, 2, 0), None, None, now),
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
            None,
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
            None,
            t("2025-01-01T00:00:00Z"),
        );
        let same = next_status(
            Some(&first),
            Some(1),
            &view(2, 1, 0),
            None,
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
        let pending = next_status(None, Some(1), &view(2, 1, 0), None, None, now);
        let ready = next_status(Some(&pending), Some(1), &view(2, 2, 0), None, None, now);
        let found: Vec<_> = transitions(Some(&pending), &ready)
            .into_iter()
            .map(|t| t.condition)
            .collect();
        assert_eq!(found, [ConditionType::Ready]);
        assert!(transitions(Some(&ready), &ready).is_empty());
        let failed = next_status(Some(&ready), Some(1), &view(2, 1, 1), None, None, now);
        let found = transitions(Some(&ready), &failed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].condition, ConditionType::Degraded);
        assert!(found[0].message.contains("syntax error"));
    }

    fn silent(selected: u32, ready: u32, nodes: &[(&str, Option<&str>)]) -> NodeView {
        NodeView {
            selected,
            ready,
            silent: nodes.len() as u32,
            silent_agents: nodes
                .iter()
                .map(|(node, last)| super::super::aggregate::SilentAgent {
                    node: (*node).into(),
                    last_report: last.map(t),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_silent_agent_makes_it_not_ready_and_degraded_naming_the_node_and_its_last_report() {
        let now = t("2025-01-01T00:05:00Z");
        let ready = next_status(None, Some(1), &view(1, 1, 0), None, None, now);
        let dead = silent(1, 0, &[("node-1", Some("2025-01-01T00:02:00Z"))]);
        let s = next_status(Some(&ready), Some(1), &dead, None, None, now);
        let r = get(&s, ConditionType::Ready);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", AGENT_NOT_REPORTING)
        );
        assert_eq!(
            r.message,
            "attached on 0 of 1 nodes; the agent on node node-1 has not reported since \
             2025-01-01T00:02:00Z (nothing within 120s); check it is running: kubectl get pods -A \
             -l app.kubernetes.io/component=agent --field-selector spec.nodeName=node-1"
        );
        let d = get(&s, ConditionType::Degraded);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", AGENT_NOT_REPORTING)
        );
        assert_eq!(s.nodes.ready, 0);
        let found = transitions(Some(&ready), &s);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].condition, ConditionType::Degraded);
        // The message holds no "now": the status stays identical while the agent stays silent.
        let later = next_status(
            Some(&s),
            Some(1),
            &dead,
            None,
            None,
            t("2025-01-01T01:00:00Z"),
        );
        assert_eq!(s, later);
    }

    #[test]
    fn several_silent_agents_are_listed_and_failures_come_first() {
        let now = t("2025-01-01T00:05:00Z");
        let v = silent(3, 1, &[("a", Some("2025-01-01T00:01:00Z")), ("b", None)]);
        let s = next_status(None, Some(1), &v, None, None, now);
        let r = get(&s, ConditionType::Ready);
        assert!(
            r.message.starts_with(
                "attached on 1 of 3 nodes; the agents on 2 nodes have not reported within 120s: \
                 a (has not reported since 2025-01-01T00:01:00Z), b (has never reported); check"
            ),
            "{}",
            r.message
        );
        let mut both = v.clone();
        both.failed = 1;
        both.failures = view(1, 0, 1).failures;
        let s = next_status(None, Some(1), &both, None, None, now);
        assert_eq!(get(&s, ConditionType::Ready).reason, "Failed");
        let d = get(&s, ConditionType::Degraded);
        assert!(d.message.contains("syntax error") && d.message.contains("b (has never reported)"));
    }

    #[test]
    fn an_invalid_selector_makes_it_not_ready_with_the_problem_instead_of_no_targets() {
        let problem = "spec.selector.matchExpressions[0].operator: \"Equals\" is not a label selector operator; use In, NotIn, Exists or DoesNotExist";
        let s = next_status(
            None,
            Some(2),
            &view(0, 0, 0),
            Some(problem),
            None,
            t("2025-01-01T00:00:00Z"),
        );
        for c in [ConditionType::Ready, ConditionType::Degraded] {
            let c = get(&s, c);
            assert_eq!(c.reason, INVALID_SELECTOR);
            assert_eq!(c.message, problem);
        }
        assert_eq!(get(&s, ConditionType::Ready).status, "False");
        assert_eq!(get(&s, ConditionType::Degraded).status, "True");
    }
}
