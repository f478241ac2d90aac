//! DynamicLog runtime. STUB: being written by its owner; until then it reports the runtime as unavailable.
//!
//! Contract used by the probe manager (same shape as the bpftrace runtime):
//! - `DynamicLogShared::new(registry: &mut Registry) -> DynamicLogShared`: once at startup (metrics, shared kernel state).
//! - `DynamicLogProbe::start(ctx: &ProbeContext, probe: &AssignedProbe, spec: &DynamicLogSpec, targets: &[TargetProcess]) -> DynamicLogProbe`
//!   never fails synchronously: problems show in `status()`.
//! - `DynamicLogProbe::status(&self) -> RuntimeStatus`
//! - `DynamicLogProbe::update(&mut self, probe, spec, targets)` (async): new generation or new target processes.
//! - `DynamicLogProbe::stop(self)` (async): detach everything this probe attached.
use prometheus_client::registry::Registry;
use sonde_api::{AssignedProbe, DynamicLogSpec};

use super::unavailable::UnavailableProbe;
use super::{ProbeContext, RuntimeStatus};
use crate::targets::TargetProcess;

/// State shared by every probe of this kind.
#[derive(Debug, Default)]
pub struct DynamicLogShared {}

impl DynamicLogShared {
    pub fn new(_registry: &mut Registry) -> DynamicLogShared {
        DynamicLogShared {}
    }
}

pub struct DynamicLogProbe {
    unavailable: UnavailableProbe,
}

impl DynamicLogProbe {
    pub fn start(
        _ctx: &ProbeContext,
        _probe: &AssignedProbe,
        _spec: &DynamicLogSpec,
        _targets: &[TargetProcess],
    ) -> DynamicLogProbe {
        DynamicLogProbe {
            unavailable: UnavailableProbe::new("DynamicLog", "not written yet"),
        }
    }

    pub fn status(&self) -> RuntimeStatus {
        self.unavailable.status()
    }

    pub async fn update(
        &mut self,
        _probe: &AssignedProbe,
        _spec: &DynamicLogSpec,
        _targets: &[TargetProcess],
    ) {
    }

    pub async fn stop(self) {}
}
