//! Runtime for probe kinds this agent version cannot run yet (Tracepoint, DynamicLog): it reports
//! Failed with a message saying so, so the path from resource to status is real before the runtime is.
use sonde_api::ProbeState;

use super::RuntimeStatus;

/// A received probe whose kind has no runtime here.
#[derive(Clone, Debug)]
pub struct UnavailableProbe {
    message: String,
}

impl UnavailableProbe {
    /// `kind` is the owner's kind, `detail` what the runtime would do (e.g. "protocols/profiler").
    pub fn new(kind: &str, detail: &str) -> UnavailableProbe {
        UnavailableProbe {
            message: format!(
                "the {kind} runtime ({detail}) is not available in this agent version yet; \
                 the probe was received and will run once it lands"
            ),
        }
    }

    pub fn status(&self) -> RuntimeStatus {
        RuntimeStatus {
            state: ProbeState::Failed,
            message: self.message.clone(),
            targets_attached: 0,
            restarts: 0,
        }
    }
}
