//! The capture programs' selection, on the real kernel: a process leaves the selection at once even
//! while its prefilter bit stays set (another key shares it), because the selection epoch moves on
//! and its threads' argument slots stop vouching for it; children and programs named exactly are
//! selected by the kernel itself.
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sonde_agent::probes::protocols::events::{Event, decode};
use sonde_agent::probes::protocols::kernel::{Kernel, LoopMaps};
use sonde_agent::targets::selector::ExecPattern;
use sonde_common::conn::{filter_bit_cgroup, filter_bit_tgid, until_zero};

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
    drain(maps).0.get(&tgid).copied().unwrap_or_default()
}

/// Data and open events waiting in the ring by process, and the exec events' processes and
/// programs (all records are consumed).
fn drain(maps: &mut LoopMaps) -> (HashMap<u32, usize>, Vec<(u32, String)>) {
    let mut counts = HashMap::new();
    let mut execs = Vec::new();
    while let Some(record) = maps.ring.next() {
        let tgid = match decode(&record) {
            Ok(Event::Data(h, _)) => h.header.tgid,
            Ok(Event::Open(ev)) => ev.header.tgid,
            Ok(Event::Exec(ev)) => {
                let name = String::from_utf8_lossy(until_zero(&ev.comm)).into_owned();
                execs.push((ev.header.tgid, name));
                continue;
            }
            _ => continue,
        };
        *counts.entry(tgid).or_default() += 1;
    }
    (counts, execs)
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

/// `script` run by python3 with its stdin and stdout piped to this test ([`tell`]).
fn python_piped(script: &str) -> Child {
    Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/setup installs it)")
}

/// Writes a line to `child`'s stdin, then reads the line it answers on its stdout.
fn tell(child: &mut Child) -> String {
    use std::io::{BufRead, BufReader, Write};
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

/// A process that, once told on stdin, forks a child sending a UDP datagram to the discard port
/// every 20 ms, prints the child's pid and sleeps.
fn forking_sender() -> Child {
    python_piped(
        "import os, socket, sys, time\n\
         sys.stdin.readline()\n\
         pid = os.fork()\n\
         if pid == 0:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         while True:\n        s.sendto(b'x', ('127.0.0.1', 9))\n        time.sleep(0.02)\n\
         print(pid, flush=True)\n\
         time.sleep(300)\n",
    )
}

#[test]
fn a_child_of_a_process_selected_by_tgid_is_captured_from_its_start_and_leaves_with_its_parent() {
    let mut parent = forking_sender();
    let (mut kernel, mut maps) = Kernel::load(false).expect("load the capture programs (root)");
    kernel
        .set_filter(&HashSet::from([parent.id()]), &HashSet::new())
        .unwrap();
    let child: u32 = tell(&mut parent).parse().unwrap();
    let stop = |parent: &mut Child| {
        // SAFETY: kill has no memory preconditions; the child is our child's.
        unsafe { libc::kill(child as i32, libc::SIGKILL) };
        let _ = parent.kill();
        let _ = parent.wait();
    };

    std::thread::sleep(Duration::from_millis(300));
    let followed = events_of(&mut maps, child);
    // A change of the selection rewrites the prefilter word that holds the child's bit (another
    // key's bit in the same word): the bit the kernel set must stay.
    let neighbour = child ^ 1;
    kernel
        .set_filter(&HashSet::from([parent.id(), neighbour]), &HashSet::new())
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after_rewrite = events_of(&mut maps, child);
    // The parent leaves the selection: its child goes with it.
    kernel
        .set_filter(&HashSet::from([neighbour]), &HashSet::new())
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    events_of(&mut maps, child);
    std::thread::sleep(Duration::from_millis(300));
    let after_parent_left = events_of(&mut maps, child);
    stop(&mut parent);

    assert!(followed >= 5, "{followed} events of the forked child");
    assert!(
        after_rewrite >= 5,
        "{after_rewrite} events after its prefilter word was rewritten"
    );
    assert_eq!(
        after_parent_left, 0,
        "events after the parent left the selection"
    );
}

/// A process that opens a UDP socket, connects it and waits; told on stdin, it reads a file 20
/// times (each open a new fd to the kernel), sends one datagram on the socket, prints the socket's
/// fd on its stdout (a pipe) and sleeps.
fn file_reader() -> Child {
    python_piped(
        "import socket, sys, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.connect(('127.0.0.1', 9))\n\
         sys.stdin.readline()\n\
         for _ in range(20):\n    with open('/etc/services', 'rb') as f:\n        f.read(4096)\n\
         s.send(b'x')\n\
         print(s.fileno(), flush=True)\n\
         time.sleep(300)\n",
    )
}

#[test]
fn files_and_pipes_are_told_from_sockets_by_the_kernel_and_never_reach_user_space() {
    let mut reader = file_reader();
    let pid = reader.id();
    let (mut kernel, mut maps) = Kernel::load(false).expect("load the capture programs (root)");
    kernel
        .set_filter(&HashSet::from([pid]), &HashSet::new())
        .unwrap();
    let socket_fd: u32 = tell(&mut reader).parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // (fd, what) of every event of the process.
    let mut seen = Vec::new();
    while let Some(record) = maps.ring.next() {
        match decode(&record) {
            Ok(Event::Classify(c)) if c.header.tgid == pid => seen.push((c.header.fd, "classify")),
            Ok(Event::Data(h, _)) if h.header.tgid == pid => seen.push((h.header.fd, "data")),
            _ => {}
        }
    }
    let _ = reader.kill();
    let _ = reader.wait();
    // The socket it opened before it was selected is the one fd user space is asked about; the
    // file read twenty times and the pipe written to are settled in the kernel, their bytes
    // never captured.
    assert_eq!(
        seen,
        [(socket_fd, "classify"), (socket_fd, "data")],
        "events of the process"
    );
}

/// Sends a UDP datagram to the discard port every 20 ms, forever.
const UDP_LOOP: &str = "import socket, time\n\
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
    while True:\n    s.sendto(b'x', ('127.0.0.1', 9))\n    time.sleep(0.02)\n";

/// python3 started through a symlink called `name` in `dir`: execve's path, and so the thread's
/// name, is the symlink's.
fn python_named(dir: &std::path::Path, name: &str, script: &str) -> Child {
    let link = dir.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(python3(), &link).unwrap();
    }
    Command::new(&link)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/setup installs it)")
}

/// Debian's python3 (a version manager's shim on PATH would pick a program by the name it was
/// started as).
fn python3() -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/usr/bin/python3");
    assert!(path.exists(), "scripts/setup installs Debian's python3");
    path
}

#[test]
fn a_program_named_exactly_is_captured_from_its_exec_until_it_starts_another_or_its_name_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kernel, mut maps) = Kernel::load(false).expect("load the capture programs (root)");
    // One program by its name, one by the start of its name.
    let patterns = HashSet::from([
        ExecPattern::File {
            name: "sonde-named".into(),
            prefix: false,
        },
        ExecPattern::File {
            name: "sonde-ste".into(),
            prefix: true,
        },
    ]);
    kernel.set_execs(&patterns, &HashSet::new()).unwrap();

    // Five datagrams, then, told so, the same process starts python3 by its own name.
    let script = format!(
        "import os, socket, sys, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for _ in range(5):\n    s.sendto(b'x', ('127.0.0.1', 9))\n    time.sleep(0.02)\n\
         sys.stdin.readline()\n\
         os.execv({python:?}, [{python:?}, '-c', 'print(\"started\", flush=True)\\n' + {UDP_LOOP:?}])\n",
        python = python3().to_string_lossy(),
    );
    let mut switching = python_named(dir.path(), "sonde-named", &script);
    let mut steady = python_named(dir.path(), "sonde-steady", UDP_LOOP);
    // Neither its name nor its start: left to the process scan.
    let mut other = python_named(dir.path(), "sonde-namedx", UDP_LOOP);
    let (switching_pid, steady_pid) = (switching.id(), steady.id());
    let stop = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let of = |counts: &HashMap<u32, usize>, pid| counts.get(&pid).copied().unwrap_or_default();

    std::thread::sleep(Duration::from_millis(500));
    let (running, execs) = drain(&mut maps);
    // The first starts python3 under its own name: no longer selected.
    let started = tell(&mut switching);
    std::thread::sleep(Duration::from_millis(50));
    drain(&mut maps);
    std::thread::sleep(Duration::from_millis(300));
    let (one_switched, _) = drain(&mut maps);
    // The name goes (its probe was removed): so does the process selected for it.
    kernel.set_execs(&HashSet::new(), &HashSet::new()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drain(&mut maps);
    std::thread::sleep(Duration::from_millis(300));
    let (name_gone, _) = drain(&mut maps);
    let other_pid = other.id();
    stop(&mut switching);
    stop(&mut steady);
    stop(&mut other);

    let mut execs: Vec<(u32, String)> = execs
        .into_iter()
        .filter(|(pid, _)| [switching_pid, steady_pid, other_pid].contains(pid))
        .collect();
    execs.sort();
    let mut expected = [
        (switching_pid, "sonde-named".to_owned()),
        (steady_pid, "sonde-steady".to_owned()),
    ];
    expected.sort();
    assert_eq!(
        execs, expected,
        "an exec event each, with the program's name"
    );
    assert_eq!(of(&running, other_pid), 0, "{running:?}");
    assert!(of(&running, switching_pid) >= 5, "{running:?}");
    assert!(of(&running, steady_pid) >= 5, "{running:?}");
    assert_eq!(started, "started");
    assert_eq!(
        of(&one_switched, switching_pid),
        0,
        "events after it started another program"
    );
    assert!(of(&one_switched, steady_pid) >= 5, "{one_switched:?}");
    assert_eq!(of(&name_gone, steady_pid), 0, "events after the name went");
}
