//! Helpers shared by the real-kernel protocol tests: peers started on free loopback ports and
//! stopped by pid (also when a test fails), a protocol Tracepoint on one process or on a cgroup,
//! and the rows and metrics it produced.
#![allow(dead_code)] // each test binary uses its own subset

pub mod peers;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prometheus_client::registry::Registry;
use sonde_agent::probes::protocols::governor::Shedding;
use sonde_agent::probes::protocols::{ProtocolProbe, ProtocolsShared};
use sonde_agent::probes::{
    ProbeContext, bpftrace::BpftraceShared, dynamic_log::DynamicLogShared, profiler::ProfilerShared,
};
use sonde_agent::tables::{Query, Store, Value};
use sonde_agent::targets::TargetProcess;
use sonde_api::{
    AssignedProbe, PodTarget, ProbeConfig, ProbeOwner, ProbeState, Protocol, TracepointProbe,
    TracepointSpec,
};

pub type Row = HashMap<String, Value>;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two different free ports (each probe of the kernel may hand back the port it gave last).
pub fn two_free_ports() -> (u16, u16) {
    let first = free_port();
    loop {
        let second = free_port();
        if second != first {
            return (first, second);
        }
    }
}

pub fn which(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run `scripts/setup peers`");
}

/// A server process stopped on drop: `signal` first, SIGKILL after 10 s.
pub struct Server {
    pub child: Child,
    pub signal: Signal,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), self.signal);
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup v2 of its own (stands for a pod's container): every process left in it is killed and
/// the cgroup removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let root = sonde_agent::targets::cgroup::cgroup2_mount()
            .expect("no cgroup2 mount: the cgroup-selection tests need one");
        let path = root.join(format!("sonde-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TestCgroup { path }
    }

    /// `sh` command line prefix that moves itself into this cgroup, then execs `"$@"`.
    pub fn enter_and_exec(&self) -> Vec<String> {
        vec![
            "-c".into(),
            "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"".into(),
            self.path.display().to_string(),
        ]
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
            if pids.is_empty() && std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A process that stands for a pod's pause container in `cgroup` (a pod Tracepoint needs a target
/// process to find the cgroup): `sleep`, in the cgroup once this returns, killed on drop.
pub fn pause_in(cgroup: &TestCgroup) -> Server {
    let pause = Server {
        child: std::process::Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .args([which("sleep").display().to_string(), "600".into()])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting sleep"),
        signal: Signal::SIGKILL,
    };
    for _ in 0..600 {
        let procs = std::fs::read_to_string(cgroup.path.join("cgroup.procs")).unwrap_or_default();
        if procs.lines().any(|l| l == pause.pid().to_string()) {
            return pause;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("sleep did not enter {} within 60 s", cgroup.path.display());
}

/// Tests count rows exactly: their connections are never shed, however busy the machine running
/// them is (`protocol_shedding.rs` tests shedding).
const NEVER_SHED: Shedding = Shedding {
    enabled: false,
    budget_percent: 100.0,
};

pub fn context(store: &Store, registry: &mut Registry) -> ProbeContext {
    context_shedding(store, registry, NEVER_SHED)
}

/// [`context`] whose protocol tracing sheds connections as `shedding` says.
pub fn context_shedding(
    store: &Store,
    registry: &mut Registry,
    shedding: Shedding,
) -> ProbeContext {
    let protocols = ProtocolsShared::new(registry).with_shedding(shedding);
    context_with(store, registry, protocols)
}

/// [`context`] whose protocol tracing writes periodic conn_stats rows every `every`.
pub fn context_with_conn_stats_every(
    store: &Store,
    registry: &mut Registry,
    every: Duration,
) -> ProbeContext {
    let protocols =
        ProtocolsShared::with_conn_stats_interval(registry, every).with_shedding(NEVER_SHED);
    context_with(store, registry, protocols)
}

fn context_with(
    store: &Store,
    registry: &mut Registry,
    protocols: ProtocolsShared,
) -> ProbeContext {
    ProbeContext {
        node: "test".into(),
        tables: store.clone(),
        bpftrace: Arc::new(BpftraceShared::new(registry, "bpftrace".into())),
        protocols: Arc::new(protocols),
        profiler: Arc::new(ProfilerShared::new(registry)),
        dynamic_log: Arc::new(DynamicLogShared::new(registry)),
    }
}

fn assigned(spec: TracepointSpec, targets: Vec<PodTarget>) -> AssignedProbe {
    AssignedProbe {
        id: "Tracepoint/default/peers".into(),
        owner: ProbeOwner {
            kind: "Tracepoint".into(),
            namespace: Some("default".into()),
            name: "peers".into(),
            uid: "u1".into(),
            generation: 1,
        },
        config: ProbeConfig::Tracepoint(spec.clone()),
        targets,
        process: spec.process.clone(),
    }
}

fn spec(protocols: Vec<Protocol>, process: Option<sonde_api::ProcessSelector>) -> TracepointSpec {
    TracepointSpec {
        selector: None,
        container: None,
        process,
        ttl: None,
        probe: TracepointProbe {
            protocols: Some(protocols),
            profiler: None,
            max_body_bytes: None,
            redact: None,
        },
    }
}

/// A protocol Tracepoint selecting processes by executable (`exe`: a glob such as `*/nginx`). The
/// test picks the targets itself, its own processes: the probe it assigns carries no selector of
/// its own, which would have the kernel select every such program started meanwhile (another
/// test's, side by side), as an agent's standalone probe does.
pub fn tracepoint(protocols: Vec<Protocol>, exe: &str) -> (AssignedProbe, TracepointSpec) {
    let spec = spec(
        protocols,
        Some(sonde_api::ProcessSelector {
            exe: Some(exe.into()),
            cmdline: None,
        }),
    );
    let mut probe = assigned(spec.clone(), vec![]);
    probe.process = None;
    (probe, spec)
}

/// A protocol Tracepoint on a whole pod container: its processes are selected by cgroup, so
/// children forked later (PostgreSQL backends) are traced too.
pub fn pod_tracepoint(protocols: Vec<Protocol>) -> (AssignedProbe, TracepointSpec) {
    pod_tracepoint_for(protocols, "peers")
}

/// [`pod_tracepoint`] on the container of pod `pod` (a probe of its own, named after the pod).
pub fn pod_tracepoint_for(protocols: Vec<Protocol>, pod: &str) -> (AssignedProbe, TracepointSpec) {
    let spec = spec(protocols, None);
    let target = PodTarget {
        pod_uid: format!("uid-{pod}"),
        namespace: "default".into(),
        pod: pod.into(),
        container: "server".into(),
        container_id: String::new(),
    };
    let mut probe = assigned(spec.clone(), vec![target]);
    probe.id = format!("Tracepoint/default/{pod}");
    probe.owner.name = pod.into();
    (probe, spec)
}

pub fn target(pid: u32, exe: &str) -> TargetProcess {
    TargetProcess {
        pid,
        namespace: String::new(),
        pod: String::new(),
        pod_uid: String::new(),
        container: String::new(),
        container_id: String::new(),
        exe: exe.into(),
        cmdline: exe.into(),
    }
}

/// The target of [`pod_tracepoint`]: a process of its container.
pub fn pod_target(pid: u32, exe: &str) -> TargetProcess {
    pod_target_for(pid, exe, "peers")
}

/// The target of [`pod_tracepoint_for`] `pod`.
pub fn pod_target_for(pid: u32, exe: &str, pod: &str) -> TargetProcess {
    TargetProcess {
        namespace: "default".into(),
        pod: pod.into(),
        pod_uid: format!("uid-{pod}"),
        container: "server".into(),
        ..target(pid, exe)
    }
}

/// Rows of `table` as maps column → value: all of them, not the HTTP API's default of the latest.
pub fn rows(store: &Store, table: &str) -> Vec<Row> {
    let all = Query {
        limit: usize::MAX,
        ..Query::default()
    };
    let result = match store.query(table, &all) {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    result
        .rows
        .iter()
        .map(|row| {
            let mut values = vec![
                Value::Time(row.time_ns),
                Value::String(result.node.clone()),
                Value::String(row.namespace.clone()),
                Value::String(row.pod.clone()),
                Value::String(row.container.clone()),
                Value::Int64(row.pid),
            ];
            values.extend(row.values.iter().cloned());
            result
                .columns
                .iter()
                .map(|c| c.name.clone())
                .zip(values)
                .collect()
        })
        .collect()
}

/// Polls `table` until `want` holds (60 s at most on a loaded machine); returns the rows then.
pub async fn wait_for_rows(store: &Store, table: &str, want: impl Fn(&[Row]) -> bool) -> Vec<Row> {
    for _ in 0..600 {
        let r = rows(store, table);
        if want(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rows(store, table)
}

/// The final conn_stats rows, written when connections closed (open connections also get periodic
/// rows, with `conn_close` 0, when a test runs past the interval).
pub fn closed(stats: &[Row]) -> Vec<Row> {
    stats
        .iter()
        .filter(|r| r.get("conn_close") == Some(&Value::Int64(1)))
        .cloned()
        .collect()
}

/// A string column's value ("" for anything else).
pub fn text<'a>(row: &'a Row, column: &str) -> &'a str {
    match row.get(column) {
        Some(Value::String(s)) => s,
        _ => "",
    }
}

pub fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// Sum of the samples of `series` (e.g. `dns_lookup_duration_seconds_count`) whose labels contain
/// every one of `labels`.
pub fn metric_sum(text: &str, series: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{series}{{")) || l.starts_with(&format!("{series} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The Python of the venv that `scripts/setup peers` fills with the database drivers that speak
/// the binary protocols (pg8000, mysql-connector-python).
pub fn venv_python() -> PathBuf {
    peer_cache_path(
        "venv/bin/python",
        "it installs pg8000 and mysql-connector-python there",
    )
}

/// The `node_modules` of the Node.js test clients' drivers (node-postgres, mysql2).
pub fn peer_node_modules() -> PathBuf {
    peer_cache_path(
        "node/node_modules",
        "it installs node-postgres and mysql2 there",
    )
}

/// The jar of a Java test client's driver (`mariadb-java-client-3.5.7.jar`).
pub fn peer_jar(name: &str) -> PathBuf {
    peer_cache_path(
        &format!("jars/{name}"),
        "it downloads the drivers' jars there",
    )
}

/// `path` under the cache `scripts/setup peers` fills; `what` says what it puts there.
fn peer_cache_path(path: &str, what: &str) -> PathBuf {
    let cache = std::env::var_os("SONDE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/sonde")))
        .expect("neither SONDE_CACHE nor HOME is set: cannot find the test peers' cache");
    let path = cache.join(path);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/setup peers` ({what})",
        path.display()
    );
    path
}

/// Runs `cmd` to completion; panics with its output when it fails.
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Retries `ready` every 100 ms for 60 s.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..600 {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not become ready within 60 s");
}

/// A protocol probe started on one process in a context of its own, with that context's table
/// store and metrics registry.
pub struct Traced {
    pub store: Store,
    pub registry: Registry,
    pub probe: ProtocolProbe,
}

impl Traced {
    /// Starts `probe` on `target` and checks it attached.
    pub fn start(probe: &(AssignedProbe, TracepointSpec), target: TargetProcess) -> Traced {
        let store = Store::default();
        let mut registry = Registry::default();
        let probe = start_probe_in(&context(&store, &mut registry), probe, target);
        Traced {
            store,
            registry,
            probe,
        }
    }
}

impl Traced {
    /// A stand-in pod in `cgroup`: its pause process, and a pod Tracepoint of `protocols` named
    /// `pod` on it. Processes started with [`TestCgroup::enter_and_exec`] are traced from their
    /// first syscall. The pause process lives as long as the returned [`Server`].
    pub fn in_pod(cgroup: &TestCgroup, pod: &str, protocols: Vec<Protocol>) -> (Traced, Server) {
        let pause = pause_in(cgroup);
        let traced = Traced::start(
            &pod_tracepoint_for(protocols, pod),
            pod_target_for(pause.pid(), "/usr/bin/sleep", pod),
        );
        (traced, pause)
    }
}

/// Starts `probe` in `ctx` (several probes of one test share its runtime) and checks it attached.
pub fn start_probe_in(
    ctx: &ProbeContext,
    probe: &(AssignedProbe, TracepointSpec),
    target: TargetProcess,
) -> ProtocolProbe {
    let p = ProtocolProbe::start(ctx, &probe.0, &probe.1, &[target]);
    assert_eq!(
        p.status().state,
        ProbeState::Attached,
        "{}",
        p.status().message
    );
    p
}

/// What an nginx test server adds to the fixed config (one worker, no access log, temp paths in
/// its directory): main-context directives, http-context directives, the server's body.
pub struct NginxSite<'a> {
    pub main: &'a str,
    pub http: &'a str,
    pub server: &'a str,
}

/// nginx with one worker listening on 127.0.0.1:`port`, config, pid and error log in `dir`;
/// returns the master (stopped on drop) and the worker's pid once it accepts connections.
pub fn start_nginx(dir: &Path, port: u16, site: &NginxSite) -> (Server, u32) {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 1; {main} pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; {http} client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
               server {{ listen 127.0.0.1:{port}; {server} }} }}\n",
            dir = dir.display(),
            main = site.main,
            http = site.http,
            server = site.server,
        ),
    )
    .unwrap();
    let child = std::process::Command::new(which("nginx"))
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("starting nginx");
    let master = child.id();
    let server = Server {
        child,
        signal: Signal::SIGTERM,
    };
    // The worker is the master's only child.
    let mut worker = 0;
    wait_until("nginx", || {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        worker = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        worker != 0 && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (server, worker)
}
