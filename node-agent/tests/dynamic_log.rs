//! DynamicLog runtime against real binaries and the real kernel: a Go program compiled here with the
//! installed Go toolchain (and Go 1.21 through GOTOOLCHAIN), a C program and a Rust program, each
//! driven over stdin so every call happens after the probes are attached.
//!
//! Needs root (uprobes), /usr/local/go/bin/go, cc and rustc; a missing tool fails the tests loudly.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use sonde_agent::probes::bpftrace::BpftraceShared;
use sonde_agent::probes::dynamic_log::{DynamicLogProbe, DynamicLogShared};
use sonde_agent::probes::profiler::ProfilerShared;
use sonde_agent::probes::protocols::ProtocolsShared;
use sonde_agent::probes::{ProbeContext, RuntimeStatus};
use sonde_agent::tables::{Column, Query, Row, Store, Value};
use sonde_agent::targets::TargetProcess;
use sonde_api::{
    AssignedProbe, Capture, CaptureExpr, DynamicLogSpec, MetricSpec, MetricType, ProbeConfig,
    ProbeOwner, ProbeState,
};

const WAIT: Duration = Duration::from_secs(60);
const GO: &str = "/usr/local/go/bin/go";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dynamic_log")
}

/// This test process's own directory for built fixtures. Test binaries running at the same time
/// (this one and the e2e suite, or two `cargo test`s) must not replace each other's programs: a
/// program started from a path that another build renamed over runs another file than the one the
/// test analyses. Directories of test processes that have exited are removed.
fn out_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dynamic_log");
        std::fs::create_dir_all(&parent).unwrap();
        for entry in std::fs::read_dir(&parent).unwrap().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("run-")) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = parent.join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
    .clone()
}

/// Runs a build command that writes `name` into [`out_dir`].
fn build(name: &str, mut command: Command, binary: &Path) -> PathBuf {
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?} to build {name}: {e}; is the toolchain installed (scripts/setup)?")
    });
    assert!(
        out.status.success(),
        "building {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    binary.to_owned()
}

/// The Go test program built with `toolchain` (None: the installed Go).
fn go_program(toolchain: Option<&'static str>) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<Option<&'static str>, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    if let Some(p) = built.get(&toolchain) {
        return p.clone();
    }
    let name = format!("goprog-{}", toolchain.unwrap_or("local"));
    let building = out_dir().join(&name);
    let mut command = Command::new(GO);
    command
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&building)
        .arg(".")
        .current_dir(fixtures().join("goprog"))
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0");
    match toolchain {
        Some(t) => command.env("GOTOOLCHAIN", t),
        None => command.env("GOTOOLCHAIN", "local"),
    };
    let path = build(&name, command, &building);
    built.insert(toolchain, path.clone());
    path
}

fn c_program() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let building = out_dir().join("cprog");
            let mut command = Command::new("cc");
            command
                .args([
                    "-O1",
                    "-g",
                    "-fno-inline",
                    "-fno-optimize-sibling-calls",
                    "-o",
                ])
                .arg(&building)
                .arg(fixtures().join("cprog.c"));
            build("cprog", command, &building)
        })
        .clone()
}

/// The C program GCC specialises: built at -O2 like a release build, so it calls a clone.
fn c_clone_program() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let building = out_dir().join("cclone");
            let mut command = Command::new("cc");
            command
                .args(["-O2", "-g", "-o"])
                .arg(&building)
                .arg(fixtures().join("cclone.c"));
            build("cclone", command, &building)
        })
        .clone()
}

/// The C program whose functions GCC inlines at -O2.
fn c_inline_program() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let building = out_dir().join("cinline");
            let mut command = Command::new("cc");
            command
                .args(["-O2", "-g", "-o"])
                .arg(&building)
                .arg(fixtures().join("cinline.c"));
            build("cinline", command, &building)
        })
        .clone()
}

fn rust_program() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let building = out_dir().join("rustprog");
            let mut command = Command::new("rustc");
            command
                .args(["--edition", "2021", "-g", "-C", "opt-level=1", "-o"])
                .arg(&building)
                .arg(fixtures().join("rustprog.rs"));
            build("rustprog", command, &building)
        })
        .clone()
}

/// The Rust test program as a release build with debug information (`-C debuginfo=2 -O`).
fn rust_release_program() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let building = out_dir().join("rustprog-release");
            let mut command = Command::new("rustc");
            command
                .args(["--edition", "2021", "-C", "debuginfo=2", "-O", "-o"])
                .arg(&building)
                .arg(fixtures().join("rustprog.rs"));
            build("rustprog-release", command, &building)
        })
        .clone()
}

/// A running test program, killed when dropped.
struct Program {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    exe: PathBuf,
}

impl Program {
    fn start(exe: &Path) -> Program {
        let mut child = Command::new(exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{} did not start", exe.display());
        Program {
            child,
            stdin,
            stdout,
            exe: exe.to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn target(&self) -> TargetProcess {
        TargetProcess {
            pid: self.pid(),
            namespace: "shop".into(),
            pod: "checkout-0".into(),
            pod_uid: "uid-checkout-0".into(),
            container: "server".into(),
            container_id: "containerd://abc".into(),
            exe: self.exe.clone(),
            cmdline: self.exe.display().to_string(),
        }
    }

    /// Runs a scenario and waits until the program says it is done.
    fn run(&mut self, scenario: &str) {
        writeln!(self.stdin, "{scenario}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the program exited during scenario {scenario}");
            if line.trim() == format!("done {scenario}") {
                return;
            }
        }
    }

    /// Runs a scenario and returns the lines it printed before "done".
    fn run_output(&mut self, scenario: &str) -> Vec<String> {
        writeln!(self.stdin, "{scenario}").unwrap();
        self.stdin.flush().unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the program exited during scenario {scenario}");
            if line.trim() == format!("done {scenario}") {
                return lines;
            }
            lines.push(line.trim().to_owned());
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Harness {
    registry: Arc<Registry>,
    ctx: ProbeContext,
}

fn harness() -> Harness {
    let mut registry = Registry::default();
    let ctx = ProbeContext {
        node: "test-node".into(),
        tables: Store::default(),
        bpftrace: Arc::new(BpftraceShared::new(&mut registry, "bpftrace".into())),
        protocols: Arc::new(ProtocolsShared::new(&mut registry)),
        profiler: Arc::new(ProfilerShared::new(&mut registry)),
        dynamic_log: Arc::new(DynamicLogShared::new(&mut registry)),
    };
    Harness {
        registry: Arc::new(registry),
        ctx,
    }
}

impl Harness {
    fn rows(&self, table: &str) -> Vec<Row> {
        self.ctx
            .tables
            .query(table, &Query::default())
            .map(|r| r.rows)
            .unwrap_or_default()
    }

    fn columns(&self, table: &str) -> Vec<Column> {
        self.ctx
            .tables
            .query(table, &Query::default())
            .map(|r| r.columns)
            .unwrap_or_default()
    }

    fn scrape(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    /// Starts a probe on `program` and waits until it is attached.
    async fn start(&self, name: &str, spec: DynamicLogSpec, program: &Program) -> DynamicLogProbe {
        self.start_in("shop", name, spec, program).await
    }

    /// Starts the probe of DynamicLog `namespace`/`name` on `program`; waits until it is attached.
    async fn start_in(
        &self,
        namespace: &str,
        name: &str,
        spec: DynamicLogSpec,
        program: &Program,
    ) -> DynamicLogProbe {
        let probe = assigned_in(namespace, name, &spec);
        let dl = DynamicLogProbe::start(&self.ctx, &probe, &spec, &[program.target()]);
        let status = wait_status(&dl, |s| s.state != ProbeState::Pending).await;
        assert_eq!(
            status.state,
            ProbeState::Attached,
            "probe {name} did not attach: {}",
            status.message
        );
        dl
    }

    /// Waits for at least `n` rows in `table`.
    async fn wait_rows(&self, table: &str, n: usize, probe: &DynamicLogProbe) -> Vec<Row> {
        let start = Instant::now();
        loop {
            let rows = self.rows(table);
            if rows.len() >= n {
                return rows;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {n} rows in {table} (have {}); status: {:?}",
                rows.len(),
                probe.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn assigned(name: &str, spec: &DynamicLogSpec) -> AssignedProbe {
    assigned_in("shop", name, spec)
}

fn assigned_in(namespace: &str, name: &str, spec: &DynamicLogSpec) -> AssignedProbe {
    AssignedProbe {
        id: format!("DynamicLog/{namespace}/{name}"),
        owner: ProbeOwner {
            kind: "DynamicLog".into(),
            namespace: Some(namespace.into()),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
            generation: 1,
        },
        config: ProbeConfig::DynamicLog(spec.clone()),
        targets: Vec::new(),
        process: None,
    }
}

async fn wait_status(
    probe: &DynamicLogProbe,
    done: impl Fn(&RuntimeStatus) -> bool,
) -> RuntimeStatus {
    let start = Instant::now();
    loop {
        let s = probe.status();
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < WAIT, "status never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spec(function: &str) -> DynamicLogSpec {
    DynamicLogSpec {
        selector: None,
        container: None,
        process: None,
        ttl: None,
        function: function.into(),
        capture: None,
        max_string_bytes: None,
        table_name: None,
        metrics: Vec::new(),
    }
}

fn capture(args: &[(&str, &str)], returns: &[(&str, &str)], latency: bool) -> Option<Capture> {
    let exprs = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(n, e)| CaptureExpr {
                name: (*n).into(),
                expr: (*e).into(),
            })
            .collect()
    };
    Some(Capture {
        args: exprs(args),
        returns: exprs(returns),
        latency,
        goroutine: true,
    })
}

/// A row's own values by column name (target columns excluded).
fn by_name(columns: &[Column], row: &Row) -> BTreeMap<String, Value> {
    columns
        .iter()
        .skip(sonde_agent::tables::TARGET_COLUMNS.len())
        .zip(&row.values)
        .map(|(c, v)| (c.name.clone(), v.clone()))
        .collect()
}

fn s(text: &str) -> Value {
    Value::String(text.into())
}

async fn order_scenario_is_captured_exactly(toolchain: Option<&'static str>) {
    let h = harness();
    let mut program = Program::start(&go_program(toolchain));
    let mut sp = spec("main.(*Server).PlaceOrder");
    sp.capture = capture(
        &[
            ("order_id", "req.ID"),
            ("user", "req.User.Name"),
            ("age", "req.User.Age"),
            ("qty", "qty"),
            ("tags", "len(req.Tags)"),
        ],
        &[("total", "$0"), ("err", "$1")],
        true,
    );
    let probe = h.start("orders", sp, &program).await;
    program.run("order");
    let rows = h.wait_rows("shop.orders", 2, &probe).await;
    let cols = h.columns("shop.orders");
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        &names[sonde_agent::tables::TARGET_COLUMNS.len()..],
        [
            "goid", "order_id", "user", "age", "qty", "tags", "total", "err", "latency"
        ]
    );
    let first = by_name(&cols, &rows[0]);
    assert_eq!(first["order_id"], Value::Int64(42));
    assert_eq!(first["user"], s("alice"));
    assert_eq!(first["age"], Value::Int64(31));
    assert_eq!(first["qty"], Value::Int64(3));
    assert_eq!(first["tags"], Value::Int64(1));
    assert_eq!(first["total"], Value::Int64(126));
    assert_eq!(first["err"], Value::Null);
    assert!(matches!(first["latency"], Value::Int64(n) if n > 0));
    assert!(matches!(first["goid"], Value::Int64(n) if n > 0));
    assert_eq!(rows[0].pod, "checkout-0");
    assert_eq!(rows[0].pid, i64::from(program.pid()));
    let second = by_name(&cols, &rows[1]);
    assert_eq!(second["order_id"], Value::Int64(7));
    assert_eq!(second["user"], s("carol"));
    assert_eq!(second["total"], Value::Int64(0));
    assert_eq!(
        second["err"],
        s(r#"{"type":"*errors.errorString","value":"bad quantity"}"#)
    );
    probe.stop().await;
    assert!(program.alive());
}

#[tokio::test]
async fn go_pointer_fields_results_and_errors_are_captured_exactly() {
    order_scenario_is_captured_exactly(None).await;
}

#[tokio::test]
async fn go_1_21_binaries_are_captured_exactly_too() {
    order_scenario_is_captured_exactly(Some("go1.21.13")).await;
}

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}")),
        other => panic!("not a JSON string: {other:?}"),
    }
}

/// Runs `scenario` under a probe on `function` and returns the table's rows by column name.
async fn trace(
    function: &str,
    setup: impl FnOnce(&mut DynamicLogSpec),
    scenario: &str,
    rows: usize,
) -> (Vec<BTreeMap<String, Value>>, RuntimeStatus) {
    let h = harness();
    let mut program = Program::start(&go_program(None));
    let mut sp = spec(function);
    sp.table_name = Some("calls".into());
    setup(&mut sp);
    let probe = h.start("calls", sp, &program).await;
    program.run(scenario);
    let got = h.wait_rows("shop.calls", rows, &probe).await;
    // Nothing more arrives: the scenario is over and every event was read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_after = h.rows("shop.calls");
    assert_eq!(
        got.len(),
        got_after.len(),
        "more rows than expected arrived"
    );
    let cols = h.columns("shop.calls");
    let status = probe.status();
    probe.stop().await;
    assert!(program.alive(), "the traced program died");
    (
        got_after.iter().map(|r| by_name(&cols, r)).collect(),
        status,
    )
}

#[tokio::test]
async fn go_integers_of_every_width_are_exact_including_the_one_passed_on_the_stack() {
    let (rows, _) = trace("main.Ints", |_| {}, "ints", 1).await;
    let r = &rows[0];
    assert_eq!(r["a"], Value::Int64(-8));
    assert_eq!(r["b"], Value::Int64(-1600));
    assert_eq!(r["c"], Value::Int64(-320_000));
    assert_eq!(r["d"], Value::Int64(-64_000_000_000));
    assert_eq!(r["e"], Value::UInt64(200));
    assert_eq!(r["f"], Value::UInt64(60_000));
    assert_eq!(r["g"], Value::UInt64(4_000_000_000));
    assert_eq!(r["h"], Value::UInt64(18_000_000_000_000_000_000));
    assert_eq!(r["i"], Value::Int64(-7));
    // The tenth integer does not fit in the nine integer registers: it is read from the stack.
    assert_eq!(r["j"], Value::UInt64(9));
    let sum = [
        -8i64,
        -1600,
        -320_000,
        -64_000_000_000,
        200,
        60_000,
        4_000_000_000,
        -7,
        9,
    ]
    .iter()
    .fold(18_000_000_000_000_000_000u64 as i64, |a, b| {
        a.wrapping_add(*b)
    });
    assert_eq!(r["ret0"], Value::Int64(sum));
}

#[tokio::test]
async fn go_bools_and_bytes_are_exact() {
    let (rows, _) = trace("main.Flag", |_| {}, "flag", 2).await;
    assert_eq!(rows[0]["b"], Value::Boolean(false));
    assert_eq!(rows[0]["n"], Value::UInt64(3));
    assert_eq!(rows[0]["ret0"], Value::Boolean(true));
    assert_eq!(rows[1]["b"], Value::Boolean(true));
    assert_eq!(rows[1]["n"], Value::UInt64(0));
    assert_eq!(rows[1]["ret0"], Value::Boolean(false));
}

#[tokio::test]
async fn go_strings_are_cut_at_max_string_bytes_and_byte_slices_are_hex() {
    let (rows, _) = trace("main.Greet", |s| s.max_string_bytes = Some(16), "greet", 2).await;
    assert_eq!(rows[0]["name"], s("bob"));
    assert_eq!(rows[0]["times"], Value::Int64(1));
    assert_eq!(rows[0]["ret0"], s("hi bob "));
    assert_eq!(rows[1]["name"], s(&"x".repeat(16)));
    assert_eq!(rows[1]["ret0"], s(&format!("hi {}", "x".repeat(13))));

    let (rows, _) = trace("main.Checksum", |_| {}, "bytes", 1).await;
    assert_eq!(rows[0]["data"], s("deadbeef"));
    assert_eq!(rows[0]["ret0"], Value::Int64(0xde + 0xad + 0xbe + 0xef));
}

#[tokio::test]
async fn go_structs_passed_in_registers_and_value_receivers_render_as_json() {
    let (rows, _) = trace("main.Move", |_| {}, "move", 1).await;
    assert_eq!(
        json(&rows[0]["p"]),
        serde_json::json!({"X": 1, "Y": -2, "Label": "p"})
    );
    assert_eq!(rows[0]["dx"], Value::Int64(10));
    assert_eq!(
        json(&rows[0]["ret0"]),
        serde_json::json!({"X": 11, "Y": -2, "Label": "p"})
    );
    let (rows, _) = trace("Point.Norm", |_| {}, "move", 1).await;
    assert_eq!(
        json(&rows[0]["p"]),
        serde_json::json!({"X": 3, "Y": 4, "Label": "q"})
    );
    assert_eq!(rows[0]["ret0"], Value::Int64(25));
}

#[tokio::test]
async fn go_slices_render_as_arrays_and_indexes_pick_elements() {
    let (rows, _) = trace("main.Sum32", |_| {}, "sum32", 1).await;
    assert_eq!(json(&rows[0]["xs"]), serde_json::json!([1, -2, 3]));
    assert_eq!(rows[0]["ret0"], Value::Int64(2));
    let (rows, _) = trace(
        "PlaceOrder",
        |s| {
            s.capture = capture(
                &[("tag", "req.Tags[0]"), ("n", "len(req.Tags)")],
                &[],
                false,
            );
        },
        "order",
        2,
    )
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["tag"], s("a"));
    assert_eq!(rows[0]["n"], Value::Int64(1));
    // The second order has no tags: reading element 0 of a nil slice faults, which is a null.
    assert_eq!(rows[1]["tag"], Value::Null);
    assert_eq!(rows[1]["n"], Value::Int64(0));
}

/// Go re-runs a function's first instructions after `runtime.morestack` (stack growth, or the
/// runtime asking the goroutine to yield): the entry probe sits after that stack check so the
/// prologue's second run records nothing. `Grow` has a 1 KiB frame, so 200 nested calls on a fresh
/// goroutine grow its stack several times, each time in `Grow`'s own prologue.
#[tokio::test]
async fn a_go_prologue_rerun_by_stack_growth_records_each_call_once() {
    let (rows, _) = trace(
        "main.Grow",
        |s| s.capture = capture(&[("depth", "depth")], &[], false),
        "grow",
        201,
    )
    .await;
    let depths: Vec<Value> = rows.iter().map(|r| r["depth"].clone()).collect();
    let expected: Vec<Value> = (0..=200).rev().map(Value::Int64).collect();
    assert_eq!(depths, expected);
}

/// Both toolchains: the entry probe goes on the frame setup (`push rbp`) that follows the stack
/// check, for a small frame (`cmp rsp; jbe`) and a large one (`lea r12; cmp r12; jbe`).
#[test]
fn go_entry_probes_sit_after_the_stack_check_with_every_toolchain() {
    use sonde_agent::probes::dynamic_log::analyze::analyze;
    for toolchain in [None, Some("go1.21.13")] {
        let exe = go_program(toolchain);
        let bytes = std::fs::read(&exe).unwrap();
        for function in ["main.(*Server).PlaceOrder", "main.Grow"] {
            let entry = analyze(&exe, Path::new("/"), &spec(function))
                .unwrap()
                .entry_offset;
            assert_eq!(
                bytes[entry as usize], 0x55,
                "{function} ({toolchain:?}): entry probe at {entry:#x} is not on push rbp"
            );
        }
    }
}

/// The probe manager sends the full target set again on every rescan; processes already traced
/// must not be attached a second time (each call would then be recorded twice).
#[tokio::test]
async fn every_call_is_one_row_while_the_target_set_keeps_being_updated() {
    const ROUNDS: usize = 20;
    let h = harness();
    let mut first = Program::start(&go_program(None));
    let mut second = Program::start(&go_program(None));
    let mut sp = spec("main.(*Server).PlaceOrder");
    sp.capture = capture(&[("id", "req.ID")], &[], false);
    let probe_def = assigned("updated", &sp);
    let mut probe = h.start("updated", sp.clone(), &first).await;
    for round in 0..ROUNDS {
        let targets = if round % 2 == 0 {
            [first.target(), second.target()]
        } else {
            [second.target(), first.target()]
        };
        probe.update(&probe_def, &sp, &targets).await;
        if round == 0 {
            wait_status(&probe, |s| s.targets_attached == 2).await;
        }
        first.run("order");
        second.run("order");
    }
    let rows = h.wait_rows("shop.updated", 4 * ROUNDS, &probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.rows("shop.updated").len(),
        rows.len(),
        "more rows arrived"
    );
    let cols = h.columns("shop.updated");
    for program in [&first, &second] {
        let ids: Vec<Value> = rows
            .iter()
            .filter(|r| r.pid == i64::from(program.pid()))
            .map(|r| by_name(&cols, r)["id"].clone())
            .collect();
        let expected: Vec<Value> = (0..ROUNDS)
            .flat_map(|_| [Value::Int64(42), Value::Int64(7)])
            .collect();
        assert_eq!(ids, expected, "pid {}", program.pid());
    }
    probe.stop().await;
    assert!(first.alive() && second.alive());
}

/// The replacement fixture built as `version` ("v1" or "v2"): v2's `main.Handle` takes its
/// parameters in the other order (so in other registers) and computes another result.
fn replaceable_program(version: &'static str) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<&'static str, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = built.get(version) {
        return p.clone();
    }
    let name = format!("goreplace-{version}");
    let exe = out_dir().join(&name);
    let mut command = Command::new(GO);
    command
        .args(["build", "-buildvcs=false", "-tags", version, "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(fixtures().join("goreplace"))
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    let path = build(&name, command, &exe);
    built.insert(version, path.clone());
    path
}

/// Deploys `build` to `path` the way deploy tools do: beside it under a temporary name, then
/// renamed over it (a hard link, never a write, so the file is never busy for exec).
fn deploy(build: &Path, path: &Path) {
    let staged = path.with_extension("new");
    std::fs::hard_link(build, &staged).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// The (dev, inode) of the file `pid` runs.
fn running_inode(pid: u32) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    (meta.dev(), meta.ino())
}

fn handle_spec() -> DynamicLogSpec {
    let mut sp = spec("main.Handle");
    sp.capture = capture(
        &[("id", "id"), ("name", "name")],
        &[("result", "$0")],
        false,
    );
    sp
}

/// (id, name, result) of each row of `pid`, in call order.
fn handle_rows(h: &Harness, table: &str, pid: u32) -> Vec<(Value, Value, Value)> {
    let cols = h.columns(table);
    h.rows(table)
        .iter()
        .filter(|r| r.pid == i64::from(pid))
        .map(|r| {
            let v = by_name(&cols, r);
            (v["id"].clone(), v["name"].clone(), v["result"].clone())
        })
        .collect()
}

fn v1_call() -> (Value, Value, Value) {
    (Value::Int64(11), s("v1"), Value::Int64(22))
}

fn v2_call() -> (Value, Value, Value) {
    (Value::Int64(22), s("two"), Value::Int64(3022))
}

/// A deploy by rename-over puts v2 at the path of a process still running v1: that process is
/// analysed and probed in the file it runs (v1's parameter order and offsets), not in the one now
/// at its path, and a process started from the path afterwards is traced with v2's.
#[tokio::test]
async fn a_process_whose_binary_was_renamed_over_is_traced_with_the_build_it_runs() {
    let dir = tempfile::tempdir_in(out_dir()).unwrap();
    let app = dir.path().join("app");
    deploy(&replaceable_program("v1"), &app);
    let mut old = Program::start(&app);
    deploy(&replaceable_program("v2"), &app);
    let mut new = Program::start(&app);
    assert_ne!(running_inode(old.pid()), running_inode(new.pid()));
    let h = harness();
    let sp = handle_spec();
    // The old process alone first: its path names v2 by the time it is analysed.
    let mut probe = h.start("replaced", sp.clone(), &old).await;
    old.run("handle");
    h.wait_rows("shop.replaced", 1, &probe).await;
    probe
        .update(
            &assigned("replaced", &sp),
            &sp,
            &[old.target(), new.target()],
        )
        .await;
    wait_status(&probe, |s| s.targets_attached == 2).await;
    new.run("handle");
    old.run("handle");
    h.wait_rows("shop.replaced", 3, &probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handle_rows(&h, "shop.replaced", old.pid()),
        [v1_call(), v1_call()]
    );
    assert_eq!(handle_rows(&h, "shop.replaced", new.pid()), [v2_call()]);
    probe.stop().await;
    assert!(old.alive() && new.alive());
}

/// `/proc/<pid>/exe` still opens an executable removed from disk.
#[tokio::test]
async fn a_process_whose_binary_was_deleted_is_still_traced() {
    let dir = tempfile::tempdir_in(out_dir()).unwrap();
    let app = dir.path().join("app");
    deploy(&replaceable_program("v1"), &app);
    let mut program = Program::start(&app);
    std::fs::remove_file(&app).unwrap();
    let h = harness();
    let probe = h.start("deleted", handle_spec(), &program).await;
    program.run("handle");
    h.wait_rows("shop.deleted", 1, &probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle_rows(&h, "shop.deleted", program.pid()), [v1_call()]);
    probe.stop().await;
}

/// A process that exec's another binary keeps its pid; the next target update attaches to the new
/// image, with its own layout.
#[tokio::test]
async fn a_process_that_execs_another_build_is_traced_in_the_new_one_after_an_update() {
    let h = harness();
    let sp = handle_spec();
    let mut program = Program::start(&replaceable_program("v1"));
    let mut probe = h.start("reexec", sp.clone(), &program).await;
    program.run("handle");
    h.wait_rows("shop.reexec", 1, &probe).await;
    let v2 = replaceable_program("v2");
    writeln!(program.stdin, "exec {}", v2.display()).unwrap();
    program.stdin.flush().unwrap();
    let mut line = String::new();
    program.stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the program did not exec {}",
        v2.display()
    );
    program.exe = v2;
    probe
        .update(&assigned("reexec", &sp), &sp, &[program.target()])
        .await;
    // The update is applied asynchronously: call until a v2 row arrives.
    let start = Instant::now();
    while !handle_rows(&h, "shop.reexec", program.pid()).contains(&v2_call()) {
        assert!(
            start.elapsed() < WAIT,
            "no v2 row after the exec: {:?}; status: {:?}",
            handle_rows(&h, "shop.reexec", program.pid()),
            probe.status()
        );
        program.run("handle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = handle_rows(&h, "shop.reexec", program.pid());
    assert_eq!(rows[0], v1_call());
    assert!(
        rows[1..].iter().all(|r| *r == v2_call()),
        "after the exec only v2 calls: {rows:?}"
    );
    probe.stop().await;
}

/// A target that cannot be opened (here: it has exited since it was listed) fails with the pid,
/// the path, and what happens next.
#[tokio::test]
async fn a_target_whose_executable_cannot_be_opened_fails_naming_pid_and_path() {
    let mut program = Program::start(&replaceable_program("v1"));
    let target = program.target();
    program.child.kill().unwrap();
    program.child.wait().unwrap();
    let h = harness();
    let sp = handle_spec();
    let probe = DynamicLogProbe::start(
        &h.ctx,
        &assigned("exited", &sp),
        &sp,
        std::slice::from_ref(&target),
    );
    let status = wait_status(&probe, |s| s.state != ProbeState::Pending).await;
    assert_eq!(status.state, ProbeState::Failed, "{}", status.message);
    let pid = target.pid;
    for part in [
        format!("pid {pid} has exited"),
        format!("/proc/{pid}/exe"),
        target.exe.display().to_string(),
        "dropped on the next target rescan".into(),
    ] {
        assert!(
            status.message.contains(&part),
            "{part:?} not in {}",
            status.message
        );
    }
    probe.stop().await;
}

#[tokio::test]
async fn go_default_capture_takes_every_argument_and_result() {
    let (rows, _) = trace("PlaceOrder", |_| {}, "order", 2).await;
    assert_eq!(json(&rows[0]["s"]), serde_json::json!({"Calls": 0}));
    let req = json(&rows[0]["req"]);
    assert_eq!(req["ID"], serde_json::json!(42));
    assert!(req["User"].as_str().unwrap().starts_with("0x"), "{req}");
    assert_eq!(rows[0]["qty"], Value::Int64(3));
    assert_eq!(rows[0]["ret0"], Value::Int64(126));
    assert_eq!(rows[0]["ret1"], Value::Null);
    assert!(matches!(rows[0]["latency"], Value::Int64(n) if n > 0));
}

#[tokio::test]
async fn go_floats_in_xmm_registers_are_left_out_with_a_reason() {
    let (rows, status) = trace("main.Floats", |_| {}, "floats", 1).await;
    assert_eq!(rows[0]["n"], Value::Int64(3));
    assert!(!rows[0].contains_key("x"));
    assert!(
        status.message.contains("x (float32) left out") && status.message.contains("XMM"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn a_panicking_call_leaves_no_row_and_later_calls_are_still_exact() {
    let (rows, _) = trace("main.Risky", |_| {}, "risky", 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["n"], Value::Int64(5));
    assert_eq!(rows[0]["ret0"], Value::Int64(6));
}

#[tokio::test]
async fn a_go_function_that_recovers_a_panic_reports_its_named_result() {
    // Go's DWARF lists `r` twice (it escapes into the deferred closure): one column, one result.
    let (rows, status) = trace("main.callRisky", |_| {}, "risky", 2).await;
    assert_eq!(status.state, ProbeState::Attached, "{}", status.message);
    assert_eq!(rows[0]["n"], Value::Int64(-1));
    assert_eq!(rows[0]["r"], Value::Int64(-1), "the recovered call");
    assert_eq!(rows[1]["n"], Value::Int64(5));
    assert_eq!(rows[1]["r"], Value::Int64(6));
}

#[tokio::test]
async fn recursive_calls_are_joined_with_their_own_returns() {
    let (rows, _) = trace("main.Fib", |_| {}, "fib", 15).await;
    assert_eq!(rows.len(), 15);
    fn fib(n: i64) -> i64 {
        if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
    }
    for r in &rows {
        let Value::Int64(n) = r["n"] else {
            panic!("{r:?}")
        };
        assert_eq!(r["ret0"], Value::Int64(fib(n)), "{r:?}");
    }
}

#[tokio::test]
async fn calls_from_many_goroutines_are_joined_by_goroutine_id() {
    let (rows, _) = trace("main.Work", |_| {}, "work", 200).await;
    assert_eq!(rows.len(), 200);
    let mut ids = std::collections::BTreeSet::new();
    let mut goids = std::collections::BTreeSet::new();
    for r in &rows {
        let Value::Int64(id) = r["id"] else {
            panic!("{r:?}")
        };
        assert_eq!(r["ret0"], Value::Int64(id * 2), "{r:?}");
        ids.insert(id);
        goids.insert(format!("{:?}", r["goid"]));
    }
    assert_eq!(ids, (0..200).collect());
    assert!(goids.len() > 1, "every call on one goroutine: {goids:?}");
}

#[tokio::test]
async fn a_goroutine_whose_stack_grows_during_the_call_survives_and_is_joined() {
    let (rows, _) = trace("main.Grow", |_| {}, "grow", 201).await;
    assert_eq!(rows.len(), 201);
    for r in &rows {
        let Value::Int64(depth) = r["depth"] else {
            panic!("{r:?}")
        };
        assert_eq!(r["ret0"], Value::Int64((depth + 1) / 2), "{r:?}");
    }
}

#[tokio::test]
async fn a_missing_function_fails_with_suggestions() {
    let h = harness();
    let program = Program::start(&go_program(None));
    let sp = spec("main.PlaceOrdr");
    let probe = DynamicLogProbe::start(&h.ctx, &assigned("missing", &sp), &sp, &[program.target()]);
    let status = wait_status(&probe, |s| s.state != ProbeState::Pending).await;
    assert_eq!(status.state, ProbeState::Failed);
    assert!(
        status
            .message
            .contains("function main.PlaceOrdr not found in")
            && status.message.contains("did you mean")
            && status.message.contains("main.(*Server).PlaceOrder"),
        "{}",
        status.message
    );
    probe.stop().await;

    let sp = spec("String");
    let probe = DynamicLogProbe::start(
        &h.ctx,
        &assigned("ambiguous", &sp),
        &sp,
        &[program.target()],
    );
    let status = wait_status(&probe, |s| s.state != ProbeState::Pending).await;
    assert!(
        status.message.contains("function String is ambiguous"),
        "{}",
        status.message
    );
    probe.stop().await;
}

#[tokio::test]
async fn a_bad_expression_fails_naming_it_the_function_and_what_is_available() {
    let h = harness();
    let program = Program::start(&go_program(None));
    let mut sp = spec("main.(*Server).PlaceOrder");
    sp.capture = capture(&[("user", "req.Usr.Name")], &[], false);
    let probe = DynamicLogProbe::start(&h.ctx, &assigned("bad", &sp), &sp, &[program.target()]);
    let status = wait_status(&probe, |s| s.state != ProbeState::Pending).await;
    assert_eq!(status.state, ProbeState::Failed);
    for part in [
        "\"req.Usr.Name\"",
        "main.(*Server).PlaceOrder",
        "has no field Usr",
        "ID, User, Tags",
    ] {
        assert!(
            status.message.contains(part),
            "{part} missing: {}",
            status.message
        );
    }
    probe.stop().await;

    let mut sp = spec("main.(*Server).PlaceOrder");
    sp.capture = capture(&[("who", "nobody")], &[], false);
    let probe = DynamicLogProbe::start(&h.ctx, &assigned("bad2", &sp), &sp, &[program.target()]);
    let status = wait_status(&probe, |s| s.state != ProbeState::Pending).await;
    assert!(
        status.message.contains("available: s, req, qty, $0, $1"),
        "{}",
        status.message
    );
    probe.stop().await;
}

#[tokio::test]
async fn a_binary_without_debug_information_fails_saying_so() {
    let building = out_dir().join("goprog-stripped");
    let mut command = Command::new(GO);
    command
        .args(["build", "-buildvcs=false", "-ldflags=-s -w", "-o"])
        .arg(&building)
        .arg(".")
        .current_dir(fixtures().join("goprog"))
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    let exe = build("goprog-stripped", command, &building);
    let h = harness();
    let program = Program::start(&exe);
    let sp = spec("main.Fib");
    let probe =
        DynamicLogProbe::start(&h.ctx, &assigned("stripped", &sp), &sp, &[program.target()]);
    let status = wait_status(&probe, |s| s.state != ProbeState::Pending).await;
    assert_eq!(status.state, ProbeState::Failed);
    assert!(
        status.message.contains("has no debug information"),
        "{}",
        status.message
    );
    probe.stop().await;
}

#[tokio::test]
async fn processes_started_later_are_attached_on_update_and_detached_on_stop() {
    let h = harness();
    let sp = spec("main.Fib");
    let probe_def = assigned("later", &sp);
    let mut probe = DynamicLogProbe::start(&h.ctx, &probe_def, &sp, &[]);
    let status = wait_status(&probe, |s| s.message.contains("waiting")).await;
    assert_eq!(status.state, ProbeState::Pending);

    let mut first = Program::start(&go_program(None));
    let mut second = Program::start(&go_program(None));
    probe
        .update(&probe_def, &sp, &[first.target(), second.target()])
        .await;
    let status = wait_status(&probe, |s| s.targets_attached == 2).await;
    assert_eq!(status.state, ProbeState::Attached);
    first.run("fib");
    second.run("fib");
    let rows = h.wait_rows("shop.later", 30, &probe).await;
    let pids: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.pid).collect();
    assert_eq!(
        pids,
        [i64::from(first.pid()), i64::from(second.pid())].into()
    );

    // The first process goes away: only the second stays traced.
    probe.update(&probe_def, &sp, &[second.target()]).await;
    wait_status(&probe, |s| s.targets_attached == 1).await;
    first.run("fib");
    second.run("fib");
    let rows = h.wait_rows("shop.later", 45, &probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.rows("shop.later").len(),
        45,
        "the detached process still produced rows"
    );
    assert_eq!(rows.len(), 45);

    probe.stop().await;
    second.run("fib");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.rows("shop.later").len(), 45, "rows after stop");
    assert!(first.alive() && second.alive());
}

/// Settles the rows of `table` (nothing more arrives) and returns their own values by name.
async fn settled_rows(
    h: &Harness,
    table: &str,
    n: usize,
    probe: &DynamicLogProbe,
) -> Vec<BTreeMap<String, Value>> {
    h.wait_rows(table, n, probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cols = h.columns(table);
    h.rows(table).iter().map(|r| by_name(&cols, r)).collect()
}

/// Namespaced resources never reach another namespace: DynamicLogs of one name in two namespaces
/// (same columns) each fill a table of their own, named by namespace, which stays theirs.
#[tokio::test]
async fn same_named_dynamic_logs_of_two_namespaces_get_a_table_each_with_their_own_rows() {
    let h = harness();
    let mut program = Program::start(&go_program(None));
    let mut sp = spec("main.Fib");
    sp.capture = capture(&[("n", "n")], &[("result", "$0")], true);
    let shop = h.start_in("shop", "tick-ok", sp.clone(), &program).await;
    let team_a = h.start_in("team-a", "tick-ok", sp, &program).await;
    for (probe, table) in [(&shop, "shop.tick_ok"), (&team_a, "team-a.tick_ok")] {
        let message = probe.status().message;
        assert!(
            message.contains(&format!("into table {table}")),
            "status names another table than {table}: {message}"
        );
    }
    program.run("fib");
    // Fib(5) is 15 calls: each table has each call once, not the other namespace's too.
    for (probe, table) in [(&shop, "shop.tick_ok"), (&team_a, "team-a.tick_ok")] {
        let rows = settled_rows(&h, table, 15, probe).await;
        assert_eq!(rows.len(), 15, "rows of {table}: {rows:?}");
    }
    shop.stop().await;
    let owners: BTreeMap<String, String> = h
        .ctx
        .tables
        .list()
        .into_iter()
        .map(|t| (t.name, t.owner))
        .collect();
    assert_eq!(
        owners,
        BTreeMap::from([
            (
                "shop.tick_ok".to_owned(),
                "DynamicLog/shop/tick-ok".to_owned()
            ),
            (
                "team-a.tick_ok".to_owned(),
                "DynamicLog/team-a/tick-ok".to_owned()
            ),
        ])
    );
    team_a.stop().await;
    assert!(program.alive());
}

/// With other columns, a same-named DynamicLog of another namespace neither fails on the first
/// one's table nor learns from its status that the other exists.
#[tokio::test]
async fn a_dynamic_log_never_collides_with_nor_names_another_namespaces_table() {
    let h = harness();
    let mut program = Program::start(&go_program(None));
    let mut wide = spec("main.Fib");
    wide.capture = capture(&[("n", "n")], &[("r", "$0")], true);
    let shop = h.start_in("shop", "tick-ok", wide, &program).await;
    let mut narrow = spec("main.Fib");
    narrow.capture = capture(&[("n", "n")], &[], false);
    // Before tables were named by namespace, this one failed with "table tick-ok already exists
    // with other columns (created by DynamicLog/shop/tick-ok: …)".
    let team_a = h.start_in("team-a", "tick-ok", narrow, &program).await;
    program.run("fib");
    let rows = settled_rows(&h, "team-a.tick_ok", 15, &team_a).await;
    assert!(
        rows.iter()
            .all(|r| r.keys().map(String::as_str).eq(["goid", "n"])),
        "team-a's rows have another namespace's columns: {rows:?}"
    );
    assert_eq!(settled_rows(&h, "shop.tick_ok", 15, &shop).await.len(), 15);
    let message = team_a.status().message;
    assert!(
        !message.contains("shop"),
        "team-a's status names shop: {message}"
    );
    shop.stop().await;
    team_a.stop().await;
    assert!(program.alive());
}

#[tokio::test]
async fn metrics_count_calls_by_captured_labels() {
    let h = harness();
    let mut program = Program::start(&go_program(None));
    let mut sp = spec("main.(*Server).PlaceOrder");
    sp.capture = capture(&[("user", "req.User.Name")], &[("err", "$1")], true);
    sp.metrics = vec![
        MetricSpec {
            name: "orders".into(),
            type_: MetricType::Counter,
            value: None,
            labels: vec!["user".into()],
        },
        MetricSpec {
            name: "order_latency_seconds".into(),
            type_: MetricType::Histogram,
            value: Some("latency".into()),
            labels: Vec::new(),
        },
    ];
    let probe = h.start("orders", sp, &program).await;
    program.run("order");
    h.wait_rows("shop.orders", 2, &probe).await;
    let text = h.scrape();
    for line in [
        r#"sonde_dynamic_log_orders_total{probe="DynamicLog/shop/orders",user="alice"} 1"#,
        r#"sonde_dynamic_log_orders_total{probe="DynamicLog/shop/orders",user="carol"} 1"#,
        r#"sonde_dynamic_log_order_latency_seconds_count{probe="DynamicLog/shop/orders"} 2"#,
        r#"sonde_dynamic_log_rows_total{probe="DynamicLog/shop/orders"} 2"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    probe.stop().await;
    assert!(!h.scrape().contains("sonde_dynamic_log_orders_total{"));
}

/// Runs `scenario` of a C or Rust program under a probe and returns its rows by column name.
async fn trace_native(
    exe: &Path,
    function: &str,
    capture_: Option<Capture>,
    scenario: &str,
    rows: usize,
) -> Vec<BTreeMap<String, Value>> {
    trace_native_output(exe, function, capture_, scenario, rows)
        .await
        .0
}

/// [`trace_native`], also returning what the traced program printed during the scenario.
async fn trace_native_output(
    exe: &Path,
    function: &str,
    capture_: Option<Capture>,
    scenario: &str,
    rows: usize,
) -> (Vec<BTreeMap<String, Value>>, Vec<String>) {
    let h = harness();
    let mut program = Program::start(exe);
    let mut sp = spec(function);
    sp.capture = capture_;
    let probe = h.start("native", sp, &program).await;
    let output = program.run_output(scenario);
    let got = h.wait_rows("shop.native", rows, &probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.rows("shop.native").len(),
        got.len(),
        "more rows than expected"
    );
    let cols = h.columns("shop.native");
    assert_eq!(cols[sonde_agent::tables::TARGET_COLUMNS.len()].name, "tid");
    probe.stop().await;
    assert!(program.alive());
    (got.iter().map(|r| by_name(&cols, r)).collect(), output)
}

#[tokio::test]
async fn c_pointer_paths_strings_and_return_values_are_exact() {
    let rows = trace_native(
        &c_program(),
        "place_order",
        capture(
            &[
                ("id", "req.id"),
                ("user", "req.user.name"),
                ("age", "req.user.age"),
                ("qty", "qty"),
                ("note", "note"),
            ],
            &[("total", "$0")],
            true,
        ),
        "order",
        1,
    )
    .await;
    let r = &rows[0];
    assert_eq!(r["id"], Value::Int64(42));
    assert_eq!(r["user"], s("alice"));
    assert_eq!(r["age"], Value::Int64(31));
    assert_eq!(r["qty"], Value::Int64(3));
    assert_eq!(r["note"], s("gift wrap"));
    assert_eq!(r["total"], Value::Int64(42 * 3 + 9));
    assert!(matches!(r["latency"], Value::Int64(n) if n > 0));
}

#[tokio::test]
async fn c_integers_of_every_width_structs_in_registers_and_recursion_are_exact() {
    let rows = trace_native(&c_program(), "ints", None, "ints", 1).await;
    let r = &rows[0];
    assert_eq!(r["a"], Value::Int64(-8));
    assert_eq!(r["b"], Value::Int64(-1600));
    assert_eq!(r["c"], Value::Int64(-320_000));
    assert_eq!(r["d"], Value::Int64(-64_000_000_000));
    assert_eq!(r["e"], Value::UInt64(200));
    assert_eq!(r["f"], Value::UInt64(18_000_000_000_000_000_000));
    // The seventh integer argument is on the stack.
    assert_eq!(r["g"], Value::Int64(-7));

    let rows = trace_native(&c_program(), "pair_sum", None, "pair", 1).await;
    assert_eq!(json(&rows[0]["p"]), serde_json::json!({"a": -5, "b": 12}));
    assert_eq!(rows[0]["ret0"], Value::Int64(7));

    let rows = trace_native(&c_program(), "fact", None, "fact", 4).await;
    for r in &rows {
        let Value::Int64(n) = r["n"] else {
            panic!("{r:?}")
        };
        let expected: i64 = (1..=n).product();
        assert_eq!(r["ret0"], Value::Int64(expected), "{r:?}");
    }
}

#[tokio::test]
async fn rust_str_scalars_and_references_are_exact() {
    let rows = trace_native(&rust_program(), "rustprog::greet", None, "greet", 1).await;
    assert_eq!(rows[0]["name"], s("ferris"));
    assert_eq!(rows[0]["times"], Value::UInt64(2));
    assert_eq!(rows[0]["loud"], Value::Boolean(true));
    assert_eq!(rows[0]["ret0"], Value::UInt64(6 * 2 + 2 + 1));

    let rows = trace_native(&rust_program(), "rustprog::add", None, "add", 1).await;
    assert_eq!(rows[0]["a"], Value::Int64(-40));
    assert_eq!(rows[0]["b"], Value::UInt64(250));
    assert_eq!(rows[0]["ret0"], Value::Int64(210));

    let rows = trace_native(&rust_program(), "rustprog::norm", None, "norm", 1).await;
    assert_eq!(json(&rows[0]["p"]), serde_json::json!({"x": 3, "y": -4}));
    assert_eq!(rows[0]["ret0"], Value::Int64(25));
}

#[tokio::test]
async fn rust_strings_and_vecs_show_their_text_and_elements_in_debug_and_release_builds() {
    for exe in [rust_program(), rust_release_program()] {
        let build = exe.display().to_string();
        let rows = trace_native(&exe, "rustprog::register", None, "owned", 1).await;
        let r = &rows[0];
        assert_eq!(r["name"], s("ferris"), "{build}: {r:?}");
        assert_eq!(r["tags"], s("0102ff"), "{build}: {r:?}");
        assert_eq!(json(&r["scores"]), serde_json::json!([-1, 7]), "{build}");
        assert_eq!(json(&r["weights"]), serde_json::json!([3, 400]), "{build}");
        assert_eq!(r["ret0"], Value::UInt64(6 + 258 + 6 + 403), "{build}");

        // A String field, whole and by path, and its length.
        let rows = trace_native(&exe, "user_id", None, "owned", 1).await;
        assert_eq!(
            json(&rows[0]["u"]),
            serde_json::json!({"name": "bob", "id": 9}),
            "{build}"
        );
        let rows = trace_native(
            &exe,
            "user_id",
            capture(
                &[("name", "u.name"), ("name_len", "len(u.name)")],
                &[],
                false,
            ),
            "owned",
            1,
        )
        .await;
        assert_eq!(rows[0]["name"], s("bob"), "{build}");
        assert_eq!(rows[0]["name_len"], Value::Int64(3), "{build}");
    }
}

/// What the `enums` scenario of rustprog prints, traced or not.
const ENUMS_OUTPUT: [&str; 16] = [
    "Some(\"abc\")",
    "None",
    "Ok(42)",
    "Err(\"bad quantity: x\")",
    "Ok(())",
    "Err(\"zero\")",
    "25",
    "-1",
    "Green",
    "Blue",
    "Red",
    "6",
    "0",
    "Empty",
    "Circle { r: 2 }",
    "Rect(5, 1)",
];

#[tokio::test]
async fn rust_options_results_and_user_enums_show_the_variant_each_call_holds() {
    use serde_json::json;
    for exe in [rust_program(), rust_release_program()] {
        let build = exe.display().to_string();
        // Some and None of the same function, as arguments and as the result; every function
        // leaves the program's output as it is untraced.
        let (rows, output) = trace_native_output(&exe, "rustprog::lookup", None, "enums", 2).await;
        assert_eq!(output, ENUMS_OUTPUT, "{build}");
        assert_eq!(rows.len(), 2, "{build}");
        assert!(rows[0].contains_key("id"), "{build}: {rows:?}");
        assert_eq!(json(&rows[0]["id"]), json!({"Some": 7}), "{build}");
        assert_eq!(json(&rows[0]["version"]), json!({"Some": 3}), "{build}");
        assert_eq!(json(&rows[0]["name"]), json!({"Some": "abc"}), "{build}");
        assert_eq!(json(&rows[0]["ret0"]), json!({"Some": "abc"}), "{build}");
        for column in ["id", "version", "name", "ret0"] {
            assert_eq!(rows[1][column], s("None"), "{build}: {column}");
        }

        let (rows, output) =
            trace_native_output(&exe, "rustprog::parse_qty", None, "enums", 2).await;
        assert_eq!(output, ENUMS_OUTPUT, "{build}");
        assert_eq!(rows[0]["text"], s("42"), "{build}");
        assert_eq!(json(&rows[0]["ret0"]), json!({"Ok": 42}), "{build}");
        assert_eq!(
            json(&rows[1]["ret0"]),
            json!({"Err": "bad quantity: x"}),
            "{build}"
        );

        // `Ok(())` has no fields to show.
        let (rows, output) = trace_native_output(&exe, "rustprog::check", None, "enums", 2).await;
        assert_eq!(output, ENUMS_OUTPUT, "{build}");
        assert_eq!(rows[0]["ret0"], s("Ok"), "{build}");
        assert_eq!(json(&rows[1]["ret0"]), json!({"Err": "zero"}), "{build}");

        let (rows, output) = trace_native_output(&exe, "rustprog::reach", None, "enums", 2).await;
        assert_eq!(output, ENUMS_OUTPUT, "{build}");
        assert_eq!(
            json(&rows[0]["p"]),
            json!({"Some": {"x": 3, "y": -4}}),
            "{build}"
        );
        assert_eq!(rows[0]["ret0"], Value::Int64(25), "{build}");
        assert_eq!(rows[1]["p"], s("None"), "{build}");
        assert_eq!(rows[1]["ret0"], Value::Int64(-1), "{build}");

        let (rows, output) = trace_native_output(&exe, "rustprog::paint", None, "enums", 3).await;
        assert_eq!(output, ENUMS_OUTPUT, "{build}");
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r["s"].clone(), r["c"].clone(), r["ret0"].clone()))
            .collect();
        assert_eq!(
            got,
            [
                (s(r#"{"Circle":{"r":2}}"#), s("Red"), s("Green")),
                (s(r#"{"Rect":[3,4]}"#), s("Green"), s("Blue")),
                (s("Empty"), s("Blue"), s("Red")),
            ],
            "{build}"
        );

        let (rows, output) = trace_native_output(&exe, "rustprog::label", None, "enums", 2).await;
        assert_eq!(output, ENUMS_OUTPUT, "{build}");
        assert_eq!(json(&rows[0]["name"]), json!({"Some": "ferris"}), "{build}");
        assert_eq!(rows[0]["ret0"], Value::UInt64(6), "{build}");
        assert_eq!(rows[1]["name"], s("None"), "{build}");
        assert_eq!(rows[1]["ret0"], Value::UInt64(0), "{build}");

        let (rows, output) =
            trace_native_output(&exe, "rustprog::shape_of", None, "enums", 3).await;
        assert_eq!(output, ENUMS_OUTPUT, "{build}");
        let got: Vec<_> = rows.iter().map(|r| r["ret0"].clone()).collect();
        assert_eq!(
            got,
            [
                s("Empty"),
                s(r#"{"Circle":{"r":2}}"#),
                s(r#"{"Rect":[5,1]}"#)
            ],
            "{build}"
        );
    }
}

/// What the `structs` scenario of rustprog prints, traced or not.
const STRUCTS_OUTPUT: [&str; 8] = [
    "Point { x: -20, y: -2 }",
    "Pair { a: 7, b: 1099511627777 }",
    "Quad { a: -2, b: 3, c: -4, d: 1 }",
    "Span { start: 40, end: 80, step: -12 }",
    "Tag { id: 16, name: \"erris\" }",
    "Small { a: 501, b: 7, c: 6 }",
    "Gauge { level: 3.5, id: 14 }",
    "-56",
];

/// Rust's own ABI, not SysV: a struct of two scalars travels as two values (one register each,
/// or a stack slot each once registers run out), a wider struct by reference (and a result
/// through the caller's memory), a small one cast to one register.
#[tokio::test]
async fn rust_structs_passed_and_returned_by_value_show_their_fields_in_debug_and_release_builds() {
    use serde_json::json;
    for exe in [rust_program(), rust_release_program()] {
        let build = exe.display().to_string();
        let cases = [
            (
                "rustprog::flip",
                vec![("p", json!({"x": 3, "y": -4})), ("k", json!(5))],
                json!({"x": -20, "y": -2}),
            ),
            (
                "rustprog::swap",
                vec![("p", json!({"a": 1_u64 << 40, "b": 7}))],
                json!({"a": 7, "b": (1_u64 << 40) + 1}),
            ),
            (
                "rustprog::rotate",
                vec![("q", json!({"a": 1, "b": -2, "c": 3, "d": -4}))],
                json!({"a": -2, "b": 3, "c": -4, "d": 1}),
            ),
            (
                "rustprog::stretch",
                vec![
                    ("s", json!({"start": 10, "end": 20, "step": -3})),
                    ("k", json!(4)),
                ],
                json!({"start": 40, "end": 80, "step": -12}),
            ),
            (
                "rustprog::rename",
                vec![("t", json!({"id": 7, "name": "ferris"})), ("id", json!(9))],
                json!({"id": 16, "name": "erris"}),
            ),
            (
                "rustprog::pack",
                vec![("s", json!({"a": 500, "b": 6, "c": 7}))],
                json!({"a": 501, "b": 7, "c": 6}),
            ),
            (
                "rustprog::spill",
                vec![("e", json!(5)), ("p", json!({"x": -8, "y": 9}))],
                json!(-56),
            ),
        ];
        for (function, args, ret) in cases {
            let (rows, output) = trace_native_output(&exe, function, None, "structs", 1).await;
            assert_eq!(output, STRUCTS_OUTPUT, "{build}: {function}");
            let r = &rows[0];
            for (name, want) in args {
                let got = match &r[name] {
                    Value::String(_) => json(&r[name]),
                    Value::Int64(n) => json!(n),
                    Value::UInt64(n) => json!(n),
                    other => panic!("{build}: {function}: {name} = {other:?}"),
                };
                assert_eq!(got, want, "{build}: {function}: {name}: {r:?}");
            }
            let got = match &r["ret0"] {
                Value::String(_) => json(&r["ret0"]),
                Value::Int64(n) => json!(n),
                other => panic!("{build}: {function}: ret0 = {other:?}"),
            };
            assert_eq!(got, ret, "{build}: {function}: ret0: {r:?}");
        }

        // A float in a register of its own is out of reach (uprobes see no XMM registers); in a
        // small struct cast to an integer register, it is not.
        let (rows, output) =
            trace_native_output(&exe, "rustprog::calibrate", None, "structs", 1).await;
        assert_eq!(output, STRUCTS_OUTPUT, "{build}");
        let r = &rows[0];
        assert_eq!(
            json(&r["r"]),
            json!({"value": 1.5, "sensor": 3, "ok": true}),
            "{build}"
        );
        for (column, id) in [("g", 11), ("ret0", 14)] {
            let got = json(&r[column]);
            assert_eq!(got["id"], json!(id), "{build}: {column}: {got}");
            let level = got["level"].as_str().unwrap_or_default();
            assert!(level.contains("X0"), "{build}: {column}: {got}");
        }
    }
}

#[tokio::test]
async fn a_rust_enum_with_more_variant_data_than_a_capture_holds_is_left_out_saying_why() {
    let h = harness();
    let mut program = Program::start(&rust_program());
    let probe = h.start("native", spec("rustprog::weigh"), &program).await;
    let message = probe.status().message;
    assert!(
        message.contains(
            "e (Event) left out: capturing every variant of Event takes more than 16 values"
        ),
        "{message}"
    );
    program.run("weigh");
    let rows = h.wait_rows("shop.native", 1, &probe).await;
    let r = by_name(&h.columns("shop.native"), &rows[0]);
    assert!(!r.contains_key("e"), "{r:?}");
    assert_eq!(r["n"], Value::UInt64(5));
    assert_eq!(r["ret0"], Value::UInt64(9));
    probe.stop().await;
    assert!(program.alive());
}

#[tokio::test]
async fn a_gcc_constprop_clone_shows_the_constant_and_the_arguments_it_really_receives() {
    // scale.constprop.0 gets v in RDI and offset in RSI; factor is the constant 5.
    let rows = trace_native(&c_clone_program(), "scale", None, "scale", 2).await;
    assert_eq!(rows[0]["v"], Value::Int64(7));
    assert_eq!(rows[0]["factor"], Value::Int64(5));
    assert_eq!(rows[0]["offset"], Value::Int64(-3));
    assert_eq!(rows[0]["ret0"], Value::Int64(32));
    assert_eq!(rows[1]["v"], Value::Int64(8));
    assert_eq!(rows[1]["factor"], Value::Int64(5));
    assert_eq!(rows[1]["offset"], Value::Int64(-6));
    assert_eq!(rows[1]["ret0"], Value::Int64(34));
}

#[tokio::test]
async fn a_c_function_inlined_into_every_caller_fails_naming_it_its_caller_and_the_remedy() {
    let h = harness();
    let program = Program::start(&c_inline_program());
    let sp = spec("twice");
    let probe = DynamicLogProbe::start(&h.ctx, &assigned("inlined", &sp), &sp, &[program.target()]);
    let status = wait_status(&probe, |s| s.state != ProbeState::Pending).await;
    assert_eq!(status.state, ProbeState::Failed, "{}", status.message);
    for part in [
        "spec.function \"twice\"",
        "inlined into every caller",
        "1 call site, in main",
        "-fno-inline",
        "__attribute__((noinline))",
        "trace its caller main",
    ] {
        assert!(status.message.contains(part), "{part}: {}", status.message);
    }
    probe.stop().await;
}

#[tokio::test]
async fn a_c_function_also_inlined_says_so_and_its_out_of_line_calls_are_rows() {
    let h = harness();
    let mut program = Program::start(&c_inline_program());
    let probe = h.start("native", spec("clamp"), &program).await;
    let status = probe.status();
    assert!(
        status
            .message
            .contains("clamp is also inlined at 1 call site, in main:")
            && status
                .message
                .contains("rows come only from calls of its out-of-line copy"),
        "{}",
        status.message
    );
    // The inlined call is not seen; the call through the pointer runs the out-of-line copy.
    program.run("direct");
    program.run("indirect");
    let rows = h.wait_rows("shop.native", 1, &probe).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.rows("shop.native").len(), 1);
    let r = by_name(&h.columns("shop.native"), &rows[0]);
    assert_eq!(r["x"], Value::Int64(250));
    assert_eq!(r["hi"], Value::Int64(100));
    assert_eq!(r["ret0"], Value::Int64(100));
    probe.stop().await;
    assert!(program.alive());
}

#[tokio::test]
async fn rust_methods_are_named_with_their_type_as_in_a_backtrace() {
    for name in ["rustprog::Point::scaled", "Point::scaled"] {
        let rows = trace_native(&rust_program(), name, None, "scaled", 1).await;
        assert_eq!(json(&rows[0]["self"]), serde_json::json!({"x": 3, "y": -4}));
        assert_eq!(rows[0]["k"], Value::Int64(6));
        assert_eq!(rows[0]["ret0"], Value::Int64(-6));
    }
}

#[tokio::test]
async fn a_rust_function_named_by_its_mangled_symbol_is_traced() {
    use object::{Object, ObjectSymbol};
    let exe = rust_program();
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    // rustc mangles as v0 (`_R…`) or legacy (`_ZN…17h<hash>E`), depending on its version.
    let symbol = file
        .symbols()
        .filter_map(|s| s.name().ok())
        .find(|n| {
            (n.starts_with("_R") && n.ends_with("5Point6scaled"))
                || n.starts_with("_ZN8rustprog5Point6scaled17h")
        })
        .unwrap_or_else(|| panic!("no symbol of Point::scaled in {}", exe.display()))
        .to_owned();
    let mut names = vec![symbol.clone()];
    if symbol.starts_with("_ZN") {
        // Another build's hash.
        names.push(format!("{}0000000000000000E", &symbol[..symbol.len() - 17]));
    }
    for name in names {
        let rows = trace_native(&exe, &name, None, "scaled", 1).await;
        assert_eq!(json(&rows[0]["self"]), serde_json::json!({"x": 3, "y": -4}));
        assert_eq!(rows[0]["k"], Value::Int64(6));
    }
}

/// GET over HTTP/1.0 (no chunked encoding); None while the agent is not answering.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_standalone_agent_traces_a_function_of_the_process_named_in_its_manifest() {
    // A copy under a name no other test uses, so only this process matches spec.process.
    let exe = out_dir().join(format!("goprog-standalone-{}", std::process::id()));
    // A hard link, not a copy: a file just written may still be open for writing in a child forked
    // meanwhile by another test, and then cannot be executed (ETXTBSY).
    std::fs::hard_link(go_program(None), &exe).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        "apiVersion: sonde.dev/v1alpha1
kind: DynamicLog
metadata:
  name: fib
spec:
  process:
    exe: '*/{}'
  function: main.Fib
  tableName: fib_calls
  capture:
    args: [{{name: n, expr: n}}]
    returns: [{{name: result, expr: $0}}]
    latency: true
",
        exe.file_name().unwrap().to_str().unwrap()
    );
    std::fs::write(dir.path().join("fib.yaml"), manifest).unwrap();
    let mut program = Program::start(&exe);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let _agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
            .args([
                "--manifests",
                dir.path().to_str().unwrap(),
                "--listen",
                &addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some((200, body)) = http_get(&addr, "/v1/status") {
            let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let probe = status["probes"].as_array().and_then(|p| {
                p.iter()
                    .find(|p| p["id"] == "DynamicLog/default/fib")
                    .cloned()
            });
            if let Some(p) = probe {
                if p["state"] == "Attached" {
                    break;
                }
                last = p.to_string();
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "never attached; last status: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    program.run("fib");
    let start = Instant::now();
    let rows: Vec<serde_json::Value> = loop {
        if let Some((200, body)) = http_get(&addr, "/v1/tables/default.fib_calls?format=ndjson") {
            let rows: Vec<serde_json::Value> = body
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if rows.len() >= 15 {
                break rows;
            }
        }
        assert!(start.elapsed() < WAIT, "rows never arrived");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rows.len(), 15);
    let top = rows
        .iter()
        .find(|r| r["n"] == 5)
        .unwrap_or_else(|| panic!("no call with n = 5: {rows:?}"));
    assert_eq!(top["result"], 5);
    assert_eq!(top["pid"], program.pid());
    assert!(top["latency"].as_i64().unwrap() > 0);
    assert!(program.alive());
    let _ = std::fs::remove_file(&exe);
}

/// Nanoseconds per call of the program's `bench` scenario (it prints `elapsed_ns N calls M`).
fn bench_ns_per_call(program: &mut Program) -> f64 {
    let lines = program.run_output("bench");
    let line = lines
        .iter()
        .find(|l| l.starts_with("elapsed_ns"))
        .unwrap_or_else(|| panic!("no elapsed_ns line in {lines:?}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    f[1].parse::<f64>().unwrap() / f[3].parse::<f64>().unwrap()
}

/// Entry (where Sonde probes it: after Go's stack check) and RET file offsets of `function` in `exe`.
fn entry_and_rets(exe: &Path, function: &str) -> (u64, Vec<u64>) {
    use sonde_agent::probes::dynamic_log::{
        analyze::analyze, binary::Binary, dwarf::Dwarf, rets::find_rets,
    };
    let binary = Binary::read(exe, Path::new("/")).unwrap();
    let dwarf = Dwarf::load(&binary).unwrap();
    let f = dwarf.find(function).unwrap();
    let code = binary
        .code(f.low_pc, f.high_pc - f.low_pc, function)
        .unwrap();
    let rets = find_rets(code, f.low_pc)
        .into_iter()
        .map(|a| binary.file_offset(a, function).unwrap())
        .collect();
    let entry = analyze(exe, Path::new("/"), &spec(function))
        .unwrap()
        .entry_offset;
    (entry, rets)
}

/// The floor: the agent's near-empty self-test uprobe (returns after one comparison) at the entry
/// and at every RET of `function`, for `pid` only. Detached when dropped.
fn floor_probes(exe: &Path, function: &str, pid: u32) -> aya::Ebpf {
    use aya::programs::UProbe;
    use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
    let (entry, rets) = entry_and_rets(exe, function);
    let mut ebpf = sonde_agent::ebpf::load(&std::collections::HashMap::new()).unwrap();
    let program: &mut UProbe = ebpf
        .program_mut(sonde_common::selftest::UPROBE_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    program.load().unwrap();
    for offset in std::iter::once(entry).chain(rets) {
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(1),
        };
        program
            .attach(
                point,
                exe,
                UProbeScope::OneProcess(std::num::NonZeroU32::new(pid).unwrap()),
            )
            .unwrap();
    }
    ebpf
}

/// bpftrace doing the same capture on the C program (uprobe + uretprobe, printf per call); its
/// output is counted on a thread. Killed when dropped.
struct Bpftrace(Child, Arc<std::sync::atomic::AtomicU64>);

impl Bpftrace {
    fn start(exe: &Path, pid: u32) -> Bpftrace {
        let p = exe.display();
        // BEGIN runs once every probe is attached.
        let script = format!(
            "BEGIN {{ printf(\"ready\\n\"); }}
uprobe:{p}:bench /pid == {pid}/ {{ @n[tid] = arg0; @s[tid] = str(arg1, 64); @b[tid] = arg2; @t[tid] = nsecs; }}
uretprobe:{p}:bench /pid == {pid} && @t[tid]/ {{ printf(\"%d %s %d %d %d\\n\", @n[tid], @s[tid], @b[tid], retval, nsecs - @t[tid]); delete(@n[tid]); delete(@s[tid]); delete(@b[tid]); delete(@t[tid]); }}"
        );
        let mut child = Command::new("bpftrace")
            .args(["-e", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace is required for the benchmark (apt-get install bpftrace)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "ready" {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "bpftrace exited before attaching"
            );
        }
        let lines = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = lines.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).unwrap_or(0) > 0 {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                line.clear();
            }
        });
        Bpftrace(child, lines)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Benchmark (prints figures, asserts nothing about speed):
/// `cargo test -p sonde-agent --test dynamic_log -- --ignored --nocapture --test-threads 1 benchmark`
#[tokio::test]
#[ignore = "benchmark: run explicitly, prints figures"]
async fn benchmark_added_cost_per_call() {
    const ROUNDS: usize = 5;
    // DWARF indexing of a large Go binary (time to analyse ≈ time from apply to attach).
    for big in [
        "/root/.cache/sonde/bin/helm",
        "/root/.cache/sonde/k8s-v1.33.13/kube-apiserver",
    ] {
        let path = Path::new(big);
        if !path.exists() {
            println!("(skipping DWARF cost of {big}: not built)");
            continue;
        }
        let size = std::fs::metadata(path).unwrap().len();
        let rss_before = vm_kib("VmRSS");
        let start = Instant::now();
        let analysis = sonde_agent::probes::dynamic_log::analyze::analyze(
            path,
            Path::new("/"),
            &spec("main.main"),
        );
        let took = start.elapsed();
        println!(
            "analyse {big} ({} MB): {:.2} s, peak RSS of the test process {} MiB (was {} MiB before), ok={}",
            size >> 20,
            took.as_secs_f64(),
            vm_kib("VmHWM") >> 10,
            rss_before >> 10,
            analysis.is_ok()
        );
    }
    for (lang, exe, function) in [
        ("go", go_program(None), "main.Bench"),
        ("c", c_program(), "bench"),
    ] {
        let h = harness();
        let mut program = Program::start(&exe);
        let mut results: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for round in 0..ROUNDS {
            results
                .entry("untraced")
                .or_default()
                .push(bench_ns_per_call(&mut program));
            {
                let _floor = floor_probes(&exe, function, program.pid());
                results
                    .entry("floor")
                    .or_default()
                    .push(bench_ns_per_call(&mut program));
            }
            {
                let mut sp = spec(function);
                sp.table_name = Some(format!("bench_{round}"));
                sp.capture = capture(&[("n", "n"), ("s", "s"), ("b", "b")], &[("r", "$0")], true);
                let probe = h.start(&format!("bench_{round}"), sp, &program).await;
                results
                    .entry("sonde")
                    .or_default()
                    .push(bench_ns_per_call(&mut program));
                tokio::time::sleep(Duration::from_millis(500)).await;
                probe.stop().await;
            }
            if lang == "c" {
                let bt = Bpftrace::start(&exe, program.pid());
                results
                    .entry("bpftrace")
                    .or_default()
                    .push(bench_ns_per_call(&mut program));
                std::thread::sleep(Duration::from_millis(500));
                println!(
                    "  bpftrace printed {} lines",
                    bt.1.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
        }
        let m: BTreeMap<&str, f64> = results.into_iter().map(|(k, v)| (k, median(v))).collect();
        let base = m["untraced"];
        println!(
            "{lang} {function}: ns per call (median of {ROUNDS} alternating rounds, 200000 calls each)"
        );
        for (k, v) in &m {
            println!("  {k:9} {v:9.1} ns  (+{:.1} ns over untraced)", v - base);
        }
        let floor = m["floor"] - base;
        let sonde = m["sonde"] - base;
        let text = h.scrape();
        let rows: f64 = text
            .lines()
            .filter(|l| l.starts_with("sonde_dynamic_log_rows_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        println!(
            "  sonde capture over the floor: {:+.1}%  (rows written over all rounds: {rows} of {})",
            (sonde / floor - 1.0) * 100.0,
            ROUNDS * 200_000
        );
        for l in text
            .lines()
            .filter(|l| l.starts_with("sonde_dynamic_log_dropped_events_total{"))
        {
            println!("  {l}");
        }
        if let Some(bt) = m.get("bpftrace") {
            println!(
                "  sonde vs bpftrace added cost: {:.2}x",
                sonde / (bt - base)
            );
        }
    }
}

fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(str::trim)
                .map(str::to_owned)
        })
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}
