//! Sonde's benchmarks: commands that print figures (not tests). Each starts what it needs (a local
//! control plane, the operator, the agent) and prints a small table for BENCHMARKS.md.
//!
//! ```text
//! cargo run -p sonde-e2e --bin sonde-bench -- all [--release]
//! cargo run -p sonde-e2e --bin sonde-bench -- apply-latency --runs 20
//! cargo run -p sonde-e2e --bin sonde-bench -- operator-scale --crs 1000 --nodes 200
//! cargo run -p sonde-e2e --bin sonde-bench -- agent-rss
//! cargo run -p sonde-e2e --bin sonde-bench -- agent-idle --processes 2000 --seconds 30
//! cargo run -p sonde-e2e --bin sonde-bench -- client-churn --rate 500 --seconds 20
//! cargo run -p sonde-e2e --bin sonde-bench -- client-churn --protocol dns --rate 1000 [--trace-server]
//! cargo run -p sonde-e2e --bin sonde-bench -- file-reads --rate 1600 --seconds 10
//! ```
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{StreamExt, TryStreamExt, stream};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sonde_api::{BpftraceScript, NodeAssignment};
use sonde_e2e::cluster::{Cluster, Install};
use sonde_e2e::fake_pod;
use sonde_e2e::observe;
use sonde_e2e::sonde::{Agent, Operator, cpu_seconds, memory_kib};
use sonde_e2e::suite;
use sonde_e2e::tools::{self, SondeBinaries};
use sonde_e2e::wait;

#[derive(Parser)]
#[command(about = "Sonde benchmarks: print figures for BENCHMARKS.md")]
struct Cli {
    /// Measure release builds of sonde-operator and sonde-agent (built first) instead of debug builds.
    #[arg(long, global = true)]
    release: bool,
    #[command(subcommand)]
    bench: Option<Bench>,
}

#[derive(Subcommand, Clone, Copy)]
enum Bench {
    /// `kubectl apply` of a BpftraceScript until the CR is Ready (operator + agent on a local control plane).
    ApplyLatency {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Operator CPU and peak RSS to write every NodeAssignment for many CRs over many simulated nodes.
    OperatorScale {
        #[arg(long, default_value_t = 1000)]
        crs: usize,
        #[arg(long, default_value_t = 200)]
        nodes: usize,
    },
    /// Standalone agent RSS when idle and with one bpftrace script.
    AgentRss,
    /// Standalone agent CPU with an HTTP Tracepoint and no traffic, on this host as it is and with
    /// `processes` more (sleeping) processes: what following a node's processes costs.
    AgentIdle {
        #[arg(long, default_value_t = 2000)]
        processes: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// A traced client opening `rate` connections per second (one exchange each, closed at once;
    /// 0: as fast as it can) against nginx (`http`: TCP) or dnsmasq (`dns`: a connected UDP
    /// socket per query, as Go's resolver does): the agent's CPU and the share of rows with the
    /// client's local address. Not part of `all` (needs nginx or dnsmasq, and python3).
    ClientChurn {
        #[arg(long, default_value_t = 500)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, value_enum, default_value_t = ChurnProtocol::Http)]
        protocol: ChurnProtocol,
        /// Trace the server (nginx, dnsmasq) instead of the client: the rows are its side of
        /// each connection, and the address counted is the client's, its peer.
        #[arg(long)]
        trace_server: bool,
    },
    /// A traced process opening, reading (4 KiB) and closing a file `rate` times per second: the
    /// agent's CPU for what is no connection at all, and the fds it had to look at. Not part of
    /// `all` (needs python3).
    FileReads {
        #[arg(long, default_value_t = 1600)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// All of the above with their defaults.
    All,
}

/// What the churning client speaks.
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
enum ChurnProtocol {
    Http,
    Dns,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bins = tools::build_sonde_profile(cli.release)?;
    println!(
        "# Sonde benchmarks ({} builds; {} CPUs)",
        if cli.release { "release" } else { "debug" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rt = tokio::runtime::Runtime::new()?;
    let benches = match cli.bench.unwrap_or(Bench::All) {
        Bench::All => vec![
            Bench::ApplyLatency { runs: 20 },
            Bench::OperatorScale {
                crs: 1000,
                nodes: 200,
            },
            Bench::AgentRss,
            Bench::AgentIdle {
                processes: 2000,
                seconds: 30,
            },
        ],
        one => vec![one],
    };
    for bench in benches {
        match bench {
            Bench::ApplyLatency { runs } => rt.block_on(apply_latency(&bins, runs))?,
            Bench::OperatorScale { crs, nodes } => {
                rt.block_on(operator_scale(&bins, crs, nodes))?
            }
            Bench::AgentRss => rt.block_on(agent_rss(&bins))?,
            Bench::AgentIdle { processes, seconds } => {
                rt.block_on(agent_idle(&bins, processes, seconds))?
            }
            Bench::ClientChurn {
                rate,
                seconds,
                protocol,
                trace_server,
            } => rt.block_on(client_churn(&bins, rate, seconds, protocol, trace_server))?,
            Bench::FileReads { rate, seconds } => rt.block_on(file_reads(&bins, rate, seconds))?,
            Bench::All => {}
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn script(name: &str, node_selector: Option<(&str, &str)>) -> BpftraceScript {
    let mut spec = serde_json::json!({
        "program": "tracepoint:syscalls:sys_enter_getppid { @calls = count(); }\n",
    });
    if let Some((k, v)) = node_selector {
        spec["nodeSelector"] = serde_json::json!({ k: v });
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "BpftraceScript",
        "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("the benchmark's BpftraceScript does not match the API types: {e}"))
}

async fn apply_latency(bins: &SondeBinaries, runs: usize) -> Result<()> {
    let dir = suite::work_dir("sonde-bench-")?;
    let logs = dir.path().join("logs");
    let cluster = Cluster::start(dir.path(), Install { rbac: true }).await?;
    let ids = cluster.identities()?.clone();
    fake_pod::create_node(&cluster.client, "node-a", &BTreeMap::new()).await?;
    let _operator = Operator::start(bins, &ids.operator_kubeconfig, "sonde-operator-0", &logs)?;
    let agent_kubeconfig = cluster.agent_kubeconfig("node-a")?;
    let mut agent = Agent::start_cluster(bins, &agent_kubeconfig, "node-a", &logs)?;
    agent.wait_healthy().await?;
    let api: Api<BpftraceScript> = Api::all(cluster.client.clone());
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let name = format!("bench-{i}");
        let yaml = serde_yaml_ng::to_string(&script(&name, None))?;
        let start = Instant::now();
        cluster.kubectl.apply(&yaml)?;
        wait::until(
            &format!("{name} Ready"),
            Duration::from_secs(60),
            || async {
                let s = api.get(&name).await?;
                let ready = s.status.as_ref().is_some_and(|st| {
                    st.observed_generation == s.metadata.generation
                        && observe::condition(st, "Ready").is_some_and(|c| c.status == "True")
                });
                Ok(ready.then_some(()))
            },
        )
        .await
        .with_context(|| format!("agent log:\n{}", agent.proc.log_tail(20)))?;
        samples.push(start.elapsed());
        api.delete(&name, &DeleteParams::default()).await?;
        wait::until(
            &format!("{name} deleted"),
            Duration::from_secs(60),
            || async { Ok(api.get_opt(&name).await?.is_none().then_some(())) },
        )
        .await?;
    }
    samples.sort();
    println!(
        "\n## kubectl apply of a BpftraceScript -> CR Ready ({runs} runs, operator + agent, local control plane)"
    );
    println!("| p50 | p90 | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        samples.first().copied().unwrap_or_default().as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn operator_scale(bins: &SondeBinaries, crs: usize, nodes: usize) -> Result<()> {
    const GROUPS: usize = 10;
    ensure!(nodes >= GROUPS, "use at least {GROUPS} nodes");
    let dir = suite::work_dir("sonde-bench-")?;
    let logs = dir.path().join("logs");
    let cluster = Cluster::start(dir.path(), Install { rbac: true }).await?;
    let ids = cluster.identities()?.clone();
    let client = cluster.client.clone();
    // Nodes in GROUPS groups; CR i selects group i % GROUPS, so every node gets crs/GROUPS probes.
    stream::iter(0..nodes)
        .map(|i| {
            let client = client.clone();
            async move {
                let labels = BTreeMap::from([(
                    "sonde.dev/bench-group".to_string(),
                    format!("g{}", i % GROUPS),
                )]);
                fake_pod::create_node(&client, &format!("node-{i:04}"), &labels).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let api: Api<BpftraceScript> = Api::all(client.clone());
    stream::iter(0..crs)
        .map(|i| {
            let api = api.clone();
            async move {
                let group = format!("g{}", i % GROUPS);
                let s = script(
                    &format!("scale-{i:05}"),
                    Some(("sonde.dev/bench-group", &group)),
                );
                api.create(&PostParams::default(), &s).await.map(drop)
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..nodes {
        let group = i % GROUPS;
        let count = (0..crs).filter(|c| c % GROUPS == group).count() as u32;
        expected.insert(format!("node-{i:04}"), count);
    }

    let start = Instant::now();
    let mut operator = Operator::start(bins, &ids.operator_kubeconfig, "sonde-operator-0", &logs)?;
    let pid = operator.proc.pid();
    let nas: Api<NodeAssignment> = Api::all(client.clone());
    wait::until(
        "every NodeAssignment written",
        Duration::from_secs(600),
        || async {
            let list = nas.list(&ListParams::default()).await?;
            let done = list
                .items
                .iter()
                .filter(|na| {
                    let name = na.metadata.name.as_deref().unwrap_or_default();
                    expected.get(name) == Some(&(na.spec.probes.len() as u32))
                })
                .count();
            Ok((done == nodes).then_some(()))
        },
    )
    .await
    .with_context(|| format!("operator log:\n{}", operator.proc.log_tail(20)))?;
    let wall = start.elapsed();
    let cpu = cpu_seconds(pid)?;
    // VmHWM is the kernel's own high-water mark of the RSS, so one read at the end is the peak.
    let (_, peak_kib) = memory_kib(pid)?;
    println!(
        "\n## Operator: {crs} BpftraceScripts over {nodes} simulated nodes (NodeAssignments only, no agents)"
    );
    println!(
        "| CRs | nodes | probes per node | wall until all written | operator CPU | operator peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {crs} | {nodes} | {} | {:.1} s | {:.2} s | {:.1} MiB |",
        crs / GROUPS,
        wall.as_secs_f64(),
        cpu,
        peak_kib as f64 / 1024.0
    );
    operator.proc.stop(Duration::from_secs(5));
    Ok(())
}

async fn agent_rss(bins: &SondeBinaries) -> Result<()> {
    let dir = suite::work_dir("sonde-bench-")?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let settle = Duration::from_secs(5);

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let mut idle = Agent::start_standalone(bins, &empty, &logs)?;
    idle.wait_healthy().await?;
    tokio::time::sleep(settle).await;
    let (idle_rss, idle_hwm) = memory_kib(idle.proc.pid())?;
    idle.proc.stop(Duration::from_secs(10));

    let one = dir.path().join("one-script");
    std::fs::create_dir_all(&one)?;
    std::fs::write(
        one.join("getppid.yaml"),
        serde_yaml_ng::to_string(&script("getppid", None))?,
    )?;
    let mut busy = Agent::start_standalone(bins, &one, &logs)?;
    busy.wait_healthy().await?;
    let agent_pid = busy.proc.pid();
    let bpftrace = wait::until("the script's bpftrace", Duration::from_secs(60), || async {
        Ok(observe::bpftrace_descendants(agent_pid).first().copied())
    })
    .await
    .with_context(|| format!("agent log:\n{}", busy.proc.log_tail(20)))?;
    tokio::time::sleep(settle).await;
    let (busy_rss, busy_hwm) = memory_kib(agent_pid)?;
    let (bt_rss, _) = memory_kib(bpftrace).unwrap_or((0, 0));
    busy.proc.stop(Duration::from_secs(10));

    let mib = |k: u64| k as f64 / 1024.0;
    println!("\n## Standalone agent memory (after {settle:?} settled)");
    println!("| case | agent RSS | agent peak RSS | bpftrace child RSS |");
    println!("|---|---|---|---|");
    println!(
        "| no manifests | {:.1} MiB | {:.1} MiB | - |",
        mib(idle_rss),
        mib(idle_hwm)
    );
    println!(
        "| one bpftrace script | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(busy_rss),
        mib(busy_hwm),
        mib(bt_rss)
    );
    Ok(())
}

/// Sleeping processes that die with the benchmark.
struct Sleepers(Vec<std::process::Child>);

impl Sleepers {
    fn start(n: usize) -> Result<Sleepers> {
        let mut sleepers = Sleepers(Vec::with_capacity(n));
        for _ in 0..n {
            let child = std::process::Command::new("sleep")
                .arg("3600")
                .spawn()
                .context("starting a sleep process")?;
            sleepers.0.push(child);
        }
        Ok(sleepers)
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

async fn agent_idle(bins: &SondeBinaries, processes: usize, seconds: u64) -> Result<()> {
    let dir = suite::work_dir("sonde-bench-")?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let manifests = tracepoint_manifest(dir.path(), "web", "exe: '*/nginx'", "http")?;
    // Attaching and the first scans are not the idle cost.
    let settle = Duration::from_secs(10);
    let host_processes = || {
        std::fs::read_dir("/proc").map_or(0, |d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
    };
    let mut rows = Vec::new();
    for extra in [0, processes] {
        let _sleepers = Sleepers::start(extra)?;
        let mut agent = Agent::start_standalone(bins, &manifests, &logs)?;
        agent.wait_healthy().await?;
        tokio::time::sleep(settle).await;
        let pid = agent.proc.pid();
        let before = cpu_seconds(pid)?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let used = cpu_seconds(pid)? - before;
        rows.push((host_processes(), used * 1e3 / seconds as f64));
        agent.proc.stop(Duration::from_secs(10));
    }
    println!(
        "\n## Standalone agent CPU, one HTTP Tracepoint, no traffic ({seconds} s after {settle:?})"
    );
    println!("| processes on the host | agent CPU |");
    println!("|---|---|");
    for (n, ms) in rows {
        println!("| {n} | {ms:.1} ms/s |");
    }
    Ok(())
}

/// The churn client: `rate` connections per second (0: unpaced) for `seconds`, one exchange each
/// — `http`: a GET, closed as soon as nginx's `hello` is in; `dns`: a query of churn.sonde.test on
/// a connected UDP socket of its own, closed once answered — and prints how many it made. Its last
/// argument is the marker the Tracepoint selects it by.
const CHURN_CLIENT: &str = r#"
import socket, struct, sys, time
port, rate, seconds, proto = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
question = b"\x05churn\x05sonde\x04test\x00" + struct.pack(">HH", 1, 1)

def http(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: churn\r\n\r\n")
    data = b""
    while not data.endswith(b"hello\n"):
        data += s.recv(4096)
    s.close()

def dns(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.send(struct.pack(">HHHHHH", n & 0xffff, 0x0100, 1, 0, 0, 0) + question)
    s.recv(512)
    s.close()

exchange = http if proto == "http" else dns
start = time.time()
n = 0
while time.time() - start < seconds:
    exchange(n)
    n += 1
    if rate:
        delay = start + n / rate - time.time()
        if delay > 0:
            time.sleep(delay)
print(n)
"#;

async fn client_churn(
    bins: &SondeBinaries,
    rate: u32,
    seconds: u64,
    protocol: ChurnProtocol,
    trace_server: bool,
) -> Result<()> {
    const MARKER: &str = "sonde-churn-client";
    let dir = suite::work_dir("sonde-bench-")?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let port = sonde_e2e::ports::free_port()?;
    let (server, table, name, server_exe) = match protocol {
        ChurnProtocol::Http => {
            let conf = sonde_e2e::peers::nginx_conf(&dir.path().join("nginx"), port)?;
            let mut nginx = std::process::Command::new(sonde_e2e::peers::nginx()?);
            nginx.arg("-c").arg(&conf);
            let nginx = sonde_e2e::process::Proc::spawn("nginx", nginx, &logs)?;
            (nginx, "http_events", "http", "*/nginx")
        }
        ChurnProtocol::Dns => {
            let mut dnsmasq = std::process::Command::new("/usr/sbin/dnsmasq");
            dnsmasq
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--user=root",
                    "--listen-address=127.0.0.1",
                    "--host-record=churn.sonde.test,10.0.0.7",
                ])
                .arg(format!("--port={port}"));
            let dnsmasq = sonde_e2e::process::Proc::spawn("dnsmasq", dnsmasq, &logs)
                .context("starting dnsmasq (scripts/setup peers)")?;
            (dnsmasq, "dns_events", "dns", "*/dnsmasq")
        }
    };
    // dnsmasq answers TCP on its port too.
    sonde_e2e::peers::wait_listening(port).await?;
    let selector = if trace_server {
        format!("exe: '{server_exe}'")
    } else {
        format!("cmdline: '{MARKER}'")
    };
    let manifests = tracepoint_manifest(dir.path(), "churn", &selector, name)?;
    let mut agent = Agent::start_standalone(bins, &manifests, &logs)?;
    agent.wait_healthy().await?;
    // The client runs past the measured window on both sides: the agent selects it at its exec,
    // then 5 s of warm-up; rows are counted after it exits.
    let args = [port.to_string(), rate.to_string()];
    let (connections, agent_ms) = python_workload(
        &agent,
        CHURN_CLIENT,
        &args,
        &[name, MARKER],
        Duration::from_secs(5),
        seconds,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, body) = observe::agent_get(
        &agent.url,
        &format!("/v1/tables/{table}?limit=100000"),
        None,
    )
    .await?;
    ensure!(code == 200, "GET {table}: {code} {body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let address = if trace_server {
        "remote_addr"
    } else {
        "local_addr"
    };
    let addressed = rows
        .iter()
        .filter(|r| r[address].as_str().is_some_and(|a| !a.is_empty()))
        .count();
    agent.proc.stop(Duration::from_secs(10));
    drop(server);
    println!(
        "\n## A {name} client opening connections, the {} traced ({seconds} s measured)",
        if trace_server { "server" } else { "client" }
    );
    println!(
        "| rate asked | connections made | agent CPU | {table} rows | rows with the client's address |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {connections} | {agent_ms:.1} ms/s | {} | {addressed} ({:.1}%) |",
        if rate == 0 {
            "unpaced".to_string()
        } else {
            format!("{rate}/s")
        },
        rows.len(),
        100.0 * addressed as f64 / rows.len().max(1) as f64
    );
    Ok(())
}

/// The file reader: opens, reads 4 KiB of and closes a file `rate` times per second for
/// `seconds`; prints how many. Its last argument is the marker the Tracepoint selects it by.
const FILE_READER: &str = r#"
import sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
start = time.time()
n = 0
while time.time() - start < seconds:
    with open("/etc/services", "rb") as f:
        f.read(4096)
    n += 1
    delay = start + n / rate - time.time()
    if delay > 0:
        time.sleep(delay)
print(n)
"#;

async fn file_reads(bins: &SondeBinaries, rate: u32, seconds: u64) -> Result<()> {
    const MARKER: &str = "sonde-file-reader";
    let dir = suite::work_dir("sonde-bench-")?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let selector = format!("cmdline: '{MARKER}'");
    let manifests = tracepoint_manifest(dir.path(), "reader", &selector, "http")?;
    let mut agent = Agent::start_standalone(bins, &manifests, &logs)?;
    agent.wait_healthy().await?;
    let (files, agent_ms) = python_workload(
        &agent,
        FILE_READER,
        &[rate.to_string()],
        &[MARKER],
        Duration::from_secs(3),
        seconds,
    )
    .await?;
    let (code, metrics) = observe::agent_get(&agent.url, "/metrics", None).await?;
    ensure!(code == 200, "GET /metrics: {code}");
    // Absent from agents older than the metric.
    let lookups = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sonde_protocol_fd_lookups_total "))
        .unwrap_or("n/a")
        .to_owned();
    agent.proc.stop(Duration::from_secs(10));
    println!("\n## A traced process reading a file over and over ({seconds} s measured)");
    println!("| reads asked | files read | agent CPU | fds the agent looked at |");
    println!("|---|---|---|---|");
    println!("| {rate}/s | {files} | {agent_ms:.1} ms/s | {lookups} |");
    Ok(())
}

/// A `manifests` directory under `dir` holding one Tracepoint `name` with process `selector`
/// (a YAML `exe: …` or `cmdline: …` line) and `protocols` (a YAML list's items).
fn tracepoint_manifest(
    dir: &std::path::Path,
    name: &str,
    selector: &str,
    protocols: &str,
) -> Result<std::path::PathBuf> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join(format!("{name}.yaml")),
        format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata:\n  name: {name}\nspec:\n  process:\n    {selector}\n  probe:\n    protocols: [{protocols}]\n"
        ),
    )?;
    Ok(manifests)
}

/// Runs `script` with python3 (arguments: `args`, its run time in seconds, then `tail`) so that
/// it outlasts `lead` plus `seconds`; measures `agent`'s CPU over the `seconds` after `lead`, and
/// returns the count the script prints at its end with that CPU in ms per second.
async fn python_workload(
    agent: &Agent,
    script: &str,
    args: &[String],
    tail: &[&str],
    lead: Duration,
    seconds: u64,
) -> Result<(u64, f64)> {
    let workload = std::process::Command::new("python3")
        .args(["-c", script])
        .args(args)
        .arg((lead.as_secs() + seconds + 1).to_string())
        .args(tail)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting python3 (scripts/setup peers)")?;
    tokio::time::sleep(lead).await;
    let pid = agent.proc.pid();
    let before = cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let agent_ms = (cpu_seconds(pid)? - before) * 1e3 / seconds as f64;
    let output = tokio::task::spawn_blocking(move || workload.wait_with_output()).await??;
    let count = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the count the workload printed: {output:?}"))?;
    Ok((count, agent_ms))
}
