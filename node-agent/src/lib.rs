//! Sonde's node agent: turns this node's NodeAssignment (or, standalone, local manifests) into
//! running probes whose output lands in tables and Prometheus metrics.
//!
//! - [`source`]: where the desired probes come from (Kubernetes NodeAssignment, or `--manifests`).
//! - [`probes`]: the probe manager (diff desired vs running) and one runtime per probe kind.
//! - [`targets`]: which host processes a probe applies to (pods → cgroups → pids, process selectors).
//! - [`tables`]: the in-memory, budgeted store every probe writes rows to.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/v1/status`, `/v1/tables`.
//! - [`capabilities`] and [`ebpf`]: what this kernel can do, found out by loading Sonde's own eBPF.
//! - [`kernel_btf`]: offsets of kernel struct members, for eBPF programs that follow kernel pointers.
//! - [`resources`]: per-pod CPU, memory, I/O and network metrics of the profiled pods.
//! - [`telemetry`]: the agent's own metrics.

pub mod capabilities;
pub mod ebpf;
pub mod http;
pub mod kernel_btf;
pub mod probes;
pub mod resources;
pub mod source;
pub mod tables;
pub mod targets;
pub mod telemetry;
