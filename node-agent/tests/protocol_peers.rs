//! Protocol capture against real servers from Debian packages on loopback: dnsmasq + dig (UDP and
//! TCP), redis-server + redis-cli (and a raw pipelining / pub-sub client), nginx serving files by
//! sendfile, PostgreSQL 15 + psql (simple protocol) and pg8000 (extended protocol), MariaDB + the
//! mariadb client (COM_QUERY) and mysql-connector-python (binary prepared statements), a Go
//! net/http service with its Go client and the pure-Go resolver (built from `fixtures/protocols`
//! with /usr/local/go), a Node.js HTTP server, and node-postgres and mysql2 in a Node.js
//! application (reads of 64 KiB, larger than what is captured of a syscall). The two Python drivers
//! come from the venv that `scripts/setup peers` makes, the Node.js ones from its npm cache (no
//! Debian package speaks those protocols). Needs root (eBPF) and the peers; fails loudly without
//! them.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::peers::*;
use common::*;
use nix::sys::signal::Signal;
use prometheus_client::registry::Registry;
use sonde_agent::tables::{Store, Value};
use sonde_api::Protocol;

/// Projection of rows onto some columns, for exact comparisons.
fn pick(rows: &[Row], columns: &[&str]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| match r.get(*c) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) => "null".to_owned(),
                    Some(Value::Int64(i)) => i.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect()
}

/// No column of any row holds `secret`.
fn assert_no_secret(rows: &[Row], secret: &str) {
    for r in rows {
        for (column, value) in r {
            assert!(!format!("{value:?}").contains(secret), "{column}: {r:?}");
        }
    }
}

// --- DNS: dnsmasq + dig ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_queries_to_traced_dnsmasq_over_udp_and_tcp_become_exact_dns_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dnsmasq = start_dnsmasq(dir.path(), port);
    // Tracing starts after dnsmasq is up: its UDP socket is unknown to the kernel side, so the
    // first traced datagram is also the one that classifies it.
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Dns], "*/dnsmasq"),
        target(dnsmasq.pid(), "/usr/sbin/dnsmasq"),
    );

    assert_eq!(dig(port, &["web.sonde.test", "A"]).unwrap(), "10.0.0.7\n");
    assert_eq!(
        dig(port, &["www.sonde.test", "A"]).unwrap(),
        "web.sonde.test.\n10.0.0.7\n"
    );
    assert_eq!(dig(port, &["web.sonde.test", "AAAA"]).unwrap(), "fd00::7\n");
    assert_eq!(
        dig(port, &["+tcp", "blocked.sonde.test", "A"]).unwrap(),
        "10.9.9.9\n"
    );

    let dns = wait_for_rows(&store, "dns_events", |r| r.len() >= 4).await;
    let stats = closed(&wait_for_rows(&store, "conn_stats", |r| !closed(r).is_empty()).await);
    let metrics = metrics_text(&registry);
    p.stop().await;

    let got = pick(
        &dns,
        &[
            "query_name",
            "query_type",
            "rcode",
            "resp_body",
            "trace_role",
        ],
    );
    let answer = |name: &str, ty: &str, data: &str| {
        format!("{{\"name\":\"{name}\",\"type\":\"{ty}\",\"data\":\"{data}\"}}")
    };
    let row = |name: &str, ty: &str, answers: Vec<String>| {
        vec![
            name.to_owned(),
            ty.to_owned(),
            "NOERROR".to_owned(),
            format!("{{\"answers\":[{}]}}", answers.join(",")),
            "server".to_owned(),
        ]
    };
    assert_eq!(
        got,
        vec![
            row(
                "web.sonde.test",
                "A",
                vec![answer("web.sonde.test", "A", "10.0.0.7")]
            ),
            row(
                "www.sonde.test",
                "A",
                vec![
                    answer("www.sonde.test", "CNAME", "web.sonde.test"),
                    answer("web.sonde.test", "A", "10.0.0.7")
                ]
            ),
            row(
                "web.sonde.test",
                "AAAA",
                vec![answer("web.sonde.test", "AAAA", "fd00::7")]
            ),
            row(
                "blocked.sonde.test",
                "A",
                vec![answer("blocked.sonde.test", "A", "10.9.9.9")]
            ),
        ],
        "{dns:?}"
    );
    for r in &dns {
        assert_eq!(r["pid"], Value::Int64(i64::from(dnsmasq.pid())));
        assert_eq!(r["local_port"], Value::Int64(i64::from(port)));
    }
    // The UDP rows carry each datagram's peer. (dnsmasq accepts TCP with a null address and closes
    // the connection before user space can ask the socket, so the TCP row's peer may be unknown.)
    for r in &dns[..3] {
        assert_eq!(text(r, "remote_addr"), "127.0.0.1", "{r:?}");
    }
    // Each dig uses a new source port: the rows carry each datagram's own peer.
    let peers: std::collections::HashSet<String> = pick(&dns[..3], &["remote_port"])
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(peers.len(), 3, "{dns:?}");
    assert_eq!(
        metric_sum(&metrics, "dns_lookup_duration_seconds_count", &[]),
        4,
        "{metrics}"
    );
    // The TCP connection closed (the UDP socket stays open): one conn_stats row, with the bytes of
    // the length-prefixed query.
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0]["local_port"], Value::Int64(i64::from(port)));
    assert_eq!(stats[0]["trace_role"], Value::String("server".into()));
    // The only loss the traffic explains: the TCP connection's peer, when dnsmasq closed it before
    // the agent could look (counted, never silent).
    let unaddressed = stats
        .iter()
        .filter(|r| text(r, "remote_addr").is_empty())
        .count() as u64;
    assert_eq!(
        metric_sum(&metrics, "sonde_events_dropped_total", &[]),
        unaddressed,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "sonde_events_dropped_total",
            &["reason=\"addresses_unknown\""]
        ),
        unaddressed,
        "{metrics}"
    );
}

/// The client rows of an A and an AAAA lookup of web.sonde.test (dnsmasq's records) in the columns
/// query_name, query_type, rcode, resp_body, trace_role, then `more`.
fn web_lookup_rows(more: &[String]) -> Vec<Vec<String>> {
    [("A", "10.0.0.7"), ("AAAA", "fd00::7")]
        .into_iter()
        .map(|(ty, data)| {
            let mut row = vec![
                "web.sonde.test".to_owned(),
                ty.to_owned(),
                "NOERROR".to_owned(),
                format!(
                    "{{\"answers\":[{{\"name\":\"web.sonde.test\",\"type\":\"{ty}\",\"data\":\"{data}\"}}]}}"
                ),
                "client".to_owned(),
            ];
            row.extend_from_slice(more);
            row
        })
        .collect()
}

/// The client lookup rows of `dns` in the columns of [`web_lookup_rows`] (`more` named), sorted.
fn lookup_rows_of(dns: &[Row], more: &[&str]) -> Vec<Vec<String>> {
    let mut columns = vec![
        "query_name",
        "query_type",
        "rcode",
        "resp_body",
        "trace_role",
    ];
    columns.extend_from_slice(more);
    let mut got = pick(dns, &columns);
    got.sort();
    got
}

/// A loopback address whose DNS port is free for UDP and TCP: /etc/resolv.conf can only name port
/// 53, and parallel runs of the test (or a local resolver on 127.0.0.1) must not collide.
fn free_dns_address() -> Ipv4Addr {
    let start = (std::process::id() % 250) as u8;
    for i in 0..250u8 {
        let addr = Ipv4Addr::new(127, 0, 53, 1 + start.wrapping_add(i) % 250);
        let udp = std::net::UdpSocket::bind((addr, 53)).is_ok();
        if udp && std::net::TcpListener::bind((addr, 53)).is_ok() {
            return addr;
        }
    }
    panic!("port 53 is taken on every address 127.0.53.1-250");
}

/// glibc's resolver sends the A and AAAA queries of one lookup with ONE sendmmsg on a connected
/// UDP socket (checked with `strace -f -e trace=sendmmsg,recvfrom getent ahosts web.sonde.test`:
/// one sendmmsg of 2 messages, then one recvfrom per answer). getent runs in a private mount
/// namespace whose /etc/resolv.conf names a dnsmasq on a loopback address of its own, so the
/// host's resolver is untouched; only the client (getent's cgroup) is traced.
///
/// getent exits before the agent can look at its connected UDP socket: the transport must come
/// from the bytes' syscall (sendmmsg), not from the fd, or the DNS parser would expect TCP framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getent_queries_sent_with_one_sendmmsg_become_exact_client_dns_events() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_dns_address();
    let _dnsmasq = start_dnsmasq_at(dir.path(), addr, 53);
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {addr}\noptions timeout:5 attempts:1\n"),
    )
    .unwrap();
    let cgroup = TestCgroup::new("resolver");
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pause,
    ) = Traced::in_pod(&cgroup, "resolver", vec![Protocol::Dns]);

    let client = Command::new("/bin/sh")
        .args(cgroup.enter_and_exec())
        .arg(which("unshare"))
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/resolv.conf && exec {} ahosts web.sonde.test",
            resolv.display(),
            which("getent").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting getent");
    // sh, unshare and sh again exec: getent keeps this pid.
    let pid = client.id();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let addresses: std::collections::BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(addresses, ["10.0.0.7", "fd00::7"].into(), "{stdout}");

    let dns = wait_for_rows(&store, "dns_events", |r| r.len() >= 2).await;
    let stats = rows(&store, "conn_stats");
    let metrics = metrics_text(&registry);
    p.stop().await;
    assert_eq!(
        lookup_rows_of(&dns, &["remote_addr", "remote_port", "pid"]),
        web_lookup_rows(&[addr.to_string(), "53".to_owned(), pid.to_string()]),
        "{dns:?}\nconn_stats: {stats:?}\n{metrics}"
    );
    // The socket's local address, which getent closed before the agent could look at it: read by
    // the kernel side when the socket connected. Both queries went out on the one socket, from
    // the source address this host picks for the server's address.
    let source = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    source.connect((addr, 53)).unwrap();
    let source = source.local_addr().unwrap().ip().to_string();
    let mut locals = pick(&dns, &["local_addr", "local_port"]);
    locals.dedup();
    let [local] = locals.as_slice() else {
        panic!(
            "the two queries name {} local addresses: {dns:?}",
            locals.len()
        )
    };
    assert_eq!(local[0], source, "{dns:?}");
    assert!(local[1].parse::<u16>().is_ok_and(|p| p != 0), "{dns:?}");
    assert_eq!(
        metric_sum(&metrics, "dns_lookup_duration_seconds_count", &[]),
        2,
        "{metrics}"
    );
}

/// sendmmsg/recvmmsg whose messages are each spread over two iovecs (header, then the rest): both
/// parts of every datagram are captured, or the 12-byte header alone would be no DNS message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_datagrams_in_several_iovecs_per_mmsg_message_become_exact_client_dns_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _dnsmasq = start_dnsmasq(dir.path(), port);
    let cgroup = TestCgroup::new("mmsg");
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pause,
    ) = Traced::in_pod(&cgroup, "mmsg", vec![Protocol::Dns]);

    let out = run_python_in(
        &cgroup,
        dir.path(),
        "dns_mmsg_iovecs.py",
        include_str!("fixtures/protocols/dns_mmsg_iovecs.py"),
        port,
        &[],
    );
    assert_eq!(
        out.lines().map(|l| &l[..6]).collect::<Vec<_>>(),
        ["0x5101", "0x5102"],
        "{out}"
    );

    let dns = wait_for_rows(&store, "dns_events", |r| r.len() >= 2).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    assert_eq!(
        lookup_rows_of(&dns, &["remote_port"]),
        web_lookup_rows(&[port.to_string()]),
        "{dns:?}\n{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "sonde_events_dropped_total",
            &["reason=\"truncated\""]
        ),
        0,
        "{metrics}"
    );
}

// --- Go: a net/http server and client, and the pure-Go resolver ----------------------------------

/// The Go peer (`fixtures/protocols/goweb`) built into `dir` with the installed Go.
/// The Go program of `tests/fixtures/protocols/<name>`, built into `dir` (its modules were fetched by
/// `scripts/setup peers`).
fn build_go(name: &str, dir: &Path) -> PathBuf {
    let binary = dir.join(name);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/protocols")
        .join(name);
    let out = Command::new("/usr/local/go/bin/go")
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(fixture)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("running /usr/local/go/bin/go (installed by scripts/setup)");
    assert!(out.status.success(), "building {name}: {out:?}");
    binary
}

/// `program` with `args` and `env` run to its end in pod `app` of a new cgroup `name`, traced for
/// `protocols` from before it starts; returns the tracing, what keeps the pod (its cgroup and
/// pause process) and the program's output.
fn run_in_traced_pod(
    name: &str,
    protocols: Vec<Protocol>,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Traced, (TestCgroup, Server), std::process::Output) {
    let cgroup = TestCgroup::new(name);
    let (traced, pause) = Traced::in_pod(&cgroup, "app", protocols);
    let out = run_ok(
        Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(program)
            .args(args)
            .envs(env.iter().copied()),
    );
    (traced, (cgroup, pause), out)
}

/// A Go service and a Go client of it, both in one traced cgroup: the server's and the client's
/// side of each exchange become rows whose addresses match each other, and each lookup of the
/// pure-Go resolver becomes client `dns_events` rows with their local address — read by the kernel
/// side when the socket connected, since the resolver closes each query's socket as soon as its
/// answer is in (a look at the fd afterwards, the only way before, found it closed for some).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_http_service_and_its_go_client_and_resolver_become_exact_events_with_both_ends_addressed()
 {
    const LOOKUPS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let goweb = build_go("goweb", dir.path());
    let (port, dns_port) = two_free_ports();
    let _dnsmasq = start_dnsmasq(dir.path(), dns_port);
    let cgroup = TestCgroup::new("goweb");
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pause,
    ) = Traced::in_pod(&cgroup, "goweb", vec![Protocol::Http, Protocol::Dns]);
    let server = Server {
        child: Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(&goweb)
            .args(["serve", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting goweb serve"),
        signal: Signal::SIGTERM,
    };
    wait_until("goweb serve", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let out = Command::new("/bin/sh")
        .args(cgroup.enter_and_exec())
        .arg(&goweb)
        .args([
            "client",
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{dns_port}"),
            "web.sonde.test",
            &LOOKUPS.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running goweb client");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        LOOKUPS,
        "{out:?}"
    );

    // The readiness probes above were connections too: only the client's keep-alive one counts.
    let http = wait_for_rows(&store, "http_events", |r| r.len() >= 8).await;
    let dns = wait_for_rows(&store, "dns_events", |r| r.len() >= 2 * LOOKUPS).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    drop(server);

    let exchanges = [
        ("GET", "/hello?n=0", "200", "hello 0"),
        ("GET", "/hello?n=1", "200", "hello 1"),
        ("GET", "/hello?n=2", "200", "hello 2"),
        ("POST", "/echo", "201", "{\"a\":1}"),
    ];
    let columns = [
        "trace_role",
        "req_method",
        "req_path",
        "resp_status",
        "resp_body",
    ];
    for role in ["client", "server"] {
        let mine: Vec<Row> = http
            .iter()
            .filter(|r| text(r, "trace_role") == role)
            .cloned()
            .collect();
        let mut got = pick(&mine, &columns);
        got.sort();
        let want: Vec<Vec<String>> = exchanges
            .iter()
            .map(|(method, path, status, body)| {
                [role, method, path, status, body]
                    .map(str::to_owned)
                    .to_vec()
            })
            .collect();
        assert_eq!(got, want, "{http:?}");
    }
    // One connection, seen from both ends: the client's local port is the server's remote port.
    let ends = |role: &str| {
        let mut ends = pick(
            &http
                .iter()
                .filter(|r| text(r, "trace_role") == role)
                .cloned()
                .collect::<Vec<_>>(),
            &["local_addr", "local_port", "remote_addr", "remote_port"],
        );
        ends.dedup();
        ends
    };
    let (client, server) = (ends("client"), ends("server"));
    let [client] = client.as_slice() else {
        panic!("client rows on {} connections: {http:?}", client.len())
    };
    assert_eq!(
        client[2..],
        ["127.0.0.1".to_owned(), port.to_string()],
        "{http:?}"
    );
    let server_end = vec![
        "127.0.0.1".to_owned(),
        port.to_string(),
        client[0].clone(),
        client[1].clone(),
    ];
    assert_eq!(server, [server_end], "{http:?}");

    let got = lookup_rows_of(&dns, &["remote_addr", "remote_port", "local_addr"]);
    let mut want: Vec<Vec<String>> = (0..LOOKUPS)
        .flat_map(|_| {
            web_lookup_rows(&[
                "127.0.0.1".to_owned(),
                dns_port.to_string(),
                "127.0.0.1".to_owned(),
            ])
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "{dns:?}");
    for row in pick(&dns, &["local_port"]) {
        assert!(row[0].parse::<u16>().is_ok_and(|p| p != 0), "{dns:?}");
    }
    assert_eq!(
        metric_sum(&metrics, "dns_lookup_duration_seconds_count", &[]),
        2 * LOOKUPS as u64,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "http_server_request_duration_seconds_count", &[]),
        4,
        "{metrics}"
    );
}

// --- Node.js: a server that accepts without asking for the peer's address ------------------------

/// `tests/fixtures/protocols/node_http.js` on 127.0.0.1:`port` inside `cgroup`, listening.
fn start_node_http(cgroup: &TestCgroup, port: u16) -> Server {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocols/node_http.js");
    let server = Server {
        child: Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(which("node"))
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting node (scripts/setup peers)"),
        signal: Signal::SIGTERM,
    };
    wait_until("node listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}

/// Node's accept4 passes no address buffer; the kernel side reads the peer from the socket, so
/// each row names its client even though every client (curl) has closed its connection long
/// before the agent could look at the fd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_server_that_accepts_without_asking_the_peer_still_names_each_client() {
    let port = free_port();
    let cgroup = TestCgroup::new("node");
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pause,
    ) = Traced::in_pod(&cgroup, "node", vec![Protocol::Http]);
    let _server = start_node_http(&cgroup, port);
    // The readiness probe was a connection too: only rows of these requests count.
    let mut want = Vec::new();
    for i in 0..3 {
        let out = run_ok(
            Command::new(which("curl"))
                .args(["-sS", "-o", "/dev/null", "-w", "%{local_port}"])
                .arg(format!("http://127.0.0.1:{port}/n/{i}")),
        );
        let client_port = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        want.push(vec![
            format!("/n/{i}"),
            "200".to_owned(),
            format!("node /n/{i}"),
            "127.0.0.1".to_owned(),
            client_port,
            "127.0.0.1".to_owned(),
            port.to_string(),
            "server".to_owned(),
        ]);
    }
    let http = wait_for_rows(&store, "http_events", |r| r.len() >= 3).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    let mut got = pick(
        &http,
        &[
            "req_path",
            "resp_status",
            "resp_body",
            "remote_addr",
            "remote_port",
            "local_addr",
            "local_port",
            "trace_role",
        ],
    );
    got.sort();
    assert_eq!(got, want, "{http:?}");
    // Node read its modules, and polls eventfds and pipes, from its first syscall on: the kernel
    // told all of them from sockets, and every socket was seen opened — nothing to look up.
    assert_eq!(
        metric_sum(&metrics, "sonde_protocol_fd_lookups_total", &[]),
        0,
        "{metrics}"
    );
}

/// Node reads 64 KiB per syscall: a pipeline of 600 requests (~30 KB) arrives in one read, of
/// which the agent captures the first 12 KiB and the last 512 bytes. The responses to the requests
/// in between come before those of the tail's: no response may be given to another request. The
/// tail's are paired from the end once the connection is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_lost_from_a_pipeline_a_node_server_reads_never_get_another_response() {
    let port = free_port();
    let cgroup = TestCgroup::new("node-pipeline");
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pause,
    ) = Traced::in_pod(&cgroup, "node", vec![Protocol::Http]);
    let _server = start_node_http(&cgroup, port);
    const REQUESTS: usize = 600;
    let pipeline: String = (0..REQUESTS)
        .map(|i| format!("GET /n/{i:04} HTTP/1.1\r\nHost: x\r\nUser-Agent: pipeline\r\n\r\n"))
        .collect();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(pipeline.as_bytes()).unwrap();
    read_until(&mut client, |b| {
        b.windows(7).filter(|w| w == b"node /n").count() == REQUESTS
    });
    // Open and quiet: two ticks later the tail's requests take the last responses.
    let http = wait_for_rows(&store, "http_events", |r| {
        r.iter().any(|row| text(row, "req_path") == "/n/0599")
    })
    .await;
    drop(client);
    let metrics = metrics_after_truncations(&registry).await;
    p.stop().await;
    let mut answered = 0;
    for row in &http {
        if row.get("resp_status") == Some(&Value::Int64(200)) {
            let path = text(row, "req_path");
            assert_eq!(text(row, "resp_body"), format!("node {path}"), "{path}");
            answered += 1;
        }
    }
    // The ~230 whole requests of the captured 12 KiB at least.
    assert!(
        answered >= 200,
        "{answered} answered of {} rows\n{metrics}",
        http.len()
    );
}

// --- Redis: redis-server + redis-cli --------------------------------------------------------------

fn start_redis(dir: &std::path::Path, port: u16) -> Server {
    let child = Command::new(which("redis-server"))
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    let server = Server {
        child,
        signal: Signal::SIGTERM,
    };
    wait_until("redis-server", || {
        redis_cli(port, &["PING"]).is_some_and(|o| o == "PONG\n")
    });
    server
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new(which("redis-cli"))
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads from `stream` until `done` holds for everything read so far.
fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = stream.read(&mut buf).expect("reading from the server");
        assert!(
            n > 0,
            "server closed early; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_pipeline_and_pubsub_on_traced_redis_become_exact_redis_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = start_redis(dir.path(), port);
    let Traced {
        store, probe: p, ..
    } = Traced::start(
        &tracepoint(vec![Protocol::Redis], "*/redis-server"),
        target(redis.pid(), "/usr/bin/redis-server"),
    );

    assert_eq!(
        redis_cli(port, &["SET", "greeting", "hello"]).unwrap(),
        "OK\n"
    );
    assert_eq!(redis_cli(port, &["GET", "greeting"]).unwrap(), "hello\n");
    assert_eq!(
        redis_cli(port, &["RPUSH", "list", "a", "b"]).unwrap(),
        "2\n"
    );
    // A pipeline: three commands in one write, three replies.
    let mut pipe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    pipe.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$4\r\nINCR\r\n$1\r\na\r\n*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$4\r\nnone\r\n")
        .unwrap();
    let replies = read_until(&mut pipe, |b| b.ends_with(b"$1\r\n2\r\n$-1\r\n"));
    assert_eq!(replies, b"+OK\r\n:2\r\n*2\r\n$1\r\n2\r\n$-1\r\n");
    drop(pipe);
    // Pub/sub: subscribed (confirmation read) before the publish, so the push is certain.
    let mut sub = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sub.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
        .unwrap();
    read_until(&mut sub, |b| b.ends_with(b":1\r\n"));
    assert_eq!(
        redis_cli(port, &["PUBLISH", "news", "rust 2026"]).unwrap(),
        "1\n"
    );
    read_until(&mut sub, |b| b.ends_with(b"rust 2026\r\n"));
    drop(sub);
    // A value of 1,000,000 bytes set and read back: the server reads and writes it in syscalls
    // larger than their capture, the value's closing CRLF among the bytes not captured.
    let value = "v".repeat(1_000_000);
    let mut big = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$1000000\r\n{value}\r\n");
    big.write_all(set.as_bytes()).unwrap();
    read_until(&mut big, |b| b.ends_with(b"+OK\r\n"));
    big.write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n").unwrap();
    let reply = read_until(&mut big, |b| b.len() >= 1_000_012);
    assert_eq!(reply, format!("$1000000\r\n{value}\r\n").as_bytes());
    big.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    read_until(&mut big, |b| b.ends_with(b"+PONG\r\n"));
    drop(big);

    let row = |cmd: &str, args: &str, resp: &str| {
        vec![
            cmd.to_owned(),
            args.to_owned(),
            resp.to_owned(),
            "server".to_owned(),
        ]
    };
    let mut want_rows = vec![
        row("SET", "[\"greeting\",\"hello\"]", "OK"),
        row("GET", "[\"greeting\"]", "hello"),
        row("RPUSH", "[\"list\",\"a\",\"b\"]", "2"),
        row("SET", "[\"a\",\"1\"]", "OK"),
        row("INCR", "[\"a\"]", "2"),
        row("MGET", "[\"a\",\"none\"]", "[\"2\",null]"),
        row("SUBSCRIBE", "[\"news\"]", "[\"subscribe\",\"news\",1]"),
        row("PUBLISH", "[\"news\",\"rust 2026\"]", "1"),
        row("PUSH PUB", "", "[\"message\",\"news\",\"rust 2026\"]"),
        // Values are kept up to the body limit (512 bytes).
        row("SET", &format!("[\"big\",\"{}\"]", &value[..512]), "OK"),
        row("GET", "[\"big\"]", &value[..512]),
        row("PING", "[]", "PONG"),
    ];
    want_rows.sort();
    let redis_rows = wait_for_rows(&store, "redis_events", |r| r.len() >= want_rows.len()).await;
    p.stop().await;
    let mut got = pick(&redis_rows, &["req_cmd", "req_args", "resp", "trace_role"]);
    got.sort();
    assert_eq!(got, want_rows, "{redis_rows:?}");
}

/// redis-server reads a long pipeline as much at a time as its query buffer holds, more than is
/// captured of a syscall: the commands in the middle of such reads are never seen, and their
/// replies come before those of the commands seen next. No reply may be paired with another
/// command: those seen after a loss are paired from the end once the connection is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_redis_reads_beyond_the_capture_never_pairs_a_reply_with_another_command() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = start_redis(dir.path(), port);
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Redis], "*/redis-server"),
        target(redis.pid(), "/usr/bin/redis-server"),
    );

    const KEYS: usize = 3000;
    let command = |words: &[&str]| {
        let mut c = format!("*{}\r\n", words.len());
        for w in words {
            c.push_str(&format!("${}\r\n{w}\r\n", w.len()));
        }
        c
    };
    let mut pipe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let sets: String = (0..KEYS)
        .map(|i| command(&["SET", &format!("k{i:04}"), &format!("v{i:04}")]))
        .collect();
    pipe.write_all(sets.as_bytes()).unwrap();
    read_until(&mut pipe, |b| b.len() == KEYS * b"+OK\r\n".len());
    let gets: String = (0..KEYS)
        .map(|i| command(&["GET", &format!("k{i:04}")]))
        .collect();
    pipe.write_all(gets.as_bytes()).unwrap();
    read_until(&mut pipe, |b| b.len() == KEYS * b"$5\r\nv0000\r\n".len());
    pipe.write_all(command(&["PING"]).as_bytes()).unwrap();
    read_until(&mut pipe, |b| b == b"+PONG\r\n");
    // Two quiet ticks (a second apart) make the waiting commands' last replies theirs.
    let rows = wait_for_rows(&store, "redis_events", |r| {
        r.iter().any(|row| text(row, "req_cmd") == "PING")
    })
    .await;
    drop(pipe);
    let metrics = metrics_after_truncations(&registry).await;
    p.stop().await;

    let (mut sets, mut gets) = (0, 0);
    for row in &rows {
        let resp = text(row, "resp");
        match text(row, "req_cmd") {
            "GET" if !resp.is_empty() => {
                let args = text(row, "req_args");
                assert_eq!(resp[1..], args[3..7], "{args} answered {resp}");
                gets += 1;
            }
            "SET" if !resp.is_empty() => {
                assert_eq!(resp, "OK");
                sets += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        rows.iter()
            .filter(|r| text(r, "req_cmd") == "PING")
            .map(|r| text(r, "resp"))
            .collect::<Vec<_>>(),
        ["PONG"]
    );
    // Paired up to the first loss at least: a read's captured 12 KiB holds ~330 SETs, ~510 GETs.
    assert!(
        sets >= 256 && gets >= 256,
        "{sets} SET, {gets} GET answered of {} rows\n{metrics}",
        rows.len()
    );
}

// --- Periodic conn_stats: a keep-alive connection seen while it is open ---------------------------

/// The conn_stats rows of the connection from local port `client_port`, as (conn_close, bytes_sent,
/// bytes_recv, trace_role, protocol).
fn stats_of(stats: &[Row], client_port: u16) -> Vec<Vec<String>> {
    let ours: Vec<Row> = stats
        .iter()
        .filter(|r| r["remote_port"] == Value::Int64(i64::from(client_port)))
        .cloned()
        .collect();
    pick(
        &ours,
        &[
            "conn_close",
            "bytes_sent",
            "bytes_recv",
            "trace_role",
            "protocol",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_shows_periodic_conn_stats_with_exact_cumulative_bytes_before_it_closes()
 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = start_redis(dir.path(), port);
    let store = Store::default();
    let mut registry = Registry::default();
    let every = Duration::from_secs(1);
    let ctx = context_with_conn_stats_every(&store, &mut registry, every);
    let p = start_probe_in(
        &ctx,
        &tracepoint(vec![Protocol::Redis], "*/redis-server"),
        target(redis.pid(), "/usr/bin/redis-server"),
    );
    let row = |close: &str, sent: u64, recv: u64| {
        [
            close,
            &sent.to_string(),
            &recv.to_string(),
            "server",
            "redis",
        ]
        .map(str::to_owned)
    };

    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = conn.local_addr().unwrap().port();
    let ping = b"*1\r\n$4\r\nPING\r\n";
    conn.write_all(ping).unwrap();
    assert_eq!(
        read_until(&mut conn, |b| b.ends_with(b"\r\n")),
        b"+PONG\r\n"
    );
    let after_ping = row("0", 7, ping.len() as u64);
    let stats = wait_for_rows(&store, "conn_stats", |r| {
        stats_of(r, client_port).contains(&after_ping.to_vec())
    })
    .await;
    let before_idle = stats_of(&stats, client_port);
    // Idle for three intervals: no traffic, no new row.
    tokio::time::sleep(every * 3).await;
    assert_eq!(
        stats_of(&rows(&store, "conn_stats"), client_port),
        before_idle
    );

    let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
    conn.write_all(set).unwrap();
    assert_eq!(read_until(&mut conn, |b| b.ends_with(b"\r\n")), b"+OK\r\n");
    let total_recv = (ping.len() + set.len()) as u64;
    let after_set = row("0", 7 + 5, total_recv);
    wait_for_rows(&store, "conn_stats", |r| {
        stats_of(r, client_port).contains(&after_set.to_vec())
    })
    .await;
    drop(conn);
    let last = row("1", 7 + 5, total_recv);
    let stats = wait_for_rows(&store, "conn_stats", |r| {
        stats_of(r, client_port).contains(&last.to_vec())
    })
    .await;
    p.stop().await;

    // Periodic rows while open, each after new traffic (a pass may fall between a request and its
    // reply: such a row shows the request alone), cumulative; then the final row.
    let ours = stats_of(&stats, client_port);
    let (last_row, periodic) = ours.split_last().unwrap();
    assert_eq!(last_row, &last.to_vec(), "{ours:?}");
    assert!(periodic.contains(&after_ping.to_vec()), "{ours:?}");
    assert_eq!(periodic.last(), Some(&after_set.to_vec()), "{ours:?}");
    let bytes = |r: &Vec<String>| -> (u64, u64) { (r[1].parse().unwrap(), r[2].parse().unwrap()) };
    for pair in periodic.windows(2) {
        let (a, b) = (bytes(&pair[0]), bytes(&pair[1]));
        assert!(a.0 <= b.0 && a.1 <= b.1 && a != b, "{ours:?}");
    }
    for r in periodic {
        assert_eq!(&r[0], "0", "{ours:?}");
    }
}

// --- HTTP bodies sent by sendfile: nginx serving a static file ------------------------------------

/// nginx (one worker, `sendfile on`) serving `root`; returns the master and the worker's pid.
fn start_static_nginx(dir: &std::path::Path, root: &std::path::Path, port: u16) -> (Server, u32) {
    let server = format!("root {};", root.display());
    let site = NginxSite {
        main: "user root;",
        http: "sendfile on; default_type application/octet-stream;",
        server: &server,
    };
    start_nginx(dir, port, &site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_nginx_sends_by_sendfile_still_become_complete_http_events() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let body: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(root.join("big.txt"), &body).unwrap();
    std::fs::write(root.join("small.txt"), b"small file\n").unwrap();
    let port = free_port();
    let (_nginx, worker) = start_static_nginx(dir.path(), &root, port);
    let Traced {
        store, probe: p, ..
    } = Traced::start(
        &tracepoint(vec![Protocol::Http], "*/nginx"),
        target(worker, "/usr/sbin/nginx"),
    );

    // Two files over one keep-alive connection: the second response's headers come after the first
    // body, which never passed through nginx's memory.
    let out = Command::new(which("curl"))
        .args(["-s", "--http1.1", "-o", "/dev/null", "-o", "/dev/null"])
        .arg(format!("http://127.0.0.1:{port}/big.txt"))
        .arg(format!("http://127.0.0.1:{port}/small.txt"))
        .args(["-w", "%{http_code} %{size_download}\n"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 20000\n200 11\n",
        "{out:?}"
    );

    let http = wait_for_rows(&store, "http_events", |r| r.len() >= 2).await;
    let stats = closed(&wait_for_rows(&store, "conn_stats", |r| !closed(r).is_empty()).await);
    p.stop().await;
    assert_eq!(
        pick(
            &http,
            &[
                "req_path",
                "resp_status",
                "resp_body_size",
                "resp_body",
                "trace_role"
            ]
        ),
        vec![
            vec![
                "/big.txt",
                "200",
                "20000",
                "<20000 bytes not captured>",
                "server"
            ],
            vec![
                "/small.txt",
                "200",
                "11",
                "<11 bytes not captured>",
                "server"
            ],
        ],
        "{http:?}"
    );
    // Every byte of both bodies counted, sendfile's included.
    assert_eq!(stats.len(), 1, "{stats:?}");
    let Value::Int64(sent) = stats[0]["bytes_sent"] else {
        panic!("{stats:?}")
    };
    assert!(sent > 20_011, "bytes_sent {sent}");
}

/// The conn_stats rows of connections that spoke `protocol`.
fn of_protocol(stats: &[Row], protocol: &str) -> Vec<Row> {
    stats
        .iter()
        .filter(|r| text(r, "protocol") == protocol)
        .cloned()
        .collect()
}

/// Rows traced on the server side, then those traced on the client side, each in order.
fn by_role(rows: &[Row]) -> (Vec<Row>, Vec<Row>) {
    let of = |role: &str| {
        rows.iter()
            .filter(|r| text(r, "trace_role") == role)
            .cloned()
            .collect::<Vec<_>>()
    };
    (of("server"), of("client"))
}

/// Each row: a closed connection that carried bytes both ways, from loopback to the server on
/// `port`.
fn assert_conn_stats(stats: &[Row], port: u16) {
    for r in stats {
        assert_eq!(r["conn_close"], Value::Int64(1), "{r:?}");
        for column in ["bytes_sent", "bytes_recv"] {
            assert!(
                matches!(r[column], Value::Int64(n) if n > 0),
                "{column}: {r:?}"
            );
        }
        assert_addressed(r, port);
    }
}

/// A row of a connection between loopback addresses, to the server on `port`.
fn assert_addressed(r: &Row, port: u16) {
    let server_port = match text(r, "trace_role") {
        "server" => "local_port",
        _ => "remote_port",
    };
    assert_eq!(r[server_port], Value::Int64(i64::from(port)), "{r:?}");
    assert_eq!(text(r, "local_addr"), "127.0.0.1", "{r:?}");
    assert_eq!(text(r, "remote_addr"), "127.0.0.1", "{r:?}");
}

/// What a server's files and its copies of sockets it handed to children must not produce: rows of
/// protocol "unknown", parse errors of protocol "unknown", truncation or address losses (no
/// message of these tests is larger than what an event carries).
fn assert_no_noise_from_non_sockets(stats: &[Row], metrics: &str) {
    let unknown: Vec<&Row> = stats
        .iter()
        .filter(|r| text(r, "protocol") == "unknown")
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
    for labels in [
        ["sonde_protocol_parse_errors_total", "protocol=\"unknown\""],
        ["sonde_events_dropped_total", "reason=\"truncated\""],
        ["sonde_events_dropped_total", "reason=\"addresses_unknown\""],
    ] {
        assert_eq!(metric_sum(metrics, labels[0], &labels[1..]), 0, "{metrics}");
    }
}

// --- A forking server whose children exit at once -------------------------------------------------

/// Accepts, forks a child per connection that answers one HTTP request and exits without closing
/// (the kernel closes its socket), while the parent closes its copy unused: the shape of a
/// PostgreSQL postmaster and its backends, with children short-lived enough to be gone before the
/// agent looks at their fds. It waits in select() and then accepts, as the postmaster does: an
/// accept already blocked when tracing starts is not seen, and neither is the socket it returns.
const FORKING_SERVER: &str = r#"
import os, select, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
print("ready", s.getsockname()[1], flush=True)
while True:
    select.select([s], [], [])
    c, _ = s.accept()
    pid = os.fork()
    if pid == 0:
        s.close()
        req = b""
        while b"\r\n\r\n" not in req:
            chunk = c.recv(4096)
            if not chunk:
                break
            req += chunk
        body = b"served by %d\n" % os.getpid()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        os._exit(0)
    c.close()
    os.waitpid(pid, 0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_forking_server_that_exit_at_once_still_have_the_accepted_addresses() {
    let cgroup = TestCgroup::new("forking");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("forking_server.py");
    std::fs::write(&script, FORKING_SERVER).unwrap();
    let mut child = Command::new("/bin/sh")
        .args(cgroup.enter_and_exec())
        .arg(which("python3"))
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the forking server");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    // The server binds a port of the kernel's choosing: one picked here beforehand could be taken
    // by a parallel test before the server binds it.
    let port: u16 = match ready.trim_end().split_once(' ') {
        Some(("ready", port)) => port.parse().expect("the server's port"),
        _ => panic!("the forking server did not start: {ready:?}"),
    };
    let server = Server {
        child,
        signal: Signal::SIGKILL,
    };
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &pod_tracepoint(vec![Protocol::Http]),
        pod_target(server.pid(), "/usr/bin/python3"),
    );

    let mut served_by = std::collections::BTreeSet::new();
    for path in ["/a", "/b", "/c"] {
        let out = Command::new(which("curl"))
            .args(["-s", "--http1.1", "--max-time", "30"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = body.strip_prefix("served by ").map(|p| p.trim().to_owned());
        served_by.insert(pid.unwrap_or_else(|| panic!("{out:?}")));
    }
    assert_eq!(served_by.len(), 3, "{served_by:?}");

    let http = wait_for_rows(&store, "http_events", |r| r.len() >= 3).await;
    // The children exit without closing their socket: their rows come from the sweep of exited
    // processes (every 10 s).
    let stats = closed(&wait_for_rows(&store, "conn_stats", |r| closed(r).len() >= 3).await);
    let metrics = metrics_text(&registry);
    p.stop().await;

    assert_eq!(
        pick(&http, &["req_path", "resp_status", "trace_role"]),
        vec![
            vec!["/a", "200", "server"],
            vec!["/b", "200", "server"],
            vec!["/c", "200", "server"],
        ],
        "{http:?}"
    );
    let pids = |rows: &[Row]| -> std::collections::BTreeSet<String> {
        pick(rows, &["pid"]).into_iter().flatten().collect()
    };
    assert_eq!(pids(&http), served_by, "{http:?}");
    for r in &http {
        assert_addressed(r, port);
    }
    // One row per child's connection; none for the parent's unused copies.
    assert_eq!(stats.len(), 3, "{stats:?}");
    assert_eq!(pids(&stats), served_by, "{stats:?}");
    assert_eq!(of_protocol(&stats, "http").len(), 3, "{stats:?}");
    assert_conn_stats(&stats, port);
    assert_no_noise_from_non_sockets(&stats, &metrics);
    assert_eq!(
        metric_sum(&metrics, "sonde_events_dropped_total", &[]),
        0,
        "{metrics}"
    );
}

// --- Databases: a traced server next to an untraced copy, server- and client-side rows ------------

/// A copy of the data directory `data` at `dir/other`, for a second, untraced server.
fn copy_of(data: &Path, dir: &Path) -> PathBuf {
    let other = dir.join("other");
    run_ok(Command::new(which("cp")).arg("-a").arg(data).arg(&other));
    other
}

/// Runs the Python client `script` (written to `dir/name`) with the test venv inside `cgroup`,
/// with `PORT` = `port` and `env`; it must succeed. Returns its stdout.
fn run_python_in(
    cgroup: &TestCgroup,
    dir: &Path,
    name: &str,
    script: &str,
    port: u16,
    env: &[(&str, &str)],
) -> String {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    let out = run_ok(
        Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(venv_python())
            .arg(&path)
            .env("PORT", port.to_string())
            .envs(env.iter().copied()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for at least `events` rows in `table`, then for `connections` closed conn_stats rows of
/// `protocol`; returns the rows and every closed conn_stats row.
async fn wait_for_events_and_closed_stats(
    store: &Store,
    table: &str,
    events: usize,
    protocol: &str,
    connections: usize,
) -> (Vec<Row>, Vec<Row>) {
    let rows = wait_for_rows(store, table, |r| r.len() >= events).await;
    let stats = closed(
        &wait_for_rows(store, "conn_stats", |r| {
            of_protocol(&closed(r), protocol).len() >= connections
        })
        .await,
    );
    (rows, stats)
}

/// Asserts the server-side rows, projected on `columns`, are exactly `server_want` and the
/// client-side ones `client_want`; returns both sides.
fn assert_rows_by_role(
    rows: &[Row],
    columns: &[&str],
    server_want: Vec<Vec<String>>,
    client_want: Vec<Vec<String>>,
) -> (Vec<Row>, Vec<Row>) {
    let (server, client) = by_role(rows);
    assert_eq!(pick(&server, columns), server_want, "{rows:?}");
    assert_eq!(pick(&client, columns), client_want, "{rows:?}");
    (server, client)
}

/// Asserts `stats` hold exactly `servers` server-side and `clients` client-side closed
/// connections of `protocol` to the server on `port`, each with bytes both ways; returns both.
fn assert_closed_connections(
    stats: &[Row],
    protocol: &str,
    port: u16,
    servers: usize,
    clients: usize,
) -> (Vec<Row>, Vec<Row>) {
    let (server_stats, client_stats) = by_role(&of_protocol(stats, protocol));
    assert_eq!(server_stats.len(), servers, "{stats:?}");
    assert_eq!(client_stats.len(), clients, "{stats:?}");
    assert_conn_stats(&server_stats, port);
    assert_conn_stats(&client_stats, port);
    (server_stats, client_stats)
}

// --- PostgreSQL: postgres + psql (simple protocol) and pg8000 (extended protocol) -----------------

/// psql sending each of `commands` as one simple-protocol Query over one connection; its output.
fn psql(port: u16, commands: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(pg_tool("psql"));
    cmd.args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-d", "postgres", "-p", &port.to_string()])
        .env("PGPASSWORD", PG_PASSWORD)
        .stdin(Stdio::null());
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.output().expect("running psql")
}

/// pg8000 over the extended protocol: unnamed statements from `run` (with and without parameters,
/// one failing at Parse) and a named one prepared once and executed twice, then closed.
const PG8000_CLIENT: &str = r#"
import os, pg8000.native
con = pg8000.native.Connection("postgres", password=os.environ["PGPASSWORD"], host="127.0.0.1", port=int(os.environ["PORT"]))
con.run("CREATE TABLE IF NOT EXISTS u (id int, name text)")
con.run("INSERT INTO u VALUES (:id, :name)", id=7, name="seven")
print(con.run("SELECT id, name FROM u WHERE id = :id", id=7))
try:
    con.run("SELECT * FROM missing WHERE x = :x", x=1)
except Exception as e:
    print("error", e.args[0]["C"])
ps = con.prepare("SELECT CAST(:v AS int) * 2")
print(ps.run(v=21), ps.run(v=50))
ps.close()
con.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_selected_by_process_is_followed_into_the_backends_it_forks() {
    // Under /tmp, whatever TMPDIR says: the postgres user must be able to reach it.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = init_postgres(dir.path());
    let port = free_port();
    let server = start_postgres(dir.path(), &data, port, None);
    // Selected by tgid (a process selector, as standalone) and nothing rescans here: only the
    // postmaster is a target. Each backend it forks for a connection must be selected by the
    // kernel before it runs, or the connection goes unseen.
    let Traced {
        store, probe: p, ..
    } = Traced::start(
        &tracepoint(vec![Protocol::Pgsql], "*/postgres"),
        target(server.pid(), &pg_tool("postgres").display().to_string()),
    );

    for (query, answer) in [("SELECT 41 + 1", "42\n"), ("SELECT 'again'", "again\n")] {
        let out = psql(port, &[query]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), answer, "{out:?}");
    }

    let rows = wait_for_rows(&store, "pgsql_events", |r| r.len() >= 4).await;
    p.stop().await;
    let startup = [
        "server",
        "StartupMessage",
        "user=postgres database=postgres application_name=psql password=<redacted>",
    ];
    let want: Vec<Vec<String>> = [
        startup,
        ["server", "Query", "SELECT 41 + 1"],
        startup,
        ["server", "Query", "SELECT 'again'"],
    ]
    .iter()
    .map(|r| r.map(str::to_owned).to_vec())
    .collect();
    assert_eq!(
        pick(&rows, &["trace_role", "req_cmd", "req"]),
        want,
        "{rows:?}"
    );
    // Two connections, two backends: none of it is the postmaster's.
    let mut pids: Vec<String> = pick(&rows, &["pid"]).concat();
    pids.dedup();
    assert_eq!(pids.len(), 2, "{rows:?}");
    assert!(!pids.contains(&server.pid().to_string()), "{rows:?}");
}

/// Clients that connect per transaction (pgbench -C): each connection is a backend forked for it
/// that lives a few milliseconds, its socket inherited from the postmaster. Every connection and
/// statement is a row with its answer, none lost to the process's exit or misread: before, the
/// agent forgot a backend gone by its next sweep while its last events still waited in the ring,
/// and its verdict on the inherited socket, written over the kernel's entry, could undo the count
/// of the startup message read meanwhile (the queries after it taken for repeats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connecting_per_transaction_to_postgres_get_every_statement_answered() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = init_postgres(dir.path());
    let port = free_port();
    let server = start_postgres(dir.path(), &data, port, None);
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &tracepoint(vec![Protocol::Pgsql], "*/postgres"),
        target(server.pid(), &pg_tool("postgres").display().to_string()),
    );
    let script = dir.path().join("transaction.sql");
    std::fs::write(&script, "SELECT 41 + 1;\nSELECT 'per transaction';\n").unwrap();
    let (clients, transactions) = (2, 200);
    let out = run_ok(
        Command::new(pg_tool("pgbench"))
            .args(["-n", "-C", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(port.to_string())
            .args([
                "-c",
                &clients.to_string(),
                "-t",
                &transactions.to_string(),
                "-f",
            ])
            .arg(&script)
            .arg("postgres")
            .env("PGPASSWORD", PG_PASSWORD),
    );
    let connections = clients * transactions;
    let processed =
        format!("number of transactions actually processed: {connections}/{connections}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&processed),
        "{out:?}"
    );
    let rows = wait_for_rows(&store, "pgsql_events", |r| r.len() > 3 * connections).await;
    // Past the agent's sweeps (every 10 s) of the backends gone meanwhile.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let metrics = metrics_text(&registry);
    p.stop().await;
    let count = |cmd: &str, req: &str| {
        rows.iter()
            .filter(|r| {
                text(r, "req_cmd") == cmd
                    && text(r, "req").starts_with(req)
                    && r.get("resp").is_some_and(|v| *v != Value::Null)
            })
            .count()
    };
    // pgbench's own first connection, then one per transaction.
    assert_eq!(
        count("StartupMessage", "user=postgres"),
        connections + 1,
        "{rows:?}"
    );
    assert_eq!(count("Query", "SELECT 41 + 1"), connections);
    assert_eq!(count("Query", "SELECT 'per transaction'"), connections);
    assert_eq!(rows.len(), 3 * connections + 1, "{rows:?}");
    assert_eq!(
        metric_sum(&metrics, "sonde_protocol_parse_errors_total", &[]),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "sonde_events_dropped_total", &[]),
        0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_pg8000_against_postgres_in_a_traced_cgroup_become_exact_server_and_client_pgsql_events()
 {
    let cgroup = TestCgroup::new("pgsql");
    // Under /tmp, whatever TMPDIR says: the postgres user must be able to reach it.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = init_postgres(dir.path());
    // A second server from a copy of the cluster, outside the cgroup: its traffic must not show.
    let other_data = copy_of(&data, dir.path());
    let (port, other_port) = two_free_ports();
    let traced = start_postgres(dir.path(), &data, port, Some(&cgroup));
    let _untraced = start_postgres(dir.path(), &other_data, other_port, None);
    // Selected by cgroup, as a pod's container: the backends forked per connection are traced too.
    let Traced {
        store,
        registry,
        probe: p,
    } = Traced::start(
        &pod_tracepoint(vec![Protocol::Pgsql]),
        pod_target(traced.pid(), &pg_tool("postgres").display().to_string()),
    );

    let other = psql(other_port, &["SELECT 'untraced'"]);
    assert_eq!(
        String::from_utf8_lossy(&other.stdout),
        "untraced\n",
        "{other:?}"
    );
    let out = psql(
        port,
        &[
            "SELECT 41 + 1",
            "CREATE TABLE t (id int PRIMARY KEY, name text)",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "CREATE ROLE app LOGIN PASSWORD 'hunter2'",
            "SELECT 1/0",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n", "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("division by zero"),
        "{out:?}"
    );
    // pg8000 runs in the traced cgroup too (an application next to its database in one pod): its
    // side of the connection is traced as well, as the client.
    let out = run_python_in(
        &cgroup,
        dir.path(),
        "pg8000_client.py",
        PG8000_CLIENT,
        port,
        &[("PGPASSWORD", PG_PASSWORD)],
    );
    assert_eq!(out, "[[7, 'seven']]\nerror 42P01\n[[42]] [[100]]\n");

    let (server_want, client_want) = (6 + 13, 13);
    // Backends exit without closing their socket: their rows come from the sweep of exited
    // processes (every 10 s). pg8000 closes its own.
    let (pgsql, stats) = wait_for_events_and_closed_stats(
        &store,
        "pgsql_events",
        server_want + client_want,
        "pgsql",
        3,
    )
    .await;
    let metrics = metrics_text(&registry);
    p.stop().await;

    let row = |role: &str, cmd: &str, req: &str, params: &str, resp: &str, rows: &str| {
        [cmd, req, params, resp, rows, role]
            .map(str::to_owned)
            .to_vec()
    };
    // psql: startup (password message redacted), then one Query per -c.
    let psql_rows = vec![
        row(
            "server",
            "StartupMessage",
            "user=postgres database=postgres application_name=psql password=<redacted>",
            "null",
            "AuthenticationOk",
            "0",
        ),
        row("server", "Query", "SELECT 41 + 1", "null", "SELECT 1", "1"),
        row(
            "server",
            "Query",
            "CREATE TABLE t (id int PRIMARY KEY, name text)",
            "null",
            "CREATE TABLE",
            "0",
        ),
        row(
            "server",
            "Query",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "null",
            "INSERT 0 2",
            "0",
        ),
        // The password written into the statement is redacted too.
        row(
            "server",
            "Query",
            "CREATE ROLE app LOGIN PASSWORD '<redacted>'",
            "null",
            "CREATE ROLE",
            "0",
        ),
        row(
            "server",
            "Query",
            "SELECT 1/0",
            "null",
            "ERROR 22012: division by zero",
            "0",
        ),
    ];
    // pg8000: what the driver sends, as in protocols/tests/fixtures/pgsql/pg8000_extended; the
    // same seen from either end.
    let pg8000_rows = |role: &str| {
        vec![
            row(
                role,
                "StartupMessage",
                "user=postgres password=<redacted>",
                "null",
                "AuthenticationOk",
                "0",
            ),
            row(
                role,
                "Query",
                "CREATE TABLE IF NOT EXISTS u (id int, name text)",
                "null",
                "CREATE TABLE",
                "0",
            ),
            row(
                role,
                "Parse",
                "INSERT INTO u VALUES ($1, $2)",
                "null",
                "ParseComplete",
                "0",
            ),
            row(
                role,
                "Describe",
                "INSERT INTO u VALUES ($1, $2)",
                "null",
                "ParameterDescription, NoData",
                "0",
            ),
            row(
                role,
                "Execute",
                "INSERT INTO u VALUES ($1, $2)",
                "$1='7', $2='seven'",
                "INSERT 0 1",
                "0",
            ),
            row(
                role,
                "Parse",
                "SELECT id, name FROM u WHERE id = $1",
                "null",
                "ParseComplete",
                "0",
            ),
            row(
                role,
                "Describe",
                "SELECT id, name FROM u WHERE id = $1",
                "null",
                "ParameterDescription, RowDescription",
                "0",
            ),
            row(
                role,
                "Execute",
                "SELECT id, name FROM u WHERE id = $1",
                "$1='7'",
                "SELECT 1",
                "1",
            ),
            row(
                role,
                "Parse",
                "SELECT * FROM missing WHERE x = $1",
                "null",
                "ERROR 42P01: relation \"missing\" does not exist",
                "0",
            ),
            row(
                role,
                "Describe",
                "SELECT CAST($1 AS int) * 2",
                "null",
                "ParseComplete, ParameterDescription, RowDescription",
                "0",
            ),
            row(
                role,
                "Execute",
                "SELECT CAST($1 AS int) * 2",
                "$1='21'",
                "SELECT 1",
                "1",
            ),
            row(
                role,
                "Execute",
                "SELECT CAST($1 AS int) * 2",
                "$1='50'",
                "SELECT 1",
                "1",
            ),
            row(
                role,
                "Close",
                "SELECT CAST($1 AS int) * 2",
                "null",
                "CloseComplete",
                "0",
            ),
        ]
    };
    let columns = ["req_cmd", "req", "params", "resp", "rows", "trace_role"];
    let (server, client) = assert_rows_by_role(
        &pgsql,
        &columns,
        [psql_rows, pg8000_rows("server")].concat(),
        pg8000_rows("client"),
    );
    for r in &pgsql {
        assert_eq!(text(r, "pod"), "peers", "{r:?}");
    }
    assert_no_secret(&pgsql, "hunter2");
    // Every row has its addresses, also of backends that exited before the agent looked at their
    // socket: those come from the postmaster's accept, inherited at fork.
    for r in &pgsql {
        assert_addressed(r, port);
    }
    // Each server-side connection is served by its own backend, forked after tracing started:
    // one pid for psql's rows, another for pg8000's, each with one conn_stats row.
    let pids = |rows: &[Row]| -> std::collections::BTreeSet<String> {
        pick(rows, &["pid"]).into_iter().flatten().collect()
    };
    assert_eq!(pids(&server[..6]).len(), 1, "{pgsql:?}");
    assert_eq!(pids(&server[6..]).len(), 1, "{pgsql:?}");
    let backends = pids(&server);
    assert_eq!(backends.len(), 2, "{pgsql:?}");
    assert!(!backends.contains(&traced.pid().to_string()), "{pgsql:?}");
    assert_eq!(pids(&client).len(), 1, "{pgsql:?}");
    let (server_stats, client_stats) = assert_closed_connections(&stats, "pgsql", port, 2, 1);
    assert_eq!(pids(&server_stats), backends, "{stats:?}");
    assert_eq!(pids(&client_stats), pids(&client), "{stats:?}");
    // The postmaster's copies of the sockets it accepted for its backends, and every file, make no
    // rows and no errors.
    assert_no_noise_from_non_sockets(&stats, &metrics);
    assert_eq!(
        metric_sum(
            &metrics,
            "db_client_operation_duration_seconds_count",
            &["db_system_name=\"postgresql\"", "pod=\"peers\""]
        ),
        (server_want + client_want) as u64,
        "{metrics}"
    );
    // psql's two SELECTs (the failing one too), and pg8000's three Executes of a SELECT, seen from
    // both ends.
    assert_eq!(
        metric_sum(
            &metrics,
            "db_client_operation_duration_seconds_count",
            &[
                "db_system_name=\"postgresql\"",
                "db_operation_name=\"SELECT\""
            ]
        ),
        2 + 3 * 2,
        "{metrics}"
    );
    // Failed operations carry their SQLSTATE: psql's division by zero (psql runs outside the
    // traced pod: seen by the server) and pg8000's statement on a missing table, from both ends.
    for (code, want) in [("22012", 1), ("42P01", 2)] {
        assert_eq!(
            metric_sum(
                &metrics,
                "db_client_operation_duration_seconds_count",
                &[
                    "db_system_name=\"postgresql\"",
                    &format!("error_type=\"{code}\"")
                ]
            ),
            want,
            "{code}: {metrics}"
        );
    }
}

// --- MariaDB: mariadbd + the mariadb client (COM_QUERY) and mysql-connector (prepared statements) --

/// The mariadb client over TCP as root, in batch mode (`-e`): each statement is one COM_QUERY.
fn mariadb_cli(port: u16, database: &str, statements: &str) -> std::process::Output {
    mariadb_cli_as(&["-u", "root"], port, database, statements)
}

/// [`mariadb_cli`] logging in with the options `login` (user, password).
fn mariadb_cli_as(
    login: &[&str],
    port: u16,
    database: &str,
    statements: &str,
) -> std::process::Output {
    Command::new(which("mariadb"))
        .args(["--no-defaults", "--skip-ssl", "-h", "127.0.0.1"])
        .args(login)
        .args(["-P", &port.to_string(), "-e", statements, database])
        .stdin(Stdio::null())
        .output()
        .expect("running mariadb")
}

/// mysql-connector-python (pure Python) with a prepared cursor: COM_STMT_PREPARE/EXECUTE with
/// binary parameters, one statement failing at prepare.
const CONNECTOR_CLIENT: &str = r#"
import os, mysql.connector
con = mysql.connector.connect(host="127.0.0.1", port=int(os.environ["PORT"]), user="root",
                              database="sonde", ssl_disabled=True, use_pure=True)
cur = con.cursor(prepared=True)
cur.execute("CREATE TABLE IF NOT EXISTS u (id int, name text)")
cur.execute("INSERT INTO u VALUES (?, ?)", (7, "seven"))
cur.execute("SELECT id, name FROM u WHERE id = ?", (7,))
print(cur.fetchall())
try:
    cur.execute("SELECT * FROM missing WHERE x = ?", (1,))
except Exception as e:
    print("error", e.errno)
cur.execute("SELECT CAST(? AS SIGNED) * 2", (21,))
print(cur.fetchall())
cur.execute("UPDATE u SET name = ? WHERE id = ?", ("SEVEN", 7))
cur.close()
con.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_client_and_prepared_statements_against_traced_mariadbd_become_exact_server_and_client_mysql_events()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = init_mariadb(dir.path());
    // A second server from a copy of the data directory, not selected: its traffic must not show.
    let other_data = copy_of(&data, dir.path());
    let (port, other_port) = two_free_ports();
    let traced = start_mariadb(dir.path(), &data, port);
    let _untraced = start_mariadb(dir.path(), &other_data, other_port);
    // The connector runs in a pod of its own, traced too: its side of each connection is the
    // client's. A process started in that container first stands for its pause container.
    let app = TestCgroup::new("mysql-app");
    let pause = pause_in(&app);
    let store = Store::default();
    let mut registry = Registry::default();
    let ctx = context(&store, &mut registry);
    let p = start_probe_in(
        &ctx,
        &tracepoint(vec![Protocol::Mysql], "*/mariadbd"),
        target(traced.pid(), "/usr/sbin/mariadbd"),
    );
    let app_probe = start_probe_in(
        &ctx,
        &pod_tracepoint_for(vec![Protocol::Mysql], "app"),
        pod_target_for(pause.pid(), "/usr/bin/sleep", "app"),
    );

    let other = mariadb_cli(other_port, "sonde", "SELECT 'untraced'");
    assert_eq!(
        String::from_utf8_lossy(&other.stdout),
        "untraced\nuntraced\n",
        "{other:?}"
    );
    let out = mariadb_cli(
        port,
        "sonde",
        "SELECT 41 + 1; CREATE TABLE t (id int PRIMARY KEY, name text); \
         INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT id, name FROM t ORDER BY id; \
         CREATE USER 'app'@'%' IDENTIFIED BY 'hunter2'; SELECT * FROM nope",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "41 + 1\n42\nid\tname\n1\ta\n2\tb\n",
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Table 'sonde.nope' doesn't exist"),
        "{out:?}"
    );
    // The user just created, with a wrong password: the login is refused.
    let refused = mariadb_cli_as(&["-u", "app", "-pwrong-pass"], port, "sonde", "SELECT 1");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Access denied"),
        "{refused:?}"
    );
    let out = run_python_in(
        &app,
        dir.path(),
        "connector_client.py",
        CONNECTOR_CLIENT,
        port,
        &[],
    );
    assert_eq!(out, "[(7, 'seven')]\nerror 1146\n[(42,)]\n");

    let (server_want, client_want) = (9 + 21, 21);
    let (mysql, stats) = wait_for_events_and_closed_stats(
        &store,
        "mysql_events",
        server_want + client_want,
        "mysql",
        4,
    )
    .await;
    let metrics = metrics_text(&registry);
    app_probe.stop().await;
    p.stop().await;

    let row =
        |role: &str, cmd: &str, body: &str, params: &str, status: &str, resp: &str, rows: &str| {
            [cmd, body, params, status, resp, rows, role]
                .map(str::to_owned)
                .to_vec()
        };
    let ok = |role: &str, cmd: &str, body: &str, resp: &str| {
        row(role, cmd, body, "null", "OK", resp, "0")
    };
    // The client in batch mode: its login, one COM_QUERY per statement; it stops at the error.
    let cli_rows = vec![
        ok(
            "server",
            "COM_CONNECT",
            "user=root database=sonde",
            "affected rows: 0",
        ),
        row(
            "server",
            "COM_QUERY",
            "SELECT 41 + 1",
            "null",
            "OK",
            "Resultset rows = 1",
            "1",
        ),
        ok(
            "server",
            "COM_QUERY",
            "CREATE TABLE t (id int PRIMARY KEY, name text)",
            "affected rows: 0",
        ),
        ok(
            "server",
            "COM_QUERY",
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "Records: 2  Duplicates: 0  Warnings: 0",
        ),
        row(
            "server",
            "COM_QUERY",
            "SELECT id, name FROM t ORDER BY id",
            "null",
            "OK",
            "Resultset rows = 2",
            "2",
        ),
        ok(
            "server",
            "COM_QUERY",
            "CREATE USER 'app'@'%' IDENTIFIED BY '<redacted>'",
            "affected rows: 0",
        ),
        row(
            "server",
            "COM_QUERY",
            "SELECT * FROM nope",
            "null",
            "ERR",
            "1146 (42S02): Table 'sonde.nope' doesn't exist",
            "0",
        ),
        row("server", "COM_QUIT", "null", "null", "NONE", "null", "null"),
        // The refused login: who tried, not with what.
        row(
            "server",
            "COM_CONNECT",
            "user=app database=sonde password=<redacted>",
            "null",
            "ERR",
            "1045 (28000): Access denied for user 'app'@'localhost' (using password: YES)",
            "0",
        ),
    ];
    // mysql-connector: what the driver sends, as in
    // protocols/tests/fixtures/mysql/connector_prepared; the same seen from either end.
    let connector_rows = |role: &str| {
        vec![
            ok(
                role,
                "COM_CONNECT",
                "user=root database=sonde",
                "affected rows: 0",
            ),
            ok(
                role,
                "COM_QUERY",
                "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
                "affected rows: 0",
            ),
            ok(
                role,
                "COM_QUERY",
                "SET @@session.autocommit = OFF",
                "affected rows: 0",
            ),
            ok(role, "COM_PING", "null", "affected rows: 0"),
            ok(
                role,
                "COM_STMT_PREPARE",
                "CREATE TABLE IF NOT EXISTS u (id int, name text)",
                "statement 1: 0 params, 0 columns",
            ),
            ok(role, "COM_STMT_RESET", "null", "affected rows: 0"),
            ok(
                role,
                "COM_STMT_EXECUTE",
                "CREATE TABLE IF NOT EXISTS u (id int, name text)",
                "affected rows: 0",
            ),
            ok(
                role,
                "COM_STMT_PREPARE",
                "INSERT INTO u VALUES (?, ?)",
                "statement 2: 2 params, 0 columns",
            ),
            ok(role, "COM_STMT_RESET", "null", "affected rows: 0"),
            row(
                role,
                "COM_STMT_EXECUTE",
                "INSERT INTO u VALUES (?, ?)",
                "7, 'seven'",
                "OK",
                "affected rows: 1",
                "0",
            ),
            ok(
                role,
                "COM_STMT_PREPARE",
                "SELECT id, name FROM u WHERE id = ?",
                "statement 3: 1 params, 2 columns",
            ),
            ok(role, "COM_STMT_RESET", "null", "affected rows: 0"),
            row(
                role,
                "COM_STMT_EXECUTE",
                "SELECT id, name FROM u WHERE id = ?",
                "7",
                "OK",
                "Resultset rows = 1",
                "1",
            ),
            row(
                role,
                "COM_STMT_PREPARE",
                "SELECT * FROM missing WHERE x = ?",
                "null",
                "ERR",
                "1146 (42S02): Table 'sonde.missing' doesn't exist",
                "0",
            ),
            ok(
                role,
                "COM_STMT_PREPARE",
                "SELECT CAST(? AS SIGNED) * 2",
                "statement 5: 1 params, 1 columns",
            ),
            ok(role, "COM_STMT_RESET", "null", "affected rows: 0"),
            row(
                role,
                "COM_STMT_EXECUTE",
                "SELECT CAST(? AS SIGNED) * 2",
                "21",
                "OK",
                "Resultset rows = 1",
                "1",
            ),
            ok(
                role,
                "COM_STMT_PREPARE",
                "UPDATE u SET name = ? WHERE id = ?",
                "statement 6: 2 params, 0 columns",
            ),
            ok(role, "COM_STMT_RESET", "null", "affected rows: 0"),
            // The driver asks for no session tracking; the server prefixes the info with its
            // length all the same.
            row(
                role,
                "COM_STMT_EXECUTE",
                "UPDATE u SET name = ? WHERE id = ?",
                "'SEVEN', 7",
                "OK",
                "Rows matched: 1  Changed: 1  Warnings: 0",
                "0",
            ),
            row(role, "COM_QUIT", "null", "null", "NONE", "null", "null"),
        ]
    };
    let columns = [
        "req_cmd",
        "req_body",
        "params",
        "resp_status",
        "resp_body",
        "rows",
        "trace_role",
    ];
    let (server, client) = assert_rows_by_role(
        &mysql,
        &columns,
        [cli_rows, connector_rows("server")].concat(),
        connector_rows("client"),
    );
    for r in &mysql {
        assert_addressed(r, port);
    }
    assert_no_secret(&mysql, "hunter2");
    assert_no_secret(&mysql, "wrong-pass");
    for r in &server {
        assert_eq!(r["pid"], Value::Int64(i64::from(traced.pid())), "{r:?}");
        assert_eq!(text(r, "pod"), "", "{r:?}");
    }
    for r in &client {
        assert_eq!(r["remote_port"], Value::Int64(i64::from(port)), "{r:?}");
        assert_eq!(text(r, "pod"), "app", "{r:?}");
    }
    // Both clients closed their connection (COM_QUIT), and the server the refused one: one
    // server-side row each, and one for the connector's own end.
    assert_closed_connections(&stats, "mysql", port, 3, 1);
    // mariadbd's data files, read and closed before the agent could look at them, make no rows
    // and no errors.
    assert_no_noise_from_non_sockets(&stats, &metrics);
    // Every request but the COM_QUITs (no response, so no duration).
    let series = "db_client_operation_duration_seconds_count";
    assert_eq!(
        metric_sum(&metrics, series, &["db_system_name=\"mysql\""]),
        (server_want - 2 + client_want - 1) as u64,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            series,
            &["db_system_name=\"mysql\"", "pod=\"app\""]
        ),
        (client_want - 1) as u64,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            series,
            &["db_system_name=\"mysql\"", "db_operation_name=\"PREPARE\""]
        ),
        6 * 2,
        "{metrics}"
    );
    // Failed operations carry their SQLSTATE: the client's `SELECT * FROM nope` (seen by the
    // server) and the connector's prepare on a missing table (from both ends).
    assert_eq!(
        metric_sum(
            &metrics,
            series,
            &["db_system_name=\"mysql\"", "error_type=\"42S02\""]
        ),
        3,
        "{metrics}"
    );
}

// --- Node.js drivers: reads larger than what is captured of a syscall --------------------------------

/// Runs `tests/fixtures/protocols/node_db_client.js` for `driver` (`pg` or `mysql`) against
/// 127.0.0.1:`port` in a traced pod of `protocol`, and checks the row counts the application got.
/// Returns the rows of `table` once there are `rows` of them, and the metrics once truncated
/// syscalls were counted.
async fn node_db_client_rows(
    driver: &str,
    port: u16,
    protocol: Protocol,
    table: &str,
    rows: usize,
) -> (Vec<Row>, String) {
    let cgroup = TestCgroup::new(&format!("node-{driver}"));
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pause,
    ) = Traced::in_pod(&cgroup, "app", vec![protocol]);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocols/node_db_client.js");
    let out = run_ok(
        Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(which("node"))
            .arg(&script)
            .args([driver, &port.to_string()])
            .env("NODE_PATH", peer_node_modules())
            .env("PGPASSWORD", PG_PASSWORD),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "20000 42 20000 3 1\n");
    let got = wait_for_rows(&store, table, |r| r.len() >= rows).await;
    assert_no_secret(&got, "hunter2-node");
    let metrics = metrics_after_truncations(&registry).await;
    p.stop().await;
    (got, metrics)
}

/// Waits (10 s at most) until the kernel side has counted truncated syscalls, and returns the
/// metrics then: the large results really came in reads longer than what is captured of one.
async fn metrics_after_truncations(registry: &Registry) -> String {
    let truncated = |m: &str| metric_sum(m, "sonde_events_dropped_total", &["truncated"]);
    for _ in 0..100 {
        let metrics = metrics_text(registry);
        if truncated(&metrics) > 0 {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = metrics_text(registry);
    panic!("no syscall was truncated: the test did not test cut answers\n{metrics}");
}

/// node-postgres reads 64 KiB per syscall; of each such read the agent captures the first 12 KiB
/// and the last 512 bytes. A large result's rows cannot all be seen, but its end can: the
/// CommandComplete and ReadyForQuery in the last read's tail give each query its answer, latency
/// and row count, and the queries after it stay in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_reading_64_kib_at_a_time_gets_answers_and_row_counts_of_large_results() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = init_postgres(dir.path());
    let port = free_port();
    let _server = start_postgres(dir.path(), &data, port, None);
    let (rows, metrics) = node_db_client_rows("pg", port, Protocol::Pgsql, "pgsql_events", 7).await;

    let big = "SELECT g AS n, repeat('x', 100) AS pad FROM generate_series(1, 20000) g";
    let big_prepared = "SELECT g AS n, repeat($1, 100) AS pad FROM generate_series(1, 20000) g";
    let want = [
        [
            "StartupMessage",
            "user=postgres database=postgres client_encoding=UTF8 password=<redacted>",
            "null",
            "AuthenticationOk",
            "0",
        ],
        ["Query", big, "null", "SELECT 20000", "20000"],
        [
            "Execute",
            "SELECT $1::int + 1 AS v",
            "$1='41'",
            "SELECT 1",
            "1",
        ],
        ["Execute", big_prepared, "$1='y'", "SELECT 20000", "20000"],
        [
            "Query",
            "SELECT g FROM generate_series(1, 3) g",
            "null",
            "SELECT 3",
            "3",
        ],
        [
            "Query",
            "CREATE TEMP TABLE users (email text, password text)",
            "null",
            "CREATE TABLE",
            "0",
        ],
        // A bound value under a column named password: redacted.
        [
            "Execute",
            "INSERT INTO users (email, password) VALUES ($1, $2)",
            "$1='ann@example.com', $2=<redacted>",
            "INSERT 0 1",
            "0",
        ],
    ]
    .map(|r| r.map(str::to_owned).to_vec())
    .to_vec();
    assert_eq!(
        pick(&rows, &["req_cmd", "req", "params", "resp", "rows"]),
        want,
        "{rows:?}"
    );
    assert_answered_clients(&rows, &metrics, 7);
}

/// Every row is the client's and has its latency, in the histogram too.
/// pgx, the driver most Go services use: statements described first with their parameter types
/// left to the server, values bound in binary, batches sent as one pipeline (`SendBatch`), one of
/// them failing in its middle; a password bound as a value (redacted); an array in binary.
#[tokio::test]
async fn pgx_batches_become_one_row_per_statement_with_binary_values_decoded() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = init_postgres(dir.path());
    let port = free_port();
    let _server = start_postgres(dir.path(), &data, port, None);
    let url = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{port}/postgres");
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pod,
        out,
    ) = run_in_traced_pod(
        "go-pgx",
        vec![Protocol::Pgsql],
        &build_go("gopgx", dir.path()),
        &[],
        &[("PG_URL", &url)],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "row 42 forty-two\ncount 3\nbatch error true\nlogin true\nany 2\n"
    );
    let want = 20;
    let rows = wait_for_rows(&store, "pgsql_events", |r| r.len() >= want).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = metrics_text(&registry);
    p.stop().await;

    let insert = "INSERT INTO g VALUES ($1, $2, $3)";
    let at = "'2026-12-06 22:27:28.123456+00'";
    let execute =
        |params: String, resp: &str| ["Execute", insert, &params, resp, "0"].map(str::to_owned);
    let mut want_rows = vec![
        [
            "StartupMessage",
            "database=postgres password=<redacted> user=postgres",
            "null",
            "AuthenticationOk",
            "0",
        ]
        .map(str::to_owned),
        [
            "Describe",
            "SELECT $1::int + 1, $2::text",
            "null",
            "ParseComplete, ParameterDescription, RowDescription",
            "0",
        ]
        .map(str::to_owned),
        // The types the server described decode pgx's binary values.
        [
            "Execute",
            "SELECT $1::int + 1, $2::text",
            "$1=41, $2='forty-two'",
            "SELECT 1",
            "1",
        ]
        .map(str::to_owned),
        [
            "Query",
            "CREATE TABLE g (id int PRIMARY KEY, name text, at timestamptz)",
            "null",
            "CREATE TABLE",
            "0",
        ]
        .map(str::to_owned),
        // The batch's statements are described in one round trip, then executed in another.
        [
            "Describe",
            insert,
            "null",
            "ParseComplete, ParameterDescription, NoData, RowDescription",
            "0",
        ]
        .map(str::to_owned),
    ];
    for i in 0..3 {
        want_rows.push(execute(format!("$1={i}, $2='n{i}', $3={at}"), "INSERT 0 1"));
    }
    want_rows
        .push(["Execute", "SELECT count(*) FROM g", "null", "SELECT 1", "1"].map(str::to_owned));
    // The second batch: the statement is prepared already; the server skips what follows the
    // error.
    want_rows.push(execute(format!("$1=10, $2='ten', $3={at}"), "INSERT 0 1"));
    want_rows.push(execute(
        format!("$1=0, $2='duplicate', $3={at}"),
        "ERROR 23505: duplicate key value violates unique constraint \"g_pkey\"",
    ));
    want_rows.push(execute(
        format!("$1=11, $2='eleven', $3={at}"),
        "not executed: an earlier message of the batch failed",
    ));
    // After the error pgx drops the statement from its cache.
    want_rows.push(["Close", insert, "null", "CloseComplete", "0"].map(str::to_owned));
    // The password is a bound value under a column named so: redacted, the rest shown.
    let sign_up = "INSERT INTO users (email, password) VALUES ($1, $2)";
    let login = "SELECT count(*) = 1 FROM users WHERE email = $1 AND password = $2";
    let bound = "$1='ann@example.com', $2=<redacted>";
    want_rows.extend([
        [
            "Query",
            "CREATE TABLE users (email text, password text)",
            "null",
            "CREATE TABLE",
            "0",
        ]
        .map(str::to_owned),
        [
            "Describe",
            sign_up,
            "null",
            "ParseComplete, ParameterDescription, NoData",
            "0",
        ]
        .map(str::to_owned),
        ["Execute", sign_up, bound, "INSERT 0 1", "0"].map(str::to_owned),
        [
            "Describe",
            login,
            "null",
            "ParseComplete, ParameterDescription, RowDescription",
            "0",
        ]
        .map(str::to_owned),
        ["Execute", login, bound, "SELECT 1", "1"].map(str::to_owned),
    ]);
    // The batch that failed inserted nothing (one implicit transaction): 0 and 1 are found.
    let any = "SELECT count(*) FROM g WHERE id = ANY($1::int[])";
    want_rows.extend([
        [
            "Describe",
            any,
            "null",
            "ParseComplete, ParameterDescription, RowDescription",
            "0",
        ]
        .map(str::to_owned),
        ["Execute", any, "$1={0,1,10}", "SELECT 1", "1"].map(str::to_owned),
    ]);
    // pgx sends its startup parameters from a Go map, in any order.
    let mut got = pick(&rows, &["req_cmd", "req", "params", "resp", "rows"]);
    if let Some(startup) = got.first_mut().filter(|r| r[0] == "StartupMessage") {
        let mut words: Vec<&str> = startup[1].split(' ').collect();
        words.sort_unstable();
        startup[1] = words.join(" ");
    }
    assert_eq!(
        got,
        want_rows
            .into_iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
        "{rows:?}"
    );
    // Every statement that ran has its duration, the one skipped none.
    let timed: Vec<bool> = rows
        .iter()
        .map(|r| r.get("latency") != Some(&Value::Null))
        .collect();
    assert_eq!(timed.iter().filter(|t| !**t).count(), 1, "{rows:?}");
    assert!(!timed[11], "{rows:?}");
    assert_no_secret(&rows, "hunter2-pgx");
    assert_eq!(
        metric_sum(&metrics, "db_client_operation_duration_seconds_count", &[]),
        (want - 1) as u64,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "db_client_operation_duration_seconds_count",
            &["db_operation_name=\"INSERT\""]
        ),
        6,
        "{metrics}"
    );
}

/// A pgx batch longer than PostgreSQL reads at once (8 KiB) is answered in part before the server
/// has read its Sync: each statement's row still has its own result, on the server's side all of
/// them, on the client's (which writes the batch at once, more than is captured) those seen.
#[tokio::test]
async fn a_pgx_pipeline_answered_while_it_is_read_pairs_every_statement_with_its_own_result() {
    let cgroup = TestCgroup::new("pgx-pipeline");
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = init_postgres(dir.path());
    let port = free_port();
    let server = start_postgres(dir.path(), &data, port, Some(&cgroup));
    let client = build_go("gopgx", dir.path());
    let Traced {
        store, probe: p, ..
    } = Traced::start(
        &pod_tracepoint(vec![Protocol::Pgsql]),
        pod_target(server.pid(), &pg_tool("postgres").display().to_string()),
    );
    let out = run_ok(
        Command::new("/bin/sh")
            .args(cgroup.enter_and_exec())
            .arg(&client)
            .arg("pipeline")
            .env(
                "PG_URL",
                format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{port}/postgres"),
            ),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rows 38250\n");
    let counted = |rows: &[Row]| {
        rows.iter()
            .any(|r| text(r, "trace_role") == "server" && text(r, "req").contains("count(*)"))
    };
    let rows = wait_for_rows(&store, "pgsql_events", |r| counted(r)).await;
    p.stop().await;

    let inserts = |role: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|r| text(r, "trace_role") == role && text(r, "req_cmd") == "Execute")
            .filter(|r| text(r, "req").contains("generate_series"))
            .collect()
    };
    // Each INSERT's tag says how many rows its own value asked for.
    let right = |r: &Row| {
        let n = text(r, "params").trim_start_matches("$1=");
        text(r, "resp") == format!("INSERT 0 {n}")
    };
    let server_side = inserts("server");
    assert_eq!(server_side.len(), 1500, "{server_side:?}");
    let wrong: Vec<_> = server_side.iter().filter(|r| !right(r)).collect();
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    let client_side = inserts("client");
    let answered: Vec<_> = client_side
        .iter()
        .filter(|r| r.get("resp") != Some(&Value::Null))
        .collect();
    let wrong: Vec<_> = answered.iter().filter(|r| !right(r)).collect();
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    // Those written before the capture's end, at least (pgx writes the batch at once).
    assert!(answered.len() >= 100, "{} answered", answered.len());
}

fn assert_answered_clients(rows: &[Row], metrics: &str, want: usize) {
    assert!(
        rows.iter()
            .all(|r| text(r, "trace_role") == "client" && r.get("latency") != Some(&Value::Null)),
        "{rows:?}"
    );
    assert_eq!(
        metric_sum(metrics, "db_client_operation_duration_seconds_count", &[]),
        want as u64,
        "{metrics}"
    );
}

/// MariaDB's Connector/J with server-side prepared statements sends a statement's execute right
/// behind its prepare, naming it -1 ("the statement prepared last") before the prepare is
/// answered, and a batch as one COM_STMT_BULK_EXECUTE carrying every row's values: each is shown
/// with its statement and values, the passwords among them redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_j_s_pipelined_executes_and_bulk_batches_show_their_statements_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_mariadb(dir.path());
    let port = free_port();
    let _server = start_mariadb(dir.path(), &data, port);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocols/connectorj");
    let jar = peer_jar("mariadb-java-client-3.5.7.jar");
    run_ok(
        Command::new(which("javac"))
            .arg("-d")
            .arg(dir.path())
            .arg(fixture.join("ConnectorJ.java")),
    );
    let classpath = format!("{}:{}", jar.display(), dir.path().display());
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pod,
        out,
    ) = run_in_traced_pod(
        "connector-j",
        vec![Protocol::Mysql],
        &which("java"),
        &["-cp", &classpath, "ConnectorJ", &port.to_string()],
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "batch 3\nupdated 1\nselected 3 1\n"
    );
    let statements = |rows: &[Row]| {
        rows.iter()
            .filter(|r| text(r, "req_cmd").starts_with("COM_STMT_"))
            .count()
    };
    let rows = wait_for_rows(&store, "mysql_events", |r| statements(r) >= 7).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = metrics_text(&registry);
    p.stop().await;

    let insert = "INSERT INTO accounts (id, email, password) VALUES (?, ?, ?)";
    let update = "UPDATE accounts SET password = ? WHERE id = ?";
    let select = "SELECT id, email FROM accounts WHERE id <= ?";
    let got: Vec<Vec<String>> = pick(
        &rows,
        &["req_cmd", "req_body", "params", "resp_status", "resp_body"],
    )
    .into_iter()
    .filter(|r| r[0].starts_with("COM_STMT_"))
    .collect();
    let row = |cmd: &str, body: &str, params: &str, resp: &str| {
        [cmd, body, params, "OK", resp].map(str::to_owned).to_vec()
    };
    assert_eq!(
        got,
        [
            row(
                "COM_STMT_PREPARE",
                insert,
                "null",
                "statement 1: 3 params, 0 columns"
            ),
            row(
                "COM_STMT_BULK_EXECUTE",
                insert,
                "(1, 'u1@example.com', <redacted>), (2, 'u2@example.com', <redacted>), \
                 (3, 'u3@example.com', <redacted>)",
                "Records: 3  Duplicates: 0  Warnings: 0"
            ),
            row(
                "COM_STMT_PREPARE",
                update,
                "null",
                "statement 2: 2 params, 0 columns"
            ),
            row(
                "COM_STMT_EXECUTE",
                update,
                "<redacted>, 2",
                "Rows matched: 1  Changed: 1  Warnings: 0"
            ),
            row(
                "COM_STMT_PREPARE",
                select,
                "null",
                "statement 3: 1 params, 2 columns"
            ),
            // The second execute's result comes without its column definitions.
            row("COM_STMT_EXECUTE", select, "3", "Resultset rows = 3"),
            row("COM_STMT_EXECUTE", select, "1", "Resultset rows = 1"),
        ],
        "{rows:?}"
    );
    assert_no_secret(&rows, "hunter2-j");
    assert_answered_clients(
        &rows
            .iter()
            .filter(|r| text(r, "req_cmd") != "COM_QUIT")
            .cloned()
            .collect::<Vec<_>>(),
        &metrics,
        rows.iter()
            .filter(|r| text(r, "req_cmd") != "COM_QUIT")
            .count(),
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "db_client_operation_duration_seconds_count",
            &["db_operation_name=\"INSERT\""]
        ),
        1,
        "{metrics}"
    );
}

/// go-sql-driver/mysql against MariaDB: the server leaves out the column definitions of a prepared
/// statement's results (the driver has them from the prepare), saying so in the byte after the
/// column count; each execute's rows are still counted and the next command still gets its own
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sql_driver_s_results_without_column_definitions_count_their_rows() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data = init_mariadb(dir.path());
    let port = free_port();
    let _server = start_mariadb(dir.path(), &data, port);
    let dsn = format!("root@tcp(127.0.0.1:{port})/sonde");
    let (
        Traced {
            store,
            registry,
            probe: p,
        },
        _pod,
        out,
    ) = run_in_traced_pod(
        "go-mysql",
        vec![Protocol::Mysql],
        &build_go("gomysql", dir.path()),
        &[],
        &[("MYSQL_DSN", &dsn)],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rows 3 0 1 2; c\n");
    let want = 11;
    let rows = wait_for_rows(&store, "mysql_events", |r| r.len() >= want).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = metrics_text(&registry);
    p.stop().await;

    let insert = "INSERT INTO items (id, name, password) VALUES (?, ?, ?)";
    let select = "SELECT id, name FROM items WHERE id <= ? ORDER BY id";
    let row = |cmd: &str, body: &str, params: &str, resp: &str, n: &str| {
        [cmd, body, params, "OK", resp, n]
            .map(str::to_owned)
            .to_vec()
    };
    let mut expected = vec![
        row(
            "COM_CONNECT",
            "user=root database=sonde",
            "null",
            "affected rows: 0",
            "0",
        ),
        row(
            "COM_QUERY",
            "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(16), password VARCHAR(32))",
            "null",
            "affected rows: 0",
            "0",
        ),
        row(
            "COM_STMT_PREPARE",
            insert,
            "null",
            "statement 1: 3 params, 0 columns",
            "0",
        ),
        row(
            "COM_STMT_EXECUTE",
            insert,
            "1, 'a', <redacted>",
            "affected rows: 1",
            "0",
        ),
        row(
            "COM_QUERY",
            "INSERT INTO items VALUES (2, 'b', ''), (3, 'c', '')",
            "null",
            "Records: 2  Duplicates: 0  Warnings: 0",
            "0",
        ),
        row(
            "COM_STMT_PREPARE",
            select,
            "null",
            "statement 2: 1 params, 2 columns",
            "0",
        ),
    ];
    for n in ["3", "0", "1", "2"] {
        expected.push(row(
            "COM_STMT_EXECUTE",
            select,
            n,
            &format!("Resultset rows = {n}"),
            n,
        ));
    }
    expected.push(row(
        "COM_QUERY",
        "SELECT name FROM items WHERE id = 3",
        "null",
        "Resultset rows = 1",
        "1",
    ));
    assert_eq!(
        pick(
            &rows,
            &[
                "req_cmd",
                "req_body",
                "params",
                "resp_status",
                "resp_body",
                "rows"
            ]
        ),
        expected,
        "{rows:?}"
    );
    assert_no_secret(&rows, "hunter2");
    assert_answered_clients(&rows, &metrics, want);
}

/// mysql2 reads 64 KiB per syscall too. A result set's rows carry no count at its end, so a cut
/// one has its answer and latency from the EOF in the last read's tail, its row count unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_reading_64_kib_at_a_time_gets_answers_to_large_result_sets() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_mariadb(dir.path());
    let port = free_port();
    let _server = start_mariadb(dir.path(), &data, port);
    // The login, six answered commands, three prepares, and COM_QUIT (no answer; written at the
    // close).
    let (rows, metrics) =
        node_db_client_rows("mysql", port, Protocol::Mysql, "mysql_events", 11).await;

    let big = "SELECT seq AS n, REPEAT('x', 100) AS pad FROM seq_1_to_20000";
    let big_prepared = "SELECT seq AS n, REPEAT(?, 100) AS pad FROM seq_1_to_20000";
    let sign_up = "INSERT INTO users (email, password) VALUES (?, ?)";
    let row = |cmd: &str, body: &str, params: &str, resp: &str, rows: &str| {
        [cmd, body, params, "OK", resp, rows]
            .map(str::to_owned)
            .to_vec()
    };
    const CUT: [&str; 2] = ["Resultset (rows not all captured)", "null"];
    let want = vec![
        row(
            "COM_CONNECT",
            "user=root database=sonde",
            "null",
            "affected rows: 0",
            "0",
        ),
        row("COM_QUERY", big, "null", CUT[0], CUT[1]),
        row(
            "COM_STMT_PREPARE",
            "SELECT ? + 1 AS v",
            "null",
            "statement 1: 1 params, 1 columns",
            "0",
        ),
        row(
            "COM_STMT_EXECUTE",
            "SELECT ? + 1 AS v",
            "41",
            "Resultset rows = 1",
            "1",
        ),
        row(
            "COM_STMT_PREPARE",
            big_prepared,
            "null",
            "statement 2: 1 params, 2 columns",
            "0",
        ),
        row("COM_STMT_EXECUTE", big_prepared, "'y'", CUT[0], CUT[1]),
        row(
            "COM_QUERY",
            "SELECT seq FROM seq_1_to_3",
            "null",
            "Resultset rows = 3",
            "3",
        ),
        row(
            "COM_QUERY",
            "CREATE TEMPORARY TABLE users (email VARCHAR(64), password VARCHAR(64))",
            "null",
            "affected rows: 0",
            "0",
        ),
        row(
            "COM_STMT_PREPARE",
            sign_up,
            "null",
            "statement 3: 2 params, 0 columns",
            "0",
        ),
        // A bound value under a column named password: redacted.
        row(
            "COM_STMT_EXECUTE",
            sign_up,
            "'ann@example.com', <redacted>",
            "affected rows: 1",
            "0",
        ),
        ["COM_QUIT", "null", "null", "NONE", "null", "null"]
            .map(str::to_owned)
            .to_vec(),
    ];
    let mut got = pick(
        &rows,
        &[
            "req_cmd",
            "req_body",
            "params",
            "resp_status",
            "resp_body",
            "rows",
        ],
    );
    // A large result set whose reads all fit what is captured is counted exactly (the client
    // kept up with the server read by read): the same answer.
    for r in &mut got {
        if r[4] == "Resultset rows = 20000" && r[5] == "20000" {
            r[4..].clone_from_slice(&CUT.map(str::to_owned));
        }
    }
    assert_eq!(got, want, "{rows:?}");
    assert_answered_clients(&rows[..10], &metrics, 10);
}
