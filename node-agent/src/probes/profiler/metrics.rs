//! The profiler's own metrics (registered once by `ProfilerShared::new`).
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sonde_common::profiler::{DROP_KERNEL_STACK, DROP_MAP_FULL, DROP_USER_STACK};

/// Why a sample (or part of it) was lost: one of [`DROP_REASONS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// `reason` label value per `sonde_common::profiler::DROP_*` index.
pub const DROP_REASONS: [(u32, &str); 3] = [
    (DROP_MAP_FULL, "map_full"),
    (DROP_USER_STACK, "user_stack_lost"),
    (DROP_KERNEL_STACK, "kernel_stack_lost"),
];

#[derive(Clone, Debug, Default)]
pub struct ProfilerMetrics {
    /// Samples counted in the kernel and drained.
    pub samples: Counter,
    /// Samples lost or partly lost, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Samples whose user stack stopped before an entry point (missing frame pointers).
    pub truncated: Counter,
    /// CPU time the agent spent draining, symbolizing and writing rows.
    pub processing_cpu: Counter<f64>,
    /// Periods drained.
    pub periods: Counter,
    /// Sampling frequency in Hz (0 while the profiler is off).
    pub frequency: Gauge,
    /// Processes and cgroups selected in the kernel filter.
    pub selected: Gauge,
}

impl ProfilerMetrics {
    pub fn register(registry: &mut Registry) -> ProfilerMetrics {
        let m = ProfilerMetrics::default();
        for (_, reason) in DROP_REASONS {
            let _ = m.dropped.get_or_create(&DropLabels { reason });
        }
        registry.register(
            "sonde_profiler_samples",
            "CPU samples of profiled processes counted in the kernel",
            m.samples.clone(),
        );
        registry.register(
            "sonde_profiler_samples_dropped",
            "CPU samples lost (map_full) or whose user or kernel stack was lost",
            m.dropped.clone(),
        );
        registry.register(
            "sonde_profiler_truncated_samples",
            "CPU samples whose user stack ends before a process or thread entry point (no frame pointers)",
            m.truncated.clone(),
        );
        registry.register(
            "sonde_profiler_processing_cpu_seconds",
            "CPU time the agent spent draining, symbolizing and aggregating profiles",
            m.processing_cpu.clone(),
        );
        registry.register(
            "sonde_profiler_periods",
            "Profiling periods drained",
            m.periods.clone(),
        );
        registry.register(
            "sonde_profiler_frequency_hertz",
            "Sampling frequency per CPU (0: the profiler is off)",
            m.frequency.clone(),
        );
        registry.register(
            "sonde_profiler_selected_targets",
            "Processes and cgroups the profiler's kernel filter selects",
            m.selected.clone(),
        );
        m
    }
}
