//! `sonde-agent`: runs this node's probes, from its NodeAssignment (cluster) or from local YAML
//! files (`--manifests`, standalone), and serves their tables and metrics over HTTP.
// deny, not forbid: one audited call sets an allocator option in main.
#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use prometheus_client::registry::Registry;
use sonde_agent::http::{self, AppState, Authorizer, Mode, tls};
use sonde_agent::probes::protocols::governor::Shedding;
use sonde_agent::probes::{
    self, ProbeContext, bpftrace::BpftraceShared, dynamic_log::DynamicLogShared,
    profiler::ProfilerShared, protocols::ProtocolsShared,
};
use sonde_agent::source::{kube::KubeSource, manifests};
use sonde_agent::tables::{Budget, Store};
use sonde_agent::telemetry::Telemetry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// Sonde's node agent: eBPF probes from custom resources (or local manifests) into tables and metrics.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Standalone mode: run the Tracepoint, DynamicLog and BpftraceScript resources of this YAML file
    /// or directory (no Kubernetes at all; reloaded when files change).
    #[arg(long, value_name = "DIR|FILE")]
    manifests: Option<PathBuf>,
    /// Address of the HTTP listener: IP:PORT, HOST:PORT or :PORT (all interfaces)
    /// [default: 127.0.0.1:9440 standalone, 0.0.0.0:9440 in a cluster].
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    listen: Option<SocketAddr>,
    /// This node's name; its NodeAssignment has the same name (cluster mode) [default standalone: the host name].
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// The bpftrace binary used by BpftraceScript probes.
    #[arg(long, value_name = "PATH", default_value = "bpftrace")]
    bpftrace: PathBuf,
    /// Memory budget of each table, in MiB (oldest rows are evicted past it).
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    table_budget_mib: usize,
    /// Memory budget of all tables together, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    total_budget_mib: usize,
    /// A table no probe has written to for this long (its probes removed) is dropped with its
    /// rows and series (e.g. 1h; 0s keeps such tables until their rows are evicted).
    #[arg(long, env = "SONDE_ORPHAN_TABLE_TTL", value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    orphan_table_ttl: std::time::Duration,
    /// How often the CPU profiler drains, symbolizes and writes its samples (e.g. 10s).
    #[arg(long, env = "SONDE_PROFILER_PERIOD", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    profiler_period: std::time::Duration,
    /// How often protocol tracing writes a conn_stats row for each open connection with new
    /// traffic (cumulative bytes, conn_close 0); closed connections always get their final row.
    #[arg(long, env = "SONDE_CONN_STATS_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    conn_stats_interval: std::time::Duration,
    /// While the node's CPUs are saturated (tasks waiting for a CPU 5% of the time or more, or
    /// 95% busy) and capturing takes more than --saturated-capture-percent, protocol tracing
    /// captures fewer connections rather than take CPU from the workloads: every traced
    /// connection's bytes are still counted, but only a share of them
    /// (`sonde_capture_connection_share`) is parsed, each request seen counting for several in the
    /// RED histograms. False captures everything always.
    #[arg(long, env = "SONDE_SHED_WHEN_SATURATED", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    shed_when_saturated: bool,
    /// The CPU protocol capture may use on a saturated node before it sheds connections, in
    /// percent of the node's CPUs (1 on a 2-CPU node: a fiftieth of a CPU).
    #[arg(long, env = "SONDE_SATURATED_CAPTURE_PERCENT", value_name = "PERCENT", default_value_t = sonde_agent::probes::protocols::governor::DEFAULT_BUDGET_PERCENT, value_parser = parse_percent)]
    saturated_capture_percent: f64,
    /// In a cluster, `/metrics` needs a bearer token of a user allowed to get the non-resource URL
    /// /metrics (checked with TokenReview and SubjectAccessReview, as Kubernetes' own components
    /// do); false leaves it open, for a Prometheus that cannot send a token. Standalone it is open.
    #[arg(long, env = "SONDE_METRICS_AUTH", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    metrics_auth: bool,
    /// PEM certificate chain (server certificate first) for HTTPS, with --tls-key-file: the listener
    /// then serves HTTPS only, /healthz and /readyz included. A renewed file (cert-manager) is
    /// served from the next connection on; an unusable one keeps the previous certificate.
    #[arg(
        long,
        env = "SONDE_TLS_CERT_FILE",
        value_name = "PATH",
        requires = "tls_key_file"
    )]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file's certificate.
    #[arg(
        long,
        env = "SONDE_TLS_KEY_FILE",
        value_name = "PATH",
        requires = "tls_cert_file"
    )]
    tls_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not a percentage: give a number from 0 to 100, such as 1 or 2.5")]
struct PercentError {
    value: String,
}

/// `--saturated-capture-percent`: a number from 0 to 100.
fn parse_percent(value: &str) -> Result<f64, PercentError> {
    value
        .trim_end_matches('%')
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| PercentError {
            value: value.to_owned(),
        })
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{problem}; give IP:PORT such as 127.0.0.1:9440 (this machine only) or 0.0.0.0:9440 (all interfaces), :PORT for all interfaces, or HOST:PORT"
)]
struct ListenError {
    problem: String,
}

/// `--listen`: a socket address, `:PORT` (all interfaces) or `HOST:PORT` (resolved; its first IPv4
/// address if it has one, so that `localhost` is 127.0.0.1 like the standalone default).
fn parse_listen(value: &str) -> Result<SocketAddr, ListenError> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(ListenError {
            problem: format!("{value:?} has no port"),
        });
    };
    let port: u16 = port.parse().map_err(|_| ListenError {
        problem: format!("{port:?} is not a port number (0 to 65535)"),
    })?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| ListenError {
            problem: format!("cannot resolve {host:?}: {e}"),
        })?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| ListenError {
            problem: format!("{host:?} resolves to no address"),
        })
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(
        "the node name is missing: pass --node-name or set NODE_NAME (in a DaemonSet, from fieldRef spec.nodeName); to run without Kubernetes, pass --manifests DIR instead"
    )]
    NodeName,
    #[error(transparent)]
    Manifests(#[from] manifests::ManifestError),
    #[error(
        "cannot reach Kubernetes: {0}; set KUBECONFIG or run in a pod, or use --manifests DIR for standalone mode"
    )]
    Kube(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}; choose another address with --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// mimalloc instead of glibc's malloc: the protocol runtime allocates per event and per row, where
/// glibc's allocator cost about a third of the agent's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (include/mimalloc.h); libmimalloc-sys
/// exports no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Return freed memory to the OS at once: with the default delay, the memory freed after
    // start-up (object loading) stays resident while the agent idles (59 instead of 21 MiB).
    // Measured under protocol load: no CPU cost visible.
    // SAFETY: sets a process-wide allocator option, read by mimalloc on its next purge.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0)
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    // Two workers are plenty for an agent and keep its idle memory small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(StartError::Runtime);
    let result = runtime.and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Where desired probes come from.
enum Source {
    Manifests(PathBuf),
    Cluster(kube::Client),
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

async fn run(cli: Cli) -> Result<(), StartError> {
    // Before anything starts: a bad certificate or key stops the agent with the flag and file.
    let tls = match (cli.tls_cert_file.clone(), cli.tls_key_file.clone()) {
        (Some(cert), Some(key)) => Some(tls::server_config(tls::TlsFiles { cert, key })?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let source = match cli.manifests.clone() {
        Some(path) => {
            manifests::check(&path)?;
            Source::Manifests(path)
        }
        None => {
            if cli.node_name.as_deref().is_none_or(str::is_empty) {
                return Err(StartError::NodeName);
            }
            Source::Cluster(
                kube::Client::try_default()
                    .await
                    .map_err(StartError::Kube)?,
            )
        }
    };
    let (mode, client) = match &source {
        Source::Manifests(_) => (Mode::Standalone, None),
        Source::Cluster(c) => (Mode::Cluster, Some(c.clone())),
    };
    let node = cli
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(host_name);
    let listen = cli.listen.unwrap_or_else(|| match mode {
        Mode::Standalone => SocketAddr::from(([127, 0, 0, 1], 9440)),
        Mode::Cluster => SocketAddr::from(([0, 0, 0, 0], 9440)),
    });
    let span = info_span!("agent", node = %node, mode = mode.as_str());

    let mut registry = Registry::default();
    let telemetry = Telemetry::register(&mut registry, &node, mode.as_str());
    let (caps_tx, caps_rx) = watch::channel(None);
    let bpftrace = Arc::new(
        BpftraceShared::new(&mut registry, cli.bpftrace.clone()).with_capabilities(caps_rx.clone()),
    );
    let budget = Budget {
        per_table: cli.table_budget_mib << 20,
        total: cli.total_budget_mib << 20,
    };
    let store = Store::new(node.clone(), budget, telemetry.tables.clone());
    if !cli.orphan_table_ttl.is_zero() {
        tokio::spawn(retire_orphan_tables(store.clone(), cli.orphan_table_ttl));
    }
    let ctx = ProbeContext {
        node: node.clone(),
        tables: store.clone(),
        bpftrace,
        protocols: Arc::new(
            ProtocolsShared::with_conn_stats_interval(&mut registry, cli.conn_stats_interval)
                .with_shedding(Shedding {
                    enabled: cli.shed_when_saturated,
                    budget_percent: cli.saturated_capture_percent,
                }),
        ),
        profiler: Arc::new(ProfilerShared::with_period(
            &mut registry,
            cli.profiler_period,
        )),
        dynamic_log: Arc::new(DynamicLogShared::new(&mut registry)),
    };
    let manager = span.in_scope(|| probes::spawn(ctx, telemetry.clone()));

    let (applied_tx, applied_rx) = watch::channel(false);
    let (errors_tx, errors_rx) = watch::channel(Vec::new());
    let bpftrace_path = cli.bpftrace.clone();
    tokio::spawn(
        async move {
            match tokio::task::spawn_blocking(move || {
                sonde_agent::capabilities::detect(&bpftrace_path)
            })
            .await
            {
                Ok(caps) => {
                    info!(?caps, "node capabilities detected");
                    caps_tx.send_replace(Some(caps));
                }
                Err(e) => error!("capability detection panicked: {e}; /readyz stays unready"),
            }
        }
        .instrument(span.clone()),
    );

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(listen);
    let state = AppState {
        node: node.clone(),
        mode,
        store,
        registry,
        telemetry: telemetry.clone(),
        capabilities: caps_rx.clone(),
        probes: manager.statuses(),
        manifest_errors: errors_rx,
        applied: applied_rx,
        auth: client.clone().map(|c| Authorizer::new(c, node.clone())),
        metrics_auth: cli.metrics_auth,
    };
    let stop_http = CancellationToken::new();
    let http_task = tokio::spawn({
        let stop = stop_http.clone();
        async move {
            let failures = state.telemetry.tls_handshake_failures.clone();
            if let Err(e) = http::serve(listener, tls, failures, http::router(state), async move {
                stop.cancelled().await
            })
            .await
            {
                error!("the HTTP listener failed: {e}");
            }
        }
        .instrument(span.clone())
    });
    let _enter = span.enter();
    info!(
        "sonde-agent {} listening on {scheme}://{bound}",
        env!("CARGO_PKG_VERSION")
    );
    info!(
        "tables: {scheme}://{bound}/v1/tables   rows: {scheme}://{bound}/v1/tables/<name>?format=csv"
    );
    info!("status: {scheme}://{bound}/v1/status   metrics: {scheme}://{bound}/metrics");
    drop(_enter);

    match source {
        Source::Manifests(path) => {
            info!(parent: &span, path = %path.display(), "standalone mode: running the manifests there");
            tokio::spawn(
                manifests::run(path, manager.clone(), telemetry, errors_tx, applied_tx)
                    .instrument(span.clone()),
            );
        }
        Source::Cluster(client) => {
            info!(parent: &span, "cluster mode: watching NodeAssignment {node}");
            let source = KubeSource {
                client,
                node,
                manager: manager.clone(),
                telemetry,
                capabilities: caps_rx,
                applied: applied_tx,
            };
            tokio::spawn(source.run().instrument(span.clone()));
        }
    }

    wait_for_signal().await?;
    info!(parent: &span, "stopping every probe, then exiting");
    manager.shutdown().await;
    stop_http.cancel();
    if let Err(e) = http_task.await {
        warn!(parent: &span, "the HTTP task ended badly: {e}");
    }
    Ok(())
}

async fn wait_for_signal() -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|source| StartError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| StartError::Signal {
        signal: "SIGINT",
        source,
    })?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}

/// Drops the tables of probes long gone, checking every minute (or every `ttl`, if shorter).
async fn retire_orphan_tables(store: Store, ttl: std::time::Duration) {
    let mut every = tokio::time::interval(ttl.min(std::time::Duration::from_secs(60)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for table in store.retire_orphans(std::time::Instant::now(), ttl) {
            info!(%table, ?ttl, "table dropped: no probe wrote to it for --orphan-table-ttl");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_addresses_host_names_and_bare_ports() {
        let at = |s: &str| parse_listen(s).map_err(|e| e.to_string());
        assert_eq!(
            at("127.0.0.1:9440"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9440)))
        );
        assert_eq!(at("[::1]:9440"), Ok("[::1]:9440".parse().unwrap()));
        assert_eq!(at(":9443"), Ok(SocketAddr::from(([0, 0, 0, 0], 9443))));
        assert_eq!(
            at("localhost:9441"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9441)))
        );
    }

    #[test]
    fn a_bad_listen_address_shows_the_expected_form() {
        for (value, problem) in [
            ("9440", "has no port"),
            ("localhost:http", "is not a port number"),
            ("localhost:70000", "is not a port number"),
        ] {
            let message = parse_listen(value).unwrap_err().to_string();
            assert!(
                message.contains(problem)
                    && message.contains("127.0.0.1:9440")
                    && message.contains("0.0.0.0:9440"),
                "{value}: {message}"
            );
        }
    }

    #[test]
    fn a_missing_node_name_points_at_standalone_mode() {
        assert!(StartError::NodeName.to_string().contains("--manifests DIR"));
    }
}
