//! Reconciliation of one Tracepoint, DynamicLog or BpftraceScript, written once for the three kinds:
//! the finalizer, ttl expiry, status aggregation and Events. Assignment itself happens in the
//! assignment pass, which every change of these resources wakes.
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use sonde_api::{ConditionType, FINALIZER, OPERATOR_MANAGER, ResourceStatus, Targeting};
use tracing::{Instrument, debug, info_span, warn};

use crate::context::Context;
use crate::error::Error;
use crate::resources::SondeResource;
use crate::status::{self, Transition};
use crate::ttl;
use crate::validate;

/// Longest wait between two reconciliations of an unchanged resource.
const RESYNC: Duration = Duration::from_secs(300);
/// After this long, deletion stops waiting for agents (and says so in an Event).
const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);

pub async fn reconcile<K: SondeResource>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let name = obj.name_any();
    let namespace = obj.namespace();
    let span = info_span!("reconcile", kind = K::KIND, %name, namespace = namespace.as_deref().unwrap_or_default());
    let api = K::api(ctx.client.clone(), namespace.as_deref());
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(o) => apply(&*o, &ctx).await,
            finalizer::Event::Cleanup(o) => cleanup(&*o, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|source| match source {
        // Keep "waiting for agents" recognizable for the error policy.
        finalizer::Error::CleanupFailed(e @ Error::CleanupPending { .. }) => e,
        source => Error::Finalizer {
            kind: K::KIND,
            name,
            source: Box::new(source),
        },
    });
    ctx.metrics.reconciled(K::KIND, started.elapsed());
    if let Err(e) = &result
        && !e.is_cleanup_pending()
        && !e.is_stale_finalizer_patch()
    {
        ctx.metrics.failed(K::KIND, e.metric_label());
    }
    result
}

pub fn error_policy<K: SondeResource>(obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    if error.is_cleanup_pending() {
        tracing::debug!(kind = K::KIND, name = %obj.name_any(), %error, "waiting for agents");
        return Action::requeue(Duration::from_secs(2));
    }
    if error.is_stale_finalizer_patch() {
        debug!(kind = K::KIND, name = %obj.name_any(), %error, "finalizer patch made from a stale copy; retrying");
        return Action::requeue(Duration::from_secs(1));
    }
    warn!(kind = K::KIND, name = %obj.name_any(), %error, "reconcile failed; retrying in 10 s");
    Action::requeue(Duration::from_secs(10))
}

async fn apply<K: SondeResource>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let meta = obj.meta();
    let expires_at = ttl::expires_at(meta.creation_timestamp.as_ref(), obj.spec().ttl())
        .unwrap_or_else(|e| {
            warn!(error = %e, "ttl ignored");
            None
        });
    let id = obj.probe_id();
    let uid = meta.uid.as_deref().unwrap_or_default();
    let assignments = ctx.stores.node_assignments.state();
    let view = status::observe(
        &id,
        uid,
        meta.generation.unwrap_or_default(),
        now,
        assignments.iter().map(|a| &**a),
    );
    // The same check that leaves the resource out of the assignments says why here.
    let invalid = validate::check(obj).err().map(|e| e.to_string());
    let prev = obj.status();
    let next = status::next_status(
        prev,
        meta.generation,
        &view,
        invalid.as_deref(),
        expires_at,
        now,
    );
    if prev != Some(&next) {
        patch_status(obj, &next, ctx).await?;
        for transition in status::transitions(prev, &next) {
            if transition.condition == ConditionType::Expired {
                // The assignment pass has its own timer; this only makes removal immediate.
                ctx.assignments_changed.notify_one();
            }
            publish(ctx, obj, transition_event(&transition)).await;
        }
    }
    Ok(Action::requeue(next_look(
        now,
        expires_at,
        view.next_silent_at,
    )))
}

/// When to reconcile an unchanged resource again: at its ttl expiry, or when an agent that is fresh
/// now would turn silent (a dead agent sends no event; a live one's heartbeat triggers a
/// reconciliation before that), else after [`RESYNC`].
fn next_look(
    now: Timestamp,
    expires_at: Option<Timestamp>,
    silent_at: Option<Timestamp>,
) -> Duration {
    [expires_at, silent_at]
        .into_iter()
        .flatten()
        .filter(|at| *at > now)
        .filter_map(|at| Duration::try_from(at.duration_since(now)).ok())
        .map(|d| d + Duration::from_millis(200))
        .fold(RESYNC, Duration::min)
}

async fn cleanup<K: SondeResource>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let id = obj.probe_id();
    let uid = obj.meta().uid.as_deref().unwrap_or_default();
    let assignments = ctx.stores.node_assignments.state();
    let nodes = status::nodes_still_running(&id, uid, now, assignments.iter().map(|a| &**a));
    if nodes.is_empty() {
        let note = format!("probe {id} removed from every node");
        publish(ctx, obj, event(EventType::Normal, "Deleted", note)).await;
        return Ok(Action::await_change());
    }
    let deleted_at = obj.meta().deletion_timestamp.as_ref().map(|t| t.0);
    if cleanup_waited(deleted_at, ctx.started, now) > CLEANUP_DEADLINE {
        let note = format!(
            "gave up waiting {}s for nodes {} to remove probe {id}; deleting anyway",
            CLEANUP_DEADLINE.as_secs(),
            nodes.join(", ")
        );
        publish(ctx, obj, event(EventType::Warning, "CleanupTimedOut", note)).await;
        return Ok(Action::await_change());
    }
    Err(Error::CleanupPending {
        id,
        nodes: nodes.join(", "),
    })
}

/// How long a deletion has waited for agents: since it was asked for, or since this operator
/// started if that was later — an operator back after a long outage gives the agents their time
/// again instead of giving up on every pending deletion at once.
fn cleanup_waited(deleted_at: Option<Timestamp>, started: Timestamp, now: Timestamp) -> Duration {
    let since = deleted_at.map_or(now, |d| d.max(started));
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

async fn patch_status<K: SondeResource>(
    obj: &K,
    status: &ResourceStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let name = obj.name_any();
    let api = K::api(ctx.client.clone(), obj.meta().namespace.as_deref());
    // Server-side apply, so fields that disappear from our status (failures, expiresAt) are removed.
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::KIND,
        "status": status,
    });
    let params = PatchParams::apply(OPERATOR_MANAGER).force();
    api.patch_status(&name, &params, &Patch::Apply(body))
        .await
        .map_err(|source| Error::PatchStatus {
            kind: K::KIND,
            name,
            source,
        })?;
    Ok(())
}

fn transition_event(t: &Transition) -> Event {
    match t.condition {
        ConditionType::Ready => event(EventType::Normal, "Ready", t.message.clone()),
        ConditionType::Degraded => event(EventType::Warning, "Degraded", t.message.clone()),
        ConditionType::Expired => event(EventType::Normal, "Expired", t.message.clone()),
    }
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    // The Events API limits notes to 1 kB.
    let note = if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &note[..end])
    } else {
        note
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// Events are best effort: failing to publish one never fails a reconciliation.
async fn publish<K: SondeResource>(ctx: &Context, obj: &K, ev: Event) {
    match ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        Ok(()) => {}
        // The namespace is being deleted (its resources are finalized on the way): it takes no
        // new Events, and whoever deleted it would not see one. Not a failure.
        Err(e) if namespace_terminating(&e) => {
            debug!(reason = %ev.reason, "event not published: its namespace is being deleted");
        }
        Err(e) => {
            warn!(reason = %ev.reason, error = %e, "could not publish event");
            ctx.metrics.failed(K::KIND, "publish_event");
        }
    }
}

/// Whether the API server refused a write because its namespace is being deleted (the
/// NamespaceLifecycle admission plugin's cause `NamespaceTerminating`).
fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// What the API server answers an Event created in a namespace being deleted (v1.33).
    const TERMINATING: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"events.events.k8s.io \"web.18eef5901ac24330\" is forbidden: unable to create new content in namespace shop because it is being terminated","reason":"Forbidden","details":{"name":"web.18eef5901ac24330","group":"events.k8s.io","kind":"events","causes":[{"reason":"NamespaceTerminating","message":"namespace shop is being terminated","field":"metadata.namespace"}]},"code":403}"#;

    fn api_error(json: &str) -> kube::Error {
        kube::Error::Api(Box::new(serde_json::from_str(json).unwrap()))
    }

    #[test]
    fn an_event_refused_because_its_namespace_is_being_deleted_is_told_from_other_refusals() {
        assert!(namespace_terminating(&api_error(TERMINATING)));
        // RBAC's refusal is a Forbidden too, without that cause: still a failure.
        let rbac = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"events.events.k8s.io is forbidden: User \"op\" cannot create resource \"events\"","reason":"Forbidden","details":{"group":"events.k8s.io","kind":"events"},"code":403}"#;
        assert!(!namespace_terminating(&api_error(rbac)));
    }

    #[test]
    fn a_deletion_waits_for_agents_from_the_operators_start_if_it_came_later() {
        let deleted = t("2025-01-01T00:00:00Z");
        let early_start = t("2024-12-31T23:00:00Z");
        let now = t("2025-01-01T00:00:45Z");
        assert_eq!(
            cleanup_waited(Some(deleted), early_start, now),
            Duration::from_secs(45)
        );
        // Down for ten minutes: back at 00:10, the wait starts again.
        let late_start = t("2025-01-01T00:10:00Z");
        let now = t("2025-01-01T00:10:30Z");
        assert_eq!(
            cleanup_waited(Some(deleted), late_start, now),
            Duration::from_secs(30)
        );
        assert_eq!(cleanup_waited(None, early_start, now), Duration::ZERO);
    }

    #[test]
    fn an_unchanged_resource_is_looked_at_again_when_an_agent_would_turn_silent() {
        let now = t("2025-01-01T00:00:00Z");
        assert_eq!(next_look(now, None, None), RESYNC);
        let silent_at = Some(t("2025-01-01T00:01:30Z"));
        assert_eq!(
            next_look(now, None, silent_at),
            Duration::from_millis(90_200)
        );
        let expiry = Some(t("2025-01-01T00:00:10Z"));
        assert_eq!(
            next_look(now, expiry, silent_at),
            Duration::from_millis(10_200)
        );
        // Times already past do not spin the controller.
        assert_eq!(
            next_look(now, Some(t("2024-12-31T23:00:00Z")), None),
            RESYNC
        );
    }
}
