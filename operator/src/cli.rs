//! Command line and environment.
use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "sonde-operator",
    version,
    about = "Sonde operator: resources → NodeAssignments → status"
)]
pub struct Args {
    /// Address of the /metrics and /healthz listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sonde-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "sonde-operator")]
    pub lease_name: String,
    /// Identity in the Lease (default: POD_NAME, else hostname-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Run one assignment pass over the current cluster state and exit, without leader election
    /// (for benchmarks: measure CPU and memory of a full reconciliation).
    #[arg(long)]
    pub once: bool,
}

impl Args {
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "sonde-operator".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}
