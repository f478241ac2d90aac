//! Sonde's own processes, each with its own identity: `sonde-operator` replicas and a `sonde-agent`
//! per (fake) node, plus a standalone agent for benchmarks.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::helm;
use crate::ports::free_port;
use crate::process::Proc;
use crate::tools::SondeBinaries;
use crate::wait;

/// A running `sonde-operator` replica.
pub struct Operator {
    /// Its POD_NAME, which is also its Lease holder identity.
    pub pod_name: String,
    pub metrics_addr: String,
    pub proc: Proc,
}

impl Operator {
    pub fn start(
        bins: &SondeBinaries,
        kubeconfig: &Path,
        pod_name: &str,
        log_dir: &Path,
    ) -> Result<Operator> {
        Operator::start_with_args(bins, kubeconfig, pod_name, log_dir, &[])
    }

    /// Like [`Operator::start`], with `extra` arguments (e.g. the chart's `--auto-*` flags).
    pub fn start_with_args(
        bins: &SondeBinaries,
        kubeconfig: &Path,
        pod_name: &str,
        log_dir: &Path,
        extra: &[String],
    ) -> Result<Operator> {
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&bins.operator);
        cmd.args(["--metrics-listen", &metrics_addr])
            .args(extra)
            .args(["--lease-namespace", helm::NAMESPACE])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod_name)
            .env("POD_NAMESPACE", helm::NAMESPACE)
            .env("RUST_LOG", "info,sonde_operator=debug");
        Ok(Operator {
            pod_name: pod_name.to_owned(),
            metrics_addr,
            proc: Proc::spawn(pod_name, cmd, log_dir)?,
        })
    }
}

/// A running `sonde-agent`.
pub struct Agent {
    pub node: Option<String>,
    /// `http://127.0.0.1:<port>` (or [`AgentOptions::listen_ip`]), or `https://…` with
    /// [`AgentOptions::tls_ca`].
    pub url: String,
    pub port: u16,
    /// The CA its HTTPS certificate is checked against, when it serves HTTPS.
    pub tls_ca: Option<PathBuf>,
    pub proc: Proc,
}

/// How a cluster agent is started beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Extra arguments, e.g. `--tls-cert-file=…`.
    pub args: Vec<String>,
    /// With `--tls-cert-file` in `args`: the CA that issued that certificate (for 127.0.0.1); the
    /// agent is then reached over `https://127.0.0.1:<port>`, trusting this CA only.
    pub tls_ca: Option<PathBuf>,
    /// The address it listens on (default 127.0.0.1): another loopback address lets agents of
    /// several nodes share one port, as the DaemonSet's pods do on their pod IPs.
    pub listen_ip: Option<IpAddr>,
    /// The port it listens on (default: a free one).
    pub port: Option<u16>,
}

impl Agent {
    /// An agent for `node`, talking to the API server as the agent identity.
    pub fn start_cluster(
        bins: &SondeBinaries,
        kubeconfig: &Path,
        node: &str,
        log_dir: &Path,
    ) -> Result<Agent> {
        Agent::start_cluster_with(bins, kubeconfig, node, log_dir, &AgentOptions::default())
    }

    /// Like [`Agent::start_cluster`], with `options`.
    pub fn start_cluster_with(
        bins: &SondeBinaries,
        kubeconfig: &Path,
        node: &str,
        log_dir: &Path,
        options: &AgentOptions,
    ) -> Result<Agent> {
        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let addr = SocketAddr::new(
            options.listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
        );
        let mut cmd = Command::new(&bins.agent);
        cmd.args(["--listen", &addr.to_string()])
            .args(["--node-name", node])
            .args(&options.args)
            .env("KUBECONFIG", kubeconfig)
            .env("NODE_NAME", node)
            .env("RUST_LOG", "info,sonde_agent=debug");
        let scheme = if options.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Agent {
            node: Some(node.to_owned()),
            url: format!("{scheme}://{addr}"),
            port,
            tls_ca: options.tls_ca.clone(),
            proc: Proc::spawn(&format!("agent-{node}"), cmd, log_dir)?,
        })
    }

    /// A standalone agent (`--manifests DIR`), no Kubernetes.
    pub fn start_standalone(
        bins: &SondeBinaries,
        manifests: &Path,
        log_dir: &Path,
    ) -> Result<Agent> {
        Agent::start_standalone_with(bins, manifests, log_dir, &[])
    }

    /// [`Agent::start_standalone`] with extra flags.
    pub fn start_standalone_with(
        bins: &SondeBinaries,
        manifests: &Path,
        log_dir: &Path,
        flags: &[&str],
    ) -> Result<Agent> {
        let port = free_port()?;
        let mut cmd = Command::new(&bins.agent);
        cmd.args(flags)
            .arg("--manifests")
            .arg(manifests)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "info");
        Ok(Agent {
            node: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            tls_ca: None,
            proc: Proc::spawn("agent-standalone", cmd, log_dir)?,
        })
    }

    /// An HTTP client for [`Agent::url`]: trusting [`Agent::tls_ca`] when it serves HTTPS.
    pub fn client(&self) -> Result<reqwest::Client> {
        let mut client = reqwest::Client::builder();
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            client = client
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(client.build()?)
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&mut self) -> Result<()> {
        let http = self.client()?;
        let url = format!("{}/healthz", self.url);
        let proc = &mut self.proc;
        wait::until("agent /healthz", Duration::from_secs(60), || {
            let running = proc.is_running();
            let req = http.get(&url).send();
            async move {
                if !running {
                    bail!("the agent exited");
                }
                Ok(req.await.ok().filter(|r| r.status().is_success()).map(drop))
            }
        })
        .await
    }
}

/// Resident set size now and at its peak (VmRSS, VmHWM) of a process, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let Some((_, rest)) = stat.rsplit_once(')') else {
        bail!("unexpected /proc/{pid}/stat format");
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions; it only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok((ticks(14) + ticks(15)) as f64 / hz)
}

/// Paths of the log files of processes, for failure reports.
pub fn log_paths<'a>(procs: impl IntoIterator<Item = &'a Proc>) -> Vec<PathBuf> {
    procs
        .into_iter()
        .map(|p| p.log_path().to_path_buf())
        .collect()
}
