//! What the tests look at: NodeAssignments, the status of Sonde resources, Leases, the agent's HTTP API
//! and the bpftrace processes an agent runs.
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use sonde_api::{
    AssignedProbe, BpftraceScript, DynamicLog, NodeAssignment, ProbeState, ProbeStatus,
    ResourceStatus, Tracepoint,
};

use crate::wait;

/// A Sonde resource with the shared status.
pub trait HasStatus {
    fn resource_status(&self) -> Option<&ResourceStatus>;
    fn generation(&self) -> Option<i64>;
}

macro_rules! has_status {
    ($($kind:ty),*) => {$(
        impl HasStatus for $kind {
            fn resource_status(&self) -> Option<&ResourceStatus> {
                self.status.as_ref()
            }
            fn generation(&self) -> Option<i64> {
                self.metadata.generation
            }
        }
    )*};
}
has_status!(BpftraceScript, Tracepoint, DynamicLog);

/// The condition of this type, if set.
pub fn condition<'a>(status: &'a ResourceStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until the resource's condition `type_` has `status` for its current generation; returns the
/// whole status.
pub async fn wait_condition<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> Result<ResourceStatus>
where
    K: HasStatus + kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait::until(
        &format!("{name}: condition {type_}={status}"),
        timeout,
        || async {
            let obj = api.get(name).await?;
            let Some(st) = obj.resource_status() else {
                anyhow::bail!("no status yet");
            };
            let current = st.observed_generation == obj.generation();
            match condition(st, type_) {
                Some(c) if c.status == status && current => Ok(Some(st.clone())),
                _ => anyhow::bail!("status is {}", serde_json::to_string(st)?),
            }
        },
    )
    .await
}

/// The NodeAssignment of `node`, if there is one.
pub async fn node_assignment(client: &kube::Client, node: &str) -> Result<Option<NodeAssignment>> {
    let api: Api<NodeAssignment> = Api::all(client.clone());
    Ok(api.get_opt(node).await?)
}

/// Waits until `node`'s NodeAssignment holds a probe with this id that satisfies `check`.
pub async fn wait_assigned(
    client: &kube::Client,
    node: &str,
    id: &str,
    timeout: Duration,
    check: impl Fn(&AssignedProbe) -> bool,
) -> Result<AssignedProbe> {
    wait::until(
        &format!("probe {id} in NodeAssignment {node}"),
        timeout,
        || async {
            let na = node_assignment(client, node)
                .await?
                .with_context(|| format!("no NodeAssignment {node}"))?;
            let found = na.spec.probes.iter().find(|p| p.id == id).cloned();
            match found {
                Some(p) if check(&p) => Ok(Some(p)),
                other => anyhow::bail!("probe is {}", serde_json::to_string(&other)?),
            }
        },
    )
    .await
}

/// Waits until `node`'s NodeAssignment no longer holds the probe.
pub async fn wait_unassigned(
    client: &kube::Client,
    node: &str,
    id: &str,
    timeout: Duration,
) -> Result<()> {
    wait::until(
        &format!("probe {id} gone from NodeAssignment {node}"),
        timeout,
        || async {
            let na = node_assignment(client, node).await?;
            let present = na.is_some_and(|na| na.spec.probes.iter().any(|p| p.id == id));
            Ok((!present).then_some(()))
        },
    )
    .await
}

/// Waits until the agent of `node` reports the probe in `state`.
pub async fn wait_probe_state(
    client: &kube::Client,
    node: &str,
    id: &str,
    state: ProbeState,
    timeout: Duration,
) -> Result<ProbeStatus> {
    wait::until(
        &format!("agent status of {id} on {node} = {state:?}"),
        timeout,
        || async {
            let na = node_assignment(client, node)
                .await?
                .with_context(|| format!("no NodeAssignment {node}"))?;
            let st = na
                .status
                .as_ref()
                .and_then(|s| s.probes.iter().find(|p| p.id == id).cloned());
            match st {
                Some(p) if p.state == state => Ok(Some(p)),
                other => anyhow::bail!("probe status is {}", serde_json::to_string(&other)?),
            }
        },
    )
    .await
}

/// Holder identities of the Leases in `namespace`, by Lease name.
pub async fn lease_holders(
    client: &kube::Client,
    namespace: &str,
) -> Result<BTreeMap<String, String>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|l| {
            let holder = l.spec.as_ref()?.holder_identity.clone()?;
            Some((l.metadata.name.unwrap_or_default(), holder))
        })
        .collect())
}

/// GET on the agent with an optional bearer token: status code and body.
pub async fn agent_get(base: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("GET {base}{path}"))?;
    let code = resp.status().as_u16();
    Ok((code, resp.text().await.unwrap_or_default()))
}

/// Processes whose executable name is `bpftrace` and that descend from `ancestor`.
pub fn bpftrace_descendants(ancestor: u32) -> Vec<u32> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut bpftrace = Vec::new();
    for pid in crate::process::pids() {
        let Some(stat) = crate::process::stat(pid) else {
            continue;
        };
        parent.insert(pid, stat.ppid);
        if stat.comm == "bpftrace" && stat.state != "Z" {
            bpftrace.push(pid);
        }
    }
    bpftrace
        .into_iter()
        .filter(|pid| {
            let mut cur = *pid;
            for _ in 0..64 {
                match parent.get(&cur) {
                    Some(&p) if p == ancestor => return true,
                    Some(&p) if p > 1 => cur = p,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// Every live bpftrace process on the machine.
pub fn all_bpftrace() -> Vec<u32> {
    crate::process::processes_matching("bpftrace")
        .into_iter()
        .filter(|(pid, _, cmd)| {
            cmd.split_whitespace()
                .next()
                .is_some_and(|a| a.ends_with("bpftrace"))
                && crate::process::alive(*pid)
        })
        .map(|(pid, _, _)| pid)
        .collect()
}
