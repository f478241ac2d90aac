//! `sonde-operator uninstall`: what the chart's pre-delete hook Job runs before `helm uninstall`
//! removes the operator and the agents. Without it, every Tracepoint, DynamicLog and
//! BpftraceScript keeps Sonde's finalizer with nobody left to remove it: deleting one, its
//! namespace or the CRDs hangs in Terminating forever.
//!
//! It deletes every resource of the three kinds; while an operator still leads (the hook runs
//! before helm deletes the Deployment) that operator finalizes them the usual way, its agents
//! removing the probes. Once no operator leads, or after `timeout`, it removes Sonde's finalizer
//! from whatever is left itself. With no operator left it also deletes the NodeAssignments, which
//! nothing would update any more (a running operator would only write them again).
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use sonde_api::{BpftraceScript, DynamicLog, FINALIZER, NodeAssignment, Tracepoint};
use tracing::{info, warn};

use crate::resources::SondeResource;

/// How often the remaining resources are listed again while waiting.
const POLL: Duration = Duration::from_secs(1);
/// After removing the finalizers, how long the API server gets to delete the objects.
const AFTER_STRIP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error(
        "cannot {verb} {kind}: {source}; the uninstall identity needs {verb} on {kind} (the chart's <release>-uninstall ClusterRole)"
    )]
    Api {
        verb: &'static str,
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot {verb} {kind} {name}: {source}")]
    Object {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot read the operator's Lease {namespace}/{name}: {source}; the uninstall identity needs get on leases in {namespace}"
    )]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "still present {}s after Sonde's finalizer was removed: {remaining}; another finalizer holds them \
         (kubectl get <kind> <name> -o jsonpath='{{.metadata.finalizers}}' names it)",
        AFTER_STRIP.as_secs()
    )]
    Stuck { remaining: String },
}

/// Where the operator's leader Lease is, and how long a leading operator gets.
#[derive(Clone, Debug)]
pub struct Options {
    pub lease_namespace: String,
    pub lease_name: String,
    /// How long a leading operator gets to finalize the deleted resources.
    pub timeout: Duration,
}

/// What an uninstall did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Resources whose deletion this run requested.
    pub deleted: usize,
    /// Resources whose finalizer this run removed (no operator finalized them).
    pub finalizers_removed: usize,
    /// NodeAssignments deleted (only when no operator leads).
    pub node_assignments_deleted: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uninstall: deleted {} Tracepoints, DynamicLogs and BpftraceScripts (removed Sonde's finalizer from {} the operator did not finalize); deleted {} NodeAssignments",
            self.deleted, self.finalizers_removed, self.node_assignments_deleted
        )
    }
}

pub async fn run(client: Client, opts: &Options) -> Result<Summary, UninstallError> {
    let mut summary = Summary {
        deleted: delete_all::<Tracepoint>(&client).await?
            + delete_all::<DynamicLog>(&client).await?
            + delete_all::<BpftraceScript>(&client).await?,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let mut stripped_at: Option<tokio::time::Instant> = None;
    loop {
        let remaining = remaining(&client).await?;
        if remaining.is_empty() {
            break;
        }
        if let Some(at) = stripped_at {
            if at.elapsed() > AFTER_STRIP {
                return Err(UninstallError::Stuck {
                    remaining: remaining
                        .iter()
                        .map(|r| r.describe())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        } else {
            let leader = leader(&client, opts, Timestamp::now()).await?;
            let timed_out = tokio::time::Instant::now() >= deadline;
            if leader.is_none() || timed_out {
                match &leader {
                    None => info!(
                        remaining = remaining.len(),
                        "no operator leads: removing Sonde's finalizer from the remaining resources"
                    ),
                    Some(holder) => warn!(
                        remaining = remaining.len(),
                        %holder,
                        timeout_s = opts.timeout.as_secs(),
                        "the operator did not finalize every resource in time: removing Sonde's finalizer"
                    ),
                }
                for r in &remaining {
                    if r.strip_finalizer(&client).await? {
                        summary.finalizers_removed += 1;
                    }
                }
                stripped_at = Some(tokio::time::Instant::now());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    if leader(&client, opts, Timestamp::now()).await?.is_none() {
        summary.node_assignments_deleted = delete_node_assignments(&client).await?;
    } else {
        info!(
            "an operator still leads: NodeAssignments stay (each is empty now); they go with the nodeassignments.sonde.dev CRD"
        );
    }
    Ok(summary)
}

/// Every `K` in the cluster.
async fn list_all<K: SondeResource>(client: &Client) -> Result<Vec<K>, UninstallError> {
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|source| UninstallError::Api {
            verb: "list",
            kind: K::KIND,
            source,
        })
}

/// Requests deletion of every `K`; returns how many deletions this call requested.
async fn delete_all<K: SondeResource>(client: &Client) -> Result<usize, UninstallError> {
    let mut deleted = 0;
    for obj in list_all::<K>(client).await? {
        if obj.meta().deletion_timestamp.is_some() {
            continue;
        }
        let name = obj.name_any();
        let api = K::api(client.clone(), obj.namespace().as_deref());
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                info!(kind = K::KIND, namespace = obj.namespace().unwrap_or_default(), %name, "deleted");
                deleted += 1;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(UninstallError::Object {
                    verb: "delete",
                    kind: K::KIND,
                    name,
                    source,
                });
            }
        }
    }
    Ok(deleted)
}

/// A resource that is still there.
struct Remaining {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    finalizers: Vec<String>,
    resource_version: Option<String>,
}

impl Remaining {
    fn describe(&self) -> String {
        let ns = self
            .namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        format!(
            "{}/{ns}{} (finalizers {:?})",
            self.kind, self.name, self.finalizers
        )
    }

    /// Removes Sonde's finalizer (keeping any other); false if it was not there (any more).
    async fn strip_finalizer(&self, client: &Client) -> Result<bool, UninstallError> {
        if !self.finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(false);
        }
        let result = match self.kind {
            Tracepoint::KIND => self.patch::<Tracepoint>(client).await,
            DynamicLog::KIND => self.patch::<DynamicLog>(client).await,
            _ => self.patch::<BpftraceScript>(client).await,
        };
        match result {
            Ok(()) => {
                info!(resource = %self.describe(), "removed Sonde's finalizer");
                Ok(true)
            }
            // Gone, or changed meanwhile (the next round looks at it again).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(source) => Err(UninstallError::Object {
                verb: "remove the finalizer of",
                kind: self.kind,
                name: self.name.clone(),
                source,
            }),
        }
    }

    async fn patch<K: SondeResource>(&self, client: &Client) -> Result<(), kube::Error> {
        let keep: Vec<&String> = self.finalizers.iter().filter(|f| *f != FINALIZER).collect();
        // The resourceVersion makes this a compare-and-swap: a finalizer added meanwhile is not lost.
        let body = serde_json::json!({
            "metadata": { "resourceVersion": self.resource_version, "finalizers": keep }
        });
        K::api(client.clone(), self.namespace.as_deref())
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(body))
            .await
            .map(drop)
    }
}

async fn remaining(client: &Client) -> Result<Vec<Remaining>, UninstallError> {
    let mut out = remaining_of::<Tracepoint>(client).await?;
    out.extend(remaining_of::<DynamicLog>(client).await?);
    out.extend(remaining_of::<BpftraceScript>(client).await?);
    Ok(out)
}

async fn remaining_of<K: SondeResource>(client: &Client) -> Result<Vec<Remaining>, UninstallError> {
    Ok(list_all::<K>(client)
        .await?
        .into_iter()
        .map(|o| Remaining {
            kind: K::KIND,
            namespace: o.namespace(),
            name: o.name_any(),
            finalizers: o.finalizers().to_vec(),
            resource_version: o.resource_version(),
        })
        .collect())
}

/// The identity holding the operator's Lease, if it holds it now.
async fn leader(
    client: &Client,
    opts: &Options,
    now: Timestamp,
) -> Result<Option<String>, UninstallError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let lease = api
        .get_opt(&opts.lease_name)
        .await
        .map_err(|source| UninstallError::Lease {
            namespace: opts.lease_namespace.clone(),
            name: opts.lease_name.clone(),
            source,
        })?;
    Ok(lease.and_then(|l| live_holder(&l, now)))
}

/// The holder of a Lease that has not run out at `now`.
fn live_holder(lease: &Lease, now: Timestamp) -> Option<String> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let expires = renewed.checked_add(duration).ok()?;
    (expires > now).then(|| holder.to_owned())
}

async fn delete_node_assignments(client: &Client) -> Result<usize, UninstallError> {
    let api: Api<NodeAssignment> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| UninstallError::Api {
            verb: "list",
            kind: "NodeAssignment",
            source,
        })?;
    let mut deleted = 0;
    for na in list.items {
        let name = na.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(UninstallError::Object {
                    verb: "delete",
                    kind: "NodeAssignment",
                    name,
                    source,
                });
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: &str, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_leads_only_until_it_runs_out_and_only_with_a_holder() {
        let now: Timestamp = "2025-01-01T00:00:10Z".parse().unwrap();
        let fresh = lease("sonde-operator-0", "2025-01-01T00:00:00Z", 15);
        assert_eq!(
            live_holder(&fresh, now).as_deref(),
            Some("sonde-operator-0")
        );
        let expired = lease("sonde-operator-0", "2025-01-01T00:00:00Z", 5);
        assert_eq!(live_holder(&expired, now), None);
        let released = lease("", "2025-01-01T00:00:09Z", 15);
        assert_eq!(live_holder(&released, now), None);
        assert_eq!(live_holder(&Lease::default(), now), None);
    }
}
