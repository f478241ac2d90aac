//! BpftraceScript runtime against the real bpftrace and the real kernel.
//!
//! Needs root, bpftrace (Debian package) and tracefs; a missing bpftrace fails every test loudly.
//! The workload (`fixtures/bpftrace/workload.c`) is compiled with `cc` at test time. A pod's
//! container is a cgroup v2 of the test's own ([`common::TestCgroup`]).
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use sonde_agent::probes::bpftrace::pod_filter::NO_POD_MESSAGE;
use sonde_agent::probes::bpftrace::{BpftraceProbe, BpftraceShared};
use sonde_agent::probes::dynamic_log::DynamicLogShared;
use sonde_agent::probes::profiler::ProfilerShared;
use sonde_agent::probes::protocols::ProtocolsShared;
use sonde_agent::probes::{ProbeContext, RuntimeStatus};
use sonde_agent::tables::{Query, Row, Store, Value};
use sonde_agent::targets::TargetProcess;
use sonde_api::{
    AssignedProbe, BpftraceScriptSpec, NodeCapabilities, PodTargets, ProbeConfig, ProbeOwner,
    ProbeState,
};

const WAIT: Duration = Duration::from_secs(30);
const ORPHAN_HELPER_ENV: &str = "SONDE_BPFTRACE_ORPHAN_HELPER";

fn bpftrace() -> PathBuf {
    let version = Command::new("bpftrace").arg("--version").output();
    match version {
        Ok(out) if out.status.success() => PathBuf::from("bpftrace"),
        other => {
            panic!("bpftrace is required for these tests (apt-get install bpftrace): {other:?}")
        }
    }
}

/// bpftrace finds tracepoints through tracefs, which a fresh VM may not have mounted.
fn ensure_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let status = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success())
                || Path::new("/sys/kernel/tracing/events").exists(),
            "tracefs is not mounted and cannot be mounted (run the tests as root): {status:?}"
        );
    }
}

struct Harness {
    registry: Registry,
    ctx: ProbeContext,
}

fn harness() -> Harness {
    harness_on(None)
}

/// A harness whose scripts know the node's capabilities as the agent detected them.
fn harness_on(capabilities: Option<NodeCapabilities>) -> Harness {
    Logs::install();
    ensure_tracefs();
    let mut registry = Registry::default();
    let shared = BpftraceShared::new(&mut registry, bpftrace())
        .with_capabilities(tokio::sync::watch::channel(capabilities).1);
    let ctx = ProbeContext {
        node: "test-node".into(),
        tables: Store::default(),
        bpftrace: Arc::new(shared),
        protocols: Arc::new(ProtocolsShared::new(&mut registry)),
        profiler: Arc::new(ProfilerShared::new(&mut registry)),
        dynamic_log: Arc::new(DynamicLogShared::new(&mut registry)),
    };
    Harness { registry, ctx }
}

impl Harness {
    fn scrape(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    fn rows(&self, table: &str) -> Vec<Row> {
        self.ctx
            .tables
            .query(table, &Query::default())
            .map(|r| r.rows)
            .unwrap_or_default()
    }
}

fn script(name: &str, program: &str) -> (AssignedProbe, BpftraceScriptSpec) {
    let spec = BpftraceScriptSpec {
        program: program.into(),
        node_selector: Default::default(),
        pods: None,
        process: None,
        table_name: None,
        ttl: None,
    };
    let probe = AssignedProbe {
        id: format!("BpftraceScript/{name}"),
        owner: ProbeOwner {
            kind: "BpftraceScript".into(),
            namespace: None,
            name: name.into(),
            uid: format!("uid-{name}"),
            generation: 1,
        },
        config: ProbeConfig::BpftraceScript(spec.clone()),
        targets: Vec::new(),
        process: None,
    };
    (probe, spec)
}

/// [`script`] with `spec.pods` (namespace shop): limited to the targets' pods.
fn pod_script(name: &str, program: &str) -> (AssignedProbe, BpftraceScriptSpec) {
    let (mut probe, mut spec) = script(name, program);
    spec.pods = Some(PodTargets {
        namespace: "shop".into(),
        selector: None,
        container: None,
    });
    probe.config = ProbeConfig::BpftraceScript(spec.clone());
    (probe, spec)
}

/// Polls `check` until it gives a value; panics naming `what` and the last status after [`WAIT`].
async fn eventually<T>(
    what: &str,
    probe: &BpftraceProbe,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; probe status: {:?}",
            probe.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the code under test logs on this thread (a current-thread runtime runs its tasks here).
///
/// One process-wide subscriber routes each thread's lines to that thread's capture. A scoped
/// `set_default` would not do: tracing caches each callsite's interest process-wide, so a sibling
/// test hitting the same `warn!` first on a thread without a subscriber disabled it for everyone
/// (seen in CI: four restarts, fewer than two warnings captured).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's capture, or nowhere.
struct ThreadLogs;

impl std::io::Write for ThreadLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(logs) = c.borrow().as_ref() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Ends a thread's capture when dropped.
struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    /// Sets the process-wide subscriber before a test runs anything that logs, so no callsite
    /// is ever registered without it.
    fn install() {
        static GLOBAL: OnceLock<()> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ThreadLogs)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other test in this binary sets a global subscriber");
        });
    }

    fn capture() -> (Logs, CaptureGuard) {
        Logs::install();
        let logs = Logs::default();
        CAPTURING.with(|c| *c.borrow_mut() = Some(logs.clone()));
        (logs, CaptureGuard)
    }

    /// The WARN lines that contain `needle`.
    fn warnings(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .map(String::from)
            .collect()
    }
}

fn workload_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bpftrace");
        std::fs::create_dir_all(&dir).unwrap();
        // comm is the file name cut to 15 bytes: keep it short and exact.
        let binary = dir.join("sonde_workload");
        // Built under a private name, then renamed: concurrent test runs never see half a file.
        let building = dir.join(format!("sonde_workload.{}", std::process::id()));
        let source =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpftrace/workload.c");
        let status = Command::new("cc")
            .args(["-O1", "-g", "-o"])
            .arg(&building)
            .arg(&source)
            .status()
            .unwrap();
        assert!(status.success(), "cc could not build {}", source.display());
        std::fs::rename(&building, &binary).unwrap();
        binary
    })
}

struct Workload(Child);

impl Workload {
    fn start() -> Workload {
        Workload(
            Command::new(workload_binary())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn target(&self) -> TargetProcess {
        TargetProcess {
            pid: self.pid(),
            namespace: "shop".into(),
            pod: "web-0".into(),
            pod_uid: "uid-web-0".into(),
            container: "app".into(),
            container_id: "containerd://abc".into(),
            exe: workload_binary().to_path_buf(),
            cmdline: workload_binary().display().to_string(),
        }
    }
}

/// A workload in `cgroup` (a pod's container), there once this returns; killed on drop.
fn workload_in(cgroup: &common::TestCgroup) -> Workload {
    let workload = Workload(
        Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(workload_binary())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        let procs = std::fs::read_to_string(cgroup.path.join("cgroup.procs")).unwrap_or_default();
        if procs.lines().any(|l| l == workload.pid().to_string()) {
            return workload;
        }
        assert!(
            start.elapsed() < WAIT,
            "the workload did not enter {}",
            cgroup.path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wall_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Gone, or a zombie waiting for init: either way it no longer traces anything.
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracepoint_printf_rows_carry_wall_clock_time_exact_comm_and_the_targets_pod() {
    let h = harness();
    let workload = Workload::start();
    let before = wall_now_ns();
    // Other tests run the same workload at the same time: select this one by pid.
    let program = format!(
        r#"tracepoint:syscalls:sys_enter_getppid /pid == {}/ {{
  printf("time_:%llu pid:%d comm:%s\n", nsecs, pid, comm);
}}"#,
        workload.pid()
    );
    let (probe, spec) = script("getppid-calls", &program);
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[workload.target()]);
    let rows = eventually("rows in table getppid_calls", &running, || {
        let rows = h.rows("getppid_calls");
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    let status = running.status();
    assert_eq!(status.state, ProbeState::Attached);
    assert_eq!(status.targets_attached, 1);
    let after = wall_now_ns();
    for row in &rows {
        assert_eq!(row.values, vec![Value::String("sonde_workload".into())]);
        assert_eq!(row.pid, i64::from(workload.pid()));
        assert_eq!(
            (
                row.namespace.as_str(),
                row.pod.as_str(),
                row.container.as_str()
            ),
            ("shop", "web-0", "app")
        );
        assert!(
            (before - 2_000_000_000..=after + 2_000_000_000).contains(&row.time_ns),
            "time_ {} is not within 2 s of the test's wall-clock window {before}..{after}",
            row.time_ns
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_maps_become_metric_series_with_exact_values_until_the_script_stops() {
    let h = harness();
    let (probe, spec) = script(
        "map-export",
        r#"BEGIN { @calls["read"] = 3; @calls["write"] = 5; @total = 42; @pair[7, "x"] = 9;
  print(@calls); print(@total); print(@pair); }"#,
    );
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    let text = eventually("map series", &running, || {
        let text = h.scrape();
        text.contains("sonde_bpftrace_pair{").then_some(text)
    })
    .await;
    for want in [
        r#"sonde_bpftrace_calls{script="map-export",key="read"} 3"#,
        r#"sonde_bpftrace_calls{script="map-export",key="write"} 5"#,
        r#"sonde_bpftrace_total{script="map-export"} 42"#,
        r#"sonde_bpftrace_pair{script="map-export",key0="7",key1="x"} 9"#,
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    running.stop().await;
    assert!(
        !h.scrape().contains("script=\"map-export\",key"),
        "series survive the stopped script"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_fails_the_probe_with_bpftraces_own_message() {
    let h = harness();
    let (probe, spec) = script("broken", r#"BEGIN { printf("hi" }"#);
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    let status = eventually("Failed", &running, || {
        let s = running.status();
        (s.state == ProbeState::Failed).then_some(s)
    })
    .await;
    assert!(
        status.message.starts_with("program:1:") && status.message.contains("ERROR: syntax error"),
        "message: {}",
        status.message
    );
    assert!(
        !status.message.contains("RLIMIT_MEMLOCK"),
        "message: {}",
        status.message
    );
    running.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn each_failure_of_a_script_is_logged_at_warn_once_with_bpftraces_message() {
    let (logs, _guard) = Logs::capture();
    let h = harness();
    let (probe, spec) = script("broken", r#"BEGIN { printf("hi" }"#);
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    // Failed once, restarted, failed again.
    eventually("a second failure", &running, || {
        (logs.warnings("BpftraceScript/broken").len() >= 2).then_some(())
    })
    .await;
    let restarts = running.status().restarts;
    running.stop().await;
    let warnings = logs.warnings("BpftraceScript/broken");
    // bpftrace writes several stderr lines per failure: one WARN each time, not one per line.
    assert!(
        warnings.len() == restarts as usize + 1,
        "{restarts} restarts: {warnings:#?}"
    );
    for w in &warnings {
        assert!(
            w.contains("ERROR: syntax error") && w.contains("restarting in"),
            "{w}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_table_name_clash_is_logged_at_warn_once_however_often_the_script_is_updated() {
    let (logs, _guard) = Logs::capture();
    let h = harness();
    let (first, first_spec) = script("first", r#"BEGIN { printf("a:%d\n", pid); }"#);
    let (mut second, mut second_spec) = script("second", r#"BEGIN { printf("b:%s\n", comm); }"#);
    let first_spec = BpftraceScriptSpec {
        table_name: Some("shared".into()),
        ..first_spec
    };
    second_spec.table_name = Some("shared".into());
    second.config = ProbeConfig::BpftraceScript(second_spec.clone());
    let a = BpftraceProbe::start(&h.ctx, &first, &first_spec, &[]);
    let mut b = BpftraceProbe::start(&h.ctx, &second, &second_spec, &[]);
    assert_eq!(b.status().state, ProbeState::Failed, "{:?}", b.status());
    b.update(&second, &second_spec, &[]).await;
    b.update(&second, &second_spec, &[]).await;
    let warnings = logs.warnings("BpftraceScript/second");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("table shared already exists with other columns"),
        "{}",
        warnings[0]
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kprobe_script_on_a_node_without_kprobes_fails_for_good_saying_why() {
    let mut caps = NodeCapabilities {
        tracepoints: true,
        uprobes: true,
        ..NodeCapabilities::default()
    };
    caps.errors
        .insert("kprobes".into(), "no kprobe PMU in this kernel".into());
    let h = harness_on(Some(caps));
    // A function no kernel has: attaching fails whether or not this kernel has kprobes.
    let (probe, spec) = script(
        "kernel-fn",
        r#"kprobe:sonde_no_such_function { printf("x:%d\n", pid); }"#,
    );
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    let status = eventually("the capability verdict", &running, || {
        let s = running.status();
        s.message.contains("not retrying").then_some(s)
    })
    .await;
    assert_eq!(status.state, ProbeState::Failed, "{status:?}");
    assert!(
        status.message.contains(
            "this node cannot attach kprobe probes (its capabilities report kprobes: false (no kprobe PMU in this kernel))"
        ),
        "{}",
        status.message
    );
    // The first restart would come after a second: none comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = running.status();
    assert_eq!(
        (later.restarts, later.state),
        (0, ProbeState::Failed),
        "{later:?}"
    );
    assert_eq!(running.child_pid(), None);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uprobe_path_missing_from_every_target_fails_naming_the_path_and_pods() {
    let h = harness();
    let workload = Workload::start();
    let (probe, spec) = script("missing-path", "uprobe:/no/such/binary:f { }");
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[workload.target()]);
    let status = running.status();
    assert_eq!(status.state, ProbeState::Failed);
    assert!(
        status.message.contains("/no/such/binary") && status.message.contains("shop/web-0"),
        "{status:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_bpftrace_process() {
    let h = harness();
    let (probe, spec) = script("stoppable", "interval:s:1 { @ticks = count(); }");
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    let pid = eventually("an attached child", &running, || {
        (running.status().state == ProbeState::Attached)
            .then(|| running.child_pid())
            .flatten()
    })
    .await;
    assert!(!process_is_gone(pid));
    running.stop().await;
    assert!(process_is_gone(pid), "bpftrace {pid} survived stop()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exiting_script_is_restarted_and_the_restart_counted() {
    let h = harness();
    let (probe, spec) = script("exits", "BEGIN { exit(); }");
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    let status: RuntimeStatus = eventually("a restart", &running, || {
        let s = running.status();
        (s.restarts >= 1).then_some(s)
    })
    .await;
    assert_ne!(status.state, ProbeState::Failed, "{status:?}");
    let text = h.scrape();
    assert!(
        text.contains(r#"sonde_bpftrace_restarts_total{script="exits"} "#),
        "{text}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uprobe_in_a_target_process_binary_produces_rows() {
    let h = harness();
    let workload = Workload::start();
    let path = workload_binary().display().to_string();
    let (probe, spec) = script(
        "traced-function",
        &format!(
            "uprobe:{path}:sonde_traced_function {{ printf(\"pid:%d arg:%d\\n\", pid, arg0); }}"
        ),
    );
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[workload.target()]);
    let rows = eventually("uprobe rows", &running, || {
        let rows: Vec<Row> = h
            .rows("traced_function")
            .into_iter()
            .filter(|r| r.pid == i64::from(workload.pid()))
            .collect();
        (rows.len() >= 2).then_some(rows)
    })
    .await;
    assert_eq!(running.status().targets_attached, 1);
    assert_eq!(rows[0].pod, "web-0");
    let args: Vec<i64> = rows
        .iter()
        .map(|r| match r.values[0] {
            Value::Int64(v) => v,
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        args.windows(2).all(|w| w[1] > w[0]),
        "the loop counter should increase: {args:?}"
    );
    running.stop().await;
}

#[test]
fn sigkilling_the_owner_of_a_bpftrace_child_kills_the_child() {
    bpftrace();
    let exe = std::env::current_exe().unwrap();
    let mut helper = Command::new(exe)
        .args([
            "--exact",
            "orphan_helper_runs_a_script_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let pid: u32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once("BPFTRACE_PID=")
                .map(|(_, p)| p.trim().parse().unwrap())
        })
        .expect("the helper printed no bpftrace pid");
    assert!(!process_is_gone(pid));
    helper.kill().unwrap(); // SIGKILL: no destructor of the helper runs.
    helper.wait().unwrap();
    let start = Instant::now();
    while !process_is_gone(pid) {
        assert!(
            start.elapsed() < WAIT,
            "bpftrace {pid} outlived its SIGKILLed owner"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs in a child process of the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for sigkilling_the_owner_of_a_bpftrace_child_kills_the_child"]
async fn orphan_helper_runs_a_script_until_killed() {
    assert_eq!(
        std::env::var(ORPHAN_HELPER_ENV).as_deref(),
        Ok("1"),
        "only run by the orphan test"
    );
    let h = harness();
    let (probe, spec) = script("orphan", "interval:s:1 { @ticks = count(); }");
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    let pid = eventually("an attached child", &running, || {
        (running.status().state == ProbeState::Attached)
            .then(|| running.child_pid())
            .flatten()
    })
    .await;
    println!("BPFTRACE_PID={pid}");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_script_sees_only_its_pods_processes_even_ones_running_the_same_binary() {
    let h = harness();
    let cgroup = common::TestCgroup::new("bpftrace-pod");
    let inside = workload_in(&cgroup);
    // The same binary file outside the pod: its uprobe is the pod's, only the cgroup tells them apart.
    let outside = Workload::start();
    let path = workload_binary().display().to_string();
    // Every workload of concurrent tests matches the comm predicate: only the pod's may pass.
    let (probe, spec) = pod_script(
        "pod-only",
        &format!(
            r#"tracepoint:syscalls:sys_enter_getppid, uprobe:{path}:sonde_traced_function /comm == "sonde_workload"/ {{
  printf("pid:%d probe:%s\n", pid, probe);
}}"#
        ),
    );
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[inside.target()]);
    let rows = eventually("rows of both probes from the pod", &running, || {
        let rows = h.rows("pod_only");
        let from = |kind: &str| {
            rows.iter()
                .filter(|r| matches!(&r.values[0], Value::String(p) if p.starts_with(kind)))
                .count()
        };
        (from("tracepoint") >= 3 && from("uprobe") >= 3).then_some(rows)
    })
    .await;
    // The outside workload calls both every 20 ms: a second is ample to see it leak through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = [rows, h.rows("pod_only")].concat();
    let strangers: Vec<i64> = rows
        .iter()
        .map(|r| r.pid)
        .filter(|pid| *pid != i64::from(inside.pid()))
        .collect();
    assert!(
        strangers.is_empty(),
        "rows of processes outside the pod (outside workload is {}): {strangers:?}",
        outside.pid()
    );
    assert!(rows.iter().all(|r| r.pod == "web-0"));
    let status = running.status();
    assert_eq!(
        (status.state, status.targets_attached),
        (ProbeState::Attached, 1),
        "{status:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_script_runs_only_while_a_selected_pod_is_on_the_node() {
    let h = harness();
    let (probe, spec) = pod_script(
        "pod-lifetime",
        r#"tracepoint:syscalls:sys_enter_getppid { printf("pid:%d\n", pid); }"#,
    );
    let mut running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[]);
    let waiting = |running: &BpftraceProbe| {
        let status = running.status();
        assert_eq!(
            (
                status.state,
                status.message.as_str(),
                status.targets_attached
            ),
            (ProbeState::Pending, NO_POD_MESSAGE, 0),
            "{status:?}"
        );
        assert_eq!(running.child_pid(), None, "bpftrace runs without a pod");
    };
    waiting(&running);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    waiting(&running);
    assert!(h.rows("pod_lifetime").is_empty());

    let cgroup = common::TestCgroup::new("bpftrace-lifetime");
    let pod = workload_in(&cgroup);
    running.update(&probe, &spec, &[pod.target()]).await;
    let child = eventually("bpftrace attached for the pod", &running, || {
        (running.status().state == ProbeState::Attached && !h.rows("pod_lifetime").is_empty())
            .then(|| running.child_pid())
            .flatten()
    })
    .await;

    // The pod's last process went away.
    running.update(&probe, &spec, &[]).await;
    assert!(
        process_is_gone(child),
        "bpftrace {child} outlived the last pod"
    );
    waiting(&running);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_script_whose_block_mixes_begin_and_a_tracepoint_fails_saying_why() {
    let h = harness();
    let cgroup = common::TestCgroup::new("bpftrace-mixed");
    let pod = workload_in(&cgroup);
    let (probe, spec) = pod_script(
        "pod-mixed",
        r#"BEGIN, tracepoint:syscalls:sys_enter_getppid { @calls = count(); }"#,
    );
    let running = BpftraceProbe::start(&h.ctx, &probe, &spec, &[pod.target()]);
    let status = running.status();
    assert_eq!(status.state, ProbeState::Failed, "{status:?}");
    assert!(status.message.contains("own block"), "{}", status.message);
    assert_eq!(running.child_pid(), None);
    running.stop().await;
}
