//! Protocol tracing end to end: an HTTP Tracepoint selecting a fake pod that runs a real nginx (in a
//! kubelet-style cgroup) through the real operator and agent; curl requests to it become
//! `http_events` rows and histogram samples in `/metrics`, while an identical nginx outside the
//! selected pods yields nothing. Then what application developers run into: a static file nginx
//! sends with `sendfile`, a keep-alive connection of a Python `http.server` that was in the
//! middle of a request when its pod was selected, and a client that gives up on that server.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus
//! nginx, curl and python3 (`scripts/setup peers`).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sonde_api::Tracepoint;
use sonde_e2e::cluster::TEST_NAMESPACE;
use sonde_e2e::expect::{self, HttpServerRows};
use sonde_e2e::peers;
use sonde_e2e::process::Proc;
use sonde_e2e::single_node::SingleNode;
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-h";
const PROBE_ID: &str = "Tracepoint/sonde-e2e/web-http";
const SLOW_PROBE_ID: &str = "Tracepoint/sonde-e2e/slow-http";
/// The file the static nginx serves with sendfile, at [`STATIC_RATE`] bytes a second: its last
/// sendfile comes about a second after the head, whatever the socket buffers hold.
const BIG_FILE_BYTES: usize = 4 << 20;
const STATIC_RATE: usize = 4 << 20;

struct Env {
    // Stopped before the node's processes and work directory (field order = drop order).
    _outside: Proc,
    node: SingleNode,
    pod_port: u16,
    outside_port: u16,
    /// nginx with `sendfile on` serving `/big.bin` (pod static-1, app web).
    static_port: u16,
    /// A Python `http.server` (pod slow-1, app slow) whose `/wait` answers once `release` exists,
    /// and whose `/hang` never answers.
    slow_port: u16,
    release: PathBuf,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        self.node.diagnostics()
    }
}

fn setup() -> Result<Env> {
    let nginx = peers::nginx()?;
    let node = SingleNode::start("sonde-e2e-protocols-", NODE)?;
    let pod_port = sonde_e2e::ports::free_port()?;
    let outside_port = sonde_e2e::ports::free_port()?;
    let pod_conf = peers::nginx_conf(&node.dir.path().join("nginx-pod"), pod_port)?;
    let outside_conf = peers::nginx_conf(&node.dir.path().join("nginx-outside"), outside_port)?;
    node.start_pod(
        "web-1",
        "web",
        "nginx",
        peers::nginx_command(&nginx, &pod_conf),
    )?;
    let mut outside = Command::new(&nginx);
    outside.arg("-c").arg(&outside_conf);
    let outside = Proc::spawn("nginx-outside", outside, &node.logs)?;
    let static_port = sonde_e2e::ports::free_port()?;
    let static_conf = static_nginx_conf(&node.dir.path().join("nginx-static"), static_port)?;
    node.start_pod(
        "static-1",
        "web",
        "nginx",
        peers::nginx_command(&nginx, &static_conf),
    )?;
    let slow_port = sonde_e2e::ports::free_port()?;
    let release = node.dir.path().join("slow-release");
    node.start_pod(
        "slow-1",
        "slow",
        "api",
        vec![
            python3()?,
            "-c".into(),
            SLOW_SERVER.into(),
            slow_port.to_string(),
            release.to_string_lossy().into_owned(),
        ],
    )?;
    for port in [pod_port, outside_port, static_port, slow_port] {
        node.rt.block_on(peers::wait_listening(port))?;
    }
    node.start_sonde()?;
    Ok(Env {
        _outside: outside,
        node,
        pod_port,
        outside_port,
        static_port,
        slow_port,
        release,
    })
}

/// Debian's python3, or an error saying how to install it.
fn python3() -> Result<String> {
    let path = "/usr/bin/python3";
    ensure!(
        Path::new(path).exists(),
        "{path} is not installed: run `scripts/setup peers`"
    );
    Ok(path.into())
}

/// An nginx config serving the files of `dir/www` on `port` with `sendfile on` at [`STATIC_RATE`]
/// bytes a second, and a [`BIG_FILE_BYTES`] `big.bin` there.
fn static_nginx_conf(dir: &Path, port: u16) -> Result<PathBuf> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let big: Vec<u8> = (0..BIG_FILE_BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("big.bin"), big)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log stderr;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on; sendfile_max_chunk 256k; limit_rate {STATIC_RATE}; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port}; root {www}; }} }}\n",
            d = dir.display(),
            www = www.display(),
        ),
    )?;
    Ok(conf)
}

/// `python3 -c` program: an HTTP/1.1 keep-alive server on port `argv[1]` answering `ok` to every
/// GET, `/wait` only once the file `argv[2]` exists; `/hang` never: the connection is closed once
/// the client closed its end.
const SLOW_SERVER: &str = r#"
import os, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
port, release = int(sys.argv[1]), sys.argv[2]
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        if self.path == "/hang":
            self.connection.settimeout(60)
            try:
                self.connection.recv(1)
            except OSError:
                pass
            self.close_connection = True
            return
        while self.path == "/wait" and not os.path.exists(release):
            time.sleep(0.05)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

const TRACEPOINT: &str = "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: web-http
  namespace: sonde-e2e
spec:
  selector:
    matchLabels: {app: web}
  probe:
    protocols: [http]
";

fn an_http_tracepoint_on_a_fake_pod_fills_http_events_and_the_histogram_but_not_for_other_processes(
    env: &Env,
) -> Result<()> {
    let node = &env.node;
    node.cluster.kubectl.apply(TRACEPOINT)?;
    node.wait_ready_and_attached(
        &kube::Api::<Tracepoint>::namespaced(node.cluster.client.clone(), TEST_NAMESPACE),
        "web-http",
        PROBE_ID,
    )?;
    for i in 0..3 {
        peers::curl_hello(env.pod_port, &format!("/inside/{i}"))?;
        peers::curl_hello(env.outside_port, &format!("/outside/{i}"))?;
    }
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let metrics_token = node.metrics_token()?;
    let rows = HttpServerRows {
        pod: "web-1",
        namespace: TEST_NAMESPACE,
        local_port: env.pod_port,
        also: &[("container", "nginx"), ("req_method", "GET")],
    };
    let outside_port = env.outside_port;
    node.rt.block_on(async {
        expect::http_paths(
            &url,
            &token,
            &rows,
            &["/inside/0", "/inside/1", "/inside/2"],
            "the nginx outside the pod",
            |r| r["local_port"] == outside_port,
        )
        .await?;
        expect::http_request_count(
            &url,
            &metrics_token,
            "web-1",
            &[
                "http_request_method=\"GET\"",
                "http_response_status_code=\"200\"",
            ],
            3,
            |metrics| {
                ensure!(
                    metrics.contains("sonde_events_dropped_total{reason=\"ring_full\"}"),
                    "no drop counters in /metrics"
                );
                Ok(())
            },
        )
        .await
    })
}

/// The sum of the agent's `sonde_protocol_parse_errors_total{protocol="http",…}` series.
async fn http_parse_errors(url: &str, metrics_token: &str) -> Result<f64> {
    let (code, metrics) =
        sonde_e2e::observe::agent_get(url, "/metrics", Some(metrics_token)).await?;
    ensure!(code == 200, "GET /metrics: {code}");
    let mut sum = 0.0;
    for line in metrics.lines().filter(|l| {
        l.starts_with("sonde_protocol_parse_errors_total{") && l.contains("protocol=\"http\"")
    }) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        sum += value
            .parse::<f64>()
            .with_context(|| format!("a parse error count that is no number: {line}"))?;
    }
    Ok(sum)
}

/// The `http_events` rows of pod `pod`, once `done` accepts them.
async fn pod_rows(
    url: &str,
    token: &str,
    pod: &str,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> Result<()>,
) -> Result<Vec<serde_json::Value>> {
    wait::until(what, CONVERGE, || async {
        let rows: Vec<serde_json::Value> = expect::table_rows(url, token, "http_events")
            .await?
            .into_iter()
            .filter(|r| r["pod"] == pod && r["namespace"] == TEST_NAMESPACE)
            .collect();
        done(&rows).with_context(|| format!("rows of {pod}: {rows:?}"))?;
        Ok(Some(rows))
    })
    .await
}

fn a_static_file_sent_with_sendfile_is_timed_to_its_last_byte(env: &Env) -> Result<()> {
    let node = &env.node;
    node.cluster.kubectl.apply(TRACEPOINT)?;
    node.wait_ready_and_attached(
        &kube::Api::<Tracepoint>::namespaced(node.cluster.client.clone(), TEST_NAMESPACE),
        "web-http",
        PROBE_ID,
    )?;
    let mut stream = TcpStream::connect(("127.0.0.1", env.static_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let started = Instant::now();
    stream.write_all(b"GET /big.bin HTTP/1.1\r\nHost: static\r\nConnection: close\r\n\r\n")?;
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stream
            .read(&mut buf)
            .context("reading /big.bin from nginx")?;
        if n == 0 {
            break;
        }
        received += n;
    }
    let read_for = started.elapsed();
    ensure!(
        received > BIG_FILE_BYTES,
        "nginx sent {received} bytes of /big.bin"
    );
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let rows = node.rt.block_on(pod_rows(
        &url,
        &token,
        "static-1",
        "the row of GET /big.bin",
        |rows| {
            ensure!(rows.iter().any(|r| r["req_path"] == "/big.bin"));
            Ok(())
        },
    ))?;
    let row = rows
        .iter()
        .find(|r| r["req_path"] == "/big.bin")
        .context("no row of /big.bin")?;
    ensure!(
        row["trace_role"] == "server"
            && row["resp_status"] == 200
            && row["resp_body_size"] == BIG_FILE_BYTES,
        "{row}"
    );
    let latency = Duration::from_nanos(row["latency"].as_u64().context("no latency")?);
    // nginx paced its sendfile calls over about a second; the head went out at once.
    ensure!(
        latency >= read_for / 2 && latency <= read_for,
        "the answer took {latency:?} by Sonde, while the client read it for {read_for:?}: {row}"
    );
    Ok(())
}

const SLOW_TRACEPOINT: &str = "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: slow-http
  namespace: sonde-e2e
spec:
  selector:
    matchLabels: {app: slow}
  probe:
    protocols: [http]
";

/// Reads one answer `ok` of the slow server.
fn read_ok(stream: &mut TcpStream) -> Result<()> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok\n") {
        let n = stream
            .read(&mut buf)
            .context("reading from the slow server")?;
        if n == 0 {
            bail!(
                "the slow server closed the connection after {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

fn a_keep_alive_connection_traced_from_the_middle_of_an_exchange_keeps_its_rows_and_parses(
    env: &Env,
) -> Result<()> {
    let node = &env.node;
    let url = node.agent_url()?;
    let metrics_token = node.metrics_token()?;
    let errors_before = node.rt.block_on(http_parse_errors(&url, &metrics_token))?;
    // A request in flight on a keep-alive connection while the pod gets selected: the first
    // bytes the agent sees on it are the server's answer.
    let mut stream = TcpStream::connect(("127.0.0.1", env.slow_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(b"GET /wait HTTP/1.1\r\nHost: slow\r\n\r\n")?;
    node.cluster.kubectl.apply(SLOW_TRACEPOINT)?;
    node.wait_ready_and_attached(
        &kube::Api::<Tracepoint>::namespaced(node.cluster.client.clone(), TEST_NAMESPACE),
        "slow-http",
        SLOW_PROBE_ID,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&env.release, b"")?;
    read_ok(&mut stream)?;
    for i in 0..3 {
        stream.write_all(format!("GET /after/{i} HTTP/1.1\r\nHost: slow\r\n\r\n").as_bytes())?;
        read_ok(&mut stream)?;
    }
    let token = node.reader_token()?;
    let slow_port = env.slow_port;
    let rows = node.rt.block_on(pod_rows(
        &url,
        &token,
        "slow-1",
        "the rows of GET /after/0..2",
        |rows| {
            let mut paths: Vec<&str> = rows.iter().filter_map(|r| r["req_path"].as_str()).collect();
            paths.sort();
            ensure!(paths == ["/after/0", "/after/1", "/after/2"]);
            Ok(())
        },
    ))?;
    for row in &rows {
        ensure!(
            row["trace_role"] == "server"
                && row["resp_status"] == 200
                && row["local_port"] == slow_port
                && row["container"] == "api",
            "{row}"
        );
    }
    let errors_after = node.rt.block_on(http_parse_errors(&url, &metrics_token))?;
    ensure!(
        errors_after == errors_before,
        "HTTP parse errors went from {errors_before} to {errors_after} on well-formed traffic"
    );
    Ok(())
}

/// How long the client of [`a_client_that_gives_up_on_a_slow_server_is_an_error_that_took_its_wait`]
/// waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);

fn a_client_that_gives_up_on_a_slow_server_is_an_error_that_took_its_wait(env: &Env) -> Result<()> {
    let node = &env.node;
    node.cluster.kubectl.apply(SLOW_TRACEPOINT)?;
    node.wait_ready_and_attached(
        &kube::Api::<Tracepoint>::namespaced(node.cluster.client.clone(), TEST_NAMESPACE),
        "slow-http",
        SLOW_PROBE_ID,
    )?;
    let mut stream = TcpStream::connect(("127.0.0.1", env.slow_port))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(b"GET /hang HTTP/1.1\r\nHost: slow\r\n\r\n")?;
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => bail!("the slow server answered /hang: {other:?}"),
    }
    // The client gives up (nginx would log a 499); the server closes its end in turn.
    drop(stream);
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let metrics_token = node.metrics_token()?;
    let rows = node.rt.block_on(pod_rows(
        &url,
        &token,
        "slow-1",
        "the row of GET /hang",
        |rows| {
            ensure!(rows.iter().any(|r| r["req_path"] == "/hang"));
            Ok(())
        },
    ))?;
    let row = rows
        .iter()
        .find(|r| r["req_path"] == "/hang")
        .context("no row of /hang")?;
    ensure!(
        row["trace_role"] == "server" && row["resp_status"] == 0 && row["latency"].is_null(),
        "{row}"
    );
    node.rt.block_on(expect::http_request_count(
        &url,
        &metrics_token,
        "slow-1",
        &[
            "http_request_method=\"GET\"",
            "http_response_status_code=\"\"",
            "error_type=\"connection_closed\"",
        ],
        1,
        |metrics| {
            let sum = metrics
                .lines()
                .find(|l| {
                    l.starts_with("http_server_request_duration_seconds_sum{")
                        && l.contains("pod=\"slow-1\"")
                        && l.contains("error_type=\"connection_closed\"")
                })
                .context("no sum of the unanswered request")?;
            let seconds: f64 = sum
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("a sum that is no number: {sum}"))?;
            // From the request to the server's close, which followed the client's: at least the
            // client's wait, and far from the 5-minute answer timeout (no bound on this machine's
            // speed beyond that).
            ensure!(
                seconds >= CLIENT_TIMEOUT.as_secs_f64() * 0.9 && seconds < 60.0,
                "the unanswered request took {seconds} s by Sonde, the client waited {CLIENT_TIMEOUT:?}: {sum}"
            );
            Ok(())
        },
    ))
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![
            Scenario::new(
                "an_http_tracepoint_on_a_fake_pod_fills_http_events_and_the_histogram_but_not_for_other_processes",
                an_http_tracepoint_on_a_fake_pod_fills_http_events_and_the_histogram_but_not_for_other_processes,
            ),
            Scenario::new(
                "a_static_file_sent_with_sendfile_is_timed_to_its_last_byte",
                a_static_file_sent_with_sendfile_is_timed_to_its_last_byte,
            ),
            Scenario::new(
                "a_keep_alive_connection_traced_from_the_middle_of_an_exchange_keeps_its_rows_and_parses",
                a_keep_alive_connection_traced_from_the_middle_of_an_exchange_keeps_its_rows_and_parses,
            ),
            Scenario::new(
                "a_client_that_gives_up_on_a_slow_server_is_an_error_that_took_its_wait",
                a_client_that_gives_up_on_a_slow_server_is_an_error_that_took_its_wait,
            ),
        ],
    )
}
