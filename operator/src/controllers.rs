//! Wiring, once this replica leads: reflectors, the assignment pass and one controller per kind.
use std::sync::Arc;

use futures::StreamExt;
use kube::Client;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use sonde_api::NodeAssignment;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::assignment;
use crate::auto_telemetry::AutoTelemetry;
use crate::context::Context;
use crate::metrics::Metrics;
use crate::reconcile::{error_policy, reconcile};
use crate::resources::{SondeResource, parse_probe_id};
use crate::stores;

/// Reconciliations of one kind in flight at once.
const CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("a cache's reflector stopped before its first list completed")]
    CacheNeverReady,
    #[error("{0} stopped; the operator exits so that it is restarted")]
    Stopped(&'static str),
}

/// Starts reflectors and waits until every cache has its first list.
pub async fn start(
    client: Client,
    metrics: Arc<Metrics>,
    identity: &str,
    auto_telemetry: AutoTelemetry,
    tasks: &mut JoinSet<()>,
) -> Result<(Arc<Context>, stores::Subscriptions), RunError> {
    let changed = Arc::new(Notify::new());
    let (stores, subscriptions) = stores::start(&client, &changed, tasks);
    let reporter = Reporter {
        controller: sonde_api::OPERATOR_MANAGER.into(),
        instance: Some(identity.into()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        stores,
        metrics,
        assignments_changed: changed,
        auto_telemetry,
        started: k8s_openapi::jiff::Timestamp::now(),
    });
    // Until then an empty cache would read as "no probes anywhere".
    ctx.stores
        .ready()
        .await
        .map_err(|_| RunError::CacheNeverReady)?;
    tracing::info!("caches ready");
    Ok((ctx, subscriptions))
}

/// Runs the assignment pass and the three controllers until one of them stops (they should not).
pub async fn run(
    ctx: Arc<Context>,
    subs: stores::Subscriptions,
    mut tasks: JoinSet<()>,
) -> RunError {
    tasks.spawn(assignment::sync::run(ctx.clone()));
    let (tp, tp_na) = subs.tracepoints;
    tasks.spawn(controller(
        tp,
        ctx.stores.tracepoints.clone(),
        tp_na,
        ctx.clone(),
    ));
    let (dl, dl_na) = subs.dynamic_logs;
    tasks.spawn(controller(
        dl,
        ctx.stores.dynamic_logs.clone(),
        dl_na,
        ctx.clone(),
    ));
    let (bt, bt_na) = subs.bpftrace_scripts;
    tasks.spawn(controller(
        bt,
        ctx.stores.bpftrace_scripts.clone(),
        bt_na,
        ctx.clone(),
    ));
    let _ = tasks.join_next().await;
    RunError::Stopped("a controller or reflector")
}

async fn controller<K: SondeResource>(
    own: ReflectHandle<K>,
    store: Store<K>,
    assignments: ReflectHandle<NodeAssignment>,
    ctx: Arc<Context>,
) {
    Controller::for_shared_stream(own, store)
        .with_config(Config::default().concurrency(CONCURRENCY))
        .watches_shared_stream(assignments, owners::<K>)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(kind = K::KIND, error = %e, "controller");
            }
        })
        .await;
    tracing::error!(kind = K::KIND, "controller stopped");
}

/// Resources of kind `K` with a probe in this NodeAssignment's spec or status (a deleted
/// resource's probe only remains in the status while its agent removes it).
pub fn owners<K: SondeResource>(na: Arc<NodeAssignment>) -> Vec<ObjectRef<K>> {
    let spec_ids = na.spec.probes.iter().map(|p| p.id.as_str());
    let status_ids = na
        .status
        .iter()
        .flat_map(|s| s.probes.iter().map(|p| p.id.as_str()));
    let mut refs: Vec<ObjectRef<K>> = spec_ids
        .chain(status_ids)
        .filter_map(parse_probe_id::<K>)
        .map(|(ns, name)| match ns {
            Some(ns) => ObjectRef::new(name).within(ns),
            None => ObjectRef::new(name),
        })
        .collect();
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs.dedup();
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auto_telemetry::AutoTelemetry;
    use sonde_api::{
        BpftraceScript, DynamicLog, NodeAssignmentSpec, ProbeState, ProbeStatus, Protocol,
        Tracepoint,
    };

    #[test]
    fn auto_telemetry_probes_have_no_resource_to_reconcile() {
        let auto = AutoTelemetry::new(&[Protocol::Http], 99, None, "sonde-system");
        let probes: Vec<_> = auto.features().iter().map(|f| f.probe(vec![])).collect();
        let status = probes
            .iter()
            .map(|p| ProbeStatus {
                id: p.id.clone(),
                owner_uid: p.owner.uid.clone(),
                generation: p.owner.generation,
                state: ProbeState::Attached,
                message: String::new(),
                targets_attached: 0,
                restarts: 0,
            })
            .collect();
        let na = Arc::new(NodeAssignment {
            metadata: Default::default(),
            spec: NodeAssignmentSpec {
                probe_count: probes.len() as u32,
                probes,
            },
            status: Some(sonde_api::NodeAssignmentStatus {
                probes: status,
                ..Default::default()
            }),
        });
        assert!(owners::<Tracepoint>(na.clone()).is_empty());
        assert!(owners::<DynamicLog>(na.clone()).is_empty());
        assert!(owners::<BpftraceScript>(na).is_empty());
    }
}
