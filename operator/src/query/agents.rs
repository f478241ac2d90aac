//! The agents a query asks: the pods of the agent DaemonSet (found by label in the release
//! namespace), one per node, reached at their pod IP.
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::QueryError;

/// How the agents are found and reached.
#[derive(Clone, Debug)]
pub struct AgentsConfig {
    pub namespace: String,
    /// Label selector of the agent pods.
    pub selector: String,
    pub port: u16,
    /// Set when the agents serve HTTPS.
    pub tls: Option<AgentTls>,
    /// How long one agent may take to answer.
    pub timeout: Duration,
}

/// What verifies the agents' certificate.
#[derive(Clone, Debug)]
pub struct AgentTls {
    /// The CA certificates that issued it (read once, at start-up).
    pub cas: Vec<reqwest::Certificate>,
    /// The name the certificate is for (the chart's `<release>-agent.<namespace>.svc`); unset, the
    /// pod IP must be in it.
    pub server_name: Option<String>,
}

/// One node's agent.
#[derive(Debug)]
pub struct Agent {
    pub node: String,
    /// `http(s)://host:port/`.
    pub base: reqwest::Url,
    pub client: reqwest::Client,
}

/// The agents of the nodes in `nodes` (all when empty), and the nodes whose agent cannot be
/// asked, with why.
pub async fn find(
    kube: &kube::Client,
    config: &AgentsConfig,
    nodes: &[String],
) -> Result<(Vec<Agent>, Vec<(String, String)>), QueryError> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &config.namespace);
    let listed = pods
        .list(&ListParams::default().labels(&config.selector))
        .await
        .map_err(|source| QueryError::ListAgents {
            namespace: config.namespace.clone(),
            selector: config.selector.clone(),
            source,
        })?;
    let by_node = pick(listed.items, nodes);
    let mut agents = Vec::new();
    let mut failed = Vec::new();
    for node in nodes {
        if !by_node.contains_key(node) {
            failed.push((
                node.clone(),
                format!("no agent pod (selector {}) on this node", config.selector),
            ));
        }
    }
    for (node, ip) in by_node {
        match ip.and_then(|ip| agent(config, &node, ip)) {
            Ok(agent) => agents.push(agent),
            Err(why) => failed.push((node, why)),
        }
    }
    Ok((agents, failed))
}

/// The agent pod to ask on each node (of `nodes`; all when empty): its IP, or why there is none.
/// A running one with an IP before others (a DaemonSet being rolled has two on a node); pods
/// being deleted and pods not scheduled yet are left out.
fn pick(pods: Vec<Pod>, nodes: &[String]) -> BTreeMap<String, Result<IpAddr, String>> {
    let mut by_node: BTreeMap<String, Result<IpAddr, String>> = BTreeMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some()
            || (!nodes.is_empty() && !nodes.contains(&node))
        {
            continue;
        }
        let status = pod.status.unwrap_or_default();
        let ip = match status.pod_ip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => Ok(ip),
            Some(Err(_)) | None => Err(format!("agent pod {name} has no IP yet")),
        };
        let running = status.phase.as_deref() == Some("Running");
        match by_node.get(&node) {
            Some(Ok(_)) if !running => {}
            _ => {
                by_node.insert(node, ip);
            }
        }
    }
    by_node
}

fn agent(config: &AgentsConfig, node: &str, ip: IpAddr) -> Result<Agent, String> {
    let addr = SocketAddr::new(ip, config.port);
    let builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .no_proxy();
    let (builder, base) = match &config.tls {
        None => (builder, format!("http://{addr}")),
        Some(tls) => {
            let mut builder = builder.use_rustls_tls().tls_built_in_root_certs(false);
            for ca in &tls.cas {
                builder = builder.add_root_certificate(ca.clone());
            }
            match &tls.server_name {
                // The certificate names the agents' Service: asked by that name, connected to
                // this pod.
                Some(name) => (
                    builder.resolve(name, addr),
                    format!("https://{name}:{}", config.port),
                ),
                None => (builder, format!("https://{addr}")),
            }
        }
    };
    let client = builder
        .build()
        .map_err(|e| format!("cannot make an HTTP client for the agent at {addr}: {e}"))?;
    let base = reqwest::Url::parse(&base).map_err(|e| format!("{base} is no URL: {e}"))?;
    Ok(Agent {
        node: node.to_owned(),
        base,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, ip: Option<&str>, phase: &str, deleted: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "deletionTimestamp": deleted.then_some("2026-12-07T00:00:00Z"),
            },
            "spec": {"nodeName": node, "containers": []},
            "status": {"podIP": ip, "phase": phase},
        }))
        .expect("a pod")
    }

    #[test]
    fn one_pod_per_node_a_running_one_with_an_ip_first() {
        let pods = vec![
            pod("a-old", Some("a"), Some("10.0.0.1"), "Running", false),
            pod("a-new", Some("a"), None, "Pending", false),
            pod("b-gone", Some("b"), Some("10.0.0.2"), "Running", true),
            pod("b-new", Some("b"), None, "Pending", false),
            pod("c", Some("c"), Some("10.0.0.3"), "Running", false),
            pod("unscheduled", None, None, "Pending", false),
        ];
        let picked = pick(pods.clone(), &[]);
        let ip = |s: &str| Ok(s.parse::<IpAddr>().expect("an IP"));
        assert_eq!(
            picked.get("a"),
            Some(&ip("10.0.0.1")),
            "the running pod of a rollout"
        );
        assert_eq!(
            picked.get("b"),
            Some(&Err("agent pod b-new has no IP yet".to_owned())),
            "a pod being deleted is not asked"
        );
        assert_eq!(picked.get("c"), Some(&ip("10.0.0.3")));
        assert_eq!(picked.len(), 3);
        let only = pick(pods, &["c".to_owned(), "z".to_owned()]);
        assert_eq!(only.keys().collect::<Vec<_>>(), ["c"]);
    }
}
