//! Command line and environment.
use std::net::SocketAddr;

use clap::Parser;
use sonde_api::Protocol;

use crate::auto_telemetry::{AutoTelemetry, parse_protocol};

#[derive(Debug, Parser)]
#[command(
    name = "sonde-operator",
    version,
    about = "Sonde operator: resources → NodeAssignments → status"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// Cluster-wide protocol tracing: these protocols (comma-separated: http,dns,pgsql,mysql,redis)
    /// in every pod of every node outside the excluded namespaces. Empty: off.
    #[arg(long, value_delimiter = ',', value_parser = parse_protocol)]
    pub auto_protocols: Vec<Protocol>,
    /// Cluster-wide CPU profiling of every pod outside the excluded namespaces, at this many
    /// samples per second per CPU (1..1000). 0: off.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub auto_profiler_hz: u32,
    /// Namespaces whose pods auto-telemetry leaves alone (comma-separated; default kube-system).
    /// The operator's own namespace (--lease-namespace) is always excluded.
    #[arg(long, value_delimiter = ',')]
    pub auto_exclude_namespaces: Option<Vec<String>>,
    /// Serve every node's tables at /v1/tables here (asking each node's agent with the caller's
    /// token). Unset: off. The chart binds it to the pod's loopback (reached by port-forward).
    #[arg(long)]
    pub query_listen: Option<SocketAddr>,
    /// Namespace of the agent pods a table query asks.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sonde-system")]
    pub agent_namespace: String,
    /// Label selector of the agent pods a table query asks.
    #[arg(long, default_value = "app.kubernetes.io/component=agent")]
    pub agent_selector: String,
    /// Port the agents serve /v1/tables on.
    #[arg(long, default_value_t = 9440)]
    pub agent_port: u16,
    /// The agents serve HTTPS with a certificate from this CA (PEM).
    #[arg(long)]
    pub agent_ca_file: Option<std::path::PathBuf>,
    /// The name the agents' certificate is for (default: their pod IPs).
    #[arg(long, requires = "agent_ca_file")]
    pub agent_server_name: Option<String>,
    /// How long one agent may take to answer a table query.
    #[arg(long, default_value_t = 10)]
    pub agent_timeout_seconds: u64,
}

/// What to do instead of running the controllers.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Before Sonde is removed (the chart's pre-delete hook runs this): delete every Tracepoint,
    /// DynamicLog and BpftraceScript, let the leading operator finalize them, and remove Sonde's
    /// finalizer from what is left once no operator leads or --timeout-seconds passed, so that nothing
    /// stays Terminating without an operator.
    Uninstall(UninstallArgs),
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Namespace of the operator's leader-election Lease (the release namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sonde-system")]
    pub lease_namespace: String,
    /// Name of the operator's leader-election Lease.
    #[arg(long, default_value = "sonde-operator")]
    pub lease_name: String,
    /// How long a leading operator gets to finalize the deleted resources.
    #[arg(long, default_value_t = 90)]
    pub timeout_seconds: u64,
}

impl UninstallArgs {
    pub fn options(&self) -> crate::uninstall::Options {
        crate::uninstall::Options {
            lease_namespace: self.lease_namespace.clone(),
            lease_name: self.lease_name.clone(),
            timeout: std::time::Duration::from_secs(self.timeout_seconds),
        }
    }
}

impl Args {
    /// What the `--auto-*` flags switch on.
    pub fn auto_telemetry(&self) -> AutoTelemetry {
        AutoTelemetry::new(
            &self.auto_protocols,
            self.auto_profiler_hz,
            self.auto_exclude_namespaces.as_deref(),
            &self.lease_namespace,
        )
    }

    /// How a table query finds and reaches the agents; fails if the CA file cannot be read or
    /// holds no PEM certificate.
    pub fn agents(&self) -> anyhow::Result<crate::query::AgentsConfig> {
        let tls = match &self.agent_ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!(
                        "--agent-ca-file {}: cannot read it: {e}; mount the agents' CA there (the chart does, from agent.tls.secretName)",
                        path.display()
                    )
                })?;
                let cas = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    anyhow::anyhow!(
                        "--agent-ca-file {}: no PEM certificate in it: {e}; give the ca.crt of the agents' TLS Secret",
                        path.display()
                    )
                })?;
                Some(crate::query::AgentTls {
                    cas,
                    server_name: self.agent_server_name.clone(),
                })
            }
        };
        Ok(crate::query::AgentsConfig {
            namespace: self.agent_namespace.clone(),
            selector: self.agent_selector.clone(),
            port: self.agent_port,
            tls,
            timeout: std::time::Duration::from_secs(self.agent_timeout_seconds.max(1)),
        })
    }

    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "sonde-operator".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_telemetry_flags_parse_into_features_and_exclusions() {
        let args = Args::try_parse_from([
            "sonde-operator",
            "--lease-namespace",
            "sonde",
            "--auto-protocols",
            "http,dns",
            "--auto-profiler-hz",
            "49",
            "--auto-exclude-namespaces",
            "kube-system,batch",
        ])
        .unwrap();
        let auto = args.auto_telemetry();
        assert_eq!(auto.protocols, [Protocol::Http, Protocol::Dns]);
        assert_eq!(auto.profiler_hz, 49);
        let excluded: Vec<&str> = auto
            .excluded_namespaces
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(excluded, ["batch", "kube-system", "sonde"]);
    }

    #[test]
    fn uninstall_takes_the_lease_and_a_timeout() {
        let args = Args::try_parse_from([
            "sonde-operator",
            "uninstall",
            "--lease-namespace",
            "observability",
            "--timeout-seconds",
            "30",
        ])
        .unwrap();
        let Some(Command::Uninstall(u)) = args.command else {
            panic!("not the uninstall subcommand: {args:?}");
        };
        let opts = u.options();
        assert_eq!(opts.lease_namespace, "observability");
        assert_eq!(opts.lease_name, "sonde-operator");
        assert_eq!(opts.timeout, std::time::Duration::from_secs(30));
        assert!(
            Args::try_parse_from(["sonde-operator"])
                .unwrap()
                .command
                .is_none()
        );
    }

    #[test]
    fn unknown_protocols_and_out_of_range_frequencies_are_refused() {
        let err = Args::try_parse_from(["sonde-operator", "--auto-protocols", "http,grpc"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`grpc`"), "{err}");
        assert!(Args::try_parse_from(["sonde-operator", "--auto-profiler-hz", "5000"]).is_err());
    }
}
