//! The capture programs' selection, on the real kernel: a process leaves the selection at once even
//! while its prefilter bit stays set (another key shares it), because the selection epoch moves on
//! and its threads' argument slots stop vouching for it.
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sonde_agent::probes::protocols::events::{Event, decode};
use sonde_agent::probes::protocols::kernel::{Kernel, LoopMaps};
use sonde_common::conn::{filter_bit_cgroup, filter_bit_tgid};

/// A process sending a UDP datagram to the discard port every 20 ms from one thread.
fn udp_sender() -> Child {
    Command::new("python3")
        .args([
            "-c",
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             while True:\n    s.sendto(b'x', ('127.0.0.1', 9))\n    time.sleep(0.02)\n",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 runs (scripts/setup installs it)")
}

/// Events of process `tgid` waiting in the ring (all of them are consumed).
fn events_of(maps: &mut LoopMaps, tgid: u32) -> usize {
    let mut count = 0;
    while let Some(record) = maps.ring.next() {
        let of_tgid = match decode(&record) {
            Ok(Event::Data(h, _)) => h.header.tgid == tgid,
            Ok(Event::Open(ev)) => ev.header.tgid == tgid,
            _ => false,
        };
        count += usize::from(of_tgid);
    }
    count
}

/// A cgroup id (none exists with it) whose prefilter bit is `bit`.
fn cgroup_with_bit(bit: u32) -> u64 {
    (1u64 << 40..)
        .find(|&id| filter_bit_cgroup(id) == bit)
        .expect("a 16-bit hash takes every value")
}

#[test]
fn a_deselected_process_is_not_captured_even_when_its_prefilter_bit_stays_set() {
    let mut child = udp_sender();
    let pid = child.id();
    let (mut kernel, mut maps) = Kernel::load(false).expect("load the capture programs (root)");
    let same_bit = cgroup_with_bit(filter_bit_tgid(pid));

    kernel
        .set_filter(&HashSet::from([pid]), &HashSet::from([same_bit]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let selected = events_of(&mut maps, pid);

    kernel
        .set_filter(&HashSet::new(), &HashSet::from([same_bit]))
        .unwrap();
    // What was captured before the change may still be in the ring.
    std::thread::sleep(Duration::from_millis(50));
    events_of(&mut maps, pid);
    std::thread::sleep(Duration::from_millis(300));
    let deselected = events_of(&mut maps, pid);

    let _ = child.kill();
    let _ = child.wait();
    assert!(selected >= 5, "{selected} events while selected");
    assert_eq!(deselected, 0, "events after the process left the selection");
}
