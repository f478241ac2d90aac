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
use sonde_agent::tables::{Budget, Store};
use sonde_agent::telemetry::TableMetrics;
use sonde_common::conn::{
    DIR_EGRESS, DIR_INGRESS, DataEventHeader, EVENT_DATA, EVENT_FORK, EVENT_OPEN, EventHeader,
    ForkEvent, OpenEvent, ROLE_SERVER,
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
        record(&open),
        data(DIR_INGRESS, request.as_bytes()),
        data(DIR_EGRESS, response),
    ]
}

/// A forked server's child that answers and exits at once (a PostgreSQL backend of a client that
/// connects per transaction): its last events may still wait in the ring when the agent's sweep
/// finds it gone. They keep the route it inherited until the next sweep, which forgets it.
#[test]
fn a_forked_child_gone_before_its_events_are_drained_keeps_its_route_until_the_next_sweep() {
    let (_kernel, maps) = Kernel::load(false).expect("loading Sonde's programs (needs root)");
    // A parent no process has; a child that has exited.
    let parent = u32::MAX - 3;
    let mut true_ = std::process::Command::new("true").spawn().unwrap();
    let child = true_.id();
    true_.wait().unwrap();
    let mut routes = Routes::default();
    routes.tgids.insert(
        parent,
        Arc::new(Route {
            kinds: vec![Kind::Http],
            config: ParseConfig::default(),
            namespace: "ns".into(),
            pod: "server".into(),
            container: "c".into(),
        }),
    );
    let store = Store::new("node".into(), Budget::default(), TableMetrics::default());
    let mut registry = Registry::default();
    let metrics = ProtocolMetrics::register(&mut registry);
    let mut tracker = Tracker::new(
        Arc::new(RwLock::new(routes)),
        Arc::new(Mutex::new(Tables::new(store.clone()))),
        metrics,
        maps.conns,
        maps.drops,
        Duration::from_secs(10),
    );
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
    let unrouted = |registry: &Registry| {
        metric_sum(
            &metrics_text(registry),
            "sonde_events_dropped_total",
            &["reason=\"unrouted\""],
        )
    };
    assert_eq!(unrouted(&registry), 0);

    sweep(&mut tracker);
    for event in exchange(child, 6, "/later") {
        tracker.handle(&event);
    }
    tracker.flush();
    assert_eq!(rows(&store, "http_events").len(), 1);
    assert_eq!(unrouted(&registry), 2);
}
