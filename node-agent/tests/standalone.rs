//! Runs the built `sonde-agent --manifests <dir>` and talks to it over HTTP like a user would.
//! Needs root (the protocol probes load eBPF), nginx and python3 (`scripts/setup peers`).
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{NginxSite, Server, free_port, start_nginx, wait_until, which};

const WEB: &str = "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: web
spec:
  process:
    exe: '*/nginx'
  probe:
    protocols: [http]
";

const BAD: &str = "apiVersion: sonde.dev/v1alpha1
kind: BpftraceScript
metadata:
  name: typo
spec:
  program: 'BEGIN { exit(); }'
  nodeSelectr: {}
";

/// The agent process, killed if the test fails before stopping it.
struct Agent {
    child: Child,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Agent {
    start_with(dir, &["--bpftrace", "/nonexistent/bpftrace"])
}

/// [`start`] with `args` instead of a missing bpftrace.
fn start_with(dir: &Path, args: &[&str]) -> Agent {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
        .args(["--manifests", dir.to_str().unwrap(), "--listen", &addr])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Agent { child, addr }
}

/// GET `path`; None while the agent is not answering.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Polls until `check` passes on `/v1/status`, or panics with the last status after a generous deadline.
fn wait_for_status(
    agent: &Agent,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Some((200, body)) = get(&agent.addr, "/v1/status") {
            // Chunked or not, the JSON object is the part between the outer braces.
            let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
            last = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
            if check(&last) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} never happened; last /v1/status: {last:#}");
}

fn probe<'a>(status: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    status["probes"].as_array()?.iter().find(|p| p["id"] == id)
}

#[test]
fn the_standalone_agent_serves_its_manifests_probes_and_problems_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), WEB).unwrap();
    std::fs::write(dir.path().join("bad.yaml"), BAD).unwrap();
    let mut agent = start(dir.path());

    let status = wait_for_status(&agent, "the Tracepoint from web.yaml showing up", |s| {
        probe(s, "Tracepoint/default/web").is_some()
    });
    assert_eq!(get(&agent.addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(status["mode"], "standalone");
    let web = probe(&status, "Tracepoint/default/web").unwrap();
    // Nothing runs nginx here: the protocol probe is running but has no process to attach to.
    assert_ne!(web["state"], "Failed", "{web}");
    let errors = status["manifestErrors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["file"].as_str().unwrap().ends_with("bad.yaml")
                && e["message"].as_str().unwrap().contains("nodeSelectr")),
        "{errors:?}"
    );

    // Files are reloaded: fixing the bad one turns it into a probe and clears the error.
    std::fs::write(
        dir.path().join("bad.yaml"),
        BAD.replace("  nodeSelectr: {}\n", ""),
    )
    .unwrap();
    wait_for_status(&agent, "bad.yaml being reloaded after the fix", |s| {
        probe(s, "BpftraceScript/typo").is_some()
            && s["manifestErrors"].as_array().is_some_and(Vec::is_empty)
    });
    let (code, metrics) = get(&agent.addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("sonde_manifest_errors_total 1"),
        "{metrics}"
    );

    // A typo in a running file is reported, and its last good version keeps running.
    std::fs::write(dir.path().join("web.yaml"), WEB.replace("[http]", "[htp]")).unwrap();
    let status = wait_for_status(&agent, "web.yaml's typo being reported", |s| {
        s["manifestErrors"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    });
    let message = status["manifestErrors"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("web.yaml document 1")
            && message.contains("htp")
            && message.contains("last good version keeps running (Tracepoint/default/web)"),
        "{message}"
    );
    assert!(
        probe(&status, "Tracepoint/default/web").is_some(),
        "{status:#}"
    );
    // Deleted, its probe goes.
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    wait_for_status(&agent, "web.yaml's probe going with the file", |s| {
        probe(s, "Tracepoint/default/web").is_none()
            && s["manifestErrors"].as_array().is_some_and(Vec::is_empty)
    });

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = agent.child.wait().unwrap();
    assert!(exit.success(), "the agent exited with {exit}");
}

/// A script whose rows fill the table `ticks` once a second.
const TICKS: &str = "apiVersion: sonde.dev/v1alpha1
kind: BpftraceScript
metadata:
  name: ticks
spec:
  tableName: ticks
  program: 'interval:s:1 { printf(\"n:%d\\n\", 1); }'
";

#[test]
fn the_table_of_a_removed_script_goes_after_the_orphan_ttl_with_its_series() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ticks.yaml"), TICKS).unwrap();
    let agent = start_with(dir.path(), &["--orphan-table-ttl", "2s"]);
    let has_table = |want: bool| {
        let (code, body) = get(&agent.addr, "/v1/tables").unwrap_or_default();
        code == 200 && body.contains("\"name\":\"ticks\"") == want
    };
    wait_until("the script's table", || has_table(true));
    // While the script runs, its table stays however long.
    std::thread::sleep(Duration::from_secs(5));
    assert!(has_table(true), "{:?}", get(&agent.addr, "/v1/tables"));
    std::fs::remove_file(dir.path().join("ticks.yaml")).unwrap();
    wait_until("the removed script's table going", || has_table(false));
    let (_, metrics) = get(&agent.addr, "/metrics").unwrap();
    assert!(
        metrics.contains("sonde_tables_retired_total 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("table=\"ticks\""),
        "its sonde_table_* series stayed:\n{metrics}"
    );
}

/// Runs the agent with `args` (no NODE_NAME) and expects it to exit by itself within seconds; its
/// exit status (None: still running, then killed) and stderr.
fn run_to_exit(args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
    let mut agent = Agent {
        child: Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
            .args(args)
            .env_remove("NODE_NAME")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        addr: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match agent.child.try_wait().unwrap() {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => {
                agent.child.kill().unwrap();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = agent.child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status, stderr)
}

#[test]
fn a_missing_manifests_directory_stops_the_agent_naming_it() {
    let (status, stderr) = run_to_exit(&["--manifests", "/nonexistent/sonde-manifests"]);
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/sonde-manifests")
            && stderr.contains("check the path given to --manifests"),
        "{stderr}"
    );
}

#[test]
fn a_capture_budget_beyond_a_hundred_percent_stops_the_agent_naming_the_flag_and_value() {
    for bad in ["150", "-1", "lots"] {
        let flag = format!("--saturated-capture-percent={bad}");
        let (status, stderr) = run_to_exit(&["--manifests", "/tmp", &flag]);
        assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
        assert!(
            stderr.contains("--saturated-capture-percent")
                && stderr.contains(&format!("\"{bad}\" is not a percentage"))
                && stderr.contains("from 0 to 100"),
            "{stderr}"
        );
    }
}

#[test]
fn without_a_node_name_the_agent_points_at_standalone_mode() {
    let (status, stderr) = run_to_exit(&[]);
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
    assert!(
        stderr.contains("--node-name") && stderr.contains("--manifests DIR"),
        "{stderr}"
    );
}

#[test]
fn an_empty_manifests_directory_is_one_warning_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
        .args([
            "--manifests",
            dir.path().to_str().unwrap(),
            "--listen",
            &addr,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = Agent {
        child,
        addr: addr.clone(),
    };
    // Ready once the (empty) desired state was applied, which comes after the warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&addr, "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the agent never got ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut stderr = String::new();
    agent
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let wanted = format!("no resources found in {}", dir.path().display());
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&wanted))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
}

/// The rows of `http_events` once `enough` says so, or those there after 30 s.
fn http_rows(
    agent: &Agent,
    enough: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<serde_json::Value> = get(&agent.addr, "/v1/tables/http_events?format=ndjson")
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| {
                body.lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect()
            })
            .unwrap_or_default();
        if enough(&rows) || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An nginx answering `hello` on a port of its own, and an agent whose one manifest is the
/// Tracepoint `name`, started and waiting for a process to trace.
fn nginx_and_agent_with(dir: &Path, name: &str, tracepoint: &str) -> (u16, Server, Agent) {
    let port = free_port();
    let site = NginxSite {
        main: "",
        http: "",
        server: "location / { return 200 \"hello\\n\"; }",
    };
    let (nginx, _worker) = start_nginx(dir, port, &site);
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join(format!("{name}.yaml")), tracepoint).unwrap();
    let agent = start(&manifests);
    let id = format!("Tracepoint/default/{name}");
    wait_for_status(&agent, &format!("{id} waiting for a process"), |s| {
        probe(s, &id).is_some_and(|p| p["state"] == "Pending")
    });
    (port, nginx, agent)
}

/// Selects the one-shot clients below by their marker argument.
const CLIENTS: &str = "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: clients
spec:
  process:
    exe: '*/python3*'
    cmdline: 'sonde-one-shot'
  probe:
    protocols: [http]
";

/// A client as a script runs one: it starts, makes one request on a connection of its own and
/// exits as soon as the answer is in. Its short pause first stands for a real client's start-up
/// (a `curl` needs a few milliseconds before it connects).
const ONE_SHOT_CLIENT: &str = r#"
import socket, sys, time
time.sleep(0.2)
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(("GET /once/%s HTTP/1.1\r\nHost: sonde\r\nConnection: close\r\n\r\n" % sys.argv[2]).encode())
while s.recv(4096):
    pass
"#;

#[test]
fn processes_that_start_after_the_agent_are_traced_even_when_they_exit_at_once() {
    const RUNS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let (port, _nginx, agent) = nginx_and_agent_with(dir.path(), "clients", CLIENTS);

    // One after the other, each alive for about a quarter of a second: the agent's periodic
    // rescan (every 2 s) would see a few at most; each must be selected when it execs, and its
    // bytes still be attributed after it exited and was deselected.
    let mut pids = Vec::new();
    for run in 0..RUNS {
        let mut client = Command::new(which("python3"));
        client.args([
            "-c",
            ONE_SHOT_CLIENT,
            &port.to_string(),
            &run.to_string(),
            "sonde-one-shot",
        ]);
        let child = client.spawn().unwrap();
        pids.push(i64::from(child.id()));
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "client {run}: {out:?}");
    }

    let rows = http_rows(&agent, |rows| rows.len() >= RUNS);
    let mut seen: Vec<(i64, String)> = rows
        .iter()
        .map(|row| {
            assert_eq!(row["trace_role"], "client", "{row}");
            assert_eq!(row["resp_status"], 200, "{row}");
            (
                row["pid"].as_i64().unwrap_or_default(),
                row["req_path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(i64, String)> = pids
        .iter()
        .enumerate()
        .map(|(run, pid)| (*pid, format!("/once/{run}")))
        .collect();
    assert_eq!(seen, expected, "one row per client run, nothing else");
    let (_, metrics) = get(&agent.addr, "/metrics").unwrap();
    assert!(
        metrics.contains("sonde_events_dropped_total{reason=\"unrouted\"} 0"),
        "{metrics}"
    );
}

/// A Tracepoint `name` on the HTTP of the programs `exe` names.
fn http_clients(name: &str, exe: &str) -> String {
    format!(
        "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: {name}
spec:
  process:
    exe: '{exe}'
  probe:
    protocols: [http]
"
    )
}

/// Runs `client` (given the URL) `runs` times one after the other against nginx, under a
/// Tracepoint on `exe`; checks that each run left its one row, every row labelled `label`.
fn burst_is_traced_whole(exe: &str, runs: usize, client: impl Fn(&str) -> Command, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (port, _nginx, agent) =
        nginx_and_agent_with(dir.path(), "clients", &http_clients("clients", exe));

    let mut pids = Vec::new();
    for run in 0..runs {
        let child = client(&format!("http://127.0.0.1:{port}/burst/{run}"))
            .spawn()
            .unwrap();
        pids.push(i64::from(child.id()));
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "run {run}: {out:?}");
    }

    // Tests run side by side: another one's clients may be traced by this agent too.
    let burst = |row: &serde_json::Value| {
        row["remote_port"] == port
            && row["req_path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/burst/"))
    };
    let rows = http_rows(&agent, |rows| {
        rows.iter().filter(|r| burst(r)).count() >= runs
    });
    let mut seen: Vec<(i64, String)> = rows
        .iter()
        .filter(|row| burst(row))
        .map(|row| {
            assert_eq!(row["trace_role"], "client", "{row}");
            assert_eq!(row["resp_status"], 200, "{row}");
            assert_eq!(row["container"], label, "{row}");
            (
                row["pid"].as_i64().unwrap_or_default(),
                row["req_path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(i64, String)> = pids
        .iter()
        .enumerate()
        .map(|(run, pid)| (*pid, format!("/burst/{run}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "one row per run, each by its own process");
    let (_, metrics) = get(&agent.addr, "/metrics").unwrap();
    assert!(
        metrics.contains("sonde_events_dropped_total{reason=\"unrouted\"} 0"),
        "{metrics}"
    );
}

/// Twenty `curl`s back to back, each alive for a few milliseconds: more than the process scan's
/// rate limit lets it find in time (it found 11 of 20), but the selector names the program, so the
/// kernel selects each in its exec, before it runs.
#[test]
fn every_curl_of_a_burst_is_traced_when_the_selector_names_the_program() {
    burst_is_traced_whole(
        "*/curl",
        20,
        |url| {
            let mut curl = Command::new(which("curl"));
            curl.args(["-sS", "-o", "/dev/null", url]);
            curl
        },
        "curl",
    );
}

/// `curl` started through a symlink called `fetch-url`, selected by the start of that name: the
/// kernel matches the start of a name too, and a client gone before the agent could look at it
/// is labelled by the program it ran, as the process scan labels the ones it sees.
#[test]
fn every_client_of_a_burst_is_traced_under_the_start_of_its_name_and_labelled_by_its_program() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = dir.path().join("fetch-url");
    std::os::unix::fs::symlink(which("curl"), &fetch).unwrap();
    burst_is_traced_whole(
        "*/fetch*",
        20,
        |url| {
            let mut curl = Command::new(&fetch);
            curl.args(["-sS", "-o", "/dev/null", url]);
            curl
        },
        "curl",
    );
}
