//! The CPU profiler on real programs and the real kernel: runs the built `sonde-agent --manifests`
//! with a profiler Tracepoint selecting test programs by executable, then reads `stack_traces`,
//! `/v1/profiles/pprof` (parsed back by `go tool pprof`) and `/v1/profiles/flamegraph.svg`.
//!
//! Needs root (perf events, BPF), a C compiler, rustc and Go at /usr/local/go/bin/go (installed by
//! `scripts/setup`); a missing one fails the test with the install hint.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/profiler");
const GO: &str = "/usr/local/go/bin/go";
/// Drain period of the agents started here (the default is 10 s).
const PERIOD: &str = "1s";

/// Killed (by pid) when dropped, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Agent {
    _child: Running,
    addr: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command, hint: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {hint}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}; {hint}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build_c(dir: &Path) -> PathBuf {
    let bin = dir.join("hot_c");
    run(
        Command::new("cc")
            // -O0: GCC sets up no frame in leaf functions at -O1 and above, even with
            // -fno-omit-frame-pointer, and a frameless leaf hides its caller from the walk.
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(Path::new(FIXTURES).join("hot.c")),
        "install a C compiler (apt-get install gcc)",
    );
    bin
}

fn build_go(dir: &Path) -> PathBuf {
    let bin = dir.join("hot_go");
    run(
        Command::new(GO)
            .args(["build", "-o"])
            .arg(&bin)
            .arg(Path::new(FIXTURES).join("hot.go"))
            .env("GOCACHE", dir.join("gocache"))
            .env("HOME", dir)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", ""),
        "install Go with scripts/setup (it puts Go at /usr/local/go)",
    );
    bin
}

fn build_rust(dir: &Path, frame_pointers: bool) -> PathBuf {
    let bin = dir.join(if frame_pointers {
        "hot_rs_fp"
    } else {
        "hot_rs_nofp"
    });
    let fp = format!(
        "force-frame-pointers={}",
        if frame_pointers { "yes" } else { "no" }
    );
    run(
        Command::new("rustc")
            .args(["-O", "-g", "-C", &fp, "-o"])
            .arg(&bin)
            .arg(Path::new(FIXTURES).join("hot.rs")),
        "rustc comes with the Rust toolchain",
    );
    bin
}

fn spawn(bin: &Path, args: &[&str]) -> Running {
    Running(
        Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    )
}

/// Starts an agent profiling every process whose executable matches `exe_glob`.
fn start_agent(dir: &Path, exe_glob: &str) -> Agent {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("profile.yaml"),
        format!(
            "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: cpu
spec:
  process:
    exe: '{exe_glob}'
  probe:
    profiler:
      frequencyHz: 99
"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
        .arg("--manifests")
        .arg(&manifests)
        .args([
            "--listen",
            &addr,
            "--profiler-period",
            PERIOD,
            "--bpftrace",
            "/nonexistent/bpftrace",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Agent {
        _child: Running(child),
        addr,
    }
}

/// GET `path` → (status, body bytes); None while the agent is not answering.
fn get(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, raw[split + 4..].to_vec()))
}

/// One `stack_traces` row.
#[derive(Debug)]
struct StackRow {
    pid: i64,
    stack: String,
    count: i64,
}

fn rows(agent: &Agent) -> Vec<StackRow> {
    let Some((200, body)) = get(&agent.addr, "/v1/tables/stack_traces?limit=100000") else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    json.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| StackRow {
                    pid: r["pid"].as_i64().unwrap_or(0),
                    stack: r["stack_trace"].as_str().unwrap_or("").to_owned(),
                    count: r["count"].as_i64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the profile holds at least `min` samples of `pid`, then returns its rows.
fn samples_of(agent: &Agent, pid: u32, min: i64) -> Vec<StackRow> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mine: Vec<StackRow> = rows(agent)
            .into_iter()
            .filter(|r| r.pid == i64::from(pid))
            .collect();
        let total: i64 = mine.iter().map(|r| r.count).sum();
        if total >= min {
            return mine;
        }
        assert!(
            Instant::now() < deadline,
            "only {total} samples of pid {pid} after 90 s (wanted {min}); rows: {mine:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn count_where(rows: &[StackRow], f: impl Fn(&str) -> bool) -> i64 {
    rows.iter().filter(|r| f(&r.stack)).map(|r| r.count).sum()
}

/// Samples the 3:1 share tests wait for, and how far from 75% a share may be. At 800 samples the
/// binomial spread alone is ±1.5 points (1σ), and this VM adds its own: the Go fixture's rounds,
/// timed with `time.Now()` in batches of 2,000, gave hotThree 69–81% of the time. ±7 points keeps a
/// correct attribution passing while a profiler that cannot tell the functions apart (50%) or swaps
/// them (25%) fails.
const SHARE_SAMPLES: i64 = 800;
const SHARE_TOLERANCE: f64 = 7.0;

/// Asserts `three` got 75% (± [`SHARE_TOLERANCE`]) of the samples in `three` or `one`.
fn assert_three_to_one(rows: &[StackRow], three: &str, one: &str) {
    let pct = share(rows, three, one);
    // In the test's output, so that CI logs show how close runs come to the bounds.
    eprintln!("{three}: {pct:.1}% of the samples in {three} or {one}");
    assert!(
        (pct - 75.0).abs() <= SHARE_TOLERANCE,
        "{three} got {pct:.1}% (want 75 ± {SHARE_TOLERANCE}): {rows:?}"
    );
}

/// Share of `a` among samples in `a` or `b`, in percent.
fn share(rows: &[StackRow], a: &str, b: &str) -> f64 {
    let frames = |s: &str, f: &str| {
        s.split(';')
            .any(|frame| frame == f || frame.starts_with(&format!("{f} (")))
    };
    let in_a = count_where(rows, |s| frames(s, a));
    let in_b = count_where(rows, |s| frames(s, b));
    assert!(in_a + in_b > 0, "neither {a} nor {b} in {rows:?}");
    100.0 * in_a as f64 / (in_a + in_b) as f64
}

#[test]
fn a_c_program_gets_its_3_to_1_cpu_share_attributed_to_the_right_functions_with_source_lines() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let agent = start_agent(dir.path(), &format!("{}/hot_*", dir.path().display()));
    let prog = spawn(&bin, &[]);
    let rows = samples_of(&agent, prog.0.id(), SHARE_SAMPLES);
    assert_three_to_one(&rows, "hot_three", "hot_one");
    assert!(
        rows.iter()
            .any(|r| r.stack.contains("main (hot.c:") && r.stack.contains(";hot_three (hot.c:")),
        "frames should read `function (file:line)` root first: {rows:?}"
    );
    let truncated = count_where(&rows, |s| s.starts_with("[truncated"));
    let total = count_where(&rows, |_| true);
    assert!(
        truncated * 10 < total,
        "{truncated} of {total} C stacks marked truncated: {rows:?}"
    );
}

#[test]
fn a_syscall_heavy_loop_shows_kernel_frames_under_its_function() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let agent = start_agent(dir.path(), &format!("{}/hot_*", dir.path().display()));
    let prog = spawn(&bin, &["syscalls"]);
    let rows = samples_of(&agent, prog.0.id(), 200);
    // glibc's write() is a frameless leaf, so its caller write_devnull is skipped; main is there.
    let kernel = count_where(&rows, |s| {
        s.contains("main (hot.c:") && s.split(';').any(|f| f.starts_with("[k] "))
    });
    let total = count_where(&rows, |_| true);
    assert!(
        kernel * 2 > total,
        "only {kernel} of {total} samples have [k] frames under main: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.stack.contains(";[k] entry_SYSCALL_64")),
        "no syscall entry frame: {rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r.stack.split(';').all(|f| !f.starts_with("0x"))),
        "a bare hex frame: {rows:?}"
    );
}

#[test]
fn a_go_program_gets_its_3_to_1_cpu_share_attributed_to_the_right_functions() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_go(dir.path());
    let agent = start_agent(dir.path(), &format!("{}/hot_*", dir.path().display()));
    let prog = spawn(&bin, &[]);
    let rows = samples_of(&agent, prog.0.id(), SHARE_SAMPLES);
    assert_three_to_one(&rows, "main.hotThree", "main.hotOne");
    assert!(
        rows.iter()
            .any(|r| r.stack.starts_with("runtime.goexit") && r.stack.contains("main.hotThree (")),
        "Go stacks should be complete (runtime.goexit at the root): {rows:?}"
    );
}

#[test]
fn rust_stacks_without_frame_pointers_are_reported_truncated_and_with_them_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let with = build_rust(dir.path(), true);
    let without = build_rust(dir.path(), false);
    let agent = start_agent(dir.path(), &format!("{}/hot_*", dir.path().display()));
    let (fp, nofp) = (spawn(&with, &[]), spawn(&without, &[]));
    let truncated_share = |pid: u32| {
        let rows = samples_of(&agent, pid, 300);
        let truncated = count_where(&rows, |s| s.starts_with("[truncated: no frame pointers]"));
        (
            100.0 * truncated as f64 / count_where(&rows, |_| true) as f64,
            rows,
        )
    };
    let (with_pct, with_rows) = truncated_share(fp.0.id());
    let (without_pct, without_rows) = truncated_share(nofp.0.id());
    assert!(
        with_pct < 10.0,
        "{with_pct:.1}% of frame-pointer stacks truncated: {with_rows:?}"
    );
    assert!(
        without_pct > 50.0,
        "only {without_pct:.1}% of stacks without frame pointers reported truncated: {without_rows:?}"
    );
    assert!(
        with_rows.iter().any(|r| r.stack.contains("hot::hot_three")),
        "{with_rows:?}"
    );
}

#[test]
fn the_pprof_endpoint_is_read_back_by_go_tool_pprof_and_the_flame_graph_is_valid_xml() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let agent = start_agent(dir.path(), &format!("{}/hot_*", dir.path().display()));
    let prog = spawn(&bin, &[]);
    samples_of(&agent, prog.0.id(), 200);

    let (code, pprof) = get(&agent.addr, "/v1/profiles/pprof?seconds=120").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&pprof));
    let file = dir.path().join("profile.pb.gz");
    std::fs::write(&file, &pprof).unwrap();
    let out = Command::new(GO)
        .args(["tool", "pprof", "-top", "-sample_index=samples"])
        .arg(&file)
        .env("HOME", dir.path())
        .env("GOCACHE", dir.path().join("gocache"))
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go tool pprof: install Go with scripts/setup");
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        top.contains("hot_three") && top.contains("hot_one"),
        "{top}"
    );
    let tags = Command::new(GO)
        .args(["tool", "pprof", "-tags"])
        .arg(&file)
        .env("HOME", dir.path())
        .env("GOCACHE", dir.path().join("gocache"))
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout);
    assert!(
        tags.contains(&prog.0.id().to_string()),
        "the pid label is missing: {tags}"
    );

    let (code, svg) = get(&agent.addr, "/v1/profiles/flamegraph.svg?seconds=120").unwrap();
    assert_eq!(code, 200);
    let mut reader = quick_xml::Reader::from_reader(svg.as_slice());
    let mut buf = Vec::new();
    let mut texts = String::new();
    let mut root = None;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(e)) if root.is_none() => {
                root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned());
            }
            Ok(quick_xml::events::Event::Text(t)) => {
                texts.push_str(&String::from_utf8_lossy(&t));
                texts.push('\n');
            }
            Ok(_) => {}
            Err(e) => panic!(
                "the flame graph is not valid XML at {}: {e}",
                reader.buffer_position()
            ),
        }
        buf.clear();
    }
    assert_eq!(root.as_deref(), Some("svg"));
    assert!(
        texts.contains("hot_three"),
        "hot_three is not a frame of the flame graph"
    );

    let (code, body) = get(&agent.addr, "/v1/profiles/pprof?seconds=0").unwrap();
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("seconds=0 is not accepted"));
}
