//! Protocol-tracing benchmarks (issue 3): prints figures for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p sonde-e2e --bin sonde-bench-protocols -- [--rounds 3] [--seconds 5] [--rate 10000]
//! ```
//!
//! nginx (1 worker, `return 200`) on loopback, then:
//! 1. saturation: `wrk -t1 -c16` alternating untraced / bare hooks (bpftrace counting the tracepoints
//!    Sonde attaches, for the worker only) / capture only (Sonde's kernel side for the worker, its
//!    ring drained by a child of this binary that looks at nothing) / Sonde (standalone agent, HTTP
//!    Tracepoint on nginx, measured after `--saturation-warmup` seconds of the same load have
//!    filled `http_events`: the steady state; as it runs by default, shedding connections while
//!    the CPUs are saturated) / Sonde capturing every connection (`--shed-when-saturated false`),
//!    round k starting with the k-th of them (the VM's
//!    drift within a round then falls on each in turn); throughput ratios against the untraced run of the same round, the
//!    agent's CPU per request (its catching up after the run included), the share of wrk's
//!    requests that became `http_events` rows and the syscalls dropped to a full ring. Capture
//!    only − bare hooks is what copying the bytes out costs; Sonde − capture only is what the
//!    agent's work on them costs. Sonde − bare hooks also as the median of each round's own
//!    difference, with the sign test's interval around it (from 6 rounds): whether the rounds
//!    decide the 3-point goal or the VM's drift does;
//! 2. fixed rate (16 keep-alive connections from this process): untraced, bare hooks, Sonde
//!    (after a warm-up that fills `http_events` to its budget: the steady state), then bare hooks
//!    and untraced again — the baselines are the means of the runs before and after Sonde's, so
//!    that the VM's drift over the minutes they take cancels rather than counts;
//!    cost per request = (agent CPU + added CPU time of the nginx worker, from the scheduler's
//!    exact accounting: the hooks run in its syscalls) / requests, the added time also shown beyond
//!    the bare hooks' (what Sonde's programs cost over the floor), and the client's (this process,
//!    untraced but passing the hooks' early exit; noisy) separately;
//!    completeness = rows in `http_events` (kept + evicted) / requests; agent RSS and drop counters;
//! 3. time in BPF programs per request and per Sonde program at the fixed rate, from the kernel's
//!    `bpf_stats` accounting, in separate runs (it adds two clock reads to every program run, which
//!    would inflate the figures above; on this VM a clock read is a paravirtual clock read).
//!
//! `--rounds 0` skips the saturation part. The agent's pid is printed on stderr so that it can be
//! profiled during the fixed-rate run (`perf record -g -p <pid>`).
//! `SONDE_E2E_PREBUILT=1` uses the release binaries as they are (`cargo build --release -p sonde-agent`).
//!
//! Needs root, nginx, wrk, bpftrace (`scripts/setup peers`) and a release agent (built first).
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use sonde_agent::probes::protocols::kernel::Kernel;
use sonde_common::conn::{DROP_RING_FULL, names};
use sonde_e2e::process::Proc;
use sonde_e2e::sonde::{Agent, memory_kib};
use sonde_e2e::tools::{self, SondeBinaries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of each wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Requests per second of the fixed-rate runs.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Length of each fixed-rate run.
    #[arg(long, default_value_t = 10)]
    fixed_seconds: u64,
    /// Requests at the fixed rate before Sonde's measured run, so that it shows the steady state:
    /// `http_events` filled to its budget (rows evicted as they come, no more growth).
    #[arg(long, default_value_t = 10)]
    warmup_seconds: u64,
    /// wrk's load on a freshly started agent before each saturation run of Sonde, so that the run
    /// shows the steady state (`http_events` full and evicting) and not the table's one-off
    /// filling, which a long-running agent does once. 0: measure from the start.
    #[arg(long, default_value_t = 2)]
    saturation_warmup: u64,
    /// Internal: run only Sonde's kernel side for this process and drain its ring without looking
    /// at the records (the saturation runs' "capture only" column starts the bench binary so).
    #[arg(long, hide = true)]
    capture_only: Option<u32>,
}

struct Nginx {
    /// Stopped (SIGTERM, then SIGKILL) when dropped.
    _proc: Proc,
    worker: u32,
    port: u16,
}

fn start_nginx(dir: &Path, logs: &Path) -> Result<Nginx> {
    let port = sonde_e2e::ports::free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log stderr;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-c").arg(&conf);
    let proc = Proc::spawn("nginx-bench", cmd, logs)?;
    let master = proc.pid();
    for _ in 0..200 {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        if let Some(worker) = children.split_whitespace().next()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Ok(Nginx {
                _proc: proc,
                worker: worker.parse()?,
                port,
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nginx did not start (is it installed? `scripts/setup peers`)")
}

/// Requests per second and requests answered of a wrk run.
struct WrkRun {
    rps: f64,
    requests: u64,
}

fn wrk(port: u16, seconds: u64) -> Result<f64> {
    Ok(wrk_run(port, seconds)?.rps)
}

fn wrk_run(port: u16, seconds: u64) -> Result<WrkRun> {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{seconds}s")])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk: `scripts/setup peers`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    // "  1162155 requests in 5.00s, 176.21MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("no request count in wrk output: {text}"))?;
    Ok(WrkRun { rps, requests })
}

/// bpftrace counting, for the nginx worker only, every tracepoint Sonde's protocol capture attaches
/// (the list the agent attaches from, so the floor can never drift from what Sonde hooks).
fn start_bare_hooks(worker: u32, logs: &Path) -> Result<Proc> {
    let syscalls = names::TRACEPOINTS
        .iter()
        .map(|(tracepoint, _)| format!("tracepoint:syscalls:{tracepoint}"));
    let others = names::TASK_TRACEPOINTS
        .iter()
        .map(|(category, tracepoint, _)| format!("tracepoint:{category}:{tracepoint}"));
    let probes: Vec<String> = syscalls.chain(others).collect();
    let program = format!("{} /pid == {worker}/ {{ @n = count(); }}", probes.join(","));
    let mut cmd = Command::new(tools::bpftrace()?);
    cmd.arg("-e").arg(program).stdin(Stdio::null());
    let proc = Proc::spawn("bpftrace-bare", cmd, logs)?;
    wait_for_log(&proc, "Attaching", "bpftrace did not attach")?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(proc)
}

/// Waits up to 15 s for `word` in the log of `proc`; else fails with `what` and the log's tail.
fn wait_for_log(proc: &Proc, word: &str, what: &str) -> Result<()> {
    for _ in 0..300 {
        if std::fs::read_to_string(proc.log_path())
            .unwrap_or_default()
            .contains(word)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: {}", proc.log_tail(10))
}

/// Sonde's kernel side alone, tracing `tgid`: the programs and maps the agent loads, with a consumer
/// that drains the ring as the agent does (on a wake-up, else every 250 ms) and looks at nothing.
/// What it costs the traced process beyond the bare hooks is the price of capturing the bytes; what
/// Sonde costs beyond it is the agent's work. Prints the records drained (and lost to a full
/// ring) every second; runs until killed.
fn capture_only(tgid: u32) -> Result<()> {
    let (mut kernel, mut maps) = Kernel::load(false).context("loading Sonde's programs")?;
    kernel
        .set_filter(&HashSet::from([tgid]), &HashSet::new())
        .context("selecting the traced process")?;
    println!("capturing {tgid}");
    let fd = maps.ring.as_raw_fd();
    let (mut records, mut last) = (0u64, Instant::now());
    loop {
        while maps.ring.next().is_some() {
            records += 1;
        }
        let mut ready = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut ready, 1, 250) };
        if last.elapsed() >= Duration::from_secs(1) {
            let lost: u64 = maps
                .drops
                .get(&DROP_RING_FULL, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum());
            println!("records {records} ring_full {lost}");
            last = Instant::now();
        }
    }
}

/// Starts [`capture_only`] for `tgid` in a child process (its CPU then shows on its own).
fn start_capture_only(tgid: u32, round: usize, logs: &Path) -> Result<Proc> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--capture-only", &tgid.to_string()]);
    let proc = Proc::spawn(&format!("capture-only-{round}"), cmd, logs)?;
    wait_for_log(&proc, "capturing", "the capture-only run did not start")?;
    Ok(proc)
}

/// (records drained, records lost to a full ring) as a [`capture_only`] child last printed them.
fn captured(proc: &Proc) -> Result<(u64, u64)> {
    let line = proc.log_tail(1);
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("records"), Some(records), Some("ring_full"), Some(lost)) => {
            Ok((records.parse()?, lost.parse()?))
        }
        _ => bail!("the capture-only run printed no counts: {line}"),
    }
}

async fn start_sonde(
    bins: &SondeBinaries,
    dir: &Path,
    logs: &Path,
    flags: &[&str],
) -> Result<Agent> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("http.yaml"),
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata:\n  name: web\nspec:\n  process:\n    exe: '*/nginx'\n  probe:\n    protocols: [http]\n",
    )?;
    let mut agent = Agent::start_standalone_with(bins, &manifests, logs, flags)?;
    agent.wait_healthy().await?;
    let url = format!("{}/v1/status", agent.url);
    sonde_e2e::wait::until_ok(
        "the HTTP Tracepoint attached",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let body = reqwest::get(&url).await?.text().await?;
                ensure!(body.contains("Attached"), "not attached yet: {body}");
                Ok(())
            }
        },
    )
    .await?;
    Ok(agent)
}

/// CPU seconds (user + system) every thread of a process ran, from the scheduler's exact
/// accounting (`/proc/<pid>/task/*/schedstat`; utime/stime are tick samples, too coarse here). What
/// tracing adds to a traced process is almost all kernel time (the hooks run in its syscalls).
fn run_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// The kernel's own run-time accounting of BPF programs (`kernel.bpf_stats_enabled`), on while
/// this lives and restored after: nanoseconds spent in every loaded program, which is exactly what
/// a tracer's hooks add to the traced syscalls (bpftrace's bare hooks and Sonde's alike).
struct BpfStats {
    before: String,
}

impl BpfStats {
    const KNOB: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Result<BpfStats> {
        let before = std::fs::read_to_string(Self::KNOB)
            .with_context(|| format!("reading {}", Self::KNOB))?;
        std::fs::write(Self::KNOB, "1")
            .with_context(|| format!("writing {} (root?)", Self::KNOB))?;
        Ok(BpfStats { before })
    }

    /// Total ns all loaded programs have run so far.
    fn run_ns(&self) -> Result<u64> {
        Ok(self.programs()?.values().map(|(ns, _)| ns).sum())
    }

    /// (ns run, runs) of every loaded program by name (`bpftool prog show`; names are cut at 15
    /// bytes by the kernel, programs of one name are added up).
    fn programs(&self) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
        let out = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()
            .context("running bpftool: `scripts/setup peers`")?;
        let progs: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("bpftool prog show --json printed no JSON")?;
        let mut by_name = std::collections::BTreeMap::new();
        for p in progs.as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("?").to_string();
            let entry: &mut (u64, u64) = by_name.entry(name).or_default();
            entry.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            entry.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
        Ok(by_name)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::KNOB, self.before.trim());
    }
}

/// `rate` requests/s for `seconds` over 16 keep-alive connections; returns the requests answered.
async fn fixed_rate(port: u16, rate: u64, seconds: u64) -> Result<u64> {
    const CONNS: u64 = 16;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let period = Duration::from_secs_f64(CONNS as f64 / rate as f64);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut buf = vec![0u8; 4096];
            while Instant::now() < deadline {
                tick.tick().await;
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .await?;
                let mut have = 0;
                loop {
                    let n = stream.read(&mut buf[have..]).await?;
                    ensure!(n > 0, "nginx closed the connection");
                    have += n;
                    if buf[..have].ends_with(b"hello\n") {
                        break;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed))
}

/// The four setups a saturation round compares.
#[derive(Clone, Copy)]
enum Setup {
    Untraced,
    BareHooks,
    CaptureOnly,
    Sonde,
    /// Sonde that never sheds connections.
    SondeEvery,
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Untraced,
        Setup::BareHooks,
        Setup::CaptureOnly,
        Setup::Sonde,
        Setup::SondeEvery,
    ];
}

/// The agent flag of [`Setup::SondeEvery`].
const NEVER_SHED: &[&str] = &["--shed-when-saturated", "false"];

/// What a saturation run of Sonde measured.
struct SondeRun {
    rps: f64,
    /// The agent's CPU per request, the catching up after the run included.
    agent_us: f64,
    /// Share of the requests answered that became `http_events` rows.
    recorded: f64,
    /// `ring_full` drops during the run.
    lost: u64,
    /// Syscalls of shed connections during the run.
    shed: u64,
}

/// A standalone agent tracing nginx on `port` while wrk saturates it for `seconds`, after
/// `warmup` seconds of the same load.
async fn saturated_sonde(
    bins: &SondeBinaries,
    dir: &Path,
    logs: &Path,
    port: u16,
    seconds: u64,
    warmup: u64,
    flags: &[&str],
) -> Result<SondeRun> {
    let mut agent = start_sonde(bins, dir, logs, flags).await?;
    if warmup > 0 {
        // A fresh agent first fills `http_events` to its budget: the table's memory is faulted in
        // and its ring grows by doubling (copies included), a one-off of a long-running agent
        // that the first second of a run would otherwise count.
        wrk_run(port, warmup)?;
        tokio::time::sleep(CATCH_UP).await;
        ensure!(
            http_evicted(&agent).await? > 0,
            "http_events is not full after {warmup} s of warm-up: raise --saturation-warmup"
        );
    }
    let (a0, rows0, (lost0, shed0)) = (
        run_seconds(agent.proc.pid()),
        http_rows(&agent).await?,
        ring_full_and_shed(&agent).await?,
    );
    let run = wrk_run(port, seconds)?;
    // The agent may be behind: let it catch up, and count that work too.
    tokio::time::sleep(CATCH_UP).await;
    let requests = run.requests.max(1) as f64;
    // Read before the queries below, whose answers are the agent's work too.
    let agent_us = (run_seconds(agent.proc.pid()) - a0) * 1e6 / requests;
    let recorded = (http_rows(&agent).await? - rows0) as f64 / requests;
    let (lost, shed) = ring_full_and_shed(&agent).await?;
    let sonde = SondeRun {
        rps: run.rps,
        agent_us,
        recorded,
        lost: lost - lost0,
        shed: shed - shed0,
    };
    agent.proc.stop(Duration::from_secs(10));
    Ok(sonde)
}

/// How long the agent gets after a saturation run to finish what waits in its ring.
const CATCH_UP: Duration = Duration::from_millis(1500);

/// The agent's `/metrics` text.
async fn metrics(agent: &Agent) -> Result<String> {
    Ok(reqwest::get(format!("{}/metrics", agent.url))
        .await?
        .text()
        .await?)
}

/// `sonde_events_dropped_total` of the agent for reasons `ring_full` and `shed`.
async fn ring_full_and_shed(agent: &Agent) -> Result<(u64, u64)> {
    let text = metrics(agent).await?;
    let dropped = |reason: &str| {
        let series = format!("sonde_events_dropped_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((dropped("ring_full"), dropped("shed")))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Fewest rounds for which [`median_interval`] reaches 95%: with 5, even the lowest and highest
/// cover only 93.75%.
const MIN_INTERVAL_ROUNDS: usize = 6;

/// A distribution-free interval for the median of `v` (the sign test's order statistics): the
/// narrowest k-th lowest to k-th highest value that holds the median with at least 95%
/// probability, and that probability. Assumes only that the rounds are independent draws of
/// one distribution, which is what rotating the setups within each round is for.
fn median_interval(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    let n = v.len();
    if n < MIN_INTERVAL_ROUNDS {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let total = 2f64.powi(n as i32);
    // Coverage of [k-th lowest, k-th highest]: 1 − 2·P(at most k − 1 of n values below the
    // median), the values falling on either side as a fair coin.
    let (mut k, mut coverage, mut below) = (0, 0.0, 0.0);
    for i in 0..n / 2 {
        below += binomial(n, i) / total;
        if 1.0 - 2.0 * below < 0.95 {
            break;
        }
        (k, coverage) = (i + 1, 1.0 - 2.0 * below);
    }
    let (low, high) = (*v.get(k.checked_sub(1)?)?, *v.get(n - k)?);
    Some((low, high, coverage))
}

/// C(n, k).
fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64)
}

/// `http_events` as `/v1/tables` lists it.
async fn http_table(agent: &Agent) -> Result<serde_json::Value> {
    let tables: serde_json::Value = reqwest::get(format!("{}/v1/tables", agent.url))
        .await?
        .json()
        .await?;
    let list = tables
        .as_array()
        .or_else(|| tables["tables"].as_array())
        .context("unexpected /v1/tables answer")?;
    list.iter()
        .find(|t| t["name"] == "http_events")
        .cloned()
        .context("no http_events table")
}

/// (rows kept + evicted) of `http_events`.
async fn http_rows(agent: &Agent) -> Result<u64> {
    let t = http_table(agent).await?;
    Ok(t["rows"].as_u64().unwrap_or(0) + t["evictedRows"].as_u64().unwrap_or(0))
}

/// Rows `http_events` evicted to stay within its budget.
async fn http_evicted(agent: &Agent) -> Result<u64> {
    Ok(http_table(agent).await?["evictedRows"]
        .as_u64()
        .unwrap_or(0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(tgid) = cli.capture_only {
        return capture_only(tgid);
    }
    let bins = tools::build_sonde_profile(true)?;
    let dir = tempfile::tempdir()?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let nginx = start_nginx(dir.path(), &logs)?;
    println!(
        "# Protocol tracing benchmarks (nginx 1 worker `return 200`, loopback, {} CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    if cli.rounds > 0 {
        println!(
            "## Saturation: wrk -t1 -c16 -d{}s, {} rounds (each round's runs in a rotated order)",
            cli.seconds, cli.rounds
        );
        println!(
            "| round | untraced req/s | bare hooks req/s | capture only req/s | Sonde req/s | Sonde, every connection, req/s | bare/untraced | capture/untraced | Sonde/untraced | every connection/untraced | capture records/req | agent CPU µs/req (Sonde / every connection) | requests in http_events (Sonde / every connection) | syscalls shed (Sonde) | syscalls dropped, ring_full (Sonde / every connection) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let (mut bare_ratios, mut capture_ratios, mut sonde_ratios, mut every_ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=cli.rounds {
        let (mut untraced, mut bare_rps, mut capture_rps) = (0.0, 0.0, 0.0);
        let (mut records, mut sonde, mut every) = (0, None, None);
        // Round k starts with the k-th setup: the VM's speed drifts within a round too, and a
        // fixed order would hand that drift to whichever setup always runs last.
        for setup in Setup::ALL
            .iter()
            .cycle()
            .skip(round - 1)
            .take(Setup::ALL.len())
        {
            match setup {
                Setup::Untraced => untraced = wrk(nginx.port, cli.seconds)?,
                Setup::BareHooks => {
                    let mut bare = start_bare_hooks(nginx.worker, &logs)?;
                    bare_rps = wrk(nginx.port, cli.seconds)?;
                    bare.stop(Duration::from_secs(5));
                }
                Setup::CaptureOnly => {
                    let mut capture = start_capture_only(nginx.worker, round, &logs)?;
                    capture_rps = wrk(nginx.port, cli.seconds)?;
                    // Its once-a-second count must cover the whole wrk run.
                    std::thread::sleep(Duration::from_millis(1100));
                    let (drained, lost) = captured(&capture)?;
                    capture.stop(Duration::from_secs(5));
                    ensure!(
                        lost == 0,
                        "the capture-only run lost {lost} records to a full ring: its figure would be too good"
                    );
                    records = drained;
                }
                Setup::Sonde | Setup::SondeEvery => {
                    let shedding = matches!(setup, Setup::Sonde);
                    let run = saturated_sonde(
                        &bins,
                        dir.path(),
                        &logs,
                        nginx.port,
                        cli.seconds,
                        cli.saturation_warmup,
                        if shedding { &[] } else { NEVER_SHED },
                    )
                    .await?;
                    *(if shedding { &mut sonde } else { &mut every }) = Some(run);
                }
            }
        }
        let sonde = sonde.context("every round runs Sonde")?;
        let every = every.context("every round runs Sonde capturing every connection")?;
        let (sonde_rps, every_rps) = (sonde.rps, every.rps);
        bare_ratios.push(bare_rps / untraced);
        capture_ratios.push(capture_rps / untraced);
        sonde_ratios.push(sonde_rps / untraced);
        every_ratios.push(every_rps / untraced);
        println!(
            "| {round} | {untraced:.0} | {bare_rps:.0} | {capture_rps:.0} | {sonde_rps:.0} | {every_rps:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} / {:.2} | {:.1}% / {:.1}% | {} | {} / {} |",
            bare_rps / untraced,
            capture_rps / untraced,
            sonde_rps / untraced,
            every_rps / untraced,
            records as f64 / (capture_rps * cli.seconds as f64),
            sonde.agent_us,
            every.agent_us,
            sonde.recorded * 100.0,
            every.recorded * 100.0,
            sonde.shed,
            sonde.lost,
            every.lost,
        );
    }
    if cli.rounds > 0 {
        // Paired within each round too: rounds differ more from each other than the hooks do.
        let differences = |a: &[f64], b: &[f64]| -> Vec<f64> {
            a.iter().zip(b).map(|(a, b)| (a - b) * 100.0).collect()
        };
        let paired = |a: &[f64], b: &[f64]| -> f64 { median(differences(a, b)) };
        let (sonde_bare, capture_bare, sonde_capture, every_bare, every_capture) = (
            paired(&sonde_ratios, &bare_ratios),
            paired(&capture_ratios, &bare_ratios),
            paired(&sonde_ratios, &capture_ratios),
            paired(&every_ratios, &bare_ratios),
            paired(&every_ratios, &capture_ratios),
        );
        let every_interval = median_interval(differences(&every_ratios, &bare_ratios));
        // Whether the goal (within 3 points of bare hooks) is decided by these rounds, or by the
        // VM's drift.
        let interval = median_interval(differences(&sonde_ratios, &bare_ratios));
        let (b, c, s, e) = (
            median(bare_ratios),
            median(capture_ratios),
            median(sonde_ratios),
            median(every_ratios),
        );
        println!(
            "median ratios: bare hooks {b:.3}, capture only {c:.3}, Sonde {s:.3}, Sonde capturing every connection {e:.3}; Sonde − bare = {:+.1} points; median of the rounds' own differences {sonde_bare:+.1} points: capture only − bare {capture_bare:+.1}, Sonde − capture only {sonde_capture:+.1}; every connection − bare {every_bare:+.1}, every connection − capture only {every_capture:+.1}",
            (s - b) * 100.0,
        );
        if let Some((low, high, coverage)) = every_interval {
            println!(
                "Sonde capturing every connection − bare, the rounds' own differences: their median lies in [{low:+.1}, {high:+.1}] points with {:.1}% confidence (sign test)",
                coverage * 100.0
            );
        }
        match interval {
            Some((low, high, coverage)) => println!(
                "Sonde − bare, the rounds' own differences: their median lies in [{low:+.1}, {high:+.1}] points with {:.1}% confidence (sign test)",
                coverage * 100.0
            ),
            None => println!(
                "Sonde − bare: too few rounds for an interval around the median (at least {MIN_INTERVAL_ROUNDS})"
            ),
        }
        println!();
    }

    // Warm-up: nginx's first connections and this client's runtime settle.
    fixed_rate(nginx.port, cli.rate, 2).await?;
    // The untraced and bare-hook baselines are measured before Sonde's run and again after it, and
    // averaged: this VM's speed drifts over the minutes the runs take, and a baseline taken on one
    // side only carries that drift into the differences.
    let (base_before, base_before_requests) =
        cost_run(nginx.port, cli.rate, cli.fixed_seconds, nginx.worker).await?;
    let mut bare = start_bare_hooks(nginx.worker, &logs)?;
    let (bare_before, bare_before_requests) =
        cost_run(nginx.port, cli.rate, cli.fixed_seconds, nginx.worker).await?;
    bare.stop(Duration::from_secs(5));

    let agent = start_sonde(&bins, dir.path(), &logs, &[]).await?;
    // Its CPU without traffic (timers, the /proc scans): a fixed cost, spread over the requests.
    const IDLE_SECONDS: u64 = 10;
    // Attaching (loading, the first /proc scans) is not the idle cost: let it settle first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle0 = run_seconds(agent.proc.pid());
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS)).await;
    let idle_per_second = (run_seconds(agent.proc.pid()) - idle0) / IDLE_SECONDS as f64;
    fixed_rate(nginx.port, cli.rate, cli.warmup_seconds).await?;
    // The warm-up's last events drained before counting starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_pid = agent.proc.pid();
    eprintln!("agent pid {agent_pid}");
    let rows0 = http_rows(&agent).await.unwrap_or(0);
    // The scheduler's exact accounting: utime/stime ticks are 10 ms, 0.1 µs per request over a
    // 10-s run, as large as the differences an A/B run looks for.
    let cpu0 = run_seconds(agent_pid);
    let (traced, requests) =
        cost_run(nginx.port, cli.rate, cli.fixed_seconds, nginx.worker).await?;
    // Let the agent drain its ring buffer before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_cpu = (run_seconds(agent_pid) - cpu0) / requests as f64;
    let rows = http_rows(&agent).await? - rows0;
    let (rss, hwm) = memory_kib(agent_pid)?;
    let metrics = metrics(&agent).await?;

    // Separate runs: the accounting's clock reads would inflate every figure above.
    let stats = BpfStats::enable()?;
    let p0 = stats.programs()?;
    let stats_requests = fixed_rate(nginx.port, cli.rate, cli.fixed_seconds).await?;
    let sonde_programs = program_delta(&p0, &stats.programs()?, stats_requests);
    drop(agent);
    let mut bare = start_bare_hooks(nginx.worker, &logs)?;
    let k0 = stats.run_ns()?;
    let stats_bare_requests = fixed_rate(nginx.port, cli.rate, cli.fixed_seconds).await?;
    let bare_ns = (stats.run_ns()? - k0) as f64 / stats_bare_requests.max(1) as f64;
    drop(stats);
    let (bare_after, bare_after_requests) =
        cost_run(nginx.port, cli.rate, cli.fixed_seconds, nginx.worker).await?;
    bare.stop(Duration::from_secs(5));
    let (base_after, base_after_requests) =
        cost_run(nginx.port, cli.rate, cli.fixed_seconds, nginx.worker).await?;
    let mean = |a: (f64, f64), b: (f64, f64)| ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
    let (base, bare_cost) = (mean(base_before, base_after), mean(bare_before, bare_after));

    let us = |v: f64| v * 1e6;
    let (worker_added, client_added) = (traced.0 - base.0, traced.1 - base.1);
    println!(
        "## Fixed rate: {} req/s for {} s over 16 keep-alive connections (Sonde after {} s of warm-up; untraced and bare hooks before and after it)",
        cli.rate, cli.fixed_seconds, cli.warmup_seconds
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| requests answered (untraced before, after / bare hooks before, after / Sonde run) | {base_before_requests}, {base_after_requests} / {bare_before_requests}, {bare_after_requests} / {requests} |"
    );
    println!(
        "| nginx worker CPU per request (untraced before, after / bare hooks before, after / Sonde) | {:.2}, {:.2} / {:.2}, {:.2} / {:.2} µs |",
        us(base_before.0),
        us(base_after.0),
        us(bare_before.0),
        us(bare_after.0),
        us(traced.0)
    );
    println!(
        "| client CPU per request (untraced / bare hooks / Sonde; means of before and after) | {:.2} / {:.2} / {:.2} µs |",
        us(base.1),
        us(bare_cost.1),
        us(traced.1)
    );
    println!("| agent CPU per request | {:.2} µs |", us(agent_cpu));
    println!(
        "| of which the idle agent's CPU ({:.2} ms/s without traffic) | {:.2} µs |",
        idle_per_second * 1e3,
        us(idle_per_second / cli.rate as f64)
    );
    println!(
        "| added nginx worker CPU per request: bare hooks / Sonde / Sonde beyond bare hooks | {:.2} / {:.2} / {:.2} µs |",
        us(bare_cost.0 - base.0),
        us(worker_added),
        us(traced.0 - bare_cost.0)
    );
    println!(
        "| cost per request (agent + added nginx worker CPU) | {:.2} µs |",
        us(agent_cpu + worker_added)
    );
    println!(
        "| cost per request incl. the client's added CPU (noisy: tokio client) | {:.2} µs |",
        us(agent_cpu + worker_added + client_added)
    );
    println!(
        "| completeness (http_events rows / requests) | {rows} / {requests} = {:.2}% |",
        rows as f64 * 100.0 / requests as f64
    );
    println!(
        "| agent RSS now / peak | {} / {} MiB |",
        rss / 1024,
        hwm / 1024
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("sonde_events_dropped_total"))
    {
        println!("| {line} | |");
    }
    println!();

    println!(
        "## Time in BPF programs at {} req/s (kernel.bpf_stats_enabled, {} s each; its two clock reads per run are included)",
        cli.rate, cli.fixed_seconds
    );
    let sonde_ns: f64 = sonde_programs.iter().map(|(_, ns, runs)| ns * runs).sum();
    println!(
        "per request: bare hooks {bare_ns:.0} ns, Sonde {sonde_ns:.0} ns (all processes' runs)"
    );
    println!("| Sonde program | ns per run | runs per request |");
    println!("|---|---|---|");
    for (name, ns, runs) in &sonde_programs {
        println!("| {name} | {ns:.0} | {runs:.2} |");
    }
    drop(nginx);
    Ok(())
}

/// One fixed-rate run: CPU seconds per request of the nginx worker and of this process (the
/// client: not traced, but its syscalls pass the hooks' early exit), and the requests answered.
async fn cost_run(port: u16, rate: u64, seconds: u64, worker: u32) -> Result<((f64, f64), u64)> {
    let me = std::process::id();
    let cpu = || (run_seconds(worker), run_seconds(me));
    let c0 = cpu();
    let requests = fixed_rate(port, rate, seconds).await?;
    let c1 = cpu();
    let n = requests.max(1) as f64;
    Ok((((c1.0 - c0.0) / n, (c1.1 - c0.1) / n), requests))
}

/// (program, ns per run, runs per request) of Sonde's programs that ran between two snapshots.
fn program_delta(
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    after: &std::collections::BTreeMap<String, (u64, u64)>,
    requests: u64,
) -> Vec<(String, f64, f64)> {
    after
        .iter()
        .filter_map(|(name, (ns, runs))| {
            let (ns0, runs0) = before.get(name).copied().unwrap_or_default();
            let runs = runs.saturating_sub(runs0);
            (runs > 0 && name.starts_with("conn_")).then(|| {
                (
                    name.clone(),
                    ns.saturating_sub(ns0) as f64 / runs as f64,
                    runs as f64 / requests.max(1) as f64,
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_interval_is_the_sign_tests_order_statistics() {
        let values = |n: usize| (1..=n).rev().map(|i| i as f64).collect::<Vec<_>>();
        assert_eq!(median_interval(values(5)), None);
        let (low, high, coverage) = median_interval(values(8)).unwrap();
        assert_eq!((low, high), (1.0, 8.0));
        assert!((coverage - 254.0 / 256.0).abs() < 1e-9, "{coverage}");
        // n = 16: P(at most 3 below) = 697/65536, P(at most 4 below) = 2517/65536 > 2.5%.
        let (low, high, coverage) = median_interval(values(16)).unwrap();
        assert_eq!((low, high), (4.0, 13.0));
        assert!(
            (coverage - (1.0 - 2.0 * 697.0 / 65536.0)).abs() < 1e-9,
            "{coverage}"
        );
    }
}
