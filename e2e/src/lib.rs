//! Sonde's end-to-end harness: a real etcd and kube-apiserver started as local processes, the CRDs and the
//! Helm chart's RBAC installed into them, separate identities for the operator, the agent and table
//! readers, fake pods backed by real processes in kubelet-style cgroups, and the real `sonde-operator`,
//! `sonde-agent` and Prometheus processes.
//!
//! Everything started here is owned by a [`process::Proc`] and stopped by PID when it is dropped (also on
//! panic); children also get `PR_SET_PDEATHSIG` from a long-lived spawner thread, so a killed test binary
//! takes them along.
//!
//! The operator and agent binaries are built by [`tools::build_sonde`] (`cargo build -p sonde-operator -p
//! sonde-agent`) before the first scenario, so `cargo test -p sonde-e2e` always tests the current code.

pub mod cluster;
pub mod control_plane;
pub mod controller_manager;
pub mod expect;
pub mod fake_pod;
pub mod helm;
pub mod kubeconfig;
pub mod kubectl;
pub mod observe;
pub mod peers;
pub mod pki;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod single_node;
pub mod sonde;
pub mod suite;
pub mod tools;
pub mod wait;

pub use cluster::Cluster;
