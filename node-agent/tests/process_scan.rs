//! The incremental process scan on the real kernel (needs root: the exec notifications are an eBPF
//! program): a rescan rereads new processes and the ones that exec'd, and keeps the rest.
use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use sonde_agent::targets::{ExecWatch, ProcessInfo, ProcessScanner};

/// Kills and reaps the child when the test ends, also when it fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scanner_with_execs() -> ProcessScanner {
    let watch = ExecWatch::start().expect("exec notifications need root and eBPF");
    ProcessScanner::new(Path::new("/proc"), Some(watch))
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

#[test]
fn exec_notifications_name_the_process_that_execd() {
    let mut watch = ExecWatch::start().expect("exec notifications need root and eBPF");
    let _ = watch.drain();
    let child = Reaped(Command::new("true").spawn().unwrap());
    let pid = child.0.id();
    let mut execd = Default::default();
    for _ in 0..50 {
        execd = watch.drain().expect("no exec was lost");
        if execd.contains(&pid) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(execd.contains(&pid), "{pid} not in {execd:?}");
}

#[test]
fn a_rescan_rereads_a_process_that_execd_and_keeps_the_others() {
    let mut scanner = scanner_with_execs();
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
    // full scan, 15 scans away.
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
    let mut scanner = scanner_with_execs();
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
fn without_exec_notifications_every_scan_rereads_every_process() {
    let mut scanner = ProcessScanner::new(Path::new("/proc"), None);
    for _ in 0..2 {
        let processes = scanner.scan().unwrap();
        let stats = scanner.last_scan();
        assert!(stats.full && stats.kept == 0, "{stats:?}");
        assert!(stats.read >= processes.len(), "{stats:?}");
    }
}
