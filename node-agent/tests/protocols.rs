//! Protocol capture against real peers on loopback: nginx serving `return 200`, curl as client;
//! a Python HTTP server (`fixtures/protocols/awkward_answers.py`) for answers larger than a syscall's
//! capture; Python database applications (psycopg2, PyMySQL) against PostgreSQL and MariaDB.
//! Needs root (eBPF), nginx, curl, python3, PostgreSQL 15, MariaDB and Debian's python3-psycopg2
//! and python3-pymysql (`scripts/setup peers`); fails loudly without them.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::peers::*;
use common::*;
use sonde_agent::tables::Value;
use sonde_api::{AssignedProbe, ProbeConfig, Protocol, TracepointSpec};

/// nginx with one worker answering `return 200 "hello\n"` on `port`; returns it and its worker pid.
fn start_hello_nginx(dir: &Path, port: u16) -> (Server, u32) {
    let site = NginxSite {
        main: "",
        http: "",
        server: "location / { return 200 \"hello\\n\"; }",
    };
    start_nginx(dir, port, &site)
}

/// curl fetching `paths` in order over one keep-alive connection.
fn curl(port: u16, paths: &[&str]) -> String {
    let out = Command::new(which("curl"))
        .args(["-s", "--http1.1"])
        .args(paths.iter().map(|p| format!("http://127.0.0.1:{port}{p}")))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_to_traced_nginx_shows_exact_byte_counts_in_conn_stats() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_nginx, worker) = start_hello_nginx(dir.path(), port);
    let Traced {
        store, probe: p, ..
    } = Traced::start(
        &tracepoint(vec![Protocol::Http], "*/nginx"),
        target(worker, "/usr/sbin/nginx"),
    );

    let body = curl(port, &["/hello?x=1"]);
    assert_eq!(body, "hello\n");

    let stats = wait_for_rows(&store, "conn_stats", |r| !r.is_empty()).await;
    p.stop().await;
    assert_eq!(stats.len(), 1, "one connection: {stats:?}");
    let row = &stats[0];
    assert_eq!(row["pid"], Value::Int64(i64::from(worker)));
    assert_eq!(row["trace_role"], Value::String("server".into()));
    assert_eq!(row["local_port"], Value::Int64(i64::from(port)));
    assert_eq!(row["remote_addr"], Value::String("127.0.0.1".into()));
    assert_eq!(row["conn_close"], Value::Int64(1));
    // What curl sends for this URL and what nginx answers, byte for byte.
    let request = format!(
        "GET /hello?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: curl/{}\r\nAccept: */*\r\n\r\n",
        curl_version()
    );
    assert_eq!(row["bytes_recv"], Value::Int64(request.len() as i64));
    let Value::Int64(sent) = row["bytes_sent"] else {
        panic!("bytes_sent: {row:?}")
    };
    assert!(
        sent > "HTTP/1.1 200 OK\r\n\r\nhello\n".len() as i64,
        "bytes_sent {sent}"
    );
}

fn curl_version() -> String {
    let out = Command::new(which("curl"))
        .arg("--version")
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// A client that, when told, tries a non-blocking connect to `refused` (nothing listens there),
/// then opens `count` connections to `port` one after the other, each for one request (closed as
/// soon as the answer is in: a millisecond or two), printing each one's local port.
const SHORT_CLIENT: &str = r#"
import errno, select, socket, sys
port, count, refused = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sys.stdin.readline()
r = socket.socket()
r.setblocking(False)
assert r.connect_ex(("127.0.0.1", refused)) == errno.EINPROGRESS
select.select([], [r], [], 5)
assert r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
r.close()
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    print(s.getsockname()[1], flush=True)
    s.sendall(b"GET /short HTTP/1.1\r\nHost: sonde\r\n\r\n")
    data = b""
    while not data.endswith(b"hello\n"):
        data += s.recv(4096)
    s.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tcp_clients_keep_their_local_address_and_a_refused_connect_is_no_connection() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    const CONNECTIONS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (port, refused) = two_free_ports();
    let (_nginx, _worker) = start_hello_nginx(dir.path(), port);
    let mut client = Command::new(which("python3"))
        .args([
            "-c",
            SHORT_CLIENT,
            &port.to_string(),
            &CONNECTIONS.to_string(),
            &refused.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Http], "*/python3*"),
        target(client.id(), "/usr/bin/python3"),
    );
    // Quiet long enough for the agent's drain timer to back off to its idle second: every
    // connection is closed long before the agent's next look at the ring.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut ports: Vec<i64> = BufReader::new(client.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap().trim().parse().unwrap())
        .collect();
    assert!(client.wait().unwrap().success());
    assert_eq!(ports.len(), CONNECTIONS);

    let http = wait_for_rows(&store, "http_events", |r| r.len() >= CONNECTIONS).await;
    // The refused connect ended first: its row, if it had one, would be in by now.
    let stats = wait_for_rows(&store, "conn_stats", |r| closed(r).len() >= CONNECTIONS).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    assert_eq!(http.len(), CONNECTIONS, "{http:?}");
    assert_eq!(closed(&stats).len(), CONNECTIONS, "{stats:?}");
    assert!(
        stats
            .iter()
            .all(|r| r["remote_port"] == Value::Int64(i64::from(port))),
        "{stats:?}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "sonde_events_dropped_total",
            &["reason=\"addresses_unknown\""]
        ),
        0,
        "{metrics}"
    );
    let mut seen = Vec::new();
    for row in &http {
        assert_eq!(text(row, "trace_role"), "client", "{row:?}");
        assert_eq!(text(row, "req_path"), "/short", "{row:?}");
        assert_eq!(row["remote_port"], Value::Int64(i64::from(port)), "{row:?}");
        assert_eq!(text(row, "local_addr"), "127.0.0.1", "{row:?}");
        let Value::Int64(local_port) = row["local_port"] else {
            panic!("local_port: {row:?}")
        };
        seen.push(local_port);
    }
    seen.sort_unstable();
    ports.sort_unstable();
    assert_eq!(seen, ports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_outside_the_selected_processes_yields_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let (_traced, worker_a) = start_hello_nginx(&dir.path().join("a").tap_mkdir(), port_a);
    let (_untraced, _worker_b) = start_hello_nginx(&dir.path().join("b").tap_mkdir(), port_b);
    let Traced {
        store, probe: p, ..
    } = Traced::start(
        &tracepoint(vec![Protocol::Http], "*/nginx"),
        target(worker_a, "/usr/sbin/nginx"),
    );
    for _ in 0..3 {
        curl(port_b, &["/untraced"]);
    }
    curl(port_a, &["/traced"]);
    let stats = wait_for_rows(&store, "conn_stats", |r| !r.is_empty()).await;
    // Let any late event of the untraced server arrive before looking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats_after = rows(&store, "conn_stats");
    p.stop().await;
    assert_eq!(stats.len(), 1);
    assert_eq!(stats_after.len(), 1, "{stats_after:?}");
    assert_eq!(
        stats_after[0]["local_port"],
        Value::Int64(i64::from(port_a))
    );
    let http = rows(&store, "http_events");
    assert_eq!(http.len(), 1, "{http:?}");
    assert_eq!(http[0]["req_path"], Value::String("/traced".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_to_traced_nginx_become_http_events_and_histogram_samples() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_nginx, worker) = start_hello_nginx(dir.path(), port);
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Http], "*/nginx"),
        target(worker, "/usr/sbin/nginx"),
    );

    let body = curl(port, &["/a", "/b?q=2", "/c"]);
    assert_eq!(body, "hello\nhello\nhello\n");

    let http = wait_for_rows(&store, "http_events", |r| r.len() >= 3).await;
    let stats = wait_for_rows(&store, "conn_stats", |r| !r.is_empty()).await;
    let metrics = metrics_text(&registry);
    p.stop().await;

    assert_eq!(stats.len(), 1, "one keep-alive connection: {stats:?}");
    assert_eq!(http.len(), 3, "{http:?}");
    let paths: Vec<&Value> = http.iter().map(|r| &r["req_path"]).collect();
    assert_eq!(
        paths,
        [
            &Value::String("/a".into()),
            &Value::String("/b?q=2".into()),
            &Value::String("/c".into())
        ]
    );
    // Header columns are kept as captured and rendered when read: a JSON object, keys sorted.
    let req_headers = format!(
        r#"{{"Accept":"*/*","Host":"127.0.0.1:{port}","User-Agent":"curl/{}"}}"#,
        curl_version()
    );
    for row in &http {
        assert_eq!(row["req_headers"], Value::String(req_headers.clone()));
        let Value::String(resp_headers) = &row["resp_headers"] else {
            panic!("resp_headers: {row:?}")
        };
        assert!(
            resp_headers.starts_with(r#"{"Connection":"keep-alive","Content-Length":"6","Content-Type":"text/plain","Date":""#),
            "{resp_headers}"
        );
        assert_eq!(row["req_method"], Value::String("GET".into()));
        assert_eq!(row["resp_status"], Value::Int64(200));
        assert_eq!(row["resp_body"], Value::String("hello\n".into()));
        assert_eq!(row["trace_role"], Value::String("server".into()));
        assert_eq!(row["local_port"], Value::Int64(i64::from(port)));
        assert_eq!(row["pid"], Value::Int64(i64::from(worker)));
        let Value::Int64(latency) = row["latency"] else {
            panic!("latency: {row:?}")
        };
        assert!(latency > 0, "{row:?}");
    }
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains("http_request_method=\"GET\"")
                && l.contains("http_response_status_code=\"200\"")
        })
        .unwrap_or_else(|| panic!("no histogram series in:\n{metrics}"));
    assert!(count.ends_with(" 3"), "{count}");
}

/// python3 as the kernel names it (symlinks resolved).
fn python3() -> PathBuf {
    std::fs::canonicalize(which("python3")).unwrap()
}

/// python3 running `args`, its stdin and stdout piped to the test.
fn python_piped(args: &[&str]) -> std::process::Child {
    Command::new(python3())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The next line `child` prints.
fn printed_line(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

/// HTTP tracing of the python3 process `pid`.
fn trace_python(pid: u32) -> Traced {
    Traced::start(
        &tracepoint(vec![Protocol::Http], "*/python3*"),
        target(pid, &python3().to_string_lossy()),
    )
}

/// A client connected before it was selected — as a program does that connects within the
/// millisecond the agent takes to select it after its exec — whose first bytes come once it is
/// traced, and which exits the moment it has its answer: the kernel reads the socket behind the fd
/// it did not see opened and sends its addresses, so nobody needs to look at the fd (a look after
/// the process was gone took the fd for no socket, and the request went without a row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_selected_after_it_connected_and_gone_at_once_still_gets_its_row() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_nginx, _worker) = start_hello_nginx(dir.path(), port);
    let script = format!(
        "import os, socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         print('connected', flush=True)\n\
         sys.stdin.readline()\n\
         s.sendall(b'GET /hello HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n')\n\
         while s.recv(4096): pass\n\
         os._exit(0)\n"
    );
    let mut client = python_piped(&["-c", &script]);
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let Traced {
        store, probe: p, ..
    } = trace_python(client.id());
    // The capture thread's timed drains come further apart while it finds nothing (250 ms, then
    // 500, 1,000): told now, the client is gone long before the next one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(client.wait().unwrap().success());
    let rows = wait_for_rows(&store, "http_events", |r| !r.is_empty()).await;
    p.stop().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        ["trace_role", "req_method", "req_path"].map(|c| text(row, c)),
        ["client", "GET", "/hello"],
        "{row:?}"
    );
    assert_eq!(row["resp_status"], Value::Int64(200), "{row:?}");
    assert_eq!(row["remote_port"], Value::Int64(i64::from(port)), "{row:?}");
}

/// A server that accepted its one connection before it was traced and, told on stdin, answers one
/// request on it, closes it and exits at once (no interpreter teardown).
const EARLY_ACCEPTING_SERVER: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
sys.stdin.readline()
c.recv(65536)
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
c.close()
os._exit(0)
"#;

/// A connection accepted before the server was traced (the agent started, or the pod selected,
/// while it was open), whose server answers and is gone within the same millisecond: the row
/// comes with both addresses, which the kernel read from the socket while the fd was in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_tracing_whose_server_exits_at_once_gets_its_row_and_addresses()
 {
    use std::io::{Read, Write};
    let port = free_port();
    let mut server = start_python_server(&["-c", EARLY_ACCEPTING_SERVER, &port.to_string()]);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let mut go = server.child.stdin.take().unwrap();
    let Traced {
        store,
        registry,
        probe: p,
    } = trace_python(server.pid());
    client
        .write_all(b"GET /early HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    go.write_all(b"go\n").unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    assert!(answer.ends_with(b"\r\n\r\nok"), "{answer:?}");
    let rows = wait_for_rows(&store, "http_events", |r| !r.is_empty()).await;
    let stats = wait_for_rows(&store, "conn_stats", |r| !closed(r).is_empty()).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    assert_eq!(rows.len(), 1, "{rows:?}\n{stats:?}\n{metrics}");
    let row = &rows[0];
    assert_eq!(
        ["trace_role", "req_method", "req_path", "remote_addr"].map(|c| text(row, c)),
        ["server", "GET", "/early", "127.0.0.1"],
        "{row:?}"
    );
    assert_eq!(row["resp_status"], Value::Int64(200), "{row:?}");
    assert_eq!(
        row["remote_port"],
        Value::Int64(i64::from(client_port)),
        "{row:?}"
    );
    let closed = closed(&stats);
    assert_eq!(
        closed[0]["local_port"],
        Value::Int64(i64::from(port)),
        "{closed:?}"
    );
    // The kernel told: the agent looked at no fd.
    assert_eq!(
        metric_sum(&metrics, "sonde_protocol_fd_lookups_total", &[]),
        0,
        "{metrics}"
    );
}

/// The Python server of `fixtures/protocols/awkward_answers.py` on `port`, once it listens.
/// A Python server (`args` given to python3) once it printed "ready"; its stdin stays piped.
fn start_python_server(args: &[&str]) -> Server {
    let mut child = python_piped(args);
    assert_eq!(printed_line(&mut child), "ready", "{args:?} did not start");
    Server {
        child,
        signal: nix::sys::signal::Signal::SIGTERM,
    }
}

fn start_awkward_server(port: u16) -> Server {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocols/awkward_answers.py");
    start_python_server(&[&script.to_string_lossy(), &port.to_string()])
}

/// A keep-alive client that fetches `/length`, prints its local port and keeps the connection
/// open until its stdin closes.
const KEEP_OPEN_CLIENT: &str = r#"
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("GET", "/length")
assert len(c.getresponse().read()) == 300_000
print(c.sock.getsockname()[1], flush=True)
sys.stdin.read()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_in_one_syscall_larger_than_the_capture_is_complete_when_it_is_sent() {
    let port = free_port();
    let server = start_awkward_server(port);
    let Traced {
        store, probe: p, ..
    } = trace_python(server.pid());

    // 300,000 bytes in one send, of which the first 16 KiB are captured; the connection stays
    // open. The rest is a gap the parser must learn of with that send, not with the next one.
    let mut client = python_piped(&["-c", KEEP_OPEN_CLIENT, &port.to_string()]);
    let client_port: i64 = printed_line(&mut client).parse().unwrap();
    let of_client = |r: &Row| r["remote_port"] == Value::Int64(client_port);
    let http = wait_for_rows(&store, "http_events", |r| r.iter().any(of_client)).await;
    let open: Vec<&Row> = http.iter().filter(|r| of_client(r)).collect();
    assert!(
        client.try_wait().unwrap().is_none(),
        "the client left before its row was checked"
    );
    drop(client.stdin.take());
    let _ = client.wait();

    // 100,000 bytes in one send, read until the server closes.
    let out = Command::new(which("curl"))
        .args(["-s", "--http1.1", &format!("http://127.0.0.1:{port}/close")])
        .output()
        .unwrap();
    assert_eq!(out.stdout.len(), 100_000, "curl: {out:?}");
    let of_close = |r: &Row| r["req_path"] == Value::String("/close".into());
    let http = wait_for_rows(&store, "http_events", |r| r.iter().any(of_close)).await;
    p.stop().await;

    assert_eq!(open.len(), 1, "the keep-alive answer, while open: {open:?}");
    let (length, close) = (open[0], http.iter().find(|r| of_close(r)).unwrap());
    for (row, path, size, byte) in [
        (length, "/length", 300_000, "y"),
        (close, "/close", 100_000, "x"),
    ] {
        assert_eq!(row["trace_role"], Value::String("server".into()), "{row:?}");
        assert_eq!(row["req_path"], Value::String(path.into()), "{row:?}");
        assert_eq!(row["resp_status"], Value::Int64(200), "{row:?}");
        assert_eq!(row["resp_body_size"], Value::Int64(size), "{row:?}");
        // The first 512 bytes (the default limit) are kept as the body.
        assert_eq!(row["resp_body"], Value::String(byte.repeat(512)), "{row:?}");
    }
}

/// A client that, told on stdin, fetches `/chunked` with reads of up to 1 MiB (after giving the
/// answer time to arrive whole), then `/small` on the same connection; prints its local port and
/// waits for its stdin to close.
const BIG_READS_CLIENT: &str = r#"
import socket, sys, time
sys.stdin.readline()
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /chunked HTTP/1.1\r\nHost: sonde\r\n\r\n")
time.sleep(0.3)
data = b""
while not data.endswith(b"\r\n0\r\n\r\n"):
    data += s.recv(1 << 20)
s.sendall(b"GET /small HTTP/1.1\r\nHost: sonde\r\n\r\n")
data = b""
while not data.endswith(b"ok"):
    data += s.recv(1 << 20)
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_taken_in_reads_larger_than_the_capture_is_sized_and_paired_in_order() {
    use std::io::Write;
    let port = free_port();
    let _server = start_awkward_server(port);
    let mut client = python_piped(&["-c", BIG_READS_CLIENT, &port.to_string()]);
    let Traced {
        store, probe: p, ..
    } = trace_python(client.id());

    // Each read takes tens of KiB of which the first 16 KiB are captured: the chunk boundaries
    // in the rest are lost.
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let client_port: i64 = printed_line(&mut client).parse().unwrap();
    let of_client = |r: &Row| {
        r["local_port"] == Value::Int64(client_port)
            && r["trace_role"] == Value::String("client".into())
    };
    let http = wait_for_rows(&store, "http_events", |r| {
        r.iter().filter(|r| of_client(r)).count() >= 2
    })
    .await;
    drop(stdin);
    let _ = client.wait();
    p.stop().await;

    let rows: Vec<&Row> = http.iter().filter(|r| of_client(r)).collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (chunked, small) = (rows[0], rows[1]);
    assert_eq!(chunked["req_path"], Value::String("/chunked".into()));
    assert_eq!(chunked["resp_status"], Value::Int64(200));
    assert_eq!(chunked["resp_body"], Value::String("z".repeat(512)));
    // 200,000 bytes of payload; the chunk-size lines that went with lost bytes count too.
    let Value::Int64(size) = chunked["resp_body_size"] else {
        panic!("{chunked:?}")
    };
    assert!(
        (200_000..=200_000 + 101 * 7).contains(&size),
        "resp_body_size {size}"
    );
    assert_eq!(small["req_path"], Value::String("/small".into()));
    assert_eq!(small["resp_body"], Value::String("ok".into()));
    assert_eq!(small["resp_body_size"], Value::Int64(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_takes_longer_than_a_dns_timeout_still_gets_its_latency() {
    let port = free_port();
    let server = start_awkward_server(port);
    let Traced {
        store,
        registry,
        probe: p,
    } = trace_python(server.pid());

    // 11 s: longer than a resolver waits, well within what a slow endpoint takes.
    let out = Command::new(which("curl"))
        .args(["-s", "--http1.1", &format!("http://127.0.0.1:{port}/slow")])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"ok", "curl: {out:?}");
    let of_slow = |r: &Row| r["req_path"] == Value::String("/slow".into());
    let http = wait_for_rows(&store, "http_events", |r| r.iter().any(of_slow)).await;
    let metrics = metrics_text(&registry);
    p.stop().await;

    let slow: Vec<&Row> = http.iter().filter(|r| of_slow(r)).collect();
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert_eq!(slow[0]["resp_status"], Value::Int64(200), "{slow:?}");
    let Value::Int64(latency) = slow[0]["latency"] else {
        panic!("no latency: {slow:?}")
    };
    assert!(
        (11_000_000_000..20_000_000_000).contains(&latency),
        "latency {latency} ns"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "http_server_request_duration_seconds_count",
            &["http_response_status_code=\"200\""]
        ),
        1,
        "{metrics}"
    );
}

/// curl logging in to the awkward server on `port` with secrets in its header, query string and
/// form; the server answers a token.
fn curl_login(port: u16) {
    let out = Command::new(which("curl"))
        .args([
            "-s",
            "--http1.1",
            "-u",
            "ann:hunter2",
            "-H",
            "X-Api-Key: k-5e6f",
        ])
        .args(["-d", "user=ann&password=hunter2&remember=1"])
        .arg(format!(
            "http://127.0.0.1:{port}/login?next=/home&access_token=abc"
        ))
        .output()
        .unwrap();
    assert_eq!(
        out.stdout, br#"{"id":7,"refresh_token":"r-9f8e7d6c"}"#,
        "curl: {out:?}"
    );
}

/// The one `http_events` row `probe` makes of [`curl_login`] to `server`.
async fn login_row(server: &Server, port: u16, probe: (AssignedProbe, TracepointSpec)) -> Row {
    let Traced {
        store, probe: p, ..
    } = Traced::start(&probe, target(server.pid(), &python3().to_string_lossy()));
    curl_login(port);
    let http = wait_for_rows(&store, "http_events", |r| !r.is_empty()).await;
    p.stop().await;
    assert_eq!(http.len(), 1, "{http:?}");
    http.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_query_strings_form_and_json_bodies_and_headers_are_redacted_unless_turned_off()
{
    let port = free_port();
    let server = start_awkward_server(port);
    let probe = tracepoint(vec![Protocol::Http], "*/python3*");
    let row = &login_row(&server, port, probe.clone()).await;
    assert_eq!(
        text(row, "req_path"),
        "/login?next=/home&access_token=<redacted>"
    );
    assert_eq!(
        text(row, "req_body"),
        "user=ann&password=<redacted>&remember=1"
    );
    assert_eq!(
        text(row, "resp_body"),
        r#"{"id":7,"refresh_token":"<redacted>"}"#
    );
    assert!(
        text(row, "req_headers").contains(r#""Authorization":"<redacted>""#),
        "{row:?}"
    );
    assert!(
        text(row, "req_headers").contains(r#""X-Api-Key":"<redacted>""#),
        "{row:?}"
    );
    let secrets = [
        "hunter2",
        "access_token=abc",
        "r-9f8e7d6c",
        "YW5uOmh1bnRlcjI=",
        "k-5e6f",
    ];
    let everything = format!("{row:?}");
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret} in {everything}");
    }

    // spec.probe.redact: false keeps what was captured.
    let (mut assigned, mut spec) = probe;
    spec.probe.redact = Some(false);
    if let ProbeConfig::Tracepoint(s) = &mut assigned.config {
        s.probe.redact = Some(false);
    }
    let row = login_row(&server, port, (assigned, spec)).await;
    let everything = format!("{row:?}");
    for secret in secrets {
        assert!(everything.contains(secret), "{secret} not in {everything}");
    }
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// A server that peeks at each request's first byte before reading it (as servers sniffing for
/// TLS do: `recv(fd, buf, 1, MSG_PEEK)`), then reads and answers it; keep-alive. Prints "ready"
/// once it listens, and accepts once told on stdin (when it is traced: the accept is seen).
const PEEKING_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
sys.stdin.readline()
while True:
    c, _ = s.accept()
    while c.recv(1, socket.MSG_PEEK):
        if not c.recv(65536):
            break
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.close()
"#;

/// A peeked byte stays queued and the next read returns it again: it is not followed, or every
/// request after it would start with its first byte twice (`GGET`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_peeking_at_each_request_before_reading_it_gets_each_request_once() {
    let port = free_port();
    let mut server = start_python_server(&["-c", PEEKING_SERVER, &port.to_string()]);
    let mut go = server.child.stdin.take().unwrap();
    let Traced {
        store,
        registry,
        probe: p,
    } = trace_python(server.pid());
    std::io::Write::write_all(&mut go, b"go\n").unwrap();
    let paths = ["/first", "/second", "/third"];
    assert_eq!(curl(port, &paths), "okokok");
    let rows = wait_for_rows(&store, "http_events", |r| r.len() >= paths.len()).await;
    let stats = wait_for_rows(&store, "conn_stats", |r| !closed(r).is_empty()).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (text(r, "req_method"), text(r, "req_path")))
        .collect();
    assert_eq!(
        got,
        paths.map(|path| ("GET", path)),
        "{rows:?}\n{stats:?}\n{metrics}"
    );
    // The bytes received are the requests' own, once: what curl sends for each path.
    let closed = closed(&stats);
    let request_bytes: usize = paths
        .iter()
        .map(|path| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: curl/{}\r\nAccept: */*\r\n\r\n",
                curl_version()
            )
            .len()
        })
        .sum();
    assert_eq!(
        closed[0]["bytes_recv"],
        Value::Int64(request_bytes as i64),
        "{closed:?}"
    );
}

/// A UDP server that reads each datagram with MSG_TRUNC into a 12-byte buffer (a DNS header's
/// worth) and answers "ok"; prints "ready".
const TRUNCATING_UDP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(12, socket.MSG_TRUNC)
    s.sendto(b"ok", peer)
"#;

/// A datagram read with MSG_TRUNC: the syscall returns its whole length, longer than the buffer it
/// filled. Only the buffer is captured, never the memory past it, and the rest is counted as a
/// truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_read_with_msg_trunc_is_captured_only_as_far_as_its_buffer() {
    let port = free_port();
    let server = start_python_server(&["-c", TRUNCATING_UDP_SERVER, &port.to_string()]);
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Dns], "*/python3*"),
        target(server.pid(), &python3().to_string_lossy()),
    );
    // A DNS query of 29 bytes: the server's read fills 12 of them.
    let query =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x03abc\x00\x00\x01\x00\x01";
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The first query's read began before the tracing did (the server was waiting in it): the
    // second one's is traced.
    for _ in 0..2 {
        client.send_to(query, ("127.0.0.1", port)).unwrap();
        let mut answer = [0u8; 16];
        assert_eq!(client.recv(&mut answer).unwrap(), 2);
    }
    let truncated = |registry: &prometheus_client::registry::Registry| {
        metric_sum(
            &metrics_text(registry),
            "sonde_events_dropped_total",
            &["reason=\"truncated\""],
        )
    };
    for _ in 0..100 {
        if truncated(&registry) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = rows(&store, "conn_stats");
    p.stop().await;
    assert_eq!(truncated(&registry), 1, "{stats:?}");
}

/// The RED series of the last protocol Tracepoint's targets go [`GONE_TARGET_TTL`] after it is
/// removed, though its runtime (whose capture thread removed them until then) stopped with it;
/// until then they are still scraped. Tokio's clock is paused once the probe stopped and moved by
/// hand, so no one waits five minutes.
#[tokio::test]
async fn red_series_go_five_minutes_after_the_last_protocol_tracepoint_is_removed() {
    use sonde_agent::probes::protocols::metrics::GONE_TARGET_TTL;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_nginx, worker) = start_hello_nginx(dir.path(), port);
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Http], "*/nginx"),
        target(worker, "/usr/sbin/nginx"),
    );
    assert_eq!(curl(port, &["/gone"]), "hello\n");
    wait_for_rows(&store, "http_events", |r| !r.is_empty()).await;
    let series = |registry: &prometheus_client::registry::Registry| {
        metrics_text(registry)
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
            .count()
    };
    assert_eq!(series(&registry), 1, "{}", metrics_text(&registry));

    p.stop().await;
    tokio::time::pause();
    // `sleep` lets the paused runtime run what became due (the clock moves to its end).
    tokio::time::advance(GONE_TARGET_TTL - Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        series(&registry),
        1,
        "removed before a scrape could see its last requests"
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(series(&registry), 0, "{}", metrics_text(&registry));
}

// --- Python database applications (Debian's python3-psycopg2 and python3-pymysql) --------------

/// Debian's python3, which has the drivers `scripts/setup peers` installs with apt.
fn debian_python3() -> PathBuf {
    for module in ["psycopg2", "pymysql"] {
        let found = Command::new("/usr/bin/python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "/usr/bin/python3 lacks {module}: run `scripts/setup peers`"
        );
    }
    std::fs::canonicalize("/usr/bin/python3").unwrap()
}

/// A Python client (`script` run with `args`) waiting for a line on stdin before it connects.
fn python_app(script: &str, args: &[&str]) -> std::process::Child {
    Command::new(debian_python3())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Tracing of `protocols` in the python3 process `pid`, told to go once the probe is attached;
/// its printed lines once it exited successfully.
async fn traced_app(
    mut app: std::process::Child,
    protocols: Vec<Protocol>,
) -> (Traced, Vec<String>) {
    use std::io::{BufRead, BufReader, Write};
    let traced = Traced::start(
        &tracepoint(protocols, "*/python3*"),
        target(app.id(), &debian_python3().to_string_lossy()),
    );
    app.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let lines: Vec<String> = BufReader::new(app.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert!(app.wait().unwrap().success(), "{lines:?}");
    (traced, lines)
}

/// psycopg2 cancelling its own query from a timer, as an application's request timeout does.
const PSYCOPG2_CANCEL: &str = r#"
import sys, threading, psycopg2
sys.stdin.readline()
c = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="postgres", dbname="postgres")
k = c.cursor()
k.execute("SELECT pg_backend_pid()")
print(k.fetchone()[0], flush=True)
threading.Timer(0.3, c.cancel).start()
try:
    k.execute("SELECT pg_sleep(30)")
except psycopg2.errors.QueryCanceled as e:
    print(e.pgcode, flush=True)
c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_cancelling_its_postgres_query_gets_a_cancel_request_row_and_no_parse_error() {
    // Under /tmp, whatever TMPDIR says: the postgres user must be able to reach it.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let port = free_port();
    let data = init_postgres_with(dir.path(), PgLogins::Trust);
    let _postgres = start_postgres(dir.path(), &data, port, None);
    let app = python_app(PSYCOPG2_CANCEL, &[&port.to_string()]);
    let (traced, printed) = traced_app(app, vec![Protocol::Pgsql]).await;
    assert_eq!(printed.len(), 2, "{printed:?}");
    let backend = &printed[0];
    assert_eq!(printed[1], "57014", "the query was cancelled");

    let rows = wait_for_rows(&traced.store, "pgsql_events", |r| {
        r.iter().any(|row| text(row, "req_cmd") == "CancelRequest")
            && r.iter()
                .any(|row| text(row, "req") == "SELECT pg_sleep(30)")
    })
    .await;
    // Both connections closed: anything either would count is in.
    wait_for_rows(&traced.store, "conn_stats", |r| closed(r).len() >= 2).await;
    let metrics = metrics_text(&traced.registry);
    traced.probe.stop().await;
    let cancel = rows
        .iter()
        .find(|row| text(row, "req_cmd") == "CancelRequest")
        .unwrap_or_else(|| panic!("no CancelRequest row: {rows:?}"));
    assert_eq!(text(cancel, "req"), format!("pid={backend}"), "{cancel:?}");
    assert_eq!(cancel["latency"], Value::Null, "{cancel:?}");
    let sleep = rows
        .iter()
        .find(|row| text(row, "req") == "SELECT pg_sleep(30)")
        .unwrap();
    assert!(
        text(sleep, "resp").starts_with("ERROR 57014: canceling statement"),
        "{sleep:?}"
    );
    // The cancel's connection is understood, not a parse failure; and it is no RED series.
    assert_eq!(
        metric_sum(&metrics, "sonde_protocol_parse_errors_total", &[]),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "db_client_operation_duration_seconds_count",
            &["error_type=\"connection_closed\""]
        ),
        0,
        "{metrics}"
    );
}

/// PyMySQL loading a file of `argv[2]` lines with LOAD DATA LOCAL INFILE, then committing; prints
/// the rows loaded.
const PYMYSQL_LOAD: &str = r#"
import sys, tempfile, pymysql
lines = int(sys.argv[2])
f = tempfile.NamedTemporaryFile("w", suffix=".csv")
f.write("".join(f"{i},{'x' * 60}\n" for i in range(lines)))
f.flush()
sys.stdin.readline()
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="root", database="sonde", local_infile=True)
k = c.cursor()
k.execute("CREATE TABLE items (id INT, name VARCHAR(80))")
k.execute(f"LOAD DATA LOCAL INFILE '{f.name}' INTO TABLE items FIELDS TERMINATED BY ','")
print(k.rowcount, flush=True)
c.commit()
c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_loading_a_local_file_into_mariadb_gets_its_outcome_and_no_stray_commands() {
    // 100,000 lines (6.6 MB): over 256 packets, whose sequence ids wrap to 0, as a command's do.
    const LINES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = init_mariadb(dir.path());
    let _mariadb = start_mariadb_with(dir.path(), &data, port, &["--local-infile=1"]);
    let app = python_app(PYMYSQL_LOAD, &[&port.to_string(), &LINES.to_string()]);
    let (traced, printed) = traced_app(app, vec![Protocol::Mysql]).await;
    assert_eq!(printed, [LINES.to_string()]);

    let rows = wait_for_rows(&traced.store, "mysql_events", |r| {
        r.iter().any(|row| text(row, "req_cmd") == "COM_QUIT")
    })
    .await;
    traced.probe.stop().await;
    let cmds: Vec<(&str, &str)> = rows
        .iter()
        .map(|row| (text(row, "req_cmd"), text(row, "req_body")))
        .collect();
    let load = rows
        .iter()
        .find(|row| text(row, "req_body").starts_with("LOAD DATA LOCAL INFILE"))
        .unwrap_or_else(|| panic!("no LOAD DATA row: {cmds:?}"));
    assert_eq!(text(load, "resp_status"), "OK", "{load:?}");
    assert_eq!(
        text(load, "resp_body"),
        format!("Records: {LINES}  Deleted: 0  Skipped: 0  Warnings: 0"),
        "{load:?}"
    );
    // The file's content is none of the commands, and COMMIT has its own answer.
    assert_eq!(
        cmds.iter()
            .map(|(cmd, body)| if cmd == &"COM_QUERY" { *body } else { *cmd })
            .filter(|c| !c.starts_with("LOAD DATA"))
            .collect::<Vec<_>>(),
        [
            "COM_CONNECT",
            "SET AUTOCOMMIT = 0",
            "CREATE TABLE items (id INT, name VARCHAR(80))",
            "COMMIT",
            "COM_QUIT"
        ],
        "{cmds:?}"
    );
    let commit = rows
        .iter()
        .find(|row| text(row, "req_body") == "COMMIT")
        .unwrap();
    assert_eq!(text(commit, "resp_body"), "affected rows: 0", "{commit:?}");
}

/// A DNS server's UDP socket, traced while it runs, is told DNS by its first traced datagram, a
/// query without the port hint (the client's port is no DNS port): a query of a type the decoder
/// has no name for (SSHFP) is DNS too, or the socket is never traced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_server_whose_first_traced_query_has_an_unknown_type_still_gets_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dnsmasq = start_dnsmasq_with(
        dir.path(),
        std::net::Ipv4Addr::LOCALHOST,
        port,
        &["--dns-rr=web.sonde.test,44,010100112233445566778899aabbccddeeff00112233"],
    );
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Dns], "*/dnsmasq"),
        target(dnsmasq.pid(), "/usr/sbin/dnsmasq"),
    );
    assert_eq!(
        dig(port, &["web.sonde.test", "SSHFP"]).unwrap_or_default(),
        "1 1 00112233445566778899AABBCCDDEEFF00112233\n"
    );
    assert_eq!(
        dig(port, &["web.sonde.test", "A"]).unwrap_or_default(),
        "10.0.0.7\n"
    );

    let dns = wait_for_rows(&store, "dns_events", |r| r.len() >= 2).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    let got: Vec<[&str; 4]> = dns
        .iter()
        .map(|r| {
            [
                text(r, "query_name"),
                text(r, "query_type"),
                text(r, "rcode"),
                text(r, "trace_role"),
            ]
        })
        .collect();
    assert_eq!(
        got,
        [
            ["web.sonde.test", "SSHFP", "NOERROR", "server"],
            ["web.sonde.test", "A", "NOERROR", "server"],
        ],
        "{dns:?}\n{metrics}"
    );
    assert!(
        text(&dns[0], "resp_body").contains(r#""type":"SSHFP""#),
        "{dns:?}"
    );
}

/// A DNS client querying 127.0.0.1:`argv[1]` in `argv[2]` rounds, each on a fresh UDP socket (as
/// glibc and dig do), for A records of names under sonde.test: by sendto on an unconnected socket
/// (its first send binds the socket and looks up the route), by connect then send, and by connect
/// then one sendmmsg of two queries (glibc's A and AAAA): the first answer may come while the
/// second query is being sent. Prints the names it got answers for.
const FRESH_SOCKET_DNS_CLIENT: &str = r#"
import ctypes, socket, struct, sys

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]

class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

libc = ctypes.CDLL(None, use_errno=True)

def query(qid, name):
    labels = name.encode().split(b".")
    wire = b"".join(bytes([len(l)]) + l for l in labels) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack(">HH", 1, 1)

port, rounds = int(sys.argv[1]), int(sys.argv[2])
answered = []
for i in range(rounds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    mode = i % 3
    names = ["q%d.sonde.test" % i] if mode < 2 else ["q%d.sonde.test" % i, "r%d.sonde.test" % i]
    queries = [query(2 * i + k, n) for k, n in enumerate(names)]
    if mode == 0:
        s.sendto(queries[0], ("127.0.0.1", port))
    elif mode == 1:
        s.connect(("127.0.0.1", port))
        s.send(queries[0])
    else:
        s.connect(("127.0.0.1", port))
        bufs = [ctypes.create_string_buffer(q, len(q)) for q in queries]
        iovs = [iovec(ctypes.cast(b, ctypes.c_void_p), len(q)) for b, q in zip(bufs, queries)]
        msgs = (mmsghdr * 2)()
        for k in range(2):
            msgs[k].hdr.iov = ctypes.pointer(iovs[k])
            msgs[k].hdr.iovlen = 1
        sent = libc.sendmmsg(s.fileno(), msgs, 2, 0)
        assert sent == 2, ("sendmmsg", sent, ctypes.get_errno())
    for _ in names:
        s.recv(512)
    answered += names
    s.close()
print(" ".join(answered))
"#;

/// A DNS client and its server on loopback, both traced: for every query the client's latency
/// (request sent → answer read) is at least the server's (request read → answer sent). On loopback
/// a datagram reaches its peer inside the send, and with both on one CPU (pinned here, as busy pods
/// of one node are) the woken peer may run before the send returns: sent data stamped at the send's
/// exit made the client's latency of the first query of a sendmmsg shorter than the server's (14
/// or 15 of the 80 queries before sends were stamped at their entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_client_latency_is_never_shorter_than_its_servers_for_the_same_query() {
    const ROUNDS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cgroup = TestCgroup::new("dns-timing");
    let (
        Traced {
            store, probe: p, ..
        },
        _pause,
    ) = Traced::in_pod(&cgroup, "dns-timing", vec![Protocol::Dns]);
    let _dnsmasq = Server {
        child: Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(which("taskset"))
            .args(["-c", "0"])
            .arg(which("dnsmasq"))
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--listen-address=127.0.0.1",
                "--address=/sonde.test/10.0.0.7",
            ])
            .arg(format!("--port={port}"))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .arg(format!(
                "--log-facility={}",
                dir.path().join("dnsmasq.log").display()
            ))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting dnsmasq"),
        signal: nix::sys::signal::Signal::SIGTERM,
    };
    wait_until("dnsmasq", || {
        dig(port, &["web.sonde.test", "A"]).unwrap_or_default() == "10.0.0.7\n"
    });
    let client = Command::new("/bin/sh")
        .args(cgroup.enter_and_exec())
        .arg(which("taskset"))
        .args(["-c", "0"])
        .arg(python3())
        .args(["-c", FRESH_SOCKET_DNS_CLIENT])
        .args([port.to_string(), ROUNDS.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running the DNS client");
    let stdout = String::from_utf8_lossy(&client.stdout);
    let names: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(names.len(), ROUNDS + ROUNDS / 3, "{client:?}");

    let ours = |r: &Row| names.contains(&text(r, "query_name"));
    let dns = wait_for_rows(&store, "dns_events", |rows| {
        rows.iter().filter(|r| ours(r)).count() >= 2 * names.len()
    })
    .await;
    p.stop().await;
    let latency = |name: &str, role: &str| {
        dns.iter()
            .find(|r| text(r, "query_name") == name && text(r, "trace_role") == role)
            .and_then(|r| match r.get("latency") {
                Some(Value::Int64(ns)) => Some(*ns),
                _ => None,
            })
    };
    let mut shorter = Vec::new();
    for name in &names {
        let (Some(client), Some(server)) = (latency(name, "client"), latency(name, "server"))
        else {
            panic!("no client and server latency for {name}: {dns:?}");
        };
        if client < server {
            shorter.push(format!("{name}: client {client} ns < server {server} ns"));
        }
    }
    assert!(
        shorter.is_empty(),
        "{} of {} queries have a client latency shorter than the server's:\n{}",
        shorter.len(),
        names.len(),
        shorter.join("\n")
    );
}
