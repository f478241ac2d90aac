//! Tracepoint (protocols) runtime. STUB: being written by its owner; until then it reports the runtime as unavailable.
//!
//! Contract used by the probe manager (same shape as the bpftrace runtime):
//! - `ProtocolsShared::new(registry: &mut Registry) -> ProtocolsShared`: once at startup (metrics, shared kernel state).
//! - `ProtocolProbe::start(ctx: &ProbeContext, probe: &AssignedProbe, spec: &TracepointSpec, targets: &[TargetProcess]) -> ProtocolProbe`
//!   never fails synchronously: problems show in `status()`.
//! - `ProtocolProbe::status(&self) -> RuntimeStatus`
//! - `ProtocolProbe::update(&mut self, probe, spec, targets)` (async): new generation or new target processes.
//! - `ProtocolProbe::stop(self)` (async): detach everything this probe attached.
use prometheus_client::registry::Registry;
use sonde_api::{AssignedProbe, TracepointSpec};

use super::unavailable::UnavailableProbe;
use super::{ProbeContext, RuntimeStatus};
use crate::targets::TargetProcess;

/// State shared by every probe of this kind.
#[derive(Debug, Default)]
pub struct ProtocolsShared {}

impl ProtocolsShared {
    pub fn new(_registry: &mut Registry) -> ProtocolsShared {
        ProtocolsShared {}
    }
}

pub struct ProtocolProbe {
    unavailable: UnavailableProbe,
}

impl ProtocolProbe {
    pub fn start(
        _ctx: &ProbeContext,
        _probe: &AssignedProbe,
        _spec: &TracepointSpec,
        _targets: &[TargetProcess],
    ) -> ProtocolProbe {
        ProtocolProbe {
            unavailable: UnavailableProbe::new("Tracepoint (protocols)", "not written yet"),
        }
    }

    pub fn status(&self) -> RuntimeStatus {
        self.unavailable.status()
    }

    pub async fn update(
        &mut self,
        _probe: &AssignedProbe,
        _spec: &TracepointSpec,
        _targets: &[TargetProcess],
    ) {
    }

    pub async fn stop(self) {}
}
