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

    /// A finalizer patch refused because the object changed since the cached copy it was made
    /// from (its JSON-patch `test` failed: 422, or a conflict: 409). Routine right after a
    /// create, when a second reconcile runs before the watch delivers the finalizer just added;
    /// the change that made it stale wakes another reconcile anyway, so retry soon, quietly.
    pub fn is_stale_finalizer_patch(&self) -> bool {
        let Error::Finalizer { source, .. } = self else {
            return false;
        };
        match &**source {
            finalizer::Error::AddFinalizer(kube::Error::Api(s))
            | finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) => {
                s.code == 422 || s.code == 409
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finalizer_error(source: finalizer::Error<Error>) -> Error {
        Error::Finalizer {
            kind: "Tracepoint",
            name: "web".into(),
            source: Box::new(source),
        }
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("the test operation failed", "Invalid")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_finalizer_patch_made_from_a_stale_copy_is_told_from_real_failures() {
        let stale = finalizer_error(finalizer::Error::AddFinalizer(api_error(422)));
        assert!(stale.is_stale_finalizer_patch());
        let conflict = finalizer_error(finalizer::Error::RemoveFinalizer(api_error(409)));
        assert!(conflict.is_stale_finalizer_patch());
        let forbidden = finalizer_error(finalizer::Error::AddFinalizer(api_error(403)));
        assert!(!forbidden.is_stale_finalizer_patch());
        let pending = Error::CleanupPending {
            id: "Tracepoint/shop/web".into(),
            nodes: "node-a".into(),
        };
        assert!(!pending.is_stale_finalizer_patch());
    }
}
