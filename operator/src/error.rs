//! Errors of a resource's reconciliation; each has a bounded metric label.
use kube::runtime::finalizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot write status of {kind} {name}: {source}; check the operator's RBAC on {kind}/status"
    )]
    PatchStatus {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name}: {source}")]
    Finalizer {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<finalizer::Error<Error>>,
    },
    /// Not a failure: deletion waits for the agents, and the error policy retries soon.
    #[error("{id} is still on nodes {nodes}; the finalizer stays until their agents removed it")]
    CleanupPending { id: String, nodes: String },
}

impl Error {
    /// Bounded value for the `error` metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::PatchStatus { .. } => "patch_status",
            Error::CleanupPending { .. } => "cleanup_pending",
            Error::Finalizer { source, .. } => match &**source {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                finalizer::Error::AddFinalizer(_) => "add_finalizer",
                finalizer::Error::RemoveFinalizer(_) => "remove_finalizer",
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => "finalizer",
            },
        }
    }

    /// Waiting for agents during deletion (retry soon, do not count as an error).
    pub fn is_cleanup_pending(&self) -> bool {
        self.metric_label() == "cleanup_pending"
    }
}
