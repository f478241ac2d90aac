//! Tracepoint (profiler) runtime. STUB: being written by its owner; until then it reports the runtime as unavailable.
//!
//! Contract used by the probe manager (same shape as the bpftrace runtime):
//! - `ProfilerShared::new(registry: &mut Registry) -> ProfilerShared`: once at startup (metrics, shared kernel state).
//! - `ProfilerProbe::start(ctx: &ProbeContext, probe: &AssignedProbe, spec: &TracepointSpec, targets: &[TargetProcess]) -> ProfilerProbe`
//!   never fails synchronously: problems show in `status()`.
//! - `ProfilerProbe::status(&self) -> RuntimeStatus`
//! - `ProfilerProbe::update(&mut self, probe, spec, targets)` (async): new generation or new target processes.
//! - `ProfilerProbe::stop(self)` (async): detach everything this probe attached.
use prometheus_client::registry::Registry;
use sonde_api::{AssignedProbe, TracepointSpec};

use super::unavailable::UnavailableProbe;
use super::{ProbeContext, RuntimeStatus};
use crate::targets::TargetProcess;

/// State shared by every probe of this kind.
#[derive(Debug, Default)]
pub struct ProfilerShared {}

impl ProfilerShared {
    pub fn new(_registry: &mut Registry) -> ProfilerShared {
        ProfilerShared {}
    }
}

pub struct ProfilerProbe {
    unavailable: UnavailableProbe,
}

impl ProfilerProbe {
    pub fn start(
        _ctx: &ProbeContext,
        _probe: &AssignedProbe,
        _spec: &TracepointSpec,
        _targets: &[TargetProcess],
    ) -> ProfilerProbe {
        ProfilerProbe {
            unavailable: UnavailableProbe::new("Tracepoint (profiler)", "not written yet"),
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
