//! The environment of the single-node scenario binaries (profiler, dynamic_log, protocols): a control
//! plane with the chart's RBAC, one fake node, fake pods on it in [`TEST_NAMESPACE`], one operator
//! replica and the node's agent.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result};
use kube::api::Api;
use sonde_api::ProbeState;

use crate::cluster::{Cluster, Install, TEST_NAMESPACE};
use crate::fake_pod::{self, FakePod, PodSpec};
use crate::observe::{self, HasStatus};
use crate::sonde::{Agent, AgentOptions, Operator};
use crate::suite;
use crate::tools::{self, SondeBinaries};
use crate::wait::CONVERGE;

/// Locks `m` even if a panicking scenario poisoned it: the guarded processes are still valid.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One fake node with its operator and agent.
pub struct SingleNode {
    // Drop order = field order: Sonde's processes first, then the fake pods, then the control plane,
    // then the runtime and the directory.
    pub operator: Mutex<Option<Operator>>,
    pub agent: Mutex<Option<Agent>>,
    pub pods: Mutex<Vec<FakePod>>,
    pub cluster: Cluster,
    pub bins: SondeBinaries,
    /// The fake node's name.
    pub node: &'static str,
    pub logs: PathBuf,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

impl SingleNode {
    /// Builds Sonde, starts the control plane in a fresh work dir named `dir_prefix…` and registers
    /// `node`; the operator and agent are started by [`SingleNode::start_sonde`].
    pub fn start(dir_prefix: &str, node: &'static str) -> Result<SingleNode> {
        let bins = tools::build_sonde()?;
        let rt = tokio::runtime::Runtime::new()?;
        let dir = suite::work_dir(dir_prefix)?;
        let logs = dir.path().join("logs");
        let cluster = rt.block_on(Cluster::start(dir.path(), Install { rbac: true }))?;
        rt.block_on(fake_pod::create_node(
            &cluster.client,
            node,
            &BTreeMap::new(),
        ))?;
        Ok(SingleNode {
            operator: Mutex::new(None),
            agent: Mutex::new(None),
            pods: Mutex::new(vec![]),
            cluster,
            bins,
            node,
            logs,
            rt,
            dir,
        })
    }

    /// Starts pod `name` (label `app: <app>`, one container running `command`) on the node.
    pub fn start_pod(
        &self,
        name: &str,
        app: &str,
        container: &str,
        command: Vec<String>,
    ) -> Result<()> {
        let spec = PodSpec {
            namespace: TEST_NAMESPACE.into(),
            name: name.into(),
            node: self.node.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            container: container.into(),
            command,
        };
        let pod = self
            .rt
            .block_on(FakePod::start(&self.cluster.client, &spec, &self.logs))?;
        lock(&self.pods).push(pod);
        Ok(())
    }

    /// Starts the operator and the node's agent, and waits until the agent is healthy.
    pub fn start_sonde(&self) -> Result<()> {
        self.start_sonde_with(&[])
    }

    /// Like [`SingleNode::start_sonde`], with extra operator arguments.
    pub fn start_sonde_with(&self, operator_args: &[String]) -> Result<()> {
        self.start_sonde_with_agent(operator_args, &AgentOptions::default())
    }

    /// Like [`SingleNode::start_sonde_with`], with the agent started with `agent`.
    pub fn start_sonde_with_agent(
        &self,
        operator_args: &[String],
        agent: &AgentOptions,
    ) -> Result<()> {
        let ids = self.cluster.identities()?;
        *lock(&self.operator) = Some(Operator::start_with_args(
            &self.bins,
            &ids.operator_kubeconfig,
            "sonde-operator-0",
            &self.logs,
            operator_args,
        )?);
        let mut agent = Agent::start_cluster_with(
            &self.bins,
            &self.cluster.agent_kubeconfig(self.node)?,
            self.node,
            &self.logs,
            agent,
        )?;
        self.rt.block_on(agent.wait_healthy())?;
        *lock(&self.agent) = Some(agent);
        Ok(())
    }

    /// Waits until resource `name` of `api` is Ready and the agent reports `probe_id` Attached.
    pub fn wait_ready_and_attached<K>(&self, api: &Api<K>, name: &str, probe_id: &str) -> Result<()>
    where
        K: HasStatus + kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.rt.block_on(observe::wait_condition(
            api, name, "Ready", "True", CONVERGE,
        ))?;
        self.rt.block_on(observe::wait_probe_state(
            &self.cluster.client,
            self.node,
            probe_id,
            ProbeState::Attached,
            CONVERGE,
        ))?;
        Ok(())
    }

    /// The agent's base URL.
    pub fn agent_url(&self) -> Result<String> {
        lock(&self.agent)
            .as_ref()
            .map(|a| a.url.clone())
            .context("no agent")
    }

    /// The bearer token of the table-reader identity.
    pub fn reader_token(&self) -> Result<String> {
        Ok(self.cluster.identities()?.reader_token.clone())
    }

    /// The bearer token of the metrics scraper identity (the agent's `/metrics` needs one).
    pub fn metrics_token(&self) -> Result<String> {
        Ok(self.cluster.identities()?.metrics_token.clone())
    }

    /// The tails of the operator's and the agent's logs.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Some(op) = lock(&self.operator).as_ref() {
            out += &suite::log_section("operator", op.proc.log_path(), 30);
        }
        if let Some(agent) = lock(&self.agent).as_ref() {
            out += &suite::log_section("agent", agent.proc.log_path(), 60);
        }
        out
    }
}
