//! Cluster mode: watches this node's NodeAssignment (and only it), applies its probes, and writes
//! the agent's status back to its status subresource.
//!
//! Status writes are JSON merge patches by field manager [`sonde_api::AGENT_MANAGER`], made when
//! something changed (coalesced to at most one per [`MIN_WRITE_GAP`]), plus a heartbeat every
//! [`HEARTBEAT`]; failed writes are retried with exponential backoff.
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use sonde_api::{NodeAssignment, NodeAssignmentStatus, NodeCapabilities, ProbeStatus};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::probes::ManagerHandle;
use crate::telemetry::{ResultLabels, Telemetry};

pub const MIN_WRITE_GAP: Duration = Duration::from_secs(1);
pub const HEARTBEAT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error(
        "cannot write the status of NodeAssignment {node}: {source}; if this is a permission error, \
         the agent needs RBAC to patch nodeassignments/status (see the chart's agent ClusterRole)"
    )]
    StatusWrite {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// What the cluster source needs from the rest of the agent.
pub struct KubeSource {
    pub client: kube::Client,
    pub node: String,
    pub manager: ManagerHandle,
    pub telemetry: Telemetry,
    pub capabilities: watch::Receiver<Option<NodeCapabilities>>,
    /// Set to true once the first desired state was applied.
    pub applied: watch::Sender<bool>,
}

impl KubeSource {
    /// Runs the watch and the status writer until the process ends.
    pub async fn run(self) {
        // metadata.generation of the applied spec; None while the NodeAssignment does not exist.
        let (observed_tx, observed_rx) = watch::channel(None::<i64>);
        let writer = StatusWriter {
            api: Api::all(self.client.clone()),
            node: self.node.clone(),
            statuses: self.manager.statuses(),
            capabilities: self.capabilities,
            observed: observed_rx,
            telemetry: self.telemetry,
        };
        tokio::spawn(writer.run());
        watch_assignment(
            self.client,
            self.node,
            self.manager,
            observed_tx,
            self.applied,
        )
        .await;
    }
}

async fn watch_assignment(
    client: kube::Client,
    node: String,
    manager: ManagerHandle,
    observed: watch::Sender<Option<i64>>,
    applied: watch::Sender<bool>,
) {
    let api: Api<NodeAssignment> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut found = false;
    // The object (uid) and generation last applied: the agent's own status writes come back as
    // events of the same generation (a status change does not bump it), and applying them again
    // made every status write cause the next, once a second.
    let mut applied_generation: Option<(Option<String>, i64)> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(na) | Event::InitApply(na)) => {
                found = true;
                let generation = na.metadata.generation.unwrap_or_default();
                let key = Some((na.metadata.uid.clone(), generation));
                if applied_generation == key {
                    continue;
                }
                info!(
                    generation,
                    probes = na.spec.probes.len(),
                    "applying NodeAssignment"
                );
                manager.apply(na.spec.probes).await;
                applied_generation = key;
                observed.send_if_modified(|seen| seen.replace(generation) != Some(generation));
                applied.send_replace(true);
            }
            Ok(Event::Delete(_)) => {
                found = false;
                applied_generation = None;
                info!("NodeAssignment {node} was deleted; stopping every probe");
                manager.apply(Vec::new()).await;
                observed.send_replace(None);
            }
            Ok(Event::Init) => found = false,
            Ok(Event::InitDone) => {
                if !found {
                    info!(
                        "NodeAssignment {node} does not exist yet; waiting for the operator to create it"
                    );
                    manager.apply(Vec::new()).await;
                    observed.send_replace(None);
                    applied.send_replace(true);
                }
            }
            Err(e) => warn!(
                error = %e,
                "watching NodeAssignment {node} failed; retrying (the agent needs get, list and watch on nodeassignments)"
            ),
        }
    }
}

struct StatusWriter {
    api: Api<NodeAssignment>,
    node: String,
    statuses: watch::Receiver<Vec<ProbeStatus>>,
    capabilities: watch::Receiver<Option<NodeCapabilities>>,
    observed: watch::Receiver<Option<i64>>,
    telemetry: Telemetry,
}

impl StatusWriter {
    async fn run(mut self) {
        let mut last_write: Option<Instant> = None;
        let mut backoff = MIN_WRITE_GAP;
        loop {
            let exists = self.observed.borrow().is_some();
            if exists {
                if let Some(last) = last_write {
                    tokio::time::sleep_until(last + MIN_WRITE_GAP).await;
                }
                last_write = Some(Instant::now());
                match self.write().await {
                    Ok(()) => {
                        self.telemetry
                            .status_writes
                            .get_or_create(&ResultLabels { result: "ok" })
                            .inc();
                        backoff = MIN_WRITE_GAP;
                    }
                    Err(KubeSourceError::StatusWrite {
                        source: kube::Error::Api(ref status),
                        ..
                    }) if status.code == 404 => {
                        // Deleted between the watch event and this write; the watch will tell us
                        // when it exists again.
                        info!(
                            "NodeAssignment {} is gone; status is written again once it exists",
                            self.node
                        );
                    }
                    Err(e) => {
                        self.telemetry
                            .status_writes
                            .get_or_create(&ResultLabels { result: "error" })
                            .inc();
                        warn!(error = %e, retry_in = ?backoff, "status write failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let heartbeat =
                last_write.map_or_else(|| Instant::now() + HEARTBEAT, |t| t + HEARTBEAT);
            // Wait for something to write: a change or the heartbeat.
            tokio::select! {
                Ok(()) = self.statuses.changed() => {}
                Ok(()) = self.capabilities.changed() => {}
                Ok(()) = self.observed.changed() => {}
                _ = tokio::time::sleep_until(heartbeat) => {}
            }
        }
    }

    async fn write(&self) -> Result<(), KubeSourceError> {
        let status = NodeAssignmentStatus {
            observed_generation: *self.observed.borrow(),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            last_update: Some(
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            capabilities: self.capabilities.borrow().clone(),
            probes: self.statuses.borrow().clone(),
        };
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        let params = PatchParams {
            field_manager: Some(sonde_api::AGENT_MANAGER.to_owned()),
            ..Default::default()
        };
        self.api
            .patch_status(&self.node, &params, &patch)
            .await
            .map(|_| ())
            .map_err(|source| KubeSourceError::StatusWrite {
                node: self.node.clone(),
                source,
            })
    }
}
