//! Capability detection on the real kernel (needs root).
//!
//! This documents the machines Sonde is built on (/work/shared/notes/environment.md): Linux 6.18 with
//! BTF, tracepoints, uprobes and perf events, but CONFIG_KPROBES unset and no BPF trampolines. If the
//! machine changes, update the expectations here.
use std::{collections::BTreeSet, path::Path, process::Command};

use sonde_agent::capabilities::{detect, facility};

#[test]
fn this_machine_has_btf_tracepoints_uprobes_and_perf_events_but_not_kprobes_or_fentry() {
    let caps = detect(Path::new("bpftrace"));
    eprintln!("{caps:#?}");

    assert!(caps.btf, "errors: {:?}", caps.errors);
    assert!(caps.tracepoints, "errors: {:?}", caps.errors);
    assert!(caps.uprobes, "errors: {:?}", caps.errors);
    assert!(caps.perf_events, "errors: {:?}", caps.errors);
    assert!(
        !caps.kprobes,
        "kprobes work here now: update this test and environment.md"
    );
    assert!(
        !caps.fentry,
        "fentry works here now: update this test and environment.md"
    );

    let failed: BTreeSet<&str> = caps.errors.keys().map(String::as_str).collect();
    assert_eq!(
        failed,
        BTreeSet::from([facility::KPROBES, facility::FENTRY]),
        "{:?}",
        caps.errors
    );
    assert!(caps.errors.values().all(|e| !e.trim().is_empty()));

    let uname = Command::new("uname").arg("-r").output().unwrap();
    assert_eq!(
        caps.kernel_release,
        String::from_utf8(uname.stdout).unwrap().trim()
    );
    let version = caps.bpftrace_version.unwrap();
    assert!(version.starts_with("bpftrace v"), "{version}");
}
