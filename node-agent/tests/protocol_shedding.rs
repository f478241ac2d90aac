//! Shedding on a saturated node, on the real kernel with nginx: while busy loops keep every CPU
//! taken, the agent captures a share of the connections only — each of them whole, the others'
//! syscalls counted as `shed`, each request seen weighing for the ones shed in the RED histogram —
//! and once the CPUs have room again it captures every connection. Alone in its test binary: its
//! busy loops would slow every test beside it.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use sonde_agent::probes::protocols::governor::Shedding;
use sonde_agent::tables::{Store, Value};
use sonde_api::Protocol;
use sonde_common::conn::SHED_SLOTS;

/// Requests (each on a connection of its own) while the CPUs are saturated: with one slot of 64
/// kept, ~10 of them are captured, and none at all has a chance of about 4 in 100,000.
const SATURATED_REQUESTS: usize = 640;
/// Requests once the CPUs have room again: all of them are captured.
const ROOM_REQUESTS: usize = 32;

/// One more busy loop than the machine has CPUs: some task always waits for one.
fn busy_loops() -> Vec<Server> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (0..=cpus)
        .map(|_| Server {
            child: Command::new("python3")
                .args(["-c", "while True: pass"])
                .stdin(Stdio::null())
                .spawn()
                .expect("python3 runs (scripts/setup installs it)"),
            signal: Signal::SIGKILL,
        })
        .collect()
}

/// `GET path` on a connection of its own; the answer's body.
fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("nginx accepts");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
}

/// `n` requests to `prefix` + their number, each on a connection of its own, `pause` apart;
/// checks nginx answered each.
async fn requests(port: u16, prefix: &'static str, n: usize, pause: Duration) {
    let bodies = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|i| {
                std::thread::sleep(pause);
                get(port, &format!("{prefix}{i}"))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(bodies.iter().all(|b| b == "hello\n"), "nginx answered");
}

fn share(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("sonde_capture_connection_share "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sonde_capture_connection_share in:\n{text}"))
}

fn dropped(text: &str, reason: &str) -> u64 {
    metric_sum(
        text,
        "sonde_events_dropped_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

fn requests_observed(text: &str) -> u64 {
    metric_sum(text, "http_server_request_duration_seconds_count", &[])
}

/// The http_events rows whose path starts with `prefix`, once their number held for a second.
fn settled_rows(store: &Store, prefix: &str) -> Vec<Row> {
    let of_phase = || -> Vec<Row> {
        rows(store, "http_events")
            .into_iter()
            .filter(|r| text(r, "req_path").starts_with(prefix))
            .collect()
    };
    let mut last = of_phase();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = of_phase();
        if now.len() == last.len() {
            return now;
        }
        last = now;
    }
}

fn assert_whole(rows: &[Row], worker: u32) {
    for row in rows {
        assert_eq!(row["req_method"], Value::String("GET".into()), "{row:?}");
        assert_eq!(row["resp_status"], Value::Int64(200), "{row:?}");
        assert_eq!(row["resp_body"], Value::String("hello\n".into()), "{row:?}");
        assert_eq!(row["pid"], Value::Int64(i64::from(worker)), "{row:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_node_sheds_whole_connections_counted_and_weighed_and_takes_them_back_once_it_has_room()
 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let site = NginxSite {
        main: "",
        http: "",
        server: "location / { return 200 \"hello\\n\"; }",
    };
    let (_nginx, worker) = start_nginx(dir.path(), port, &site);
    let store = Store::default();
    let mut registry = prometheus_client::registry::Registry::default();
    // No budget: on a saturated node, any capture at all is too much.
    let shedding = Shedding {
        enabled: true,
        budget_percent: 0.0,
    };
    let ctx = context_shedding(&store, &mut registry, shedding);
    let probe = start_probe_in(
        &ctx,
        &tracepoint(vec![Protocol::Http], "*/nginx"),
        target(worker, "/usr/sbin/nginx"),
    );
    assert_eq!(share(&metrics_text(&registry)), 1.0);

    let hogs = busy_loops();
    let least = 1.0 / f64::from(SHED_SLOTS);
    wait_until("one slot of connections kept", || {
        share(&metrics_text(&registry)) == least
    });
    requests(port, "/saturated/", SATURATED_REQUESTS, Duration::ZERO).await;
    let saturated = settled_rows(&store, "/saturated/");
    let text = metrics_text(&registry);
    assert_eq!(share(&text), least, "still saturated: {text}");
    drop(hogs);

    let captured = saturated.len();
    assert!(
        (1..SATURATED_REQUESTS / 4).contains(&captured),
        "{captured} of {SATURATED_REQUESTS} connections captured with one slot in {SHED_SLOTS} kept"
    );
    assert_whole(&saturated, worker);
    // Each request was read and answered by syscalls of its own connection: the shed ones' are
    // counted, at least a read and a write each.
    let shed = dropped(&text, "shed");
    assert!(
        shed >= 2 * (SATURATED_REQUESTS - captured) as u64,
        "{shed} syscalls shed for {} connections",
        SATURATED_REQUESTS - captured
    );
    // Each request captured stands for SHED_SLOTS in the histogram.
    assert_eq!(
        requests_observed(&text),
        u64::from(SHED_SLOTS) * captured as u64,
        "{text}"
    );

    wait_until("every connection captured again", || {
        share(&metrics_text(&registry)) == 1.0
    });
    let before = metrics_text(&registry);
    // Paced: a machine with room stays so while they run.
    requests(port, "/room/", ROOM_REQUESTS, Duration::from_millis(30)).await;
    let room = settled_rows(&store, "/room/");
    let after = metrics_text(&registry);
    probe.stop().await;

    assert_eq!(room.len(), ROOM_REQUESTS, "{room:?}");
    assert_whole(&room, worker);
    assert_eq!(dropped(&after, "shed"), dropped(&before, "shed"));
    assert_eq!(
        requests_observed(&after) - requests_observed(&before),
        ROOM_REQUESTS as u64
    );
}
