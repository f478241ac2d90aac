//! The incremental process scan on the real kernel (needs root: the process notifications are
//! eBPF programs): a rescan rereads new processes and the ones that exec'd, forgets those that
//! exited, and keeps the rest.
use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use sonde_agent::targets::{Changes, ProcessInfo, ProcessScanner, ProcessWatch, Rescan};

/// Kills and reaps the child when the test ends, also when it fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scanner_with_watch() -> ProcessScanner {
    let watch = ProcessWatch::start().expect("process notifications need root and eBPF");
    ProcessScanner::new(Path::new("/proc"), Some(watch))
}

/// A scanner whose last rescan found nothing changed, and how many processes its first scan saw.
/// (Other tests start processes meanwhile: a quiet moment comes within a few tries.)
fn quiet_scanner() -> (ProcessScanner, usize) {
    let mut scanner = scanner_with_watch();
    let total = scanner.scan().unwrap().len();
    let quiet = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(20));
        scanner.rescan().unwrap() == Rescan::Unchanged
    });
    assert!(quiet, "every rescan handed out processes");
    (scanner, total)
}

fn find(processes: &[ProcessInfo], pid: u32) -> Option<&ProcessInfo> {
    processes.iter().find(|p| p.pid == pid)
}

fn exe_name(p: &ProcessInfo) -> String {
    p.exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Drains `watch` until `done` holds for what it gathered (up to a second).
fn drain_until(watch: &mut ProcessWatch, done: impl Fn(&Changes) -> bool) -> Changes {
    let mut all = Changes::default();
    for _ in 0..50 {
        let changes = watch.drain().expect("no notification was lost");
        all.forked.extend(changes.forked);
        all.execd.extend(changes.execd);
        all.exited.extend(changes.exited);
        if done(&all) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    all
}

#[test]
fn notifications_name_the_process_that_started_execd_and_exited() {
    let mut watch = ProcessWatch::start().expect("process notifications need root and eBPF");
    let _ = watch.drain();
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let changes = drain_until(&mut watch, |c| c.exited.contains(&pid));
    assert!(changes.forked.contains(&pid), "{pid}: {changes:?}");
    assert!(changes.execd.contains(&pid), "{pid}: {changes:?}");
    assert!(changes.exited.contains(&pid), "{pid}: {changes:?}");
}

#[test]
fn a_new_thread_is_no_new_process() {
    let mut watch = ProcessWatch::start().expect("process notifications need root and eBPF");
    let _ = watch.drain();
    // SAFETY: gettid has no preconditions.
    let tid = thread::spawn(|| unsafe { libc::gettid() } as u32)
        .join()
        .unwrap();
    // A process started after the thread: once it shows, the thread's creation was drained too.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let changes = drain_until(&mut watch, |c| c.exited.contains(&pid));
    assert!(changes.exited.contains(&pid), "{pid}: {changes:?}");
    assert!(!changes.forked.contains(&tid), "thread {tid}: {changes:?}");
    assert!(!changes.exited.contains(&tid), "thread {tid}: {changes:?}");
}

#[test]
fn a_rescan_rereads_a_process_that_execd_and_keeps_the_others() {
    let mut scanner = scanner_with_watch();
    let unique = format!("300.{}", std::process::id());
    let mut child = Reaped(
        Command::new("sh")
            .args(["-c", &format!("read line; exec sleep {unique}")])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    // The shell must be past its own exec first: a scan that reads it mid-exec (image switched,
    // arguments not yet in place) rereads it at the next scan, when the exec is announced.
    let cmdline = format!("/proc/{pid}/cmdline");
    for _ in 0..100 {
        if std::fs::read(&cmdline).is_ok_and(|c| c.windows(9).any(|w| w == b"read line")) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }

    let first = scanner.scan().unwrap();
    assert!(scanner.last_scan().full, "{:?}", scanner.last_scan());
    let before = find(&first, pid).expect("the shell is seen");
    assert_ne!(exe_name(before), "sleep");

    let second = scanner.scan().unwrap();
    let stats = scanner.last_scan();
    assert!(!stats.full, "{stats:?}");
    // Other tests start processes meanwhile; most of the host's stay as they were.
    assert!(stats.kept > stats.read, "{stats:?}");
    assert_eq!(find(&second, pid), Some(before));

    child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    // Rescans until the exec shows; a scanner that missed it would keep the shell until its next
    // full scan, 30 s away.
    let mut after = None;
    for _ in 0..10 {
        let processes = scanner.scan().unwrap();
        assert!(!scanner.last_scan().full, "{:?}", scanner.last_scan());
        after = find(&processes, pid).cloned();
        if after.as_ref().is_some_and(|p| exe_name(p) == "sleep") {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let after = after.expect("the process is still there");
    assert_eq!(exe_name(&after), "sleep");
    assert_eq!(after.cmdline, format!("sleep {unique}"));
}

#[test]
fn a_rescan_sees_processes_that_start_and_drops_those_that_exit() {
    let mut scanner = scanner_with_watch();
    scanner.scan().unwrap();

    let child = Reaped(Command::new("sleep").arg("301").spawn().unwrap());
    let pid = child.0.id();
    // `spawn` returns once the exec closed the child's descriptors, before the kernel put its
    // arguments in place: a scan may read it mid-exec (empty command line) and then rereads it
    // when the exec is announced, so a few rescans may be needed, none of them full.
    let mut seen = None;
    for _ in 0..10 {
        let started = scanner.scan().unwrap();
        assert!(!scanner.last_scan().full, "{:?}", scanner.last_scan());
        seen = find(&started, pid).cloned();
        assert!(
            seen.is_some(),
            "the new process is seen at the first rescan"
        );
        if seen.as_ref().is_some_and(|p| p.cmdline == "sleep 301") {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let seen = seen.expect("the new process is seen");
    assert_eq!(exe_name(&seen), "sleep");
    assert_eq!(seen.cmdline, "sleep 301");

    drop(child);
    let ended = scanner.scan().unwrap();
    assert!(find(&ended, pid).is_none());
}

#[test]
fn without_process_notifications_every_scan_rereads_every_process() {
    let mut scanner = ProcessScanner::new(Path::new("/proc"), None);
    for _ in 0..2 {
        let processes = scanner.scan().unwrap();
        let stats = scanner.last_scan();
        assert!(stats.full && stats.kept == 0, "{stats:?}");
        assert!(stats.read >= processes.len(), "{stats:?}");
    }
}

#[test]
fn a_rescan_sees_a_forked_child_that_did_not_exec_and_forgets_it_when_it_exits() {
    let mut scanner = scanner_with_watch();
    scanner.scan().unwrap();
    // The child is a copy of the parent: only its fork announces it (no exec follows).
    let mut parent = Reaped(
        Command::new("python3")
            .args([
                "-c",
                "import os, sys, time\npid = os.fork()\nif pid:\n    print(pid, flush=True)\ntime.sleep(300)\n",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let child: u32 = line.trim().parse().unwrap();
    let processes = scanner.scan().unwrap();
    assert!(!scanner.last_scan().full, "{:?}", scanner.last_scan());
    let seen = find(&processes, child).expect("the forked child is seen at the next rescan");
    let parent_seen = find(&processes, parent.0.id()).expect("the parent is seen");
    assert_eq!(exe_name(seen), exe_name(parent_seen));
    assert_eq!(seen.cmdline, parent_seen.cmdline);
    assert!(seen.cmdline.contains("os.fork()"), "{seen:?}");

    // SAFETY: kill has no memory preconditions; the child is ours (its parent is our child).
    assert_eq!(unsafe { libc::kill(child as i32, libc::SIGKILL) }, 0);
    // Its parent sleeps and does not reap it: it stays a zombie, which a scan does not list.
    let mut gone = false;
    for _ in 0..50 {
        let processes = scanner.scan().unwrap();
        assert!(!scanner.last_scan().full, "{:?}", scanner.last_scan());
        if find(&processes, child).is_none() {
            gone = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(gone, "the killed child is still listed");
}

#[tokio::test]
async fn an_exec_wakes_a_poller_of_the_exec_ring() {
    use tokio::io::unix::AsyncFd;
    let mut watch = ProcessWatch::start().expect("process notifications need root and eBPF");
    watch.drain();
    // SAFETY: the AsyncFd owns the descriptor, which stays open while it is registered.
    let waker = unsafe { AsyncFd::register(watch.exec_waker().unwrap()) }.unwrap();
    // Registered on an empty ring (as the agent's manager is after a drain), the descriptor
    // becomes ready only when the kernel wakes its pollers, which an exec must do. (Another
    // test's exec may come first; that is an exec too.)
    let exec = tokio::process::Command::new("true").status();
    let (ready, status) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), waker.readable()),
        exec
    );
    assert!(status.unwrap().success());
    assert!(ready.is_ok(), "no wake-up after an exec");
    let changes = drain_until(&mut watch, |c| !c.execd.is_empty());
    assert!(!changes.execd.is_empty());
}

#[test]
fn a_rescan_hands_out_only_the_processes_that_changed() {
    let (mut scanner, total) = quiet_scanner();
    let child = Reaped(Command::new("sleep").arg("302").spawn().unwrap());
    let pid = child.0.id();
    let mut found = None;
    for _ in 0..50 {
        match scanner.rescan().unwrap() {
            Rescan::Changed { pids, processes } => {
                assert!(
                    processes.iter().all(|p| pids.contains(&p.pid)),
                    "{pids:?} {processes:?}"
                );
                assert!(
                    processes.len() < total / 2,
                    "{} of {total} processes handed out",
                    processes.len()
                );
                if find(&processes, pid).is_some_and(|p| exe_name(p) == "sleep") {
                    found = Some(pid);
                    break;
                }
            }
            Rescan::Full(processes) => {
                panic!("a full scan within seconds: {} processes", processes.len())
            }
            Rescan::Unchanged => {}
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(found, Some(pid), "the new process never showed in a rescan");
    drop(child);
    let mut gone = false;
    for _ in 0..50 {
        if let Rescan::Changed { pids, processes } = scanner.rescan().unwrap()
            && pids.contains(&pid)
        {
            assert!(find(&processes, pid).is_none(), "{processes:?}");
            gone = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(gone, "the process's exit never showed in a rescan");
}

#[test]
fn a_scan_leaves_what_changed_to_the_next_rescan() {
    let (mut scanner, _) = quiet_scanner();
    let child = Reaped(Command::new("sleep").arg("303").spawn().unwrap());
    let pid = child.0.id();
    // A full snapshot (what the probe manager takes when probes change) sees it...
    let seen = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(20));
        let processes = scanner.scan().unwrap();
        find(&processes, pid).is_some_and(|p| exe_name(p) == "sleep")
    });
    assert!(seen, "the new process never showed in a scan");
    // ...and the rescan after it still hands it out, for the probes that snapshot did not serve.
    match scanner.rescan().unwrap() {
        Rescan::Changed { processes, .. } => assert!(
            find(&processes, pid).is_some_and(|p| exe_name(p) == "sleep"),
            "{processes:?}"
        ),
        other => panic!("{other:?}"),
    }
}
