//! The tracker fed records made here, with Sonde's programs loaded (it owns their connection map;
//! needs root): orders of events the kernel's timing makes rare, made certain.
mod common;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::*;
use prometheus_client::registry::Registry;
use sonde_agent::probes::protocols::events::{data_record, encode_into};
use sonde_agent::probes::protocols::kernel::Kernel;
use sonde_agent::probes::protocols::metrics::ProtocolMetrics;
use sonde_agent::probes::protocols::routes::{Route, Routes};
use sonde_agent::probes::protocols::rows::{Clock, Tables};
use sonde_agent::probes::protocols::tracker::Tracker;
use sonde_agent::tables::{Budget, Store, Value};
use sonde_agent::telemetry::TableMetrics;
use sonde_common::conn::{
    CLASSIFY_INET, ClassifyEvent, CloseEvent, DIR_EGRESS, DIR_INGRESS, DataEventHeader,
    EVENT_CLASSIFY, EVENT_CLOSE, EVENT_DATA, EVENT_FORK, EVENT_OPEN, EVENT_PEER, EventHeader,
    ForkEvent, OPEN_DATAGRAM, OPEN_SOCKET_READ, OPEN_UDP, OpenEvent, PeerAddr, PeerEvent,
    ROLE_SERVER,
};
use sonde_protocols::{Kind, ParseConfig};

fn header(kind: u32, tgid: u32, fd: u32) -> EventHeader {
    EventHeader {
        kind,
        tgid,
        ts_ns: Clock::monotonic_now(),
        fd,
        tid: tgid,
        generation: 1,
        ..EventHeader::default()
    }
}

fn record<T: aya::Pod>(event: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, event);
    out
}

/// An accepted connection on `fd` of `tgid`, one request and its answer on it.
fn exchange(tgid: u32, fd: u32, path: &str) -> Vec<Vec<u8>> {
    let mut remote_addr = [0u8; 16];
    remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let open = OpenEvent {
        header: header(EVENT_OPEN, tgid, fd),
        role: ROLE_SERVER,
        family: libc::AF_INET as u16,
        remote_port: 40_000,
        remote_addr,
        listen_fd: u32::MAX,
        ..OpenEvent::default()
    };
    let mut records = vec![record(&open)];
    records.extend(request_and_answer(tgid, fd, path));
    records
}

/// One request on `fd` of `tgid` and its answer.
fn request_and_answer(tgid: u32, fd: u32, path: &str) -> Vec<Vec<u8>> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let data = |direction, bytes: &[u8]| {
        data_record(
            DataEventHeader {
                header: header(EVENT_DATA, tgid, fd),
                syscall_len: bytes.len() as u64,
                direction,
                ..DataEventHeader::default()
            },
            bytes,
        )
    };
    vec![
        data(DIR_INGRESS, request.as_bytes()),
        data(DIR_EGRESS, response),
    ]
}

/// A process with one HTTP route, and a tracker over Sonde's loaded maps writing to `store`.
fn tracker_for(tgid: u32, store: &Store, registry: &mut Registry) -> Tracker {
    tracker_of(Kind::Http, tgid, store, registry)
}

/// [`tracker_for`] with a route of protocol `kind`.
fn tracker_of(kind: Kind, tgid: u32, store: &Store, registry: &mut Registry) -> Tracker {
    let (_kernel, maps) = Kernel::load(false).expect("loading Sonde's programs (needs root)");
    let mut routes = Routes::default();
    routes.tgids.insert(
        tgid,
        Arc::new(Route {
            kinds: vec![kind],
            config: ParseConfig::default(),
            namespace: "ns".into(),
            pod: "server".into(),
            container: "c".into(),
        }),
    );
    let metrics = ProtocolMetrics::register(registry);
    Tracker::new(
        Arc::new(RwLock::new(routes)),
        Arc::new(Mutex::new(Tables::new(store.clone()))),
        metrics,
        maps.conns,
        maps.drops,
        Duration::from_secs(10),
    )
}

/// A process that has exited (and was reaped).
fn exited_pid() -> u32 {
    let mut true_ = std::process::Command::new("true").spawn().unwrap();
    let pid = true_.id();
    true_.wait().unwrap();
    pid
}

fn dropped(registry: &Registry, reason: &str) -> u64 {
    metric_sum(
        &metrics_text(registry),
        "sonde_events_dropped_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// I/O on an fd the kernel did not see opened, of a process gone before the agent could look at
/// the fd: with the socket's addresses the kernel read, it is a connection like any other; without
/// them (a kernel without BTF, a failed walk) nothing tells a connection from a file, and its bytes
/// are counted as lost.
#[test]
fn an_fd_not_seen_opened_of_a_process_gone_is_a_connection_if_the_kernel_read_it_else_a_counted_loss()
 {
    let pid = exited_pid();
    let store = Store::new("node".into(), Budget::default(), TableMetrics::default());
    let mut registry = Registry::default();
    let mut tracker = tracker_for(pid, &store, &mut registry);
    let peer = |a: [u8; 4], port| {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        PeerAddr {
            family: libc::AF_INET as u16,
            port,
            addr,
        }
    };
    tracker.handle(&record(&ClassifyEvent {
        header: header(EVENT_CLASSIFY, pid, 5),
        flags: CLASSIFY_INET,
        _pad: 0,
        local: peer([127, 0, 0, 2], 8080),
        remote: peer([127, 0, 0, 3], 40_000),
    }));
    tracker.handle(&record(&ClassifyEvent {
        header: header(EVENT_CLASSIFY, pid, 6),
        ..ClassifyEvent::default()
    }));
    for fd in [5, 6] {
        for event in request_and_answer(pid, fd, &format!("/fd{fd}")) {
            tracker.handle(&event);
        }
    }
    tracker.flush();
    let got: Vec<_> = rows(&store, "http_events")
        .iter()
        .map(|r| {
            (
                text(r, "req_path").to_owned(),
                text(r, "local_addr").to_owned(),
                r["local_port"].clone(),
                text(r, "remote_addr").to_owned(),
                r["remote_port"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(
            "/fd5".to_owned(),
            "127.0.0.2".to_owned(),
            Value::Int64(8080),
            "127.0.0.3".to_owned(),
            Value::Int64(40_000),
        )]
    );
    assert_eq!(dropped(&registry, "fd_gone"), 2);
}

/// A forked server's child that answers and exits at once (a PostgreSQL backend of a client that
/// connects per transaction): its last events may still wait in the ring when the agent's sweep
/// finds it gone. They keep the route it inherited until the next sweep, which forgets it.
#[test]
fn a_forked_child_gone_before_its_events_are_drained_keeps_its_route_until_the_next_sweep() {
    // A parent no process has; a child that has exited.
    let parent = u32::MAX - 3;
    let child = exited_pid();
    let store = Store::new("node".into(), Budget::default(), TableMetrics::default());
    let mut registry = Registry::default();
    let mut tracker = tracker_for(parent, &store, &mut registry);
    tracker.handle(&record(&ForkEvent {
        header: header(EVENT_FORK, parent, 0),
        child,
        _pad: 0,
    }));
    let sweep = |tracker: &mut Tracker| {
        // A sweep comes every tenth tick.
        for _ in 0..10 {
            tracker.tick();
        }
    };
    sweep(&mut tracker);
    for event in exchange(child, 5, "/late") {
        tracker.handle(&event);
    }
    tracker.flush();
    let late = rows(&store, "http_events");
    let got: Vec<(&str, &str)> = late
        .iter()
        .map(|r| (text(r, "pod"), text(r, "req_path")))
        .collect();
    assert_eq!(got, [("server", "/late")]);
    assert_eq!(dropped(&registry, "unrouted"), 0);

    sweep(&mut tracker);
    for event in exchange(child, 6, "/later") {
        tracker.handle(&event);
    }
    tracker.flush();
    assert_eq!(rows(&store, "http_events").len(), 1);
    assert_eq!(dropped(&registry, "unrouted"), 2);
}

/// A UDP server's socket answers two clients: each row names its own client, and the socket's
/// conn_stats row names none (its bytes went to both, not to the latest).
#[test]
fn a_udp_server_socket_s_conn_stats_names_no_peer_once_it_had_several() {
    let pid = exited_pid();
    let store = Store::new("node".into(), Budget::default(), TableMetrics::default());
    let mut registry = Registry::default();
    let mut tracker = tracker_of(Kind::Dns, pid, &store, &mut registry);
    let v4 = |port| {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        PeerAddr {
            family: libc::AF_INET as u16,
            port,
            addr,
        }
    };
    let first = v4(40_001);
    tracker.handle(&record(&OpenEvent {
        header: header(EVENT_OPEN, pid, 5),
        role: ROLE_SERVER,
        family: first.family,
        remote_port: first.port,
        remote_addr: first.addr,
        listen_fd: u32::MAX,
        flags: OPEN_DATAGRAM | OPEN_SOCKET_READ | OPEN_UDP,
        local: v4(53),
        _pad: 0,
    }));
    let query =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x03abc\x00\x00\x01\x00\x01";
    let mut answer = query.to_vec();
    answer[2..4].copy_from_slice(&[0x81, 0x80]);
    let datagram = |direction, pos, bytes: &[u8]| {
        data_record(
            DataEventHeader {
                header: header(EVENT_DATA, pid, 5),
                syscall_len: bytes.len() as u64,
                stream_pos: pos,
                direction,
                ..DataEventHeader::default()
            },
            bytes,
        )
    };
    let n = query.len() as u64;
    tracker.handle(&datagram(DIR_INGRESS, 0, query));
    tracker.handle(&datagram(DIR_EGRESS, 0, &answer));
    tracker.handle(&record(&PeerEvent {
        header: header(EVENT_PEER, pid, 5),
        peer: v4(40_002),
        _pad: 0,
    }));
    tracker.handle(&datagram(DIR_INGRESS, n, query));
    tracker.handle(&datagram(DIR_EGRESS, n, &answer));
    tracker.handle(&record(&CloseEvent {
        header: header(EVENT_CLOSE, pid, 5),
        bytes_sent: 2 * n,
        bytes_recv: 2 * n,
        ..CloseEvent::default()
    }));
    tracker.flush();
    let peers = |table: &str| -> Vec<(String, Value)> {
        rows(&store, table)
            .iter()
            .map(|r| (text(r, "remote_addr").to_owned(), r["remote_port"].clone()))
            .collect()
    };
    assert_eq!(
        peers("dns_events"),
        [
            ("127.0.0.1".to_owned(), Value::Int64(40_001)),
            ("127.0.0.1".to_owned(), Value::Int64(40_002)),
        ]
    );
    assert_eq!(peers("conn_stats"), [(String::new(), Value::Int64(0))]);
}
