//! Leader election on a coordination.k8s.io/v1 Lease, through kube-lease-manager: the lease lasts
//! 15 s and the holder renews it 10 s before it runs out (every 5 s); others take over when it expires.
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LEASE_SECONDS: u64 = 15;
const RENEW_BEFORE_EXPIRY_SECONDS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "cannot use Lease {namespace}/{name}: {source}; the operator needs get/create/patch on leases in {namespace}"
    )]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("leader election for Lease {namespace}/{name} stopped")]
    Stopped { namespace: String, name: String },
}

/// This replica's view of the lease.
pub struct Leadership {
    namespace: String,
    name: String,
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Starts competing for the lease (creating it if missing).
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_field_manager(format!("{}-lease", sonde_api::OPERATOR_MANAGER))
            .with_duration(LEASE_SECONDS)
            .with_grace(RENEW_BEFORE_EXPIRY_SECONDS)
            .build()
            .await
            .map_err(|source| LeaderError::Lease {
                namespace: namespace.into(),
                name: name.into(),
                source,
            })?;
        let (state, task) = manager.watch().await;
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
            state,
            task,
        })
    }

    /// Resolves once this replica holds the lease.
    pub async fn acquired(&mut self) -> Result<(), LeaderError> {
        let running = self.state.wait_for(|leader| *leader).await.is_ok();
        if running { Ok(()) } else { Err(self.stopped()) }
    }

    /// Resolves when this replica no longer holds the lease (or election stopped).
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the lease up so another replica takes over without waiting for it to expire.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!(lease = %self.name, "released the leader lease"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "could not release the leader lease")
            }
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "leader election task failed"),
        }
    }

    fn stopped(&self) -> LeaderError {
        LeaderError::Stopped {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}
