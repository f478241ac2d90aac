//! One reflector per watched kind. Each fills a cache (`Stores`), wakes the assignment pass when
//! something that matters to assignments changed, and (for the three kinds and NodeAssignments)
//! feeds the controllers through shared subscriptions, so a controller triggered by an event
//! always finds that event already in the caches.
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use sonde_api::{BpftraceScript, DynamicLog, NodeAssignment, Tracepoint};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::resources::SondeResource;

/// Events buffered per shared subscriber before the reflector waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Caches of every kind the operator reads.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub tracepoints: Store<Tracepoint>,
    pub dynamic_logs: Store<DynamicLog>,
    pub bpftrace_scripts: Store<BpftraceScript>,
    pub node_assignments: Store<NodeAssignment>,
}

/// Streams for the controllers: their own kind, and NodeAssignments (for status aggregation).
pub struct Subscriptions {
    pub tracepoints: (ReflectHandle<Tracepoint>, ReflectHandle<NodeAssignment>),
    pub dynamic_logs: (ReflectHandle<DynamicLog>, ReflectHandle<NodeAssignment>),
    pub bpftrace_scripts: (ReflectHandle<BpftraceScript>, ReflectHandle<NodeAssignment>),
}

impl Stores {
    /// Waits until every cache holds its initial list.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pods.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.tracepoints.wait_until_ready().await?;
        self.dynamic_logs.wait_until_ready().await?;
        self.bpftrace_scripts.wait_until_ready().await?;
        self.node_assignments.wait_until_ready().await
    }
}

/// Starts the reflectors on `tasks`; `changed` is notified when assignments may have to change.
pub fn start(
    client: &Client,
    changed: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> (Stores, Subscriptions) {
    let wc = watcher::Config::default().any_semantic();

    let (pods, writer) = reflector::store();
    // Keep only what assignment reads: pods are the biggest cache by far.
    let stream = watcher(Api::<Pod>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(slim_pod);
    tasks.spawn(drive(
        "Pod",
        reflector::reflector(writer, stream),
        changed.clone(),
        pod_fingerprint,
    ));

    let (nodes, writer) = reflector::store();
    let stream = watcher(Api::<Node>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(|n: &mut Node| {
            n.managed_fields_mut().clear();
            n.status = None;
        });
    tasks.spawn(drive(
        "Node",
        reflector::reflector(writer, stream),
        changed.clone(),
        |n: &Node| fingerprint((n.uid(), n.labels())),
    ));

    let (node_assignments, na_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let na_sub = || na_writer.subscribe();
    let subs_na = (na_sub(), na_sub(), na_sub());

    let (tracepoints, tp_sub) = shared::<Tracepoint>(client, &wc, changed, tasks);
    let (dynamic_logs, dl_sub) = shared::<DynamicLog>(client, &wc, changed, tasks);
    let (bpftrace_scripts, bt_sub) = shared::<BpftraceScript>(client, &wc, changed, tasks);

    let subscriptions = match (subs_na, tp_sub, dl_sub, bt_sub) {
        ((Some(a), Some(b), Some(c)), Some(tp), Some(dl), Some(bt)) => Subscriptions {
            tracepoints: (tp, a),
            dynamic_logs: (dl, b),
            bpftrace_scripts: (bt, c),
        },
        // store_shared always supports subscribing; reaching this is a kube-runtime change.
        _ => unreachable!("shared stores hand out subscriptions"),
    };
    let stream = watcher(Api::<NodeAssignment>::all(client.clone()), wc)
        .default_backoff()
        .modify(|na: &mut NodeAssignment| na.managed_fields_mut().clear());
    // The agents' status writes do not change assignments: only spec (generation) and existence do.
    tasks.spawn(drive(
        "NodeAssignment",
        reflector::reflector(na_writer, stream),
        changed.clone(),
        |na| fingerprint((na.uid(), na.meta().generation)),
    ));

    let stores = Stores {
        pods,
        nodes,
        tracepoints,
        dynamic_logs,
        bpftrace_scripts,
        node_assignments,
    };
    (stores, subscriptions)
}

fn shared<K: SondeResource>(
    client: &Client,
    wc: &watcher::Config,
    changed: &Arc<Notify>,
    tasks: &mut JoinSet<()>,
) -> (Store<K>, Option<ReflectHandle<K>>) {
    let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let sub = writer.subscribe();
    let stream = watcher(Api::<K>::all(client.clone()), wc.clone())
        .default_backoff()
        .modify(|o: &mut K| {
            o.managed_fields_mut().clear();
        });
    // Status writes (ours) do not matter to assignments; spec changes and deletion marks do.
    let print = |o: &K| {
        let m = o.meta();
        fingerprint((&m.uid, m.generation, m.deletion_timestamp.is_some()))
    };
    tasks.spawn(drive(
        K::KIND,
        reflector::reflector(writer, stream),
        changed.clone(),
        print,
    ));
    (store, sub)
}

/// Polls a reflector and notifies `changed` when an object's fingerprint changes, one disappears,
/// or a (re)list completes.
async fn drive<K, S>(kind: &'static str, stream: S, changed: Arc<Notify>, print: impl Fn(&K) -> u64)
where
    K: Resource + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let relevant = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let key = key(&o);
                seen.insert(key, print(&o)) != Some(print(&o))
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(&key(&o));
                true
            }
            Ok(watcher::Event::Init) => false,
            Ok(watcher::Event::InitDone) => true,
            Err(e) => {
                // A missing CRD or RBAC rule shows up here; the watch keeps retrying once fixed.
                tracing::warn!(
                    kind,
                    error = %e,
                    "watch failed; retrying with backoff (are the CRDs from crds/ installed and the operator's RBAC applied?)"
                );
                false
            }
        };
        if relevant {
            changed.notify_one();
        }
    }
}

fn key<K: Resource>(o: &K) -> String {
    let m = o.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

fn fingerprint(h: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    h.hash(&mut hasher);
    hasher.finish()
}

fn pod_fingerprint(p: &Pod) -> u64 {
    let spec = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let status = p.status.as_ref();
    let containers: Vec<_> = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            (
                &c.name,
                &c.container_id,
                c.state.as_ref().is_some_and(|s| s.running.is_some()),
            )
        })
        .collect();
    fingerprint((
        p.uid(),
        p.labels(),
        spec,
        status.and_then(|s| s.phase.as_deref()),
        containers,
    ))
}

fn slim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    pod.annotations_mut().clear();
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    pod.spec = Some(PodSpec {
        node_name,
        ..Default::default()
    });
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}
