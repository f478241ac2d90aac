//! When the agent falls behind, on the real kernel: the capture ring fills, the syscalls that no
//! longer fit are dropped whole and counted, their bytes still advance the stream position (so the
//! parsers see a gap of the right size), and capture resumes as soon as the ring is drained. And the
//! thread that drains the ring lives exactly as long as some protocol probe does.
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;
use prometheus_client::registry::Registry;
use sonde_agent::probes::protocols::drain::THREAD_NAME;
use sonde_agent::probes::protocols::events::{Event, decode};
use sonde_agent::probes::protocols::kernel::{Kernel, LoopMaps};
use sonde_agent::tables::Store;
use sonde_api::Protocol;
use sonde_common::conn::DROP_RING_FULL;

/// Datagram payload: one chunk each, so one datagram is one data event or one counted drop.
const PAYLOAD: usize = 4000;
/// More datagrams than the 16-MiB ring holds (~4,100 of these records).
const FLOOD: u64 = 6000;
const AFTER: u64 = 10;
const SYS_SENDTO: u32 = 44;

/// A process that sends `FLOOD`, then `AFTER` UDP datagrams to the discard port, each round on a
/// SIGUSR1. Between rounds it makes no traced syscall at all (it signals with `mkdir`, waits in
/// `sigwait`), so every loss the drop counter shows is one of its datagrams.
fn sender(dir: &Path) -> Server {
    let script = format!(
        "import os, signal, socket\n\
         signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         payload = b'x' * {PAYLOAD}\n\
         for i, n in enumerate([{FLOOD}, {AFTER}]):\n\
         \x20   os.mkdir('{dir}/ready-%d' % i)\n\
         \x20   signal.sigwait({{signal.SIGUSR1}})\n\
         \x20   for _ in range(n):\n\
         \x20       s.sendto(payload, ('127.0.0.1', 9))\n\
         \x20   os.mkdir('{dir}/done-%d' % i)\n\
         signal.sigwait({{signal.SIGUSR1}})\n",
        dir = dir.display()
    );
    let child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 runs (scripts/setup installs it)");
    Server {
        child,
        signal: Signal::SIGKILL,
    }
}

/// Runs round `round` of [`sender`] and waits until it is done.
fn run_round(sender: &Server, dir: &Path, round: usize) {
    wait_until("the sender waits for its signal", || {
        dir.join(format!("ready-{round}")).exists()
    });
    // SAFETY: a signal to our own child, which blocks it until sigwait takes it.
    assert_eq!(
        unsafe { libc::kill(sender.pid() as i32, libc::SIGUSR1) },
        0,
        "signalling the sender"
    );
    wait_until("the sender sent its datagrams", || {
        dir.join(format!("done-{round}")).exists()
    });
}

/// Stream positions of the sender's datagrams waiting in the ring (all records are consumed).
fn sent_positions(maps: &mut LoopMaps, tgid: u32) -> Vec<u64> {
    let mut positions = Vec::new();
    while let Some(record) = maps.ring.next() {
        if let Ok(Event::Data(h, data)) = decode(&record)
            && h.header.tgid == tgid
            && h.syscall == SYS_SENDTO
        {
            assert_eq!(data.len(), PAYLOAD, "a datagram captured in part");
            positions.push(h.stream_pos);
        }
    }
    positions
}

fn ring_full_drops(maps: &LoopMaps) -> u64 {
    maps.drops
        .get(&DROP_RING_FULL, 0)
        .expect("read the drop counters")
        .iter()
        .sum()
}

#[test]
fn a_full_ring_drops_whole_syscalls_counted_with_their_gap_and_capture_resumes_once_drained() {
    let dir = tempfile::tempdir().unwrap();
    let sender = sender(dir.path());
    let pid = sender.pid();
    let (mut kernel, mut maps) = Kernel::load(false).expect("load the capture programs (root)");
    kernel
        .set_filter(&HashSet::from([pid]), &HashSet::new())
        .unwrap();

    // Nobody drains the ring while the sender floods it.
    run_round(&sender, dir.path(), 0);
    let dropped = ring_full_drops(&maps);
    let captured = sent_positions(&mut maps, pid);
    let payload = PAYLOAD as u64;
    assert!(
        dropped > 0 && !captured.is_empty(),
        "{dropped} dropped, {} captured: the flood should overflow the ring",
        captured.len()
    );
    assert_eq!(
        captured.len() as u64 + dropped,
        FLOOD,
        "every datagram is either captured or counted as ring_full"
    );
    // The first datagrams fit; from the first drop on, the ring stayed full.
    let expected: Vec<u64> = (0..captured.len() as u64).map(|i| i * payload).collect();
    assert_eq!(captured, expected, "captured datagrams are the first ones");

    // Drained (above): the next datagrams are captured, after a gap of exactly the lost bytes.
    run_round(&sender, dir.path(), 1);
    let resumed = sent_positions(&mut maps, pid);
    let expected: Vec<u64> = (FLOOD..FLOOD + AFTER).map(|i| i * payload).collect();
    assert_eq!(
        resumed, expected,
        "capture resumes at the right stream positions"
    );
    assert_eq!(
        ring_full_drops(&maps),
        dropped,
        "nothing dropped once drained"
    );
}

/// Whether a thread of ours named `name` runs.
fn thread_runs(name: &str) -> bool {
    let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    tasks.filter_map(Result::ok).any(|task| {
        std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim_end() == name)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_thread_starts_with_the_first_probe_and_ends_with_the_last() {
    let sleepers: Vec<Server> = (0..2)
        .map(|_| Server {
            child: Command::new("sleep").arg("600").spawn().unwrap(),
            signal: Signal::SIGKILL,
        })
        .collect();
    let store = Store::default();
    let mut registry = Registry::default();
    let ctx = context(&store, &mut registry);
    assert!(
        !thread_runs(THREAD_NAME),
        "a capture thread before any probe"
    );
    let mut probes = Vec::new();
    for (i, sleeper) in sleepers.iter().enumerate() {
        let mut probe = tracepoint(vec![Protocol::Http], "*/sleep");
        probe.0.id = format!("Tracepoint/default/sleeper-{i}");
        probes.push(start_probe_in(
            &ctx,
            &probe,
            target(sleeper.pid(), "/usr/bin/sleep"),
        ));
    }
    // The new thread names itself as it starts.
    wait_until("a capture thread with two probes", || {
        thread_runs(THREAD_NAME)
    });
    let last = probes.pop().expect("two probes");
    for probe in probes {
        probe.stop().await;
    }
    assert!(
        thread_runs(THREAD_NAME),
        "the capture thread ended before the last probe"
    );
    last.stop().await;
    assert!(
        !thread_runs(THREAD_NAME),
        "the capture thread outlived the last probe"
    );
    drop(sleepers);
}
